//! Who a connection belongs to: an address -> the network namespace that owns
//! it -> that namespace's processes' cgroups -> a container -> its name
//! (Docker's store, the CRI runtimes' bundles, kubelet's log directories).
//! Everything is read through a root path, so that tests point the
//! [`Resolver`] at fixture trees captured from real nodes.
//!
//! Cost: the node is scanned (every `/proc/<pid>/ns/net` link, the cgroups of
//! the processes outside the host's namespace, one netlink address dump per
//! namespace) on the first lookup, on a lookup that misses (at most once per
//! [`Resolver::min_rescan`]) and when the scan is older than
//! [`Resolver::refresh_every`]. Between scans a lookup is two hash lookups;
//! results, unknown addresses included, are kept in a cache bounded to
//! [`Resolver::capacity`] entries.

mod addrs;
pub mod cgroup;
pub mod meta;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use addrs::{dump_addresses, AddrSource, FileAddrs, NetlinkAddrs, Netns};

use crate::event::{Event, Kind};

/// What kind of workload owns an address. The names are part of the
/// recording format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// A pod: namespace, pod name (`name`), container.
    Kubernetes,
    /// A Docker container: its name and id.
    Docker,
    /// A network namespace without a container: its `ip netns` name if it
    /// has one, else the inode alone.
    Netns,
    /// The host's own network namespace.
    Host,
}

/// Who suffered an event. Fields that are not known are left out of the JSON
/// (never written as null); `netns` is always there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    /// Kubernetes: the pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Kubernetes: the pod; Docker: the container's name; netns: its name
    /// under /run/netns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kubernetes: the container's name, when the pod has one container
    /// (the pod's containers share the address: with several, none is named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The container's id (Kubernetes: of the named container, else of the
    /// pod's sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The network namespace's inode.
    pub netns: u32,
}

impl Workload {
    fn bare(kind: WorkloadKind, netns: u32) -> Workload {
        Workload {
            kind,
            namespace: None,
            name: None,
            container: None,
            id: None,
            netns,
        }
    }

    /// Which owner wins an address that several namespaces hold: the most
    /// specific (a container, then a named netns, then any, then the host).
    fn rank(&self) -> u8 {
        match self.kind {
            WorkloadKind::Kubernetes | WorkloadKind::Docker => 3,
            WorkloadKind::Netns if self.name.is_some() => 2,
            WorkloadKind::Netns => 1,
            WorkloadKind::Host => 0,
        }
    }

    /// A short label: `ns/pod/container`, a container's or netns's name,
    /// `netns:N`, `host`.
    pub fn label(&self) -> String {
        let name = self.name.clone();
        match self.kind {
            WorkloadKind::Kubernetes => {
                let mut s = format!(
                    "{}/{}",
                    self.namespace.as_deref().unwrap_or("?"),
                    name.as_deref().unwrap_or("?")
                );
                if let Some(c) = &self.container {
                    s = format!("{s}/{c}");
                }
                s
            }
            WorkloadKind::Docker => name
                .or_else(|| self.id.as_ref().map(|i| i.chars().take(12).collect()))
                .unwrap_or_else(|| format!("netns:{}", self.netns)),
            WorkloadKind::Netns => name.unwrap_or_else(|| format!("netns:{}", self.netns)),
            WorkloadKind::Host => "host".into(),
        }
    }
}

/// The event kinds that name a workload, from their original source.
pub const KINDS: [Kind; 7] = [
    Kind::InsertFailed,
    Kind::ClashResolved,
    Kind::TcpInvalid,
    Kind::HostRst,
    Kind::SynRetrans,
    Kind::NfDrop,
    Kind::NatAlloc,
];

