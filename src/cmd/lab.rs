//! `ctrace lab`: the reproducers, run on their own.
use anyhow::Result;

use crate::cli::LabArgs;

pub fn run(a: &LabArgs) -> Result<i32> {
    let stop = super::run::stop_on_signals()?;
    crate::lab::run(
        &crate::lab::LabArgs {
            kind: a.kind,
            json: a.json,
            prefix: a.prefix.clone(),
            rounds: a.rounds,
            repeat: a.repeat,
            ipv6: a.ipv6,
        },
        &stop,
    )
}
