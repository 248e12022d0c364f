//! Small socket helpers for the lab's traffic: TCP connects from a chosen
//! local address and port, a raw IPv4/IPv6 sender for forged TCP segments,
//! and an AF_PACKET sniffer. The sockets belong to the netns of the thread
//! that creates them.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn new_socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is owned by nobody else.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd is a fresh, valid descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket address in the C layout, with its length.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    match a {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sa = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sa = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sa = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sa = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                0,
                0,
            )))
        }
        f => Err(io::Error::other(format!("address family {f}"))),
    }
}

fn domain(a: &SocketAddr) -> i32 {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, v: &T) -> io::Result<()> {
    // SAFETY: v points to a live T of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A blocking TCP connect from `local` (port 0: any) to `dst`, with
/// SO_REUSEADDR so that several sources may bind the same port.
pub fn connect_from(local: SocketAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let fd = prepare_connect(local)?;
    connect_prepared(fd, dst)
}

/// The socket before connect (bound), so that a barrier can sit between the two.
pub fn prepare_connect(local: SocketAddr) -> io::Result<OwnedFd> {
    let fd = new_socket(domain(&local), libc::SOCK_STREAM, 0)?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32)?;
    let (sa, len) = sockaddr(local);
    // SAFETY: sa is a valid socket address of the length passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    })?;
    Ok(fd)
}

/// The address a socket is bound to (bind with port 0 picks the port at once).
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss and len are valid for getsockname to write.
    check(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            &mut ss as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    from_sockaddr(&ss)
}

pub fn connect_prepared(fd: OwnedFd, dst: SocketAddr) -> io::Result<TcpStream> {
    let (sa, len) = sockaddr(dst);
    loop {
        // SAFETY: sa is a valid socket address of the length passed.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                len,
            )
        };
        if r == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(TcpStream::from(fd))
}

/// Internet checksum over `chunks`.
fn csum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for c in chunks {
        let mut i = 0;
        while i + 1 < c.len() {
            sum += u16::from_be_bytes([c[i], c[i + 1]]) as u32;
            i += 2;
        }
        if i < c.len() {
            sum += (c[i] as u32) << 8;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP flag bits.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// One forged TCP segment.
#[derive(Clone, Debug)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: Vec<u8>,
}

impl Segment {
    /// The TCP header and payload, checksummed over `pseudo`.
    fn tcp(&self, pseudo: &[u8]) -> Vec<u8> {
        let mut t = Vec::with_capacity(20 + self.payload.len());
        t.extend_from_slice(&self.src.port().to_be_bytes());
        t.extend_from_slice(&self.dst.port().to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.extend_from_slice(&[5 << 4, self.flags]);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&self.payload);
        let c = csum(&[pseudo, &t]);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        t
    }

    /// The IP packet: IPv4 (the kernel fills in the IP checksum and id) or
    /// IPv6, by the addresses' family.
    pub fn to_packet(&self) -> Vec<u8> {
        let tcp_len = 20 + self.payload.len();
        let mut p = Vec::with_capacity(40 + tcp_len);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = 20 + tcp_len;
                p.extend_from_slice(&[0x45, 0]);
                p.extend_from_slice(&(total as u16).to_be_bytes());
                p.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                let mut pseudo = Vec::with_capacity(12);
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
                pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                p.extend_from_slice(&self.tcp(&pseudo));
            }
            (s, d) => {
                let (s, d) = (v6(s), v6(d));
                p.extend_from_slice(&[0x60, 0, 0, 0]);
                p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                p.extend_from_slice(&[libc::IPPROTO_TCP as u8, 64]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                let mut pseudo = Vec::with_capacity(40);
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(tcp_len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
                p.extend_from_slice(&self.tcp(&pseudo));
            }
        }
        p
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Sends a forged segment through a raw socket of the current netns
/// (IPPROTO_RAW: the header is ours, for IPv6 as for IPv4).
pub fn send_raw(seg: &Segment) -> io::Result<()> {
    let fd = new_socket(domain(&seg.dst), libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    let pkt = seg.to_packet();
    let mut dst = seg.dst;
    dst.set_port(0);
    let (sa, len) = sockaddr(dst);
    // SAFETY: pkt and sa are valid for the lengths passed.
    let n = check(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr() as *const libc::c_void,
            pkt.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            len,
        ) as i32
    })?;
    if n as usize != pkt.len() {
        return Err(io::Error::other("short raw send"));
    }
    Ok(())
}

/// A TCP segment as seen on the wire (IPv4, or IPv6 without extension headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub outgoing: bool,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub len: u32,
}

impl Seen {
    /// The sequence number after this segment (SYN and FIN count one).
    pub fn seq_end(&self) -> u32 {
        self.seq
            .wrapping_add(self.len)
            .wrapping_add((self.flags & SYN != 0) as u32)
            .wrapping_add((self.flags & FIN != 0) as u32)
    }
}

/// Parses an IPv4 or IPv6 packet carrying TCP.
pub fn parse_tcp(p: &[u8], outgoing: bool) -> Option<Seen> {
    let (ihl, total, ttl, src, dst): (usize, usize, u8, IpAddr, IpAddr) = match p.first()? >> 4 {
        4 => {
            if p.len() < 20 || p[9] != libc::IPPROTO_TCP as u8 {
                return None;
            }
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]));
            (
                ((p[0] & 0xf) as usize) * 4,
                u16::from_be_bytes([p[2], p[3]]) as usize,
                p[8],
                ip(12),
                ip(16),
            )
        }
        6 => {
            if p.len() < 40 || p[6] != libc::IPPROTO_TCP as u8 {
                return None;
            }
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&p[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            (
                40,
                40 + u16::from_be_bytes([p[4], p[5]]) as usize,
                p[7],
                ip(8),
                ip(24),
            )
        }
        _ => return None,
    };
    let total = total.min(p.len());
    if total < ihl + 20 {
        return None;
    }
    let t = &p[ihl..total];
    let doff = ((t[12] >> 4) as usize) * 4;
    if doff < 20 || doff > t.len() {
        return None;
    }
    Some(Seen {
        outgoing,
        ttl,
        src: SocketAddr::new(src, u16::from_be_bytes([t[0], t[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([t[2], t[3]])),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: t[13],
        len: (t.len() - doff) as u32,
    })
}

/// An AF_PACKET socket seeing every IPv4 and IPv6 packet of the current netns, both
/// directions, loopback excluded. It listens with ETH_P_ALL: outgoing packets
/// are copied only to ETH_P_ALL taps, never to a per-protocol one.
pub struct Sniffer {
    fd: OwnedFd,
}

impl Sniffer {
    pub fn open() -> io::Result<Sniffer> {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        let fd = new_socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto)?;
        // room for everything between two drains
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &(4i32 << 20))?;
        Ok(Sniffer { fd })
    }

    /// The next queued TCP segment, or None when nothing is queued.
    pub fn try_next(&self) -> io::Result<Option<Seen>> {
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
            let mut slen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and sll are valid for the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut slen,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if sll.sll_hatype == libc::ARPHRD_LOOPBACK
                || (sll.sll_protocol != (libc::ETH_P_IP as u16).to_be()
                    && sll.sll_protocol != (libc::ETH_P_IPV6 as u16).to_be())
            {
                continue;
            }
            let outgoing = sll.sll_pkttype == libc::PACKET_OUTGOING;
            if let Some(s) = parse_tcp(&buf[..n as usize], outgoing) {
                return Ok(Some(s));
            }
        }
    }
}

