//! What a node keeps about its containers, read from a root path: Docker's
//! container store, the CRI runtimes' bundles (OCI `config.json` annotations
//! of containerd and CRI-O) and kubelet's log directories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// What is known of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    /// Docker's name (without its leading '/').
    pub docker_name: Option<String>,
    /// Kubernetes: namespace, pod, container.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub pod_uid: Option<String>,
    /// A pod's sandbox (pause) rather than one of its containers.
    pub sandbox: bool,
}

fn s(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// `config.v2.json` of Docker's store: `.Name`, and the kubelet's labels where
/// dockershim (or cri-dockerd) made the container.
pub fn parse_docker_config(text: &str) -> Option<Container> {
    let v: Value = serde_json::from_str(text).ok()?;
    let labels = &v["Config"]["Labels"];
    let container = s(&labels["io.kubernetes.container.name"]);
    Some(Container {
        docker_name: s(&v["Name"]).map(|n| n.trim_start_matches('/').to_string()),
        namespace: s(&labels["io.kubernetes.pod.namespace"]),
        pod: s(&labels["io.kubernetes.pod.name"]),
        pod_uid: s(&labels["io.kubernetes.pod.uid"]),
        sandbox: labels["io.kubernetes.docker.type"].as_str() == Some("podsandbox")
            || container.as_deref() == Some("POD"),
        container: container.filter(|c| c != "POD"),
    })
}

/// An OCI bundle's `config.json` written by a CRI runtime: containerd's
/// `io.kubernetes.cri.*` or CRI-O's `io.kubernetes.*` annotations.
pub fn parse_oci_config(text: &str) -> Option<Container> {
    let v: Value = serde_json::from_str(text).ok()?;
    let a = &v["annotations"];
    let any = |keys: &[&str]| keys.iter().find_map(|k| s(&a[*k]));
    let c = Container {
        docker_name: None,
        namespace: any(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
        pod: any(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        pod_uid: any(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]),
        sandbox: any(&[
            "io.kubernetes.cri.container-type",
            "io.kubernetes.cri-o.ContainerType",
        ])
        .as_deref()
            == Some("sandbox"),
        container: any(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ])
        .filter(|c| c != "POD"),
    };
    (c.namespace.is_some() || c.pod.is_some()).then_some(c)
}

/// Where the CRI runtimes keep a container's bundle, under `root`.
fn oci_bundles(root: &Path, id: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for base in [
        "run/containerd/io.containerd.runtime.v2.task",
        "run/containerd/io.containerd.runtime.v1.linux",
    ] {
        // one directory per containerd namespace (k8s.io, moby, ...)
        if let Ok(rd) = std::fs::read_dir(root.join(base)) {
            for ns in rd.flatten() {
                v.push(ns.path().join(id).join("config.json"));
            }
        }
    }
    for base in ["run/containers/storage", "var/lib/containers/storage"] {
        v.push(
            root.join(base)
                .join("overlay-containers")
                .join(id)
                .join("userdata/config.json"),
        );
    }
    v
}

/// Kubelet's view of the node, read once per refresh.
#[derive(Debug, Default)]
pub struct Kubelet {
    /// pod uid -> (namespace, pod), from `/var/log/pods/<ns>_<pod>_<uid>`.
    pub pods: HashMap<String, (String, String)>,
    /// container id -> (namespace, pod, container), from the
    /// `/var/log/containers/<pod>_<ns>_<container>-<id>.log` links.
    pub containers: HashMap<String, (String, String, String)>,
    /// pod uid -> its containers' names (the directories under its log dir).
    pub pod_containers: HashMap<String, Vec<String>>,
}

impl Kubelet {
    pub fn read(root: &Path) -> Kubelet {
        let mut k = Kubelet::default();
        if let Ok(rd) = std::fs::read_dir(root.join("var/log/pods")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let parts: Vec<&str> = name.splitn(3, '_').collect();
                if let [ns, pod, uid] = parts[..] {
                    let mut names: Vec<String> = std::fs::read_dir(e.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter(|c| c.path().is_dir())
                        .map(|c| c.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    k.pod_containers.insert(uid.to_string(), names);
                    k.pods
                        .insert(uid.to_string(), (ns.to_string(), pod.to_string()));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(root.join("var/log/containers")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".log") else {
                    continue;
                };
                let Some((rest, id)) = stem.rsplit_once('-') else {
                    continue;
                };
                let parts: Vec<&str> = rest.splitn(3, '_').collect();
                if let [pod, ns, c] = parts[..] {
                    k.containers
                        .insert(id.to_string(), (ns.into(), pod.into(), c.into()));
                }
            }
        }
        k
    }
}

/// Docker's data roots: the default, `/etc/docker/daemon.json`'s
/// `data-root`, and `--data-root`/`-g` of every running dockerd.
pub fn docker_roots(root: &Path, pids: &[u32]) -> Vec<PathBuf> {
    let mut v = vec![root.join("var/lib/docker")];
    let inside = |p: &str| root.join(p.trim_start_matches('/'));
    if let Ok(t) = std::fs::read_to_string(root.join("etc/docker/daemon.json")) {
        if let Some(d) = serde_json::from_str::<Value>(&t)
            .ok()
            .and_then(|j| s(&j["data-root"]))
        {
            v.push(inside(&d));
        }
    }
    for pid in pids {
        let proc_ = root.join("proc").join(pid.to_string());
        let comm = std::fs::read_to_string(proc_.join("comm")).unwrap_or_default();
        if comm.trim() != "dockerd" {
            continue;
        }
        let cmdline = std::fs::read(proc_.join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        for (i, a) in args.iter().enumerate() {
            let d = if let Some(d) = a.strip_prefix("--data-root=") {
                Some(d.to_string())
            } else if a == "--data-root" || a == "-g" || a == "--graph" {
                args.get(i + 1).cloned()
            } else {
                None
            };
            if let Some(d) = d {
                v.push(inside(&d));
            }
        }
    }
    v.dedup();
    v
}

/// Everything known of container `id`: the CRI bundles first (they name pod
/// and container exactly), then Docker's store, then kubelet's log links.
pub fn container(root: &Path, docker_roots: &[PathBuf], k: &Kubelet, id: &str) -> Container {
    let mut c = oci_bundles(root, id)
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| parse_oci_config(&t))
        .unwrap_or_default();
    if let Some(d) = docker_roots
        .iter()
        .find_map(|r| {
            std::fs::read_to_string(r.join("containers").join(id).join("config.v2.json")).ok()
        })
        .and_then(|t| parse_docker_config(&t))
    {
        c.docker_name = d.docker_name;
        c.sandbox |= d.sandbox;
        c.namespace = c.namespace.or(d.namespace);
        c.pod = c.pod.or(d.pod);
        c.pod_uid = c.pod_uid.or(d.pod_uid);
        c.container = c.container.or(d.container);
    }
    if let Some((ns, pod, name)) = k.containers.get(id) {
        c.namespace.get_or_insert_with(|| ns.clone());
        c.pod.get_or_insert_with(|| pod.clone());
        c.container.get_or_insert_with(|| name.clone());
    }
    c
}
