//! `ctrace top`: the live view.
use anyhow::{bail, Result};

use crate::cli::TopArgs;

pub fn run(_a: &TopArgs) -> Result<i32> {
    bail!("ctrace top is not built yet")
}
