//! The `iptables-save` / `ip6tables-save` parser.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    address_count, flush_table, port_count, split_addr_port, words, Hook, NatRule, NatTarget, Rules,
};

/// Parses `iptables-save` (or `ip6tables-save`) output: source-NAT rules and
/// INVALID-drop rules with the base chains that reach them.
pub fn parse_iptables_save(text: &str) -> Rules {
    parse_iptables_save_as(text, "iptables")
}

pub fn parse_iptables_save_as(text: &str, source: &str) -> Rules {
    let mut out = Rules::default();
    let mut table = String::new();
    // per table: base chains, jumps, and the drops found (chain, rule)
    let mut base: BTreeMap<String, Hook> = BTreeMap::new();
    let mut jumps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut drops: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            continue;
        }
        if line == "COMMIT" {
            flush_table(source, &table, &mut base, &mut jumps, &mut drops, &mut out);
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            let policy = decl.split_whitespace().nth(1).unwrap_or("-");
            if policy != "-" {
                if let Some(h) = Hook::from_chain(name) {
                    base.insert(name.to_string(), h);
                }
            }
            continue;
        }
        let w = words(line);
        if w.len() < 2 || !(w[0] == "-A" || w[0] == "-I") {
            continue;
        }
        let chain = w[1].clone();
        let opt = |name: &str| -> Option<&str> {
            w.iter()
                .position(|x| x == name)
                .and_then(|i| w.get(i + 1))
                .map(|s| s.as_str())
        };
        let target = opt("-j").or_else(|| opt("-g")).unwrap_or("");
        let has = |name: &str| w.iter().any(|x| x == name);
        // jumps to user chains
        if !target.is_empty()
            && !matches!(
                target,
                "ACCEPT"
                    | "DROP"
                    | "REJECT"
                    | "RETURN"
                    | "MASQUERADE"
                    | "SNAT"
                    | "DNAT"
                    | "LOG"
                    | "MARK"
                    | "CONNMARK"
                    | "NOTRACK"
                    | "CT"
                    | "REDIRECT"
                    | "TPROXY"
                    | "NFLOG"
                    | "NFQUEUE"
                    | "QUEUE"
                    | "TCPMSS"
                    | "CHECKSUM"
                    | "TTL"
                    | "HL"
                    | "DSCP"
                    | "TOS"
            )
        {
            jumps
                .entry(chain.clone())
                .or_default()
                .insert(target.to_string());
        }
        if table == "nat" && (target == "MASQUERADE" || target == "SNAT") {
            let is_snat = target == "SNAT";
            let mut addresses = None;
            let mut ports = None;
            if is_snat {
                // --to-source may repeat (old kernels): addresses add up
                let mut total = 0u64;
                let mut port_total: Option<u64> = None;
                for (i, x) in w.iter().enumerate() {
                    if x == "--to-source" || x == "--to" {
                        if let Some(v) = w.get(i + 1) {
                            let (a, p) = split_addr_port(v);
                            total += a.and_then(address_count).unwrap_or(1);
                            if let Some(p) = p.and_then(port_count) {
                                port_total = Some(port_total.map_or(p, |q: u64| q.max(p)));
                            }
                        }
                    }
                }
                addresses = Some(total.max(1));
                ports = port_total;
            } else if let Some(p) = opt("--to-ports") {
                ports = port_count(p);
            }
            out.nat.push(NatRule {
                source: source.to_string(),
                table: table.clone(),
                chain: chain.clone(),
                target: if is_snat {
                    NatTarget::Snat
                } else {
                    NatTarget::Masquerade
                },
                random_fully: has("--random-fully"),
                random: has("--random"),
                persistent: has("--persistent"),
                addresses,
                ports,
                rule: line.to_string(),
            });
        }
        if target == "DROP" && matches_invalid_state(&w) {
            drops.push((chain, line.to_string()));
        }
    }
    // a dump without COMMIT (hand-written): still report what was read
    if !drops.is_empty() {
        flush_table(source, &table, &mut base, &mut jumps, &mut drops, &mut out);
    }
    out
}

/// `-m conntrack --ctstate INVALID` or `-m state --state INVALID`, not negated.
fn matches_invalid_state(w: &[String]) -> bool {
    w.iter().enumerate().any(|(i, x)| {
        (x == "--ctstate" || x == "--state")
            && !(i > 0 && w[i - 1] == "!")
            && w.get(i + 1)
                .is_some_and(|v| v.split(',').any(|s| s.eq_ignore_ascii_case("INVALID")))
    })
}

/// Tables iptables-nft owns: nft shows them too, iptables-save already did.
pub(super) fn iptables_nft_tables(dump: &str, family: &str) -> Vec<String> {
    if !dump.contains("(nf_tables)") {
        return Vec::new();
    }
    dump.lines()
        .filter_map(|l| l.strip_prefix('*'))
        .map(|t| format!("{family} {}", t.trim()))
        .collect()
}
