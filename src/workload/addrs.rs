//! Where a network namespace's addresses come from: netlink (`RTM_GETADDR`
//! inside the namespace) on a node, a file of a fixture tree in tests.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::netlink::{attrs, Conn, NLM_F_DUMP, NLM_F_REQUEST};
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
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// RTM_GETADDR dump of the calling thread's network namespace.
pub fn dump_addresses() -> Result<Vec<IpAddr>> {
    let mut conn = Conn::open(NETLINK_ROUTE, "rtnetlink", 2)?;
    // struct ifaddrmsg (8), family AF_UNSPEC: every family
    match conn.exchange(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, &[0u8; 8])? {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter(|m| u16::from_ne_bytes([m[4], m[5]]) == RTM_NEWADDR)
            .filter_map(|m| parse_newaddr(&m[16..]))
            .collect()),
        Err(code) => {
            Err(io::Error::from_raw_os_error(code)).context("rtnetlink refused RTM_GETADDR")
        }
    }
}

/// One RTM_NEWADDR payload (ifaddrmsg + attributes): IFA_LOCAL where given
/// (the peer is IFA_ADDRESS on point-to-point links), else IFA_ADDRESS.
fn parse_newaddr(p: &[u8]) -> Option<IpAddr> {
    let family = *p.first()?;
    let (mut local, mut address) = (None, None);
    for (ty, v) in attrs(p.get(8..)?) {
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
