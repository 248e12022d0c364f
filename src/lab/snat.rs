//! `ctrace lab snat-race`: the NAT port-allocation race that ends in
//! conntrack insert failures (dropped SYNs, 1 s / 3 s connects).
//!
//! Deterministic: `-j SNAT --to-source <node>:<one port>` and several clients
//! connecting at the same instant to the same server port: only one entry can
//! own the single translated tuple, every other SYN (and each retransmit) loses
//! at confirm. Realistic: plain MASQUERADE, clients binding the same local
//! port at the same instant: NAT keeps the port for all of them while none is
//! confirmed yet, and the later inserts lose (probabilistic, needs parallel
//! CPUs).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::sock;
use super::topology::{stopped, Stop, Topology, NODE_OUT_IP, NODE_OUT_IP6};
use crate::ctstat::CpuStats;

/// The one translated port of the deterministic variant.
pub const SNAT_PORT: u16 = 40000;
/// Each round connects to its own server port (base + round % count), so that
/// a previous round's TIME_WAIT entry never owns the tuple a new round needs.
pub const SERVER_PORT_BASE: u16 = 8000;
pub const SERVER_PORTS: u16 = 64;
/// The local port the realistic variant's clients all bind (plus the round).
pub const CLIENT_PORT_BASE: u16 = 20000;
pub const CLIENTS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// SNAT to a single port: every loser's SYN fails at confirm.
    Deterministic,
    /// Plain MASQUERADE, same local port from every client at the same instant.
    Realistic,
}

impl Variant {
    /// The IPv4 rule's target.
    pub fn rule(self) -> Vec<String> {
        self.rule_for(false)
    }

    /// The rule's target for IPv4 (iptables) or IPv6 (ip6tables).
    pub fn rule_for(self, ipv6: bool) -> Vec<String> {
        match self {
            Variant::Deterministic => vec![
                "-j".into(),
                "SNAT".into(),
                "--to-source".into(),
                if ipv6 {
                    format!("[{NODE_OUT_IP6}]:{SNAT_PORT}")
                } else {
                    format!("{NODE_OUT_IP}:{SNAT_PORT}")
                },
            ],
            Variant::Realistic => vec!["-j".into(), "MASQUERADE".into()],
        }
    }

    /// Installs this variant's rule in the node (ip6tables for an IPv6 lab).
    pub fn install(self, t: &Topology) -> Result<()> {
        let r = self.rule_for(t.ipv6);
        let r: Vec<&str> = r.iter().map(String::as_str).collect();
        t.set_nat_rule(&r)
    }
}

pub fn server_ports() -> Vec<u16> {
    (0..SERVER_PORTS).map(|i| SERVER_PORT_BASE + i).collect()
}

/// What one client saw.
#[derive(Clone, Debug, Serialize)]
pub struct Client {
    pub local: String,
    pub connect_ms: u64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Client {
    /// "first", "1s", "3s" (SYN retransmits before the connect completed) or "failed".
    pub fn bucket(&self) -> &'static str {
        match (self.ok, self.connect_ms) {
            (false, _) => "failed",
            (true, 0..=499) => "first",
            (true, 500..=2499) => "1s",
            (true, _) => "3s",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Round {
    pub round: u32,
    pub server_port: u16,
    pub clients: Vec<Client>,
}

impl Round {
    pub fn connected(&self) -> usize {
        self.clients.iter().filter(|c| c.ok).count()
    }
}

/// One round: `CLIENTS` clients in the pods netns connect at the same instant
/// (a barrier), hold their connections until every client is done, then close
/// them (FIN). Bounded: a connect gives up after ~3 s (tcp_syn_retries=1).
pub fn run_round(t: &Topology, v: Variant, round: u32) -> Result<Round> {
    let server_port = SERVER_PORT_BASE + (round % SERVER_PORTS as u32) as u16;
    let dst = SocketAddr::new(t.server_addr(), server_port);
    let n = t.clients.min(CLIENTS);
    let start = Arc::new(Barrier::new(n));
    let done = Arc::new(Barrier::new(n));
    let mut hs = Vec::new();
    for i in 0..n {
        let local = match v {
            Variant::Deterministic => SocketAddr::new(t.client_addr(i), 0),
            Variant::Realistic => {
                SocketAddr::new(t.client_addr(i), CLIENT_PORT_BASE + (round % 20000) as u16)
            }
        };
        let (ns, start, done) = (t.names.pods.clone(), start.clone(), done.clone());
        hs.push(std::thread::spawn(move || {
            // Every thread reaches both barriers, whatever fails.
            let fd = crate::netns::enter(&ns)
                .map_err(|e| format!("{e:#}"))
                .and_then(|_| sock::prepare_connect(local).map_err(|e| e.to_string()));
            let bound = fd
                .as_ref()
                .ok()
                .and_then(|f| sock::local_addr(f).ok())
                .unwrap_or(local);
            start.wait();
            let t0 = Instant::now();
            let r = fd.and_then(|fd| sock::connect_prepared(fd, dst).map_err(|e| e.to_string()));
            let connect_ms = t0.elapsed().as_millis() as u64;
            let r = r.and_then(|mut s| {
                sock::set_timeouts(&s, Duration::from_secs(3)).map_err(|e| e.to_string())?;
                s.write_all(b"hi").map_err(|e| e.to_string())?;
                let mut b = [0u8; 2];
                s.read_exact(&mut b).map_err(|e| format!("echo: {e}"))?;
                Ok(s)
            });
            done.wait();
            let (ok, error) = match r {
                Ok(s) => {
                    drop(s);
                    (true, None)
                }
                Err(e) => (false, Some(e)),
            };
            Client {
                local: bound.to_string(),
                connect_ms,
                ok,
                error,
            }
        }));
    }
    let mut clients = Vec::new();
    for h in hs {
        clients.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("a lab client thread panicked"))?,
        );
    }
    // let the closing handshakes finish before anything is measured
    std::thread::sleep(Duration::from_millis(200));
    Ok(Round {
        round,
        server_port,
        clients,
    })
}

/// A phase: one variant's rule and its rounds, with the node's counter deltas.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub variant: Variant,
    pub rule: String,
    pub rounds: Vec<Round>,
    pub kernel: CpuStats,
    /// Clients by how their connect ended: first, 1s, 3s, failed.
    pub connects: std::collections::BTreeMap<String, usize>,
}

