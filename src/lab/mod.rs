//! `ctrace lab`: reproduce both failures in throwaway network namespaces
//! (pods → node with SNAT/MASQUERADE → server), driven by compiled traffic
//! generators running on threads inside those namespaces, and measured with
//! the kernel's own counters in the node netns.
//!
//! Cleanup on every exit path: the namespaces belong to a [`Topology`] whose
//! Drop deletes them (normal end, error, panic); Ctrl-C and SIGTERM set a flag
//! that every loop checks, so the run unwinds through those Drops.

pub mod invalid;
pub mod server;
pub mod snat;
pub mod sock;
pub mod topology;
pub mod udp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

/// The reproducers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabKind {
    /// SNAT port-allocation race ending in conntrack insert failures.
    SnatRace,
    /// Out-of-window segments, INVALID verdicts and the node's RST.
    InvalidRst,
    /// UDP clashes at confirm: same source port from several pods (dropped)
    /// and one socket's A/AAAA pair through a service DNAT (resolved).
    UdpRace,
}

impl LabKind {
    pub fn name(self) -> &'static str {
        match self {
            LabKind::SnatRace => "snat-race",
            LabKind::InvalidRst => "invalid-rst",
            LabKind::UdpRace => "udp-race",
        }
    }
}

/// What `ctrace lab` was asked for.
#[derive(Clone, Debug)]
pub struct LabArgs {
    pub kind: LabKind,
    pub json: bool,
    /// Prefix for the namespaces the lab creates (must not exist yet).
    pub prefix: String,
    pub rounds: u32,
    /// Keep running the traffic in a loop until stopped.
    pub repeat: bool,
    /// Run the traffic over IPv6 (ULA addresses, ip6tables rules).
    pub ipv6: bool,
}
use topology::{stopped, Stop, Topology};

/// Upper bound on `--rounds`.
pub const MAX_ROUNDS: u32 = 200;

/// Runs a lab until it is done or `stop` is set.
pub fn run(a: &LabArgs, stop: &Stop) -> Result<i32> {
    if a.rounds == 0 || a.rounds > MAX_ROUNDS {
        anyhow::bail!("--rounds must be between 1 and {MAX_ROUNDS}");
    }
    if a.repeat {
        if a.ipv6 {
            anyhow::bail!("--repeat runs the IPv4 demo only: drop --ipv6");
        }
        let mut bg = Background::start_paused(a.kind, &a.prefix)?;
        bg.resume();
        eprintln!(
            "ctrace lab: {:?} traffic running; node netns {} (trace it with --netns {}); Ctrl-C stops",
            a.kind,
            bg.node_netns(),
            bg.node_netns()
        );
        let t0 = Instant::now();
        while !stopped(stop) && !bg.finished() && t0.elapsed() < Background::MAX_TIME {
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(bg);
        return Ok(crate::exit::OK);
    }
    match a.kind {
        LabKind::SnatRace => run_snat(a, stop),
        LabKind::InvalidRst => run_invalid(a, stop),
        LabKind::UdpRace => run_udp(a, stop),
    }
}

fn family(ipv6: bool) -> &'static str {
    if ipv6 {
        "ipv6"
    } else {
        "ipv4"
    }
}

fn kernel_json(k: &crate::ctstat::CpuStats) -> serde_json::Value {
    json!({
        "insert_failed": k.insert_failed,
        "drop": k.drop,
        "invalid": k.invalid,
        "clash_resolve": k.clash_resolve,
    })
}

fn run_snat(a: &LabArgs, stop: &Stop) -> Result<i32> {
    let t = Topology::create_with(&a.prefix, snat::CLIENTS, a.ipv6)?;
    let _srv = server::Server::start_at(&t.names.server, t.server_addr(), snat::server_ports())?;
    let mut ct = t.node_ctnetlink()?;
    if !a.json {
        println!(
            "lab: {} → {} (SNAT) → {}; {} clients, {}",
            t.names.pods,
            t.names.node,
            t.names.server,
            snat::CLIENTS,
            family(a.ipv6)
        );
    }
    let det = snat::run_phase(&t, &mut ct, snat::Variant::Deterministic, 1, 0, stop)?;
    if !a.json {
        det.print();
    }
    let real = snat::run_phase(&t, &mut ct, snat::Variant::Realistic, a.rounds, 1, stop)?;
    if !a.json {
        real.print();
    }
    let verdict = snat::verdict(&det, Some(&real));
    if a.json {
        let phases: Vec<serde_json::Value> = [&det, &real]
            .iter()
            .map(|p| {
                json!({
                    "variant": p.variant,
                    "rule": p.rule,
                    "rounds": p.rounds,
                    "connects": p.connects,
                    "kernel": kernel_json(&p.kernel),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "lab": "snat-race",
                "family": family(a.ipv6),
                "kernel": crate::sys::kernel_release(),
                "node_netns": t.names.node,
                "phases": phases,
                "verdict": verdict,
            }))?
        );
    } else {
        println!("verdict: {verdict}");
    }
    Ok(crate::exit::OK)
}

