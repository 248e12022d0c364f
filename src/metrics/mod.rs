//! The metrics `ctrace serve` exposes: counters of the event stream, the
//! kernel's own conntrack statistics of the traced netns, and facts about the
//! probes and the build. Engine side: it takes [`Event`]s and kernel counter
//! snapshots and renders an exposition ([`expo`]); no clap, no HTTP.
//!
//! Every label value comes from a bounded set: kinds, families, protocols,
//! the kernel's reason enums (capped at [`MAX_VALUES`] distinct values per
//! label, the rest `other`), and workloads bounded by [`workload::Slots`].
//! No ports, no addresses.

pub mod expo;
pub mod workload;

use std::collections::{BTreeMap, HashSet};

use crate::ctstat::{CpuStats, COUNTER_NAMES};
use crate::event::{Event, Family as IpFamily, Kind, WindowLog};
use crate::probe::plan::Plan;
pub use expo::Format;
use expo::{Family, Type};
use workload::{Slots, Workload};

/// Distinct values one label (a reason, a cause) may take before the rest
/// is counted as `other`.
pub const MAX_VALUES: usize = 64;

/// How `serve` labels failures.
#[derive(Clone, Debug)]
pub struct Config {
    /// Failure and incident counters carry `namespace` and `workload`.
    pub workload_labels: bool,
    /// With `workload_labels`: workloads with a series of their own; every
    /// other one is `workload="other"`.
    pub max_workloads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workload_labels: false,
            max_workloads: 50,
        }
    }
}

/// The contract: every metric name `serve` exposes, with its type and
/// labels (without the workload labels `--workload-labels` adds). The README
/// documents each (a test checks it).
pub const METRICS: &[(&str, &str, &[&str])] = &[
    ("ctrace_insert_failures_total", "counter", FP),
    ("ctrace_clashes_resolved_total", "counter", FP),
    ("ctrace_nat_allocations_total", "counter", &["remapped"]),
    ("ctrace_tcp_invalid_total", "counter", &["reason"]),
    ("ctrace_tcp_ignored_total", "counter", &["reason"]),
    ("ctrace_host_resets_total", "counter", &["cause"]),
    ("ctrace_syn_retransmits_total", "counter", &[]),
    ("ctrace_incidents_total", "counter", &["kind", "outcome"]),
    ("ctrace_events_lost_total", "counter", &[]),
    ("ctrace_probe_runs_skipped_total", "counter", &["program"]),
    (
        "ctrace_kernel_conntrack_insert_failed_total",
        "counter",
        &[],
    ),
    ("ctrace_kernel_conntrack_drop_total", "counter", &[]),
    ("ctrace_kernel_conntrack_invalid_total", "counter", &[]),
    (
        "ctrace_kernel_conntrack_clash_resolve_total",
        "counter",
        &[],
    ),
    ("ctrace_kernel_conntrack_early_drop_total", "counter", &[]),
    (
        "ctrace_kernel_conntrack_search_restart_total",
        "counter",
        &[],
    ),
    ("ctrace_conntrack_entries", "gauge", &[]),
    ("ctrace_conntrack_entries_limit", "gauge", &[]),
    ("ctrace_probe_info", "gauge", &["probe", "mode", "hook"]),
    ("ctrace_build_info", "gauge", &["version", "kernel"]),
];

const FP: &[&str] = &["family", "proto"];
const FPW: &[&str] = &["family", "proto", "namespace", "workload"];
const REASON: &[&str] = &["reason"];
const REASON_W: &[&str] = &["reason", "namespace", "workload"];
const CAUSE: &[&str] = &["cause"];
const CAUSE_W: &[&str] = &["cause", "namespace", "workload"];
const NONE: &[&str] = &[];
const W: &[&str] = &["namespace", "workload"];
const INCIDENT: &[&str] = &["kind", "outcome"];
const INCIDENT_W: &[&str] = &["kind", "outcome", "namespace", "workload"];

