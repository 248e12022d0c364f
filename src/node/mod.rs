//! The node's conntrack/NAT configuration: what decides which mitigation fits.
//!
//! Pure parsers (`parse_iptables_save`, `parse_nft_ruleset`, `parse_sysctl_conf`,
//! `parse_modules_load`) and one reader, [`read_state`], that reads everything
//! through a root path so tests point it at fixture trees.
//!
//! Under a root other than `/`, the rule dumps are read from captured files
//! instead of running the tools: `<root>/rules/iptables-save`,
//! `<root>/rules/ip6tables-save` and `<root>/rules/nft-ruleset`. On a node
//! the tools run as `iptables-save -c` (packet counters: which rule takes the
//! connections); the parser reads both that form and the plain one.
//!
//! The parsers live in `iptables` and `nft`, the boot files in `boot`, the
//! reader in `root`; this module holds the facts they produce and the helpers
//! both rule parsers share.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod boot;
mod iptables;
mod nft;
mod root;
mod shadow;

pub use boot::{parse_modules_load, parse_sysctl_conf, read_boot};
pub use iptables::{parse_iptables_save, parse_iptables_save_as};
pub use nft::{parse_nft_ruleset, parse_nft_ruleset_skipping};
pub use root::{read_state, read_sysctls};
pub use shadow::Shadowed;

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
    /// The rule as written in the dump (without an `iptables-save -c`
    /// counter prefix).
    pub rule: String,
    /// 1-based position among the rules of its chain, as `iptables -R/-I
    /// CHAIN N` counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// Packets that took this rule, where the dump counts them
    /// (`iptables-save -c`, nft `counter`): only a connection's first packet
    /// goes through the nat table, so this counts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// Who writes the rule, where that is recognisable ("docker"): editing
    /// such a rule does not last, its owner re-creates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    /// The rule's match conditions, one a group (`-s 10.0.0.0/24`,
    /// `! -o docker0`; nft: the whole match), without comments, counters and
    /// target: what [`NodeState::shadowed`] compares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
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

    /// The rule translates to one port only: `--random-fully` has no other
    /// port to pick, so only more ports or addresses help.
    pub fn single_port(&self) -> bool {
        self.ports == Some(1)
    }

    pub fn docker_managed(&self) -> bool {
        self.managed_by.as_deref() == Some("docker")
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

    /// Rules with --random-fully that never see a connection: an earlier rule
    /// of the same chain without it matches the same traffic (see
    /// [`shadow`]).
    pub fn shadowed(&self) -> Vec<Shadowed<'_>> {
        shadow::shadowed(self.nat_rules())
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

/// "6.1.0-27-cloud-amd64" → (6, 1).
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

#[cfg(test)]
mod tests;
