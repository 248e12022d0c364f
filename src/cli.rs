//! Command-line definitions (clap). No logic here: see lib.rs for dispatch.
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::lab::LabKind;
pub use crate::probe::Mode;

// The engine's enums take their command-line spelling here, so that the
// engine needs no clap and no enum is written twice.
impl ValueEnum for Mode {
    fn value_variants<'a>() -> &'a [Self] {
        &[Mode::Auto, Mode::Fentry, Mode::Kprobe, Mode::Stable]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            Mode::Auto => "The best hook that works, chosen per probe",
            Mode::Fentry => "fentry/fexit programs",
            Mode::Kprobe => "kprobes and kretprobes",
            Mode::Stable => "Tracepoints and netfilter BPF hooks only (no kprobes, no fentry)",
        };
        Some(PossibleValue::new(self.name()).help(help))
    }
}

impl ValueEnum for LabKind {
    fn value_variants<'a>() -> &'a [Self] {
        &[LabKind::SnatRace, LabKind::InvalidRst, LabKind::UdpRace]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            LabKind::SnatRace => "SNAT port-allocation race ending in conntrack insert failures",
            LabKind::InvalidRst => "Out-of-window segments, INVALID verdicts and the node's RST",
            LabKind::UdpRace => {
                "UDP clashes at confirm: same-port datagrams lost, one socket's A/AAAA pair merged"
            }
        };
        Some(PossibleValue::new(self.name()).help(help))
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "ctrace",
    version,
    about = "Trace conntrack NAT insert failures and INVALID TCP segments, one event at a time",
    long_about = "ctrace attaches eBPF programs to the kernel's conntrack and NAT code and shows, \
one event at a time, the NAT port-allocation race that ends in a conntrack insert failure \
(dropped SYNs, 1 s / 3 s connects, DNS timeouts) and TCP segments that conntrack classifies \
INVALID, which escape de-NAT and provoke a host RST.\n\nExit codes: 0 ok (check: nothing found), \
1 check found something, 2 could not run (the message says why)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show which kernel hook each probe uses on this kernel, and why.
    Probes(ProbesArgs),
    /// Record events to a JSON Lines file (or stdout) until the duration ends or Ctrl-C.
    Record(RecordArgs),
    /// Live, top-style view of the events.
    Top(TopArgs),
    /// Aggregate a recording offline: counts, top flows, findings.
    Report(ReportArgs),
    /// Trace for a while and print findings with evidence and mitigations (for runbooks).
    Check(CheckArgs),
    /// Check the node's configuration only (no tracing).
    Doctor(DoctorArgs),
    /// Reproduce the failures in throwaway network namespaces.
    Lab(LabArgs),
    /// Serve Prometheus metrics (/metrics, /healthz, /readyz) while tracing, until SIGTERM.
    Serve(ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "bash: ctrace completions bash > /etc/bash_completion.d/ctrace\n\
zsh:  ctrace completions zsh > \"${fpath[1]}/_ctrace\"\n\
fish: ctrace completions fish > ~/.config/fish/completions/ctrace.fish"
    )]
    Completions(CompletionsArgs),
    /// Print the manual page (roff): `ctrace man | man -l -`.
    Man,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// How to attach: auto chooses per probe, best first.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Network namespace whose conntrack to trace: a name under /run/netns, a path,
    /// or pid:N. Default: ctrace's own (the host's).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// kprobe/fentry modes: report conntrack events of every netns, not just --netns.
    #[arg(long)]
    pub all_netns: bool,
    /// Report symptoms (SYN retransmits, host RSTs, netfilter drops) of the traced
    /// netns only. By default they come from every netns (pods retransmit in their
    /// own), which a drop flood elsewhere on the node can fill the ring with.
    #[arg(long, conflicts_with = "all_netns")]
    pub symptoms_here: bool,
    /// Size of each ring buffer in MiB (power of two).
    #[arg(long, default_value_t = 4, value_name = "MIB")]
    pub ringbuf_mb: u32,
    /// Do not name the workload (pod, container, netns) that owns each event's
    /// original source (no scans of /proc, no netlink address dumps).
    #[arg(long)]
    pub no_workloads: bool,
}

