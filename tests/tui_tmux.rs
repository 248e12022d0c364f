//! `ctrace top` in a real terminal: tmux runs it, `capture-pane` reads the
//! screen. Skipped (with the reason printed) where tmux is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ctrace::event::{Event, Kind};
use ctrace::record::{Header, KernelCounters, Line, Trailer, Writer};
use ctrace::tui::testkit;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_ctrace");

struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, w: u16, h: u16, cmd: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("skipped: tmux is not installed");
            return None;
        }
        let t = Tmux {
            socket: format!("ctrace-test-{name}-{}", std::process::id()),
        };
        let ok = t
            .cmd(&[
                "new-session",
                "-d",
                "-x",
                &w.to_string(),
                "-y",
                &h.to_string(),
                "-s",
                "t",
                cmd,
            ])
            .status
            .success();
        assert!(ok, "tmux new-session failed");
        // keep the pane after its command ends, to read what it left
        t.cmd(&["set-option", "-t", "t", "remain-on-exit", "on"]);
        Some(t)
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("running tmux")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn display(&self, fmt: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["display-message", "-p", "-t", "t", fmt]).stdout)
            .trim()
            .to_string()
    }

    /// Waits until the screen satisfies `f`; returns the last screen.
    fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.capture();
            if f(&s) {
                return s;
            }
            if t0.elapsed() > timeout {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.cmd(&["kill-server"]);
    }
}

/// `top --lab snat-race` in a tmux of `w`x`h`, once its lab is on screen
/// (`None`: skipped, and why was printed). The pane prints "ctrace exited N"
/// when it ends and stays 30 s to be read.
fn top_lab(name: &str, w: u16, h: u16) -> Option<Tmux> {
    let script = format!(
        "{} top --lab snat-race; echo \"ctrace exited $?\"; sleep 30",
        sh_quote(BIN)
    );
    let t = Tmux::start(name, w, h, &script)?;
    // the lab must get going: wait for the screen (or an error)
    let s = t.wait_for("ctrace top to start", Duration::from_secs(60), |s| {
        s.contains("LAB snat-race") || s.contains("ctrace exited")
    });
    if s.contains("not built") {
        eprintln!("skipped: ctrace lab is not built yet:\n{s}");
        return None;
    }
    assert!(s.contains("LAB snat-race"), "{s}");
    Some(t)
}

/// The numbers on the counters row of a kind ("│insert_failed  12  0 ... 12│").
fn counter_row(screen: &str, kind: &str) -> Option<Vec<u64>> {
    let l = screen.lines().find(|l| l.contains(&format!("│{kind} ")))?;
    let inner = l.split('│').nth(1)?;
    Some(
        inner
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect(),
    )
}

/// ctrace's and the kernel's insert_failed on screen, once the kernel's
/// counters have been read (the title says how long ago) and they agree.
/// The row is total, per second, [the sparkline's peak], kernel.
fn kernel_equals_ctrace(screen: &str) -> Option<u64> {
    if !screen.contains("kernel (") {
        return None;
    }
    let r = counter_row(screen, "insert_failed")?;
    (r.len() >= 3 && r[0] > 0 && r[0] == *r.last()?).then_some(r[0])
}

/// The translated endpoints on screen that are whole: `as A.B.C.D:PORT`
/// followed by a space (not cut by a border).
fn whole_translations(screen: &str) -> Vec<std::net::SocketAddr> {
    let mut out = Vec::new();
    for l in screen.lines() {
        let mut rest = l;
        while let Some(i) = rest.find("as ") {
            rest = &rest[i + 3..];
            let end = rest.find([' ', '│']).unwrap_or(rest.len());
            if rest[end..].starts_with(' ') {
                if let Ok(a) = rest[..end].parse::<std::net::SocketAddr>() {
                    out.push(a);
                }
            }
        }
    }
    out
}

