//! Verdicts: pure functions from what was traced (or recorded), the kernel's
//! own counters, the node's configuration and the kernel version to ordered
//! findings, each with evidence, the reason it happens on this kernel, and the
//! mitigation that fits this node.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Kind};
use crate::node::{Hook, NatTarget, NodeState};
use crate::record::KernelCounters;
use crate::stats::{tuple_key, Stats, TopK, TupleKey};

pub mod doc;

/// Example events kept per kind.
pub const EXAMPLES: usize = 3;
const TOP: usize = 5;

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

/// Every finding kind, in the order of their usual seriousness. Stable ids:
/// `--fail-on` and scripts use them.
pub const KINDS: [&str; 13] = [
    "snat_race",
    "insert_failed",
    "tcp_invalid_reset",
    "conntrack_table_full",
    "events_lost",
    "be_liberal_boot_order",
    "nat_without_random_fully",
    "snat_pool_small",
    "invalid_drop_wrong_chain",
    "invalid_unmitigated",
    "tcp_invalid_masked",
    "tcp_ignored",
    "clash_resolved",
];

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

/// Distinct (kind, label) pairs `by_proto` and `by_nat` keep: real
/// recordings have a handful; a corrupt one must not grow them without end.
const MAX_LABELS: usize = 64;

fn count_label(m: &mut BTreeMap<(Kind, String), u64>, k: (Kind, String)) {
    if m.len() < MAX_LABELS || m.contains_key(&k) {
        *m.entry(k).or_default() += 1;
    }
}

const EVIDENCE_KINDS: [Kind; 5] = [
    Kind::InsertFailed,
    Kind::TcpInvalid,
    Kind::TcpLiberal,
    Kind::TcpIgnored,
    Kind::ClashResolved,
];

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
        count_label(&mut self.by_proto, (e.kind, e.proto.clone()));
        let nat = e.nat.clone().unwrap_or_else(|| "none".into());
        count_label(&mut self.by_nat, (e.kind, nat));
        if e.kind == Kind::InsertFailed {
            if let Some(p) = e.port {
                self.ports.add(p, 1);
            }
        }
    }

    fn nat_count(&self, k: Kind, pred: impl Fn(&str) -> bool) -> u64 {
        self.by_nat
            .iter()
            .filter(|((kind, n), _)| *kind == k && pred(n))
            .map(|(_, c)| c)
            .sum()
    }

    fn proto_count(&self, k: Kind, proto: &str) -> u64 {
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

/// Window reasons by what the kernel does with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonClass {
    /// SEQ/ACK over the upper bound: INVALID on every kernel.
    OverUpper,
    /// Under the lower bound (retransmitted / delayed): INVALID ≤ 6.0, IGNORED ≥ 6.1.
    UnderLower,
    Other,
}

/// Classifies the kernel's wording (6.1+ and older forms).
pub fn reason_class(reason: &str) -> ReasonClass {
    let r = reason.to_ascii_lowercase();
    if r.contains("upper bound") && r.contains("over") {
        ReasonClass::OverUpper
    } else if (r.contains("lower bound") && (r.contains("under") || r.contains("ignored")))
        || r.contains("more than expected")
    {
        ReasonClass::UnderLower
    } else {
        ReasonClass::Other
    }
}

/// 6.1 made tcp_in_window IGNORE retransmitted/under-lower-bound segments.
pub fn ignores_under_lower_bound(kernel: Option<(u32, u32)>) -> Option<bool> {
    kernel.map(|v| v >= (6, 1))
}

/// Whether a segment with this reason is INVALID (escapes de-NAT, provokes the
/// node's RST) on this kernel. None: the kernel version is unknown.
pub fn reason_resets(kernel: Option<(u32, u32)>, reason: &str) -> Option<bool> {
    match reason_class(reason) {
        ReasonClass::UnderLower => ignores_under_lower_bound(kernel).map(|i| !i),
        _ => Some(true),
    }
}

fn pct(x: f64) -> String {
    if x >= 0.1 || x == 0.0 {
        format!("{:.1}%", x * 100.0)
    } else {
        format!("{:.3}%", x * 100.0)
    }
}

fn kv_name(k: Option<(u32, u32)>) -> String {
    k.map_or("unknown".into(), |(a, b)| format!("{a}.{b}"))
}

