//! Fixes for the node's source-NAT rules, checked against where each rule
//! really is: its position in the chain, its packet counter, who writes it
//! (Docker re-creates its own), the rules ahead of it that take its traffic,
//! and whether its pool has more than one port for `--random-fully` to pick.

use crate::node::{NatRule, NatTarget, NodeState, Shadowed};

/// Steps that give the node's source-NAT rules a random port, in the order
/// to apply them: single-port pools widened (`--random-fully` cannot help
/// them), `--random-fully` copies that never see a connection removed (by
/// number, last first, so the numbers shown stay right and the copy is not
/// confused with the rule a fix inserts), then each rule without
/// `--random-fully` fixed where it stands.
pub(super) fn rule_fixes(n: &NodeState) -> Vec<String> {
    let without = n.nat_without_random_fully();
    let (single, rest): (Vec<&NatRule>, Vec<&NatRule>) =
        without.into_iter().partition(|r| r.single_port());
    let mut steps: Vec<String> = single.into_iter().map(widen_first).collect();
    let mut shadowed = n.shadowed();
    shadowed.sort_by_key(|s| std::cmp::Reverse(s.rule.position));
    steps.extend(shadowed.iter().map(shadowed_step));
    for r in rest {
        steps.extend(random_fully_fix(r));
    }
    steps
}

/// "iptables nat POSTROUTING rule 2" (nft: "nft ip nat chain POSTROUTING").
pub(super) fn rule_name(r: &NatRule) -> String {
    let at = r.position.map(|p| format!(" rule {p}")).unwrap_or_default();
    if r.source == "nft" {
        format!("nft table {} chain {}{at}", r.table, r.chain)
    } else {
        format!("{} {} {}{at}", r.source, r.table, r.chain)
    }
}

/// The rule's words after `-A CHAIN`.
fn spec(r: &NatRule) -> &str {
    let rest = r
        .rule
        .strip_prefix("-A ")
        .or_else(|| r.rule.strip_prefix("-I "))
        .unwrap_or(&r.rule);
    rest.strip_prefix(r.chain.as_str())
        .map(str::trim_start)
        .unwrap_or(rest)
}

/// A one-port pool: `--random-fully` has no other port to pick.
pub(super) fn widen_first(r: &NatRule) -> String {
    let pairs = r.pool_size().unwrap_or(1);
    format!(
        "{}: this rule translates to a single port (only {pairs} address:port pairs per destination), so --random-fully cannot help — there is no other port to pick. First give it more ports ({}) or more addresses (--to-source A1-A2:P1-P2){}: {}",
        rule_name(r),
        if r.target == NatTarget::Snat {
            "--to-source A:1024-65535"
        } else {
            "--to-ports 1024-65535"
        },
        if r.random_fully {
            ""
        } else {
            ", then add --random-fully"
        },
        r.rule
    )
}

