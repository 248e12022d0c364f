//! Readers of recordings are bounded: `report` streams (memory independent of
//! the file's size), a line has a maximum length, damaged files give warnings
//! or errors and never a panic. No root needed.
use std::io::{BufWriter, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command as AssertCommand;
use predicates::prelude::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ctrace");
const REC: &str = "tests/fixtures/recordings";

fn ctrace() -> AssertCommand {
    AssertCommand::cargo_bin("ctrace").unwrap()
}

/// A directory of its own, on the target's disk (not a tmpfs /tmp).
fn tmpdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ctrace-readers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(format!("{REC}/{name}"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Peak RSS (VmHWM) of a running process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

/// Runs ctrace to its end; returns its exit code, stderr, wall time and peak
/// RSS in KiB (VmHWM, sampled every 10 ms while it runs: the kernel's
/// ru_maxrss would count the test process's pages it forked from).
fn run_measured(args: &[&str], limit_as: Option<u64>) -> (i32, String, Duration, u64) {
    let mut c = Command::new(BIN);
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(bytes) = limit_as {
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            c.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let t0 = Instant::now();
    let mut child = c.spawn().expect("starting ctrace");
    let mut peak = 0;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        peak = peak.max(vm_hwm_kib(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t0.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    let code = status
        .code()
        .unwrap_or_else(|| panic!("killed: {status}\n{err}"));
    (code, err, took, peak)
}

/// `/dev/zero` has no newline: the reader stops at the maximum line length
/// instead of growing until the OOM killer comes (it reached 24 GB).
#[test]
fn report_of_dev_zero_exits_2_quickly_under_a_1_gib_address_space_limit() {
    let (code, err, took, rss) = run_measured(&["report", "/dev/zero"], Some(1 << 30));
    eprintln!(
        "report /dev/zero: exit {code} in {:.3} s (VmHWM sampled: {} KiB)",
        took.as_secs_f64(),
        rss
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("/dev/zero:1: a line longer than 16 MiB: not a ctrace recording"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// Heavy (writes a 1 GB file, ~10 s), run by default: `report` of a
/// ~1 GB recording aggregates while it streams and stays under 100 MiB.
#[test]
fn report_of_a_1_gb_recording_stays_under_100_mib() {
    let dir = tmpdir("big");
    let path = dir.join("big.jsonl");
    let fx = lines("insert-failed.jsonl");
    let header = &fx[0];
    let start: u64 = serde_json::from_str::<Value>(header).unwrap()["start_mono_ns"]
        .as_u64()
        .unwrap();
    // the same event many times, with increasing ts_ns (and a few sports)
    let ev = fx
        .iter()
        .find(|l| l.contains("\"insert_failed\"") && l.contains("\"event\""))
        .unwrap();
    let v: Value = serde_json::from_str(ev).unwrap();
    let ts = v["ts_ns"].as_u64().unwrap().to_string();
    let (pre, post) = ev.split_once(&ts).unwrap();
    let mut n = 0u64;
    {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        writeln!(w, "{header}").unwrap();
        let mut written = header.len() as u64;
        while written < 1_000_000_000 {
            let l = format!("{pre}{}{post}\n", start + 1_000 + n * 1_000);
            w.write_all(l.as_bytes()).unwrap();
            written += l.len() as u64;
            n += 1;
        }
        writeln!(
            w,
            r#"{{"type":"trailer","end_wall":"x","end_mono_ns":{},"events":{{"insert_failed":{n}}},"lost":0,"ended_by":"duration"}}"#,
            start + 1_000 + n * 1_000
        )
        .unwrap();
        w.flush().unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    let p = path.display().to_string();
    let (code, err, took, rss) = run_measured(&["report", "--json", &p], None);
    std::fs::remove_dir_all(&dir).ok();
    eprintln!(
        "report of {} MB ({n} events): exit {code} in {:.1} s, peak RSS {} KiB",
        size / 1_000_000,
        took.as_secs_f64(),
        rss
    );
    assert!(size >= 1_000_000_000);
    assert_eq!(code, 1, "insert failures are findings: {err}");
    assert!(err.is_empty(), "{err}");
    assert!(rss > 0, "no sample of VmHWM");
    assert!(rss < 100 * 1024, "peak RSS {} MiB", rss / 1024);
}

/// A cut inside a multi-byte character is a truncated last line: a warning,
/// the complete events before it reported (it was a hard error).
#[test]
fn a_file_cut_inside_a_character_reports_the_events_before_it() {
    let dir = tmpdir("cut");
    let fx = lines("truncated.jsonl");
    let ev = fx[1].replace("clash with", "clash \u{2014} with");
    let text = format!("{}\n{ev}\n{ev}\n", fx[0]);
    let cut = text.rfind('\u{2014}').unwrap() + 2; // 2 of its 3 bytes
    let p = dir.join("cut.jsonl");
    std::fs::write(&p, &text.as_bytes()[..cut]).unwrap();
    let out = ctrace()
        .args(["report", "--json"])
        .arg(&p)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "{}:3: last line is truncated",
            p.display()
        )))
        .stderr(predicate::str::contains(
            "the 1 complete events before it are kept",
        ));
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["events"]["insert_failed"], 1);
    assert!(v["lost"].is_null());
    std::fs::remove_dir_all(&dir).ok();
}

/// A second trailer is reported, and its larger `lost` is not hidden (it
/// replaced the first silently: "lost 5" vanished, "No findings").
#[test]
fn a_second_trailer_is_reported_and_the_larger_lost_kept() {
    let dir = tmpdir("trailers");
    let fx = lines("clean.jsonl");
    let t = fx.last().unwrap();
    assert!(t.contains("\"trailer\""));
    let mut v: Value = serde_json::from_str(t).unwrap();
    v["lost"] = 5.into();
    let lost5 = v.to_string();
    v["lost"] = 0.into();
    let lost0 = v.to_string();
    let body = fx[..fx.len() - 1].join("\n");
    let p = dir.join("two.jsonl");
    std::fs::write(&p, format!("{body}\n{lost5}\n{lost0}\n")).unwrap();
    let out = ctrace()
        .args(["report", "--json"])
        .arg(&p)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "another trailer (the first is line",
        ))
        .stderr(predicate::str::contains("the larger lost, 5"));
    let j: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(j["lost"], 5);
    assert_eq!(j["exit"], 1, "events lost is a warning that counts");
    assert!(
        j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "events_lost"),
        "{j}"
    );
    // events after the trailer: counted and reported
    let ev = fx.iter().find(|l| l.contains("\"event\"")).unwrap();
    std::fs::write(&p, format!("{body}\n{lost0}\n{ev}\n")).unwrap();
    ctrace()
        .arg("report")
        .arg(&p)
        .assert()
        .stderr(predicate::str::contains("1 event(s) after the trailer"));
    std::fs::remove_dir_all(&dir).ok();
}
