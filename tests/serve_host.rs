//! `ctrace serve` on the host (needs root: BPF and network namespaces; and
//! Debian's `prometheus` package for promtool and the server, which
//! `.ci/setup` installs). A real Prometheus scrapes `serve --netns <lab
//! node>` every second during the single-port SNAT lab; what it stored must
//! equal the kernel's own insert_failed delta exactly. Also: /readyz is 503
//! before every probe is attached and 200 after, promtool accepts the
//! scraped text, SIGTERM exits 0 and leaves no BPF link, a taken port is a
//! clear error. Tests that need a quiet machine take one lock.

mod common;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctrace::lab::server::Server;
use ctrace::lab::snat::{self, Variant};
use ctrace::lab::topology::Topology;

fn skip_reason(tools: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: BPF and the lab's network namespaces need it".into());
    }
    for t in tools {
        let ok = Command::new(t)
            .arg(if *t == "ip" { "-V" } else { "--version" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("no working '{t}' (bash .ci/setup installs it)"));
        }
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET over plain TCP: (status, body). None: nobody listens (yet).
fn get(port: u16, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((status, body))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A child killed (and waited for) on every exit path.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn serve(args: &[&str], port: u16) -> Guard {
    Guard(
        Command::new(env!("CARGO_BIN_EXE_ctrace"))
            .arg("serve")
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--ringbuf-mb",
                "64",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// Polls /readyz until 200: whether a 503 was seen first, and how long.
fn wait_ready(child: &mut Child, port: u16) -> (bool, Duration) {
    let t0 = Instant::now();
    let mut saw_503 = false;
    loop {
        match get(port, "/readyz", None) {
            Some((200, _)) => return (saw_503, t0.elapsed()),
            Some((503, body)) => {
                assert!(body.starts_with("not ready"), "{body}");
                saw_503 = true;
            }
            Some((s, b)) => panic!("/readyz answered {s}: {b}"),
            None => {}
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("ctrace serve exited early: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not ready after 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigterm_and_wait(child: &mut Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "serve ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident KiB of the BPF map mappings (the ring buffer's pages).
fn ring_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_map = false;
    let mut kib = 0;
    for l in s.lines() {
        if l.split_whitespace().next().is_some_and(|f| {
            f.contains('-') && f.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        }) {
            in_map = l.contains("anon_inode:bpf-map");
        } else if in_map {
            if let Some(v) = l.strip_prefix("Rss:") {
                kib += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    kib
}

/// A Prometheus server of its own: loopback port, data dir, 1 s scrapes.
struct Prometheus {
    child: Guard,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target_port: u16, tag: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("ctrace-prom-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ctrace\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Guard(
            Command::new("prometheus")
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let p = Prometheus { child, port, dir };
        let t0 = Instant::now();
        while get(p.port, "/-/ready", None).map(|r| r.0) != Some(200) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's single value (None: no series yet).
    fn value(&self, q: &str) -> Option<f64> {
        let (st, body) = get(
            self.port,
            &format!("/api/v1/query?query={}", urlencode(q)),
            None,
        )?;
        assert_eq!(st, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{q}: {body}");
        let r = v["data"]["result"].as_array()?.first()?.clone();
        r["value"][1].as_str()?.parse().ok()
    }

    /// Waits for a scrape that started after now: its samples are newer than
    /// everything before this call.
    fn wait_fresh_scrape(&self) {
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = Instant::now();
        loop {
            if self
                .value("timestamp(up{job=\"ctrace\"})")
                .is_some_and(|t| t > t0 + 0.001)
                && self.value("up{job=\"ctrace\"}") == Some(1.0)
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no fresh scrape: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn promtool_check(text: &str, dir: &Path) {
    let f = dir.join("scrape.txt");
    std::fs::write(&f, text).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", f.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "promtool check metrics: ok {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
}

/// The whole story: lab, serve, a real Prometheus, the kernel's delta.
#[test]
fn prometheus_scrapes_exactly_the_kernels_insert_failures() {
    if let Some(why) = skip_reason(&["ip", "iptables", "bpftool", "prometheus", "promtool"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let _g = common::serial();
    let t = Topology::create("sv-snat", snat::CLIENTS).unwrap();
    let _srv = Server::start(&t.names.server, snat::server_ports()).unwrap();
    Variant::Deterministic.install(&t).unwrap();
    let mut ct = t.node_ctnetlink().unwrap();
    let port = free_port();
    let mut sv = serve(&["--netns", &t.names.node, "--workload-labels"], port);
    let (saw_503, took) = wait_ready(&mut sv.0, port);
    eprintln!("/readyz: 503 seen first: {saw_503}, 200 after {took:?}");
    assert!(
        saw_503,
        "/readyz never answered 503 before the probes were attached"
    );
    let links = common::held_ids(sv.0.id(), "link_id:");
    assert!(links.len() >= 4, "serve holds {} BPF links", links.len());
    assert_eq!(get(port, "/healthz", None).map(|r| r.0), Some(200));
    assert_eq!(get(port, "/nope", None).map(|r| r.0), Some(404));

    let prom = Prometheus::start(port, "snat");
    prom.wait_fresh_scrape();
    let kernel_before_prom = prom
        .value("sum(ctrace_kernel_conntrack_insert_failed_total)")
        .expect("prometheus has the kernel counter");
    let before = ct.per_cpu().unwrap();
    let mut rounds = Vec::new();
    for r in 0..2 {
        rounds.push(snat::run_round(&t, Variant::Deterministic, r).unwrap());
    }
    let after = ct.per_cpu().unwrap();
    let delta = after.delta(&before).total().insert_failed;
    // serve reads the kernel every 250 ms, Prometheus scrapes every second,
    // and an event is counted when the correlator releases it (200 ms of
    // event time after it, once the reader has caught up): scrapes until
    // the count reaches the kernel's, 10 s at most (a loaded CI machine
    // once scraped 38 of 42 a second after the traffic). A count that
    // stays short is a loss; how long it took is printed.
    std::thread::sleep(Duration::from_millis(300));
    let t_wait = Instant::now();
    let events = loop {
        prom.wait_fresh_scrape();
        let events = prom
            .value("sum(ctrace_insert_failures_total)")
            .unwrap_or(0.0);
        if events >= delta as f64 || t_wait.elapsed() > Duration::from_secs(10) {
            break events;
        }
    };
    eprintln!("counted after {:?} of scrapes", t_wait.elapsed());
    let kernel_after_prom = prom
        .value("sum(ctrace_kernel_conntrack_insert_failed_total)")
        .unwrap();
    let lost = prom.value("sum(ctrace_events_lost_total)").unwrap_or(-1.0);
    let workloads = prom
        .value("count(ctrace_insert_failures_total)")
        .unwrap_or(0.0);
    eprintln!(
        "kernel insert_failed delta {delta}; prometheus: sum(ctrace_insert_failures_total) {events}, \
         sum(ctrace_kernel_conntrack_insert_failed_total) {kernel_before_prom} -> {kernel_after_prom}, lost {lost}, insert-failure series {workloads}"
    );
    assert!(delta > 0, "single-port SNAT must lose inserts");
    assert_eq!(lost, 0.0, "events lost: exact agreement cannot be checked");
    assert_eq!(events, delta as f64, "events vs the kernel's delta");
    assert_eq!(
        kernel_after_prom - kernel_before_prom,
        delta as f64,
        "kernel counter increase"
    );

    // promtool on both formats' source: the text format is what it reads
    let (st, text) = get(port, "/metrics", None).unwrap();
    assert_eq!(st, 200);
    promtool_check(&text, &prom.dir);
    let (_, om) = get(
        port,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .unwrap();
    assert!(om.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(om.contains("# TYPE ctrace_insert_failures counter\n"));
    assert!(text.contains("ctrace_probe_info{probe=\"confirm\",mode=\""));

    // the ring buffer (--ringbuf-mb 64 here, mapped twice by the kernel) is
    // sized by the user: the budget is for what ctrace itself holds
    let hwm = vm_hwm_kib(sv.0.id());
    let ring = ring_rss_kib(sv.0.id());
    let own = hwm.saturating_sub(ring);
    eprintln!(
        "serve VmHWM {:.1} MiB, of which the BPF ring mapping {:.1} MiB: {:.1} MiB outside it",
        hwm as f64 / 1024.0,
        ring as f64 / 1024.0,
        own as f64 / 1024.0
    );
    assert!(
        hwm > 0 && own < 64 * 1024,
        "serve's RSS {own} KiB (outside the ring) over the 64 MiB budget"
    );

    let st = sigterm_and_wait(&mut sv.0);
    assert!(st.success(), "serve exited with {st} on SIGTERM");
    let listed: std::collections::BTreeSet<u64> = common::bpftool_list("link")
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    let left: Vec<_> = listed.intersection(&links).collect();
    assert!(
        left.is_empty(),
        "BPF links left after SIGTERM (bpftool): {left:?}"
    );
}

/// A taken port is refused at once, before anything attaches, with the fix.
#[test]
fn a_taken_port_is_a_clear_error() {
    if let Some(why) = skip_reason(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_ctrace"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("port is taken") && err.contains("--listen"),
        "{err}"
    );
}

/// Every ending signal detaches and exits 0 (the driver's), with --record:
/// the rotating file gets its trailer.
#[test]
fn serve_ends_cleanly_on_every_ending_signal() {
    use nix::sys::signal::Signal;
    if let Some(why) = skip_reason(&["bpftool"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let _g = common::serial();
    let dir = std::env::temp_dir().join(format!("ctrace-serve-sig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT] {
        let port = free_port();
        let d = dir.join(sig.as_str());
        let mut sv = serve(&["--record", d.to_str().unwrap()], port);
        wait_ready(&mut sv.0, port);
        let links = common::held_ids(sv.0.id(), "link_id:");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(sv.0.id() as i32), sig).unwrap();
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = sv.0.try_wait().unwrap() {
                break st;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{sig} ignored");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(st.success(), "{sig}: exit {st}");
        let listed: std::collections::BTreeSet<u64> = common::bpftool_list("link")
            .iter()
            .filter_map(|l| l["id"].as_u64())
            .collect();
        assert!(listed.is_disjoint(&links), "{sig}: BPF links left");
        let files: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&files[0]).unwrap().mode() & 0o777, 0o600);
        let rec = ctrace::record::read(&files[0]).unwrap();
        let t = rec.trailer.expect("trailer written on the signal");
        assert_eq!(t.signal.as_deref(), Some(sig.as_str()));
    }
    std::fs::remove_dir_all(&dir).ok();
}
