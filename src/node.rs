//! The node's conntrack/NAT configuration: what decides which mitigation fits.
//!
//! Pure parsers (`parse_iptables_save`, `parse_nft_ruleset`, `parse_sysctl_conf`,
//! `parse_modules_load`) and one reader, [`read_state`], that reads everything
//! through a root path so tests point it at fixture trees.
//!
//! Under a root other than `/`, the rule dumps are read from captured files
//! instead of running the tools: `<root>/rules/iptables-save`,
//! `<root>/rules/ip6tables-save` and `<root>/rules/nft-ruleset`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A netfilter base hook a rule ends up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    fn from_chain(name: &str) -> Option<Hook> {
        Some(match name.to_ascii_lowercase().as_str() {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatTarget {
    Masquerade,
    Snat,
}

/// One source-NAT rule (MASQUERADE or SNAT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatRule {
    /// "iptables", "ip6tables" or "nft".
    pub source: String,
    /// The table (iptables: `nat`; nft: `<family> <name>`).
    pub table: String,
    pub chain: String,
    pub target: NatTarget,
    /// `--random-fully` / nft `fully-random`: the mitigation of the port race.
    pub random_fully: bool,
    /// `--random` / nft `random` (does not close the race).
    pub random: bool,
    pub persistent: bool,
    /// SNAT: number of translated addresses (None: MASQUERADE, the interface's one).
    pub addresses: Option<u64>,
    /// Size of the translated port range where the rule gives one.
    pub ports: Option<u64>,
    /// The rule as written in the dump.
    pub rule: String,
}

impl NatRule {
    /// Distinct (address, port) pairs per destination, where the rule says.
    /// MASQUERADE without --to-ports: one address, the default port range.
    pub fn pool_size(&self) -> Option<u64> {
        match (self.addresses.unwrap_or(1), self.ports) {
            (a, Some(p)) => Some(a * p),
            (_, None) if self.target == NatTarget::Masquerade => None,
            (a, None) => Some(a * 64512),
        }
    }
}

/// A rule that drops conntrack-INVALID packets, and the base hooks that reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidDrop {
    pub source: String,
    pub table: String,
    pub chain: String,
    /// The base chains from which the rule is reached (through jumps).
    pub hooks: Vec<Hook>,
    pub rule: String,
}

/// What a rule dump holds that matters here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub nat: Vec<NatRule>,
    pub invalid_drops: Vec<InvalidDrop>,
}

impl Rules {
    fn extend(&mut self, o: Rules) {
        self.nat.extend(o.nat);
        self.invalid_drops.extend(o.invalid_drops);
    }
}

/// Sysctls of the traced netns (None: could not be read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctls {
    pub tcp_be_liberal: Option<bool>,
    pub tcp_ignore_invalid_rst: Option<bool>,
    pub conntrack_max: Option<u64>,
    pub conntrack_count: Option<u64>,
}

/// One setting found in a sysctl configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfSetting {
    pub file: String,
    pub line: usize,
    pub value: String,
}

/// What happens at boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    /// Every `nf_conntrack_tcp_be_liberal` setting in sysctl files, in the order
    /// systemd-sysctl applies them (the last one wins).
    pub be_liberal_settings: Vec<ConfSetting>,
    /// modules-load.d entries that load nf_conntrack at boot ("file: module").
    pub conntrack_modules_load: Vec<String>,
    /// A udev rule re-applies sysctls when nf_conntrack appears.
    pub udev_reapplies_sysctl: bool,
    /// nf_conntrack is built into the kernel (None: unknown).
    pub conntrack_builtin: Option<bool>,
}

impl BootConfig {
    /// The value the sysctl files give be_liberal, if any.
    pub fn be_liberal_configured(&self) -> Option<bool> {
        self.be_liberal_settings
            .last()
            .map(|s| s.value.trim() != "0")
    }

    /// The seeds' trap: be_liberal=1 is configured, but nothing loads
    /// nf_conntrack before systemd-sysctl runs, so it silently does not apply.
    pub fn boot_order_trap(&self) -> bool {
        self.be_liberal_configured() == Some(true)
            && self.conntrack_modules_load.is_empty()
            && !self.udev_reapplies_sysctl
            && self.conntrack_builtin != Some(true)
    }
}