fn top_dest(t: Option<&TopK<(IpAddr, u16)>>) -> Vec<Counted> {
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

fn top_flows(t: Option<&TopK<TupleKey>>) -> Vec<Counted> {
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

fn cpus(stats: &Stats, k: Kind) -> Vec<Counted> {
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

fn reasons(stats: &Stats, k: Kind) -> Vec<Counted> {
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
fn rate(n: u64, d: f64) -> Option<f64> {
    (d >= 1.0).then(|| n as f64 / d)
}

/// The command that adds --random-fully to an iptables rule ("-A C ..." →
/// "iptables -t nat -R"-free form: delete and re-add).
fn random_fully_fix(r: &crate::node::NatRule) -> String {
    match r.source.as_str() {
        "nft" => format!(
            "nft: add `fully-random` to the {} statement in table {} chain {}: `{} fully-random`",
            if r.target == NatTarget::Snat {
                "snat"
            } else {
                "masquerade"
            },
            r.table,
            r.chain,
            r.rule
        ),
        tool => {
            let spec = r
                .rule
                .strip_prefix("-A ")
                .or_else(|| r.rule.strip_prefix("-I "))
                .unwrap_or(&r.rule);
            format!(
                "{tool} -t nat -D {spec} && {tool} -t nat -A {spec} --random-fully   (persist it where the rule comes from: Docker, the CNI, kube-proxy, firewall scripts)"
            )
        }
    }
}

fn snat_mitigation(node: Option<&NodeState>) -> (Vec<String>, Vec<String>) {
    let mut steps = Vec::new();
    let mut config = Vec::new();
    match node.and_then(|n| n.rules.as_ref().map(|_| n)) {
        Some(n) => {
            let without = n.nat_without_random_fully();
            for r in n.nat_rules() {
                config.push(format!(
                    "{} {} {}: {}",
                    r.source,
                    r.table,
                    if r.random_fully {
                        "(--random-fully)"
                    } else {
                        "(no --random-fully)"
                    },
                    r.rule
                ));
            }
            if n.nat_rules().is_empty() {
                steps.push("no MASQUERADE/SNAT rule in this netns: the clashing translation comes from DNAT (ClusterIP) or another netns; trace the netns that does the NAT (--netns), or avoid the parallel same-tuple connects".into());
            } else if !without.is_empty() {
                for r in &without {
                    steps.push(format!(
                        "add --random-fully to this rule: {}",
                        random_fully_fix(r)
                    ));
                }
            } else {
                steps.push("every source-NAT rule already has --random-fully: the remaining clashes need more translated tuples — add SNAT addresses (a pool: --to-source A-B) or avoid SNAT for this traffic (route pod IPs, NodeLocal DNSCache for DNS)".into());
            }
            if let Some(p) = n.snat_pool_size() {
                if p < 1024 {
                    steps.push(format!(
                        "the smallest SNAT pool has only {p} address:port pairs per destination: widen its port range/addresses"
                    ));
                }
            }
        }
        None => {
            steps.push("add --random-fully to every MASQUERADE/SNAT rule (iptables ... -j MASQUERADE --random-fully; nft: masquerade fully-random)".into());
            steps.push("if they have it already: more SNAT addresses, or avoid SNAT for this traffic (NodeLocal DNSCache for DNS)".into());
        }
    }
    (steps, config)
}

fn snat_race(i: &Input) -> Option<Finding> {
    let s = &i.agg.stats;
    let c = &i.agg.collector;
    let seen = s.count(Kind::InsertFailed);
    let kernel = i.kernel_counters.map(|k| k.insert_failed);
    if seen == 0 && kernel.unwrap_or(0) == 0 {
        return None;
    }
    let nat_alloc = s.count(Kind::NatAlloc);
    let natted = c.nat_count(Kind::InsertFailed, |n| n != "none");
    let node_has_nat = i.node.is_some_and(|n| !n.nat_rules().is_empty());
    let is_nat = natted > 0 || nat_alloc > 0 || node_has_nat;
    let kind = if is_nat { "snat_race" } else { "insert_failed" };
    let tcp = c.proto_count(Kind::InsertFailed, "tcp");
    let udp = c.proto_count(Kind::InsertFailed, "udp");
    let share = (nat_alloc > 0).then(|| seen as f64 / nat_alloc as f64);
    let mut summary = format!("{seen} conntrack insert failures");
    if let Some(k) = kernel {
        if k == seen {
            let _ = write!(summary, " (the kernel's insert_failed counter agrees: {k})");
        } else {
            let _ = write!(
                summary,
                " (the kernel's insert_failed counter says {k}: {})",
                if k > seen {
                    "some failures were not seen — lost events, another netns, or a failure path without a probe"
                } else {
                    "more events than the counter — events from other network namespaces"
                }
            );
        }
    }
    if let Some(sh) = share {
        let _ = write!(
            summary,
            "; {} of {nat_alloc} new NATed connections lost their first packet",
            pct(sh)
        );
    }
    if tcp + udp > 0 {
        let _ = write!(
            summary,
            "; {tcp} TCP (a dropped SYN: the connect takes 1 s or 3 s more), {udp} UDP (a lost datagram: a 5 s DNS timeout)"
        );
    }
    let small_pool = i
        .node
        .and_then(|n| n.snat_pool_size())
        .filter(|p| *p < 1024);
    let why = if let (true, Some(p)) = (is_nat, small_pool) {
        format!("The SNAT pool has only {p} address:port pairs per destination: while they are in use, NAT finds no free tuple, keeps a taken one, and the new entry loses at confirm (__nf_conntrack_confirm): insert_failed is counted and the packet dropped. Even with a wide pool, parallel connections race the same way, because the port is chosen before the insert, not atomically with it.")
    } else if is_nat {
        "Two new connections to the same destination were given the same translated source port: NAT picks the port (nf_nat_l4proto_unique_tuple) before the conntrack entry is inserted, not atomically, so the second entry loses at confirm (__nf_conntrack_confirm), insert_failed is counted and its packet is dropped. TCP clashes are never resolved; the client retransmits after 1 s."
            .into()
    } else {
        "Conntrack could not insert a new entry because an entry with the same tuple was inserted first by another CPU (a race between parallel packets of new flows, such as a resolver's A and AAAA queries from one socket); the packet was dropped."
        .into()
    };
    let (mitigation, config) = if is_nat {
        snat_mitigation(i.node)
    } else {
        (
            vec!["for DNS: `options single-request-reopen` (glibc) or NodeLocal DNSCache avoid parallel same-tuple queries".into()],
            Vec::new(),
        )
    };
    let severity = if seen > 0 || kernel.unwrap_or(0) > 0 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        kind: kind.into(),
        severity,
        origin: Origin::Traced,
        title: if is_nat {
            "NAT port-allocation race: new connections dropped at conntrack insert".into()
        } else {
            "Conntrack insert failures: new flows dropped".into()
        },
        what: What {
            count: seen,
            kernel_count: kernel,
            rate_per_s: rate(seen, i.duration_s),
            share,
            summary,
        },
        evidence: Evidence {
            destinations: top_dest(c.destinations.get(&Kind::InsertFailed)),
            flows: top_flows(c.flows.get(&Kind::InsertFailed)),
            cpus: cpus(s, Kind::InsertFailed),
            ports: c
                .ports
                .top(TOP)
                .into_iter()
                .map(|(p, n, _)| Counted {
                    key: p.to_string(),
                    count: n,
                })
                .collect(),
            reasons: reasons(s, Kind::InsertFailed),
            config,
            examples: c
                .examples
                .get(&Kind::InsertFailed)
                .cloned()
                .unwrap_or_default(),
        },
        why,
        mitigation,
    })
}

/// Where escaped segments go: INPUT when the connection was source-NATed by
/// this node (the reply is addressed to the node), FORWARD when it was DNATed
/// to a pod (ClusterIP) and the segment is routed on.
fn needed_hooks(c: &Collector, node: Option<&NodeState>) -> Vec<Hook> {
    let snat = c.nat_count(Kind::TcpInvalid, |n| n.contains("snat"));
    let dnat = c.nat_count(Kind::TcpInvalid, |n| n.contains("dnat"));
    let mut v = Vec::new();
    if snat > 0 || (dnat == 0 && node.is_some_and(|n| !n.nat_rules().is_empty())) {
        v.push(Hook::Input);
    }
    if dnat > 0 {
        v.push(Hook::Forward);
    }
    if v.is_empty() {
        v.push(Hook::Input);
    }
    v
}

fn be_liberal_steps(node: Option<&NodeState>, steps: &mut Vec<String>, config: &mut Vec<String>) {
    let persist = "persist it in /etc/sysctl.d/90-conntrack.conf AND list `nf_conntrack` in /etc/modules-load.d/nf_conntrack.conf, or systemd-sysctl runs before the module exists and the setting is silently lost at boot";
    match node {
        Some(n) if n.boot.boot_order_trap() => {
            for s in &n.boot.be_liberal_settings {
                config.push(format!(
                    "{}:{}: nf_conntrack_tcp_be_liberal = {}",
                    s.file, s.line, s.value
                ));
            }
            config.push("no nf_conntrack in any modules-load.d file".into());
            steps.push(format!(
                "be_liberal=1 is configured ({}) but does not survive boot: nf_conntrack is not in /etc/modules-load.d, so systemd-sysctl runs before the module exists. `echo nf_conntrack > /etc/modules-load.d/nf_conntrack.conf` and `sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1` now",
                n.boot
                    .be_liberal_settings
                    .last()
                    .map(|s| s.file.as_str())
                    .unwrap_or("sysctl files")
            ));
        }
        _ => steps.push(format!(
            "sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1 in the traced netns; {persist}"
        )),
    }
}

fn invalid_drop_step(
    needed: &[Hook],
    node: Option<&NodeState>,
    steps: &mut Vec<String>,
    config: &mut Vec<String>,
) {
    let mut missing = Vec::new();
    for h in needed {
        match node.and_then(|n| n.invalid_drop_on(*h)) {
            Some(true) => {}
            _ => missing.push(*h),
        }
    }
    if let Some(r) = node.and_then(|n| n.rules.as_ref()) {
        for d in &r.invalid_drops {
            config.push(format!(
                "INVALID drop in {} {} (reached from {}): {}",
                d.table,
                d.chain,
                if d.hooks.is_empty() {
                    "no base chain".to_string()
                } else {
                    d.hooks
                        .iter()
                        .map(|h| h.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                d.rule
            ));
        }
    }
    for h in missing {
        let wrong = node
            .and_then(|n| n.rules.as_ref())
            .is_some_and(|r| !r.invalid_drops.is_empty());
        steps.push(format!(
            "or drop them before they reach the stack: `iptables -I {h} -m conntrack --ctstate INVALID -j DROP`{}",
            if wrong {
                format!(" — the node's INVALID-drop rule does not cover {h}, the chain these segments go through{}", if h == Hook::Input { " (an escaped reply to a source-NATed connection is addressed to the node itself)" } else { "" })
            } else {
                String::new()
            }
        ));
    }
}

fn tcp_invalid_reset(i: &Input) -> Option<Finding> {
    let s = &i.agg.stats;
    let c = &i.agg.collector;
    let n = s.count(Kind::TcpInvalid);
    if n == 0 {
        return None;
    }
    let kv = i.kernel.and_then(crate::node::kernel_version);
    let rst = c.host_rst;
    let rs = reasons(s, Kind::TcpInvalid);
    let over = rs
        .iter()
        .filter(|r| reason_class(&r.key) == ReasonClass::OverUpper)
        .map(|r| r.count)
        .sum::<u64>();
    let under = rs
        .iter()
        .filter(|r| reason_class(&r.key) == ReasonClass::UnderLower)
        .map(|r| r.count)
        .sum::<u64>();
    let mut summary = format!("{n} TCP segments classified INVALID by conntrack");
    if c.local_invalid > 0 {
        let _ = write!(
            summary,
            " ({} from the network, {} sent by the node itself: its RSTs have no conntrack entry either)",
            n.saturating_sub(c.local_invalid),
            c.local_invalid
        );
    }
    if over + under > 0 {
        let _ = write!(
            summary,
            " ({over} over the upper bound, {under} under the lower bound)"
        );
    }
    let _ = write!(
        summary,
        "; the node sent {rst} RSTs for segments no socket wanted"
    );
    if let Some(k) = i.kernel_counters {
        let _ = write!(
            summary,
            "; the kernel's invalid counter rose by {} (it counts the node's own RSTs too)",
            k.invalid
        );
    }
    let why_base = "An INVALID segment loses its conntrack entry, so NAT does not translate it back: it reaches the node's own TCP stack, which knows no such socket and answers with a RST that tears down the pod's connection (\"connection reset by peer\").";
    let why = match ignores_under_lower_bound(kv) {
        Some(true) => format!(
            "On this kernel ({}, ≥ 6.1) conntrack IGNOREs retransmitted and under-the-lower-bound segments (the classic spurious-retransmission story no longer resets); only segments over the upper bound of the window (SEQ/ACK over upper bound) are INVALID. {why_base}",
            kv_name(kv)
        ),
        Some(false) => format!(
            "On this kernel ({}, ≤ 6.0) every out-of-window segment is INVALID, including spurious retransmissions and reordered or delayed segments under the lower bound (the usual trigger on long, busy connections). {why_base}",
            kv_name(kv)
        ),
        None => format!(
            "Kernels ≤ 6.0 mark every out-of-window segment INVALID (retransmitted/under the lower bound too); ≥ 6.1 IGNOREs those and marks only segments over the upper bound INVALID. {why_base}"
        ),
    };
    let mut steps = Vec::new();
    let mut config = Vec::new();
    let liberal = i.node.and_then(|n| n.sysctl.tcp_be_liberal);
    if liberal == Some(true) {
        steps.push("be_liberal is already 1, which accepts every out-of-window segment but RSTs: the remaining INVALID segments are out-of-window RSTs or not window verdicts — set net.netfilter.nf_conntrack_tcp_ignore_invalid_rst=1 (5.14+)".into());
        config.push("net.netfilter.nf_conntrack_tcp_be_liberal = 1".into());
    } else {
        if liberal == Some(false) {
            config.push("net.netfilter.nf_conntrack_tcp_be_liberal = 0".into());
        }
        be_liberal_steps(i.node, &mut steps, &mut config);
    }
    invalid_drop_step(&needed_hooks(c, i.node), i.node, &mut steps, &mut config);
    let severity = if rst > 0 || ignores_under_lower_bound(kv) != Some(true) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        kind: "tcp_invalid_reset".into(),
        severity,
        origin: Origin::Traced,
        title: "INVALID TCP segments escape de-NAT and provoke the node's RST".into(),
        what: What {
            count: n,
            kernel_count: i.kernel_counters.map(|k| k.invalid),
            rate_per_s: rate(n, i.duration_s),
            share: None,
            summary,
        },
        evidence: Evidence {
            destinations: top_dest(c.destinations.get(&Kind::TcpInvalid)),
            flows: top_flows(c.flows.get(&Kind::TcpInvalid)),
            cpus: cpus(s, Kind::TcpInvalid),
            ports: Vec::new(),
            reasons: rs,
            config,
            examples: c
                .examples
                .get(&Kind::TcpInvalid)
                .into_iter()
                .flatten()
                .chain(c.examples.get(&Kind::HostRst).into_iter().flatten())
                .take(EXAMPLES)
                .cloned()
                .collect(),
        },
        why,
        mitigation: steps,
    })
}

fn simple_traced(
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

fn tcp_invalid_masked(i: &Input) -> Option<Finding> {
    let n = i.agg.stats.count(Kind::TcpLiberal);
    (n > 0).then(|| simple_traced(
        i,
        Kind::TcpLiberal,
        "tcp_invalid_masked",
        Severity::Info,
        "be_liberal accepted out-of-window segments that would have been INVALID",
        (
        format!("{n} segments would have been INVALID (and reset the connection) but nf_conntrack_tcp_be_liberal=1 accepted them"),
        "be_liberal makes conntrack accept out-of-window segments (all but RSTs): the mitigation is working.".into(),
        vec!["keep be_liberal=1 — and make sure it survives a reboot (nf_conntrack in /etc/modules-load.d)".into()],
        ),
    ))
}

fn tcp_ignored(i: &Input) -> Option<Finding> {
    let n = i.agg.stats.count(Kind::TcpIgnored);
    let kv = i.kernel.and_then(crate::node::kernel_version);
    (n > 0).then(|| simple_traced(
        i,
        Kind::TcpIgnored,
        "tcp_ignored",
        Severity::Info,
        "Out-of-window segments IGNORED by conntrack (harmless on this kernel)",
        (
        format!("{n} retransmitted or under-the-lower-bound segments were IGNORED: not INVALID, still de-NATed, no reset"),
        format!("Since 6.1 (this kernel: {}) tcp_in_window returns IGNORE for segments under the lower bound; on ≤ 6.0 these same segments would have been INVALID and reset the connection.", kv_name(kv)),
        Vec::new(),
        ),
    ))
}

fn clash_resolved(i: &Input) -> Option<Finding> {
    let n = i.agg.stats.count(Kind::ClashResolved);
    let k = i.kernel_counters.map(|k| k.clash_resolve);
    if n == 0 && k.unwrap_or(0) == 0 {
        return None;
    }
    let mut f = simple_traced(
        i,
        Kind::ClashResolved,
        "clash_resolved",
        Severity::Info,
        "Conntrack clashes resolved (nothing lost)",
        (
        format!(
            "{n} clashes at confirm were resolved (kernel clash_resolve: {}) — packets kept, unlike insert_failed ({})",
            k.map_or("unknown".into(), |k| k.to_string()),
            i.agg.stats.count(Kind::InsertFailed)
        ),
        "Two packets of the same UDP flow from one socket (the glibc A/AAAA parallel DNS queries) raced to insert the same entry; since 5.10 the kernel merges them instead of dropping.".into(),
        Vec::new(),
        ),
    );
    f.what.kernel_count = k;
    Some(f)
}

fn table_full(fill: Option<(u64, u64)>, early_drop: u64, origin: Origin) -> Option<Finding> {
    let (count, max) = fill?;
    if max == 0 {
        return None;
    }
    let r = count as f64 / max as f64;
    let severity = if r >= 0.95 || early_drop > 0 {
        Severity::Critical
    } else if r >= 0.8 {
        Severity::Warning
    } else {
        return None;
    };
    Some(Finding {
        kind: "conntrack_table_full".into(),
        severity,
        origin,
        title: "Conntrack table nearly full".into(),
        what: What {
            count,
            kernel_count: (early_drop > 0).then_some(early_drop),
            rate_per_s: None,
            share: Some(r),
            summary: format!(
                "{count} of {max} entries in use ({}){}",
                pct(r),
                if early_drop > 0 {
                    format!("; the kernel evicted {early_drop} entries early to make room")
                } else {
                    String::new()
                }
            ),
        },
        evidence: Evidence {
            config: vec![format!("net.netfilter.nf_conntrack_max = {max}")],
            ..Default::default()
        },
        why: "When the table is full, new connections cannot get an entry: conntrack evicts unreplied ones early and then drops new packets (\"nf_conntrack: table full, dropping packet\").".into(),
        mitigation: vec![
            format!("raise net.netfilter.nf_conntrack_max (e.g. to {}) and the hash size (/sys/module/nf_conntrack/parameters/hashsize)", max * 2),
            "shorten net.netfilter.nf_conntrack_tcp_timeout_established / _time_wait if idle entries pile up".into(),
        ],
    })
}

fn events_lost(i: &Input) -> Option<Finding> {
    (i.lost > 0).then(|| Finding {
        kind: "events_lost".into(),
        severity: Severity::Warning,
        origin: Origin::Traced,
        title: "Events were lost: counts are lower bounds".into(),
        what: What {
            count: i.lost,
            summary: format!(
                "{} records could not be delivered (ring buffer full) — compare with the kernel counters",
                i.lost
            ),
            ..Default::default()
        },
        evidence: Evidence::default(),
        why: "The ring buffer filled faster than ctrace read it.".into(),
        mitigation: vec!["larger --ringbuf-mb, or trace one netns (--netns) rather than --all-netns".into()],
    })
}

/// Configuration findings: what the node's state says without any traffic.
pub fn node_findings(n: &NodeState) -> Vec<Finding> {
    let mut out = Vec::new();
    let kv = n.kernel_version();
    let node = |kind: &str,
                severity,
                title: &str,
                count,
                summary: String,
                config,
                why: String,
                mitigation| Finding {
        kind: kind.into(),
        severity,
        origin: Origin::Node,
        title: title.into(),
        what: What {
            count,
            summary,
            ..Default::default()
        },
        evidence: Evidence {
            config,
            ..Default::default()
        },
        why,
        mitigation,
    };
    // the boot-order trap
    if n.boot.boot_order_trap() {
        let running = n.sysctl.tcp_be_liberal;
        let mut config: Vec<String> = n
            .boot
            .be_liberal_settings
            .iter()
            .map(|s| {
                format!(
                    "{}:{}: nf_conntrack_tcp_be_liberal = {}",
                    s.file, s.line, s.value
                )
            })
            .collect();
        config.push(if n.boot.conntrack_modules_load.is_empty() {
            "nf_conntrack is not listed in /etc/modules-load.d/*.conf".into()
        } else {
            String::new()
        });
        if let Some(r) = running {
            config.push(format!(
                "running value: net.netfilter.nf_conntrack_tcp_be_liberal = {}",
                r as u8
            ));
        }
        out.push(node(
            "be_liberal_boot_order",
            if running == Some(false) {
                Severity::Critical
            } else {
                Severity::Warning
            },
            "be_liberal=1 is configured but does not survive a reboot",
            1,
            match running {
                Some(false) => "be_liberal is configured to 1 but the running value is 0: the boot-order trap has already bitten".into(),
                Some(true) => "be_liberal is 1 now, but only because nf_conntrack was loaded before it was set by hand or by luck: the next boot may lose it".into(),
                None => "be_liberal is configured to 1 but nf_conntrack is not loaded at boot before systemd-sysctl runs".into(),
            },
            config,
            "net.netfilter.nf_conntrack_tcp_be_liberal belongs to the nf_conntrack module; systemd-sysctl applies /etc/sysctl.d at boot after systemd-modules-load, but nf_conntrack is loaded later, on demand, so the key does not exist yet and the setting is skipped.".into(),
            vec![
                "echo nf_conntrack > /etc/modules-load.d/nf_conntrack.conf (systemd-modules-load runs before systemd-sysctl)".into(),
                "sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1 now".into(),
            ],
        ));
    }
    let rules = n.rules.as_ref();
    let without = n.nat_without_random_fully();
    if !without.is_empty() {
        out.push(node(
            "nat_without_random_fully",
            Severity::Warning,
            "Source-NAT rules without --random-fully",
            without.len() as u64,
            format!(
                "{} of {} MASQUERADE/SNAT rules lack --random-fully: concurrent connections to one destination can be given the same port and lose at conntrack insert",
                without.len(),
                n.nat_rules().len()
            ),
            without.iter().map(|r| format!("{} {} {}: {}", r.source, r.table, r.chain, r.rule)).collect(),
            "Without --random-fully, NAT searches for a free port from a predictable offset, which makes two parallel connections likely to pick the same one; with it the port is fully random per connection.".into(),
            without.iter().map(|r| random_fully_fix(r)).collect(),
        ));
    }
    if let Some(p) = n.snat_pool_size() {
        if p < 1024 {
            out.push(node(
                "snat_pool_small",
                Severity::Warning,
                "A source-NAT pool with very few ports",
                p,
                format!("an SNAT rule translates to only {p} address:port pairs per destination: parallel connections to one destination will collide"),
                n.nat_rules().iter().filter(|r| r.pool_size() == Some(p)).map(|r| r.rule.clone()).collect(),
                "Each connection to the same destination needs a distinct translated (address, port); with a small pool the search exhausts and the loser is dropped at confirm.".into(),
                vec!["widen --to-source to more addresses and/or a wider port range".into()],
            ));
        }
    }
    let snat = !n.nat_rules().is_empty();
    let liberal = n.sysctl.tcp_be_liberal;
    let drop_input = n.invalid_drop_on(Hook::Input);
    let drop_forward = n.invalid_drop_on(Hook::Forward);
    if let Some(r) = rules {
        if snat && liberal != Some(true) && drop_input == Some(false) && drop_forward == Some(true)
        {
            out.push(node(
                "invalid_drop_wrong_chain",
                Severity::Warning,
                "The INVALID-drop rule is only in FORWARD: source-NATed connections are not covered",
                1,
                "an INVALID segment of a source-NATed connection is not de-NATed, is addressed to the node itself and goes through INPUT — which has no INVALID drop — so the node answers with a RST".into(),
                r.invalid_drops.iter().map(|d| format!("{} {} (reached from {}): {}", d.table, d.chain, d.hooks.iter().map(|h| h.name()).collect::<Vec<_>>().join(", "), d.rule)).collect(),
                "FORWARD only sees escaped segments that are routed on to a pod (the DNAT/ClusterIP path); the SNAT-to-outside path ends in INPUT.".into(),
                vec!["iptables -I INPUT -m conntrack --ctstate INVALID -j DROP".into(), "or sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1 (persisted with nf_conntrack in modules-load.d)".into()],
            ));
        } else if snat
            && liberal == Some(false)
            && drop_input == Some(false)
            && drop_forward == Some(false)
        {
            let old = ignores_under_lower_bound(kv) == Some(false);
            out.push(node(
                "invalid_unmitigated",
                if old { Severity::Warning } else { Severity::Info },
                "Nothing stops INVALID segments from provoking RSTs",
                1,
                format!(
                    "be_liberal is 0 and no INVALID-drop rule: {}",
                    match ignores_under_lower_bound(kv) {
                        Some(true) => "on this kernel (≥ 6.1) only segments over the window's upper bound can still reset a NATed connection",
                        Some(false) => "on this kernel (≤ 6.0) any spurious retransmission or reordered segment can reset a long NATed connection",
                        None => "a reordered or retransmitted segment (≤ 6.0) or one over the window (all kernels) can reset a NATed connection",
                    }
                ),
                vec!["net.netfilter.nf_conntrack_tcp_be_liberal = 0".into()],
                format!("Kernel {}: an INVALID segment escapes de-NAT and the node answers it with a RST.", kv_name(kv)),
                vec![
                    "sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1 (persist it, with nf_conntrack in /etc/modules-load.d)".into(),
                    "or iptables -I INPUT -m conntrack --ctstate INVALID -j DROP (and FORWARD for DNATed pods)".into(),
                ],
            ));
        }
    }
    if let (Some(c), Some(m)) = (n.sysctl.conntrack_count, n.sysctl.conntrack_max) {
        out.extend(table_full(Some((c, m)), 0, Origin::Node));
    }
    for f in &mut out {
        f.evidence.config.retain(|s| !s.is_empty());
    }
    sort(&mut out);
    out
}

fn rank(kind: &str) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len())
}

/// Most serious first; then traced before node; then the usual order.
pub fn sort(v: &mut [Finding]) {
    v.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then((a.origin == Origin::Node).cmp(&(b.origin == Origin::Node)))
            .then(rank(&a.kind).cmp(&rank(&b.kind)))
            .then(b.what.count.cmp(&a.what.count))
    });
}

