//! The resolver over fixture trees laid out as on real nodes
//! (`tests/fixtures/workload/`): a Kubernetes node with containerd and a
//! Docker node.
use super::*;
use crate::event::Tuple;

fn fixture(name: &str) -> Resolver {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/workload")
        .join(name);
    let addrs = root.join("addrs");
    Resolver::with_source(root, Box::new(FileAddrs::new(addrs)))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The fixtures' container ids are sha256 of a name (see the trees).
fn id_of(r: &Resolver, addr: &str) -> String {
    r.lookup(ip(addr)).and_then(|w| w.id).unwrap_or_default()
}

#[test]
fn containerd_pods_are_named_by_namespace_pod_and_container() {
    let mut r = fixture("k8s-containerd");
    let w = r.resolve(ip("10.244.1.5")).unwrap();
    assert_eq!(w.kind, WorkloadKind::Kubernetes);
    assert_eq!(w.namespace.as_deref(), Some("default"));
    assert_eq!(w.name.as_deref(), Some("web-7d4b9c6f5-x2x9q"));
    assert_eq!(w.container.as_deref(), Some("nginx"));
    assert_eq!(w.netns, 4026532301);
    assert_eq!(w.label(), "default/web-7d4b9c6f5-x2x9q/nginx");
    // the app container's id, not the sandbox's
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/workload/k8s-containerd/run/containerd/io.containerd.runtime.v2.task/k8s.io");
    let bundle =
        std::fs::read_to_string(dir.join(w.id.as_ref().unwrap()).join("config.json")).unwrap();
    assert!(bundle.contains("\"io.kubernetes.cri.container-name\": \"nginx\""));
    // the same pod by its link-local IPv6 address; a guaranteed pod's slice
    assert_eq!(r.resolve(ip("fe80::a8c1:abff:fe12:3401")), Some(w));
    let dns = r.resolve(ip("10.244.1.9")).unwrap();
    assert_eq!(
        (
            dns.namespace.as_deref(),
            dns.name.as_deref(),
            dns.container.as_deref()
        ),
        (
            Some("kube-system"),
            Some("coredns-5d78c9869d-8kq2m"),
            Some("coredns")
        )
    );
}

#[test]
fn without_runtime_metadata_kubelet_logs_name_the_pod() {
    // shop/cart has no bundles: its cgroups' pod uid and kubelet's
    // /var/log/pods and /var/log/containers name it; two containers share its
    // address, so none is named
    let mut r = fixture("k8s-containerd");
    let w = r.resolve(ip("10.244.1.17")).unwrap();
    assert_eq!(w.kind, WorkloadKind::Kubernetes);
    assert_eq!(w.namespace.as_deref(), Some("shop"));
    assert_eq!(w.name.as_deref(), Some("cart-6f9b8d7c5-2lmnp"));
    assert_eq!(w.container, None);
    assert_eq!(w.netns, 4026532412);
}

#[test]
fn the_hosts_own_addresses_are_the_host() {
    let mut r = fixture("k8s-containerd");
    for a in ["10.0.0.11", "10.244.1.1", "2001:db8::11"] {
        let w = r.resolve(ip(a)).unwrap();
        assert_eq!(
            (w.kind, w.netns, w.name.clone()),
            (WorkloadKind::Host, 4026531840, None),
            "{a}"
        );
    }
    assert_eq!(
        serde_json::to_string(&r.resolve(ip("10.0.0.11"))).unwrap(),
        r#"{"kind":"host","netns":4026531840}"#
    );
}

#[test]
fn a_named_netns_without_containers_is_named_an_unknown_address_is_none() {
    let mut r = fixture("k8s-containerd");
    let w = r.resolve(ip("192.168.77.2")).unwrap();
    assert_eq!(
        serde_json::to_string(&w).unwrap(),
        r#"{"kind":"netns","name":"lab-a","netns":4026532500}"#
    );
    assert_eq!(r.resolve(ip("203.0.113.9")), None);
    assert_eq!(r.resolve(ip("127.0.0.1")), None);
}

#[test]
fn docker_containers_by_name_in_cgroup_v1_and_v2() {
    let mut r = fixture("docker");
    let web = r.resolve(ip("172.17.0.2")).unwrap();
    assert_eq!(
        serde_json::to_string(&web).unwrap(),
        format!(
            r#"{{"kind":"docker","name":"web","id":"{}","netns":4026532601}}"#,
            id_of(&r, "172.17.0.2")
        )
    );
    // web-sidecar shares web's netns (--network container:web): the netns is web's
    assert_eq!(web.name.as_deref(), Some("web"));
    let db = r.resolve(ip("172.17.0.3")).unwrap();
    assert_eq!(
        (db.kind, db.name.as_deref()),
        (WorkloadKind::Docker, Some("db"))
    );
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/fixtures/workload/docker/var/lib/docker/containers/{}/config.v2.json",
        db.id.as_ref().unwrap()
    ));
    assert!(std::fs::read_to_string(cfg)
        .unwrap()
        .contains(r#""Name": "/db""#));
    // the bridge's gateway is the host's
    assert_eq!(
        r.resolve(ip("172.17.0.1")).unwrap().kind,
        WorkloadKind::Host
    );
}

#[test]
fn dockershim_pods_are_kubernetes_from_dockers_labels() {
    let mut r = fixture("docker");
    let w = r.resolve(ip("172.17.0.4")).unwrap();
    assert_eq!(w.kind, WorkloadKind::Kubernetes);
    assert_eq!(
        (
            w.namespace.as_deref(),
            w.name.as_deref(),
            w.container.as_deref()
        ),
        (Some("prod"), Some("api-5c7f9d-qq7rt"), Some("api"))
    );
}

#[test]
fn a_netns_with_no_container_is_its_inode_alone() {
    let mut r = fixture("docker");
    assert_eq!(
        serde_json::to_string(&r.resolve(ip("10.200.0.2")).unwrap()).unwrap(),
        r#"{"kind":"netns","netns":4026532800}"#
    );
    let blue = r.resolve(ip("10.99.0.2")).unwrap();
    assert_eq!(
        (blue.kind, blue.name.as_deref()),
        (WorkloadKind::Netns, Some("blue"))
    );
}

#[test]
fn misses_rescan_at_most_once_per_interval_and_the_cache_is_bounded() {
    let mut r = fixture("docker");
    r.min_rescan = Duration::from_secs(3600);
    r.capacity = 4;
    assert!(r.resolve(ip("172.17.0.2")).is_some());
    assert_eq!(r.scans, 1);
    for i in 0..50u8 {
        assert_eq!(r.resolve(IpAddr::from([198, 51, 100, i])), None);
    }
    assert_eq!(r.scans, 1, "misses inside min_rescan do not rescan");
    assert!(r.cache.len() <= 4);
    r.min_rescan = Duration::ZERO;
    assert_eq!(r.resolve(ip("198.51.100.200")), None);
    assert_eq!(r.scans, 2);
    assert!(r.cache.len() <= 4);
}

#[test]
fn fill_names_the_original_source_of_the_kinds_that_carry_one() {
    let mut r = fixture("docker");
    let orig = Tuple {
        src: ip("172.17.0.3"),
        sport: 40000,
        dst: ip("192.0.2.1"),
        dport: 443,
    };
    let mut e = Event::new(Kind::InsertFailed, orig);
    r.fill(&mut e);
    assert_eq!(
        e.workload.as_ref().and_then(|w| w.name.as_deref()),
        Some("db")
    );
    let line = serde_json::to_string(&e).unwrap();
    assert!(
        line.contains(r#""workload":{"kind":"docker","name":"db","id":"#),
        "{line}"
    );
    let back: Event = serde_json::from_str(&line).unwrap();
    assert_eq!(back, e);
    let mut e = Event::new(Kind::TcpIgnored, orig);
    r.fill(&mut e);
    assert_eq!(e.workload, None);
    assert!(!serde_json::to_string(&e).unwrap().contains("workload"));
}

#[test]
fn a_real_dockerd_data_root_comes_from_its_command_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/workload/docker");
    let roots = meta::docker_roots(&root, &[1, 1200]);
    assert_eq!(
        roots,
        vec![root.join("var/lib/docker"), root.join("srv/docker")]
    );
}

#[test]
fn netlink_lists_this_namespaces_addresses() {
    let a = dump_addresses().unwrap();
    assert!(a.contains(&ip("127.0.0.1")), "{a:?}");
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    // entering namespaces needs root: then the host's own addresses are the host
    let mut r = Resolver::new("/");
    if let Some(own) = a.iter().find(|x| !x.is_loopback()) {
        let here = crate::netns::current_inode().unwrap();
        let host = host_inode(Path::new("/")).unwrap();
        if here == host {
            // other namespaces on a shared machine may hold the same address
            // (a more specific owner wins then): the host's own is kind host
            let w = r.resolve(*own).unwrap();
            if w.netns == host {
                assert_eq!(w.kind, WorkloadKind::Host);
            } else {
                assert_ne!(w.kind, WorkloadKind::Host, "{w:?}");
            }
        }
    }
}
