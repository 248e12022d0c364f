//! The faces: one module per command. Only faces read the command line
//! (`crate::cli`); they turn it into the engine's own configuration and drive
//! the engine, which never sees a clap type.

pub mod check;
pub mod docs;
pub mod doctor;
pub mod lab;
pub mod probes;
pub mod record;
pub mod report;
pub mod run;
pub mod serve;

use anyhow::Result;

use crate::cli::{Cli, Command, TraceArgs};
use crate::session::SessionConfig;

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    crate::quiet_libbpf();
    match cli.command {
        Command::Probes(a) => probes::run(&a),
        Command::Record(a) => record::run(&a),
        Command::Top(a) => crate::tui::run(&a),
        Command::Report(a) => report::run(&a),
        Command::Check(a) => check::run(&a),
        Command::Doctor(a) => doctor::run(&a),
        Command::Lab(a) => lab::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Completions(a) => docs::completions(&a),
        Command::Man => docs::man(),
    }
}

/// The session the tracing flags ask for.
pub fn session_config(a: &TraceArgs) -> SessionConfig {
    SessionConfig {
        mode: a.mode,
        netns: a.netns.clone(),
        all_netns: a.all_netns,
        symptoms_here: a.symptoms_here,
        ringbuf_mb: a.ringbuf_mb,
        lab: false,
        snaplen: 0,
    }
}
