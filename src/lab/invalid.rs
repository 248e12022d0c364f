//! `ctrace lab invalid-rst`: one forged segment on a NATed connection, from
//! the server's side, and what conntrack, the node and the client make of it.
//!
//! Each case uses a fresh connection pods → node (SNAT) → server. The server
//! netns sniffs the connection (AF_PACKET) to learn the current seq/ack, then
//! a raw socket sends one segment: data far below the window ("SEQ under lower
//! bound"), data far above it ("SEQ over upper bound") or an ACK of data never
//! sent ("ACK over upper bound"). Then: the node's `invalid` delta (ctnetlink
//! in the node netns), the RSTs the node itself sent (AF_PACKET in the node
//! netns: outgoing RSTs with the node's initial TTL — forwarded ones have
//! one less), and whether the client's connection still echoes.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::sock::{self, Segment, Sniffer, ACK, PSH, RST};
use super::topology::{cmd_in, stopped, sysctl, Stop, Topology};
use crate::ctstat::CtNetlink;

/// Server ports of the cases: base + case number % count.
pub const SERVER_PORT_BASE: u16 = 9000;
pub const SERVER_PORTS: u16 = 64;
/// How far outside the window the forged segments are (well inside 2^31).
const FAR: u32 = 1 << 30;
/// The initial TTL of packets the node itself sends (the netns default).
const NODE_TTL: u8 = 64;

