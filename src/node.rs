//! The node's mitigation state for the NAT failures ctrace traces: the
//! conntrack `be_liberal` sysctl, whether a rule drops INVALID packets, and
//! whether MASQUERADE/SNAT rules use `--random-fully`.
//!
//! Reading happens in the network namespace of the calling thread (sysctls
//! under /proc/sys/net and the `iptables-save`/`nft` children follow it).
//! Parsing is pure and tested over fixture text; `top`, `check` and `doctor`
//! share it.

use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

/// What the rule sets say. Counts are of rules, not of packets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleFacts {
    /// MASQUERADE rules (nat table), with and without random-fully.
    pub masquerade: u32,
    pub masquerade_random_fully: u32,
    /// SNAT rules (nat table), with and without random-fully.
    pub snat: u32,
    pub snat_random_fully: u32,
    /// Rules that drop packets in conntrack state INVALID.
    pub invalid_drop: u32,
}

impl RuleFacts {
    /// Source NAT rules of either kind.
    pub fn nat_rules(&self) -> u32 {
        self.masquerade + self.snat
    }

    /// Source NAT rules that allocate ports without `--random-fully`: the ones
    /// exposed to the port allocation race.
    pub fn nat_without_random_fully(&self) -> u32 {
        (self.masquerade - self.masquerade_random_fully.min(self.masquerade))
            + (self.snat - self.snat_random_fully.min(self.snat))
    }

    /// Field-wise maximum: with iptables-nft the same rules show up in both
    /// `iptables-save` and `nft list ruleset`, so adding would count them twice.
    fn max(&self, o: &RuleFacts) -> RuleFacts {
        RuleFacts {
            masquerade: self.masquerade.max(o.masquerade),
            masquerade_random_fully: self.masquerade_random_fully.max(o.masquerade_random_fully),
            snat: self.snat.max(o.snat),
            snat_random_fully: self.snat_random_fully.max(o.snat_random_fully),
            invalid_drop: self.invalid_drop.max(o.invalid_drop),
        }
    }
}

/// One reading of the node's state. `None` where it could not be read
/// (`errors` says why).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeState {
    /// net.netfilter.nf_conntrack_tcp_be_liberal
    pub be_liberal: Option<bool>,
    /// From `iptables-save`.
    pub iptables: Option<RuleFacts>,
    /// From `nft list ruleset`.
    pub nft: Option<RuleFacts>,
    pub errors: Vec<String>,
}

impl NodeState {
    /// Both rule sources merged (field-wise maximum), or None if neither was read.
    pub fn rules(&self) -> Option<RuleFacts> {
        match (&self.iptables, &self.nft) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (Some(a), None) | (None, Some(a)) => Some(a.clone()),
            (None, None) => None,
        }
    }
}

/// The sysctl file's content: "0" or "1".
pub fn parse_be_liberal(s: &str) -> Option<bool> {
    match s.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Splits a line into words, keeping "quoted strings" (comments) as one word
/// without their quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars();
    let mut had = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                had = true;
            }
            c if c.is_whitespace() && !quoted => {
                if had || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    had = false;
                }
            }
            c => cur.push(c),
        }
    }
    if had || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Facts from `iptables-save` output (any table; NAT targets count in `*nat`).
pub fn parse_iptables_save(text: &str) -> RuleFacts {
    let mut f = RuleFacts::default();
    let mut table = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            continue;
        }
        if !(line.starts_with("-A ") || line.starts_with("-I ")) {
            continue;
        }
        let w = words(line);
        let target = w
            .iter()
            .position(|x| x == "-j" || x == "--jump")
            .and_then(|i| w.get(i + 1))
            .map(String::as_str)
            .unwrap_or("");
        let random_fully = w.iter().any(|x| x == "--random-fully");
        match (table.as_str(), target) {
            ("nat", "MASQUERADE") => {
                f.masquerade += 1;
                f.masquerade_random_fully += random_fully as u32;
            }
            ("nat", "SNAT") => {
                f.snat += 1;
                f.snat_random_fully += random_fully as u32;
            }
            (_, "DROP") => {
                let invalid = w.iter().enumerate().any(|(i, x)| {
                    (x == "--ctstate" || x == "--state")
                        && !(i > 0 && w[i - 1] == "!")
                        && w.get(i + 1)
                            .is_some_and(|v| v.split(',').any(|s| s == "INVALID"))
                });
                f.invalid_drop += invalid as u32;
            }
            _ => {}
        }
    }
    f
}

