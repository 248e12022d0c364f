//! Where a network namespace's addresses come from: netlink (`RTM_GETADDR`
//! inside the namespace) on a node, a file of a fixture tree in tests.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sched::{setns, CloneFlags};

/// A network namespace found on the node: its inode and a path that opens it
/// (`<root>/proc/<pid>/ns/net` or `<root>/run/netns/<name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    pub inode: u32,
    pub path: PathBuf,
}

/// The addresses each network namespace holds, by inode. Namespaces that
/// cannot be read (their last process exited) are left out.
pub trait AddrSource {
    fn addresses(&mut self, namespaces: &[Netns]) -> HashMap<u32, Vec<IpAddr>>;
}

/// The node's own answer: one short-lived helper thread enters each namespace
/// in turn (setns) and dumps its addresses over netlink; the caller's thread
/// never changes namespace.
pub struct NetlinkAddrs;

impl AddrSource for NetlinkAddrs {
    fn addresses(&mut self, namespaces: &[Netns]) -> HashMap<u32, Vec<IpAddr>> {
        let list = namespaces.to_vec();
        std::thread::Builder::new()
            .name("ctrace-addrs".into())
            .spawn(move || {
                let mut out = HashMap::new();
                for ns in list {
                    if let Ok(a) = addresses_in(&ns.path) {
                        out.insert(ns.inode, a);
                    }
                }
                out
            })
            .ok()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Enters the namespace at `path` (this thread stays there) and dumps its
/// addresses.
fn addresses_in(path: &Path) -> Result<Vec<IpAddr>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {} (needs CAP_SYS_ADMIN)", path.display()))?;
    dump_addresses()
}

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// RTM_GETADDR dump of the calling thread's network namespace.
pub fn dump_addresses() -> Result<Vec<IpAddr>> {
    let mut sock = Socket::new(NETLINK_ROUTE).context("opening a rtnetlink socket")?;
    sock.bind_auto().context("binding a rtnetlink socket")?;
    sock.connect(&SocketAddr::new(0, 0))
        .context("connecting a rtnetlink socket")?;
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: tv is a live timeval of the size passed; the fd is the socket's.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error()).context("setting a rtnetlink receive timeout");
    }
    // nlmsghdr (16) + struct ifaddrmsg (8), family AF_UNSPEC: every family
    let mut req = Vec::with_capacity(24);
    req.extend_from_slice(&24u32.to_ne_bytes());
    req.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]);
    sock.send(&req, 0).context("sending RTM_GETADDR")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sock
            .recv(&mut &mut buf[..], 0)
            .context("reading RTM_GETADDR")?;
        if n == 0 {
            bail!("rtnetlink closed the socket");
        }
        let mut off = 0;
        while off + 16 <= n {
            let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into()?) as usize;
            let mtype = u16::from_ne_bytes(buf[off + 4..off + 6].try_into()?);
            if mlen < 16 || off + mlen > n {
                bail!("malformed rtnetlink message");
            }
            match mtype {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => bail!("rtnetlink refused RTM_GETADDR"),
                RTM_NEWADDR => {
                    if let Some(a) = parse_newaddr(&buf[off + 16..off + mlen]) {
                        out.push(a);
                    }
                }
                _ => {}
            }
            off += (mlen + 3) & !3;
        }
    }
}

/// One RTM_NEWADDR payload (ifaddrmsg + attributes): IFA_LOCAL where given
/// (the peer is IFA_ADDRESS on point-to-point links), else IFA_ADDRESS.
fn parse_newaddr(p: &[u8]) -> Option<IpAddr> {
    let family = *p.first()?;
    let mut b = p.get(8..)?;
    let (mut local, mut address) = (None, None);
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        let v = &b[4..len];
        let ip = match (family as i32, v.len()) {
            (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
            (libc::AF_INET6, 16) => {
                let o: [u8; 16] = v.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => None,
        };
        match ty {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            _ => {}
        }
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    local.or(address)
}

/// A fixture's addresses: a text file, one namespace a line,
/// `<inode> <address> [<address>...]`; `#` starts a comment.
pub struct FileAddrs {
    pub path: PathBuf,
}

impl FileAddrs {
    pub fn new(path: impl Into<PathBuf>) -> FileAddrs {
        FileAddrs { path: path.into() }
    }
}

impl AddrSource for FileAddrs {
    fn addresses(&mut self, namespaces: &[Netns]) -> HashMap<u32, Vec<IpAddr>> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut out = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut it = line.split_whitespace();
            let Some(Ok(inode)) = it.next().map(str::parse::<u32>) else {
                continue;
            };
            if !namespaces.iter().any(|n| n.inode == inode) {
                continue;
            }
            let v: &mut Vec<IpAddr> = out.entry(inode).or_default();
            v.extend(it.filter_map(|a| a.parse::<IpAddr>().ok()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newaddr_prefers_local_over_the_peer() {
        // ifaddrmsg: AF_INET, /32, flags, scope, index 7
        let mut p = vec![libc::AF_INET as u8, 32, 0, 0, 7, 0, 0, 0];
        for (ty, a) in [(IFA_ADDRESS, [10, 0, 0, 2]), (IFA_LOCAL, [10, 0, 0, 1])] {
            p.extend_from_slice(&8u16.to_ne_bytes());
            p.extend_from_slice(&ty.to_ne_bytes());
            p.extend_from_slice(&a);
        }
        assert_eq!(parse_newaddr(&p), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_newaddr(&p[..16]), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(parse_newaddr(&p[..3]), None);
    }
}