/// The node's configuration as far as it could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub root: PathBuf,
    pub netns: Option<String>,
    /// Kernel release (`<root>/proc/sys/kernel/osrelease`).
    pub kernel: Option<String>,
    pub sysctl: Sysctls,
    /// None: the rules could not be read (see notes).
    pub rules: Option<Rules>,
    pub boot: BootConfig,
    /// What could not be read, and why.
    pub notes: Vec<String>,
}

impl NodeState {
    pub fn nat_rules(&self) -> &[NatRule] {
        self.rules.as_ref().map_or(&[], |r| &r.nat)
    }

    /// Source-NAT rules without --random-fully.
    pub fn nat_without_random_fully(&self) -> Vec<&NatRule> {
        self.nat_rules()
            .iter()
            .filter(|r| !r.random_fully)
            .collect()
    }

    /// The smallest known SNAT pool (address × port pairs) among the rules.
    pub fn snat_pool_size(&self) -> Option<u64> {
        self.nat_rules().iter().filter_map(|r| r.pool_size()).min()
    }

    /// Some INVALID-drop rule is reached from this base hook.
    pub fn invalid_drop_on(&self, h: Hook) -> Option<bool> {
        self.rules
            .as_ref()
            .map(|r| r.invalid_drops.iter().any(|d| d.hooks.contains(&h)))
    }

    /// The kernel's (major, minor), if known.
    pub fn kernel_version(&self) -> Option<(u32, u32)> {
        self.kernel.as_deref().and_then(kernel_version)
    }
}

/// "6.1.0-27-cloud-amd64" → (6, 1).
/// The mitigation state in counts, as `top` shows it in one line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleFacts {
    pub masquerade: u32,
    pub masquerade_random_fully: u32,
    pub snat: u32,
    pub snat_random_fully: u32,
    /// Rules that drop conntrack-INVALID packets (any chain).
    pub invalid_drop: u32,
}

impl RuleFacts {
    pub fn nat_rules(&self) -> u32 {
        self.masquerade + self.snat
    }

    /// Source NAT rules exposed to the port race (no `--random-fully`).
    pub fn nat_without_random_fully(&self) -> u32 {
        (self.masquerade - self.masquerade_random_fully) + (self.snat - self.snat_random_fully)
    }
}

impl NodeState {
    /// The rules summarized as counts; None where no rule dump could be read.
    pub fn facts(&self) -> Option<RuleFacts> {
        let r = self.rules.as_ref()?;
        let mut f = RuleFacts {
            invalid_drop: r.invalid_drops.len() as u32,
            ..Default::default()
        };
        for n in &r.nat {
            let (all, fully) = match n.target {
                NatTarget::Masquerade => (&mut f.masquerade, &mut f.masquerade_random_fully),
                NatTarget::Snat => (&mut f.snat, &mut f.snat_random_fully),
            };
            *all += 1;
            *fully += n.random_fully as u32;
        }
        Some(f)
    }
}

pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Splits a rule line into words, keeping "double quoted" words whole.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut it = line.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = it.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// "192.0.2.1-192.0.2.4" → 4; "192.0.2.1" → 1. IPv6 ranges count up to u64::MAX.
fn address_count(range: &str) -> Option<u64> {
    let range = range.trim_matches(|c| c == '[' || c == ']');
    match range.split_once('-') {
        None => range.parse::<std::net::IpAddr>().ok().map(|_| 1),
        Some((a, b)) => {
            let a: std::net::IpAddr = a.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
            let b: std::net::IpAddr = b.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
            let (a, b) = match (a, b) {
                (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
                    (u32::from(a) as u128, u32::from(b) as u128)
                }
                (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                    (u128::from(a), u128::from(b))
                }
                _ => return None,
            };
            Some(u64::try_from(b.checked_sub(a)? + 1).unwrap_or(u64::MAX))
        }
    }
}

/// "1024-1025" → 2; "8080" → 1.
fn port_count(range: &str) -> Option<u64> {
    match range.split_once('-') {
        None => range.parse::<u16>().ok().map(|_| 1),
        Some((a, b)) => {
            let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
            Some((b as u64).checked_sub(a as u64)? + 1)
        }
    }
}

/// Splits "ADDR[-ADDR][:PORT[-PORT]]" (IPv6 in brackets) into its two parts.
fn split_addr_port(s: &str) -> (Option<&str>, Option<&str>) {
    if s.starts_with('[') {
        // [a]-[b]:p or [a]:p
        return match s.rfind("]:") {
            Some(i) => (Some(&s[..=i]), Some(&s[i + 2..])),
            None => (Some(s), None),
        };
    }
    if let Some(p) = s.strip_prefix(':') {
        return (None, Some(p));
    }
    if s.matches(':').count() == 1 {
        let (a, p) = s.split_once(':').unwrap_or((s, ""));
        return (Some(a), Some(p));
    }
    (Some(s), None)
}

