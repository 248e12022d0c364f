//! On the host (needs root): every program passes the verifier, the resolver's
//! choice matches what the kernel offers, and nothing of ctrace stays attached
//! after it exits. These compare against the kernel's own view (bpftool).
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::kernel_at_least;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ctrace")
}

fn root_or_skip() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: loading BPF programs needs root");
        return false;
    }
    true
}

fn json(args: &[&str]) -> Value {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A verifier regression in any kprobe program fails here, although kprobes
/// cannot attach on a kernel without them: loading is verifying.
#[test]
fn every_kprobe_and_stable_program_passes_the_verifier() {
    if !root_or_skip() {
        return;
    }
    let f = json(&["probes", "--features"]);
    let loads = f["loads"].as_object().unwrap();
    for p in ["nat", "confirm", "window", "symptoms"] {
        assert_eq!(
            loads[&format!("{p}:kprobe")],
            "ok",
            "{p}:kprobe: {}",
            loads[&format!("{p}:kprobe")]
        );
    }
    // netfilter BPF programs exist from 6.4: the host decides, not a constant
    let has_nf = Path::new("/proc/sys/net/netfilter").exists() && kernel_at_least(6, 4);
    if has_nf {
        for p in ["nat", "confirm", "window", "symptoms"] {
            assert_eq!(loads[&format!("{p}:stable")], "ok", "{p}:stable");
        }
    }
}

/// The packet-capture paths (`record --pcap`) are compiled out of a load
/// without a snap length: loaded with the largest one, every kprobe and
/// stable program still passes the verifier.
#[test]
fn every_program_passes_the_verifier_with_packet_capture() {
    if !root_or_skip() {
        return;
    }
    let has_nf = Path::new("/proc/sys/net/netfilter").exists() && kernel_at_least(6, 4);
    for snaplen in ["1", "256", "1504"] {
        let f = json(&["probes", "--features", "--snaplen", snaplen]);
        let loads = f["loads"].as_object().unwrap();
        for p in ["nat", "confirm", "window", "symptoms"] {
            let mut keys = vec![format!("{p}:kprobe")];
            if has_nf {
                keys.push(format!("{p}:stable"));
            }
            for k in keys {
                assert_eq!(loads[&k], "ok", "--snaplen {snaplen}: {k}: {}", loads[&k]);
            }
        }
    }
}

/// The plan agrees with the kernel: a probe is never planned on a flavour
/// whose load the kernel refused, and kprobes are never chosen without a
/// kprobe PMU.
#[test]
fn plan_follows_the_kernels_answers() {
    if !root_or_skip() {
        return;
    }
    let f = json(&["probes", "--features"]);
    let plan = json(&["probes", "--json"]);
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    for p in plan["probes"].as_array().unwrap() {
        let name = p["probe"].as_str().unwrap();
        let Some(fl) = p["chosen"].as_str() else {
            continue;
        };
        assert_eq!(
            f["loads"][format!("{name}:{fl}")],
            "ok",
            "{name} planned on {fl}"
        );
        if !pmu {
            assert_ne!(fl, "kprobe", "{name}: kprobe chosen without a kprobe PMU");
        }
    }
}

use common::held_ids;

fn our_progs(pid: u32) -> BTreeSet<u64> {
    held_ids(pid, "prog_id:")
}

fn all_prog_ids() -> BTreeSet<u64> {
    common::bpftool_list("prog")
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

fn links_of(progs: &BTreeSet<u64>) -> usize {
    common::bpftool_list("link")
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| progs.contains(&id)))
        .count()
}

fn record_then_signal(sig: nix::sys::signal::Signal) {
    let dir = std::env::temp_dir().join(format!("ctrace-cleanup-{}-{sig}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rec.jsonl");
    let mut child = Command::new(bin())
        .args(["record", "-q", "-o"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // a failed assertion must not leave the recorder running
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _reap = Reap(pid);
    // attached once the header is written
    let t0 = Instant::now();
    while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no header after 20 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "ctrace exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let progs = our_progs(pid);
    assert!(progs.len() >= 4, "ctrace holds {} programs", progs.len());
    let links = links_of(&progs);
    assert!(links >= 4, "only {links} links attached");
    assert_eq!(
        links,
        held_ids(pid, "link_id:").len(),
        "links by prog id vs link fds"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "ctrace exited with {status} after {sig}");
    // the kernel frees programs and links after an RCU grace period: give it 5 s
    let t0 = Instant::now();
    let left = loop {
        let left: Vec<u64> = all_prog_ids().intersection(&progs).copied().collect();
        let links = links_of(&progs);
        if (left.is_empty() && links == 0) || t0.elapsed() > Duration::from_secs(5) {
            break (left, links);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(left.0.is_empty(), "programs left after {sig}: {:?}", left.0);
    assert_eq!(left.1, 0, "links left after {sig}");
    // and the recording is complete: a trailer with the kernel's counters
    let rec = ctrace::record::read(&file).unwrap();
    let t = rec.trailer.expect("trailer written on signal");
    assert_eq!(t.ended_by, "signal");
    assert!(t.kernel_counters.is_some());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn nothing_stays_attached_after_sigint() {
    if root_or_skip() {
        record_then_signal(nix::sys::signal::Signal::SIGINT);
    }
}

#[test]
fn nothing_stays_attached_after_sigterm() {
    if root_or_skip() {
        record_then_signal(nix::sys::signal::Signal::SIGTERM);
    }
}
