//! On the host (needs root, iproute2, iptables): a lone event reaches user
//! space promptly although the BPF side submits without waking the reader
//! (`ct_submit`, bpf/common.bpf.h). The reader's own timer
//! (`pipeline::POLL_TIMEOUT`) bounds the wait: every event here must be
//! decoded within 100 ms of its kernel timestamp. Each event is alone in the
//! ring, so no fill threshold can wake the reader early: the timer is what is
//! measured. A poll timeout of 100 ms or more, or a reader that waits for a
//! wake-up that never comes, fails the test.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctrace::event::Kind;
use ctrace::probe::Mode;
use ctrace::session::{Session, SessionConfig};

const BOUND: Duration = Duration::from_millis(100);
const EVENTS: usize = 8;

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A netns of its own (unique per process), removed on every exit path.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

#[test]
fn a_lone_event_reaches_user_space_within_100_ms() {
    if !nix::unistd::geteuid().is_root() || !sh(&["iptables", "--version"]) {
        eprintln!("skipped: needs root and iptables");
        return;
    }
    let ns = Netns(format!("ctlat-{}", std::process::id()));
    assert!(sh(&["ip", "netns", "add", &ns.0]));
    let ex = |a: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", &ns.0];
        v.extend_from_slice(a);
        assert!(sh(&v), "{a:?}");
    };
    ex(&["ip", "link", "set", "lo", "up"]);
    // conntrack active in the netns (the session reads its counters), and a
    // DROP rule: one nf_drop event (kfree_skb, NETFILTER_DROP) per datagram
    ex(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "ACCEPT",
    ]);
    ex(&[
        "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP",
    ]);
    let ino = std::fs::metadata(format!("/run/netns/{}", ns.0))
        .unwrap()
        .ino() as u32;

    // the session enters the netns on this thread; symptoms of this netns only
    let cfg = SessionConfig {
        mode: Mode::Stable,
        netns: Some(ns.0.clone()),
        all_netns: false,
        symptoms_here: true,
        ringbuf_mb: 4,
        snaplen: 0,
        lab: true,
    };
    let session = Session::start(&cfg).expect("session");
    let mut worst = Duration::ZERO;
    let mut seen = 0;
    for i in 0..EVENTS {
        // a varying gap: the send falls at a different point of the reader's timer
        std::thread::sleep(Duration::from_millis(60 + 37 * i as u64 % 90));
        let sent = mono_ns();
        // bash's /dev/udp: one datagram, dropped in OUTPUT (the write fails: EPERM)
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "bash",
                "-c",
                "echo x >/dev/udp/127.0.0.1/9",
            ])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            if let Some(b) = session.recv_timeout(Duration::from_millis(5)) {
                let now = mono_ns();
                got = b
                    .iter()
                    .find(|e| e.kind == Kind::NfDrop && e.netns == ino && e.ts_ns >= sent)
                    .map(|e| Duration::from_nanos(now - e.ts_ns));
            }
        }
        let lat = got.unwrap_or_else(|| panic!("event {i}: none within 2 s"));
        eprintln!("event {i}: in user space {lat:?} after its kernel timestamp");
        worst = worst.max(lat);
        seen += 1;
    }
    let fin = session.finish().expect("finish");
    assert_eq!(seen, EVENTS);
    assert_eq!(fin.lost, 0);
    assert!(
        worst < BOUND,
        "worst latency {worst:?}: over {BOUND:?} (pipeline::POLL_TIMEOUT is {:?})",
        ctrace::pipeline::POLL_TIMEOUT
    );
}
