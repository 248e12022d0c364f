//! The kernel's own conntrack statistics, read over ctnetlink in the current
//! network namespace (the same numbers `conntrack -S` prints), per CPU.

use std::io;

use anyhow::{bail, Context, Result};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use serde::{Deserialize, Serialize};

/// The kernel's conntrack statistics, each with its ctnetlink attribute
/// (CTA_STATS_*): the one list of counter names. CpuStats, KernelCounters,
/// their deltas, sums and the netlink parser are all made from it.
macro_rules! counters {
    ($($name:ident = $attr:literal),* $(,)?) => {
        /// One CPU's counters. Counters the running kernel does not report stay 0.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct CpuStats {
            pub cpu: u32,
            $(#[serde(default)] pub $name: u64,)*
        }

        /// Totals and per-CPU deltas of the kernel's conntrack statistics over
        /// a recording (the trailer's `kernel_counters`).
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct KernelCounters {
            $(#[serde(default)] pub $name: u64,)*
            #[serde(default)]
            pub per_cpu: Vec<CpuStats>,
        }

        /// The counter names, in the order the kernel's counters are shown.
        pub const COUNTER_NAMES: &[&str] = &[$(stringify!($name)),*];

        impl CpuStats {
            /// self - earlier, counter by counter (counters only grow; saturate anyway).
            pub fn delta(&self, earlier: &CpuStats) -> CpuStats {
                CpuStats {
                    cpu: self.cpu,
                    $($name: self.$name.saturating_sub(earlier.$name),)*
                }
            }

            fn add(&mut self, o: &CpuStats) {
                $(self.$name += o.$name;)*
            }

            /// Sets the counter of a CTA_STATS_* attribute; false if unknown.
            fn set_attr(&mut self, ty: u16, v: u64) -> bool {
                match ty {
                    $($attr => self.$name = v,)*
                    _ => return false,
                }
                true
            }

            /// (name, value) of every counter.
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),*]
            }
        }

        impl Snapshot {
            /// The totals and per-CPU values as the trailer records them.
            pub fn to_counters(&self) -> KernelCounters {
                let t = self.total();
                KernelCounters {
                    $($name: t.$name,)*
                    per_cpu: self.per_cpu.clone(),
                }
            }
        }
    };
}

counters! {
    insert_failed = 9,
    drop = 10,
    invalid = 4,
    clash_resolve = 14,
    found = 2,
    insert = 8,
    early_drop = 11,
    error = 12,
    search_restart = 13,
    chaintoolong = 15,
}

/// A snapshot of every CPU's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub per_cpu: Vec<CpuStats>,
}

impl Snapshot {
    pub fn total(&self) -> CpuStats {
        let mut t = CpuStats {
            cpu: u32::MAX,
            ..Default::default()
        };
        for c in &self.per_cpu {
            t.add(c);
        }
        t
    }

    /// Per-CPU deltas since `earlier` (CPUs matched by number).
    pub fn delta(&self, earlier: &Snapshot) -> Snapshot {
        let per_cpu = self
            .per_cpu
            .iter()
            .map(|c| match earlier.per_cpu.iter().find(|e| e.cpu == c.cpu) {
                Some(e) => c.delta(e),
                None => c.clone(),
            })
            .collect();
        Snapshot { per_cpu }
    }
}

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET_STATS_CPU: u16 = 4;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// A ctnetlink socket in the network namespace of the thread that opened it.
pub struct CtNetlink {
    sock: Socket,
    seq: u32,
}

impl CtNetlink {
    pub fn open() -> Result<CtNetlink> {
        let mut sock = Socket::new(NETLINK_NETFILTER)
            .context("cannot open a netfilter netlink socket (needs CAP_NET_ADMIN: run as root)")?;
        sock.bind_auto()
            .context("binding the netfilter netlink socket")?;
        sock.connect(&SocketAddr::new(0, 0))
            .context("connecting the netfilter netlink socket")?;
        // a reply that never comes must not hang the caller
        let tv = libc::timeval {
            tv_sec: 5,
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
            return Err(io::Error::last_os_error()).context("setting a ctnetlink receive timeout");
        }
        Ok(CtNetlink { sock, seq: 1 })
    }