/// Which base hooks reach each chain, given base chains and jump edges.
fn reachability(
    base: &BTreeMap<String, Hook>,
    jumps: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<Hook>> {
    let mut reach: BTreeMap<String, BTreeSet<Hook>> = BTreeMap::new();
    for (chain, hook) in base {
        let mut stack = vec![chain.clone()];
        let mut seen = BTreeSet::new();
        while let Some(c) = stack.pop() {
            if !seen.insert(c.clone()) {
                continue;
            }
            reach.entry(c.clone()).or_default().insert(*hook);
            if let Some(next) = jumps.get(&c) {
                stack.extend(next.iter().cloned());
            }
        }
    }
    reach
}

/// End of a table in a rule dump: each INVALID-drop rule found in it gets the
/// base hooks that reach its chain; the table's chain graph is reset.
fn flush_table(
    source: &str,
    table: &str,
    base: &mut BTreeMap<String, Hook>,
    jumps: &mut BTreeMap<String, BTreeSet<String>>,
    drops: &mut Vec<(String, String)>,
    out: &mut Rules,
) {
    let reach = reachability(base, jumps);
    for (chain, rule) in drops.drain(..) {
        out.invalid_drops.push(InvalidDrop {
            source: source.to_string(),
            table: table.to_string(),
            hooks: reach
                .get(&chain)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            chain,
            rule,
        });
    }
    base.clear();
    jumps.clear();
}

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

/// Parses one sysctl.d file: `key = value` lines (keys with `.` or `/`, an
/// optional leading `-`). Returns (key in dotted form, line number, value).
pub fn parse_sysctl_conf(text: &str) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_start_matches('-').replace('/', ".");
        out.push((k, i + 1, v.trim().to_string()));
    }
    out
}

/// Modules that, listed for boot, bring nf_conntrack with them.
const LOADS_CONNTRACK: [&str; 12] = [
    "nf_conntrack",
    "nf_nat",
    "xt_conntrack",
    "xt_state",
    "xt_masquerade",
    "xt_nat",
    "iptable_nat",
    "ip6table_nat",
    "nf_conntrack_netlink",
    "nft_ct",
    "nft_masq",
    "nft_nat",
];

/// Parses one modules-load.d file (or /etc/modules): module names, one a line.
/// Returns the entries that load nf_conntrack.
pub fn parse_modules_load(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or("").trim())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|m| {
            let m = m.replace('-', "_").to_ascii_lowercase();
            LOADS_CONNTRACK.contains(&m.as_str()) || m.starts_with("nf_conntrack_")
        })
        .map(str::to_string)
        .collect()
}

/// Config files of a systemd-style `*.d` directory set, in application order:
/// by file name, a name in an earlier directory hiding the same name later.
fn conf_files(root: &Path, dirs: &[&str]) -> Vec<PathBuf> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in dirs.iter().rev() {
        let dir = root.join(d.trim_start_matches('/'));
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") {
                by_name.insert(name, e.path());
            }
        }
    }
    by_name.into_values().collect()
}

fn shown(root: &Path, p: &Path) -> String {
    match p.strip_prefix(root) {
        Ok(rel) if root != Path::new("/") => format!("/{}", rel.display()),
        _ => p.display().to_string(),
    }
}

