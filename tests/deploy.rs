//! The deployment: the DaemonSet's least privilege (pure, always runs), the
//! manifests against the Kubernetes schemas (`kubernetes-validate` from
//! PyPI, in the venv `.ci/setup` makes), and the FROM-scratch image built
//! and run with Debian's docker.io (needs root; the test starts its own
//! dockerd with its own data root and socket, and stops it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES: &str = "1.35.0";
const VENV: &str = "/opt/ctrace-venv";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn docs() -> Vec<Value> {
    manifests()
        .iter()
        .flat_map(|p| {
            let s = std::fs::read_to_string(p).unwrap();
            serde_yaml::Deserializer::from_str(&s)
                .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn daemonset() -> Value {
    docs()
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/kubernetes")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The capabilities the DaemonSet adds (the docker test runs with the same).
fn added_caps() -> Vec<String> {
    let ds = daemonset();
    strs(&ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"])
}

#[test]
fn the_daemonset_has_least_privilege() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(false), "no hostPID");
    assert_eq!(
        pod["hostNetwork"].as_bool(),
        Some(true),
        "node netns for the hooks"
    );
    assert_ne!(pod["hostIPC"].as_bool(), Some(true));
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    assert!(
        pod["tolerations"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "tolerates every taint"
    );
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9808");
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false), "not privileged");
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strs(&sc["capabilities"]["drop"]), vec!["ALL"]);
    let mut add = added_caps();
    add.sort();
    assert_eq!(add, vec!["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"]);
    // each added capability has its reason written beside it
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for cap in &add {
        let i = lines
            .iter()
            .position(|l| l.trim() == format!("- {cap}"))
            .unwrap_or_else(|| panic!("{cap} not listed one per line"));
        assert!(
            lines[i - 1].trim().starts_with('#'),
            "{cap} has no comment above it"
        );
    }
    // every mount read-only; the host paths the issue names are there
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    for m in mounts {
        assert_eq!(m["readOnly"].as_bool(), Some(true), "{m:?} is writable");
    }
    let paths: Vec<&str> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in ["/sys/kernel/btf", "/sys/fs/cgroup", "/proc"] {
        assert!(paths.contains(&p), "{p} not mounted: {paths:?}");
    }
    // resources: requests and limits for both
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][k][r].as_str().is_some(), "no {k}.{r}");
        }
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
}

#[test]
fn the_manifests_validate_against_kubernetes_schemas() {
    let bin = Path::new(VENV).join("bin/kubernetes-validate");
    if !bin.exists() {
        eprintln!(
            "skipped: {} missing (bash .ci/setup installs kubernetes-validate from PyPI)",
            bin.display()
        );
        return;
    }
    let out = Command::new(&bin)
        .args(["-k", KUBERNETES, "--strict"])
        .args(manifests())
        .output()
        .unwrap();
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{s}");
    assert!(
        out.status.success(),
        "kubernetes-validate {KUBERNETES}: {s}"
    );
    assert_eq!(s.matches("passed").count(), manifests().len(), "{s}");
}

/// A dockerd of the test's own, stopped (and its directories removed) on drop.
struct Dockerd {
    child: Child,
    dir: PathBuf,
    sock: String,
}

