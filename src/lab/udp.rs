//! `ctrace lab udp-race`: the two ends of a UDP clash at conntrack confirm.
//!
//! Dropped: several pods send one datagram each, all from the SAME local
//! port and at the same instant (a barrier), through MASQUERADE to one
//! server port. NAT picks the node's port for each of them while none is
//! confirmed yet, so the later ones find their reply tuple taken at confirm;
//! different origins cannot be merged: `insert_failed` and `drop` rise and
//! the datagram is lost (the client gets no answer). Probabilistic: the
//! sends must meet on parallel CPUs.
//!
//! Resolved: the A/AAAA pattern of glibc's resolver: ONE socket, connected
//! to a service address that the node DNATs (at random, to one of two
//! backends), sends two datagrams from two threads at once. Both datagrams
//! have the same original tuple: when both get their (unconfirmed) entry
//! before either is confirmed, the second clashes at confirm and the kernel
//! merges it into the first (same translation) or inserts it as a NAT clash
//! entry (the other backend): `clash_resolve` rises, nothing is lost.
//!
//! Making the pair race. With plain veths each datagram is processed to the
//! end (PREROUTING → POSTROUTING → confirm) in the sender's own transmit
//! softirq, so the first is confirmed before the second exists. With GRO on
//! the node's pod-facing veth, the veth queues what it receives for a NAPI
//! poll; with threaded NAPI that poll runs in a kthread that wakes a little
//! later, so A and AAAA land in one receive batch, and the batch goes through
//! PREROUTING (conntrack + DNAT: two unconfirmed entries) as a list before
//! either packet reaches confirm. That is what the resolved phase turns on;
//! the dropped phase turns GRO off again (one NAPI thread would serialize the
//! pods' packets, and the SNAT race needs them on parallel CPUs).
//! The senders matter as much: released by a `std::sync::Barrier` (waiters
//! woken tens of µs apart) the pair did not race here even with GRO +
//! threaded NAPI (0 of 100 pairs); pinned to two CPUs and released by a
//! spinning start, it races with or without batching. Measured on this
//! host's 6.18 (2 CPUs), 200 pairs each: plain veths clash_resolve +197, GRO
//! alone +190, GRO + threaded NAPI +196 (the README has the figures). The
//! batching stays on for the runs where the senders cannot be lined up (VMs).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::topology::{cmd_in, spawn_in, stopped, Stop, Topology, NODE_OUT_IF};
use crate::ctstat::{CpuStats, CtNetlink};

/// Clients of the dropped phase (one address each in the pods netns).
pub const CLIENTS: usize = 8;
/// The server port of the dropped phase.
pub const DROP_PORT: u16 = 7000;
/// The local port every client of a dropped burst binds (plus the burst's
/// number), so that no burst meets an earlier burst's entries.
pub const CLIENT_PORT_BASE: u16 = 30000;
/// Bursts (all pods at once) per dropped round.
pub const BURSTS_PER_ROUND: usize = 25;
/// The DNS-like service: its address's port and the backends'.
pub const DNS_PORT: u16 = 53;
/// A/AAAA pairs per resolved round, each from a fresh socket.
pub const PAIRS_PER_ROUND: u32 = 20;
/// How long a client waits for an answer before counting its datagram lost.
const ANSWER_WAIT: Duration = Duration::from_millis(250);
/// A phase ends after this long whatever its rounds.
pub const MAX_PHASE_TIME: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// Same source port from several pods through MASQUERADE: insert_failed.
    Dropped,
    /// Two datagrams of one socket through a service DNAT: clash_resolve.
    Resolved,
}

