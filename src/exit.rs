//! Exit codes: stable, documented in `--help`, the README and the man page
//! (`ctrace man` prints [`CODES`]).

pub const OK: i32 = 0;
/// `check`: findings.
pub const FINDINGS: i32 = 1;
/// Could not run: bad input, missing privileges, kernel lacks what is needed.
pub const ERROR: i32 = 2;

/// Every code and what it means, for the manual.
pub const CODES: &[(i32, &str)] = &[
    (
        OK,
        "success; check, doctor and report: nothing found that counts (no finding of warning or worse)",
    ),
    (
        FINDINGS,
        "check, doctor and report: findings (check: only the --fail-on kinds, when given)",
    ),
    (
        ERROR,
        "could not run: bad arguments or input, missing privileges, a kernel without the hooks needed; the message says why",
    ),
];
