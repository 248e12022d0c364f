//! Verdicts on new connections: the SNAT port race (insert_failed), the
//! clashes the kernel resolved, and a full conntrack table; with the
//! mitigation that fits the node's NAT rules.

use std::fmt::Write as _;

use super::evidence::{cpus, rate, reasons, simple_traced, top_dest, top_flows, TOP};
use super::rule_fix::{config_line, rule_fixes, widen_first};
use super::text::pct;
use super::{Counted, Evidence, Finding, Input, Origin, Severity, What};
use crate::event::Kind;
use crate::node::NodeState;

fn snat_mitigation(node: Option<&NodeState>) -> (Vec<String>, Vec<String>) {
    let mut steps = Vec::new();
    let mut config = Vec::new();
    match node.and_then(|n| n.rules.as_ref().map(|_| n)) {
        Some(n) => {
            let shadowed = n.shadowed();
            for r in n.nat_rules() {
                config.push(config_line(r, &shadowed));
            }
            // a one-port pool first: --random-fully cannot help it
            let single: Vec<_> = n
                .nat_rules()
                .iter()
                .filter(|r| r.single_port() && r.random_fully)
                .collect();
            steps.extend(single.iter().map(|r| widen_first(r)));
            steps.extend(rule_fixes(n));
            if n.nat_rules().is_empty() {
                steps.push("no MASQUERADE/SNAT rule in this netns: the clashing translation comes from DNAT (ClusterIP) or another netns; trace the netns that does the NAT (--netns), or avoid the parallel same-tuple connects".into());
            } else if steps.is_empty() {
                steps.push("every source-NAT rule already has --random-fully: the remaining clashes need more translated tuples — add SNAT addresses (a pool: --to-source A-B) or avoid SNAT for this traffic (route pod IPs, NodeLocal DNSCache for DNS)".into());
            }
            let any_single = n.nat_rules().iter().any(|r| r.single_port());
            if let Some(p) = n.snat_pool_size().filter(|p| *p < 1024 && !any_single) {
                steps.push(format!(
                    "the smallest SNAT pool has only {p} address:port pairs per destination: widen its port range/addresses"
                ));
            }
        }
        None => {
            if let Some(n) = node {
                config.extend(n.notes.iter().map(|x| format!("NAT rules not read: {x}")));
            }
            steps.push("add --random-fully to every MASQUERADE/SNAT rule (iptables ... -j MASQUERADE --random-fully; nft: masquerade fully-random)".into());
            steps.push("if they have it already: more SNAT addresses, or avoid SNAT for this traffic (NodeLocal DNSCache for DNS)".into());
        }
    }
    (steps, config)
}

pub(super) fn snat_race(i: &Input) -> Option<Finding> {
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

pub(super) fn clash_resolved(i: &Input) -> Option<Finding> {
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

pub(super) fn table_full(
    fill: Option<(u64, u64)>,
    early_drop: u64,
    origin: Origin,
) -> Option<Finding> {
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
