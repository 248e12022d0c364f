//! ctrace: an eBPF tracer for conntrack NAT insert failures and INVALID TCP
//! segments. The engine (probe resolution and loading, the event pipeline, the
//! kernel's counters) is kept apart from the user interfaces (record, top,
//! report, check) that read its event stream.

pub mod bpf;
pub mod cli;
pub mod ctstat;
pub mod event;
pub mod netns;
pub mod node;
pub mod pipeline;
pub mod probe;
pub mod record;
pub mod session;
pub mod symbolize;
pub mod sys;

pub mod check;
pub mod lab;
pub mod report;
pub mod stats;
pub mod tui;

mod cmd_record;

use anyhow::Result;
use cli::{Cli, Command};

/// Exit codes: stable, documented in `--help` and the README.
pub mod exit {
    pub const OK: i32 = 0;
    /// `check`: findings.
    pub const FINDINGS: i32 = 1;
    /// Could not run: bad input, missing privileges, kernel lacks what is needed.
    pub const ERROR: i32 = 2;
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    quiet_libbpf();
    match cli.command {
        Command::Probes(a) => probe::cmd_probes(&a),
        Command::Record(a) => cmd_record::run(&a),
        Command::Top(a) => tui::run(&a),
        Command::Report(a) => report::run(&a),
        Command::Check(a) => check::run(&a),
        Command::Doctor(a) => check::doctor(&a),
        Command::Lab(a) => lab::run(&a),
    }
}

/// libbpf prints load failures of candidates that the resolver expects to fail
/// (fentry on a kernel that refuses it): keep them off the user's terminal and
/// report them through the plan instead. CTRACE_DEBUG=1 shows them.
pub fn quiet_libbpf() {
    if std::env::var_os("CTRACE_DEBUG").is_none() {
        libbpf_rs::set_print(None);
    }
}
