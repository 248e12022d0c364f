//! A real Docker daemon (Debian's docker.io), started by the test with its own
//! data root, exec root, pidfile and socket, its default bridge network
//! racing to a server outside through Docker's own MASQUERADE rule, traced by
//! `ctrace record`: every `insert_failed` (and every `nat_alloc`) must name the
//! container whose address is its original source, with `docker inspect` as
//! the truth (name and id).
//!
//! The daemon runs in a network namespace of the test's own (the "node": it
//! gets dockerd's bridge, MASQUERADE rule, FORWARD policy and ip_forward), so
//! the host's netfilter rules and links are never touched and parallel tests
//! cannot collide with it; the containers, their cgroups and Docker's store
//! are the real thing, read by ctrace from the host's /proc and the daemon's
//! data root. Everything (containers, daemon, namespaces, mounts, the
//! temporary directory) is removed on every exit path, panics included.
//!
//! Needs root, dockerd, docker, gcc (static libc: libc6-dev), tar, nsenter.
//! Skips (with a message) when one is missing.

mod common;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const CONTAINERS: usize = 4;
const ROUNDS: u32 = 20;
const BURST: u32 = 100;
const SPORT0: u32 = 20000;
const DPORT: u16 = 9;

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: dockerd and the tracer need it".into());
    }
    for (tool, arg) in [
        ("dockerd", "--version"),
        ("docker", "--version"),
        ("gcc", "--version"),
        ("tar", "--version"),
        ("nsenter", "--version"),
        ("ip", "-V"),
    ] {
        if !have(tool, arg) {
            return Some(format!(
                "no working '{tool}' (install docker.io: .ci/setup)"
            ));
        }
    }
    None
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn quiet(cmd: &str, args: &[&str]) {
    let _ = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The daemon, its namespaces and its files; Drop takes all of it down.
struct Daemon {
    dir: PathBuf,
    node: String,
    ext: String,
    sock: String,
    dockerd: Option<Child>,
    names: Vec<String>,
}

impl Daemon {
    fn docker(&self, args: &[&str]) -> String {
        let mut a = vec!["-H", &self.sock];
        a.extend_from_slice(args);
        run("docker", &a)
    }

    fn start(tag: &str) -> Daemon {
        let dir = PathBuf::from(format!("/tmp/ctrace-docker-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = Daemon {
            sock: format!("unix://{}/docker.sock", dir.display()),
            node: format!("ctdk{tag}n"),
            ext: format!("ctdk{tag}x"),
            dir,
            dockerd: None,
            names: Vec::new(),
        };
        // node <-> ext over a veth; the node holds Docker's bridge
        let (n, x) = (d.node.clone(), d.ext.clone());
        run("ip", &["netns", "add", &n]);
        run("ip", &["netns", "add", &x]);
        run("ip", &["-n", &n, "link", "set", "lo", "up"]);
        run("ip", &["-n", &x, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "-n", &n, "link", "add", "ext0", "type", "veth", "peer", "name", "up0", "netns", &x,
            ],
        );
        run(
            "ip",
            &["-n", &n, "addr", "add", "10.214.0.1/30", "dev", "ext0"],
        );
        run(
            "ip",
            &["-n", &x, "addr", "add", "10.214.0.2/30", "dev", "up0"],
        );
        run("ip", &["-n", &n, "link", "set", "ext0", "up"]);
        run("ip", &["-n", &x, "link", "set", "up0", "up"]);
        run(
            "ip",
            &["-n", &n, "link", "add", "ctdkbr0", "type", "bridge"],
        );
        run(
            "ip",
            &["-n", &n, "addr", "add", "10.213.7.1/24", "dev", "ctdkbr0"],
        );
        run("ip", &["-n", &n, "link", "set", "ctdkbr0", "up"]);
        let log = std::fs::File::create(d.dir.join("dockerd.log")).unwrap();
        let p = |s: &str| d.dir.join(s).display().to_string();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{n}"))
            .args([
                "dockerd",
                "--data-root",
                &p("data"),
                "--exec-root",
                &p("exec"),
            ])
            .args(["--pidfile", &p("dockerd.pid"), "--host", &d.sock])
            // the default bridge network on our bridge, Docker's own NAT rules
            .args(["--bridge", "ctdkbr0", "--iptables=true", "--ip-masq=true"])
            .args(["--userland-proxy=false", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        d.dockerd = Some(child);
        let t0 = Instant::now();
        loop {
            let ok = Command::new("docker")
                .args(["-H", &d.sock, "version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            if let Some(Ok(Some(st))) = d.dockerd.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited: {st}: {}", d.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "dockerd not ready after 60 s: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// A local image holding the static race client alone (docker import).
    fn build_image(&self) -> String {
        let img = self.dir.join("img");
        std::fs::create_dir_all(&img).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docker/race.c");
        let bin = img.join("race");
        run(
            "gcc",
            &[
                "-static",
                "-O2",
                "-o",
                &bin.display().to_string(),
                &src.display().to_string(),
            ],
        );
        let tar = self.dir.join("img.tar");
        run(
            "tar",
            &[
                "-C",
                &img.display().to_string(),
                "-cf",
                &tar.display().to_string(),
                "race",
            ],
        );
        let tag = "ctrace-race:test";
        self.docker(&["import", &tar.display().to_string(), tag]);
        tag.into()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for n in &self.names {
            quiet("docker", &["-H", &self.sock, "rm", "-f", n]);
        }
        if let Some(mut c) = self.dockerd.take() {
            // nsenter execs dockerd: the child is the daemon itself
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let t0 = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // a daemon killed mid-way leaves its mounts: lazily unmount them
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            quiet("umount", &["-l", m]);
        }
        quiet("ip", &["netns", "del", &self.node]);
        quiet("ip", &["netns", "del", &self.ext]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ctrace record --netns NODE` as a subprocess.
struct Rec {
    child: Child,
    file: PathBuf,
}

impl Rec {
    fn start(node: &str, file: PathBuf) -> Rec {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
            .args(["record", "-q", "--ringbuf-mb", "64", "--netns", node, "-o"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        common::wait_for_header(&mut child, &file);
        Rec { child, file }
    }

    fn stop(mut self) -> Vec<Value> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "ctrace record exited with {st}");
        std::fs::read_to_string(&self.file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Rec {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn docker_containers_racing_through_masquerade_are_named_by_their_events() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let tag = std::process::id().to_string();
    let mut d = Daemon::start(&tag);
    let image = d.build_image();
    let rec = Rec::start(&d.node, d.dir.join("rec.jsonl"));

    // every container starts sending at the same wall-clock instant
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let start_ns = (now + Duration::from_secs(8)).as_nanos().to_string();
    // truth: docker inspect, taken while they run (an exited container has no IP)
    let mut truth: Vec<(String, String, String)> = Vec::new(); // (ip, name, id)
    for i in 0..CONTAINERS {
        let name = format!("ctdk{tag}-c{i}");
        d.names.push(name.clone());
        let args = [
            "10.214.0.2".to_string(),
            DPORT.to_string(),
            SPORT0.to_string(),
            ROUNDS.to_string(),
            BURST.to_string(),
            start_ns.clone(),
            "200".into(),
            "4".into(),
        ];
        let mut a = vec!["run", "-d", "--name", &name, &image, "/race"];
        a.extend(args.iter().map(String::as_str));
        d.docker(&a);
        let j: Value = serde_json::from_str(&d.docker(&["inspect", &name])).unwrap();
        let c = &j[0];
        let ip = c["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
            .as_str()
            .unwrap()
            .to_string();
        let id = c["Id"].as_str().unwrap().to_string();
        let n = c["Name"]
            .as_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string();
        assert!(
            !ip.is_empty(),
            "{name} has no address on the default bridge"
        );
        truth.push((ip, n, id));
    }
    for n in d.names.clone() {
        let code = d.docker(&["wait", &n]);
        assert_eq!(code, "0", "{n} exited {code}: {}", d.docker(&["logs", &n]));
    }
    let sent: Vec<String> = d.names.iter().map(|n| d.docker(&["logs", n])).collect();
    let lines = rec.stop();

    let events: Vec<&Value> = lines.iter().filter(|l| l["type"] == "event").collect();
    let check = |kind: &str| -> Vec<usize> {
        let mut per = vec![0usize; truth.len()];
        for e in events.iter().filter(|e| e["kind"] == kind) {
            let Some(i) = truth
                .iter()
                .position(|(ip, _, _)| e["orig"]["src"] == ip.as_str())
            else {
                continue;
            };
            let (_, name, id) = &truth[i];
            let w = &e["workload"];
            assert_eq!(w["kind"], "docker", "{kind} from {name}: workload {w}");
            assert_eq!(w["name"], name.as_str(), "{kind}: {e}");
            assert_eq!(w["id"], id.as_str(), "{kind}: {e}");
            per[i] += 1;
        }
        per
    };
    let failed = check("insert_failed");
    let allocs = check("nat_alloc");
    let trailer = lines.iter().find(|l| l["type"] == "trailer").unwrap();
    eprintln!(
        "docker: containers {:?}; sent {sent:?}; insert_failed per container {failed:?}; nat_alloc per container {allocs:?}; kernel insert_failed {}",
        truth.iter().map(|(ip, n, _)| format!("{n}={ip}")).collect::<Vec<_>>(),
        trailer["kernel_counters"]["insert_failed"]
    );
    let total = (CONTAINERS as u32 * ROUNDS * BURST) as usize;
    assert!(
        allocs.iter().sum::<usize>() + failed.iter().sum::<usize>() >= total / 2,
        "the NAT of the containers' traffic was not seen"
    );
    if failed.iter().sum::<usize>() == 0 {
        eprintln!(
            "docker: no insert failure this run: the workload was checked on nat_alloc events only"
        );
    }
}