/// The fix of one rule without `--random-fully`, as steps.
pub(super) fn random_fully_fix(r: &NatRule) -> Vec<String> {
    if r.docker_managed() {
        return docker_fix(r);
    }
    let step = match (r.source.as_str(), r.position) {
        ("nft", _) => format!(
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
        (tool, Some(pos)) => format!(
            "{tool} -t nat -R {chain} {pos} {spec} --random-fully   (replaces rule {pos} of {chain} in place, so it keeps its position: -D and -A would move it to the end of the chain, behind any rule that takes the same traffic; persist it where the rule comes from: the CNI, kube-proxy, firewall scripts)",
            chain = r.chain,
            spec = spec(r),
        ),
        (tool, None) => format!(
            "{tool} -t nat -D {chain} {spec} && {tool} -t nat -I {chain} 1 {spec} --random-fully   (check that no rule ahead of it takes the same traffic; persist it where the rule comes from: the CNI, kube-proxy, firewall scripts)",
            chain = r.chain,
            spec = spec(r),
        ),
    };
    vec![format!("add --random-fully to this rule: {step}")]
}

/// Docker writes its MASQUERADE rules itself, at the top of POSTROUTING, each
/// time the daemon starts: an edit of the rule does not last. What lasts is
/// an equivalent rule ahead of Docker's, put there after the daemon starts.
fn docker_fix(r: &NatRule) -> Vec<String> {
    let mut steps = Vec::new();
    if r.source == "nft" {
        steps.push(format!(
            "{} is Docker's ({}): Docker re-creates it when the daemon starts, so editing it does not last. Add a NAT chain of your own that runs before Docker's (priority srcnat - 1) with the same match and `masquerade fully-random` — the first NAT rule that matches a connection sets its mapping — and persist it in /etc/nftables.conf",
            rule_name(r),
            r.rule
        ));
        return steps;
    }
    let tool = r.source.as_str();
    let spec = spec(r);
    steps.push(format!(
        "{name} is Docker's ({rule}): Docker re-creates it at the top of {chain} whenever the daemon starts, so -D/-A (which also moves it to the end of the chain) is undone by the next restart, and a --random-fully copy behind it never sees a connection. The fix that survives: an equivalent rule with --random-fully inserted ahead of Docker's, by something that runs after the daemon starts — a systemd unit with After=docker.service, PartOf=docker.service, WantedBy=docker.service, Type=oneshot, RemainAfterExit=yes, ExecStart={tool} -t nat -I {chain} 1 {spec} --random-fully and ExecStop={tool} -t nat -D {chain} {spec} --random-fully",
        name = rule_name(r),
        rule = r.rule,
        chain = r.chain,
    ));
    let family = if tool == "ip6tables" { "ip6" } else { "ip" };
    let stmt = match r.target {
        NatTarget::Masquerade => "masquerade fully-random".to_string(),
        NatTarget::Snat => "snat to <the same --to-source> fully-random".to_string(),
    };
    let m = nft_match(&r.matches, family)
        .unwrap_or_else(|| format!("<the match of Docker's rule: {spec}>"));
    steps.push(format!(
        "or with nftables, in a table Docker does not touch, at a priority before Docker's (the first NAT rule that matches a connection sets its mapping): nft add table {family} snat_random; nft add chain {family} snat_random post '{{ type nat hook postrouting priority srcnat - 1; }}'; nft add rule {family} snat_random post {m} {stmt}   (persist it in /etc/nftables.conf)"
    ));
    steps
}

/// iptables match groups in nft syntax, where each one has a plain
/// translation.
fn nft_match(groups: &[String], family: &str) -> Option<String> {
    let mut out = Vec::new();
    for g in groups {
        let (neg, g) = match g.strip_prefix("! ") {
            Some(rest) => (true, rest),
            None => (false, g.as_str()),
        };
        let (flag, v) = g.split_once(' ')?;
        let op = if neg { "!= " } else { "" };
        let iface = |v: &str| format!("\"{}\"", v.replace('+', "*"));
        out.push(match flag {
            "-s" => format!("{family} saddr {op}{v}"),
            "-d" => format!("{family} daddr {op}{v}"),
            "-o" => format!("oifname {op}{}", iface(v)),
            "-i" => format!("iifname {op}{}", iface(v)),
            "-p" => format!("meta l4proto {op}{v}"),
            _ => return None,
        });
    }
    Some(out.join(" "))
}

/// A `--random-fully` rule that never sees a connection.
pub(super) fn shadowed_step(s: &Shadowed) -> String {
    let (r, by) = (s.rule, s.by);
    let counters = match (s.counters_confirm(), r.packets, by.packets) {
        (Some(true), _, Some(b)) => {
            format!(" (packet counters: {b} connections took the earlier rule, 0 took this one)")
        }
        (Some(false), Some(rp), Some(bp)) => format!(
            " (packet counters: the earlier rule {bp}, this one {rp}: its connections were counted before the earlier rule was put ahead of it)"
        ),
        _ => " (seen from the positions alone: iptables-save -c shows the packet counters)".into(),
    };
    let delete = match (r.source.as_str(), r.position) {
        ("nft", _) => format!(
            "nft delete rule {} {} handle <its handle: nft -a list chain {} {}>",
            r.table, r.chain, r.table, r.chain
        ),
        (tool, Some(pos)) => format!("{tool} -t nat -D {} {pos}", r.chain),
        (tool, None) => format!("{tool} -t nat -D {} {}", r.chain, spec(r)),
    };
    format!(
        "{name} has --random-fully but is shadowed: {by_name}{docker} ahead of it matches the same traffic first and takes every connection{counters}. It mitigates nothing where it is: remove it first, before the fix below inserts its working twin: {delete}",
        name = rule_name(r),
        by_name = rule_name(by),
        docker = if by.docker_managed() {
            ", Docker's own rule,"
        } else {
            ""
        },
    )
}

/// The node-configuration line of one rule, naming what decides its fix.
pub(super) fn config_line(r: &NatRule, shadowed: &[Shadowed]) -> String {
    let mut tags = Vec::new();
    tags.push(if r.random_fully {
        "--random-fully"
    } else {
        "no --random-fully"
    });
    if r.docker_managed() {
        tags.push("Docker's");
    }
    if r.single_port() {
        tags.push("one port");
    }
    let mut s = format!("{} ({})", rule_name(r), tags.join(", "));
    if let Some(p) = r.packets {
        s.push_str(&format!(" [{p} packets]"));
    }
    if let Some(sh) = shadowed.iter().find(|x| std::ptr::eq(x.rule, r)) {
        s.push_str(&format!(" shadowed by {}", rule_name(sh.by)));
    }
    format!("{s}: {}", r.rule)
}