/// Reads the boot configuration under `root`.
pub fn read_boot(root: &Path, kernel: Option<&str>) -> BootConfig {
    let mut b = BootConfig::default();
    let mut files = conf_files(
        root,
        &[
            "/etc/sysctl.d",
            "/run/sysctl.d",
            "/usr/local/lib/sysctl.d",
            "/usr/lib/sysctl.d",
            "/lib/sysctl.d",
        ],
    );
    files.push(root.join("etc/sysctl.conf"));
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (k, line, value) in parse_sysctl_conf(&text) {
            if k == "net.netfilter.nf_conntrack_tcp_be_liberal" {
                b.be_liberal_settings.push(ConfSetting {
                    file: shown(root, &f),
                    line,
                    value,
                });
            }
        }
    }
    let mut files = conf_files(
        root,
        &[
            "/etc/modules-load.d",
            "/run/modules-load.d",
            "/usr/local/lib/modules-load.d",
            "/usr/lib/modules-load.d",
            "/lib/modules-load.d",
        ],
    );
    files.push(root.join("etc/modules"));
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            for m in parse_modules_load(&text) {
                b.conntrack_modules_load
                    .push(format!("{}: {m}", shown(root, &f)));
            }
        }
    }
    for d in [
        "etc/udev/rules.d",
        "usr/lib/udev/rules.d",
        "lib/udev/rules.d",
    ] {
        let Ok(rd) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                if text.lines().any(|l| {
                    !l.trim_start().starts_with('#')
                        && l.contains("nf_conntrack")
                        && l.contains("sysctl")
                }) {
                    b.udev_reapplies_sysctl = true;
                }
            }
        }
    }
    if let Some(rel) = kernel {
        let builtin = root.join("lib/modules").join(rel).join("modules.builtin");
        if let Ok(text) = std::fs::read_to_string(builtin) {
            b.conntrack_builtin =
                Some(text.lines().any(|l| l.trim().ends_with("/nf_conntrack.ko")));
        } else if root.join("sys/module/nf_conntrack").exists() {
            // loaded; built in when it has no refcnt/initstate of a module
            b.conntrack_builtin = Some(!root.join("sys/module/nf_conntrack/initstate").exists());
        }
    }
    b
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Sysctls under `root/proc/sys` (read from the calling thread's netns).
pub fn read_sysctls(root: &Path) -> Sysctls {
    let nf = root.join("proc/sys/net/netfilter");
    let num = |n: &str| read_trim(&nf.join(n)).and_then(|s| s.parse::<u64>().ok());
    Sysctls {
        tcp_be_liberal: num("nf_conntrack_tcp_be_liberal").map(|v| v != 0),
        tcp_ignore_invalid_rst: num("nf_conntrack_tcp_ignore_invalid_rst").map(|v| v != 0),
        conntrack_max: num("nf_conntrack_max"),
        conntrack_count: num("nf_conntrack_count"),
    }
}

/// Tables iptables-nft owns: nft shows them too, iptables-save already did.
fn iptables_nft_tables(dump: &str, family: &str) -> Vec<String> {
    if !dump.contains("(nf_tables)") {
        return Vec::new();
    }
    dump.lines()
        .filter_map(|l| l.strip_prefix('*'))
        .map(|t| format!("{family} {}", t.trim()))
        .collect()
}

/// Runs one dump command (in the calling thread's netns); Err says why not.
fn dump(cmd: &str, args: &[&str]) -> Result<String, String> {
    match std::process::Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{cmd} failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .lines()
                .collect::<Vec<_>>()
                .join(" / ")
        )),
        Err(e) => Err(format!("{cmd} could not run: {e}")),
    }
}

/// Reads rules and sysctls: from captured files under a fixture root, or by
/// running the tools in the calling thread's netns.
fn read_netns_parts(root: &Path) -> (Sysctls, Option<Rules>, Vec<String>) {
    let mut notes = Vec::new();
    let sysctl = read_sysctls(root);
    if sysctl.tcp_be_liberal.is_none() {
        notes.push(
            "net.netfilter sysctls are missing: nf_conntrack is not loaded (or not in this netns)"
                .to_string(),
        );
    }
    let mut rules = Rules::default();
    let mut got_any = false;
    let fixture = root != Path::new("/");
    let (v4, v6, nft) = if fixture {
        let f = |n: &str| {
            std::fs::read_to_string(root.join("rules").join(n))
                .map_err(|e| format!("{}: {e}", root.join("rules").join(n).display()))
        };
        (f("iptables-save"), f("ip6tables-save"), f("nft-ruleset"))
    } else {
        (
            dump("iptables-save", &[]),
            dump("ip6tables-save", &[]),
            dump("nft", &["list", "ruleset"]),
        )
    };
    let mut skip = Vec::new();
    match &v4 {
        Ok(t) => {
            got_any = true;
            skip.extend(iptables_nft_tables(t, "ip"));
            rules.extend(parse_iptables_save_as(t, "iptables"));
        }
        Err(e) => notes.push(e.clone()),
    }
    if let Ok(t) = &v6 {
        got_any = true;
        skip.extend(iptables_nft_tables(t, "ip6"));
        rules.extend(parse_iptables_save_as(t, "ip6tables"));
    }
    match &nft {
        Ok(t) => {
            got_any = true;
            rules.extend(parse_nft_ruleset_skipping(t, &skip));
        }
        Err(e) if v4.is_err() => notes.push(e.clone()),
        Err(_) => {}
    }
    if !got_any && !fixture && !nix::unistd::geteuid().is_root() {
        notes.push("the NAT and filter rules need root to read (iptables-save, nft)".into());
    }
    (sysctl, got_any.then_some(rules), notes)
}

