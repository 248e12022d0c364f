//! `ctrace check` and `ctrace doctor`: findings with evidence and mitigations.
use anyhow::{bail, Result};

use crate::cli::{CheckArgs, DoctorArgs};

pub fn run(_a: &CheckArgs) -> Result<i32> {
    bail!("ctrace check is not built yet")
}

pub fn doctor(_a: &DoctorArgs) -> Result<i32> {
    bail!("ctrace doctor is not built yet")
}
