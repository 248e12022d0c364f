//! Helpers shared by the root-only integration tests.
#![allow(dead_code)]
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests of one binary that need the machine's BPF and netns state to
/// themselves run one at a time (a failed one does not poison the rest).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// BPF link ids a process holds open.
pub fn held_links(pid: u32) -> BTreeSet<u64> {
    held_ids(pid, "link_id:")
}

/// Every BPF link the kernel lists.
pub fn listed_links() -> BTreeSet<u64> {
    bpftool_list("link")
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

/// Named network namespaces (`/run/netns`) whose name `keep` accepts.
pub fn named_netns(keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}

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

/// Waits until a `ctrace record` child has written its first line (the
/// header: every probe attached) to `file`; panics if it exits first or takes
/// longer than 30 s.
pub fn wait_for_header(child: &mut std::process::Child, file: &std::path::Path) {
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(file)
        .unwrap_or_default()
        .contains('\n')
    {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("ctrace record exited early: {st}");
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "no header after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