fn run_invalid(a: &LabArgs, stop: &Stop) -> Result<i32> {
    let t = Topology::create_with(&a.prefix, 1, a.ipv6)?;
    let _srv = server::Server::start_at(&t.names.server, t.server_addr(), invalid::server_ports())?;
    snat::Variant::Deterministic.install(&t)?;
    let obs = invalid::Observers::start(&t)?;
    let mut ct = t.node_ctnetlink()?;
    let cases = invalid::run_all(&t, &obs, &mut ct, stop)?;
    let verdict = invalid::verdict(&cases);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "lab": "invalid-rst",
                "family": family(a.ipv6),
                "kernel": crate::sys::kernel_release(),
                "node_netns": t.names.node,
                "cases": cases,
                "verdict": verdict,
            }))?
        );
    } else {
        println!(
            "lab: {} → {} (SNAT) → {}; one forged segment per fresh connection, from the server, {}",
            t.names.pods,
            t.names.node,
            t.names.server,
            family(a.ipv6)
        );
        invalid::print(&cases);
        println!("verdict: {verdict}");
    }
    Ok(crate::exit::OK)
}

fn run_udp(a: &LabArgs, stop: &Stop) -> Result<i32> {
    let t = Topology::create_with(&a.prefix, udp::CLIENTS, a.ipv6)?;
    udp::setup(&t)?;
    let _srv = udp::UdpServer::start(&t.names.server, udp::server_addrs(&t))?;
    let mut ct = t.node_ctnetlink()?;
    if !a.json {
        println!(
            "lab: {} → {} (MASQUERADE; service DNAT {} → 2 backends) → {}; {} clients, {}",
            t.names.pods,
            t.names.node,
            t.service_addr(),
            t.names.server,
            udp::CLIENTS,
            family(a.ipv6)
        );
    }
    let dropped = udp::run_phase(&t, &mut ct, udp::PhaseKind::Dropped, a.rounds, 0, stop)?;
    if !a.json {
        dropped.print();
    }
    let resolved = udp::run_phase(&t, &mut ct, udp::PhaseKind::Resolved, a.rounds, 0, stop)?;
    if !a.json {
        resolved.print();
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "lab": "udp-race",
                "family": family(a.ipv6),
                "kernel": crate::sys::kernel_release(),
                "node_netns": t.names.node,
                "phases": [dropped, resolved],
            }))?
        );
    }
    Ok(crate::exit::OK)
}

/// A lab running in the background while ctrace traces its node (the built-in
/// demo: `record --lab`, `top --lab`, `check --lab`). Dropping it stops the
/// traffic and removes every namespace, rule and link it made.
pub struct Background {
    node_netns: String,
    go: Stop,
    traffic: Traffic,
    // dropped after the traffic thread has ended (field order = drop order)
    topo: Arc<Topology>,
}

impl Background {
    /// The traffic loop ends by itself after this long or this many iterations.
    pub const MAX_TIME: Duration = Duration::from_secs(3600);
    pub const MAX_ITERATIONS: u32 = 10_000;
    const PAUSE: Duration = Duration::from_millis(1000);

    /// Builds the lab (namespaces, rules, server) with its traffic held back
    /// until [`Background::resume`]: a recorder attaches first, so that every
    /// failure the kernel counts happens while it traces.
    pub fn start_paused(kind: LabKind, prefix: &str) -> Result<Background> {
        let clients = match kind {
            LabKind::SnatRace => snat::CLIENTS,
            LabKind::InvalidRst => 1,
            LabKind::UdpRace => udp::CLIENTS,
        };
        let topo = Arc::new(Topology::create(prefix, clients)?);
        let stop: Stop = Arc::new(AtomicBool::new(false));
        let go: Stop = Arc::new(AtomicBool::new(false));
        // the servers live as long as the traffic thread
        let srv: Box<dyn Send> = match kind {
            LabKind::SnatRace => Box::new(server::Server::start(
                &topo.names.server,
                snat::server_ports(),
            )?),
            LabKind::InvalidRst => Box::new(server::Server::start(
                &topo.names.server,
                invalid::server_ports(),
            )?),
            LabKind::UdpRace => {
                udp::setup(&topo)?;
                Box::new(udp::UdpServer::start(
                    &topo.names.server,
                    udp::server_addrs(&topo),
                )?)
            }
        };
        if kind != LabKind::UdpRace {
            snat::Variant::Deterministic.install(&topo)?;
        }
        let (t2, s2, g2) = (topo.clone(), stop.clone(), go.clone());
        let thread = std::thread::spawn(move || {
            let _srv = srv;
            let t0 = Instant::now();
            while !stopped(&g2) && !stopped(&s2) && t0.elapsed() < Background::MAX_TIME {
                std::thread::sleep(Duration::from_millis(20));
            }
            let r = background_loop(kind, &t2, &s2);
            if let Err(e) = &r {
                if !stopped(&s2) {
                    crate::sys::say(format!("ctrace lab: background traffic stopped: {e:#}"));
                }
            }
            r
        });
        Ok(Background {
            node_netns: topo.names.node.clone(),
            go,
            traffic: Traffic {
                stop,
                thread: Arc::new(Mutex::new(Some(thread))),
            },
            topo,
        })
    }

