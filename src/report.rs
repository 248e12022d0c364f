//! `ctrace report FILE`: the aggregation and findings of a recording, offline.
use anyhow::{bail, Result};

use crate::cli::ReportArgs;

pub fn run(_a: &ReportArgs) -> Result<i32> {
    bail!("ctrace report is not built yet")
}