    /// `dump`: a multi-part answer ended by NLMSG_DONE. Otherwise the kernel
    /// answers with one message and no DONE (ctnetlink_stat_ct): ask for an
    /// ACK, which ends the answer, or the read waits forever.
    fn request(&mut self, msg_type: u16, dump: bool) -> Result<Vec<Vec<u8>>> {
        self.seq += 1;
        let mut req = Vec::with_capacity(20);
        let len: u32 = 16 + 4;
        req.extend_from_slice(&len.to_ne_bytes());
        req.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg_type).to_ne_bytes());
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        req.extend_from_slice(&flags.to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg { family AF_UNSPEC, version NFNETLINK_V0, res_id 0 }
        req.extend_from_slice(&[0, 0, 0, 0]);
        self.sock
            .send(&req, 0)
            .context("sending a ctnetlink statistics request")?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self
                .sock
                .recv(&mut &mut buf[..], 0)
                .context("reading ctnetlink statistics")?;
            if n == 0 {
                bail!("ctnetlink closed the socket");
            }
            let mut off = 0;
            while off + 16 <= n {
                let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into()?) as usize;
                let mtype = u16::from_ne_bytes(buf[off + 4..off + 6].try_into()?);
                if mlen < 16 || off + mlen > n {
                    bail!("malformed ctnetlink message");
                }
                match mtype {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into()?);
                        if code == 0 {
                            return Ok(out);
                        }
                        let e = io::Error::from_raw_os_error(-code);
                        if -code == libc::EOPNOTSUPP || -code == libc::ENOENT {
                            bail!("conntrack is not available in this network namespace ({e}): is nf_conntrack loaded? try 'modprobe nf_conntrack'");
                        }
                        bail!("ctnetlink refused the statistics request: {e}");
                    }
                    _ => out.push(buf[off..off + mlen].to_vec()),
                }
                off += (mlen + 3) & !3;
            }
        }
    }

    /// Every CPU's counters (`conntrack -S`).
    pub fn per_cpu(&mut self) -> Result<Snapshot> {
        let msgs = self.request(IPCTNL_MSG_CT_GET_STATS_CPU, true)?;
        let mut per_cpu = Vec::with_capacity(msgs.len());
        for m in msgs {
            per_cpu.push(parse_cpu(&m)?);
        }
        per_cpu.sort_by_key(|c| c.cpu);
        Ok(Snapshot { per_cpu })
    }

    /// (entries, max entries) of this netns's table (`conntrack -C`).
    pub fn table_fill(&mut self) -> Result<(u64, u64)> {
        let msgs = self.request(IPCTNL_MSG_CT_GET_STATS, false)?;
        let mut count = 0;
        let mut max = 0;
        for m in msgs {
            for (ty, val) in attrs(&m[20..]) {
                match ty {
                    1 => count = be(val),
                    2 => max = be(val),
                    _ => {}
                }
            }
        }
        Ok((count, max))
    }
}

fn be(v: &[u8]) -> u64 {
    match v.len() {
        4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as u64,
        8 => u64::from_be_bytes(v.try_into().unwrap_or([0; 8])),
        _ => 0,
    }
}

fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        let adv = (len + 3) & !3;
        b = &b[adv.min(b.len())..];
    }
    out
}

/// One IPCTNL_MSG_CT_GET_STATS_CPU reply: nlmsghdr, nfgenmsg (res_id = cpu), attrs.
fn parse_cpu(m: &[u8]) -> Result<CpuStats> {
    if m.len() < 20 {
        bail!("short ctnetlink statistics message");
    }
    let mut c = CpuStats {
        cpu: u16::from_be_bytes([m[18], m[19]]) as u32,
        ..Default::default()
    };
    for (ty, val) in attrs(&m[20..]) {
        c.set_attr(ty, be(val));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: u32) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&8u16.to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(&v.to_be_bytes());
        a
    }

    #[test]
    fn parses_a_per_cpu_message() {
        let mut m = vec![0u8; 16];
        m.extend_from_slice(&[0, 0, 0, 3]); // nfgenmsg, res_id = cpu 3 (big endian)
        m.extend(attr(9, 14));
        m.extend(attr(10, 14));
        m.extend(attr(4, 2));
        m.extend(attr(14, 5));
        let c = parse_cpu(&m).unwrap();
        assert_eq!(c.cpu, 3);
        assert_eq!(
            (c.insert_failed, c.drop, c.invalid, c.clash_resolve),
            (14, 14, 2, 5)
        );
    }

    #[test]
    fn deltas_match_cpus_by_number() {
        let a = Snapshot {
            per_cpu: vec![
                CpuStats {
                    cpu: 0,
                    insert_failed: 1,
                    ..Default::default()
                },
                CpuStats {
                    cpu: 1,
                    insert_failed: 5,
                    ..Default::default()
                },
            ],
        };
        let b = Snapshot {
            per_cpu: vec![
                CpuStats {
                    cpu: 0,
                    insert_failed: 4,
                    ..Default::default()
                },
                CpuStats {
                    cpu: 1,
                    insert_failed: 5,
                    invalid: 2,
                    ..Default::default()
                },
            ],
        };
        let d = b.delta(&a);
        assert_eq!(d.per_cpu[0].insert_failed, 3);
        assert_eq!(d.per_cpu[1].insert_failed, 0);
        assert_eq!(d.total().invalid, 2);
    }
}
