//! The lab's throwaway topology: pods → node (NAT, ip_forward) → server, as
//! three network namespaces joined by veth pairs. Everything (links,
//! addresses, rules, sysctls) lives inside those namespaces; the host's own
//! configuration is never touched. Dropping a [`Topology`] deletes them all.
//!
//! With `ipv6` the same topology also carries IPv6 (ULA fd77::/48: pods
//! fd77:0:0:1::/64, outside fd77:0:0:2::/64, with the same host numbers as
//! IPv4), forwarding on in the node, DAD off (`accept_dad=0` and `nodad`, so
//! addresses are usable at once) and router solicitations off; the labs then
//! send their traffic over IPv6 and the NAT rules go to ip6tables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

use crate::ctstat::{CtNetlink, Snapshot};

/// Pods side: 10.77.0.0/24, the node is .1, client i is .(11+i).
pub const NODE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Outside (TEST-NET-1): the node's address there is what SNAT translates to.
pub const NODE_OUT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The node's interface towards the server (the one NAT rules match with -o).
pub const NODE_OUT_IF: &str = "up0";
pub const NODE_POD_IF: &str = "pods0";
/// The most clients a topology gives addresses to.
pub const MAX_CLIENTS: usize = 32;

pub fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 11 + i as u8)
}

/// A second address of the server netns (a second backend behind a DNAT).
pub const SERVER_IP2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
/// A service address (ClusterIP-like) that the node DNATs; nothing owns it.
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The IPv6 twins (ULA): pods side fd77:0:0:1::/64, outside fd77:0:0:2::/64.
pub const NODE_POD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 1, 0, 0, 0, 1);
pub const NODE_OUT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 2, 0, 0, 0, 1);
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 2, 0, 0, 0, 2);
pub const SERVER_IP6_2: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 2, 0, 0, 0, 3);
pub const SERVICE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0x96, 0, 0, 0, 0x10);

pub fn client_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, 1, 0, 0, 0, 0x11 + i as u16)
}

/// Names of the three namespaces.
#[derive(Clone, Debug)]
pub struct Names {
    pub pods: String,
    pub node: String,
    pub server: String,
}

impl Names {
    /// `<prefix>-<pid>-{pods,node,srv}`.
    pub fn new(prefix: &str) -> Result<Names> {
        if prefix.is_empty()
            || prefix.len() > 40
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("--prefix '{prefix}': use 1-40 characters from [A-Za-z0-9_-]");
        }
        let base = format!("{prefix}-{}", std::process::id());
        Ok(Names {
            pods: format!("{base}-pods"),
            node: format!("{base}-node"),
            server: format!("{base}-srv"),
        })
    }

    pub fn all(&self) -> [&str; 3] {
        [&self.pods, &self.node, &self.server]
    }
}

/// The running topology. Drop removes every namespace it created (and with
/// them their links, addresses, rules and sysctls).
pub struct Topology {
    pub names: Names,
    /// The node netns's inode (what events carry in `netns`).
    pub node_inode: u32,
    pub clients: usize,
    /// The labs' traffic and NAT rules use IPv6 (the IPv4 addresses stay).
    pub ipv6: bool,
    created: Vec<String>,
}

/// Runs `ip` (or another tool) and fails with its stderr.
pub fn cmd(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {prog} (is iproute2/iptables installed?)"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a command inside a netns (`ip netns exec`).
pub fn cmd_in(ns: &str, prog: &str, args: &[&str]) -> Result<()> {
    let mut a = vec!["netns", "exec", ns, prog];
    a.extend_from_slice(args);
    cmd("ip", &a)
}

/// Writes a sysctl of the given netns (net.* sysctls are per netns: a thread
/// that entered the netns sees that netns's /proc/sys/net).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let (key, value) = (key.to_string(), value.to_string());
    crate::netns::run_in(ns, move || {
        std::fs::write(&path, &value)
            .with_context(|| format!("setting {key}={value} (writing {path})"))?;
        let back = std::fs::read_to_string(&path)?;
        if back.trim() != value {
            bail!("{key} reads back '{}' after writing '{value}'", back.trim());
        }
        Ok(())
    })
}

/// Starts a thread inside a netns. The closure runs only if entering worked.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        crate::netns::enter(&ns)?;
        f()
    })
}

/// Joins a lab thread, turning a panic into an error.
pub fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a lab thread panicked"))?
}

impl Topology {
    /// Builds pods → node → server with `clients` client addresses in the
    /// pods netns (IPv4). Refuses to run if any of the names exists already.
    pub fn create(prefix: &str, clients: usize) -> Result<Topology> {
        Self::create_with(prefix, clients, false)
    }

