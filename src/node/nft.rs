//! The `nft list ruleset` parser.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    address_count, flush_table, port_count, split_addr_port, words, Hook, NatRule, NatTarget, Rules,
};

/// Parses `nft list ruleset` output: masquerade/snat statements and
/// `ct state invalid ... drop` rules with the base hooks that reach them.
/// Tables named in `skip` ("ip nat", ...) are left out (iptables-nft's own,
/// already read from iptables-save).
pub fn parse_nft_ruleset(text: &str) -> Rules {
    parse_nft_ruleset_skipping(text, &[])
}

pub fn parse_nft_ruleset_skipping(text: &str, skip: &[String]) -> Rules {
    let mut out = Rules::default();
    let mut table: Option<String> = None;
    let mut chain: Option<String> = None;
    let mut depth = 0i32;
    let mut base: BTreeMap<String, Hook> = BTreeMap::new();
    let mut jumps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut drops: Vec<(String, String)> = Vec::new();
    // rules seen per (table, chain): a rule's position
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w = words(line);
        let opens = line.ends_with('{');
        let closes = line == "}";
        if depth == 0 && w.first().map(String::as_str) == Some("table") && opens {
            // table [family] name {
            let name = if w.len() >= 4 {
                format!("{} {}", w[1], w[2])
            } else {
                format!("ip {}", w.get(1).cloned().unwrap_or_default())
            };
            table = Some(name);
            depth = 1;
            continue;
        }
        if depth == 1 && w.first().map(String::as_str) == Some("chain") && opens {
            chain = w.get(1).cloned();
            depth = 2;
            continue;
        }
        if closes {
            depth -= 1;
            if depth == 1 {
                chain = None;
            } else if depth <= 0 {
                if let Some(t) = table.take() {
                    flush_table("nft", &t, &mut base, &mut jumps, &mut drops, &mut out);
                }
                depth = 0;
            }
            continue;
        }
        if opens {
            // sets, maps, flowtables: skip their bodies
            depth += 1;
            continue;
        }
        let (Some(t), Some(c)) = (table.as_ref(), chain.as_ref()) else {
            continue;
        };
        if depth != 2 || skip.iter().any(|s| s == t) {
            continue;
        }
        // chain header: type nat hook postrouting priority srcnat; policy accept;
        if w.first().map(String::as_str) == Some("type") {
            if let Some(i) = w.iter().position(|x| x == "hook") {
                if let Some(h) = w.get(i + 1).and_then(|h| Hook::from_chain(h)) {
                    base.insert(c.clone(), h);
                }
            }
            continue;
        }
        let position = {
            let n = seen.entry((t.clone(), c.clone())).or_default();
            *n += 1;
            *n
        };
        for (i, x) in w.iter().enumerate() {
            if (x == "jump" || x == "goto") && i + 1 < w.len() {
                jumps
                    .entry(c.clone())
                    .or_default()
                    .insert(w[i + 1].trim_end_matches(';').to_string());
            }
        }
        let flags_of = |from: usize| -> BTreeSet<String> {
            w[from..]
                .iter()
                .flat_map(|x| x.split(','))
                .map(|s| s.to_string())
                .collect()
        };
        if let Some(i) = w.iter().position(|x| x == "masquerade" || x == "snat") {
            let is_snat = w[i] == "snat";
            let mut addresses = None;
            let mut ports = None;
            let mut j = i + 1;
            // snat [ip|ip6] to ADDR[:PORT]
            if matches!(w.get(j).map(String::as_str), Some("ip") | Some("ip6")) {
                j += 1;
            }
            if w.get(j).map(String::as_str) == Some("to") {
                if let Some(v) = w.get(j + 1) {
                    let (a, p) = split_addr_port(v);
                    if is_snat {
                        addresses = a.and_then(address_count).or(Some(1));
                    }
                    ports = p.and_then(port_count);
                }
            }
            if is_snat && addresses.is_none() {
                addresses = Some(1);
            }
            let flags = flags_of(i + 1);
            let (matches, packets) = nft_match(&w[..i]);
            let docker = t.contains("docker")
                || !flags.contains("fully-random")
                    && matches
                        .iter()
                        .any(|m| m.contains("oifname != docker") || m.contains("oifname != br-"));
            out.nat.push(NatRule {
                source: "nft".into(),
                table: t.clone(),
                chain: c.clone(),
                target: if is_snat {
                    NatTarget::Snat
                } else {
                    NatTarget::Masquerade
                },
                random_fully: flags.contains("fully-random"),
                random: flags.contains("random"),
                persistent: flags.contains("persistent"),
                addresses,
                ports,
                rule: line.to_string(),
                position: Some(position),
                packets,
                managed_by: docker.then(|| "docker".to_string()),
                matches,
            });
        }
        let last = w.last().map(|s| s.trim_end_matches(';'));
        if last == Some("drop") && nft_matches_invalid(&w) {
            drops.push((c.clone(), line.to_string()));
        }
    }
    if let Some(t) = table.take() {
        flush_table("nft", &t, &mut base, &mut jumps, &mut drops, &mut out);
    }
    out
}

/// The words before a NAT statement: its match (one condition, compared
/// whole) without `counter packets N bytes M` and comments, and the counter.
fn nft_match(w: &[String]) -> (Vec<String>, Option<u64>) {
    let mut kept = Vec::new();
    let mut packets = None;
    let mut k = 0;
    while k < w.len() {
        match w[k].as_str() {
            "counter" => {
                if w.get(k + 1).map(String::as_str) == Some("packets") {
                    packets = w.get(k + 2).and_then(|p| p.parse().ok());
                    k += 5;
                } else {
                    k += 1;
                }
            }
            "comment" => k += 2,
            x => {
                kept.push(x.to_string());
                k += 1;
            }
        }
    }
    let m = kept.join(" ");
    (if m.is_empty() { Vec::new() } else { vec![m] }, packets)
}

/// `ct state invalid`, `ct state { invalid, untracked }`, `ct state invalid,new`.
fn nft_matches_invalid(w: &[String]) -> bool {
    let Some(i) = w.windows(2).position(|p| p[0] == "ct" && p[1] == "state") else {
        return false;
    };
    let rest = &w[i + 2..];
    if rest.first().map(String::as_str) == Some("!=") {
        return false;
    }
    let mut in_set = false;
    for x in rest {
        let x = x.trim_end_matches(',');
        if x == "{" {
            in_set = true;
            continue;
        }
        if x == "}" {
            break;
        }
        if x.split(',')
            .any(|s| s.trim_matches(|c| c == '{' || c == '}') == "invalid")
        {
            return true;
        }
        if !in_set {
            break;
        }
    }
    false
}
