//! Agreement tests on the host (need root and iproute2/iptables): the lab's
//! namespaces reproduce both failures, the real `ctrace record` traces the
//! node, and what it recorded must equal the kernel's own counters exactly —
//! not just be non-empty.
//!
//! Each test builds its own topology with a unique prefix (test name + pid),
//! so test binaries running side by side never collide. Inside this binary the
//! tests take a lock: they are timing-sensitive and the link test compares
//! the whole host's BPF links before and after.

mod common;
use common::kernel_at_least;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctrace::ctstat::CpuStats;
use ctrace::event::{Event, Kind};
use ctrace::lab::invalid::{self, Config, Fate, Forged};
use ctrace::lab::server::Server;
use ctrace::lab::snat::{self, Variant};
use ctrace::lab::topology::Topology;
use ctrace::lab::udp;
use ctrace::record::Recording;
use serde_json::Value;

/// Symptom probes see every netns of the host: on a shared host another
/// workload's drops (tens of thousands per second, measured here) can fill the
/// default 4 MiB ring buffer and lose records, which would make exact counts
/// unverifiable. A bigger buffer keeps the lab's records.
const RINGBUF_MB: &str = "64";

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: the lab creates network namespaces".into());
    }
    for tool in ["ip", "iptables", "bpftool"] {
        let ok = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("no working '{tool}' binary"));
        }
    }
    None
}