pub fn run_phase(
    t: &Topology,
    ct: &mut crate::ctstat::CtNetlink,
    v: Variant,
    rounds: u32,
    first_round: u32,
    stop: &Stop,
) -> Result<Phase> {
    v.install(t)?;
    let before = super::topology::snapshot(ct)?;
    let mut rs = Vec::new();
    for r in 0..rounds {
        if stopped(stop) {
            anyhow::bail!("interrupted");
        }
        rs.push(run_round(t, v, first_round + r)?);
    }
    let after = super::topology::snapshot(ct)?;
    let mut connects = std::collections::BTreeMap::new();
    for k in ["first", "1s", "3s", "failed"] {
        connects.insert(k.to_string(), 0);
    }
    for c in rs.iter().flat_map(|r| &r.clients) {
        *connects.entry(c.bucket().to_string()).or_default() += 1;
    }
    Ok(Phase {
        variant: v,
        rule: format!(
            "{} -t nat -A POSTROUTING -o up0 -p tcp {}",
            t.iptables(),
            v.rule_for(t.ipv6).join(" ")
        ),
        rounds: rs,
        kernel: after.delta(&before).total(),
        connects,
    })
}

impl Phase {
    pub fn print(&self) {
        let k = &self.kernel;
        let c = |b: &str| self.connects.get(b).copied().unwrap_or(0);
        println!(
            "{:?} ({} round(s), {}):",
            self.variant,
            self.rounds.len(),
            self.rule
        );
        println!(
            "  kernel (node netns): insert_failed +{}  drop +{}  invalid +{}  clash_resolve +{}",
            k.insert_failed, k.drop, k.invalid, k.clash_resolve
        );
        println!(
            "  clients: {} connected at once, {} after ~1 s, {} after ~3 s, {} failed",
            c("first"),
            c("1s"),
            c("3s"),
            c("failed")
        );
    }
}

pub fn verdict(det: &Phase, real: Option<&Phase>) -> String {
    let k = &det.kernel;
    let lost = det.connects.get("failed").copied().unwrap_or(0);
    let mut s = if k.insert_failed > 0 {
        format!(
            "reproduced: SNAT to one port made {} SYN(s) lose at conntrack confirm (insert_failed +{}, drop +{}); {} of {} clients never connected",
            k.insert_failed,
            k.insert_failed,
            k.drop,
            lost,
            det.rounds.iter().map(|r| r.clients.len()).sum::<usize>()
        )
    } else {
        "not reproduced: SNAT to one port gave no insert failures".to_string()
    };
    if let Some(r) = real {
        let slow =
            r.connects.get("1s").copied().unwrap_or(0) + r.connects.get("3s").copied().unwrap_or(0);
        s.push_str(&format!(
            "; MASQUERADE race: insert_failed +{} over {} round(s), {} slow connect(s) (mitigation: --random-fully)",
            r.kernel.insert_failed,
            r.rounds.len(),
            slow
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ok: bool, ms: u64) -> Client {
        Client {
            local: String::new(),
            connect_ms: ms,
            ok,
            error: None,
        }
    }

    #[test]
    fn connects_fall_into_syn_retransmit_buckets() {
        assert_eq!(client(true, 3).bucket(), "first");
        assert_eq!(client(true, 1010).bucket(), "1s");
        assert_eq!(client(true, 3020).bucket(), "3s");
        assert_eq!(client(false, 3050).bucket(), "failed");
    }

    #[test]
    fn rules_are_single_port_snat_and_plain_masquerade() {
        assert_eq!(
            Variant::Deterministic.rule().join(" "),
            "-j SNAT --to-source 192.0.2.1:40000"
        );
        assert_eq!(Variant::Realistic.rule().join(" "), "-j MASQUERADE");
        assert_eq!(
            Variant::Deterministic.rule_for(true).join(" "),
            "-j SNAT --to-source [fd77:0:0:2::1]:40000"
        );
    }
}
