//! What a finding is made of: its severity, origin, numbers and evidence;
//! the per-event collector beside [`Stats`]; the verdicts' input; and the
//! helpers that turn collected evidence into a finding's lists.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Kind};
use crate::node::NodeState;
use crate::record::KernelCounters;
use crate::stats::{tuple_key, Stats, TopK, TupleKey};

/// Example events kept per kind.
pub const EXAMPLES: usize = 3;
pub(super) const TOP: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Where a finding comes from: events seen while tracing (or in a recording),
/// or the node's configuration alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Traced,
    Node,
}

/// What happened, in numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct What {
    /// Events seen (traced findings) or items found (node findings).
    pub count: u64,
    /// The kernel's own counter over the same time, where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    /// Share of new connections affected (insert_failed / nat_alloc).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    pub summary: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counted {
    pub key: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<Counted>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<Counted>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<Counted>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Counted>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Counted>,
    /// Node configuration lines (rules, files) behind the finding.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Event>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: String,
    pub severity: Severity,
    pub origin: Origin,
    pub title: String,
    pub what: What,
    pub evidence: Evidence,
    pub why: String,
    /// Steps that fit this node, most effective first.
    pub mitigation: Vec<String>,
}

/// Evidence gathered per event beside [`Stats`]: examples, and top-k per kind.
#[derive(Clone, Debug)]
pub struct Collector {
    pub examples: BTreeMap<Kind, Vec<Event>>,
    pub destinations: BTreeMap<Kind, TopK<(IpAddr, u16)>>,
    pub flows: BTreeMap<Kind, TopK<TupleKey>>,
    pub ports: TopK<u16>,
    /// (kind, proto) -> count
    pub by_proto: BTreeMap<(Kind, String), u64>,
    /// (kind, "snat"/"dnat"/"snat+dnat"/"none") -> count
    pub by_nat: BTreeMap<(Kind, String), u64>,
    /// INVALID segments the node generated itself (its RSTs: no conntrack
    /// entry either, so conntrack counts them INVALID too).
    pub local_invalid: u64,
    /// The traced netns: host RSTs of other namespaces are not this node's
    /// (the symptom tracepoints see every netns). None: all count.
    pub netns: Option<u32>,
    /// Host RSTs sent from the traced netns.
    pub host_rst: u64,
}

impl Default for Collector {
    fn default() -> Self {
        Collector {
            examples: BTreeMap::new(),
            destinations: BTreeMap::new(),
            flows: BTreeMap::new(),
            ports: TopK::new(256),
            by_proto: BTreeMap::new(),
            by_nat: BTreeMap::new(),
            local_invalid: 0,
            netns: None,
            host_rst: 0,
        }
    }
}

const EVIDENCE_KINDS: [Kind; 5] = [
    Kind::InsertFailed,
    Kind::TcpInvalid,
    Kind::TcpLiberal,
    Kind::TcpIgnored,
    Kind::ClashResolved,
];

/// Distinct (kind, label) pairs `by_proto` and `by_nat` keep: real
/// recordings have a handful; a corrupt one must not grow them without end.
const MAX_LABELS: usize = 64;

fn count_label(m: &mut BTreeMap<(Kind, String), u64>, k: (Kind, String)) {
    if m.len() < MAX_LABELS || m.contains_key(&k) {
        *m.entry(k).or_default() += 1;
    }
}