/// The node's rules for both phases (they never match each other's traffic).
pub fn rules(t: &Topology) -> Vec<Vec<String>> {
    let b = |a: std::net::IpAddr| SocketAddr::new(a, DNS_PORT).to_string();
    let svc = t.service_addr().to_string();
    let dns = DNS_PORT.to_string();
    let drop_port = DROP_PORT.to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    vec![
        s(&[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            NODE_OUT_IF,
            "-p",
            "udp",
            "--dport",
            &drop_port,
            "-j",
            "MASQUERADE",
        ]),
        s(&[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            &svc,
            "-p",
            "udp",
            "--dport",
            &dns,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.5",
            "-j",
            "DNAT",
            "--to-destination",
            &b(t.server_addr()),
        ]),
        s(&[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            &svc,
            "-p",
            "udp",
            "--dport",
            &dns,
            "-j",
            "DNAT",
            "--to-destination",
            &b(t.server_addr2()),
        ]),
    ]
}

/// Installs the udp-race rules and the second backend in a fresh topology.
pub fn setup(t: &Topology) -> Result<()> {
    t.add_second_backend()?;
    let ipt = t.iptables();
    for chain in ["POSTROUTING", "PREROUTING"] {
        cmd_in(&t.names.node, ipt, &["-t", "nat", "-F", chain])?;
    }
    for r in rules(t) {
        let r: Vec<&str> = r.iter().map(String::as_str).collect();
        cmd_in(&t.names.node, ipt, &r)?;
    }
    Ok(())
}

/// Sets the node's pod-facing veth up for a phase: GRO and threaded NAPI for
/// the resolved phase, GRO off for the dropped one.
pub fn prepare(t: &Topology, k: PhaseKind) -> Result<()> {
    t.batch_pod_receive(k == PhaseKind::Resolved)
}

/// The servers' addresses: the dropped phase's port and both DNS backends.
pub fn server_addrs(t: &Topology) -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(t.server_addr(), DROP_PORT),
        SocketAddr::new(t.server_addr(), DNS_PORT),
        SocketAddr::new(t.server_addr2(), DNS_PORT),
    ]
}

/// A UDP echo server (one thread per address) in the server netns; every
/// wait in it is bounded, and Drop stops it.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    /// Datagrams received, per address (in `server_addrs` order).
    pub received: Vec<Arc<AtomicU64>>,
}

