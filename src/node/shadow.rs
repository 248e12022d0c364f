//! Which source-NAT rule takes a connection: only a connection's first packet
//! goes through the nat table, and the first NAT rule of a chain that matches
//! sets its mapping. A `--random-fully` rule behind one without it that
//! matches the same traffic never sees a connection, and mitigates nothing
//! whatever a count of rules with the flag says: the usual way to get there is
//! appending the fixed copy (`-A`) and the original being put back ahead of it
//! (Docker does that at every start).

use std::net::IpAddr;

use super::NatRule;

/// A `--random-fully` rule and the earlier rule without it that takes its
/// traffic.
#[derive(Clone, Copy, Debug)]
pub struct Shadowed<'a> {
    pub rule: &'a NatRule,
    pub by: &'a NatRule,
}

impl Shadowed<'_> {
    /// Whether the packet counters show it: the earlier rule has taken
    /// connections and this one none. None: the dump has no counters.
    pub fn counters_confirm(&self) -> Option<bool> {
        match (self.rule.packets, self.by.packets) {
            (Some(r), Some(b)) => Some(r == 0 && b > 0),
            _ => None,
        }
    }
}

pub(super) fn shadowed(rules: &[NatRule]) -> Vec<Shadowed<'_>> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if !r.random_fully {
            continue;
        }
        // rules are in dump order: the ones before r in its chain come first
        let by = rules[..i].iter().find(|e| {
            !e.random_fully
                && e.source == r.source
                && e.table == r.table
                && e.chain == r.chain
                && covers(e, r)
        });
        if let Some(by) = by {
            out.push(Shadowed { rule: r, by });
        }
    }
    out
}

/// Every packet `later` matches, `earlier` matches too: each of earlier's
/// conditions is implied by later's.
fn covers(earlier: &NatRule, later: &NatRule) -> bool {
    earlier.matches.iter().all(|c| implied(c, &later.matches))
}

/// "! -o docker0" → (true, "-o", "docker0").
fn parse(c: &str) -> (bool, &str, &str) {
    let (neg, c) = match c.strip_prefix("! ") {
        Some(rest) => (true, rest),
        None => (false, c),
    };
    let (flag, value) = c.split_once(' ').unwrap_or((c, ""));
    (neg, flag, value)
}

fn implied(c: &str, conds: &[String]) -> bool {
    if conds.iter().any(|x| x == c) {
        return true;
    }
    let (neg, flag, value) = parse(c);
    conds.iter().map(|x| parse(x)).any(|(n2, f2, v2)| {
        if f2 != flag || n2 {
            return false;
        }
        match (flag, neg) {
            ("-s" | "-d", false) => net_within(v2, value),
            // -o eth0 implies ! -o docker0
            ("-o" | "-i", true) => ifaces_disjoint(v2, value),
            ("-o" | "-i", false) => iface_within(v2, value),
            _ => false,
        }
    })
}

/// "10.0.0.0/24" → (address, prefix length); a bare address is a host.
fn net(s: &str) -> Option<(IpAddr, u32)> {
    let (a, len) = s.split_once('/').unwrap_or((s, ""));
    let a: IpAddr = a.parse().ok()?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse().ok()?
    };
    (len <= max).then_some((a, len))
}

/// Network `inner` lies within network `outer`.
fn net_within(inner: &str, outer: &str) -> bool {
    let (Some((a, la)), Some((b, lb))) = (net(inner), net(outer)) else {
        return false;
    };
    // v4 in the top 32 bits, so a prefix length counts from the top for both
    let bits = |x: IpAddr| -> u128 {
        match x {
            IpAddr::V4(x) => (u32::from(x) as u128) << 96,
            IpAddr::V6(x) => u128::from(x),
        }
    };
    if a.is_ipv4() != b.is_ipv4() || la < lb {
        return false;
    }
    let shift = 128 - lb;
    shift >= 128 || bits(a) >> shift == bits(b) >> shift
}

/// An interface pattern ("eth0", "br-+"): its literal prefix and whether it
/// is a prefix match.
fn iface(p: &str) -> (&str, bool) {
    match p.strip_suffix('+') {
        Some(pre) => (pre, true),
        None => (p, false),
    }
}

/// Every interface `inner` matches, `outer` matches too.
fn iface_within(inner: &str, outer: &str) -> bool {
    let ((i, _), (o, o_wild)) = (iface(inner), iface(outer));
    if o_wild {
        i.starts_with(o)
    } else {
        inner == outer
    }
}

/// No interface name matches both patterns.
fn ifaces_disjoint(x: &str, y: &str) -> bool {
    let ((a, aw), (b, bw)) = (iface(x), iface(y));
    match (aw, bw) {
        (false, false) => a != b,
        (true, false) => !b.starts_with(a),
        (false, true) => !a.starts_with(b),
        (true, true) => !a.starts_with(b) && !b.starts_with(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_that_imply_others() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(implied("-s 172.17.0.0/16", &c(&["-s 172.17.0.5/32"])));
        assert!(!implied("-s 172.17.0.0/16", &c(&["-s 172.18.0.0/16"])));
        assert!(!implied("-s 172.17.0.0/24", &c(&["-s 172.17.0.0/16"])));
        assert!(implied("-s 10.0.0.0/8", &c(&["-s 10.1.2.3"])));
        assert!(implied("-s ::/0", &c(&["-s fd00::/64"])));
        assert!(implied("! -o docker0", &c(&["-o eth0"])));
        assert!(!implied("! -o docker0", &c(&["-o docker0"])));
        assert!(!implied("! -o docker+", &c(&["-o docker0"])));
        assert!(implied("-o eth+", &c(&["-o eth1"])));
        assert!(!implied("-o eth0", &c(&[])));
        assert!(!implied("-p tcp", &c(&["-p udp"])));
    }
}