impl Collector {
    pub fn add(&mut self, e: &Event) {
        if !EVIDENCE_KINDS.contains(&e.kind) && e.kind != Kind::HostRst {
            return;
        }
        if e.kind == Kind::HostRst {
            if self.netns.is_some_and(|n| n != e.netns) {
                return;
            }
            self.host_rst += 1;
        }
        let ex = self.examples.entry(e.kind).or_default();
        if ex.len() < EXAMPLES {
            ex.push(e.clone());
        }
        if e.kind == Kind::HostRst {
            return;
        }
        if e.kind == Kind::TcpInvalid && e.hook.as_deref() == Some("output") {
            self.local_invalid += 1;
        }
        self.destinations
            .entry(e.kind)
            .or_insert_with(|| TopK::new(256))
            .add(e.destination(), 1);
        self.flows
            .entry(e.kind)
            .or_insert_with(|| TopK::new(256))
            .add(tuple_key(&e.orig), 1);
        // free-form strings in a file: a bounded number of distinct ones
        count_label(&mut self.by_proto, (e.kind, e.proto.to_string()));
        let nat = e.nat.clone().unwrap_or_else(|| "none".into());
        count_label(&mut self.by_nat, (e.kind, nat.to_string()));
        if e.kind == Kind::InsertFailed {
            if let Some(p) = e.port {
                self.ports.add(p, 1);
            }
        }
    }

    pub(super) fn nat_count(&self, k: Kind, pred: impl Fn(&str) -> bool) -> u64 {
        self.by_nat
            .iter()
            .filter(|((kind, n), _)| *kind == k && pred(n))
            .map(|(_, c)| c)
            .sum()
    }