impl UdpServer {
    pub fn start(ns: &str, addrs: Vec<SocketAddr>) -> Result<UdpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut srv = UdpServer {
            stop: stop.clone(),
            threads: Vec::new(),
            received: Vec::new(),
        };
        for a in addrs {
            let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
            let (st, n) = (stop.clone(), Arc::new(AtomicU64::new(0)));
            srv.received.push(n.clone());
            srv.threads.push(spawn_in(ns, move || {
                let s = match UdpSocket::bind(a)
                    .with_context(|| format!("udp server: binding {a}"))
                    .and_then(|s| {
                        s.set_read_timeout(Some(Duration::from_millis(100)))?;
                        Ok(s)
                    }) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = tx.send(Ok(()));
                let mut buf = [0u8; 512];
                while !st.load(Ordering::Relaxed) {
                    if let Ok((len, from)) = s.recv_from(&mut buf) {
                        n.fetch_add(1, Ordering::Relaxed);
                        let _ = s.send_to(&buf[..len], from);
                    }
                }
                Ok(())
            }));
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => anyhow::bail!("the lab's UDP server did not start"),
            }
        }
        Ok(srv)
    }

    pub fn total(&self) -> u64 {
        self.received
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What one round sent and got answered.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Round {
    pub sent: u64,
    pub answered: u64,
}

/// Threads that start sending at one instant: each spins (bounded) until
/// all have arrived. A `std::sync::Barrier` wakes its waiters one after the
/// other, tens of microseconds apart: longer than a datagram takes from the
/// pod's socket to confirm in the node.
pub struct SpinStart {
    n: usize,
    arrived: std::sync::atomic::AtomicUsize,
}

impl SpinStart {
    pub fn new(n: usize) -> Arc<SpinStart> {
        Arc::new(SpinStart {
            n,
            arrived: Default::default(),
        })
    }

    pub fn wait(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let t0 = Instant::now();
        while self.arrived.load(Ordering::Acquire) < self.n && t0.elapsed() < Duration::from_secs(1)
        {
            std::hint::spin_loop();
        }
    }
}

/// Pins the calling thread to one CPU (modulo the CPUs there are); a lab
/// race needs its senders on different CPUs at the same time.
fn pin(i: usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut set = nix::sched::CpuSet::new();
    if set.set(i % n).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// One dropped round: `BURSTS_PER_ROUND` bursts; in each, `CLIENTS` pods
/// send one datagram each from the same local port (new per burst), all at
/// one instant. The sockets are spread over one sender thread per CPU (each
/// pinned; a sleeping barrier, then a spinning start, then back-to-back
/// sends: a veth without NAPI processes each datagram up to confirm in its
/// sender's softirq, so the CPUs' paths through NAT and confirm overlap);
/// then each socket waits ≤ 250 ms for its echo. Only the first datagram of
/// each CPU can race (later ones see the winner's confirmed entry and get
/// another port), so a burst holds one race per pair of CPUs.
pub fn dropped_round(t: &Topology, round: u32) -> Result<Round> {
    let n = t.clients.min(CLIENTS);
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let senders = cpus.clamp(1, n);
    let dst = SocketAddr::new(t.server_addr(), DROP_PORT);
    let coarse = Arc::new(Barrier::new(senders));
    let mut hs = Vec::new();
    let starts: Vec<Arc<SpinStart>> = (0..BURSTS_PER_ROUND)
        .map(|_| SpinStart::new(senders))
        .collect();
    for k in 0..senders {
        let ips: Vec<(usize, std::net::IpAddr)> = (k..n)
            .step_by(senders)
            .map(|i| (i, t.client_addr(i)))
            .collect();
        let (ns, coarse, starts) = (t.names.pods.clone(), coarse.clone(), starts.clone());
        hs.push(std::thread::spawn(move || -> Result<Round, String> {
            // every thread reaches every barrier, whatever fails
            let entered = crate::netns::enter(&ns).map_err(|e| format!("{e:#}"));
            pin(k);
            let mut r = Round::default();
            let mut err = None;
            for (b, start) in starts.iter().enumerate() {
                let burst = round.wrapping_mul(BURSTS_PER_ROUND as u32) + b as u32;
                let port = CLIENT_PORT_BASE + (burst % 20000) as u16;
                let socks = entered.clone().and_then(|_| {
                    ips.iter()
                        .map(|(i, ip)| {
                            let a = SocketAddr::new(*ip, port);
                            let s = UdpSocket::bind(a).map_err(|e| format!("binding {a}: {e}"))?;
                            s.set_read_timeout(Some(ANSWER_WAIT))
                                .map_err(|e| e.to_string())?;
                            Ok((format!("drop r{round} b{b} c{i}"), s))
                        })
                        .collect::<Result<Vec<_>, String>>()
                });
                coarse.wait();
                start.wait();
                match socks {
                    Ok(socks) => {
                        for (msg, s) in &socks {
                            if s.send_to(msg.as_bytes(), dst).is_ok() {
                                r.sent += 1;
                            }
                        }
                        for (msg, s) in &socks {
                            let mut buf = [0u8; 64];
                            if matches!(s.recv_from(&mut buf), Ok((len, _)) if &buf[..len] == msg.as_bytes())
                            {
                                r.answered += 1;
                            }
                        }
                    }
                    Err(e) => err = Some(e),
                }
            }
            match err {
                Some(e) => Err(e),
                None => Ok(r),
            }
        }));
    }
    let mut r = Round::default();
    for h in hs {
        let x = h
            .join()
            .map_err(|_| anyhow::anyhow!("a lab client thread panicked"))?
            .map_err(|e| anyhow::anyhow!("udp-race client: {e}"))?;
        r.sent += x.sent;
        r.answered += x.answered;
    }
    Ok(r)
}

/// One resolved round: `PAIRS_PER_ROUND` times, a fresh socket in the pods
/// netns connected to the service, and two threads (pinned to two CPUs)
/// sending on it at one instant ("A" and "AAAA"); then both answers are
/// awaited (≤ 250 ms each).
pub fn resolved_round(t: &Topology, round: u32) -> Result<Round> {
    type Pair = (Arc<UdpSocket>, Arc<SpinStart>);
    let svc = SocketAddr::new(t.service_addr(), DNS_PORT);
    let local = SocketAddr::new(t.client_addr(0), 0);
    let done = Arc::new(Barrier::new(2));
    let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Pair>>(1);
    let ns = t.names.pods.clone();
    let d2 = done.clone();
    // the AAAA thread: takes each pair's socket, sends when the A thread does
    let aaaa = spawn_in(&ns, move || {
        pin(1);
        while let Ok(Some((s, go))) = rx.recv() {
            go.wait();
            let _ = s.send(format!("AAAA r{round}").as_bytes());
            drop(s);
            d2.wait();
        }
        Ok(())
    });
    let a = spawn_in(&ns, move || -> Result<Round> {
        pin(0);
        let mut r = Round::default();
        let mut res = Ok(());
        for _ in 0..PAIRS_PER_ROUND {
            let s = match UdpSocket::bind(local)
                .and_then(|s| s.connect(svc).map(|_| s))
                .and_then(|s| s.set_read_timeout(Some(ANSWER_WAIT)).map(|_| s))
            {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    res = Err(anyhow::anyhow!("udp-race client socket to {svc}: {e}"));
                    break;
                }
            };
            let go = SpinStart::new(2);
            if tx.send(Some((s.clone(), go.clone()))).is_err() {
                res = Err(anyhow::anyhow!("the AAAA sender ended"));
                break;
            }
            go.wait();
            let _ = s.send(format!("A r{round}").as_bytes());
            r.sent += 2;
            let mut b = [0u8; 64];
            for _ in 0..2 {
                if s.recv(&mut b).is_ok() {
                    r.answered += 1;
                }
            }
            done.wait();
        }
        let _ = tx.send(None);
        res.map(|_| r)
    });
    let r = super::topology::join(a);
    super::topology::join(aaaa)?;
    r
}

/// A phase: its rounds, and the node's counter deltas (ctnetlink, per CPU).
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub phase: PhaseKind,
    pub rules: Vec<String>,
    /// What the node's pod-facing veth did (GRO / threaded NAPI).
    pub pod_veth: &'static str,
    pub rounds: u32,
    pub sent: u64,
    pub answered: u64,
    pub kernel: CpuStats,
    pub per_cpu: Vec<CpuStats>,
    pub verdict: String,
}