/// Turns GRO on or off for a device of the current netns (what `ethtool -K
/// DEV gro on|off` does, through the legacy SIOCETHTOOL ioctl: no ethtool
/// binary needed).
pub fn set_gro(dev: &str, on: bool) -> io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    if dev.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("device name {dev} too long")));
    }
    let mut v = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: on as u32,
    };
    let mut ifr = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut v,
        _pad: [0; 16],
    };
    ifr.name[..dev.len()].copy_from_slice(dev.as_bytes());
    let fd = new_socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: ifr is a valid ifreq whose data points to a live ethtool_value.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL as _, &mut ifr as *mut IfReq) })?;
    Ok(())
}

pub fn set_timeouts(s: &TcpStream, d: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(d))?;
    s.set_write_timeout(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_segment_round_trips_and_checksums() {
        let s = Segment {
            src: "192.0.2.2:8000".parse().unwrap(),
            dst: "192.0.2.1:40000".parse().unwrap(),
            seq: 0xdead_beef,
            ack: 7,
            flags: ACK | PSH,
            window: 512,
            payload: b"abc".to_vec(),
        };
        let p = s.to_packet();
        let seen = parse_tcp(&p, true).unwrap();
        assert_eq!((seen.src, seen.dst), (s.src, s.dst));
        assert_eq!(
            (seen.seq, seen.ack, seen.flags, seen.len),
            (s.seq, 7, ACK | PSH, 3)
        );
        assert_eq!(seen.seq_end(), 0xdead_beef + 3);
        // the TCP checksum over the pseudo header and segment verifies to 0
        let t = &p[20..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, 6, 0, t.len() as u8]);
        assert_eq!(csum(&[&pseudo, t]), 0);
    }

    #[test]
    fn forged_ipv6_segment_round_trips_and_checksums() {
        let s = Segment {
            src: "[fd77:0:0:2::2]:8000".parse().unwrap(),
            dst: "[fd77:0:0:2::1]:40000".parse().unwrap(),
            seq: 1,
            ack: 2,
            flags: ACK,
            window: 512,
            payload: b"abcde".to_vec(),
        };
        let p = s.to_packet();
        assert_eq!(p.len(), 40 + 20 + 5);
        let seen = parse_tcp(&p, false).unwrap();
        assert_eq!((seen.src, seen.dst, seen.ttl), (s.src, s.dst, 64));
        assert_eq!((seen.seq, seen.ack, seen.flags, seen.len), (1, 2, ACK, 5));
        let t = &p[40..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[8..40]);
        pseudo.extend_from_slice(&(t.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
        assert_eq!(csum(&[&pseudo, t]), 0);
    }
}