    /// [`Topology::create`], with IPv6 addresses, routes and forwarding too
    /// when `ipv6`.
    pub fn create_with(prefix: &str, clients: usize, ipv6: bool) -> Result<Topology> {
        if clients == 0 || clients > MAX_CLIENTS {
            bail!("the lab supports 1 to {MAX_CLIENTS} clients");
        }
        if euid() != 0 {
            bail!("ctrace lab creates network namespaces: run it as root");
        }
        let names = Names::new(prefix)?;
        remove_stale(prefix);
        for n in names.all() {
            if Path::new("/run/netns").join(n).exists() {
                bail!(
                    "network namespace '{n}' exists already: remove it ('ip netns del {n}') or choose another --prefix"
                );
            }
        }
        let mut t = Topology {
            names: names.clone(),
            node_inode: 0,
            clients,
            ipv6,
            created: Vec::new(),
        };
        // From here on, an error drops `t`, which deletes what was created.
        for n in names.all() {
            cmd("ip", &["netns", "add", n])?;
            t.created.push(n.to_string());
        }
        t.configure()?;
        t.node_inode = crate::netns::run_in(&names.node, crate::netns::current_inode)?;
        Ok(t)
    }

    fn configure(&self) -> Result<()> {
        let Names { pods, node, server } = &self.names;
        for n in self.names.all() {
            if self.ipv6 {
                // IPv6 without DAD delays (addresses usable at once) and
                // without router solicitations; set on `default` before the
                // veths exist, so that they inherit it
                for (k, v) in [
                    ("net.ipv6.conf.all.disable_ipv6", "0"),
                    ("net.ipv6.conf.default.disable_ipv6", "0"),
                    ("net.ipv6.conf.all.accept_dad", "0"),
                    ("net.ipv6.conf.default.accept_dad", "0"),
                    ("net.ipv6.conf.all.router_solicitations", "0"),
                    ("net.ipv6.conf.default.router_solicitations", "0"),
                ] {
                    sysctl(n, k, v)?;
                }
            } else {
                // no IPv6 chatter (router solicitations, DAD) in the lab
                for k in [
                    "net.ipv6.conf.all.disable_ipv6",
                    "net.ipv6.conf.default.disable_ipv6",
                ] {
                    let _ = sysctl(n, k, "1");
                }
            }
            cmd("ip", &["-n", n, "link", "set", "lo", "up"])?;
        }
        cmd(
            "ip",
            &[
                "-n",
                node,
                "link",
                "add",
                NODE_POD_IF,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pods,
            ],
        )?;
        cmd(
            "ip",
            &[
                "-n",
                node,
                "link",
                "add",
                NODE_OUT_IF,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                server,
            ],
        )?;
        let node_pod = format!("{NODE_POD_IP}/24");
        let node_out = format!("{NODE_OUT_IP}/24");
        let srv = format!("{SERVER_IP}/24");
        cmd(
            "ip",
            &["-n", node, "addr", "add", &node_pod, "dev", NODE_POD_IF],
        )?;
        cmd(
            "ip",
            &["-n", node, "addr", "add", &node_out, "dev", NODE_OUT_IF],
        )?;
        cmd("ip", &["-n", server, "addr", "add", &srv, "dev", "eth0"])?;
        for i in 0..self.clients {
            let a = format!("{}/24", client_ip(i));
            cmd("ip", &["-n", pods, "addr", "add", &a, "dev", "eth0"])?;
        }
        for (n, dev) in [
            (node.as_str(), NODE_POD_IF),
            (node.as_str(), NODE_OUT_IF),
            (pods.as_str(), "eth0"),
            (server.as_str(), "eth0"),
        ] {
            cmd("ip", &["-n", n, "link", "set", dev, "up"])?;
        }
        let gw = NODE_POD_IP.to_string();
        cmd("ip", &["-n", pods, "route", "add", "default", "via", &gw])?;
        sysctl(node, "net.ipv4.ip_forward", "1")?;
        if self.ipv6 {
            let mut addrs = vec![
                (node.as_str(), NODE_POD_IF, format!("{NODE_POD_IP6}/64")),
                (node.as_str(), NODE_OUT_IF, format!("{NODE_OUT_IP6}/64")),
                (server.as_str(), "eth0", format!("{SERVER_IP6}/64")),
            ];
            for i in 0..self.clients {
                addrs.push((pods.as_str(), "eth0", format!("{}/64", client_ip6(i))));
            }
            for (n, dev, a) in &addrs {
                cmd(
                    "ip",
                    &["-n", n, "-6", "addr", "add", a, "dev", dev, "nodad"],
                )?;
            }
            let gw6 = NODE_POD_IP6.to_string();
            cmd(
                "ip",
                &["-n", pods, "-6", "route", "add", "default", "via", &gw6],
            )?;
            sysctl(node, "net.ipv6.conf.all.forwarding", "1")?;
        }
        // Losers of the race give up after one retransmit (~3 s), not ~127 s.
        sysctl(pods, "net.ipv4.tcp_syn_retries", "1")?;
        Ok(())
    }

    /// Replaces the node's NAT rule (POSTROUTING towards the server), in
    /// iptables or, for an IPv6 topology, ip6tables.
    pub fn set_nat_rule(&self, target: &[&str]) -> Result<()> {
        let node = &self.names.node;
        cmd_in(node, self.iptables(), &["-t", "nat", "-F", "POSTROUTING"])?;
        let mut a = vec![
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            NODE_OUT_IF,
            "-p",
            "tcp",
        ];
        a.extend_from_slice(target);
        cmd_in(node, self.iptables(), &a)
    }

