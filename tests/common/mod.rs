//! Helpers shared by the root-only integration tests.
#![allow(dead_code)]
use std::collections::BTreeSet;

/// BPF object IDs a process holds open: its fdinfo says `prog_id:` or
/// `link_id:` for each BPF fd (bpftool's `pids` needs a build that Debian's
/// package lacks).
pub fn held_ids(pid: u32, field: &str) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten() {
        if let Ok(s) = std::fs::read_to_string(e.path()) {
            for l in s.lines() {
                if let Some(v) = l.strip_prefix(field) {
                    if let Ok(id) = v.trim().parse() {
                        ids.insert(id);
                    }
                }
            }
        }
    }
    ids
}

/// The running kernel is at least maj.min.
pub fn kernel_at_least(maj: u32, min: u32) -> bool {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = r.trim().split(|c: char| !c.is_ascii_digit());
    let a: u32 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let b: u32 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (a, b) >= (maj, min)
}

/// `bpftool <object> show -j`: the kernel's own list of BPF programs or links
/// (`object` is "prog" or "link"), one JSON object each.
pub fn bpftool_list(object: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .args([object, "show", "-j"])
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool {object} show -j failed");
    match serde_json::from_slice(&out.stdout) {
        Ok(serde_json::Value::Array(v)) => v,
        other => panic!("bpftool {object} show -j: not a JSON list: {other:?}"),
    }
}