#[derive(Args, Debug)]
pub struct ProbesArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Print the detected kernel feature set (the resolver's input) as JSON.
    #[arg(long)]
    pub features: bool,
    /// Load (verify) the programs as `record --pcap --snaplen BYTES` would:
    /// the packet-capture paths are compiled out of a load without it.
    #[arg(long, default_value_t = 0, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(0..=1504))]
    pub snaplen: u32,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Output file (JSON Lines), created mode 0600; `-` or none: standard
    /// output. An existing file is refused (see --force); a symlink always.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace an existing output file (never a symlink's target).
    #[arg(long)]
    pub force: bool,
    /// Stop after this long (e.g. 30s, 5m). Default: until Ctrl-C.
    #[arg(short, long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Run a lab in the background and trace its node (the built-in demo).
    #[arg(long, value_enum, value_name = "LAB")]
    pub lab: Option<LabKind>,
    /// No progress line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Also write the offending packets (insert_failed, tcp_invalid,
    /// tcp_ignored, host_rst) to FILE as pcapng (0600; --force as for -o),
    /// each commented with ctrace's verdict; events carry their `frame`.
    /// Captured in BPF for those events only, never per packet.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// With --pcap: bytes captured of each packet, from its IP header on.
    #[arg(long, default_value_t = 256, value_name = "BYTES", requires = "pcap",
          value_parser = clap::value_parser!(u32).range(1..=1504))]
    pub snaplen: u32,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Endpoints: /metrics (Prometheus text; OpenMetrics when the Accept header asks for \
application/openmetrics-text), /healthz (200 while the process runs), /readyz (503 until every probe \
is attached, then 200).\n\nSIGTERM, SIGINT, SIGHUP or SIGQUIT detach every probe and exit 0. \
The metrics and their labels are listed in the README."
)]
pub struct ServeArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Address and port to serve on; anything but loopback must be asked for.
    #[arg(long, default_value = "127.0.0.1:9808", value_name = "ADDR:PORT")]
    pub listen: String,
    /// Keep a rotating recording in DIR (files 0600, each a complete
    /// recording), the evidence behind an alert.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// With --record: start a new file when the current one reaches this size.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub record_max_mb: u64,
    /// With --record: keep at most this many files (the oldest are removed).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub record_max_files: usize,
    /// With --record: beside each recording file, a pcapng of its offending
    /// packets (as `record --pcap`: same name, `.pcapng`; frames numbered per
    /// file), removed with it.
    #[arg(long, requires = "record")]
    pub pcap: bool,
    /// With --pcap: bytes captured of each packet, from its IP header on.
    #[arg(long, default_value_t = 256, value_name = "BYTES", requires = "pcap",
          value_parser = clap::value_parser!(u32).range(1..=1504))]
    pub snaplen: u32,
    /// Label failure and incident counters with namespace and workload.
    #[arg(long)]
    pub workload_labels: bool,
    /// With --workload-labels: workloads with a series of their own; the rest
    /// are counted as workload="other".
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_workloads: usize,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Screen refresh interval.
    #[arg(long, value_parser = parse_duration, default_value = "250ms")]
    pub interval: Duration,
    /// Browse a recording instead of tracing (no root needed).
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// Replay speed factor (1 = recorded speed).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Run a lab in the background and trace it (the built-in demo).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "snat-race")]
    pub lab: Option<LabKind>,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Exit codes:\n  0  no finding that counts (warning or worse)\n  1  findings\n  2  could not run: missing or unreadable file, a line that is not JSON, a newer format (the message names file and line)\n\nA truncated last line is a warning: the complete events before it are reported.\nNo trailer: lost is unknown (null in --json). A line over 16 MiB is an error.\n--json prints a versioned document ({\"format\":1,...})."
)]
pub struct ReportArgs {
    /// Recordings made by `ctrace record` (or `serve --record`). Several:
    /// reported together, grouped by node (the header's hostname), with totals.
    #[arg(required = true, num_args = 1.., value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(after_help = const_format_check_help())]
pub struct CheckArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// How long to trace.
    #[arg(short, long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    #[arg(long)]
    pub json: bool,
    /// Only these finding kinds count for the exit code (comma separated).
    #[arg(long, value_delimiter = ',', value_name = "KIND[,KIND]")]
    pub fail_on: Vec<String>,
    /// Run a lab in the background while checking.
    #[arg(long, value_enum)]
    pub lab: Option<LabKind>,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Reads the node's conntrack sysctls, NAT and INVALID-drop rules (iptables-save, nft: \
need root) and boot files (sysctl.d, modules-load.d). No tracing.\n\nExit codes:\n  0  nothing to fix\n  \
1  configuration findings (warning or worse)\n  2  could not run\n\n--json prints a versioned document ({\"format\":1,...})."
)]
pub struct DoctorArgs {
    /// Network namespace whose sysctls and rules to read (needs root).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Machine-readable output (a versioned document).
    #[arg(long)]
    pub json: bool,
    /// Read the node's files under this root instead of / (tests; rule dumps
    /// then come from ROOT/rules/{iptables-save,ip6tables-save,nft-ruleset}).
    #[arg(long, hide = true, default_value = "/")]
    pub root: PathBuf,
}

#[derive(Args, Debug)]
pub struct LabArgs {
    #[arg(value_enum)]
    pub kind: LabKind,
    #[arg(long)]
    pub json: bool,
    /// Prefix for the namespaces the lab creates (must not exist yet).
    #[arg(long, default_value = "ctlab")]
    pub prefix: String,
    /// Rounds of the realistic (MASQUERADE) snat-race phase, or of each
    /// udp-race phase (1-200).
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Keep running the traffic in a loop until Ctrl-C (used by --lab demos).
    #[arg(long)]
    pub repeat: bool,
    /// Run the lab over IPv6 (ULA addresses, ip6tables NAT rules).
    #[arg(long)]
    pub ipv6: bool,
}

const fn const_format_check_help() -> &'static str {
    "Exit codes:\n  0  nothing found (no traced finding of warning or worse)\n  1  findings (only the --fail-on kinds, when given)\n  \
2  could not run (no privileges, no conntrack, kernel lacks hooks, bad --fail-on): the message says why\n\n\
Node configuration advice (missing --random-fully, be_liberal boot order...) is printed but fails the check only when \
named in --fail-on; `ctrace doctor` reports it alone.\n\n\
Finding kinds: snat_race, insert_failed, tcp_invalid_reset, conntrack_table_full, events_lost (traced); \
be_liberal_boot_order, nat_without_random_fully, snat_pool_small, invalid_drop_wrong_chain, invalid_unmitigated \
(node configuration); tcp_invalid_masked, tcp_ignored, clash_resolved (info).\n\n\
--json prints a versioned document ({\"format\":1,...}) with the findings, the kernel's counter deltas and the node facts."
}

/// "10s", "250ms", "2m", "1h", or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: use e.g. 10s, 250ms, 5m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("'{s}': a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
    }
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