/// `net:[4026532201]` -> 4026532201.
fn parse_ns_link(text: &str) -> Option<u32> {
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The inode of a netns file: a real nsfs file's own inode, or (fixture
/// trees) the `net:[N]` text of a symbolic link.
fn ns_inode(path: &Path) -> Option<u32> {
    match std::fs::read_link(path) {
        Ok(t) => parse_ns_link(&t.to_string_lossy()),
        Err(_) => std::fs::metadata(path).ok().map(|m| m.ino() as u32),
    }
}

/// The host's own network namespace: init's (pid 1), or, where init's cannot
/// be read (a sandbox that hides it), kthreadd's (pid 2): kernel threads live
/// in the initial namespace.
pub fn host_inode(root: &Path) -> Option<u32> {
    ["1", "2"]
        .iter()
        .find_map(|p| ns_inode(&root.join("proc").join(p).join("ns/net")))
}

/// One scan of the node.
#[derive(Default)]
struct Scan {
    /// address -> its owner's netns inode.
    owners: HashMap<IpAddr, u32>,
    workloads: HashMap<u32, Workload>,
}

/// Maps an address to the workload that owns it. Not `Sync`: one per consumer
/// thread.
pub struct Resolver {
    root: PathBuf,
    source: Box<dyn AddrSource + Send>,
    scan: Scan,
    scanned: Option<Instant>,
    /// Shared with the events that name it: filling an event is a
    /// reference count, not a copy of its strings.
    cache: HashMap<IpAddr, Option<Arc<Workload>>>,
    /// Rescan when the last scan is older than this (30 s).
    pub refresh_every: Duration,
    /// A miss rescans at most this often (1 s).
    pub min_rescan: Duration,
    /// Cached results, unknown addresses included (4096).
    pub capacity: usize,
    /// Scans made so far.
    pub scans: u64,
}

impl Resolver {
    /// Reads the node under `root` (`/` on a node), addresses over netlink.
    pub fn new(root: impl Into<PathBuf>) -> Resolver {
        Resolver::with_source(root, Box::new(NetlinkAddrs))
    }

    /// Reads the node under `root`, addresses from `source` (a fixture's file).
    pub fn with_source(root: impl Into<PathBuf>, source: Box<dyn AddrSource + Send>) -> Resolver {
        Resolver {
            root: root.into(),
            source,
            scan: Scan::default(),
            scanned: None,
            cache: HashMap::new(),
            refresh_every: Duration::from_secs(30),
            min_rescan: Duration::from_secs(1),
            capacity: 4096,
            scans: 0,
        }
    }

    /// The workload that owns `addr`, if any namespace of the node holds it.
    /// Loopback and unspecified addresses are in every namespace: None.
    pub fn resolve(&mut self, addr: IpAddr) -> Option<Arc<Workload>> {
        if addr.is_loopback() || addr.is_unspecified() {
            return None;
        }
        if self
            .scanned
            .map_or(true, |t| t.elapsed() >= self.refresh_every)
        {
            self.rescan();
        }
        if let Some(r) = self.cache.get(&addr) {
            return r.clone();
        }
        let mut r = self.lookup(addr).map(Arc::new);
        let mut sure = r.is_some();
        if r.is_none()
            && self
                .scanned
                .map_or(true, |t| t.elapsed() >= self.min_rescan)
        {
            self.rescan();
            r = self.lookup(addr).map(Arc::new);
            sure = true;
        }
        // an address missed between rate-limited scans is asked again later
        if sure {
            if self.cache.len() >= self.capacity {
                self.cache.clear();
            }
            self.cache.insert(addr, r.clone());
        }
        r
    }

    /// Sets `e.workload` from its original source, for the kinds that carry one.
    pub fn fill(&mut self, e: &mut Event) {
        if KINDS.contains(&e.kind) {
            e.workload = self.resolve(e.orig.src);
        }
    }

    fn lookup(&self, addr: IpAddr) -> Option<Workload> {
        let ino = self.scan.owners.get(&addr)?;
        self.scan.workloads.get(ino).cloned()
    }

    /// Scans the node again now.
    pub fn rescan(&mut self) {
        self.scan = scan(&self.root, self.source.as_mut());
        self.scanned = Some(Instant::now());
        self.cache.clear();
        self.scans += 1;
    }

    /// Every namespace found by the last scan and its workload.
    pub fn workloads(&self) -> Vec<Workload> {
        let mut v: Vec<Workload> = self.scan.workloads.values().cloned().collect();
        v.sort_by_key(|w| w.netns);
        v
    }
}

fn scan(root: &Path, source: &mut dyn AddrSource) -> Scan {
    let proc_ = root.join("proc");
    let mut pids: Vec<u32> = std::fs::read_dir(&proc_)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let host = host_inode(root);
    // inode -> its processes, lowest pid first
    let mut members: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &pid in &pids {
        if let Some(ino) = ns_inode(&proc_.join(pid.to_string()).join("ns/net")) {
            members.entry(ino).or_default().push(pid);
        }
    }
    let mut named: BTreeMap<u32, (String, PathBuf)> = BTreeMap::new();
    let mut names: Vec<(String, PathBuf)> = std::fs::read_dir(root.join("run/netns"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    names.sort();
    for (name, path) in names {
        if let Some(ino) = ns_inode(&path) {
            named.entry(ino).or_insert((name, path));
        }
    }
    let mut namespaces: Vec<Netns> = named
        .iter()
        .map(|(&inode, (_, path))| Netns {
            inode,
            path: path.clone(),
        })
        .collect();
    for (&inode, p) in &members {
        if !named.contains_key(&inode) {
            namespaces.push(Netns {
                inode,
                path: proc_.join(p[0].to_string()).join("ns/net"),
            });
        }
    }
    let addrs = source.addresses(&namespaces);

    let kubelet = meta::Kubelet::read(root);
    let mut docker_roots: Option<Vec<PathBuf>> = None;
    let mut out = Scan::default();
    for ns in &namespaces {
        let ino = ns.inode;
        let w = if Some(ino) == host {
            Workload::bare(WorkloadKind::Host, ino)
        } else {
            let pids = members.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
            let roots =
                docker_roots.get_or_insert_with(|| meta::docker_roots(root, &pids_all(&members)));
            container_workload(root, roots, &kubelet, ino, pids).unwrap_or_else(|| {
                let mut w = Workload::bare(WorkloadKind::Netns, ino);
                w.name = named.get(&ino).map(|(n, _)| n.clone());
                w
            })
        };
        for a in addrs.get(&ino).into_iter().flatten() {
            if a.is_loopback() || a.is_unspecified() {
                continue;
            }
            let better = match out.owners.get(a).and_then(|o| out.workloads.get(o)) {
                None => true,
                Some(o) => {
                    (w.rank(), std::cmp::Reverse(ino)) > (o.rank(), std::cmp::Reverse(o.netns))
                }
            };
            if better {
                out.owners.insert(*a, ino);
            }
        }
        out.workloads.insert(ino, w);
    }
    out
}

fn pids_all(members: &BTreeMap<u32, Vec<u32>>) -> Vec<u32> {
    members.values().flatten().copied().collect()
}

/// The container (or pod) whose processes hold namespace `ino`.
fn container_workload(
    root: &Path,
    docker_roots: &[PathBuf],
    kubelet: &meta::Kubelet,
    ino: u32,
    pids: &[u32],
) -> Option<Workload> {
    let mut refs: Vec<cgroup::CgroupRef> = Vec::new();
    for pid in pids {
        let p = root.join("proc").join(pid.to_string()).join("cgroup");
        if let Some(r) = std::fs::read_to_string(p)
            .ok()
            .and_then(|t| cgroup::parse(&t))
        {
            if !refs.iter().any(|x| x.id == r.id) {
                refs.push(r);
            }
        }
    }
    if refs.is_empty() {
        return None;
    }
    let found: Vec<(cgroup::CgroupRef, meta::Container)> = refs
        .into_iter()
        .map(|r| {
            let mut c = meta::container(root, docker_roots, kubelet, &r.id);
            if c.pod_uid.is_none() {
                c.pod_uid = r.pod_uid.clone();
            }
            if let Some((ns, pod)) = c.pod_uid.as_ref().and_then(|u| kubelet.pods.get(u)) {
                c.namespace.get_or_insert_with(|| ns.clone());
                c.pod.get_or_insert_with(|| pod.clone());
            }
            (r, c)
        })
        .collect();

    if let Some((_, pod)) = found.iter().find(|(_, c)| c.pod.is_some()) {
        let mut w = Workload::bare(WorkloadKind::Kubernetes, ino);
        w.namespace = pod.namespace.clone();
        w.name = pod.pod.clone();
        let apps: Vec<&(cgroup::CgroupRef, meta::Container)> = found
            .iter()
            .filter(|(_, c)| !c.sandbox && c.container.is_some())
            .collect();
        let mut distinct: Vec<&str> = apps
            .iter()
            .filter_map(|(_, c)| c.container.as_deref())
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() == 1 {
            w.container = Some(distinct[0].to_string());
            w.id = apps.first().map(|(r, _)| r.id.clone());
        } else if distinct.is_empty() {
            // no container of its own known: kubelet's log dir may name it
            let uid = pod.pod_uid.as_ref();
            if let Some([only]) = uid
                .and_then(|u| kubelet.pod_containers.get(u))
                .map(Vec::as_slice)
            {
                w.container = Some(only.clone());
            }
        }
        if w.id.is_none() {
            w.id = found
                .iter()
                .find(|(_, c)| c.sandbox)
                .map(|(r, _)| r.id.clone());
        }
        return Some(w);
    }
    // Docker: the first container (lowest pid) that has a name, else the first
    let (r, c) = found
        .iter()
        .find(|(_, c)| c.docker_name.is_some())
        .or_else(|| {
            found
                .iter()
                .find(|(r, _)| r.runtime == cgroup::Runtime::Docker)
        })?;
    let mut w = Workload::bare(WorkloadKind::Docker, ino);
    w.name = c.docker_name.clone();
    w.id = Some(r.id.clone());
    Some(w)
}
