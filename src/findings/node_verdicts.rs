//! Configuration findings: what the node's state says without any traffic.

use super::invalid::ignores_under_lower_bound;
use super::rule_fix::{config_line, rule_fixes, widen_first};
use super::snat::table_full;
use super::text::kv_name;
use super::{sort, Evidence, Finding, Origin, Severity, What};
use crate::node::{Hook, NodeState};

/// What the node verdicts judge but could not be read (doctor exits 2
/// unless this is empty): without the rules there is no verdict on
/// --random-fully, SNAT pools or INVALID drops, and "No findings" would say
/// the node is fine when it is only unread. Why they could not be read is in
/// the node's notes.
pub fn not_read(n: &NodeState) -> Vec<String> {
    let mut v = Vec::new();
    if n.rules.is_none() {
        v.push("the NAT and filter rules (iptables-save, nft list ruleset): no verdict on --random-fully, SNAT pools or INVALID drops".to_string());
    }
    v
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
    let shadowed = n.shadowed();
    if !without.is_empty() {
        let mut config: Vec<String> = without.iter().map(|r| config_line(r, &shadowed)).collect();
        config.extend(shadowed.iter().map(|s| config_line(s.rule, &shadowed)));
        out.push(node(
            "nat_without_random_fully",
            Severity::Warning,
            "Source-NAT rules without --random-fully",
            (without.len() + shadowed.len()) as u64,
            format!(
                "{} of {} MASQUERADE/SNAT rules lack --random-fully: concurrent connections to one destination can be given the same port and lose at conntrack insert{}",
                without.len(),
                n.nat_rules().len(),
                match shadowed.len() {
                    0 => String::new(),
                    1 => "; and the rule that has it never sees a connection: it is shadowed by an earlier rule without it that matches the same traffic".to_string(),
                    k => format!("; and {k} rules that have it never see a connection: they are shadowed by earlier rules without it that match the same traffic"),
                }
            ),
            config,
            "Without --random-fully, NAT searches for a free port from a predictable offset, which makes two parallel connections likely to pick the same one; with it the port is fully random per connection. Only the first NAT rule that matches a connection counts: a --random-fully rule behind one without it does nothing.".into(),
            rule_fixes(n),
        ));
    }
    if let Some(p) = n.snat_pool_size() {
        if p < 1024 {
            let small: Vec<_> = n
                .nat_rules()
                .iter()
                .filter(|r| r.pool_size() == Some(p))
                .collect();
            out.push(node(
                "snat_pool_small",
                Severity::Warning,
                "A source-NAT pool with very few ports",
                p,
                format!("an SNAT rule translates to only {p} address:port pairs per destination: parallel connections to one destination will collide"),
                small.iter().map(|r| config_line(r, &shadowed)).collect(),
                "Each connection to the same destination needs a distinct translated (address, port); with a small pool the search exhausts and the loser is dropped at confirm.".into(),
                if small.iter().any(|r| r.single_port()) {
                    small.iter().filter(|r| r.single_port()).map(|r| widen_first(r)).collect()
                } else {
                    vec!["widen --to-source to more addresses and/or a wider port range".into()]
                },
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
