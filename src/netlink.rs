//! The netlink plumbing ctnetlink (the kernel's conntrack counters and table)
//! and rtnetlink (a namespace's addresses) share: a socket with a receive
//! timeout, one request and its answer, and the attribute (TLV) format.

use std::io;

use anyhow::{bail, Context, Result};
use netlink_sys::{Socket, SocketAddr};

pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 0x8000;

/// A netlink socket in the network namespace of the thread that opened it.
pub struct Conn {
    sock: Socket,
    seq: u32,
    /// What the socket talks to, for errors ("ctnetlink", "rtnetlink").
    what: &'static str,
}

impl Conn {
    /// `timeout_s`: a reply that never comes must not hang the caller.
    pub fn open(protocol: isize, what: &'static str, timeout_s: i64) -> Result<Conn> {
        let mut sock = Socket::new(protocol).with_context(|| {
            format!("cannot open a {what} socket (needs CAP_NET_ADMIN: run as root)")
        })?;
        sock.bind_auto()
            .with_context(|| format!("binding the {what} socket"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .with_context(|| format!("connecting the {what} socket"))?;
        let tv = libc::timeval {
            tv_sec: timeout_s,
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
            return Err(io::Error::last_os_error())
                .with_context(|| format!("setting a {what} receive timeout"));
        }
        Ok(Conn { sock, seq: 1, what })
    }

    /// One request (`body`: the family header, then attributes) and its
    /// answer: every message (header included) up to NLMSG_DONE or the
    /// kernel's ACK, or the errno the kernel answered with. A request that is
    /// not a dump must ask for an ACK (`NLM_F_ACK`) where the kernel sends no
    /// DONE after its one message, or the read waits for the timeout.
    pub fn exchange(
        &mut self,
        msg_type: u16,
        flags: u16,
        body: &[u8],
    ) -> Result<std::result::Result<Vec<Vec<u8>>, i32>> {
        self.seq += 1;
        let len = (16 + body.len()) as u32;
        let mut req = Vec::with_capacity(len as usize);
        req.extend_from_slice(&len.to_ne_bytes());
        req.extend_from_slice(&msg_type.to_ne_bytes());
        req.extend_from_slice(&flags.to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(body);
        let what = self.what;
        self.sock
            .send(&req, 0)
            .with_context(|| format!("sending a {what} request"))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self
                .sock
                .recv(&mut &mut buf[..], 0)
                .with_context(|| format!("reading {what}'s answer"))?;
            if n == 0 {
                bail!("{what} closed the socket");
            }
            let mut off = 0;
            while off + 16 <= n {
                let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into()?) as usize;
                let mtype = u16::from_ne_bytes(buf[off + 4..off + 6].try_into()?);
                if mlen < 16 || off + mlen > n {
                    bail!("malformed {what} message");
                }
                match mtype {
                    NLMSG_DONE => return Ok(Ok(out)),
                    NLMSG_ERROR => {
                        if mlen < 20 {
                            bail!("malformed {what} error message");
                        }
                        let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into()?);
                        return Ok(if code == 0 { Ok(out) } else { Err(-code) });
                    }
                    _ => out.push(buf[off..off + mlen].to_vec()),
                }
                off += (mlen + 3) & !3;
            }
        }
    }
}

/// The attributes of a message's payload: (type without its flags, value).
pub fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
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

/// One attribute, padded to 4 bytes.
pub fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len() + 3);
    v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_nesting() {
        let inner = [nla(1, &[7]), nla(2, &[1, 2, 3, 4, 5])].concat();
        let outer = [nla(3 | NLA_F_NESTED, &inner), nla(4, b"ab")].concat();
        let a = attrs(&outer);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].0, 3, "the nested flag is not part of the type");
        assert_eq!(a[1], (4, &b"ab"[..]));
        let i = attrs(a[0].1);
        assert_eq!(i, vec![(1, &[7u8][..]), (2, &[1, 2, 3, 4, 5][..])]);
        // a length past the end stops the walk instead of reading beyond it
        let mut cut = outer.clone();
        cut[0] = 200;
        assert!(attrs(&cut).is_empty());
    }
}
