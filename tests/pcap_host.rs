//! On the host (root, iproute2, iptables, tshark): `record --pcap` of the
//! invalid-rst lab, read back by tshark, the reader users open. Every event of
//! a captured kind has its frame, in the order and number tshark gives them;
//! each frame's comment names its event's kind and reason; the INVALID
//! segment's TCP sequence number in the frame is the one in its event; and the
//! frame's time is the event's, converted with the header's clock.
//!
//! The lab's namespaces are ctrace's own (`ctlab-<pid>-`), removed by it on
//! every exit path; the test checks that none is left.
mod common;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use ctrace::event::Kind;
use ctrace::record::pcap::CAPTURED;

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: the lab creates network namespaces".into());
    }
    for (tool, arg) in [
        ("ip", "-V"),
        ("iptables", "--version"),
        ("tshark", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // CI installs every one of them (.ci/setup): there, a missing
            // tool is a failure, not a skip
            assert!(
                std::env::var_os("CI").is_none(),
                "no working '{tool}' in CI: .ci/setup installs it"
            );
            return Some(format!("no working '{tool}' binary"));
        }
    }
    None
}

/// One frame as tshark prints it.
struct Frame {
    number: u64,
    comment: String,
    seq_raw: Option<u32>,
    /// "1796135623.543713456"
    time_epoch: String,
    interface: String,
    /// tshark's `tcp.flags.str`: "··········S·"
    tcp_flags: String,
}

fn tshark_frames(file: &std::path::Path) -> Vec<Frame> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-e",
            "frame.number",
            "-e",
            "frame.comment",
            "-e",
            "tcp.seq_raw",
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.interface_name",
            "-e",
            "tcp.flags.str",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("running tshark");
    assert!(out.status.success(), "tshark -r failed: {}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 6, "tshark line {l:?}");
            Frame {
                number: f[0].parse().unwrap(),
                comment: f[1].to_string(),
                seq_raw: f[2].parse().ok(),
                time_epoch: f[3].to_string(),
                interface: f[4].to_string(),
                tcp_flags: f[5].to_string(),
            }
        })
        .collect()
}

/// "1796135623.543713456" -> nanoseconds since the epoch.
fn epoch_ns(s: &str) -> u64 {
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let frac = format!("{frac:0<9}");
    secs.parse::<u64>().unwrap() * 1_000_000_000 + frac[..9].parse::<u64>().unwrap()
}

/// The labs are timing-sensitive: one at a time in this binary.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `record --lab LAB --pcap`, then every check of the module's doc on its
/// output; returns the recording and the frames.
fn record_lab_and_check(lab: &str) -> (ctrace::record::Recording, Vec<Frame>) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("ctrace-pcap-host-{lab}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (jsonl, pcap) = (dir.join("rec.jsonl"), dir.join("rec.pcapng"));
    let child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
        .args([
            "record",
            "-q",
            "--ringbuf-mb",
            "64",
            "--lab",
            lab,
            "-d",
            "8s",
            "--snaplen",
            "128",
            "--pcap",
        ])
        .arg(&pcap)
        .arg("-o")
        .arg(&jsonl)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    // whatever follows, the lab's namespaces must be gone
    let prefix = format!("ctlab-{pid}-");
    let left = common::named_netns(|n| n.starts_with(&prefix));
    assert!(left.is_empty(), "namespaces left by record --lab: {left:?}");
    assert!(out.status.success(), "record exited with {}", out.status);
    assert_eq!(std::fs::metadata(&pcap).unwrap().mode() & 0o7777, 0o600);

    let rec = ctrace::record::read(&jsonl).unwrap();
    let header = rec.header.as_ref().unwrap();
    let start_wall = ctrace::record::unix_ns_from_rfc3339(&header.start_wall).unwrap();
    let captured: Vec<_> = rec
        .events
        .iter()
        .filter(|e| CAPTURED.contains(&e.kind))
        .collect();
    let frames = tshark_frames(&pcap);
    let by_kind = |k: Kind| captured.iter().filter(|e| e.kind == k).count();
    eprintln!(
        "record --lab {lab} --pcap: {} frames, {} events of the captured kinds ({} insert_failed, {} tcp_invalid, {} host_rst)",
        frames.len(),
        captured.len(),
        by_kind(Kind::InsertFailed),
        by_kind(Kind::TcpInvalid),
        by_kind(Kind::HostRst),
    );
    assert_eq!(frames.len(), captured.len(), "frames vs events");
    // events of other kinds carry no frame
    for e in rec.events.iter().filter(|e| !CAPTURED.contains(&e.kind)) {
        assert_eq!(e.frame, None, "{} has a frame", e.kind);
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in &captured {
        let n = e
            .frame
            .unwrap_or_else(|| panic!("{} event without a frame", e.kind));
        assert!(seen.insert(n), "frame {n} given twice");
        let f = &frames[(n - 1) as usize];
        assert_eq!(f.number, n);
        let head = format!("ctrace: {}: {}", e.kind, e.reason);
        assert!(
            f.comment.starts_with(&head),
            "frame {n}: comment {:?} does not name {head:?}",
            f.comment
        );
        if let Some(i) = e.incident {
            assert!(
                f.comment.contains(&format!("; incident {i}")),
                "{}",
                f.comment
            );
        }
        assert!(
            f.interface.starts_with(&format!("netns:{}/", e.netns)),
            "frame {n} on {}",
            f.interface
        );
        // the events that carry a TCP header (insert_failed has none)
        if let Some(t) = &e.tcp {
            assert_eq!(f.seq_raw, Some(t.seq), "frame {n} ({}): TCP seq", e.kind);
        }
        let want = (start_wall as i128 + e.ts_ns as i128 - header.start_mono_ns as i128) as u64;
        assert_eq!(
            epoch_ns(&f.time_epoch),
            want,
            "frame {n}: time vs the header's conversion"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    (rec, frames)
}

#[test]
fn record_pcap_of_the_invalid_rst_lab_reads_back_in_tshark() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (rec, _) = record_lab_and_check("invalid-rst");
    // the lab's out-of-window segment is INVALID on every kernel (SEQ over
    // the upper bound): at least one such frame, and the node's RST
    for k in [Kind::TcpInvalid, Kind::HostRst] {
        assert!(
            rec.events.iter().any(|e| e.kind == k && e.frame.is_some()),
            "no {k} frame"
        );
    }
}

/// The SYNs confirm dropped: one frame per insert failure the kernel counted,
/// each a SYN as it left NAT.
#[test]
fn record_pcap_of_the_snat_race_lab_has_every_dropped_syn() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (rec, frames) = record_lab_and_check("snat-race");
    let node = rec.header.as_ref().unwrap().netns;
    let kernel = rec
        .trailer
        .as_ref()
        .and_then(|t| t.kernel_counters.as_ref())
        .map(|k| k.insert_failed)
        .unwrap();
    let failed: Vec<_> = rec
        .events
        .iter()
        .filter(|e| e.kind == Kind::InsertFailed && e.netns == node)
        .collect();
    assert!(kernel > 0, "the lab lost no insert");
    assert_eq!(
        failed.len() as u64,
        kernel,
        "insert_failed events vs the kernel"
    );
    for e in failed {
        let f = &frames[(e.frame.unwrap() - 1) as usize];
        assert!(f.interface.ends_with("/postrouting"), "{}", f.interface);
        assert!(
            f.tcp_flags.contains('S'),
            "frame {}: flags {}",
            f.number,
            f.tcp_flags
        );
    }
}