pub fn run_phase(
    t: &Topology,
    ct: &mut CtNetlink,
    k: PhaseKind,
    rounds: u32,
    first_round: u32,
    stop: &Stop,
) -> Result<Phase> {
    prepare(t, k)?;
    let before = super::topology::snapshot(ct)?;
    let t0 = Instant::now();
    let (mut sent, mut answered, mut done) = (0, 0, 0);
    for r in 0..rounds {
        if stopped(stop) {
            anyhow::bail!("interrupted");
        }
        if t0.elapsed() > MAX_PHASE_TIME {
            break;
        }
        let x = match k {
            PhaseKind::Dropped => dropped_round(t, first_round + r)?,
            PhaseKind::Resolved => resolved_round(t, first_round + r)?,
        };
        sent += x.sent;
        answered += x.answered;
        done += 1;
    }
    // late answers and the last confirms settle before the counters are read
    std::thread::sleep(Duration::from_millis(200));
    let after = super::topology::snapshot(ct)?;
    let d = after.delta(&before);
    let ipt = t.iptables();
    let all = rules(t);
    let rules = match k {
        PhaseKind::Dropped => &all[..1],
        PhaseKind::Resolved => &all[1..],
    }
    .iter()
    .map(|r| format!("{ipt} {}", r.join(" ")))
    .collect();
    let mut p = Phase {
        phase: k,
        rules,
        pod_veth: match k {
            PhaseKind::Dropped => "gro off",
            PhaseKind::Resolved => "gro on, threaded napi",
        },
        rounds: done,
        sent,
        answered,
        kernel: d.total(),
        per_cpu: d.per_cpu,
        verdict: String::new(),
    };
    p.verdict = verdict(&p);
    Ok(p)
}