/// Facts from `nft list ruleset` output. Spellings accepted: `masquerade`,
/// `snat [ip|ip6] to ...`, flags `fully-random`/`random-fully`, and
/// `ct state [{] invalid [,...}] ... drop`.
pub fn parse_nft_ruleset(text: &str) -> RuleFacts {
    let mut f = RuleFacts::default();
    for line in text.lines() {
        let w = words(line);
        let Some(first) = w.first() else { continue };
        if matches!(
            first.as_str(),
            "table" | "chain" | "type" | "policy" | "set" | "map" | "}" | "#"
        ) || first.starts_with('#')
        {
            continue;
        }
        // drop the comment's text: it is free-form
        let w: Vec<&str> = match w.iter().position(|x| x == "comment") {
            Some(i) => w[..i]
                .iter()
                .chain(w.iter().skip(i + 2))
                .map(String::as_str)
                .collect(),
            None => w.iter().map(String::as_str).collect(),
        };
        let random_fully = w.iter().any(|x| {
            x.split(',')
                .any(|s| s == "fully-random" || s == "random-fully")
        });
        if w.contains(&"masquerade") || w.windows(3).any(|p| p == ["xt", "target", "MASQUERADE"]) {
            f.masquerade += 1;
            f.masquerade_random_fully += random_fully as u32;
        } else if w.iter().enumerate().any(|(i, x)| {
            *x == "snat"
                && (w.get(i + 1) == Some(&"to")
                    || (matches!(w.get(i + 1), Some(&"ip") | Some(&"ip6"))
                        && w.get(i + 2) == Some(&"to")))
        }) {
            f.snat += 1;
            f.snat_random_fully += random_fully as u32;
        }
        if w.last() == Some(&"drop") {
            if let Some(i) = w.windows(2).position(|p| p == ["ct", "state"]) {
                let rest = &w[i + 2..];
                let negated = rest.first() == Some(&"!=");
                let rest = if negated { &rest[1..] } else { rest };
                // the value: one word ("invalid", "new,invalid") or a set "{ a, b }"
                let mut value = String::new();
                for v in rest {
                    value.push_str(v);
                    if !value.starts_with('{') || v.ends_with('}') {
                        break;
                    }
                }
                let invalid = value.split([',', '{', '}']).any(|s| s.trim() == "invalid");
                f.invalid_drop += (invalid && !negated) as u32;
            }
        }
    }
    f
}

/// Runs a program with arguments; returns its standard output or why not.
pub type Runner = dyn Fn(&str, &[&str]) -> Result<String, String>;

/// Runs a program and returns its standard output.
fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            err.lines().next().unwrap_or("failed")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads the node's state in the calling thread's network namespace.
pub fn read_state() -> NodeState {
    read_state_with(Path::new("/proc"), &run)
}

