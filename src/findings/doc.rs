//! The document `check`, `report` and `doctor` print: `--json` gives it as is
//! (a versioned contract, `{"format":1,...}`: fields are added, never
//! renamed), the text form is rendered from the same value.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{render, Counted, Finding, Input};
use crate::event::Kind;
use crate::node::NodeState;
use crate::record::{Header, KernelCounters, Trailer};

/// Version of the JSON document.
pub const FORMAT: u32 = 1;

/// One of the kernel's counters beside the events that should match it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub counter: String,
    pub kernel: u64,
    pub event_kind: String,
    pub events: u64,
    pub agree: bool,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub note: String,
    /// Per CPU where the kernel gives it (insert_failed): [cpu, kernel, events].
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub per_cpu: Vec<[u64; 3]>,
}

/// Compares the kernel's counters with the event counts, insert_failed per CPU
/// too (`per_cpu_events`: cpu -> insert_failed events).
pub fn agreement_per_cpu(
    k: &KernelCounters,
    events: &BTreeMap<String, u64>,
    per_cpu_events: &BTreeMap<u32, u64>,
) -> Vec<Agreement> {
    let mut v = agreement(k, events);
    let mut cpus: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for c in &k.per_cpu {
        cpus.entry(c.cpu).or_default().0 += c.insert_failed;
    }
    for (c, n) in per_cpu_events {
        cpus.entry(*c).or_default().1 += n;
    }
    v[0].per_cpu = cpus
        .into_iter()
        .filter(|(_, (a, b))| a + b > 0)
        .map(|(c, (a, b))| [c as u64, a, b])
        .collect();
    v
}

/// Compares the kernel's counters with the event counts.
pub fn agreement(k: &KernelCounters, events: &BTreeMap<String, u64>) -> Vec<Agreement> {
    let ev = |n: &str| events.get(n).copied().unwrap_or(0);
    let mut v = vec![
        Agreement {
            counter: "insert_failed".into(),
            kernel: k.insert_failed,
            event_kind: "insert_failed".into(),
            events: ev("insert_failed"),
            agree: k.insert_failed == ev("insert_failed"),
            note: String::new(),
            per_cpu: Vec::new(),
        },
        Agreement {
            counter: "clash_resolve".into(),
            kernel: k.clash_resolve,
            event_kind: "clash_resolved".into(),
            events: ev("clash_resolved"),
            agree: k.clash_resolve == ev("clash_resolved"),
            note: String::new(),
            per_cpu: Vec::new(),
        },
        Agreement {
            counter: "invalid".into(),
            kernel: k.invalid,
            event_kind: "tcp_invalid".into(),
            events: ev("tcp_invalid"),
            agree: k.invalid == ev("tcp_invalid"),
            note: "the kernel's invalid counter also counts the node's own RSTs, non-TCP and untracked strays: equal only in a lab".into(),
            per_cpu: Vec::new(),
        },
    ];
    for a in &mut v {
        if !a.agree && a.note.is_empty() {
            a.note = if a.kernel > a.events {
                "fewer events than the kernel counted: lost events, another failure path, or traffic of another netns".into()
            } else {
                "more events than the kernel counted: events of other network namespaces".into()
            };
        }
    }
    v
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TableFill {
    pub count: u64,
    pub max: u64,
    pub fill: f64,
}

/// Node facts printed beside the findings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    pub table: Option<TableFill>,
    /// The smallest SNAT pool (address:port pairs per destination), where known.
    pub snat_pool_size: Option<u64>,
    pub nat_rules: Option<usize>,
    pub nat_rules_random_fully: Option<usize>,
    /// Of those, the ones an earlier rule without it shadows.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nat_rules_shadowed: Option<usize>,
    pub be_liberal: Option<bool>,
    pub hot_destinations: Vec<Counted>,
    pub nat_alloc: u64,
    pub insert_failed: u64,
    pub clash_resolved: u64,
    pub kernel_insert_failed: Option<u64>,
    pub kernel_clash_resolve: Option<u64>,
}

