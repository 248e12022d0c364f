//! One driver for every command that traces (issue: "Trust"): INT, TERM, HUP
//! and QUIT end `record --lab` and `check --lab` the same clean way — a
//! trailer (or the report), no BPF link left, no lab namespace left — and
//! STOP/CONT or a debugger's attach never end a recording. Needs root (BPF,
//! network namespaces); skips only without it, and says so.

mod common;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn skip() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root (BPF and network namespaces need it)");
        return true;
    }
    false
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ctrace-sig-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Namespaces a lab started by `pid` made (prefix ctlab-<pid>-).
fn lab_namespaces(pid: u32) -> Vec<String> {
    let prefix = format!("ctlab-{pid}-");
    common::named_netns(|n| n.starts_with(&prefix))
}

/// Waits until `file` holds a first line (the header: every probe attached)
/// and the child holds its links; returns those links.
fn wait_attached(child: &mut Child, file: &Path) -> BTreeSet<u64> {
    let t0 = Instant::now();
    loop {
        let s = std::fs::read_to_string(file).unwrap_or_default();
        let links = common::held_links(child.id());
        if s.contains('\n') && links.len() >= 4 {
            return links;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("ctrace exited early: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not attached after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the child's exit (bounded).
fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            panic!("ctrace did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn trailer(file: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(file).unwrap();
    let last = s.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line of {} is not JSON ({e}): {last}", file.display()));
    assert_eq!(
        v["type"],
        "trailer",
        "no trailer in {}: {last}",
        file.display()
    );
    v
}

fn check_clean(pid: u32, links: &BTreeSet<u64>, what: &str) {
    let left: Vec<u64> = common::listed_links()
        .intersection(links)
        .copied()
        .collect();
    assert!(
        left.is_empty(),
        "{what}: BPF links left (bpftool): {left:?}"
    );
    let ns = lab_namespaces(pid);
    assert!(ns.is_empty(), "{what}: lab namespaces left: {ns:?}");
}

#[test]
fn record_lab_ends_cleanly_on_int_term_hup_quit() {
    if skip() {
        return;
    }
    let _g = common::serial();
    let d = dir("record");
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let file = d.join(format!("{sig}.jsonl"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
            .args(["record", "-q", "--lab", "snat-race", "-o"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id();
        let links = wait_attached(&mut child, &file);
        std::thread::sleep(Duration::from_secs(2));
        kill(Pid::from_raw(pid as i32), sig).unwrap();
        let st = wait_exit(&mut child, Duration::from_secs(60));
        assert!(st.success(), "record --lab after {sig}: {st}");
        let t = trailer(&file);
        assert_eq!(t["ended_by"], "signal", "{sig}: {t}");
        assert_eq!(t["signal"], sig.as_str(), "{sig}: {t}");
        assert!(t["kernel_counters"].is_object(), "{sig}: {t}");
        check_clean(pid, &links, &format!("record after {sig}"));
        eprintln!(
            "record --lab, {sig}: trailer {}, links and namespaces gone",
            t["events"]
        );
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn check_lab_ends_cleanly_on_int_term_hup_quit() {
    if skip() {
        return;
    }
    let _g = common::serial();
    let d = dir("check");
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let err = d.join(format!("{sig}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
            .args(["check", "--json", "--lab", "snat-race", "-d", "60s"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        // attached once it holds its links
        let t0 = Instant::now();
        let links = loop {
            let l = common::held_links(pid);
            if l.len() >= 4 {
                break l;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "check not attached");
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_secs(3));
        kill(Pid::from_raw(pid as i32), sig).unwrap();
        let out = {
            let st = wait_exit(&mut child, Duration::from_secs(60));
            let mut s = String::new();
            use std::io::Read;
            child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
            (st, s)
        };
        let code = out.0.code();
        assert!(
            matches!(code, Some(0) | Some(1)),
            "check after {sig}: {:?}",
            out.0
        );
        let doc: serde_json::Value = serde_json::from_str(&out.1)
            .unwrap_or_else(|e| panic!("check after {sig}: not a JSON document ({e})"));
        let warnings = doc["warnings"].to_string();
        assert!(warnings.contains("interrupted"), "{sig}: {warnings}");
        // the counts it reports are the kernel's: the lab stopped before the detach
        let failed = doc["events"]["insert_failed"].as_u64().unwrap_or(0);
        let kernel = doc["kernel_counters"]["insert_failed"]
            .as_u64()
            .unwrap_or(0);
        // on a mismatch, everything that tells where the difference went
        assert_eq!(
            failed,
            kernel,
            "{sig}: events vs kernel; lost {}, missed {}, agreement {}, kernel per CPU {}, incidents {}; ctrace said: {}",
            doc["lost"],
            doc["missed"],
            doc["agreement"],
            doc["kernel_counters"]["per_cpu"],
            doc["incidents"],
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        check_clean(pid, &links, &format!("check after {sig}"));
        eprintln!("check --lab, {sig}: exit {code:?}, insert_failed {failed} = kernel {kernel}");
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn stop_cont_and_ptrace_never_end_a_recording() {
    if skip() {
        return;
    }
    let _g = common::serial();
    let d = dir("stop");
    let file = d.join("rec.jsonl");
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
        .args(["record", "-q", "-d", "10s", "-o"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let p = Pid::from_raw(pid as i32);
    let links = wait_attached(&mut child, &file);
    for _ in 0..2 {
        kill(p, Signal::SIGSTOP).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        kill(p, Signal::SIGCONT).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    // a debugger's attach and detach (what strace -p and gdb -p do)
    // SAFETY: plain ptrace calls on our own child; the status is read into a local.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_ATTACH, pid as libc::pid_t, 0usize, 0usize),
            0,
            "PTRACE_ATTACH: {}",
            std::io::Error::last_os_error()
        );
        let mut status = 0;
        libc::waitpid(pid as libc::pid_t, &mut status, libc::__WALL);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            libc::ptrace(libc::PTRACE_DETACH, pid as libc::pid_t, 0usize, 0usize),
            0,
            "PTRACE_DETACH: {}",
            std::io::Error::last_os_error()
        );
    }
    let st = wait_exit(&mut child, Duration::from_secs(60));
    assert!(st.success(), "record after STOP/CONT and ptrace: {st}");
    let t = trailer(&file);
    assert_eq!(t["ended_by"], "duration", "{t}");
    assert!(
        t0.elapsed() >= Duration::from_secs(10),
        "ended before its duration"
    );
    check_clean(pid, &links, "record after STOP/CONT/ptrace");
    std::fs::remove_dir_all(&d).ok();
}