/// Every finding: traced ones, then the node's configuration ones (those that
/// the traced ones do not already cover), most serious first.
pub fn evaluate(i: &Input) -> Vec<Finding> {
    let mut out: Vec<Finding> = [
        snat_race(i),
        tcp_invalid_reset(i),
        table_full(
            i.table_fill,
            i.kernel_counters.map_or(0, |k| k.early_drop),
            Origin::Traced,
        ),
        events_lost(i),
        tcp_invalid_masked(i),
        tcp_ignored(i),
        clash_resolved(i),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(n) = i.node {
        for f in node_findings(n) {
            if !out.iter().any(|o| o.kind == f.kind) {
                out.push(f);
            }
        }
    }
    sort(&mut out);
    out
}

/// Whether a finding counts for the exit code: with `fail_on` empty, traced
/// findings of warning or worse (configuration advice and info do not); else
/// exactly the listed kinds.
pub fn counts_for_exit(f: &Finding, fail_on: &[String], node_only: bool) -> bool {
    if !fail_on.is_empty() {
        return fail_on.iter().any(|k| k == &f.kind);
    }
    f.severity >= Severity::Warning && (node_only || f.origin == Origin::Traced)
}

/// Refuses unknown kinds in --fail-on with the list of known ones.
pub fn validate_fail_on(kinds: &[String]) -> anyhow::Result<()> {
    for k in kinds {
        if !KINDS.contains(&k.as_str()) {
            anyhow::bail!(
                "--fail-on: unknown finding kind '{k}' (known: {})",
                KINDS.join(", ")
            );
        }
    }
    Ok(())
}

/// Human-readable rendering of findings.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    if findings.is_empty() {
        s.push_str("No findings.\n");
        return s;
    }
    for f in findings {
        let _ = writeln!(
            s,
            "\n[{}] {} ({}, {})",
            f.severity.name().to_uppercase(),
            f.title,
            f.kind,
            if f.origin == Origin::Node {
                "node configuration"
            } else {
                "traced"
            }
        );
        let _ = write!(s, "  What: {}", f.what.summary);
        if let Some(r) = f.what.rate_per_s {
            let _ = write!(s, " [{r:.2}/s]");
        }
        s.push('\n');
        let ev = &f.evidence;
        let list = |name: &str, v: &[Counted], s: &mut String| {
            if !v.is_empty() {
                let items: Vec<String> = v
                    .iter()
                    .map(|c| format!("{} ({})", c.key, c.count))
                    .collect();
                let _ = writeln!(s, "  {name}: {}", items.join(", "));
            }
        };
        list("Destinations", &ev.destinations, &mut s);
        list("Flows", &ev.flows, &mut s);
        list("CPUs", &ev.cpus, &mut s);
        list("Translated ports", &ev.ports, &mut s);
        list("Reasons", &ev.reasons, &mut s);
        for c in &ev.config {
            let _ = writeln!(s, "  Node: {c}");
        }
        for e in &ev.examples {
            let _ = write!(
                s,
                "  Example: {} cpu{} {} {}",
                e.kind, e.cpu, e.proto, e.orig
            );
            if let Some(r) = &e.reply {
                let _ = write!(s, " (reply {r})");
            }
            if let Some(p) = e.port {
                let _ = write!(s, " port {p}");
            }
            if !e.reason.is_empty() {
                let _ = write!(s, ": {}", e.reason);
            }
            s.push('\n');
        }
        let _ = writeln!(s, "  Why: {}", f.why);
        for (k, m) in f.mitigation.iter().enumerate() {
            let _ = writeln!(s, "  {} {m}", if k == 0 { "Fix:" } else { "    " });
        }
    }
    s
}

#[cfg(test)]
mod tests;
