//! Reading the node from a root path: the running sysctls, the rule dumps
//! (captured files under a fixture root, the tools on a real node) and the
//! whole [`NodeState`].

use std::path::Path;

use super::boot::read_boot;
use super::iptables::{iptables_nft_tables, parse_iptables_save_as};
use super::nft::parse_nft_ruleset_skipping;
use super::{NodeState, Rules, Sysctls};

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
            dump("iptables-save", &["-c"]),
            dump("ip6tables-save", &["-c"]),
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