pub fn facts(i: &Input) -> Facts {
    let s = &i.agg.stats;
    let table = i
        .table_fill
        .or_else(|| {
            i.node
                .and_then(|n| n.sysctl.conntrack_count.zip(n.sysctl.conntrack_max))
        })
        .filter(|(_, m)| *m > 0)
        .map(|(count, max)| TableFill {
            count,
            max,
            fill: count as f64 / max as f64,
        });
    let rules = i.node.and_then(|n| n.rules.as_ref());
    Facts {
        table,
        snat_pool_size: i.node.and_then(|n| n.snat_pool_size()),
        nat_rules: rules.map(|r| r.nat.len()),
        nat_rules_random_fully: rules.map(|r| r.nat.iter().filter(|x| x.random_fully).count()),
        nat_rules_shadowed: i.node.map(|n| n.shadowed().len()).filter(|k| *k > 0),
        be_liberal: i.node.and_then(|n| n.sysctl.tcp_be_liberal),
        hot_destinations: hot_destinations(i),
        nat_alloc: s.count(Kind::NatAlloc),
        insert_failed: s.count(Kind::InsertFailed),
        clash_resolved: s.count(Kind::ClashResolved),
        kernel_insert_failed: i.kernel_counters.map(|k| k.insert_failed),
        kernel_clash_resolve: i.kernel_counters.map(|k| k.clash_resolve),
    }
}

/// Destinations with most incidents (one per losing connection or escaped
/// segment) where the correlation ran; else with most insert failures and
/// INVALID segments (the symptom kinds are left out: tracepoints see every
/// netns).
fn hot_destinations(i: &Input) -> Vec<Counted> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    if let Some(t) = &i.agg.incidents.destinations {
        let mut v: Vec<Counted> = t
            .top(5)
            .into_iter()
            .map(|((a, p), n, _)| Counted {
                key: match a {
                    std::net::IpAddr::V6(a) => format!("[{a}]:{p}"),
                    a => format!("{a}:{p}"),
                },
                count: n,
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.key.cmp(&b.key)));
        return v;
    }
    for k in [Kind::InsertFailed, Kind::TcpInvalid] {
        if let Some(t) = i.agg.collector.destinations.get(&k) {
            for ((a, p), n, _) in t.top(10) {
                let key = match a {
                    std::net::IpAddr::V6(a) => format!("[{a}]:{p}"),
                    a => format!("{a}:{p}"),
                };
                *m.entry(key).or_default() += n;
            }
        }
    }
    let mut v: Vec<Counted> = m
        .into_iter()
        .map(|(key, count)| Counted { key, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.key.cmp(&b.key)));
    v.truncate(5);
    v
}

/// What `report` knows about the recording itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordingInfo {
    pub file: String,
    pub header: Header,
    pub trailer: Option<Trailer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub format: u32,
    /// "check", "report" or "doctor".
    pub command: String,
    pub ctrace: String,
    pub kernel: Option<String>,
    pub netns: Option<String>,
    pub duration_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingInfo>,
    /// Probe name -> chosen hook (check, report).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub probes: BTreeMap<String, serde_json::Value>,
    pub events: BTreeMap<String, u64>,
    /// Records the kernel could not deliver; null when not known (a
    /// recording without its trailer).
    pub lost: Option<u64>,
    /// Of `lost`, the events read from the ring but dropped in user space
    /// (the consumer fell behind: the trailer's `lost_user`); the rest the
    /// kernel could not write. Absent where not known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lost_user: Option<u64>,
    /// Of `lost`, the failure kinds' records the kernel could not write (the
    /// trailer's `lost_failures`); 0: the failures counted are all there were.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lost_failures: Option<u64>,
    /// Program runs the kernel skipped (nested in themselves), by program:
    /// events may be missing (the trailer's `missed`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub missed: BTreeMap<String, u64>,
    pub kernel_counters: Option<KernelCounters>,
    /// Incidents (the correlation stage's stories) by kind, then outcome.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub incidents: BTreeMap<String, BTreeMap<String, u64>>,
    /// The first few incidents in full.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub incident_examples: Vec<crate::incident::Incident>,
    /// The workloads most affected: (who, incidents).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub workloads_affected: Vec<(String, u64)>,
    /// snat_race incidents per new connection (NATed), where known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub share_of_new_connections_affected: Option<f64>,
    pub agreement: Vec<Agreement>,
    pub facts: Facts,
    pub node: Option<NodeState>,
    pub findings: Vec<Finding>,
    /// What the verdicts judge but could not be read (doctor: exit 2).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub not_read: Vec<String>,
    pub warnings: Vec<String>,
    /// The exit code this document comes with.
    pub exit: i32,
}