    pub(super) fn proto_count(&self, k: Kind, proto: &str) -> u64 {
        self.by_proto
            .get(&(k, proto.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// Stats and evidence of an event stream: what `check` and `report` feed.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    pub stats: Stats,
    pub collector: Collector,
    pub incidents: Incidents,
}

/// Incidents by kind and outcome, with the first few in full (bounded).
#[derive(Clone, Debug, Default)]
pub struct Incidents {
    pub by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    pub examples: Vec<crate::incident::Incident>,
    /// Incidents by the destination the client wanted (top-k, bounded).
    pub destinations: Option<TopK<(IpAddr, u16)>>,
    /// Incidents by the workload that suffered them (top-k, bounded).
    pub workloads: Option<TopK<String>>,
    /// NAT allocations of new connections, and those that were a loser's
    /// retransmit (the share of new connections affected needs both).
    pub nat_allocs: u64,
    pub retransmit_allocs: u64,
}

/// Incidents kept in full in a document.
pub const INCIDENT_EXAMPLES: usize = 5;

impl Incidents {
    pub fn add(&mut self, i: &crate::incident::Incident) {
        *self
            .by_kind
            .entry(i.kind.clone())
            .or_default()
            .entry(i.outcome.clone())
            .or_default() += 1;
        if self.examples.len() < INCIDENT_EXAMPLES {
            let mut ex = i.clone();
            ex.timeline.truncate(8);
            self.examples.push(ex);
        }
        self.destinations
            .get_or_insert_with(|| TopK::new(256))
            .add((i.flow.dst, i.flow.dport), 1);
        let who = i
            .workload
            .as_ref()
            .and_then(|w| serde_json::from_value::<crate::workload::Workload>(w.clone()).ok())
            .map(|w| w.label())
            .unwrap_or_else(|| format!("netns {}", i.netns));
        self.workloads
            .get_or_insert_with(|| TopK::new(256))
            .add(who, 1);
        if i.kind == "snat_race" {
            self.retransmit_allocs += i.events.get("nat_alloc").copied().unwrap_or(0);
        }
    }

    /// snat_race incidents per new connection (allocations that were not a
    /// loser's retransmit); None without allocations (the nat probe is off).
    pub fn share_affected(&self) -> Option<f64> {
        let new = self.nat_allocs.saturating_sub(self.retransmit_allocs);
        (new > 0).then(|| self.count("snat_race") as f64 / new as f64)
    }

    /// The most affected workloads, most first.
    pub fn top_workloads(&self, n: usize) -> Vec<(String, u64)> {
        self.workloads
            .as_ref()
            .map(|t| t.top(n).into_iter().map(|(k, c, _)| (k, c)).collect())
            .unwrap_or_default()
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).map_or(0, |m| m.values().sum())
    }
}

impl Aggregate {
    /// Evidence of the traced netns `netns` (None: of every netns).
    pub fn for_netns(netns: Option<u32>) -> Aggregate {
        let mut a = Aggregate::default();
        a.collector.netns = netns;
        a
    }

    pub fn add(&mut self, e: &Event) {
        self.stats.add(e);
        self.collector.add(e);
        if e.kind == Kind::NatAlloc {
            self.incidents.nat_allocs += 1;
        }
    }

    pub fn add_incident(&mut self, i: &crate::incident::Incident) {
        self.incidents.add(i);
    }

    /// What the correlation stage released: its events and its incidents.
    pub fn add_output(&mut self, o: &crate::incident::Output) {
        for e in &o.events {
            self.add(e);
        }
        for i in &o.incidents {
            self.add_incident(i);
        }
    }
}

/// Everything the verdicts look at.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub agg: &'a Aggregate,
    pub kernel_counters: Option<&'a KernelCounters>,
    /// Seconds traced (rates); 0 when unknown.
    pub duration_s: f64,
    pub lost: u64,
    /// Conntrack table (entries, max) at the end.
    pub table_fill: Option<(u64, u64)>,
    /// The traced netns's configuration (None offline).
    pub node: Option<&'a NodeState>,
    /// Kernel release of the traced node (or the recording's).
    pub kernel: Option<&'a str>,
}
pub(super) fn top_dest(t: Option<&TopK<(IpAddr, u16)>>) -> Vec<Counted> {
    t.map(|t| {
        t.top(TOP)
            .into_iter()
            .map(|((a, p), n, _)| Counted {
                key: match a {
                    IpAddr::V6(a) => format!("[{a}]:{p}"),
                    a => format!("{a}:{p}"),
                },
                count: n,
            })
            .collect()
    })
    .unwrap_or_default()
}

pub(super) fn top_flows(t: Option<&TopK<TupleKey>>) -> Vec<Counted> {
    t.map(|t| {
        t.top(TOP)
            .into_iter()
            .map(|((s, sp, d, dp), n, _)| Counted {
                key: crate::event::Tuple {
                    src: s,
                    sport: sp,
                    dst: d,
                    dport: dp,
                }
                .to_string(),
                count: n,
            })
            .collect()
    })
    .unwrap_or_default()
}

pub(super) fn cpus(stats: &Stats, k: Kind) -> Vec<Counted> {
    let mut v: Vec<Counted> = stats
        .per_cpu
        .keys()
        .map(|c| Counted {
            key: format!("cpu{c}"),
            count: stats.cpu_count(*c, k),
        })
        .filter(|c| c.count > 0)
        .collect();
    v.sort_by_key(|c| std::cmp::Reverse(c.count));
    v.truncate(TOP * 2);
    v
}

pub(super) fn reasons(stats: &Stats, k: Kind) -> Vec<Counted> {
    stats
        .reasons_of(k)
        .into_iter()
        .take(TOP)
        .map(|(r, n)| Counted {
            key: r.to_string(),
            count: n,
        })
        .collect()
}

/// Events per second; none over less than a second (a cut-off recording).
pub(super) fn rate(n: u64, d: f64) -> Option<f64> {
    (d >= 1.0).then(|| n as f64 / d)
}

pub(super) fn simple_traced(
    i: &Input,
    k: Kind,
    id: &str,
    severity: Severity,
    title: &str,
    (summary, why, mitigation): (String, String, Vec<String>),
) -> Finding {
    let s = &i.agg.stats;
    let c = &i.agg.collector;
    let n = s.count(k);
    Finding {
        kind: id.into(),
        severity,
        origin: Origin::Traced,
        title: title.into(),
        what: What {
            count: n,
            kernel_count: None,
            rate_per_s: rate(n, i.duration_s),
            share: None,
            summary,
        },
        evidence: Evidence {
            destinations: top_dest(c.destinations.get(&k)),
            flows: top_flows(c.flows.get(&k)),
            cpus: cpus(s, k),
            reasons: reasons(s, k),
            examples: c.examples.get(&k).cloned().unwrap_or_default(),
            ..Default::default()
        },
        why,
        mitigation,
    }
}
