//! Exit codes: stable, documented in `--help` and the README.

pub const OK: i32 = 0;
/// `check`: findings.
pub const FINDINGS: i32 = 1;
/// Could not run: bad input, missing privileges, kernel lacks what is needed.
pub const ERROR: i32 = 2;
