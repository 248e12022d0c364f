//! `ctrace check` end to end on this host (needs root): against the built-in
//! SNAT-race lab, the snat_race finding must count exactly what the kernel's
//! insert_failed counter says over the same run; a quiet netns must exit 0.
use std::process::Command;

use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ctrace")
}

fn root_or_skip(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{test}: skipped: tracing needs root");
        return false;
    }
    true
}

/// The lab is built elsewhere: skip (with the reason) until it works here.
fn lab_or_skip(test: &str) -> bool {
    let help = Command::new(bin())
        .args(["lab", "snat-race", "--help"])
        .output();
    match help {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "{test}: skipped: `ctrace lab snat-race --help` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("{test}: skipped: cannot run ctrace: {e}");
            false
        }
    }
}

fn run_json(args: &[&str]) -> (i32, Value, String) {
    let o = Command::new(bin()).args(args).output().expect("run ctrace");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let code = o.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (code, v, stderr)
}

#[test]
fn check_against_the_snat_race_lab_counts_what_the_kernel_counts() {
    let t = "check_against_the_snat_race_lab";
    if !root_or_skip(t) || !lab_or_skip(t) {
        return;
    }
    let (code, v, stderr) = run_json(&["check", "--lab", "snat-race", "-d", "8s", "--json"]);
    if code == 2 && stderr.contains("not built yet") {
        eprintln!(
            "{t}: skipped: the lab is not built in this tree: {}",
            stderr.trim()
        );
        return;
    }
    assert_eq!(code, 1, "exit code; stderr:\n{stderr}\nstdout: {v}");
    assert_eq!(v["format"], 1);
    assert_eq!(v["command"], "check");
    assert_eq!(v["exit"], 1);
    let kernel = v["kernel_counters"]["insert_failed"]
        .as_u64()
        .unwrap_or_else(|| panic!("no kernel insert_failed delta in {v}"));
    assert!(kernel > 0, "the lab made no insert failures: {v}");
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "snat_race")
        .unwrap_or_else(|| panic!("no snat_race finding in {v}"));
    assert_eq!(f["what"]["count"].as_u64(), Some(kernel), "{f}");
    assert_eq!(f["what"]["kernel_count"].as_u64(), Some(kernel), "{f}");
    assert_eq!(v["events"]["insert_failed"].as_u64(), Some(kernel));
    assert!(!f["evidence"]["examples"].as_array().unwrap().is_empty());
    assert!(!f["mitigation"].as_array().unwrap().is_empty());
}

#[test]
fn check_against_the_invalid_rst_lab_counts_what_the_kernel_counts() {
    let t = "check_against_the_invalid_rst_lab";
    if !root_or_skip(t) || !lab_or_skip(t) {
        return;
    }
    let (code, v, stderr) = run_json(&["check", "--lab", "invalid-rst", "-d", "8s", "--json"]);
    if code == 2 && stderr.contains("not built yet") {
        eprintln!(
            "{t}: skipped: the lab is not built in this tree: {}",
            stderr.trim()
        );
        return;
    }
    assert_eq!(code, 1, "exit code; stderr:\n{stderr}\nstdout: {v}");
    let kernel = v["kernel_counters"]["invalid"].as_u64().unwrap_or(0);
    assert!(kernel > 0, "the lab made nothing INVALID: {v}");
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "tcp_invalid_reset")
        .unwrap_or_else(|| panic!("no tcp_invalid_reset finding in {v}"));
    // measured on 6.1, 6.12, 6.18 (KERNEL.md 7): the forged segment and the
    // node's own RST, both counted by the kernel and both seen
    assert_eq!(f["what"]["count"].as_u64(), Some(kernel), "{f}");
    assert!(v["events"]["host_rst"].as_u64().unwrap_or(0) > 0, "{v}");
}

/// A fresh netns with one MASQUERADE rule, removed on drop.
struct QuietNetns(String);

impl QuietNetns {
    fn new() -> QuietNetns {
        let name = format!("ctrace-quiet-{}", std::process::id());
        let ok = |c: &mut Command| {
            let o = c.output().expect("run ip/iptables");
            assert!(
                o.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ok(Command::new("ip").args(["netns", "add", &name]));
        let n = QuietNetns(name);
        ok(Command::new("ip").args(["netns", "exec", &n.0, "ip", "link", "set", "lo", "up"]));
        ok(Command::new("ip").args([
            "netns",
            "exec",
            &n.0,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "10.99.0.0/24",
            "-j",
            "MASQUERADE",
        ]));
        n
    }
}

impl Drop for QuietNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_quiet_netns_exits_0_and_node_advice_fails_only_when_asked() {
    let t = "a_quiet_netns_exits_0";
    if !root_or_skip(t) {
        return;
    }
    let ns = QuietNetns::new();
    let (code, v, stderr) = run_json(&["check", "-d", "2s", "--netns", &ns.0, "--json"]);
    assert_eq!(code, 0, "stderr:\n{stderr}\nstdout: {v}");
    assert_eq!(v["exit"], 0);
    assert_eq!(v["events"]["insert_failed"].as_u64().unwrap_or(0), 0);
    assert_eq!(v["kernel_counters"]["insert_failed"], 0);
    // the rule was read in that netns: advice, not a failure
    assert_eq!(v["facts"]["nat_rules"], 1, "{v}");
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "nat_without_random_fully" && f["origin"] == "node"),
        "{v}"
    );
    // --fail-on narrows the exit code to the kinds named
    let (code, _, stderr) = run_json(&[
        "check",
        "-d",
        "1s",
        "--netns",
        &ns.0,
        "--json",
        "--fail-on",
        "nat_without_random_fully",
    ]);
    assert_eq!(code, 1, "stderr:\n{stderr}");
}