/// Reads the node's state. `root` is `/` on a real node (a fixture tree in
/// tests); `netns` (a name, path or pid:N) selects whose sysctls and rules are
/// read: entering it needs root; without it only the boot files are read.
pub fn read_state(root: &Path, netns: Option<&str>) -> NodeState {
    let kernel = read_trim(&root.join("proc/sys/kernel/osrelease"));
    let boot = read_boot(root, kernel.as_deref());
    let mut notes = Vec::new();
    let fixture = root != Path::new("/");
    let parts = match netns {
        Some(spec) if !fixture => {
            let r = root.to_path_buf();
            crate::netns::run_in(spec, move || Ok(read_netns_parts(&r)))
        }
        _ => Ok(read_netns_parts(root)),
    };
    let (sysctl, rules) = match parts {
        Ok((s, r, n)) => {
            notes.extend(n);
            (s, r)
        }
        Err(e) => {
            notes.push(format!(
                "sysctls and rules of netns {} not read: {e:#}",
                netns.unwrap_or("")
            ));
            (Sysctls::default(), None)
        }
    };
    NodeState {
        root: root.to_path_buf(),
        netns: netns.map(str::to_string),
        kernel,
        sysctl,
        rules,
        boot,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPT: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A INPUT -m conntrack ! --ctstate INVALID -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
-A POSTROUTING -s 10.0.0.0/24 -o eth0 -j MASQUERADE
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully
-A POSTROUTING -s 10.0.2.0/24 -j SNAT --to-source 192.0.2.10-192.0.2.13:1024-1025 --random-fully
-A POSTROUTING -s 10.0.3.0/24 -j SNAT --to-source 192.0.2.20
COMMIT
";

    #[test]
    fn iptables_nat_rules_and_random_fully() {
        let r = parse_iptables_save(IPT);
        assert_eq!(r.nat.len(), 4);
        assert_eq!(r.nat[0].target, NatTarget::Masquerade);
        assert!(!r.nat[0].random_fully);
        assert_eq!(r.nat[0].pool_size(), None);
        assert!(r.nat[1].random_fully);
        assert_eq!(r.nat[1].chain, "KUBE-POSTROUTING");
        assert_eq!(r.nat[2].addresses, Some(4));
        assert_eq!(r.nat[2].ports, Some(2));
        assert_eq!(r.nat[2].pool_size(), Some(8));
        assert_eq!(r.nat[3].addresses, Some(1));
        assert!(!r.nat[3].random_fully);
    }

    #[test]
    fn iptables_invalid_drop_reached_through_a_jump_is_forward_only() {
        let r = parse_iptables_save(IPT);
        assert_eq!(r.invalid_drops.len(), 1, "{:?}", r.invalid_drops);
        let d = &r.invalid_drops[0];
        assert_eq!(d.chain, "KUBE-FORWARD");
        assert_eq!(d.hooks, vec![Hook::Forward]);
    }

    #[test]
    fn iptables_invalid_drop_in_input() {
        let r = parse_iptables_save(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m state --state INVALID,UNTRACKED -j DROP\nCOMMIT\n",
        );
        assert_eq!(r.invalid_drops[0].hooks, vec![Hook::Input]);
    }

    const NFT: &str = r#"table ip nat {
	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" ip saddr 10.0.0.0/24 counter packets 0 bytes 0 masquerade
		ip saddr 10.0.1.0/24 counter packets 0 bytes 0 masquerade fully-random
	}
}
table inet fw {
	set allowed {
		type ipv4_addr
		elements = { 10.0.0.1 }
	}
	chain in {
		type filter hook input priority filter; policy accept;
		jump common
	}
	chain common {
		ct state { invalid } counter packets 3 bytes 120 drop
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.9.0.0/16 snat ip to 192.0.2.1-192.0.2.4:2000-2999 random,persistent
	}
}
"#;

    #[test]
    fn nft_nat_and_invalid_drop() {
        let r = parse_nft_ruleset(NFT);
        assert_eq!(r.nat.len(), 3, "{:?}", r.nat);
        assert!(!r.nat[0].random_fully);
        assert!(r.nat[1].random_fully);
        let s = &r.nat[2];
        assert_eq!(s.target, NatTarget::Snat);
        assert_eq!(s.table, "inet fw");
        assert_eq!(s.addresses, Some(4));
        assert_eq!(s.ports, Some(1000));
        assert!(s.random && s.persistent && !s.random_fully);
        assert_eq!(r.invalid_drops.len(), 1);
        assert_eq!(r.invalid_drops[0].chain, "common");
        assert_eq!(r.invalid_drops[0].hooks, vec![Hook::Input]);
    }

    #[test]
    fn nft_skips_iptables_nft_tables_and_negations() {
        let r = parse_nft_ruleset_skipping(NFT, &["ip nat".to_string()]);
        assert_eq!(r.nat.len(), 1);
        let r = parse_nft_ruleset(
            "table ip f {\n chain input {\n type filter hook input priority 0;\n ct state != invalid drop\n }\n}\n",
        );
        assert!(r.invalid_drops.is_empty());
    }

    #[test]
    fn sysctl_and_modules_load_parsing() {
        let s =
            parse_sysctl_conf("# c\n-net/netfilter/nf_conntrack_tcp_be_liberal = 1\nkernel.x=2\n");
        assert_eq!(
            s[0],
            (
                "net.netfilter.nf_conntrack_tcp_be_liberal".into(),
                2,
                "1".into()
            )
        );
        assert_eq!(
            parse_modules_load("# x\nbr_netfilter\nnf_conntrack\n"),
            vec!["nf_conntrack"]
        );
        assert_eq!(
            parse_modules_load("overlay\nbr_netfilter\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            parse_modules_load("xt_conntrack # for kube\n"),
            vec!["xt_conntrack"]
        );
    }

    #[test]
    fn boot_order_trap_needs_all_three() {
        let set = |v: &str| ConfSetting {
            file: "/etc/sysctl.conf".into(),
            line: 1,
            value: v.into(),
        };
        let mut b = BootConfig {
            be_liberal_settings: vec![set("1")],
            ..Default::default()
        };
        assert!(b.boot_order_trap());
        b.conntrack_modules_load
            .push("/etc/modules-load.d/x.conf: nf_conntrack".into());
        assert!(!b.boot_order_trap());
        b.conntrack_modules_load.clear();
        b.conntrack_builtin = Some(true);
        assert!(!b.boot_order_trap());
        b.conntrack_builtin = None;
        b.be_liberal_settings.push(set("0"));
        assert!(!b.boot_order_trap(), "the last setting wins");
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-27-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.0"), Some((5, 10)));
        assert_eq!(kernel_version("x"), None);
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/node")
            .join(name)
    }

    #[test]
    fn reads_a_trapped_node_from_a_fixture_root() {
        let s = read_state(&fixture("trap"), None);
        assert_eq!(s.kernel_version(), Some((6, 1)));
        assert_eq!(s.sysctl.tcp_be_liberal, Some(false));
        assert_eq!(s.sysctl.conntrack_count, Some(1500));
        assert!(s.boot.boot_order_trap());
        assert_eq!(
            s.boot.be_liberal_settings[0].file,
            "/etc/sysctl.d/90-conntrack.conf"
        );
        // iptables-nft's tables are read once, from iptables-save
        assert_eq!(s.nat_rules().len(), 1, "{:?}", s.rules);
        assert_eq!(s.nat_without_random_fully().len(), 1);
        assert_eq!(s.invalid_drop_on(Hook::Input), Some(false));
        assert_eq!(s.invalid_drop_on(Hook::Forward), Some(true));
        assert!(s.notes.iter().any(|n| n.contains("ip6tables-save")) || s.notes.is_empty());
    }

    #[test]
    fn reads_a_mitigated_node_from_a_fixture_root() {
        let s = read_state(&fixture("mitigated"), None);
        assert_eq!(s.sysctl.tcp_be_liberal, Some(true));
        assert!(!s.boot.boot_order_trap());
        assert_eq!(
            s.boot.conntrack_modules_load,
            vec!["/etc/modules-load.d/conntrack.conf: nf_conntrack"]
        );
        assert!(s.nat_without_random_fully().is_empty());
        assert_eq!(s.invalid_drop_on(Hook::Input), Some(true));
    }

    #[test]
    fn an_empty_root_reads_nothing_and_says_so() {
        let s = read_state(&fixture("does-not-exist"), None);
        assert!(s.rules.is_none());
        assert_eq!(s.sysctl, Sysctls::default());
        assert!(!s.notes.is_empty());
    }
}