fn write_recording(path: &Path, events: &[Event], kernel_insert_failed: u64) {
    let header: Header = serde_json::from_value(serde_json::json!({
        "format": 1, "ctrace": "0.1.0", "kernel": "6.1.0-fixture", "hostname": "fixture-node",
        "start_wall": "2026-11-23T10:00:00.000000Z", "start_mono_ns": 1_000_000_000u64,
        "netns": 4026531840u64,
        "probes": {
            "nat": {"mode": "fentry", "hooks": ["nf_nat_setup_info"], "notes": []},
            "confirm": {"mode": "kprobe", "hooks": ["__nf_conntrack_confirm"], "notes": []},
        },
    }))
    .unwrap();
    let mut w = Writer::create(path).unwrap();
    w.write(&Line::Header(header)).unwrap();
    for e in events {
        w.event(e).unwrap();
    }
    let mut counts = std::collections::BTreeMap::new();
    for e in events {
        *counts.entry(e.kind.name().to_string()).or_insert(0u64) += 1;
    }
    w.write(&Line::Trailer(Trailer {
        end_wall: "2026-11-23T10:00:01.000000Z".into(),
        end_mono_ns: 1_300_000_000,
        events: counts,
        lost: 0,
        lost_failures: 0,
        lost_user: 0,
        missed: Default::default(),
        missed_covered: Default::default(),
        kernel_counters: Some(KernelCounters {
            insert_failed: kernel_insert_failed,
            ..Default::default()
        }),
        ended_by: "duration".into(),
        signal: None,
        incidents: Default::default(),
    }))
    .unwrap();
    w.flush().unwrap();
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ctrace-tui-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn replay_shows_the_recordings_counts_and_q_restores_the_terminal() {
    let dir = tmpdir("replay");
    let rec = dir.join("fixture.jsonl");
    // 300 ms of events right after the start: 37 insert_failed among them
    let events: Vec<Event> = (0..300u64)
        .map(|i| {
            let kind = if i % 8 == 3 && i < 8 * 37 {
                Kind::InsertFailed
            } else {
                Kind::NatAlloc
            };
            testkit::event(i, kind, 1_000_000_000 + i * 1_000_000, (i % 2) as u32, 80)
        })
        .collect();
    let want = events
        .iter()
        .filter(|e| e.kind == Kind::InsertFailed)
        .count() as u64;
    assert_eq!(want, 37);
    write_recording(&rec, &events, 41);
    // after ctrace ends, the pane shows its exit code and the terminal mode
    let script = format!(
        "{} top --replay {}; echo \"ctrace exited $?\"; stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; echo; sleep 30",
        sh_quote(BIN),
        sh_quote(&rec.display().to_string())
    );
    let Some(t) = Tmux::start("replay", 100, 30, &script) else {
        return;
    };
    let s = t.wait_for("the replay to finish", Duration::from_secs(15), |s| {
        s.contains("ended: end of recording")
    });
    assert!(s.contains("REPLAY fixture.jsonl x1"), "{s}");
    assert!(s.contains("kernel 6.1.0-fixture"), "{s}");
    assert!(s.contains("lost 0"), "{s}");
    let row = counter_row(&s, "insert_failed").unwrap_or_else(|| panic!("{s}"));
    // total, per second, kernel (from the trailer)
    assert_eq!(row[0], want, "on-screen insert_failed\n{s}");
    assert_eq!(*row.last().unwrap(), 41, "kernel column\n{s}");
    assert_eq!(counter_row(&s, "nat_alloc").unwrap()[0], 300 - want);
    assert_eq!(
        t.display("#{alternate_on}"),
        "1",
        "TUI on the alternate screen"
    );

    t.cmd(&["send-keys", "-t", "t", "q"]);
    let s = t.wait_for("ctrace to exit", Duration::from_secs(10), |s| {
        s.contains("ctrace exited") && s.contains("icanon")
    });
    assert!(s.contains("ctrace exited 0"), "{s}");
    assert_eq!(
        t.display("#{alternate_on}"),
        "0",
        "alternate screen left\n{s}"
    );
    // raw mode is over: canonical input and echo are back
    let modes = s.lines().find(|l| l.contains("icanon")).unwrap();
    assert!(
        modes.split_whitespace().any(|w| w == "icanon")
            && modes.split_whitespace().any(|w| w == "echo"),
        "terminal left in raw mode: {modes}\n{s}"
    );
    assert!(
        !s.contains("Events, newest first"),
        "TUI left on screen\n{s}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn replay_of_a_missing_file_fails_before_taking_the_terminal() {
    let out = Command::new(BIN)
        .args(["top", "--replay", "/nonexistent/rec.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/rec.jsonl"), "{err}");
    assert!(
        !err.contains("\x1b[?1049h"),
        "alternate screen entered: {err}"
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Live: the lab's node traced by `ctrace top --lab`; the insert failures on
/// screen match the kernel's own counter. Needs root and the lab.
#[test]
fn live_lab_insert_failed_matches_the_kernel() {
    if !is_root() {
        eprintln!("skipped: needs root (tracing and the lab's namespaces)");
        return;
    }
    let help = Command::new(BIN)
        .args(["lab", "snat-race", "--help"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&help.stdout).to_string() + &String::from_utf8_lossy(&help.stderr);
    if !help.status.success() || text.contains("not built") {
        eprintln!("skipped: ctrace lab is not available: {}", text.trim());
        return;
    }
    let Some(t) = top_lab("lab", 120, 40) else {
        return;
    };
    // The lab pauses between rounds; then both counts are still, and the
    // screen must show ctrace's insert_failed equal to the kernel's (polled
    // once a second). A lost or doubled event never equalizes: exact, not a
    // tolerance.
    let s = t.wait_for(
        "ctrace's insert_failed to equal the kernel's on screen",
        Duration::from_secs(90),
        |s| kernel_equals_ctrace(s).is_some(),
    );
    let row = counter_row(&s, "insert_failed").unwrap();
    eprintln!(
        "on screen: ctrace {} = kernel {}",
        row[0],
        row.last().unwrap()
    );
    // the BPF links ctrace holds (its fdinfo), to check after it quits
    let shell: u32 = t.display("#{pane_pid}").parse().unwrap();
    let children =
        std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap_or_default();
    let pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("ctrace runs under the pane's shell");
    let links = common::held_ids(pid, "link_id:");
    assert!(!links.is_empty(), "ctrace {pid} holds no BPF link");
    // pausing freezes the view while counting goes on
    t.cmd(&["send-keys", "-t", "t", "p"]);
    t.wait_for("the paused view", Duration::from_secs(5), |s| {
        s.contains("PAUSED")
    });
    t.cmd(&["send-keys", "-t", "t", "q"]);
    let s = t.wait_for("ctrace to exit", Duration::from_secs(30), |s| {
        s.contains("ctrace exited")
    });
    assert!(s.contains("ctrace exited 0"), "{s}");
    assert_eq!(t.display("#{alternate_on}"), "0");
    // and none of its links is left in the kernel
    let alive: Vec<u64> = common::bpftool_list("link")
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    let left: Vec<&u64> = links.iter().filter(|id| alive.contains(id)).collect();
    assert!(
        left.is_empty(),
        "links left after q: {left:?} (held {links:?})"
    );
}

/// At 80x24, `top --lab`: ctrace's insert_failed equal to the kernel's, a
/// whole translated endpoint, and the legend and the help scrolled to their
/// last lines. Needs root and the lab.
#[test]
fn live_lab_at_80x24_shows_the_counts_a_translation_and_the_help_ends() {
    if !is_root() {
        eprintln!("skipped: needs root (tracing and the lab's namespaces)");
        return;
    }
    let Some(t) = top_lab("lab80", 80, 24) else {
        return;
    };
    // exact, as at 120x40: the lab pauses between rounds and both settle
    let s = t.wait_for(
        "ctrace's insert_failed to equal the kernel's at 80x24",
        Duration::from_secs(90),
        |s| kernel_equals_ctrace(s).is_some(),
    );
    let n = kernel_equals_ctrace(&s).unwrap();
    // the log shows the newest events of the whole node (other engineers'
    // namespaces drop packets too): keep the insert failures, as a user would
    for k in ["/", "insert_failed", "Enter"] {
        t.cmd(&["send-keys", "-t", "t", k]);
    }
    let s = t.wait_for(
        "a whole translated endpoint at 80x24",
        Duration::from_secs(10),
        |s| s.contains("filter: insert_failed") && !whole_translations(s).is_empty(),
    );
    let xl = whole_translations(&s);
    eprintln!("80x24: ctrace {n} = kernel {n}; translated {:?}", xl[0]);
    assert_eq!(s.lines().count(), 24, "{s}");
    assert!(s.contains("hidden at 80x24: Per CPU, Incidents"), "{s}");
    // the legend, then the help: End shows each one's last line
    for (key, end) in [
        ("?", ctrace::tui::ui::LEGEND_END),
        ("h", ctrace::tui::ui::HELP_END),
    ] {
        t.cmd(&["send-keys", "-t", "t", key]);
        let s = t.wait_for("the overlay", Duration::from_secs(5), |s| {
            s.contains("more")
        });
        assert!(!s.contains(end), "{end:?} without scrolling?\n{s}");
        t.cmd(&["send-keys", "-t", "t", "End"]);
        t.wait_for(end, Duration::from_secs(5), |s| s.contains(end));
        t.cmd(&["send-keys", "-t", "t", "Escape"]);
        t.wait_for("the overlay to close", Duration::from_secs(5), |s| {
            !s.contains(end)
        });
    }
    t.cmd(&["send-keys", "-t", "t", "q"]);
    let s = t.wait_for("ctrace to exit", Duration::from_secs(30), |s| {
        s.contains("ctrace exited")
    });
    assert!(s.contains("ctrace exited 0"), "{s}");
}

#[test]
fn a_panic_gives_the_terminal_back() {
    let dir = tmpdir("panic");
    let rec = dir.join("p.jsonl");
    write_recording(
        &rec,
        &[testkit::event(1, Kind::InsertFailed, 1_000_000_000, 0, 80)],
        1,
    );
    let script = format!(
        "CTRACE_TEST_PANIC_AFTER_DRAW=1 {} top --replay {}; echo \"ctrace exited $?\"; stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; echo; sleep 30",
        sh_quote(BIN),
        sh_quote(&rec.display().to_string())
    );
    let Some(t) = Tmux::start("panic", 100, 30, &script) else {
        return;
    };
    let s = t.wait_for("ctrace to panic", Duration::from_secs(15), |s| {
        s.contains("ctrace exited") && s.contains("icanon")
    });
    assert!(s.contains("ctrace exited 101"), "{s}");
    // the panic message is readable on the normal screen
    assert!(s.contains("CTRACE_TEST_PANIC_AFTER_DRAW is set"), "{s}");
    assert_eq!(t.display("#{alternate_on}"), "0", "{s}");
    let modes = s.lines().find(|l| l.contains("icanon")).unwrap();
    assert!(
        modes.split_whitespace().any(|w| w == "icanon")
            && modes.split_whitespace().any(|w| w == "echo"),
        "terminal left in raw mode: {modes}\n{s}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn top_without_a_terminal_says_what_to_use_instead() {
    let out = Command::new(BIN).args(["top"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal"), "{err}");
    assert!(err.contains("ctrace record"), "{err}");
}

fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command name (which may hold spaces): utime is the 12th
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The whole process's CPU at 10,000 events/s in a real terminal (tmux,
/// 120x40): a 20 s recording replayed at recorded speed, measured over 10 s
/// once loaded. Slow, so not run by default:
/// `cargo test --release --test tui_tmux -- --ignored --nocapture`
#[test]
#[ignore]
fn replay_at_10k_events_per_second_costs_under_5_percent_of_a_core() {
    let dir = tmpdir("cpu");
    let rec = dir.join("flood.jsonl");
    let mut events = testkit::mix(200_000, 20);
    for e in &mut events {
        e.ts_ns += 1_000_000_000;
    }
    write_recording(&rec, &events, 0);
    drop(events);
    let pidfile = dir.join("pid");
    let script = format!(
        "echo $$ > {}; exec {} top --replay {}",
        sh_quote(&pidfile.display().to_string()),
        sh_quote(BIN),
        sh_quote(&rec.display().to_string())
    );
    let Some(t) = Tmux::start("cpu", 120, 40, &script) else {
        return;
    };
    t.wait_for("the replay to start", Duration::from_secs(60), |s| {
        s.contains("events  up 00:00:0")
    });
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (a, t0) = (cpu_ticks(&pid).unwrap(), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let (b, t1) = (cpu_ticks(&pid).unwrap(), Instant::now());
    let s = t.capture();
    assert!(s.contains("10000 ev/s"), "not at 10k events/s:\n{s}");
    let share = (b - a) as f64 / hz / (t1 - t0).as_secs_f64();
    eprintln!(
        "ctrace top at 10,000 events/s in tmux 120x40: {:.2}% of one core",
        share * 100.0
    );
    t.cmd(&["send-keys", "-t", "t", "q"]);
    assert!(share < 0.05, "{:.1}% of a core", share * 100.0);
    std::fs::remove_dir_all(&dir).ok();
}

/// Peak RSS of a process (VmHWM), in KiB.
fn vm_hwm_kib(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

/// `top --replay` streams the file with a bounded window read ahead: a
/// 300,000-event recording (~120 MB; holding every event took 1.1 GB for a
/// million, ~330 MB for this one) replays within a fixed memory. It has no trailer: the header
/// says that `lost` is unknown and warns that the file was cut off.
#[test]
fn replay_of_a_large_cut_off_recording_keeps_a_bounded_window_and_warns() {
    let dir = tmpdir("large");
    let rec = dir.join("large.jsonl");
    let n = 300_000u64;
    {
        let header: Header = serde_json::from_value(serde_json::json!({
            "format": 1, "ctrace": "0.1.0", "kernel": "6.1.0-fixture", "hostname": "fixture-node",
            "start_wall": "2026-11-23T10:00:00.000000Z", "start_mono_ns": 1_000_000_000u64,
            "netns": 4026531840u64, "probes": {},
        }))
        .unwrap();
        let _ = std::fs::remove_file(&rec);
        let mut w = Writer::create(&rec).unwrap();
        w.write(&Line::Header(header)).unwrap();
        for i in 0..n {
            let kind = if i % 10 == 0 {
                Kind::InsertFailed
            } else {
                Kind::NatAlloc
            };
            w.event(&testkit::event(i, kind, 1_000_000_000 + i * 1_000, 0, 80))
                .unwrap();
        }
        w.flush().unwrap();
    }
    let pidfile = dir.join("pid");
    let script = format!(
        "echo $$ > {}; exec {} top --replay {} --speed 1000",
        sh_quote(&pidfile.display().to_string()),
        sh_quote(BIN),
        sh_quote(&rec.display().to_string())
    );
    let Some(t) = Tmux::start("large", 160, 40, &script) else {
        return;
    };
    let t0 = Instant::now();
    let mut pid = String::new();
    let mut peak = 0;
    let s = loop {
        if pid.is_empty() {
            pid = std::fs::read_to_string(&pidfile)
                .unwrap_or_default()
                .trim()
                .to_string();
        }
        if !pid.is_empty() {
            peak = peak.max(vm_hwm_kib(&pid).unwrap_or(0));
        }
        let s = t.capture();
        if s.contains("ended: end of recording") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the replay did not end:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    peak = peak.max(vm_hwm_kib(&pid).unwrap_or(0));
    eprintln!(
        "top --replay of {n} events: peak RSS {} MiB, {:.1} s",
        peak / 1024,
        t0.elapsed().as_secs_f64()
    );
    assert!(s.contains(&format!("{n} events")), "{s}");
    assert!(s.contains("lost ?"), "{s}");
    assert!(!s.contains("lost 0"), "{s}");
    assert!(s.contains("WARNING cut off: no trailer"), "{s}");
    assert!(peak > 0 && peak < 128 * 1024, "peak RSS {peak} KiB");
    t.cmd(&["send-keys", "-t", "t", "q"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// The terminal goes away under a live `top --lab` (its tmux server killed,
/// an ssh session dropped): the hang-up ends it, within seconds, with every
/// BPF link released and the lab's namespaces removed, not spinning on a dead
/// terminal forever.
#[test]
fn a_hung_up_terminal_ends_top_and_cleans_up() {
    if !is_root() {
        eprintln!("skipped: needs root (tracing and the lab's namespaces)");
        return;
    }
    let Some(t) = Tmux::start(
        "hup",
        100,
        30,
        &format!("exec {} top --lab snat-race", sh_quote(BIN)),
    ) else {
        return;
    };
    t.wait_for("ctrace top to start", Duration::from_secs(60), |s| {
        s.contains("LAB snat-race")
    });
    let pid: u32 = t.display("#{pane_pid}").parse().unwrap();
    let t0 = Instant::now();
    while common::held_ids(pid, "link_id:").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "ctrace {pid} holds no BPF link"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let links = common::held_ids(pid, "link_id:");
    t.cmd(&["kill-server"]);
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            break; // exited, not reaped yet
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "ctrace top {pid} still runs 20 s after its terminal hung up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "top ended {} ms after the hang-up",
        t0.elapsed().as_millis()
    );
    let alive = common::listed_links();
    let left: Vec<&u64> = links.iter().filter(|id| alive.contains(id)).collect();
    assert!(left.is_empty(), "links left after the hang-up: {left:?}");
    let prefix = format!("ctlab-{pid}-");
    let ns = common::named_netns(|n| n.starts_with(&prefix));
    assert!(
        ns.is_empty(),
        "lab namespaces left after the hang-up: {ns:?}"
    );
}