macro_rules! require_host {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn netns_inode(name: &str) -> u32 {
    std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap()
        .ino() as u32
}

/// `ctrace record --netns NODE` as a subprocess.
struct Rec {
    child: Child,
    file: PathBuf,
    dir: PathBuf,
}

impl Rec {
    fn start(node: &str, tag: &str) -> Rec {
        Rec::start_with(node, tag, &[])
    }

    fn start_with(node: &str, tag: &str, extra: &[&str]) -> Rec {
        Rec::start_env(node, tag, extra, &[])
    }

    fn start_env(node: &str, tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Rec {
        let dir = std::env::temp_dir().join(format!("ctrace-lab-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rec.jsonl");
        let _ = std::fs::remove_file(&file);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
            .args(["record", "-q", "--netns", node])
            // a test's own ring size, or the default of these tests
            .args(
                (!extra.contains(&"--ringbuf-mb"))
                    .then_some(["--ringbuf-mb", RINGBUF_MB])
                    .iter()
                    .flatten(),
            )
            .args(extra)
            .arg("-o")
            .arg(&file)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // attached once the header line is in the file
        common::wait_for_header(&mut child, &file);
        Rec { child, file, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait, read the recording.
    fn stop(self) -> Recording {
        self.stop_all().0
    }

    /// The same, with the recording's incident lines.
    fn stop_all(mut self) -> (Recording, Vec<Value>) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "record ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(st.success(), "ctrace record exited with {st}");
        let rec = ctrace::record::read(&self.file).unwrap();
        let incidents = incident_lines(&self.file);
        if std::env::var_os("CTRACE_TEST_KEEP").is_none() {
            std::fs::remove_dir_all(&self.dir).ok();
        } else {
            let kept = self.dir.with_extension(format!("{}", self.child.id()));
            let _ = std::fs::rename(&self.dir, &kept);
            eprintln!("kept {}", kept.display());
        }
        (rec, incidents)
    }
}

impl Drop for Rec {
    fn drop(&mut self) {
        // a failed assertion must not leave a recorder attached
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `{"type":"incident"}` lines of a recording.
fn incident_lines(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""type":"incident""#))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Incidents of a kind and outcome.
fn incidents_of(inc: &[Value], kind: &str, outcome: &str) -> Vec<Value> {
    inc.iter()
        .filter(|i| i["kind"] == kind && i["outcome"] == outcome)
        .cloned()
        .collect()
}

fn count(rec: &Recording, kind: Kind, netns: u32) -> u64 {
    rec.events
        .iter()
        .filter(|e| e.kind == kind && e.netns == netns)
        .count() as u64
}

fn of_kind(rec: &Recording, kind: Kind, netns: u32) -> Vec<&Event> {
    rec.events
        .iter()
        .filter(|e| e.kind == kind && e.netns == netns)
        .collect()
}

/// Counters over the recording and over our own before/after window.
fn kernel(rec: &Recording) -> ctrace::record::KernelCounters {
    let t = rec.trailer.as_ref().expect("recording has a trailer");
    assert_eq!(
        t.lost, 0,
        "records lost: exact agreement cannot be checked (a host-wide flood of symptom events from another netns?) {:?}",
        t.events
    );
    assert!(
        t.missed.is_empty(),
        "the kernel skipped runs of ctrace's programs (nested in themselves): exact agreement cannot be checked: {:?} (events {:?})",
        t.missed,
        t.events
    );
    t.kernel_counters
        .clone()
        .expect("trailer has kernel_counters")
}

struct SnatRun {
    insert_failed: u64,
    nat_alloc: u64,
}

/// One run of a snat-race variant, recorded, with every agreement asserted.
fn snat_run(tag: &str, v: Variant, rounds: u32) -> SnatRun {
    snat_run_with(tag, v, rounds, false)
}

/// [`snat_run`] over IPv4 or IPv6; over IPv6 every insert failure must say so.
fn snat_run_with(tag: &str, v: Variant, rounds: u32, ipv6: bool) -> SnatRun {
    let t = Topology::create_with(tag, snat::CLIENTS, ipv6).unwrap();
    let _srv = Server::start_at(&t.names.server, t.server_addr(), snat::server_ports()).unwrap();
    v.install(&t).unwrap();
    let mut ct = t.node_ctnetlink().unwrap();
    let (entries0, _) = ct.table_fill().unwrap();
    assert_eq!(entries0, 0, "a fresh node starts with an empty table");
    let rec = Rec::start(&t.names.node, tag);
    let before = ct.per_cpu().unwrap();
    let mut rs = Vec::new();
    for r in 0..rounds {
        rs.push(snat::run_round(&t, v, r).unwrap());
    }
    let after = ct.per_cpu().unwrap();
    let (entries, _) = ct.table_fill().unwrap();
    let table = conntrack_table(&t.names.node);
    let (rec, inc) = rec.stop_all();
    let own_per_cpu = after.delta(&before);
    let own: CpuStats = own_per_cpu.total();
    let k = kernel(&rec);
    let node = t.node_inode;
    let pods = netns_inode(&t.names.pods);
    assert_eq!(rec.header.as_ref().unwrap().netns, node);

    let inserted_failed = of_kind(&rec, Kind::InsertFailed, node);
    let nat_alloc = count(&rec, Kind::NatAlloc, node);
    let connected: u64 = rs.iter().map(|r| r.connected() as u64).sum();
    let failed: u64 = rs
        .iter()
        .map(|r| (r.clients.len() - r.connected()) as u64)
        .sum();
    eprintln!(
        "{tag}: kernel insert_failed {} (own read {}), drop {}, events insert_failed {}, nat_alloc {}, table entries {entries}, clients connected {connected} failed {failed}",
        k.insert_failed,
        own.insert_failed,
        k.drop,
        inserted_failed.len(),
        nat_alloc
    );
    // every insert failure, one event each: the trailer's delta (ctrace's own
    // ctnetlink read over its run) and ours (around the traffic) agree
    if inserted_failed.len() as u64 != k.insert_failed {
        // what tells the causes of a shortfall apart: whether the drops were
        // seen (nf_drop), and on which CPUs the kernel and ctrace counted
        let per_cpu = |cpu: u32| inserted_failed.iter().filter(|e| e.cpu == cpu).count();
        let cpus: Vec<String> = own_per_cpu
            .per_cpu
            .iter()
            .map(|c| {
                format!(
                    "cpu{} kernel {} events {}",
                    c.cpu,
                    c.insert_failed,
                    per_cpu(c.cpu)
                )
            })
            .collect();
        eprintln!(
            "{tag}: SHORT in netns {node}: nf_drop events {} (kernel drop {}); {}; incidents {:?}",
            count(&rec, Kind::NfDrop, node),
            k.drop,
            cpus.join(", "),
            incidents_of(&inc, "snat_race", "recovered").len()
        );
    }
    assert_eq!(inserted_failed.len() as u64, k.insert_failed);
    assert_eq!(k.insert_failed, own.insert_failed);
    assert_eq!(k.drop, own.drop);
    // TCP never resolves a clash: each failure is a dropped SYN
    assert_eq!(count(&rec, Kind::NfDrop, node), k.drop);
    if v == Variant::Deterministic {
        assert!(k.insert_failed > 0, "SNAT to one port must lose inserts");
        for e in &inserted_failed {
            assert_eq!(e.port, Some(snat::SNAT_PORT), "insert_failed port: {e:?}");
        }
    }
    let family = if ipv6 { "ipv6" } else { "ipv4" };
    for e in &inserted_failed {
        let j = serde_json::to_value(e).unwrap();
        assert_eq!(j["family"], family, "insert_failed family: {j}");
    }
    // nat_alloc: the stable hook sees every NATed, unconfirmed entry just
    // before confirm, i.e. every SYN that created an entry: the first SYN of
    // each connection and each retransmit of a loser (its entry was never
    // confirmed, so the retransmit creates a new one). Each such entry is then
    // either confirmed — and still in the table at the end: this node is
    // fresh, nothing else runs through it, and closed entries sit in
    // TIME_WAIT for 120 s — or fails its insert. So, exactly:
    //   nat_alloc == table entries at the end + insert_failed,
    // and the table entries are the connections the clients saw succeed.
    assert_eq!(entries, connected, "table entries vs connected clients");
    assert_eq!(nat_alloc, entries + k.insert_failed);
    // the SYN retransmits, seen in the pods netns: a client whose connect
    // took s SYNs lost s-1 of them if it connected, all s if it gave up, and
    // retransmitted s-1 times either way: retransmits == insert_failed - failed.
    assert_eq!(
        count(&rec, Kind::SynRetrans, pods),
        k.insert_failed - failed,
        "syn_retrans in the pods netns"
    );
    // the winner each loser names is the connection that holds its reply
    // tuple in the table (conntrack -L, right after the rounds), exactly
    let mut named = 0;
    for e in &inserted_failed {
        let w = e
            .winner
            .known()
            .unwrap_or_else(|| panic!("no winner named: {e:?} ({:?})", e.winner_unknown));
        let holder = table
            .get(&e.reply.unwrap())
            .unwrap_or_else(|| panic!("no entry holds {:?} in the table: {e:?}", e.reply));
        assert_eq!(&w.orig, holder, "winner of {e:?}");
        named += 1;
    }
    // every failure is in exactly one snat_race incident
    let in_incidents: u64 = inc
        .iter()
        .filter(|i| i["kind"] == "snat_race")
        .map(|i| i["events"]["insert_failed"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "{tag}: winners named {named} (each = the table's holder), snat_race incidents {}, their insert_failed {in_incidents}",
        inc.iter().filter(|i| i["kind"] == "snat_race").count()
    );
    assert_eq!(in_incidents, k.insert_failed);
    SnatRun {
        insert_failed: k.insert_failed,
        nat_alloc,
    }
}

/// The node's conntrack table (`conntrack -L`): reply tuple -> original tuple.
fn conntrack_table(
    node: &str,
) -> std::collections::HashMap<ctrace::event::Tuple, ctrace::event::Tuple> {
    let out = Command::new("ip")
        .args(["netns", "exec", node, "conntrack", "-L"])
        .stderr(Stdio::null())
        .output()
        .expect("conntrack -L");
    let mut m = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let kv = |key: &str| -> Vec<&str> {
            line.split_whitespace()
                .filter_map(|w| w.strip_prefix(key))
                .collect()
        };
        let (src, dst, sport, dport) = (kv("src="), kv("dst="), kv("sport="), kv("dport="));
        if src.len() < 2 || dst.len() < 2 || sport.len() < 2 || dport.len() < 2 {
            continue;
        }
        let t = |i: usize| ctrace::event::Tuple {
            src: src[i].parse().unwrap(),
            sport: sport[i].parse().unwrap(),
            dst: dst[i].parse().unwrap(),
            dport: dport[i].parse().unwrap(),
        };
        m.insert(t(1), t(0));
    }
    m
}

/// `--symptoms-here`: the pods' SYN retransmits (their own netns) are not
/// reported, every event is the node's, and the node's drops still equal the
/// kernel's `drop`.
#[test]
fn symptoms_here_reports_only_the_traced_netns() {
    require_host!();
    let _g = common::serial();
    let tag = "lt-symhere";
    let t = Topology::create(tag, snat::CLIENTS).unwrap();
    let _srv = Server::start(&t.names.server, snat::server_ports()).unwrap();
    Variant::Deterministic.install(&t).unwrap();
    let rec = Rec::start_with(&t.names.node, tag, &["--symptoms-here"]);
    let r = snat::run_round(&t, Variant::Deterministic, 0).unwrap();
    let rec = rec.stop();
    let k = kernel(&rec);
    let node = t.node_inode;
    assert!(k.insert_failed > 0, "SNAT to one port must lose inserts");
    assert!(
        r.connected() < r.clients.len(),
        "some clients must have retransmitted"
    );
    let foreign: Vec<&Event> = rec.events.iter().filter(|e| e.netns != node).collect();
    assert!(foreign.is_empty(), "events from other netns: {foreign:?}");
    assert_eq!(
        count(&rec, Kind::SynRetrans, node),
        0,
        "pods retransmit in their own netns"
    );
    assert_eq!(count(&rec, Kind::NfDrop, node), k.drop);
    assert_eq!(count(&rec, Kind::InsertFailed, node), k.insert_failed);
}

#[test]
fn snat_race_single_port_events_equal_kernel_counters_3_runs() {
    require_host!();
    let _g = common::serial();
    let mut seen = Vec::new();
    for run in 0..3 {
        let r = snat_run(&format!("lt-snat{run}"), Variant::Deterministic, 1);
        seen.push((r.insert_failed, r.nat_alloc));
    }
    eprintln!("snat runs (insert_failed, nat_alloc): {seen:?}");
}

#[test]
fn masquerade_race_events_equal_kernel_counters() {
    require_host!();
    let _g = common::serial();
    // probabilistic: the failures may be 0, the agreement must be exact
    snat_run("lt-masq", Variant::Realistic, 8);
}

/// IPv6 single-port SNAT (ip6tables): one insert_failed event per kernel
/// insert failure, each with `"family":"ipv6"`.
#[test]
fn snat_race_ipv6_events_equal_kernel_counters() {
    require_host!();
    let _g = common::serial();
    let r = snat_run_with("lt-snat6", Variant::Deterministic, 1, true);
    eprintln!(
        "snat ipv6: insert_failed {}, nat_alloc {}",
        r.insert_failed, r.nat_alloc
    );
}

/// A udp-race lab, set up, with its server and a recorder on its node.
struct UdpLab {
    t: Topology,
    _srv: udp::UdpServer,
    ct: ctrace::ctstat::CtNetlink,
}

fn udp_lab(tag: &str) -> UdpLab {
    let t = Topology::create(tag, udp::CLIENTS).unwrap();
    udp::setup(&t).unwrap();
    let srv = udp::UdpServer::start(&t.names.server, udp::server_addrs(&t)).unwrap();
    let ct = t.node_ctnetlink().unwrap();
    UdpLab { t, _srv: srv, ct }
}

/// udp-race, dropped: same-port datagrams from several pods through
/// MASQUERADE. Each lost insert is one insert_failed event and one nf_drop,
/// exactly the kernel's insert_failed and drop; each is a datagram that got
/// no answer.
#[test]
fn udp_race_dropped_events_equal_kernel_counters() {
    require_host!();
    let _g = common::serial();
    let tag = "lt-udpdrop";
    let mut l = udp_lab(tag);
    udp::prepare(&l.t, udp::PhaseKind::Dropped).unwrap();
    let rec = Rec::start(&l.t.names.node, tag);
    let before = l.ct.per_cpu().unwrap();
    let (mut sent, mut answered) = (0, 0);
    for r in 0..4 {
        let x = udp::dropped_round(&l.t, r).unwrap();
        sent += x.sent;
        answered += x.answered;
    }
    std::thread::sleep(Duration::from_millis(200));
    let own = l.ct.per_cpu().unwrap().delta(&before).total();
    let (rec, inc) = rec.stop_all();
    let k = kernel(&rec);
    let node = l.t.node_inode;
    let failed = count(&rec, Kind::InsertFailed, node);
    let drops = count(&rec, Kind::NfDrop, node);
    // one incident per lost datagram, each with its drop
    let lost = incidents_of(&inc, "snat_race", "lost");
    eprintln!(
        "udp dropped: incidents lost {} (of {} incidents)",
        lost.len(),
        inc.len()
    );
    assert_eq!(
        lost.len() as u64,
        k.insert_failed,
        "lost incidents vs insert_failed"
    );
    assert!(
        lost.iter().all(|i| i["events"]["nf_drop"] == 1),
        "each lost datagram's drop"
    );
    eprintln!(
        "udp dropped: kernel insert_failed {} drop {} (own read {} / {}), events insert_failed {failed} nf_drop {drops}; datagrams sent {sent} answered {answered}",
        k.insert_failed, k.drop, own.insert_failed, own.drop
    );
    assert!(
        k.insert_failed > 0,
        "the same-port race lost no datagram in {sent}"
    );
    assert_eq!(k.insert_failed, own.insert_failed);
    assert_eq!(k.drop, own.drop);
    assert_eq!(failed, k.insert_failed);
    assert_eq!(drops, k.drop);
    // different origins are never merged: every clash is a lost datagram
    assert_eq!(k.clash_resolve, 0);
    assert_eq!(sent - answered, k.drop, "unanswered datagrams vs drop");
}

/// udp-race, resolved: one socket's A/AAAA pair through a service DNAT. The
/// kernel merges the clashes (clash_resolve > 0) and loses nothing. ctrace's
/// reporting of resolved clashes is the engine's part; this prints what it
/// will use: original tuples NATed twice in `nat_alloc`.
#[test]
fn udp_race_resolved_kernel_merges_and_loses_nothing() {
    require_host!();
    let _g = common::serial();
    let tag = "lt-udpres";
    let mut l = udp_lab(tag);
    udp::prepare(&l.t, udp::PhaseKind::Resolved).unwrap();
    let rec = Rec::start(&l.t.names.node, tag);
    let before = l.ct.per_cpu().unwrap();
    let (mut sent, mut answered) = (0, 0);
    for r in 0..3 {
        let x = udp::resolved_round(&l.t, r).unwrap();
        sent += x.sent;
        answered += x.answered;
    }
    std::thread::sleep(Duration::from_millis(200));
    let own = l.ct.per_cpu().unwrap().delta(&before).total();
    let (rec, inc) = rec.stop_all();
    let k = kernel(&rec);
    let node = l.t.node_inode;
    // stable mode has no hook on the clash: the correlation names it from the
    // two allocations of one tuple, one event and one merged incident each
    let merged = incidents_of(&inc, "udp_clash", "merged");
    let clash_events = count(&rec, Kind::ClashResolved, node);
    eprintln!(
        "udp resolved: clash_resolved events {clash_events}, merged incidents {}",
        merged.len()
    );
    assert_eq!(
        clash_events, k.clash_resolve,
        "clash_resolved events vs kernel"
    );
    assert_eq!(
        merged.len() as u64,
        k.clash_resolve,
        "merged incidents vs kernel"
    );
    for i in &merged {
        // both translations named
        assert!(
            i["winner"]["reply"].is_object() && i["translated"].is_object(),
            "{i}"
        );
    }
    let mut by_orig: std::collections::HashMap<_, u64> = Default::default();
    for e in of_kind(&rec, Kind::NatAlloc, node) {
        *by_orig.entry(e.orig).or_default() += 1;
    }
    let twice = by_orig.values().filter(|&&n| n >= 2).count();
    let twice_events: u64 = by_orig.values().filter(|&&n| n >= 2).sum();
    eprintln!(
        "udp resolved: kernel clash_resolve {} (own read {}), insert_failed {}; nat_alloc {} events, original tuples NATed twice {twice} ({twice_events} events); datagrams sent {sent} answered {answered}",
        k.clash_resolve,
        own.clash_resolve,
        k.insert_failed,
        count(&rec, Kind::NatAlloc, node)
    );
    assert!(
        own.clash_resolve > 0,
        "no A/AAAA pair clashed in {sent} datagrams"
    );
    assert_eq!(k.clash_resolve, own.clash_resolve);
    assert_eq!(own.insert_failed, 0);
    assert_eq!(own.drop, 0);
    assert_eq!(answered, sent, "a merged clash loses nothing");
}

/// Packets of a confirmed flow that a rule drops are `nf_drop`s, never insert
/// failures. The stable confirm probe remembers each flow's first datagram;
/// the server's socket frees it, and the flow's second datagram (same conntrack
/// entry, by then confirmed) is allocated from the slab of the one CPU that
/// everything here is pinned to, often at the same address, then dies in the
/// node's FORWARD DROP rule: same skb, same entry, NETFILTER_DROP. Only an
/// entry that was never inserted may count as a lost confirm. Kernel truth:
/// the rule's own packet counter and conntrack's insert_failed.
#[test]
fn rule_drops_of_confirmed_flows_are_not_insert_failures() {
    use ctrace::lab::topology::{client_ip, cmd_in, join, spawn_in, SERVER_IP};
    use std::net::{SocketAddrV4, UdpSocket};
    require_host!();
    let _g = common::serial();
    const PORT: u16 = 9100;
    const FLOWS: u64 = 100;
    let t = Topology::create("lt-ruledrop", 1).unwrap();
    Variant::Deterministic.install(&t).unwrap();
    // the second datagram of each flow: 20 (IP) + 8 (UDP) + 7 bytes
    let port = PORT.to_string();
    cmd_in(
        &t.names.node,
        "iptables",
        &[
            "-I", "FORWARD", "-p", "udp", "--dport", &port, "-m", "length", "--length", "35", "-j",
            "DROP",
        ],
    )
    .unwrap();
    let pin = || {
        let mut set = nix::sched::CpuSet::new();
        set.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    };
    let srv = spawn_in(&t.names.server, move || {
        pin();
        let s = UdpSocket::bind(SocketAddrV4::new(SERVER_IP, PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 64];
        let mut got = 0u64;
        while got < FLOWS {
            s.recv(&mut buf)?;
            got += 1;
        }
        Ok(got)
    });
    std::thread::sleep(Duration::from_millis(200));
    let rec = Rec::start(&t.names.node, "lt-ruledrop");
    let mut ct = t.node_ctnetlink().unwrap();
    let before = ct.per_cpu().unwrap();
    let cli = spawn_in(&t.names.pods, move || {
        pin();
        for _ in 0..FLOWS {
            let s = UdpSocket::bind(SocketAddrV4::new(client_ip(0), 0))?;
            s.connect(SocketAddrV4::new(SERVER_IP, PORT))?;
            s.send(b"first")?;
            // the server (same CPU) receives and frees it
            std::thread::sleep(Duration::from_millis(3));
            s.send(b"dropped")?;
        }
        Ok(())
    });
    join(cli).unwrap();
    assert_eq!(
        join(srv).unwrap(),
        FLOWS,
        "every first datagram reached the server"
    );
    std::thread::sleep(Duration::from_millis(300));
    let own = ct.per_cpu().unwrap().delta(&before).total();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.names.node,
            "iptables",
            "-L",
            "FORWARD",
            "-vnx",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rule_pkts: u64 = text
        .lines()
        .find(|l| l.contains("DROP") && l.contains(&format!("dpt:{PORT}")))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no DROP rule counter in:\n{text}"));
    let rec = rec.stop();
    let k = kernel(&rec);
    let n = t.node_inode;
    eprintln!(
        "rule dropped {rule_pkts}; events nf_drop {}, insert_failed {}; kernel insert_failed {} (own read {})",
        count(&rec, Kind::NfDrop, n),
        count(&rec, Kind::InsertFailed, n),
        k.insert_failed,
        own.insert_failed
    );
    assert_eq!(rule_pkts, FLOWS);
    assert_eq!(own.insert_failed, 0);
    assert_eq!(k.insert_failed, 0);
    assert_eq!(
        count(&rec, Kind::InsertFailed, n),
        0,
        "a rule drop counted as an insert failure"
    );
    assert_eq!(count(&rec, Kind::NfDrop, n), rule_pkts);
}

/// What KERNEL.md §7 measured for one forged segment (≥ 6.1).
fn expected(c: Config, f: Forged) -> (u64, u64, Fate) {
    match (c, f) {
        (Config::Default, Forged::SeqUnder) => (0, 0, Fate::Alive),
        (Config::Default, Forged::SeqOver) => (2, 1, Fate::Reset),
        (Config::Default, Forged::AckOver) => (2, 1, Fate::Alive),
        (Config::BeLiberal, _) => (0, 0, Fate::Alive),
        (Config::InputDrop, Forged::SeqUnder) => (0, 0, Fate::Alive),
        (Config::InputDrop, _) => (1, 0, Fate::Alive),
    }
}

#[test]
fn invalid_rst_events_equal_kernel_counters_and_seen_rsts() {
    require_host!();
    let _g = common::serial();
    invalid_run("lt-inval", false);
}

/// The same over IPv6 (ip6tables SNAT, IPv6 forged segments and RSTs).
#[test]
fn invalid_rst_ipv6_events_equal_kernel_counters() {
    require_host!();
    let _g = common::serial();
    invalid_run("lt-inval6", true);
}

fn invalid_run(tag: &str, ipv6: bool) {
    let t = Topology::create_with(tag, 1, ipv6).unwrap();
    let _srv = Server::start_at(&t.names.server, t.server_addr(), invalid::server_ports()).unwrap();
    Variant::Deterministic.install(&t).unwrap();
    let obs = invalid::Observers::start(&t).unwrap();
    let mut ct = t.node_ctnetlink().unwrap();
    let rec = Rec::start(&t.names.node, tag);
    let before = ct.per_cpu().unwrap();
    let rst0 = obs.rsts().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cases = invalid::run_all(&t, &obs, &mut ct, &stop).unwrap();
    let after = ct.per_cpu().unwrap();
    let rsts = obs.rsts().unwrap() - rst0;
    let (rec, inc) = rec.stop_all();
    let own = after.delta(&before).total();
    let k = kernel(&rec);
    let node = t.node_inode;
    for c in &cases {
        eprintln!(
            "{:?} {:?}: invalid +{} node RST {} client {:?}",
            c.config, c.forged, c.invalid, c.node_rst, c.client
        );
    }
    let tcp_invalid = count(&rec, Kind::TcpInvalid, node);
    let host_rst = count(&rec, Kind::HostRst, node);
    eprintln!(
        "{tag}: kernel invalid {} (own read {}), events tcp_invalid {tcp_invalid}; node RSTs seen {rsts}, host_rst events {host_rst}",
        k.invalid, own.invalid
    );
    // every INVALID verdict, one event each
    assert_eq!(tcp_invalid, k.invalid);
    assert_eq!(k.invalid, own.invalid);
    assert_eq!(own.invalid, cases.iter().map(|c| c.invalid).sum::<u64>());
    // every RST the node's own stack sent, one event each
    assert_eq!(host_rst, rsts);
    // each with the kernel code that sent it: no socket wanted the segment
    let rcv = if ipv6 { "tcp_v6_rcv+" } else { "tcp_v4_rcv+" };
    for e in of_kind(&rec, Kind::HostRst, node) {
        let loc = e.location.as_deref().unwrap_or("none");
        assert!(loc.starts_with(rcv), "host_rst location {loc}: {e:?}");
    }
    let family = if ipv6 { "ipv6" } else { "ipv4" };
    for e in of_kind(&rec, Kind::TcpInvalid, node) {
        assert_eq!(serde_json::to_value(e).unwrap()["family"], family);
    }
    // one invalid_reset incident per forged segment the kernel marked
    // INVALID (an IGNORED one makes none), each with the node's RST when it sent one
    let resets: Vec<&Value> = inc
        .iter()
        .filter(|i| i["kind"] == "invalid_reset")
        .collect();
    let marked = cases.iter().filter(|c| c.invalid > 0).count();
    let with_rst = cases
        .iter()
        .filter(|c| c.invalid > 0 && c.node_rst > 0)
        .count();
    eprintln!(
        "invalid_reset incidents {} (forged segments marked INVALID {marked}, answered by the node's RST {with_rst})",
        resets.len()
    );
    assert_eq!(resets.len(), marked, "{resets:#?}");
    assert_eq!(
        resets
            .iter()
            .filter(|i| i["outcome"] == "reset" && i["events"]["host_rst"].as_u64() >= Some(1))
            .count(),
        with_rst
    );
    assert_eq!(rsts, cases.iter().map(|c| c.node_rst).sum::<u64>());
    // one fresh NATed connection per case, nothing else
    assert_eq!(count(&rec, Kind::NatAlloc, node), cases.len() as u64);
    assert_eq!(k.insert_failed, 0);
    // the kernel's verdicts, as measured on 6.1, 6.12 and 6.18 (KERNEL.md §7)
    assert_eq!(cases.len(), 9);
    if kernel_at_least(6, 1) {
        for c in &cases {
            assert_eq!(
                (c.invalid, c.node_rst, c.client),
                expected(c.config, c.forged),
                "{:?} / {:?}",
                c.config,
                c.forged
            );
        }
        assert!(k.invalid > 0);
    }
}

/// Link ids whose program has one of ctrace's names (prefixes nat_,
/// confirm_, win_, sym_), from bpftool.
fn ctrace_links() -> BTreeSet<u64> {
    let ours: BTreeSet<u64> = common::bpftool_list("prog")
        .iter()
        .filter(|p| {
            p["name"].as_str().is_some_and(|n| {
                ["nat_", "confirm_", "win_", "sym_"]
                    .iter()
                    .any(|pre| n.starts_with(pre))
            })
        })
        .filter_map(|p| p["id"].as_u64())
        .collect();
    common::bpftool_list("link")
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ours.contains(&id)))
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

/// Links held by any live process (other ctraces on a shared host).
fn held_by_anyone() -> BTreeSet<u64> {
    let mut all = BTreeSet::new();
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                all.extend(common::held_links(pid));
            }
        }
    }
    all
}

#[test]
fn no_ctrace_link_remains_after_sigterm() {
    require_host!();
    let _g = common::serial();
    let t = Topology::create("lt-links", 1).unwrap();
    let before = ctrace_links();
    let rec = Rec::start(&t.names.node, "lt-links");
    let ours = common::held_links(rec.pid());
    let during = ctrace_links();
    assert!(ours.len() >= 4, "ctrace holds only {} links", ours.len());
    assert!(
        ours.is_subset(&during),
        "bpftool does not list ctrace's links by name: ours {ours:?}, listed {during:?}"
    );
    let r = rec.stop();
    assert_eq!(r.trailer.unwrap().ended_by, "signal");
    let after = ctrace_links();
    let left: Vec<u64> = after.intersection(&ours).copied().collect();
    assert!(left.is_empty(), "links left after SIGTERM: {left:?}");
    // anything ctrace-named that appeared meanwhile belongs to a live process
    // (another ctrace on this shared host), never to the one that exited
    let new: BTreeSet<u64> = after.difference(&before).copied().collect();
    let live = held_by_anyone();
    let orphans: Vec<u64> = new.difference(&live).copied().collect();
    assert!(orphans.is_empty(), "orphaned ctrace links: {orphans:?}");
}

#[test]
fn lab_topology_is_removed_on_panic_and_refuses_existing_names() {
    require_host!();
    let _g = common::serial();
    let names = ctrace::lab::topology::Names::new("lt-guard").unwrap();
    let r = std::panic::catch_unwind(|| {
        let t = Topology::create("lt-guard", 1).unwrap();
        // a second lab with the same names is refused, the first is untouched
        assert!(Topology::create("lt-guard", 1).is_err());
        assert!(std::path::Path::new("/run/netns")
            .join(&t.names.node)
            .exists());
        panic!("boom");
    });
    assert!(r.is_err());
    for n in names.all() {
        assert!(
            !std::path::Path::new("/run/netns").join(n).exists(),
            "{n} left behind after a panic"
        );
    }
}

/// `ctrace record --lab snat-race`: the built-in demo traces its own node; the
/// traffic starts only after the probes attached and stops before they
/// detach, so the agreement is exact here too; the lab's namespaces are gone
/// when record exits.
#[test]
fn record_lab_demo_agrees_and_cleans_up() {
    require_host!();
    let _g = common::serial();
    let dir = std::env::temp_dir().join(format!("ctrace-lab-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rec.jsonl");
    let child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
        .args([
            "record",
            "-q",
            "--ringbuf-mb",
            RINGBUF_MB,
            "--lab",
            "snat-race",
            "-d",
            "6s",
            "-o",
        ])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "record --lab exited with {}",
        out.status
    );
    let rec = ctrace::record::read(&file).unwrap();
    let k = kernel(&rec);
    let node = rec.header.as_ref().unwrap().netns;
    let failed = count(&rec, Kind::InsertFailed, node);
    eprintln!(
        "record --lab: insert_failed events {failed}, kernel {}",
        k.insert_failed
    );
    assert!(k.insert_failed > 0);
    assert_eq!(failed, k.insert_failed);
    assert_eq!(count(&rec, Kind::NfDrop, node), k.drop);
    // One ring for every probe: nothing stamped before the header's start, and
    // per CPU the events come in ts_ns order; the README's format section says
    // when they cannot (a program nested in another on one CPU), which takes
    // microseconds, not the 32 ms steps of one ring per probe.
    let start = rec.header.as_ref().unwrap().start_mono_ns;
    let early = rec.events.iter().filter(|e| e.ts_ns < start).count();
    assert_eq!(early, 0, "events stamped before start_mono_ns {start}");
    let mut last: std::collections::BTreeMap<u32, u64> = Default::default();
    let (mut back, mut max_back) = (0u64, 0u64);
    for e in &rec.events {
        let l = last.entry(e.cpu).or_default();
        if e.ts_ns < *l {
            back += 1;
            max_back = max_back.max(*l - e.ts_ns);
        }
        *l = (*l).max(e.ts_ns);
    }
    eprintln!(
        "record --lab: {} events, {back} steps back in ts_ns per CPU, largest {max_back} ns",
        rec.events.len()
    );
    assert!(max_back < 1_000_000, "a step back of {max_back} ns");
    let prefix = format!("ctlab-{pid}-");
    let left = common::named_netns(|n| n.starts_with(&prefix));
    assert!(left.is_empty(), "namespaces left by record --lab: {left:?}");
    std::fs::remove_dir_all(&dir).ok();
}

fn lab_namespaces(pid: u32) -> Vec<String> {
    let needle = format!("-{pid}-");
    common::named_netns(|n| n.starts_with("lt-cli") && n.contains(&needle))
}

/// `ctrace lab ... --json`: the machine-readable results agree with the
/// kernel's verdicts, and the namespaces are gone afterwards.
#[test]
fn lab_commands_print_json_and_clean_up() {
    require_host!();
    let _g = common::serial();
    let run = |args: &[&str]| -> (Value, u32) {
        let child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", out.status);
        (serde_json::from_slice(&out.stdout).unwrap(), pid)
    };
    let (v, pid) = run(&[
        "lab",
        "snat-race",
        "--json",
        "--rounds",
        "2",
        "--prefix",
        "lt-cli",
    ]);
    assert!(lab_namespaces(pid).is_empty());
    let det = &v["phases"][0];
    assert_eq!(det["variant"], "deterministic");
    let failed = det["kernel"]["insert_failed"].as_u64().unwrap();
    assert!(failed > 0);
    assert_eq!(det["kernel"]["drop"].as_u64().unwrap(), failed);
    assert_eq!(det["connects"]["first"], 1);
    assert_eq!(det["connects"]["failed"], snat::CLIENTS as u64 - 1);
    assert_eq!(v["phases"][1]["rounds"].as_array().unwrap().len(), 2);
    assert!(v["verdict"].as_str().unwrap().starts_with("reproduced"));

    let (v, pid) = run(&["lab", "invalid-rst", "--json", "--prefix", "lt-cli"]);
    assert!(lab_namespaces(pid).is_empty());
    assert_eq!(v["cases"].as_array().unwrap().len(), 9);
    if kernel_at_least(6, 1) {
        assert!(
            v["verdict"].as_str().unwrap().starts_with(
                "this kernel: out-of-window retransmissions (SEQ under lower bound) are IGNORED; SEQ over upper bound is INVALID and resets the connection"
            ),
            "{}",
            v["verdict"]
        );
    }
}

/// SIGTERM in the middle of a lab: it stops within one bounded step and
/// removes its namespaces.
#[test]
fn lab_stops_and_cleans_up_on_sigterm() {
    require_host!();
    let _g = common::serial();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctrace"))
        .args(["lab", "snat-race", "--rounds", "50", "--prefix", "lt-cli"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    while lab_namespaces(pid).len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(20), "lab did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t1 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(15),
            "lab ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("lab exited {st} {:?} after SIGTERM", t1.elapsed());
    assert_eq!(lab_namespaces(pid), Vec::<String>::new());
}

/// UDP datagrams to port 9 from `threads` threads in netns `ns`, in bursts
/// of `burst` every `pause_ms`, for `max_s` seconds at most: a rule there
/// drops them (a netfilter drop in process context, per datagram).
/// `dst(i, sent)`: the destination of the burst's i-th datagram.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<u64>>>,
}

impl Flood {
    /// ~50k datagrams/s per thread (the tests beside a flood must keep
    /// their CPU) to 40,000 loopback addresses, `max_s` seconds at most.
    fn loopback(ns: &str, threads: usize, max_s: u64) -> Flood {
        Flood::start(ns, threads, "127.0.0.1:0", 256, 5, max_s, |i, sent| {
            std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::new(127, 0, (i % 200) as u8, 2 + (sent % 200) as u8),
                9,
            )
        })
    }

    fn start(
        ns: &str,
        threads: usize,
        bind: &'static str,
        burst: u32,
        pause_ms: u64,
        max_s: u64,
        dst: fn(u32, u64) -> std::net::SocketAddrV4,
    ) -> Flood {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                ctrace::lab::topology::spawn_in(ns, move || {
                    let s = std::net::UdpSocket::bind(bind)?;
                    let t0 = Instant::now();
                    let mut sent = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && t0.elapsed() < Duration::from_secs(max_s)
                    {
                        for i in 0..burst {
                            let _ = s.send_to(b"x", dst(i, sent));
                            sent += 1;
                        }
                        std::thread::sleep(Duration::from_millis(pause_ms));
                    }
                    Ok(sent)
                })
            })
            .collect();
        Flood { stop, threads }
    }

    /// Stops every thread; the datagrams they sent.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|h| ctrace::lab::topology::join(h).unwrap())
            .sum()
    }
}

/// A crowded node: two SNAT races in two lab nodes at once, and a UDP drop
/// flood in a third namespace; ctrace traces one node. Its insert_failed
/// events equal that node's kernel delta exactly, every run, and no conntrack
/// event carries another namespace (the stable confirm match compares the
/// entry's netns and tuple at drop time, not just addresses).
#[test]
fn crowded_node_insert_failures_are_the_traced_netns_only_5_runs() {
    require_host!();
    let _g = common::serial();
    let a = Topology::create("lt-crowd-a", snat::CLIENTS).unwrap();
    let b = Topology::create("lt-crowd-b", snat::CLIENTS).unwrap();
    let c = Topology::create("lt-crowd-c", 1).unwrap();
    let _sa = Server::start(&a.names.server, snat::server_ports()).unwrap();
    let _sb = Server::start(&b.names.server, snat::server_ports()).unwrap();
    Variant::Deterministic.install(&a).unwrap();
    Variant::Deterministic.install(&b).unwrap();
    // the flood: UDP from c's pods to an address its own OUTPUT chain drops
    ctrace::lab::topology::cmd_in(
        &c.names.pods,
        "iptables",
        &["-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP"],
    )
    .unwrap();
    // the flood: 20k datagrams/s at most, 10 minutes at most
    let flood = Flood::start(&c.names.pods, 1, "0.0.0.0:0", 200, 10, 600, |_, _| {
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(192, 0, 2, 99), 9)
    });
    let node = a.node_inode;
    for run in 0..5 {
        let mut ct = a.node_ctnetlink().unwrap();
        let rec = Rec::start(&a.names.node, &format!("lt-crowd-{run}"));
        let before = ct.per_cpu().unwrap();
        let other = std::thread::scope(|sc| {
            let h = sc.spawn(|| {
                (0..5)
                    .map(|r| {
                        snat::run_round(&b, Variant::Deterministic, r)
                            .unwrap()
                            .clients
                            .len()
                    })
                    .sum::<usize>()
            });
            for r in 0..5 {
                snat::run_round(&a, Variant::Deterministic, r).unwrap();
            }
            h.join().unwrap()
        });
        let after = ct.per_cpu().unwrap();
        let rec = rec.stop();
        let own = after.delta(&before).total();
        let k = kernel(&rec);
        let failed = of_kind(&rec, Kind::InsertFailed, node).len() as u64;
        let foreign: Vec<&Event> = rec
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    Kind::InsertFailed | Kind::NatAlloc | Kind::ClashResolved
                ) && e.netns != node
            })
            .collect();
        let mut by_cpu = std::collections::BTreeMap::new();
        for e in of_kind(&rec, Kind::InsertFailed, node) {
            *by_cpu.entry(e.cpu).or_insert(0u64) += 1;
        }
        eprintln!(
            "crowded run {run} node {node}: insert_failed events {failed}, kernel {} (own read {}), other lab clients {other}, foreign conntrack events {}; by CPU: events {by_cpu:?}, kernel {:?}; runs skipped with the twin's cover {:?}",
            k.insert_failed,
            own.insert_failed,
            foreign.len(),
            k.per_cpu.iter().map(|c| c.insert_failed).collect::<Vec<_>>(),
            rec.trailer.as_ref().map(|t| t.missed_covered.clone()).unwrap_or_default()
        );
        assert!(k.insert_failed > 0, "SNAT to one port must lose inserts");
        assert_eq!(failed, k.insert_failed, "run {run}");
        assert_eq!(k.insert_failed, own.insert_failed, "run {run}");
        assert!(foreign.is_empty(), "run {run}: {foreign:?}");
    }
    let sent = flood.stop();
    eprintln!("crowded: the flood sent {sent} datagrams");
    assert!(sent > 0);
}

