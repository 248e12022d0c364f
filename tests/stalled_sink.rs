//! A stalled output must not cost unbounded memory, and what cannot be queued
//! is counted, never silent (issue "Trust", item 6). `record -o -` writes to a
//! pipe nobody reads for 30 s while a UDP drop flood makes ~100k nf_drop
//! events/s in a namespace of the test's own; record's peak RSS stays under
//! 256 MiB, and every dropped datagram is accounted for exactly: events in
//! the file + lost (kernel) + lost_user (ctrace) = the DROP rule's packet
//! counter. Needs root (BPF, a network namespace); takes ~45 s.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_blocked_writer_costs_bounded_memory_and_its_loss_is_counted() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root (BPF and a network namespace need it)");
        return;
    }
    let name = format!("ctsink-{}", std::process::id());
    ip(&["netns", "add", &name]);
    let ns = Netns(name.clone());
    ip(&["-n", &name, "link", "set", "lo", "up"]);
    let ipt = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &name, "iptables"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "iptables {args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ipt(&["-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP"]);

    let mut child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
        .args([
            "record",
            "-q",
            "--symptoms-here",
            "--netns",
            &name,
            "-d",
            "42s",
            "-o",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    // attached: ctrace holds its BPF links (the header sits in the pipe)
    let t0 = Instant::now();
    while std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains("link_id:")))
                .count()
        })
        .unwrap_or(0)
        < 4
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "not attached");
        std::thread::sleep(Duration::from_millis(50));
    }
    // the flood: ~100k datagrams/s for 30 s, from inside the namespace
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, name) = (stop.clone(), name.clone());
        std::thread::spawn(move || -> u64 {
            let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let t0 = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                for _ in 0..1000 {
                    let _ = s.send_to(b"x", "127.0.0.1:9");
                    sent += 1;
                }
                // pace at 100k/s
                let due = Duration::from_micros(sent * 10);
                if let Some(w) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(w);
                }
            }
            sent
        })
    };
    // nobody reads the pipe for 30 s: record's writer blocks
    let mut peak = 0u64;
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(30) {
        peak = peak.max(vm_hwm_kib(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    peak = peak.max(vm_hwm_kib(pid));
    let st = child.wait().unwrap();
    assert!(st.success(), "record: {st}");
    let last = text.lines().last().unwrap();
    let trailer: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(trailer["type"], "trailer", "{last}");
    let events = text
        .lines()
        .filter(|l| l.contains(r#""kind":"nf_drop""#))
        .count() as u64;
    let lost = trailer["lost"].as_u64().unwrap();
    let lost_user = trailer["lost_user"].as_u64().unwrap_or(0);
    // the rule's own packet counter is the truth
    let counters = ipt(&["-t", "filter", "-L", "OUTPUT", "-v", "-x", "-n"]);
    let dropped: u64 = counters
        .lines()
        .find(|l| l.contains("DROP"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap();
    eprintln!(
        "stalled sink: sent {sent}, rule dropped {dropped}, events {events}, lost {lost}, lost_user {lost_user}, peak RSS {} MiB",
        peak / 1024
    );
    assert!(peak < 256 * 1024, "peak RSS {} MiB", peak / 1024);
    assert!(
        lost_user > 0,
        "a writer blocked for 30 s under a flood must drop in user space"
    );
    assert_eq!(
        events + lost + lost_user,
        dropped,
        "every drop accounted for"
    );
    drop(ns);
}