    /// For `record/top/check --lab`: builds the lab with its traffic held back
    /// and points the session at its node. The caller resumes the traffic once
    /// the session is attached, so that every failure the kernel counts is one
    /// ctrace saw.
    pub fn for_session(
        kind: Option<LabKind>,
        cfg: &mut crate::session::SessionConfig,
    ) -> Result<Option<Background>> {
        let Some(kind) = kind else { return Ok(None) };
        let b = Self::start_paused(kind, "ctlab")?;
        cfg.netns = Some(b.node_netns().to_string());
        cfg.lab = true;
        Ok(Some(b))
    }

    /// Lets the traffic run.
    pub fn resume(&mut self) {
        self.go.store(true, Ordering::Relaxed);
    }

    /// Stops the traffic and waits for the current iteration to end (a few
    /// seconds at most); the namespaces stay until drop. A recorder calls this
    /// before it detaches, so that no failure happens untraced.
    pub fn stop_traffic(&mut self) {
        self.traffic.stop();
    }

    /// A handle that stops the traffic from another thread (the session's,
    /// in `top`), before that thread detaches the probes.
    pub fn traffic(&self) -> Traffic {
        self.traffic.clone()
    }

    /// The node's netns name (what --netns takes).
    pub fn node_netns(&self) -> &str {
        &self.node_netns
    }

    /// The node netns's inode (events' `netns`).
    pub fn node_inode(&self) -> u32 {
        self.topo.node_inode
    }

    /// Whether the traffic loop has ended (bounds reached or an error).
    pub fn finished(&self) -> bool {
        self.traffic.ended()
    }
}

/// The lab's traffic thread, stoppable from any thread.
#[derive(Clone)]
pub struct Traffic {
    stop: Stop,
    thread: Arc<Mutex<Option<JoinHandle<Result<()>>>>>,
}

impl Traffic {
    /// Asks the traffic to stop after its current iteration, without waiting.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the traffic thread has ended (or was already joined).
    pub fn ended(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().map_or(true, |t| t.is_finished()))
            .unwrap_or(true)
    }

    /// Stops the traffic and waits for its current iteration to end.
    pub fn stop(&self) {
        self.request_stop();
        let t = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

fn background_loop(kind: LabKind, t: &Topology, stop: &Stop) -> Result<()> {
    let t0 = Instant::now();
    let mut ct = t.node_ctnetlink()?;
    let obs = match kind {
        LabKind::InvalidRst => Some(invalid::Observers::start(t)?),
        LabKind::SnatRace | LabKind::UdpRace => None,
    };
    let mut i = 0u32;
    while !stopped(stop) && i < Background::MAX_ITERATIONS && t0.elapsed() < Background::MAX_TIME {
        match (kind, &obs) {
            (LabKind::SnatRace, _) => {
                snat::run_round(t, snat::Variant::Deterministic, i)?;
            }
            (LabKind::InvalidRst, Some(o)) => {
                let f = invalid::Forged::ALL[(i % 3) as usize];
                invalid::run_case(t, o, &mut ct, invalid::Config::Default, f, i)?;
            }
            (LabKind::InvalidRst, None) => anyhow::bail!("no packet observers"),
            // one round of each phase: same-port datagrams lost, then the
            // A/AAAA pairs merged
            (LabKind::UdpRace, _) => {
                udp::prepare(t, udp::PhaseKind::Dropped)?;
                udp::dropped_round(t, i)?;
                if stopped(stop) {
                    break;
                }
                udp::prepare(t, udp::PhaseKind::Resolved)?;
                udp::resolved_round(t, i)?;
            }
        }
        i += 1;
        // pause, staying responsive to stop
        let p = Instant::now();
        while p.elapsed() < Background::PAUSE && !stopped(stop) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop_traffic();
        // `topo` (the last Arc once the thread has ended) deletes the namespaces
    }
}