/// One labelled counter: label values -> count.
#[derive(Debug, Default)]
struct Counter {
    values: BTreeMap<Vec<String>, u64>,
}

impl Counter {
    fn inc(&mut self, labels: Vec<String>) {
        *self.values.entry(labels).or_default() += 1;
    }

    fn samples(&self) -> Vec<(Vec<String>, u64)> {
        self.values.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// A label's values, capped at [`MAX_VALUES`].
#[derive(Debug, Default)]
struct Domain {
    seen: HashSet<String>,
}

impl Domain {
    fn bound(&mut self, v: String) -> String {
        if self.seen.contains(&v) {
            return v;
        }
        if self.seen.len() < MAX_VALUES {
            self.seen.insert(v.clone());
            return v;
        }
        "other".into()
    }
}

/// The state behind `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    cfg: Config,
    slots: Slots,
    insert_failures: Counter,
    clashes_resolved: Counter,
    nat_allocations: Counter,
    tcp_invalid: Counter,
    tcp_ignored: Counter,
    host_resets: Counter,
    syn_retransmits: Counter,
    incidents: Counter,
    causes: Domain,
    protos: Domain,
    events_lost: u64,
    /// Runs the kernel skipped of programs without a twin, by program.
    runs_skipped: BTreeMap<String, u64>,
    /// The kernel's counters of the traced netns, summed over CPUs.
    kernel: Option<CpuStats>,
    table: Option<(u64, u64)>,
    probes: Vec<Vec<String>>,
    build: Vec<String>,
}

/// The label a window verdict's reason takes: the bound it crossed, or
/// `unknown` where the mode gives no reason (stable).
fn window_reason(e: &Event) -> &'static str {
    match crate::stats::window_log(e) {
        Some(WindowLog::LenLong) => "len_long",
        Some(WindowLog::SeqOver) => "seq_over",
        Some(WindowLog::AckOver) => "ack_over",
        Some(WindowLog::SeqUnder) => "seq_under",
        Some(WindowLog::AckUnder) => "ack_under",
        None if e.reason.is_empty() => "unknown",
        None => "other",
    }
}

impl Metrics {
    /// `kernel`: the running kernel's release, for `ctrace_build_info`.
    pub fn new(cfg: Config, kernel: &str) -> Metrics {
        Metrics {
            slots: Slots::new(cfg.max_workloads),
            cfg,
            insert_failures: Counter::default(),
            clashes_resolved: Counter::default(),
            nat_allocations: Counter::default(),
            tcp_invalid: Counter::default(),
            tcp_ignored: Counter::default(),
            host_resets: Counter::default(),
            syn_retransmits: Counter::default(),
            incidents: Counter::default(),
            causes: Domain::default(),
            protos: Domain::default(),
            events_lost: 0,
            runs_skipped: BTreeMap::new(),
            kernel: None,
            table: None,
            probes: Vec::new(),
            build: vec![env!("CARGO_PKG_VERSION").into(), kernel.into()],
        }
    }

    /// With workload labels: `labels` followed by the event's workload, bounded.
    fn with_workload(&mut self, mut labels: Vec<String>, e: &Event) -> Vec<String> {
        if self.cfg.workload_labels {
            let w: Workload = self.slots.label(workload::resolve(e));
            labels.push(w.namespace);
            labels.push(w.workload);
        }
        labels
    }