/// What the kernel did in a phase, in one line.
pub fn verdict(p: &Phase) -> String {
    let k = &p.kernel;
    let lost = p.sent.saturating_sub(p.answered);
    match p.phase {
        PhaseKind::Dropped if k.insert_failed > 0 => format!(
            "reproduced: {} datagram(s) from the same source port lost at conntrack confirm (insert_failed +{}, drop +{}); {lost} of {} unanswered (mitigation: --random-fully)",
            k.drop, k.insert_failed, k.drop, p.sent
        ),
        PhaseKind::Dropped => format!(
            "not reproduced: no insert failures over {} round(s) (the race needs the sends on parallel CPUs: try more --rounds)",
            p.rounds
        ),
        PhaseKind::Resolved if k.clash_resolve > 0 => format!(
            "reproduced: clash_resolve +{} — A/AAAA datagrams of one socket clashed at confirm and were merged (insert_failed +{}, drop +{}); {lost} of {} unanswered",
            k.clash_resolve, k.insert_failed, k.drop, p.sent
        ),
        PhaseKind::Resolved => format!(
            "not reproduced: no clash over {} A/AAAA pair(s) (the pair must reach the node in one receive batch)",
            p.sent / 2
        ),
    }
}

impl Phase {
    pub fn print(&self) {
        let k = &self.kernel;
        println!(
            "{:?} ({} round(s), pod veth: {}):",
            self.phase, self.rounds, self.pod_veth
        );
        for r in &self.rules {
            println!("  rule: {r}");
        }
        println!(
            "  kernel (node netns): insert_failed +{}  drop +{}  clash_resolve +{}",
            k.insert_failed, k.drop, k.clash_resolve
        );
        let cpus: Vec<String> = self
            .per_cpu
            .iter()
            .map(|c| {
                format!(
                    "cpu{}: if +{} drop +{} clash +{}",
                    c.cpu, c.insert_failed, c.drop, c.clash_resolve
                )
            })
            .collect();
        println!("  per CPU: {}", cpus.join("; "));
        println!(
            "  datagrams: {} sent, {} answered",
            self.sent, self.answered
        );
        println!("  verdict: {}", self.verdict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(k: PhaseKind, sent: u64, answered: u64, c: CpuStats) -> Phase {
        Phase {
            phase: k,
            rules: vec![],
            pod_veth: "",
            rounds: 4,
            sent,
            answered,
            kernel: c,
            per_cpu: vec![],
            verdict: String::new(),
        }
    }

    #[test]
    fn verdicts_follow_the_kernel_counters() {
        let c = CpuStats {
            insert_failed: 3,
            drop: 3,
            ..Default::default()
        };
        let v = verdict(&phase(PhaseKind::Dropped, 32, 29, c));
        assert!(v.starts_with("reproduced: 3 datagram(s)"), "{v}");
        assert!(v.contains("3 of 32 unanswered"), "{v}");
        let v = verdict(&phase(PhaseKind::Dropped, 32, 32, CpuStats::default()));
        assert!(v.starts_with("not reproduced"), "{v}");
        let c = CpuStats {
            clash_resolve: 7,
            ..Default::default()
        };
        let v = verdict(&phase(PhaseKind::Resolved, 40, 40, c));
        assert!(v.starts_with("reproduced: clash_resolve +7"), "{v}");
        let v = verdict(&phase(PhaseKind::Resolved, 40, 40, CpuStats::default()));
        assert!(v.contains("over 20 A/AAAA pair(s)"), "{v}");
    }
}
