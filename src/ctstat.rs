//! The kernel's own conntrack statistics, read over ctnetlink in the current
//! network namespace (the same numbers `conntrack -S` prints), per CPU.

use std::io;
use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use netlink_sys::protocols::NETLINK_NETFILTER;
use serde::{Deserialize, Serialize};

use crate::event::Tuple;
use crate::netlink::{attrs, nla, Conn, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

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
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_GET_STATS_CPU: u16 = 4;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;

/// A ctnetlink socket in the network namespace of the thread that opened it.
pub struct CtNetlink {
    conn: Conn,
}

impl CtNetlink {
    pub fn open() -> Result<CtNetlink> {
        Ok(CtNetlink {
            conn: Conn::open(NETLINK_NETFILTER, "netfilter netlink", 5)?,
        })
    }

    /// `dump`: a multi-part answer ended by NLMSG_DONE. Otherwise the kernel
    /// answers with one message and no DONE (ctnetlink_stat_ct): ask for an
    /// ACK, which ends the answer, or the read waits forever.
    fn request(&mut self, msg_type: u16, dump: bool) -> Result<Vec<Vec<u8>>> {
        match self.exchange(msg_type, 0, dump, &[])? {
            Ok(msgs) => Ok(msgs),
            Err(code) => {
                let e = io::Error::from_raw_os_error(code);
                if code == libc::EOPNOTSUPP || code == libc::ENOENT {
                    bail!("conntrack is not available in this network namespace ({e}): is nf_conntrack loaded? try 'modprobe nf_conntrack'");
                }
                bail!("ctnetlink refused the statistics request: {e}");
            }
        }
    }

    /// One ctnetlink request: nfgenmsg of `family`, then `attrs`.
    fn exchange(
        &mut self,
        msg_type: u16,
        family: u8,
        dump: bool,
        attrs: &[u8],
    ) -> Result<std::result::Result<Vec<Vec<u8>>, i32>> {
        // struct nfgenmsg { family, version NFNETLINK_V0, res_id 0 }
        let body = [&[family, 0, 0, 0][..], attrs].concat();
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        self.conn
            .exchange((NFNL_SUBSYS_CTNETLINK << 8) | msg_type, flags, &body)
    }

    /// The original tuple of the entry whose reply tuple is `reply`
    /// (`conntrack -G --reply-src .. --reply-dst .. -p ..`): who holds it.
    /// `None` when no entry does.
    pub fn holder_of_reply(&mut self, proto: u8, reply: &Tuple) -> Result<Option<Tuple>> {
        let (family, req) = tuple_request(proto, reply);
        match self.exchange(IPCTNL_MSG_CT_GET, family, false, &req)? {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| parse_orig(m.get(20..)?))),
            Err(libc::ENOENT) => Ok(None),
            Err(code) => Err(io::Error::from_raw_os_error(code))
                .context("ctnetlink refused the table lookup"),
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

// ctnetlink's tuple attributes (CTA_TUPLE_*, CTA_IP_*, CTA_PROTO_*)
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// A GET of the entry whose reply tuple is `t`: (nfgenmsg family, attributes).
fn tuple_request(proto: u8, t: &Tuple) -> (u8, Vec<u8>) {
    let (family, ip) = match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            libc::AF_INET as u8,
            [
                nla(CTA_IP_V4_SRC, &s.octets()),
                nla(CTA_IP_V4_DST, &d.octets()),
            ]
            .concat(),
        ),
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            (
                libc::AF_INET6 as u8,
                [nla(CTA_IP_V6_SRC, &v6(s)), nla(CTA_IP_V6_DST, &v6(d))].concat(),
            )
        }
    };
    let pr = [
        nla(CTA_PROTO_NUM, &[proto]),
        nla(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes()),
        nla(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes()),
    ]
    .concat();
    let tuple = [
        nla(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
        nla(CTA_TUPLE_PROTO | NLA_F_NESTED, &pr),
    ]
    .concat();
    (family, nla(CTA_TUPLE_REPLY | NLA_F_NESTED, &tuple))
}

/// CTA_TUPLE_ORIG of a conntrack message's attributes.
fn parse_orig(b: &[u8]) -> Option<Tuple> {
    let (_, orig) = attrs(b).into_iter().find(|(ty, _)| *ty == CTA_TUPLE_ORIG)?;
    let mut t = Tuple {
        src: IpAddr::from([0u8; 4]),
        sport: 0,
        dst: IpAddr::from([0u8; 4]),
        dport: 0,
    };
    let port = |v: &[u8]| (v.len() >= 2).then(|| u16::from_be_bytes([v[0], v[1]]));
    for (ty, v) in attrs(orig) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, v) in attrs(v) {
                    match (ty, v.len()) {
                        (CTA_IP_V4_SRC, 4) => t.src = IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
                        (CTA_IP_V4_DST, 4) => t.dst = IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
                        (CTA_IP_V6_SRC, 16) => t.src = IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
                        (CTA_IP_V6_DST, 16) => t.dst = IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, v) in attrs(v) {
                    match ty {
                        CTA_PROTO_SRC_PORT => t.sport = port(v)?,
                        CTA_PROTO_DST_PORT => t.dport = port(v)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(t)
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
    fn a_table_lookup_asks_by_reply_tuple_and_reads_the_original_back() {
        for (orig, reply) in [
            (
                "10.9.0.2:40001->192.0.2.2:80",
                "192.0.2.2:80->192.0.2.1:40000",
            ),
            (
                "[fd77::16]:43927->[fd77:0:0:2::2]:8000",
                "[fd77:0:0:2::2]:8000->[fd77:0:0:2::1]:40000",
            ),
        ] {
            let tup = |s: &str| {
                let (a, b) = s.split_once("->").unwrap();
                let (a, b): (std::net::SocketAddr, std::net::SocketAddr) =
                    (a.parse().unwrap(), b.parse().unwrap());
                Tuple {
                    src: a.ip(),
                    sport: a.port(),
                    dst: b.ip(),
                    dport: b.port(),
                }
            };
            let (family, req) = tuple_request(6, &tup(reply));
            assert_eq!(
                family as i32,
                if orig.starts_with('[') {
                    libc::AF_INET6
                } else {
                    libc::AF_INET
                }
            );
            // the kernel's answer carries the same nesting under CTA_TUPLE_ORIG
            let (_, orig_req) = tuple_request(6, &tup(orig));
            let mut answer = orig_req.clone();
            answer[2..4].copy_from_slice(&(CTA_TUPLE_ORIG | NLA_F_NESTED).to_ne_bytes());
            answer.extend_from_slice(&req);
            assert_eq!(parse_orig(&answer), Some(tup(orig)));
            assert_eq!(parse_orig(&req), None, "a reply tuple alone is no original");
        }
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