    /// Counts one event.
    pub fn observe(&mut self, e: &Event) {
        let fam = || {
            match e.family {
                IpFamily::Ipv4 => "ipv4",
                IpFamily::Ipv6 => "ipv6",
            }
            .to_string()
        };
        match e.kind {
            Kind::InsertFailed => {
                let l = vec![fam(), self.protos.bound(e.proto.to_string())];
                let l = self.with_workload(l, e);
                self.insert_failures.inc(l);
            }
            Kind::ClashResolved => {
                let l = vec![fam(), self.protos.bound(e.proto.to_string())];
                let l = self.with_workload(l, e);
                self.clashes_resolved.inc(l);
            }
            Kind::NatAlloc => self.nat_allocations.inc(vec![e.remapped.to_string()]),
            Kind::TcpInvalid => {
                let l = self.with_workload(vec![window_reason(e).into()], e);
                self.tcp_invalid.inc(l);
            }
            Kind::TcpIgnored => self.tcp_ignored.inc(vec![window_reason(e).into()]),
            Kind::HostRst => {
                let cause = e.drop_reason.as_deref().unwrap_or("unknown").to_string();
                let l = vec![self.causes.bound(cause)];
                let l = self.with_workload(l, e);
                self.host_resets.inc(l);
            }
            Kind::SynRetrans => {
                let l = self.with_workload(vec![], e);
                self.syn_retransmits.inc(l);
            }
            Kind::TcpLiberal | Kind::NfDrop => {}
        }
    }

    /// Counts one incident (when it closes).
    pub fn observe_incident(&mut self, i: &crate::incident::Incident) {
        let mut l = vec![i.kind.clone(), i.outcome.clone()];
        if self.cfg.workload_labels {
            let w = self.slots.label(workload::Workload {
                namespace: String::new(),
                workload: format!("netns:{}", i.netns),
            });
            l.push(w.namespace);
            l.push(w.workload);
        }
        self.incidents.inc(l);
    }

    /// Records lost so far (the kernel's ring-buffer misses plus ctrace's own).
    pub fn set_lost(&mut self, n: u64) {
        self.events_lost = self.events_lost.max(n);
    }

    /// Runs the kernel skipped so far (a program fired while it already ran
    /// on that CPU), by program, of programs without a twin to take them.
    pub fn set_runs_skipped(&mut self, by_program: BTreeMap<String, u64>) {
        for (p, n) in by_program {
            let v = self.runs_skipped.entry(p).or_default();
            *v = (*v).max(n);
        }
    }

    /// The kernel's counters of the traced netns, absolute (as `conntrack -S`).
    pub fn set_kernel(&mut self, totals: CpuStats) {
        self.kernel = Some(totals);
    }

    pub fn set_table(&mut self, entries: u64, limit: u64) {
        self.table = Some((entries, limit));
    }

    /// The probes' chosen hooks (`ctrace_probe_info`).
    pub fn set_probes(&mut self, plan: &Plan) {
        self.probes = plan
            .probes
            .iter()
            .map(|p| {
                vec![
                    p.probe.name().to_string(),
                    p.chosen.map_or("missing", |f| f.name()).to_string(),
                    if p.hooks.is_empty() {
                        "none".to_string()
                    } else {
                        p.hooks.join(" + ")
                    },
                ]
            })
            .collect();
    }

    /// Workloads with a series of their own (`--workload-labels`).
    pub fn workloads_held(&self) -> usize {
        self.slots.held()
    }

    /// The exposition of every family.
    pub fn render(&self, f: Format) -> String {
        expo::encode(&self.families(), f)
    }