    /// `iptables` or `ip6tables`, by the topology's family.
    pub fn iptables(&self) -> &'static str {
        if self.ipv6 {
            "ip6tables"
        } else {
            "iptables"
        }
    }

    /// Client i's address in the lab's family.
    pub fn client_addr(&self, i: usize) -> IpAddr {
        if self.ipv6 {
            client_ip6(i).into()
        } else {
            client_ip(i).into()
        }
    }

    /// The server's address in the lab's family.
    pub fn server_addr(&self) -> IpAddr {
        if self.ipv6 {
            SERVER_IP6.into()
        } else {
            SERVER_IP.into()
        }
    }

    /// The server netns's second address (the second DNAT backend); it
    /// exists once [`Topology::add_second_backend`] ran.
    pub fn server_addr2(&self) -> IpAddr {
        if self.ipv6 {
            SERVER_IP6_2.into()
        } else {
            SERVER_IP2.into()
        }
    }

    /// The node's address towards the server (what SNAT translates to).
    pub fn node_out_addr(&self) -> IpAddr {
        if self.ipv6 {
            NODE_OUT_IP6.into()
        } else {
            NODE_OUT_IP.into()
        }
    }

    /// The service address the node DNATs.
    pub fn service_addr(&self) -> IpAddr {
        if self.ipv6 {
            SERVICE_IP6.into()
        } else {
            SERVICE_IP.into()
        }
    }

    /// For DNAT labs: a second server address and the server's route back to
    /// the pods through the node (SNAT labs need none: the server answers the
    /// node's own address).
    pub fn add_second_backend(&self) -> Result<()> {
        let (srv, pods, gw, plen) = if self.ipv6 {
            (
                self.names.server.as_str(),
                "fd77:0:0:1::/64",
                NODE_OUT_IP6.to_string(),
                64,
            )
        } else {
            (
                self.names.server.as_str(),
                "10.77.0.0/24",
                NODE_OUT_IP.to_string(),
                24,
            )
        };
        let fam = if self.ipv6 { "-6" } else { "-4" };
        let a = format!("{}/{plen}", self.server_addr2());
        let mut args = vec!["-n", srv, fam, "addr", "add", &a, "dev", "eth0"];
        if self.ipv6 {
            args.push("nodad");
        }
        cmd("ip", &args)?;
        cmd("ip", &["-n", srv, fam, "route", "add", pods, "via", &gw])
    }

    /// With `on`, turns on GRO and threaded NAPI on the node's pod-facing
    /// veth, so that datagrams sent at the same moment reach the node in one
    /// receive batch (see `udp.rs` for what this does to conntrack and what
    /// it measured); without, turns GRO off (no NAPI: each packet is
    /// processed in its sender's softirq, on the sender's CPU).
    pub fn batch_pod_receive(&self, on: bool) -> Result<()> {
        let dev = NODE_POD_IF;
        crate::netns::run_in(&self.names.node, move || {
            super::sock::set_gro(dev, on)
                .with_context(|| format!("setting GRO {on} on {dev} (SIOCETHTOOL)"))
        })?;
        if !on {
            return Ok(());
        }
        // sysfs shows the netns it was mounted in: `ip netns exec` mounts the
        // node's own
        cmd_in(
            &self.names.node,
            "sh",
            &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")],
        )
        .with_context(|| format!("turning threaded NAPI on for {dev}"))
    }

    /// A ctnetlink socket bound to the node's netns.
    pub fn node_ctnetlink(&self) -> Result<CtNetlink> {
        crate::netns::run_in(&self.names.node, CtNetlink::open)
    }
}

/// Reads the node's counters (and its table fill) through a socket opened there.
pub fn snapshot(ct: &mut CtNetlink) -> Result<Snapshot> {
    ct.per_cpu()
        .context("reading conntrack statistics in the node netns")
}

/// Removes namespaces that an earlier lab with this prefix left behind when
/// it was killed outright (SIGKILL runs no cleanup): only names of exactly the
/// lab's form, `<prefix>-<pid>-{pods,node,srv}`, whose pid no longer runs.
fn remove_stale(prefix: &str) {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some((pid, role)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !["pods", "node", "srv"].contains(&role) || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        crate::sys::say(format!(
            "ctrace lab: removing netns {name} left by an earlier lab (pid {pid} is gone)"
        ));
        if let Err(e) = cmd("ip", &["netns", "del", &name]) {
            crate::sys::say(format!("ctrace lab: could not remove {name}: {e:#}"));
        }
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in self.created.drain(..).rev() {
            if let Err(e) = cmd("ip", &["netns", "del", &n]) {
                crate::sys::say(format!("ctrace lab: could not remove netns {n}: {e:#}"));
            }
        }
    }
}

/// A stop flag shared by a lab's loops (set by Ctrl-C/SIGTERM or by Drop).
pub type Stop = Arc<std::sync::atomic::AtomicBool>;

pub fn stopped(s: &Stop) -> bool {
    s.load(std::sync::atomic::Ordering::Relaxed)
}
