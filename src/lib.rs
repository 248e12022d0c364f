//! ctrace: an eBPF tracer for conntrack NAT insert failures and INVALID TCP
//! segments. The engine (probe resolution and loading, the event pipeline, the
//! kernel's counters) is kept apart from the user interfaces (record, top,
//! report, check) that read its event stream.

pub mod abi;
pub mod cli;
pub mod cmd;
pub mod ctstat;
pub mod event;
pub mod exit;
pub mod findings;
pub mod incident;
pub mod lab;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod pipeline;
pub mod probe;
pub mod record;
pub mod session;
pub mod stats;
pub mod symbolize;
pub mod sys;
pub mod tui;
pub mod workload;

pub use cmd::run;

/// libbpf prints load failures of candidates that the resolver expects to fail
/// (fentry on a kernel that refuses it): keep them off the user's terminal and
/// report them through the plan instead. CTRACE_DEBUG=1 shows them.
pub fn quiet_libbpf() {
    if std::env::var_os("CTRACE_DEBUG").is_none() {
        libbpf_rs::set_print(None);
    }
}