    fn families(&self) -> Vec<Family<'_>> {
        let w = self.cfg.workload_labels;
        let pick = |plain: &'static [&'static str], with: &'static [&'static str]| {
            if w {
                with
            } else {
                plain
            }
        };
        let wl_note = if w {
            " With --workload-labels: namespace and workload (the most affected first to fail, the rest workload=\"other\")."
        } else {
            ""
        };
        let mut v = vec![
            counter(
                "ctrace_insert_failures_total",
                help("Conntrack insert failures seen at confirm (the packet was dropped), by address family and protocol.", wl_note),
                pick(FP, FPW),
                &self.insert_failures,
            ),
            counter(
                "ctrace_clashes_resolved_total",
                help("Clashes at confirm that the kernel resolved (packet kept); not visible in stable mode.", wl_note),
                pick(FP, FPW),
                &self.clashes_resolved,
            ),
            counter(
                "ctrace_nat_allocations_total",
                "NAT tuple allocations of new connections; remapped=\"true\" when NAT had to change the port.".into(),
                &["remapped"],
                &self.nat_allocations,
            ),
            counter(
                "ctrace_tcp_invalid_total",
                help("TCP segments conntrack marked INVALID (they escape de-NAT), by the window bound crossed (unknown: the mode gives no reason).", wl_note),
                pick(REASON, REASON_W),
                &self.tcp_invalid,
            ),
            counter(
                "ctrace_tcp_ignored_total",
                "Out-of-window TCP segments conntrack IGNOREd (6.1+), by the window bound crossed.".into(),
                REASON,
                &self.tcp_ignored,
            ),
            counter(
                "ctrace_host_resets_total",
                help("RSTs the node sent for segments no socket wanted, by the kernel's RST reason.", wl_note),
                pick(CAUSE, CAUSE_W),
                &self.host_resets,
            ),
            counter(
                "ctrace_syn_retransmits_total",
                help("SYN retransmits of local connects (a lost SYN costs 1 s, then 3 s).", wl_note),
                pick(NONE, W),
                &self.syn_retransmits,
            ),
            counter(
                "ctrace_incidents_total",
                help("Incidents (one story per failure: snat_race, udp_clash, invalid_reset) by kind and outcome, counted when they close.", wl_note),
                pick(INCIDENT, INCIDENT_W),
                &self.incidents,
            ),
            Family {
                name: "ctrace_events_lost_total".into(),
                help: "Events lost: records the kernel could not write (ring buffer full) plus ones ctrace dropped or could not decode.".into(),
                ty: Type::Counter,
                labels: NONE,
                samples: vec![(vec![], self.events_lost)],
            },
            Family {
                name: "ctrace_probe_runs_skipped_total".into(),
                help: "Runs of a ctrace program the kernel skipped because it fired while the same program already ran on that CPU (nested: a softirq interrupting it); each may have been an event. Programs loaded in pairs take each other's skipped runs and are not counted.".into(),
                ty: Type::Counter,
                labels: &["program"],
                samples: self
                    .runs_skipped
                    .iter()
                    .map(|(p, n)| (vec![p.clone()], *n))
                    .collect(),
            },
        ];
        // the kernel's counters: one family per name in ctstat's one list
        let help_of = |n: &str| -> &'static str {
            match n {
                "insert_failed" => "The kernel's conntrack insert_failed counter of the traced netns, summed over CPUs: its absolute value, as conntrack -S prints it.",
                "drop" => "The kernel's conntrack drop counter of the traced netns (packets dropped by conntrack), summed over CPUs, absolute.",
                "invalid" => "The kernel's conntrack invalid counter of the traced netns (packets conntrack could not track), summed over CPUs, absolute.",
                "clash_resolve" => "The kernel's conntrack clash_resolve counter of the traced netns, summed over CPUs, absolute.",
                "early_drop" => "The kernel's conntrack early_drop counter of the traced netns (entries evicted from a full table), summed over CPUs, absolute.",
                "search_restart" => "The kernel's conntrack search_restart counter of the traced netns, summed over CPUs, absolute.",
                _ => "A kernel conntrack counter of the traced netns (conntrack -S), summed over CPUs, absolute.",
            }
        };
        let names: Vec<(&'static str, u64)> = match &self.kernel {
            Some(k) => k.named(),
            None => COUNTER_NAMES.iter().map(|n| (*n, 0)).collect(),
        };
        for (n, val) in names {
            v.push(Family {
                name: format!("ctrace_kernel_conntrack_{n}_total").into(),
                help: help_of(n).into(),
                ty: Type::Counter,
                labels: NONE,
                samples: self
                    .kernel
                    .as_ref()
                    .map(|_| (vec![], val))
                    .into_iter()
                    .collect(),
            });
        }
        let table = |i: usize| -> Vec<(Vec<String>, u64)> {
            self.table
                .map(|t| (vec![], if i == 0 { t.0 } else { t.1 }))
                .into_iter()
                .collect()
        };
        v.push(Family {
            name: "ctrace_conntrack_entries".into(),
            help: "Entries in the traced netns's conntrack table.".into(),
            ty: Type::Gauge,
            labels: NONE,
            samples: table(0),
        });
        v.push(Family {
            name: "ctrace_conntrack_entries_limit".into(),
            help: "Maximum entries of the conntrack table (nf_conntrack_max).".into(),
            ty: Type::Gauge,
            labels: NONE,
            samples: table(1),
        });
        v.push(Family {
            name: "ctrace_probe_info".into(),
            help: "The hook each probe uses (mode missing: it could not attach here).".into(),
            ty: Type::Info,
            labels: &["probe", "mode", "hook"],
            samples: self.probes.iter().map(|p| (p.clone(), 1)).collect(),
        });
        v.push(Family {
            name: "ctrace_build_info".into(),
            help: "ctrace's version and the running kernel.".into(),
            ty: Type::Info,
            labels: &["version", "kernel"],
            samples: vec![(self.build.clone(), 1)],
        });
        v
    }
}