impl Document {
    pub fn new(command: &str) -> Document {
        Document {
            format: FORMAT,
            command: command.into(),
            ctrace: env!("CARGO_PKG_VERSION").into(),
            kernel: None,
            netns: None,
            duration_s: None,
            recording: None,
            probes: BTreeMap::new(),
            events: BTreeMap::new(),
            lost: Some(0),
            lost_user: None,
            lost_failures: None,
            missed: BTreeMap::new(),
            kernel_counters: None,
            incidents: BTreeMap::new(),
            incident_examples: Vec::new(),
            workloads_affected: Vec::new(),
            share_of_new_connections_affected: None,
            agreement: Vec::new(),
            facts: Facts::default(),
            node: None,
            findings: Vec::new(),
            not_read: Vec::new(),
            warnings: Vec::new(),
            exit: 0,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human form.
    /// Fills the incident parts from an aggregate.
    pub fn set_incidents(&mut self, i: &crate::findings::Incidents) {
        self.incidents = i.by_kind.clone();
        self.incident_examples = i.examples.clone();
        self.workloads_affected = i.top_workloads(5);
        self.share_of_new_connections_affected = if i.by_kind.is_empty() {
            None
        } else {
            i.share_affected()
        };
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if let Some(r) = &self.recording {
            let h = &r.header;
            let _ = writeln!(s, "Recording {}", r.file);
            let _ = writeln!(
                s,
                "  ctrace {}, kernel {}, host {}, netns {}, started {}{}",
                h.ctrace,
                h.kernel,
                h.hostname,
                h.netns,
                h.start_wall,
                h.mode
                    .as_deref()
                    .map(|m| format!(", mode {m}"))
                    .unwrap_or_default()
            );
            if let Some(t) = &r.trailer {
                let _ = writeln!(
                    s,
                    "  ended {}{}",
                    t.end_wall,
                    if t.ended_by.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", t.ended_by)
                    }
                );
            }
        } else if self.command != "doctor" {
            let _ = writeln!(
                s,
                "ctrace {}: kernel {}, netns {}, traced {:.1} s",
                self.command,
                self.kernel.as_deref().unwrap_or("unknown"),
                self.netns.as_deref().unwrap_or("host"),
                self.duration_s.unwrap_or(0.0)
            );
        }
        if !self.probes.is_empty() {
            let _ = writeln!(s, "Hooks:");
            for (p, v) in &self.probes {
                let mode = v.get("mode").and_then(|m| m.as_str()).unwrap_or("none");
                let hooks: Vec<&str> = v
                    .get("hooks")
                    .and_then(|h| h.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                let _ = writeln!(s, "  {p:<9} {mode:<10} {}", hooks.join("; "));
            }
        }
        if self.command != "doctor" {
            let ev: Vec<String> = self
                .events
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                s,
                "Events: {} (lost {})",
                if ev.is_empty() {
                    "none".into()
                } else {
                    ev.join(", ")
                },
                self.lost
                    .map_or("unknown: no trailer".to_string(), |n| n.to_string())
            );
            if !self.incidents.is_empty() {
                let v: Vec<String> = self
                    .incidents
                    .iter()
                    .map(|(k, o)| {
                        let n: u64 = o.values().sum();
                        let by: Vec<String> =
                            o.iter().map(|(out, c)| format!("{out} {c}")).collect();
                        format!("{k} {n} ({})", by.join(", "))
                    })
                    .collect();
                let _ = writeln!(s, "Incidents: {}", v.join("; "));
                if let Some(x) = self.share_of_new_connections_affected {
                    let _ = writeln!(
                        s,
                        "  {:.1}% of new connections lost at least one SYN or datagram",
                        x * 100.0
                    );
                }
                if !self.workloads_affected.is_empty() {
                    let w: Vec<String> = self
                        .workloads_affected
                        .iter()
                        .map(|(who, n)| format!("{who} ({n})"))
                        .collect();
                    let _ = writeln!(s, "  most affected: {}", w.join(", "));
                }
                for i in &self.incident_examples {
                    let winner = i
                        .winner
                        .as_ref()
                        .map(|w| format!(", won by {}", w.orig))
                        .unwrap_or_default();
                    let delay = i
                        .delay_ms
                        .map(|d| format!(" after {d} ms"))
                        .unwrap_or_default();
                    let ev: Vec<String> =
                        i.events.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    let _ = writeln!(
                        s,
                        "  #{} {} {}{winner}: {}{delay} ({})",
                        i.id,
                        i.kind,
                        i.flow,
                        i.outcome,
                        ev.join(", ")
                    );
                }
            }
            if self.agreement.is_empty() {
                let _ = writeln!(s, "Kernel counters: not available");
            } else {
                let _ = writeln!(s, "Kernel counters vs events:");
                for a in &self.agreement {
                    let _ = writeln!(
                        s,
                        "  {:<14} kernel {:>6}  {:<15} {:>6}  {}",
                        a.counter,
                        a.kernel,
                        a.event_kind,
                        a.events,
                        if a.agree {
                            "agree".to_string()
                        } else {
                            format!("differ: {}", a.note)
                        }
                    );
                    if !a.per_cpu.is_empty() {
                        let cpus: Vec<String> = a
                            .per_cpu
                            .iter()
                            .map(|[c, k, e]| format!("cpu{c} {k}/{e}"))
                            .collect();
                        let _ = writeln!(s, "    per CPU (kernel/events): {}", cpus.join(", "));
                    }
                }
            }
        }
        let f = &self.facts;
        let mut node = Vec::new();
        if let Some(t) = &f.table {
            node.push(format!(
                "conntrack table {} / {} ({:.1}%)",
                t.count,
                t.max,
                t.fill * 100.0
            ));
        }
        if let (Some(n), Some(rf)) = (f.nat_rules, f.nat_rules_random_fully) {
            node.push(format!(
                "{n} source-NAT rules, {rf} with --random-fully{}",
                f.nat_rules_shadowed
                    .map(|k| format!(" ({k} of them shadowed)"))
                    .unwrap_or_default()
            ));
        }
        if let Some(p) = f.snat_pool_size {
            node.push(format!("smallest SNAT pool {p} address:port pairs"));
        }
        if let Some(b) = f.be_liberal {
            node.push(format!("nf_conntrack_tcp_be_liberal={}", b as u8));
        }
        if self.command != "doctor" {
            node.push(format!(
                "insert_failed {} vs clash_resolved {} (of {} NAT allocations)",
                f.insert_failed, f.clash_resolved, f.nat_alloc
            ));
        }
        if !node.is_empty() {
            let _ = writeln!(s, "Node: {}", node.join("; "));
        }
        if !f.hot_destinations.is_empty() {
            let d: Vec<String> = f
                .hot_destinations
                .iter()
                .map(|c| format!("{} ({})", c.key, c.count))
                .collect();
            let by = if self.incidents.is_empty() {
                "failures"
            } else {
                "incidents"
            };
            let _ = writeln!(s, "Hot destinations ({by}): {}", d.join(", "));
        }
        if let Some(n) = &self.node {
            for note in &n.notes {
                let _ = writeln!(s, "Note: {note}");
            }
        }
        for u in &self.not_read {
            let _ = writeln!(s, "Not read: {u}");
        }
        if self.findings.is_empty() && !self.not_read.is_empty() {
            s.push_str("No findings in what could be read.\n");
        } else {
            s.push_str(&render(&self.findings));
        }
        s
    }
}

/// insert_failed events per CPU.
pub fn insert_failed_per_cpu(s: &crate::stats::Stats) -> BTreeMap<u32, u64> {
    s.per_cpu
        .keys()
        .map(|c| (*c, s.cpu_count(*c, Kind::InsertFailed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}