/// A node where the kernel nests drops: a UDP flood that a conntrack rule
/// drops in process context, in a netns of its own, on both CPUs, while the
/// node's lost SYNs are processed in softirqs that interrupt it (RPS sends
/// the node's receive to either CPU by IPI, and retransmits come from timer
/// softirqs). The kernel does not run a tracing program that fires while
/// the same program already runs on that CPU; the kfree_skb programs' twins
/// take those runs. Without the confirm twin this test failed (59 and 62 of
/// 63, the shape of the crowded CI failures, though no skipped run was
/// counted there: a second cause may remain). Rounds go on until a pair was
/// skipped at least once (or 30 s): insert_failed and nf_drop events equal
/// the kernel's, every round.
#[test]
fn insert_failures_nested_in_a_drop_flood_are_all_seen() {
    require_host!();
    let _g = common::serial();
    let a = Topology::create("lt-nest-a", snat::CLIENTS).unwrap();
    let f = Topology::create("lt-nest-f", 1).unwrap();
    let _sa = Server::start(&a.names.server, snat::server_ports()).unwrap();
    Variant::Deterministic.install(&a).unwrap();
    let rps = format!(
        "echo 3 > /sys/class/net/{}/queues/rx-0/rps_cpus",
        ctrace::lab::topology::NODE_POD_IF
    );
    ctrace::lab::topology::cmd_in(&a.names.node, "sh", &["-c", &rps]).unwrap();
    // conntrack in the flood's netns (the rule needs it), so each drop has an entry
    ctrace::lab::topology::cmd_in(
        &f.names.pods,
        "iptables",
        &[
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "--dport",
            "9",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            "DROP",
        ],
    )
    .unwrap();
    // 2 minutes at most
    let flood = Flood::loopback(&f.names.pods, 2, 120);
    let node = a.node_inode;
    let t0 = Instant::now();
    let mut skipped = 0;
    let mut runs = 0;
    while runs == 0 || (skipped == 0 && t0.elapsed() < Duration::from_secs(30)) {
        let rec = Rec::start_with(
            &a.names.node,
            &format!("lt-nest-{runs}"),
            &["--symptoms-here"],
        );
        for r in 0..3 {
            snat::run_round(&a, Variant::Deterministic, r).unwrap();
        }
        let rec = rec.stop();
        let t = rec.trailer.as_ref().unwrap();
        // runs of the kfree_skb pairs (confirm's and symptoms') the kernel skipped
        let pair: u64 = t.missed_covered.values().sum();
        let k = kernel(&rec);
        let (fails, drops) = (
            of_kind(&rec, Kind::InsertFailed, node),
            of_kind(&rec, Kind::NfDrop, node),
        );
        let failed = fails.len() as u64;
        // what tells the causes of a shortfall apart: the drops seen, loss
        // in the kernel or in user space, and where the kernel counted
        let per_cpu: Vec<String> = t
            .kernel_counters
            .iter()
            .flat_map(|c| c.per_cpu.iter())
            .map(|c| {
                let seen = fails.iter().filter(|e| e.cpu == c.cpu).count();
                let dropped = drops.iter().filter(|e| e.cpu == c.cpu).count();
                format!(
                    "cpu{} kernel {} events {seen} nf_drop {dropped}",
                    c.cpu, c.insert_failed
                )
            })
            .collect();
        // the SYN waves (7 losers each, ~1 s apart): a short one tells a lost
        // wave from scattered misses
        let waves = {
            let mut ts: Vec<u64> = fails.iter().map(|e| e.ts_ns).collect();
            ts.sort_unstable();
            let mut w: Vec<usize> = Vec::new();
            let mut last = 0u64;
            for t in ts {
                if w.is_empty() || t - last > 300_000_000 {
                    w.push(0);
                }
                *w.last_mut().unwrap() += 1;
                last = t;
            }
            w
        };
        eprintln!(
            "nested run {runs}: insert_failed events {failed}, kernel {}; nf_drop events {} (kernel drop {}); lost {} lost_user {}; {}; insert_failed per SYN wave {waves:?}; written {:?}; runs of the kfree_skb pairs the kernel skipped: {:?}",
            k.insert_failed,
            drops.len(),
            k.drop,
            t.lost,
            t.lost_user,
            per_cpu.join(", "),
            t.events,
            t.missed_covered
        );
        assert!(k.insert_failed > 0, "SNAT to one port must lose inserts");
        assert_eq!(failed, k.insert_failed, "run {runs} ({pair} runs skipped)");
        assert_eq!(drops.len() as u64, k.drop, "run {runs}: nf_drop");
        skipped += pair;
        runs += 1;
    }
    let sent = flood.stop();
    eprintln!(
        "nested: {runs} runs, {skipped} skipped runs of the pairs, the flood sent {sent} datagrams"
    );
    assert!(sent > 0);
}

