//! The command line as a user meets it: help, bad input, missing privileges.
use assert_cmd::Command;
use predicates::prelude::*;

fn ctrace() -> Command {
    Command::cargo_bin("ctrace").unwrap()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let out = ctrace().arg("--help").assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    for cmd in [
        "probes", "record", "top", "report", "check", "doctor", "lab",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
    assert!(text.contains("Exit codes"), "{text}");
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    ctrace()
        .args(["record", "--no-such-flag"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--no-such-flag"));
    ctrace()
        .args(["record", "-d", "soon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not a duration"));
    ctrace()
        .args(["record", "--mode", "magic"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("possible values"));
    ctrace()
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Usage"));
}

/// Runs ctrace as `nobody` (needs root to switch; skipped otherwise: a
/// non-root runner already is the case under test, see below).
#[test]
fn not_root_is_one_clear_line_and_exit_2() {
    let bin = assert_cmd::cargo::cargo_bin("ctrace");
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd
        .args(["record", "-o", "/tmp/ctrace-cli-nobody.jsonl", "-d", "1s"])
        .assert()
        .code(2);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("run it as root"), "{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line, not a backtrace: {err}"
    );
    assert!(!std::path::Path::new("/tmp/ctrace-cli-nobody.jsonl").exists());
}

#[test]
fn unknown_netns_names_the_fix() {
    if !is_root() {
        eprintln!("skipped: needs root to get past the privilege check");
        return;
    }
    ctrace()
        .args([
            "record",
            "--netns",
            "ctrace-no-such-ns",
            "-d",
            "1s",
            "-o",
            "/dev/null",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "network namespace 'ctrace-no-such-ns' not found",
        ))
        .stderr(predicate::str::contains("ip netns list"));
}

#[test]
fn unwritable_output_names_the_path() {
    if !is_root() {
        eprintln!("skipped: needs root to get past the privilege check");
        return;
    }
    ctrace()
        .args(["record", "-o", "/nonexistent-dir/x.jsonl", "-d", "1s"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot write the recording to /nonexistent-dir/x.jsonl",
        ));
}

#[test]
fn bad_ringbuf_size_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to get past the privilege check");
        return;
    }
    ctrace()
        .args(["record", "--ringbuf-mb", "3", "-d", "1s", "-o", "/dev/null"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("power of two"));
}

#[test]
fn pcap_flags_are_checked_before_anything_attaches() {
    // --snaplen belongs to --pcap, within what one event can carry
    ctrace()
        .args(["record", "--snaplen", "100", "-o", "/dev/null"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--pcap"));
    ctrace()
        .args(["record", "--pcap", "x.pcapng", "--snaplen", "1505"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("1..=1504"));
    ctrace()
        .args(["serve", "--pcap"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--record"));
    if !is_root() {
        eprintln!("skipped the rest: needs root to get past the privilege check");
        return;
    }
    // an unwritable capture names itself and its option, and the recording
    // that could not start is not left behind
    let dir = std::env::temp_dir().join(format!("ctrace-cli-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("r.jsonl");
    ctrace()
        .args(["record", "-d", "1s", "--pcap", "/nonexistent-dir/x.pcapng", "-o"])
        .arg(&jsonl)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot write the capture to /nonexistent-dir/x.pcapng: choose a writable path with --pcap",
        ));
    assert!(!jsonl.exists());
    std::fs::remove_dir_all(&dir).ok();
}