fn help(base: &str, note: &str) -> String {
    format!("{base}{note}")
}

fn counter<'a>(name: &'static str, help: String, labels: &'a [&'a str], c: &Counter) -> Family<'a> {
    Family {
        name: name.into(),
        help: help.into(),
        ty: Type::Counter,
        labels,
        samples: c.samples(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Tuple;
    use std::collections::BTreeSet;

    fn ev(kind: Kind, netns: u32) -> Event {
        let mut e = Event::new(
            kind,
            Tuple {
                src: "10.0.0.1".parse().unwrap(),
                sport: 1000 + (netns % 50000) as u16,
                dst: "192.0.2.2".parse().unwrap(),
                dport: 80,
            },
        );
        e.netns = netns;
        if kind == Kind::HostRst {
            e.drop_reason = Some("SK_RST_REASON_NO_SOCKET".into());
        }
        e
    }

    /// (sample name, labels) of every sample line of a text exposition.
    fn series(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (name_labels, _) = l.rsplit_once(' ').unwrap();
                match name_labels.split_once('{') {
                    Some((n, rest)) => (n.to_string(), rest.trim_end_matches('}').to_string()),
                    None => (name_labels.to_string(), String::new()),
                }
            })
            .collect()
    }

    fn value(text: &str, sample: &str) -> u64 {
        text.lines()
            .filter(|l| l.starts_with(sample))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum()
    }

    /// 1,000 distinct workloads failing: every workload-labelled metric has
    /// at most N+1 workload values (N slots and `other`), and no count is lost.
    #[test]
    fn a_thousand_workloads_stay_bounded() {
        let n = 50;
        let mut m = Metrics::new(
            Config {
                workload_labels: true,
                max_workloads: n,
            },
            "6.18.0",
        );
        let kinds = [
            Kind::InsertFailed,
            Kind::ClashResolved,
            Kind::TcpInvalid,
            Kind::HostRst,
            Kind::SynRetrans,
        ];
        for round in 0..3 {
            for ns in 0..1000u32 {
                for k in kinds {
                    // the later workloads fail more: the bound holds whatever the order
                    for _ in 0..=(ns / 500) + round {
                        m.observe(&ev(k, 4026530000 + ns));
                    }
                }
            }
        }
        let text = m.render(Format::Text);
        let mut per_metric: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, labels) in series(&text) {
            if let Some(w) = labels.split(',').find_map(|l| l.strip_prefix("workload=")) {
                per_metric.entry(name).or_default().insert(w.to_string());
            }
        }
        for name in [
            "ctrace_insert_failures_total",
            "ctrace_clashes_resolved_total",
            "ctrace_tcp_invalid_total",
            "ctrace_host_resets_total",
            "ctrace_syn_retransmits_total",
        ] {
            let ws = per_metric
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(ws.len(), n + 1, "{name}: {} workload series", ws.len());
            assert!(ws.contains("\"other\""), "{name} has no other");
        }
        // every event is counted, in its slot or in other
        let per_workload_events: u64 = (0..3)
            .map(|round| {
                (0..1000u32)
                    .map(|ns| (ns / 500 + round + 1) as u64)
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(
            value(&text, "ctrace_insert_failures_total{"),
            per_workload_events
        );
        assert_eq!(m.workloads_held(), n);
        // OpenMetrics: the same series
        let om = m.render(Format::OpenMetrics);
        assert_eq!(
            series(&om)
                .iter()
                .filter(|(n, _)| n == "ctrace_insert_failures_total")
                .count(),
            n + 1
        );
    }

    /// Without --workload-labels there are no workload labels, and label
    /// values that are not a small enum are capped.
    #[test]
    fn labels_are_bounded_sets() {
        let mut m = Metrics::new(Config::default(), "6.18.0");
        for i in 0..1000u32 {
            let mut e = ev(Kind::HostRst, i);
            e.drop_reason = Some(format!("REASON_{i}").into());
            m.observe(&e);
            m.observe(&ev(Kind::InsertFailed, i));
        }
        let text = m.render(Format::Text);
        assert!(!text.contains("workload="));
        let resets: Vec<_> = series(&text)
            .into_iter()
            .filter(|(n, _)| n == "ctrace_host_resets_total")
            .collect();
        assert_eq!(resets.len(), MAX_VALUES + 1);
        assert_eq!(value(&text, "ctrace_host_resets_total{"), 1000);
        assert_eq!(
            series(&text)
                .iter()
                .filter(|(n, _)| n == "ctrace_insert_failures_total")
                .count(),
            1
        );
    }

    #[test]
    fn every_contract_name_has_help_and_type() {
        let mut m = Metrics::new(Config::default(), "6.18.0");
        m.set_kernel(CpuStats {
            insert_failed: 9,
            ..Default::default()
        });
        m.set_table(3, 65536);
        for (name, ty, _) in METRICS {
            for f in [Format::Text, Format::OpenMetrics] {
                let text = m.render(f);
                let family = match (f, *ty) {
                    (Format::OpenMetrics, "counter") => name.trim_end_matches("_total"),
                    (Format::OpenMetrics, _) if name.ends_with("_info") => {
                        name.trim_end_matches("_info")
                    }
                    _ => name,
                };
                assert!(
                    text.contains(&format!("\n# TYPE {family} "))
                        || text.starts_with(&format!("# TYPE {family} "))
                        || text.contains(&format!("# TYPE {family} ")),
                    "{name}: no TYPE in {f:?}"
                );
                assert!(
                    text.contains(&format!("# HELP {family} ")),
                    "{name}: no HELP"
                );
            }
        }
        let text = m.render(Format::Text);
        assert!(text.contains("\nctrace_kernel_conntrack_insert_failed_total 9\n"));
        assert!(text.contains("\nctrace_conntrack_entries_limit 65536\n"));
        assert!(text.contains("ctrace_build_info{version=\""));
    }
}

#[cfg(test)]
mod readme {
    /// Every name of the contract is documented in the README's table.
    #[test]
    fn the_readme_documents_every_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        for (name, ty, labels) in super::METRICS {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("README has no row for {name}"));
            assert!(row.contains(ty), "{name}: README does not say {ty}");
            for l in *labels {
                assert!(
                    row.contains(&format!("`{l}`")),
                    "{name}: README misses label {l}"
                );
            }
        }
    }
}