/// Single-port SNAT, K clients holding their connections: exactly K-1
/// snat_race incidents, each `failed` (the one port stays taken), each naming
/// the one client that connected as its winner and its pod's namespace as its
/// workload; their insert_failed events sum to the kernel's delta.
#[test]
fn single_port_losers_are_k_minus_1_failed_incidents_naming_their_pods() {
    require_host!();
    let _g = common::serial();
    let tag = "lt-incid";
    let t = Topology::create(tag, snat::CLIENTS).unwrap();
    let _srv = Server::start(&t.names.server, snat::server_ports()).unwrap();
    Variant::Deterministic.install(&t).unwrap();
    let rec = Rec::start(&t.names.node, tag);
    let r = snat::run_round(&t, Variant::Deterministic, 0).unwrap();
    // a loser is said to have given up once its next SYN is overdue
    std::thread::sleep(Duration::from_secs(6));
    let (rec, inc) = rec.stop_all();
    let k = kernel(&rec);
    let winners: Vec<&snat::Client> = r.clients.iter().filter(|c| c.ok).collect();
    assert_eq!(
        winners.len(),
        1,
        "one port, one connection: {:?}",
        r.clients
    );
    let races: Vec<&Value> = inc.iter().filter(|i| i["kind"] == "snat_race").collect();
    let failed = races.iter().filter(|i| i["outcome"] == "failed").count();
    let sum: u64 = races
        .iter()
        .map(|i| i["events"]["insert_failed"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "single port: {} clients, snat_race incidents {} ({failed} failed), their insert_failed {sum} = kernel {}",
        r.clients.len(),
        races.len(),
        k.insert_failed
    );
    assert_eq!(races.len(), r.clients.len() - 1);
    assert_eq!(failed, races.len(), "{races:#?}");
    assert_eq!(sum, k.insert_failed);
    let winner_local = &winners[0].local;
    for i in &races {
        let w = &i["winner"]["orig"];
        assert_eq!(
            format!("{}:{}", w["src"].as_str().unwrap(), w["sport"]),
            *winner_local,
            "the winner is the one client that connected: {i}"
        );
        assert_eq!(i["workload"]["kind"], "netns", "{i}");
        assert_eq!(i["workload"]["name"], t.names.pods.as_str(), "{i}");
    }
}

/// A winner that predates the trace: one client holds the single SNAT port
/// before ctrace starts, so no NAT allocation of it is seen; every later
/// client loses, and each loser names the holder from the conntrack table
/// (`seen:"table"`), which `conntrack -L` confirms.
#[test]
fn a_winner_older_than_the_trace_is_named_from_the_table() {
    require_host!();
    let _g = common::serial();
    let tag = "lt-tablew";
    let t = Topology::create(tag, snat::CLIENTS).unwrap();
    let _srv = Server::start(&t.names.server, snat::server_ports()).unwrap();
    Variant::Deterministic.install(&t).unwrap();
    // the holder: client 0, connected to round 0's server port, kept open
    let dst = std::net::SocketAddr::new(t.server_addr(), snat::SERVER_PORT_BASE);
    let (pods, local) = (
        t.names.pods.clone(),
        std::net::SocketAddr::new(t.client_addr(0), 0),
    );
    let held = std::thread::spawn(move || {
        ctrace::netns::enter(&pods).unwrap();
        let fd = ctrace::lab::sock::prepare_connect(local).unwrap();
        ctrace::lab::sock::connect_prepared(fd, dst).unwrap()
    })
    .join()
    .expect("the holder connects before the trace");
    let rec = Rec::start(&t.names.node, tag);
    let r = snat::run_round(&t, Variant::Deterministic, 0).unwrap();
    let table = conntrack_table(&t.names.node);
    std::thread::sleep(Duration::from_secs(1));
    let (rec, _inc) = rec.stop_all();
    drop(held);
    let k = kernel(&rec);
    let node = t.node_inode;
    let losers = of_kind(&rec, Kind::InsertFailed, node);
    eprintln!(
        "{tag}: {} clients, {} connected, insert_failed events {} = kernel {}",
        r.clients.len(),
        r.connected(),
        losers.len(),
        k.insert_failed
    );
    assert_eq!(r.connected(), 0, "the one port is held: {:?}", r.clients);
    assert_eq!(losers.len() as u64, k.insert_failed);
    assert!(k.insert_failed >= r.clients.len() as u64);
    for e in losers {
        let w = e
            .winner
            .known()
            .unwrap_or_else(|| panic!("no winner named: {e:?} ({:?})", e.winner_unknown));
        assert_eq!(w.seen, "table", "{e:?}");
        assert_eq!(w.cpu, None, "a table winner has no allocation CPU: {e:?}");
        let holder = table
            .get(&e.reply.unwrap())
            .expect("the table holds the reply tuple");
        assert_eq!(&w.orig, holder, "winner of {e:?}");
    }
}

/// A reader that lags 2 s behind the ring (a loaded node, a VM: seen in the
/// VM matrix under TCG) must not split a loser's story: the stage closes by
/// the time up to which everything has been read, not by "now". Losers'
/// SYNs come 1 s apart, so a stage that closed by "now" would close each
/// race after its first failure and open a second one for the retransmit.
#[test]
fn a_lagging_reader_keeps_each_losers_story_whole() {
    require_host!();
    let _g = common::serial();
    let tag = "lt-lag";
    let t = Topology::create(tag, snat::CLIENTS).unwrap();
    let _srv = Server::start(&t.names.server, snat::server_ports()).unwrap();
    Variant::Deterministic.install(&t).unwrap();
    let rec = Rec::start_env(
        &t.names.node,
        tag,
        &[],
        &[("CTRACE_TEST_READER_LAG_MS", "2000")],
    );
    let r = snat::run_round(&t, Variant::Deterministic, 0).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let (rec, inc) = rec.stop_all();
    let k = kernel(&rec);
    let losers: std::collections::HashSet<_> = of_kind(&rec, Kind::InsertFailed, t.node_inode)
        .iter()
        .map(|e| e.orig)
        .collect();
    let races: Vec<&Value> = inc.iter().filter(|i| i["kind"] == "snat_race").collect();
    let sum: u64 = races
        .iter()
        .map(|i| i["events"]["insert_failed"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "{tag}: {} clients, {} losers, snat_race incidents {}, their insert_failed {sum} = kernel {}",
        r.clients.len(),
        losers.len(),
        races.len(),
        k.insert_failed
    );
    assert_eq!(losers.len(), r.clients.len() - 1);
    assert_eq!(
        races.len(),
        losers.len(),
        "one incident per loser: {races:#?}"
    );
    assert_eq!(sum, k.insert_failed);
}

/// One SNAT round (every loser's SYN fails at confirm) in a lab node that
/// ctrace records with `extra` flags and `env`, beside a loopback UDP flood
/// that a third netns's OUTPUT chain drops (symptoms see it: every netns).
/// The recording, the node's netns inode and the datagrams the flood sent.
fn snat_round_beside_a_flood(
    tag: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Recording, u32, u64) {
    let a = Topology::create(&format!("{tag}-a"), snat::CLIENTS).unwrap();
    let f = Topology::create(&format!("{tag}-f"), 1).unwrap();
    let _sa = Server::start(&a.names.server, snat::server_ports()).unwrap();
    Variant::Deterministic.install(&a).unwrap();
    ctrace::lab::topology::cmd_in(
        &f.names.pods,
        "iptables",
        &["-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP"],
    )
    .unwrap();
    let flood = Flood::loopback(&f.names.pods, 1, 60);
    let rec = Rec::start_env(&a.names.node, tag, extra, env);
    snat::run_round(&a, Variant::Deterministic, 0).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (rec, _) = rec.stop_all();
    (rec, a.node_inode, flood.stop())
}

/// The same flood, behind a reader so slow that the ring itself fills: the
/// last quarter of the ring is the failures' own (ct_ring_reserve in
/// bpf/common.bpf.h), so the flood's drops are refused and counted in `lost`
/// while every insert failure of the traced netns still finds room. A 1 MiB
/// ring drained every 2 s: the flood fills it within milliseconds of each
/// drain, so each SYN wave meets a full ring (without the gate: 14 of 21
/// insert failures, `lost_failures` 7, in 2 of 2 runs).
#[test]
fn insert_failures_find_room_in_a_ring_a_flood_has_filled() {
    require_host!();
    let _g = common::serial();
    let (rec, node, sent) = snat_round_beside_a_flood(
        "lt-fr",
        &["--ringbuf-mb", "1"],
        &[("CTRACE_TEST_READER_LAG_MS", "2000")],
    );
    let t = rec.trailer.as_ref().unwrap();
    // not kernel(): records are lost here by design, the flood's
    let k = t
        .kernel_counters
        .clone()
        .expect("trailer has kernel_counters");
    let failed = of_kind(&rec, Kind::InsertFailed, node).len() as u64;
    eprintln!(
        "lt-fr: insert_failed events {failed}, kernel {}; the flood sent {sent}, nf_drop events {}, lost {} (of failures {}) lost_user {}, missed {:?}, covered {:?}, per CPU {:?}",
        k.insert_failed,
        rec.events.iter().filter(|e| e.kind == Kind::NfDrop).count(),
        t.lost,
        t.lost_failures,
        t.lost_user,
        t.missed,
        t.missed_covered,
        k.per_cpu.iter().map(|c| c.insert_failed).collect::<Vec<_>>()
    );
    let mut cpus = std::collections::BTreeMap::new();
    for e in of_kind(&rec, Kind::InsertFailed, node) {
        *cpus.entry(e.cpu).or_insert(0u64) += 1;
    }
    eprintln!("lt-fr: insert_failed events by CPU {cpus:?}");
    assert!(k.insert_failed > 0, "SNAT to one port must lose inserts");
    assert!(
        t.lost > 0,
        "the flood did not fill the ring: the test shows nothing"
    );
    assert_eq!(t.lost_failures, 0, "failures lost in the ring");
    assert_eq!(failed, k.insert_failed);
}

/// A flood of another netns's drops behind a reader that lags: symptoms see
/// every netns, so the flood's nf_drop events fill the queue to the
/// consumer and past its bound are dropped (and counted in `lost_user`);
/// the traced netns's insert failures are not among them. Before the queue
/// kept failures past its bound, a whole wave of them (7 of 21) went with
/// the flood's drops. The queue is made small (a test knob) so that the
/// flood overflows it at whatever rate this machine lets it reach; the
/// reader sleeps 2 s per drain, so that the SYN waves (1 s, then 2 s apart)
/// do not all fall at the head of a drain, where the bound keeps them
/// anyway (at 1 s, a wave's forced wake-up set the drains' phase: 21 of 21
/// kept without the fix; at 2 s it kept 9, 7 and 14).
#[test]
fn insert_failures_outlast_a_flood_of_other_drops_behind_a_lagging_reader() {
    require_host!();
    let _g = common::serial();
    let (rec, node, sent) = snat_round_beside_a_flood(
        "lt-fl",
        &[],
        &[
            ("CTRACE_TEST_READER_LAG_MS", "2000"),
            ("CTRACE_TEST_QUEUE_EVENTS", "2048"),
        ],
    );
    let t = rec.trailer.as_ref().unwrap();
    let k = kernel(&rec);
    let failed = of_kind(&rec, Kind::InsertFailed, node).len() as u64;
    // on a mismatch, where the failures were and what was skipped (this
    // test has undercounted by 2 of 21 twice in many runs, with nothing lost)
    let mut cpus = std::collections::BTreeMap::new();
    for e in of_kind(&rec, Kind::InsertFailed, node) {
        *cpus.entry(e.cpu).or_insert(0u64) += 1;
    }
    eprintln!(
        "lt-fl: insert_failed events {failed}, kernel {}; the flood sent {sent}, nf_drop events {}, lost {} (of failures {}) lost_user {}, missed {:?}, covered {:?}; insert_failed by CPU: kernel {:?}, events {cpus:?}; in any netns {}",
        k.insert_failed,
        rec.events.iter().filter(|e| e.kind == Kind::NfDrop).count(),
        t.lost,
        t.lost_failures,
        t.lost_user,
        t.missed,
        t.missed_covered,
        k.per_cpu.iter().map(|c| c.insert_failed).collect::<Vec<_>>(),
        rec.events
            .iter()
            .filter(|e| e.kind == Kind::InsertFailed)
            .count()
    );
    assert!(k.insert_failed > 0, "SNAT to one port must lose inserts");
    assert!(
        t.lost_user > 0,
        "the flood did not overflow the queue: the test shows nothing"
    );
    assert_eq!(t.lost, 0, "the ring itself overflowed");
    assert_eq!(failed, k.insert_failed);
}

/// Each CPU's twin key stack in ctrace's symptoms object (map `twin_keys`,
/// key 0: the kfree_skb pair), as the height of the stack (`struct
/// twin_keys`'s `n`, by name through the map's BTF).
fn twin_drop_heights(pid: u32) -> Vec<u64> {
    let ids: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("map_id:").map(|v| v.trim().parse().ok()))?
        })
        .collect();
    let id = common::bpftool_list("map")
        .into_iter()
        .find(|m| m["name"] == "twin_keys" && m["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .and_then(|m| m["id"].as_u64())
        .expect("ctrace holds a twin_keys map");
    let out = Command::new("bpftool")
        .args(["map", "dump", "id", &id.to_string(), "-j"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["formatted"]["values"]
        .as_array()
        .expect("bpftool formats twin_keys from its BTF")
        .iter()
        .map(|c| c["value"]["n"].as_u64().expect("a height per CPU"))
        .collect()
}

/// symptoms' kfree_skb twins leave no key behind: a stale key on a CPU's
/// stack would make a later drop that the first program skipped (nested in
/// itself), whose skb reused the stale key's address, look handled, and the
/// drop would go unreported (symptoms.bpf.c). The first of the pair runs
/// alone between the two attachments (made 200 ms here by a test knob), so
/// a flood that began before ctrace left keys there: three on a CPU of the
/// flood's, for as long as ctrace ran, before user space zeroed the stacks
/// once both were attached. Now each CPU's stack holds at most the key of a
/// pair between its programs.
#[test]
fn twin_key_stacks_hold_no_stale_keys_beside_a_flood_that_began_first() {
    require_host!();
    let _g = common::serial();
    let tag = "lt-tk";
    let f = Topology::create(tag, 1).unwrap();
    ctrace::lab::topology::cmd_in(
        &f.names.pods,
        "iptables",
        &["-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP"],
    )
    .unwrap();
    for run in 0..3 {
        let flood = Flood::loopback(&f.names.pods, 2, 30);
        std::thread::sleep(Duration::from_millis(300));
        // the firsts alone for 200 ms: the flood's drops certainly fall there
        let rec = Rec::start_env(
            &f.names.node,
            &format!("{tag}{run}"),
            &[],
            &[("CTRACE_TEST_TWIN_ATTACH_DELAY_MS", "200")],
        );
        std::thread::sleep(Duration::from_millis(300));
        let mut heights = Vec::new();
        for _ in 0..3 {
            heights.push(twin_drop_heights(rec.pid()));
            std::thread::sleep(Duration::from_millis(100));
        }
        let rec = rec.stop();
        let sent = flood.stop();
        let drops = rec.events.iter().filter(|e| e.kind == Kind::NfDrop).count();
        eprintln!("{tag} run {run}: stack heights by CPU {heights:?}; flood sent {sent}, nf_drop events {drops}");
        assert!(
            drops > 0,
            "the flood's drops were not seen: the test shows nothing"
        );
        for h in &heights {
            assert!(
                h.iter().all(|&n| n <= 1),
                "stale twin keys: heights {heights:?}"
            );
        }
    }
}