impl Dockerd {
    fn start() -> Result<Dockerd, String> {
        let dir = PathBuf::from(format!("/tmp/ctrace-dockerd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = format!("unix://{}/docker.sock", dir.display());
        let child = Command::new("dockerd")
            .arg(format!("--data-root={}/data", dir.display()))
            .arg(format!("--exec-root={}/exec", dir.display()))
            .arg(format!("--pidfile={}/docker.pid", dir.display()))
            .arg(format!("--host={sock}"))
            // leave the host's network alone: no bridge, no iptables rules
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ])
            .args(["--storage-driver=vfs"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .map_err(|e| format!("dockerd: {e}"))?;
        let d = Dockerd { child, dir, sock };
        let t0 = Instant::now();
        while !d.docker(&["info"]).status.success() {
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!("dockerd did not start: {}", d.log()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(d)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn cmd(&self) -> Command {
        // Debian's client, matching its daemon
        let mut c = Command::new("/usr/bin/docker");
        c.args(["-H", &self.sock]);
        c
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        self.cmd().args(args).output().unwrap()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while let Ok(None) = self.child.try_wait() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // what dockerd left mounted under its directories (its netns file)
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

fn get_metrics(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn the_image_builds_from_scratch_and_runs_with_the_daemonsets_capabilities() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root (dockerd and BPF need it)");
        return;
    }
    for t in ["dockerd", "/usr/bin/docker"] {
        if !Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            eprintln!("skipped: no working {t} (bash .ci/setup installs docker.io)");
            return;
        }
    }
    // the static binary (a target dir of its own)
    let t0 = Instant::now();
    let out = Command::new(root().join("deploy/build-static"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/build-static: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = root().join(String::from_utf8_lossy(&out.stdout).trim());
    eprintln!("static build: {:?}", t0.elapsed());
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    let ldd_says = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        ldd_says.contains("not a dynamic executable"),
        "ldd: {ldd_says}"
    );

    let d = match Dockerd::start() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let ctx = d.dir.join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(&bin, ctx.join("ctrace")).unwrap();
    let tag = format!("ctrace-test:{}", std::process::id());
    let b = d
        .cmd()
        .args(["build", "-q", "-t", &tag, "-f"])
        .arg(root().join("deploy/Containerfile"))
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        b.status.success(),
        "docker build: {}{}",
        String::from_utf8_lossy(&b.stdout),
        String::from_utf8_lossy(&b.stderr)
    );
    // Debian 12's docker.io (20.10) predates CAP_BPF and CAP_PERFMON and
    // refuses their names; the kernel grants what they allow to CAP_SYS_ADMIN
    // (bpf_capable, perfmon_capable), which the DaemonSet adds too. A daemon
    // that knows them gets the DaemonSet's list as it is.
    let probe = d.docker(&[
        "run",
        "--rm",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "BPF",
        &tag,
        "--version",
    ]);
    let knows_bpf = !String::from_utf8_lossy(&probe.stderr).contains("unknown capability");
    let mut granted = added_caps();
    if !knows_bpf {
        granted.retain(|c| c != "BPF" && c != "PERFMON");
        eprintln!(
            "note: this dockerd does not know CAP_BPF/CAP_PERFMON: running with {granted:?} (CAP_SYS_ADMIN implies both in the kernel)"
        );
    }
    let mut caps = vec!["--cap-drop".to_string(), "ALL".to_string()];
    for c in granted {
        caps.push("--cap-add".into());
        caps.push(c);
    }
    let run_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "run",
            "--network",
            "host",
            "--read-only",
            "-v",
            "/sys/kernel/btf:/sys/kernel/btf:ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(caps.iter().cloned());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let mut a = run_args(&["--rm", &tag, "probes", "--json"]);
    let o = d.cmd().args(&a).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "docker run probes --json: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("probes --json prints JSON");
    eprintln!(
        "in the image: probes --json: {}",
        &stdout[..stdout.len().min(300)]
    );
    assert!(v.is_object() || v.is_array());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = format!("ctrace-serve-{}", std::process::id());
    let listen = format!("127.0.0.1:{port}");
    a = run_args(&["-d", "--name", &name, &tag, "serve", "--listen", &listen]);
    let o = d.cmd().args(&a).output().unwrap();
    assert!(
        o.status.success(),
        "docker run serve: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t0 = Instant::now();
    let body = loop {
        if let Some(b) = get_metrics(port) {
            break b;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let logs = d.docker(&["logs", &name]);
            let _ = d.docker(&["rm", "-f", &name]);
            panic!(
                "no /metrics from the container: {}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("ctrace_build_info{"), "{body}");
    // docker stop sends SIGTERM: serve detaches and exits 0
    let _ = d.docker(&["stop", "-t", "20", &name]);
    let st = d.docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    let code = String::from_utf8_lossy(&st.stdout).trim().to_string();
    let logs = d.docker(&["logs", &name]);
    let _ = d.docker(&["rm", "-f", &name]);
    let _ = d.docker(&["rmi", "-f", &tag]);
    assert_eq!(
        code,
        "0",
        "serve in the container exited {code}: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
}