/// The same with the /proc root and the command runner given (tests).
pub fn read_state_with(proc_root: &Path, run: &Runner) -> NodeState {
    let mut st = NodeState::default();
    let p = proc_root.join("sys/net/netfilter/nf_conntrack_tcp_be_liberal");
    match std::fs::read_to_string(&p) {
        Ok(s) => st.be_liberal = parse_be_liberal(&s),
        Err(e) => st.errors.push(format!(
            "{}: {e} (nf_conntrack not loaded in this netns?)",
            p.display()
        )),
    }
    match run("iptables-save", &[]) {
        Ok(s) => st.iptables = Some(parse_iptables_save(&s)),
        Err(e) => st.errors.push(e),
    }
    match run("nft", &["list", "ruleset"]) {
        Ok(s) => st.nft = Some(parse_nft_ruleset(&s)),
        Err(e) => st.errors.push(e),
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPTABLES: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Mon Nov 23 16:00:00 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -m conntrack ! --ctstate INVALID -j ACCEPT
-A INPUT -m conntrack ! --ctstate INVALID -j DROP
-A INPUT -m state --state NEW,INVALID -j DROP
-A INPUT -m comment --comment "drop -j MASQUERADE --random-fully" -j DROP
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A POSTROUTING -o eth0 -j SNAT --to-source 192.0.2.10
-A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080
COMMIT
"#;

    #[test]
    fn iptables_save_nat_rules_and_invalid_drops() {
        let f = parse_iptables_save(IPTABLES);
        assert_eq!(f.masquerade, 2);
        assert_eq!(f.masquerade_random_fully, 1);
        assert_eq!(f.snat, 1);
        assert_eq!(f.snat_random_fully, 0);
        // the ctstate INVALID drop and the --state NEW,INVALID drop; not the
        // negated ones, not the comment
        assert_eq!(f.invalid_drop, 2);
        assert_eq!(f.nat_rules(), 3);
        assert_eq!(f.nat_without_random_fully(), 2);
    }

    #[test]
    fn iptables_masquerade_outside_nat_table_does_not_count() {
        let f = parse_iptables_save("*mangle\n-A X -j MASQUERADE\nCOMMIT\n");
        assert_eq!(f, RuleFacts::default());
        assert_eq!(parse_iptables_save(""), RuleFacts::default());
    }

    const NFT: &str = r#"table ip nat {
	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.244.0.0/16 oifname "eth0" counter packets 3 bytes 180 masquerade
		oifname "eth1" masquerade fully-random
		oifname "eth2" snat ip to 192.0.2.10 fully-random,persistent
		oifname "eth3" snat to 192.0.2.11 comment "masquerade here"
	}
	chain snat {
		jump masquerade-chain
	}
}
table inet filter {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state invalid counter packets 0 bytes 0 drop
		ct state { established, related, invalid } drop
		ct state != invalid drop
		ct state established,related accept
		ct state new drop
	}
}
"#;

    #[test]
    fn nft_ruleset_nat_rules_and_invalid_drops() {
        let f = parse_nft_ruleset(NFT);
        assert_eq!(f.masquerade, 2, "{f:?}");
        assert_eq!(f.masquerade_random_fully, 1);
        assert_eq!(f.snat, 2);
        assert_eq!(f.snat_random_fully, 1);
        assert_eq!(f.invalid_drop, 2);
        assert_eq!(f.nat_without_random_fully(), 2);
    }

    #[test]
    fn be_liberal_values() {
        assert_eq!(parse_be_liberal("0\n"), Some(false));
        assert_eq!(parse_be_liberal("1\n"), Some(true));
        assert_eq!(parse_be_liberal(""), None);
    }

    #[test]
    fn read_state_uses_the_root_and_runner_and_merges_sources() {
        let dir = std::env::temp_dir().join(format!("ctrace-node-{}", std::process::id()));
        let sys = dir.join("sys/net/netfilter");
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(sys.join("nf_conntrack_tcp_be_liberal"), "1\n").unwrap();
        let runner = |prog: &str, _: &[&str]| -> Result<String, String> {
            match prog {
                "iptables-save" => Ok(IPTABLES.to_string()),
                _ => Err("nft: not found".to_string()),
            }
        };
        let st = read_state_with(&dir, &runner);
        assert_eq!(st.be_liberal, Some(true));
        assert_eq!(st.rules().unwrap().masquerade, 2);
        assert!(st.nft.is_none());
        assert_eq!(st.errors, vec!["nft: not found".to_string()]);
        // iptables-nft: same rules in both outputs are not counted twice
        let both = |prog: &str, _: &[&str]| -> Result<String, String> {
            Ok(match prog {
                "iptables-save" => IPTABLES.to_string(),
                _ => "table ip nat {\n chain P {\n masquerade\n masquerade fully-random\n }\n}\n"
                    .to_string(),
            })
        };
        let st = read_state_with(Path::new("/nonexistent"), &both);
        assert_eq!(st.be_liberal, None);
        assert_eq!(st.rules().unwrap().masquerade, 2);
        assert_eq!(st.errors.len(), 1, "{:?}", st.errors);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