pub fn server_ports() -> Vec<u16> {
    (0..SERVER_PORTS).map(|i| SERVER_PORT_BASE + i).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forged {
    SeqUnder,
    SeqOver,
    AckOver,
}

impl Forged {
    pub const ALL: [Forged; 3] = [Forged::SeqUnder, Forged::SeqOver, Forged::AckOver];
    pub fn describe(self) -> &'static str {
        match self {
            Forged::SeqUnder => "SEQ under lower bound",
            Forged::SeqOver => "SEQ over upper bound",
            Forged::AckOver => "ACK over upper bound",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Config {
    /// Default sysctls, no rule.
    Default,
    /// net.netfilter.nf_conntrack_tcp_be_liberal=1 in the node netns.
    BeLiberal,
    /// iptables -I INPUT -m conntrack --ctstate INVALID -j DROP in the node.
    InputDrop,
}

impl Config {
    pub const ALL: [Config; 3] = [Config::Default, Config::BeLiberal, Config::InputDrop];
    pub fn describe(self) -> &'static str {
        match self {
            Config::Default => "default",
            Config::BeLiberal => "nf_conntrack_tcp_be_liberal=1",
            Config::InputDrop => "INPUT -m conntrack --ctstate INVALID -j DROP",
        }
    }

    const RULE: [&'static str; 9] = [
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
        "-w",
        "5",
    ];

    /// Applies this configuration in the node netns.
    pub fn apply(self, t: &Topology) -> Result<()> {
        match self {
            Config::Default => Ok(()),
            Config::BeLiberal => sysctl(
                &t.names.node,
                "net.netfilter.nf_conntrack_tcp_be_liberal",
                "1",
            ),
            Config::InputDrop => {
                let mut a = vec!["-I"];
                a.extend_from_slice(&Self::RULE);
                cmd_in(&t.names.node, t.iptables(), &a)
            }
        }
    }

    /// Undoes `apply`.
    pub fn revert(self, t: &Topology) -> Result<()> {
        match self {
            Config::Default => Ok(()),
            Config::BeLiberal => sysctl(
                &t.names.node,
                "net.netfilter.nf_conntrack_tcp_be_liberal",
                "0",
            ),
            Config::InputDrop => {
                let mut a = vec!["-D"];
                a.extend_from_slice(&Self::RULE);
                cmd_in(&t.names.node, t.iptables(), &a)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// The connection still echoes.
    Alive,
    /// A read or write failed with ECONNRESET (or EPIPE).
    Reset,
    /// No echo within the timeout, no error.
    Stalled,
}

#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub config: Config,
    pub forged: Forged,
    /// The node's conntrack `invalid` delta over the case.
    pub invalid: u64,
    /// RSTs the node itself sent over the case.
    pub node_rst: u64,
    pub client: Fate,
    /// The connection (client side, translated port, server port).
    pub client_addr: String,
    pub nat_port: u16,
    pub server_port: u16,
    /// The forged segment's seq and ack.
    pub seq: u32,
    pub ack: u32,
}

/// Sequence state of one connection, per server port, as the server sees it.
#[derive(Clone, Copy, Debug, Default)]
struct ConnSeq {
    peer: Option<SocketAddr>,
    srv_next: u32,
    cli_next: u32,
    srv_bytes: u64,
    cli_bytes: u64,
}

/// The lab's observers: an AF_PACKET socket in the server netns (the
/// connections' seq/ack) and one in the node netns (RSTs the node sends).
/// They are read on demand, draining what the kernel queued synchronously
/// when the packets passed, so a count read after a case is complete — no
/// sniffer thread that might lag behind.
pub struct Observers {
    server_ip: IpAddr,
    server: Sniffer,
    node: Sniffer,
    state: Mutex<ObsState>,
}

#[derive(Default)]
struct ObsState {
    conns: HashMap<u16, ConnSeq>,
    node_rsts: u64,
}

impl Observers {
    pub fn start(t: &Topology) -> Result<Observers> {
        let server = crate::netns::run_in(&t.names.server, || {
            Sniffer::open().context("opening an AF_PACKET socket in the server netns")
        })?;
        let node = crate::netns::run_in(&t.names.node, || {
            Sniffer::open().context("opening an AF_PACKET socket in the node netns")
        })?;
        Ok(Observers {
            server_ip: t.server_addr(),
            server,
            node,
            state: Mutex::default(),
        })
    }

    /// Reads everything queued on both sockets.
    fn drain(&self) -> Result<std::sync::MutexGuard<'_, ObsState>> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("lab observer state poisoned"))?;
        while let Some(s) = self.server.try_next()? {
            let (port, from_server) = if s.src.ip() == self.server_ip {
                (s.src.port(), true)
            } else if s.dst.ip() == self.server_ip {
                (s.dst.port(), false)
            } else {
                continue;
            };
            let c = st.conns.entry(port).or_default();
            if from_server {
                c.srv_next = s.seq_end();
                c.srv_bytes += s.len as u64;
            } else {
                if c.peer != Some(s.src) {
                    // a new connection on this port starts over
                    *c = ConnSeq {
                        peer: Some(s.src),
                        ..Default::default()
                    };
                }
                c.cli_next = s.seq_end();
                c.cli_bytes += s.len as u64;
            }
        }
        while let Some(s) = self.node.try_next()? {
            if s.outgoing && s.flags & RST != 0 && s.ttl == NODE_TTL {
                st.node_rsts += 1;
            }
        }
        Ok(st)
    }

    fn conn(&self, port: u16) -> Result<Option<ConnSeq>> {
        Ok(self.drain()?.conns.get(&port).copied())
    }

    /// RSTs the node's own stack has sent since the observers started.
    pub fn rsts(&self) -> Result<u64> {
        Ok(self.drain()?.node_rsts)
    }
}

const PING: &[u8] = &[b'x'; 100];

fn open_conn(t: &Topology, port: u16) -> Result<TcpStream> {
    let local = SocketAddr::new(t.client_addr(0), 0);
    let dst = SocketAddr::new(t.server_addr(), port);
    crate::netns::run_in(&t.names.pods, move || {
        let mut s = sock::connect_from(local, dst)
            .with_context(|| format!("client: connecting to {dst} through the node"))?;
        sock::set_timeouts(&s, Duration::from_secs(2))?;
        s.write_all(PING)?;
        let mut b = [0u8; 100];
        s.read_exact(&mut b).context("client: reading the echo")?;
        Ok(s)
    })
}

/// Writes a probe and waits for its echo.
fn probe(s: &mut TcpStream) -> Fate {
    let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
    let fate = |e: std::io::Error| match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            Fate::Reset
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Fate::Stalled,
        _ => Fate::Reset,
    };
    if let Err(e) = s.write_all(b"probe-after-forge") {
        return fate(e);
    }
    let mut b = [0u8; 17];
    match s.read_exact(&mut b) {
        Ok(()) => Fate::Alive,
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Fate::Reset,
        Err(e) => fate(e),
    }
}

/// One case: a fresh connection, one forged segment, the consequences.
/// `config` must already be applied.
pub fn run_case(
    t: &Topology,
    obs: &Observers,
    ct: &mut CtNetlink,
    config: Config,
    forged: Forged,
    n: u32,
) -> Result<Case> {
    let port = SERVER_PORT_BASE + (n % SERVER_PORTS as u32) as u16;
    let mut s = open_conn(t, port)?;
    let client_addr = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    // wait until the sniffer has seen the ping and its echo
    let t0 = Instant::now();
    let c = loop {
        match obs.conn(port)? {
            Some(c) if c.srv_bytes >= PING.len() as u64 && c.cli_bytes >= PING.len() as u64 => {
                break c
            }
            _ if t0.elapsed() > Duration::from_secs(3) => {
                bail!("the server-side sniffer did not see connection {client_addr} → port {port}")
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let Some(peer) = c.peer else {
        bail!("no peer for port {port}");
    };
    let (seq, ack, flags, payload) = match forged {
        Forged::SeqUnder => (
            c.srv_next.wrapping_sub(FAR),
            c.cli_next,
            ACK | PSH,
            vec![b'u'; 64],
        ),
        Forged::SeqOver => (
            c.srv_next.wrapping_add(FAR),
            c.cli_next,
            ACK | PSH,
            vec![b'o'; 64],
        ),
        Forged::AckOver => (c.srv_next, c.cli_next.wrapping_add(FAR), ACK, Vec::new()),
    };
    let seg = Segment {
        src: SocketAddr::new(t.server_addr(), port),
        dst: peer,
        seq,
        ack,
        flags,
        window: 502,
        payload,
    };
    std::thread::sleep(Duration::from_millis(50));
    let before = super::topology::snapshot(ct)?;
    let rst0 = obs.rsts()?;
    let seg2 = seg.clone();
    crate::netns::run_in(&t.names.server, move || {
        sock::send_raw(&seg2).context("sending the forged segment from the server netns")
    })?;
    std::thread::sleep(Duration::from_millis(200));
    let client = probe(&mut s);
    // close (FIN if alive) and let the close settle inside the case's window
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let after = super::topology::snapshot(ct)?;
    Ok(Case {
        config,
        forged,
        invalid: after.delta(&before).total().invalid,
        node_rst: obs.rsts()? - rst0,
        client,
        client_addr,
        nat_port: peer.port(),
        server_port: port,
        seq,
        ack,
    })
}

/// Every forged segment under every configuration (9 cases).
pub fn run_all(
    t: &Topology,
    obs: &Observers,
    ct: &mut CtNetlink,
    stop: &Stop,
) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    let mut n = 0;
    for config in Config::ALL {
        config.apply(t)?;
        let mut r = Ok(());
        for forged in Forged::ALL {
            if stopped(stop) {
                r = Err(anyhow::anyhow!("interrupted"));
                break;
            }
            match run_case(t, obs, ct, config, forged, n) {
                Ok(c) => out.push(c),
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
            n += 1;
        }
        config.revert(t)?;
        r?;
    }
    Ok(out)
}

fn find(cases: &[Case], c: Config, f: Forged) -> Option<&Case> {
    cases.iter().find(|x| x.config == c && x.forged == f)
}

/// One line on what this kernel does, from the default-config cases.
pub fn verdict(cases: &[Case]) -> String {
    let mut parts = Vec::new();
    if let Some(c) = find(cases, Config::Default, Forged::SeqUnder) {
        parts.push(if c.invalid == 0 {
            "out-of-window retransmissions (SEQ under lower bound) are IGNORED".to_string()
        } else {
            format!(
                "out-of-window retransmissions (SEQ under lower bound) are INVALID{}",
                if c.client == Fate::Reset {
                    " and reset the connection"
                } else {
                    ""
                }
            )
        });
    }
    for f in [Forged::SeqOver, Forged::AckOver] {
        if let Some(c) = find(cases, Config::Default, f) {
            let what = if c.invalid == 0 {
                "IGNORED or accepted"
            } else {
                "INVALID"
            };
            let cons = match (c.node_rst > 0, c.client) {
                (_, Fate::Reset) => " and resets the connection",
                (true, _) => " (the node sends a RST; the client survived)",
                _ => "",
            };
            parts.push(format!("{} is {what}{cons}", f.describe()));
        }
    }
    for cfg in [Config::BeLiberal, Config::InputDrop] {
        let cs: Vec<&Case> = cases.iter().filter(|c| c.config == cfg).collect();
        if cs.is_empty() {
            continue;
        }
        let inv: u64 = cs.iter().map(|c| c.invalid).sum();
        let rst: u64 = cs.iter().map(|c| c.node_rst).sum();
        let resets = cs.iter().filter(|c| c.client == Fate::Reset).count();
        parts.push(format!(
            "with {}: invalid +{inv}, node RSTs {rst}, connections reset {resets}",
            cfg.describe()
        ));
    }
    format!("this kernel: {}", parts.join("; "))
}

pub fn print(cases: &[Case]) {
    println!(
        "{:<46} {:<22} {:>8} {:>9}  client",
        "node configuration", "forged segment", "invalid", "node RST"
    );
    for c in cases {
        println!(
            "{:<46} {:<22} {:>8} {:>9}  {:?}",
            c.config.describe(),
            c.forged.describe(),
            format!("+{}", c.invalid),
            c.node_rst,
            c.client
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(config: Config, forged: Forged, invalid: u64, node_rst: u64, client: Fate) -> Case {
        Case {
            config,
            forged,
            invalid,
            node_rst,
            client,
            client_addr: String::new(),
            nat_port: 40000,
            server_port: 9000,
            seq: 0,
            ack: 0,
        }
    }

    #[test]
    fn verdict_names_what_the_kernel_did() {
        // what 6.1, 6.12 and 6.18 do (KERNEL.md §7)
        let cases = vec![
            case(Config::Default, Forged::SeqUnder, 0, 0, Fate::Alive),
            case(Config::Default, Forged::SeqOver, 2, 1, Fate::Reset),
            case(Config::Default, Forged::AckOver, 2, 1, Fate::Alive),
            case(Config::BeLiberal, Forged::SeqOver, 0, 0, Fate::Alive),
            case(Config::InputDrop, Forged::SeqOver, 1, 0, Fate::Alive),
        ];
        let v = verdict(&cases);
        assert!(v.starts_with("this kernel: out-of-window retransmissions (SEQ under lower bound) are IGNORED; SEQ over upper bound is INVALID and resets the connection"), "{v}");
        assert!(
            v.contains(
                "ACK over upper bound is INVALID (the node sends a RST; the client survived)"
            ),
            "{v}"
        );
        assert!(
            v.contains("with nf_conntrack_tcp_be_liberal=1: invalid +0, node RSTs 0"),
            "{v}"
        );
        // ≤ 6.0: the retransmission itself is INVALID and resets
        let old = vec![case(Config::Default, Forged::SeqUnder, 2, 1, Fate::Reset)];
        assert!(verdict(&old).contains("are INVALID and reset the connection"));
    }
}
