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
    // rules seen per chain of the current table: a rule's position
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let (counters, line) = counter_prefix(line.trim());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            continue;
        }
        if line == "COMMIT" {
            seen.clear();
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
        let position = {
            let n = seen.entry(chain.clone()).or_default();
            *n += 1;
            *n
        };
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
            let matches = match_conditions(&w);
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
                position: Some(position),
                packets: counters.map(|(p, _)| p),
                managed_by: docker_managed(
                    &chain,
                    opt("--comment"),
                    target,
                    &matches,
                    has("--random-fully"),
                )
                .then(|| "docker".to_string()),
                matches,
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

/// `[packets:bytes] -A ...` (`iptables-save -c`) → the counters and the rule.
fn counter_prefix(line: &str) -> (Option<(u64, u64)>, &str) {
    let Some(rest) = line.strip_prefix('[') else {
        return (None, line);
    };
    let Some((c, rule)) = rest.split_once(']') else {
        return (None, line);
    };
    let parsed = c
        .split_once(':')
        .and_then(|(p, b)| Some((p.trim().parse().ok()?, b.trim().parse().ok()?)));
    match parsed {
        Some(pb) => (Some(pb), rule.trim_start()),
        None => (None, line),
    }
}

/// A rule's match conditions, one a group ("-s 10.0.0.0/24", "! -o
/// docker0"), up to its target; module loads (`-m x`) and comments are left
/// out: they match nothing by themselves.
fn match_conditions(w: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut neg = false;
    let mut k = 2;
    while k < w.len() {
        let x = &w[k];
        if x == "-j" || x == "-g" {
            break;
        }
        if x == "!" {
            neg = true;
            k += 1;
            continue;
        }
        let mut j = k + 1;
        while j < w.len() && !w[j].starts_with('-') && w[j] != "!" {
            j += 1;
        }
        if x != "-m" && x != "--match" && x != "--comment" {
            let mut g = if neg { format!("! {x}") } else { x.clone() };
            for v in &w[k + 1..j] {
                g.push(' ');
                g.push_str(v);
            }
            out.push(g);
        }
        neg = false;
        k = j;
    }
    out
}

/// The rules Docker writes: its chains (DOCKER, DOCKER-USER, ...), a comment
/// that names it, and the MASQUERADE of a bridge network
/// (`-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`; user
/// networks use `br-<id>`). Docker does not write `--random-fully`: a rule of
/// that shape with it is someone's copy.
fn docker_managed(
    chain: &str,
    comment: Option<&str>,
    target: &str,
    matches: &[String],
    random_fully: bool,
) -> bool {
    chain.starts_with("DOCKER")
        || comment.is_some_and(|c| c.to_ascii_lowercase().contains("docker"))
        || (chain == "POSTROUTING"
            && target == "MASQUERADE"
            && !random_fully
            && matches.iter().any(|m| m.starts_with("-s "))
            && matches
                .iter()
                .any(|m| m.starts_with("! -o docker") || m.starts_with("! -o br-")))
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
