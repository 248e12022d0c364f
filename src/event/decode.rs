//! From the record the kernel wrote (`abi::RawEvent`) to the typed [`Event`].
//! Numbers are the ABI's (`crate::abi`), wording is the emitting probe's.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};

use super::{EnumNames, Event, Family, Kind, Packet, Tcp, Tuple};
use crate::abi::{self, flag, kind, reason, RawEvent, RawTuple, RAW_EVENT_SIZE};
use crate::probe::{confirm, window};

/// Decodes one ring-buffer record: the event, and for an offending packet
/// captured with `--pcap` its bytes after it (`cap_len` of a room of at most
/// `SNAP_MAX` rounded up to 8). Fails on a short or oversized record, a
/// packet longer than its room, and an unknown kind, rather than guessing.
pub fn decode(data: &[u8], names: &dyn EnumNames) -> Result<Event> {
    let max_room = (abi::SNAP_MAX as usize).div_ceil(8) * 8;
    // a short record (enum ct_len) is its head; a whole one may carry a
    // packet after it
    let head = match data.len() {
        abi::LEN_PACKET | abi::LEN_CONN => data.len(),
        n if n >= RAW_EVENT_SIZE => RAW_EVENT_SIZE,
        _ => 0,
    };
    let room = data.len() - head;
    if head == 0 || room > max_room || room % 8 != 0 {
        bail!(
            "record of {} bytes, expected {}, {} or {RAW_EVENT_SIZE} (+ a packet of at most {max_room}): BPF objects and ctrace disagree on the event layout",
            data.len(),
            abi::LEN_PACKET,
            abi::LEN_CONN,
        );
    }
    // one copy into a zeroed record: a short record's tail stays zero
    let mut raw = RawEvent::default();
    // SAFETY: RawEvent is Plain (src/abi.rs): every bit pattern is a valid
    // value, so writing bytes into it is sound; head <= RAW_EVENT_SIZE.
    let bytes = unsafe { plain::as_mut_bytes(&mut raw) };
    bytes[..head].copy_from_slice(&data[..head]);
    let cap = raw.cap_len as usize;
    if cap > room {
        bail!("record carries {cap} packet bytes in a room of {room}");
    }
    let mut e = from_raw(&raw, names)?;
    if cap > 0 {
        let tail = &data[RAW_EVENT_SIZE..RAW_EVENT_SIZE + cap];
        e.packet = Some(Packet {
            len: raw.pkt_len.max(raw.cap_len),
            data: tail.to_vec(),
        });
    }
    Ok(e)
}

fn kind_of(k: u32, flags: u8) -> Option<Kind> {
    Some(match k {
        kind::NAT_ALLOC => Kind::NatAlloc,
        kind::INSERT_FAILED => Kind::InsertFailed,
        kind::CLASH_RESOLVED => Kind::ClashResolved,
        kind::TCP_INVALID if flags & flag::MASKED != 0 => Kind::TcpLiberal,
        kind::TCP_INVALID => Kind::TcpInvalid,
        kind::TCP_IGNORED => Kind::TcpIgnored,
        kind::HOST_RST => Kind::HostRst,
        kind::SYN_RETRANS => Kind::SynRetrans,
        kind::NF_DROP => Kind::NfDrop,
        _ => return None,
    })
}

fn addr(family: Family, b: &[u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(*b)),
    }
}

fn tuple(family: Family, t: &RawTuple) -> Tuple {
    Tuple {
        src: addr(family, &t.src),
        sport: t.sport,
        dst: addr(family, &t.dst),
        dport: t.dport,
    }
}

fn c_str(b: &[i8]) -> String {
    let b: Vec<u8> = b.iter().map(|&c| c as u8).collect();
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub fn proto_name(p: u8) -> Cow<'static, str> {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => other.to_string().into(),
    }
}

pub fn tcp_flags(f: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join(",")
}

fn verdict_name(v: u8) -> String {
    match v {
        abi::verdict::IGNORE => "ignore".into(),
        abi::verdict::INVALID => "invalid".into(),
        abi::verdict::ACCEPT => "accept".into(),
        n => n.to_string(),
    }
}

/// The netfilter hook's name (`enum nf_inet_hooks`).
pub fn hook_name(h: u8) -> Option<Cow<'static, str>> {
    Some(
        match h {
            0 => "prerouting",
            1 => "input",
            2 => "forward",
            3 => "output",
            4 => "postrouting",
            _ => return None,
        }
        .into(),
    )
}

fn source_name(s: u8) -> &'static str {
    match s {
        abi::source::NETFILTER => "netfilter",
        abi::source::KPROBE => "kprobe",
        abi::source::FENTRY => "fentry",
        abi::source::TRACEPOINT => "tracepoint",
        _ => "unknown",
    }
}

/// The wording of a record's reason: asked of the probe that owns the code.
fn reason_text(
    raw: &RawEvent,
    kernel_text: &str,
    value: Option<Cow<'static, str>>,
) -> Cow<'static, str> {
    match raw.reason {
        reason::NONE => Cow::Borrowed(""),
        reason::DROP_REASON | reason::RST_REASON => value.unwrap_or_default(),
        code => confirm::reason::text(code)
            .map(Cow::Borrowed)
            .or_else(|| {
                window::reason::text(code, kernel_text, raw.bound, raw.drop_reason).map(Cow::Owned)
            })
            .unwrap_or_else(|| format!("reason {code}").into()),
    }
}

pub fn from_raw(raw: &RawEvent, names: &dyn EnumNames) -> Result<Event> {
    let Some(kind) = kind_of(raw.kind, raw.flags) else {
        bail!("unknown event kind {}", raw.kind);
    };
    let family = match raw.family {
        4 => Family::Ipv4,
        6 => Family::Ipv6,
        other => bail!("unknown address family {other} in a {kind} record"),
    };
    let flags = raw.flags;
    let reply = (flags & flag::REPLY != 0).then(|| tuple(family, &raw.reply));
    let nat = match (flags & flag::SNAT != 0, flags & flag::DNAT != 0) {
        (true, true) => Some("snat+dnat".into()),
        (true, false) => Some("snat".into()),
        (false, true) => Some("dnat".into()),
        _ => None,
    };
    let is_window = matches!(kind, Kind::TcpInvalid | Kind::TcpIgnored | Kind::TcpLiberal);
    let logged = matches!(
        raw.reason,
        reason::WIN_TEXT | reason::WIN_NOTEXT | reason::WIN_TYPED
    );
    let tcp = (raw.proto == 6 && kind != Kind::NatAlloc && kind != Kind::InsertFailed || is_window)
        .then(|| {
            let w = flags & flag::WINDOW != 0;
            Tcp {
                seq: raw.seq,
                ack: raw.ack,
                win: raw.win,
                flags: tcp_flags(raw.tcp_flags),
                td_end: w.then_some(raw.td_end),
                td_maxend: w.then_some(raw.td_maxend),
                td_maxwin: w.then_some(raw.td_maxwin),
                bound: (logged && raw.bound != 0).then_some(raw.bound),
                verdict: (is_window && logged).then(|| verdict_name(raw.verdict)),
                final_verdict: (is_window && logged).then(|| verdict_name(raw.final_verdict)),
            }
        });
    let name = |n: Option<&'static str>| -> Cow<'static, str> {
        n.map(Cow::Borrowed)
            .unwrap_or_else(|| raw.drop_reason.to_string().into())
    };
    let drop_reason = match raw.reason {
        reason::DROP_REASON => Some(name(names.drop_reason(raw.drop_reason))),
        reason::RST_REASON => Some(name(names.rst_reason(raw.drop_reason))),
        _ => None,
    };
    let text = c_str(&raw.reason_text);
    Ok(Event {
        ts_ns: raw.ts_ns,
        kind,
        cpu: raw.cpu,
        netns: raw.netns,
        family,
        proto: proto_name(raw.proto),
        orig: tuple(family, &raw.orig),
        reply,
        port: (raw.port != 0 || nat.is_some()).then_some(raw.port),
        reason: reason_text(raw, &text, drop_reason.clone()),
        reason_code: raw.reason,
        window_log: if is_window {
            window::reason::class(raw.reason, &text, raw.drop_reason)
        } else {
            None
        },
        nat,
        remapped: flags & flag::REMAPPED != 0,
        random_fully: flags & flag::RANDOM_FULLY != 0,
        tcp: tcp.map(Box::new),
        // no hook that writes records is known to run for a task (see
        // common.bpf.h): no pid rather than a wrong one
        context: "unattributed".into(),
        pid: None,
        comm: None,
        cgroup_id: None,
        location: None,
        location_addr: (raw.location != 0).then(|| format!("{:#x}", raw.location)),
        source: source_name(raw.source).into(),
        hook: hook_name(raw.hook),
        drop_reason,
        incident: None,
        winner: super::WinnerSlot::Absent,
        winner_unknown: None,
        workload: None,
        frame: None,
        packet: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::flag::*;
    use crate::event::{Kind, NoNames};
    use std::net::Ipv6Addr;

    fn raw(kind: u32) -> RawEvent {
        let mut r = RawEvent {
            kind,
            family: 4,
            proto: 6,
            cpu: 1,
            netns: 4026531840,
            ts_ns: 42,
            source: 1,
            hook: 4,
            ..Default::default()
        };
        r.orig.src[..4].copy_from_slice(&[10, 0, 0, 2]);
        r.orig.dst[..4].copy_from_slice(&[192, 0, 2, 1]);
        r.orig.sport = 40000;
        r.orig.dport = 80;
        r
    }

    fn bytes(r: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is Plain (see above); we view it as its bytes.
        unsafe { plain::as_bytes(r) }.to_vec()
    }

    #[test]
    fn decodes_insert_failed_with_translated_port() {
        let mut r = raw(2);
        r.flags = REPLY | SNAT | REMAPPED;
        r.reason = 3;
        r.reply.src[..4].copy_from_slice(&[192, 0, 2, 1]);
        r.reply.dst[..4].copy_from_slice(&[198, 51, 100, 1]);
        r.reply.sport = 80;
        r.reply.dport = 1024;
        r.port = 1024;
        let e = decode(&bytes(&r), &NoNames).unwrap();
        assert_eq!(e.kind, Kind::InsertFailed);
        assert_eq!(e.port, Some(1024));
        assert_eq!(e.orig.to_string(), "10.0.0.2:40000 > 192.0.2.1:80");
        assert_eq!(e.reply.unwrap().dport, 1024);
        assert_eq!(e.nat.as_deref(), Some("snat"));
        assert!(e.remapped);
        assert_eq!(e.context, "unattributed");
        assert_eq!(e.pid, None);
        assert_eq!(e.hook.as_deref(), Some("postrouting"));
        assert!(e.reason.contains("insert_failed"));
    }

    #[test]
    fn truncated_and_oversized_records_are_refused() {
        let b = bytes(&raw(1));
        assert!(decode(&b[..b.len() - 1], &NoNames).is_err());
        assert!(decode(&[], &NoNames).is_err());
        let mut big = b.clone();
        big.push(0);
        let err = decode(&big, &NoNames).unwrap_err().to_string();
        assert!(err.contains("expected"), "{err}");
    }

    #[test]
    fn a_short_record_is_its_head_and_the_rest_reads_as_zeros() {
        // nf_drop: the kernel reserves only up to the reply tuple
        let mut r = raw(8);
        r.reason = 20;
        r.drop_reason = 6;
        r.reply.sport = 9; // not part of the record
        let b = bytes(&r);
        let e = decode(&b[..abi::LEN_PACKET], &NoNames).unwrap();
        assert_eq!(e.kind, Kind::NfDrop);
        assert_eq!(e.orig.to_string(), "10.0.0.2:40000 > 192.0.2.1:80");
        assert!(e.reply.is_none());
        // nat_alloc: up to the window state
        let mut r = raw(1);
        r.flags = REPLY | SNAT;
        r.reply.dport = 1024;
        r.td_end = 7;
        let b = bytes(&r);
        let e = decode(&b[..abi::LEN_CONN], &NoNames).unwrap();
        assert_eq!(e.reply.unwrap().dport, 1024);
        // any other length between them is refused
        for n in [abi::LEN_PACKET - 1, abi::LEN_PACKET + 8, abi::LEN_CONN + 8] {
            assert!(decode(&b[..n], &NoNames).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn a_captured_packet_follows_its_record() {
        let mut r = raw(4);
        r.cap_len = 5;
        r.pkt_len = 40;
        let mut b = bytes(&r);
        b.extend_from_slice(&[0x45, 0, 0, 40, 9, 0, 0, 0]);
        let e = decode(&b, &NoNames).unwrap();
        let p = e.packet.unwrap();
        assert_eq!(p.data, [0x45, 0, 0, 40, 9]);
        assert_eq!(p.len, 40);
        assert_eq!(e.frame, None);
        // more bytes than the room, a room not a multiple of 8, a room too big
        r.cap_len = 9;
        assert!(decode(
            &{
                let mut b = bytes(&r);
                b.extend_from_slice(&[0; 8]);
                b
            },
            &NoNames
        )
        .is_err());
        r.cap_len = 1;
        assert!(decode(
            &{
                let mut b = bytes(&r);
                b.extend_from_slice(&[0; 7]);
                b
            },
            &NoNames
        )
        .is_err());
        let huge = vec![0u8; 1512];
        assert!(decode(
            &{
                let mut b = bytes(&r);
                b.extend_from_slice(&huge);
                b
            },
            &NoNames
        )
        .is_err());
        // no room, yet a length: refused
        assert!(decode(&bytes(&r), &NoNames).is_err());
    }

    #[test]
    fn unknown_kind_and_family_are_refused() {
        assert!(decode(&bytes(&raw(99)), &NoNames).is_err());
        let mut r = raw(4);
        r.family = 7;
        assert!(decode(&bytes(&r), &NoNames).is_err());
    }

    #[test]
    fn window_reason_is_the_kernels_wording_with_the_bound() {
        let mut r = raw(4);
        r.reason = 10;
        r.bound = 123456;
        r.verdict = 1;
        r.final_verdict = 1;
        r.flags = WINDOW | REPLY;
        let text = b"SEQ is over upper bound %u (over the window of the receiver)";
        for (d, s) in r.reason_text.iter_mut().zip(text.iter()) {
            *d = *s as i8;
        }
        let e = decode(&bytes(&r), &NoNames).unwrap();
        assert_eq!(e.kind, Kind::TcpInvalid);
        assert_eq!(
            e.reason,
            "SEQ is over upper bound 123456 (over the window of the receiver)"
        );
        let tcp = e.tcp.unwrap();
        assert_eq!(tcp.verdict.as_deref(), Some("invalid"));
        assert_eq!(tcp.bound, Some(123456));
    }

    #[test]
    fn typed_window_reason_uses_the_kernels_wording() {
        let mut r = raw(5);
        r.reason = 14;
        r.drop_reason = 4; // NF_TCP_LOG_SEQ_UNDER
        r.bound = 1000;
        r.verdict = 0;
        r.final_verdict = 0;
        let e = decode(&bytes(&r), &NoNames).unwrap();
        assert_eq!(e.kind, Kind::TcpIgnored);
        assert_eq!(
            e.reason,
            "SEQ is under lower bound 1000 (already ACKed data retransmitted)"
        );
        assert_eq!(e.drop_reason, None);
        assert_eq!(e.tcp.unwrap().verdict.as_deref(), Some("ignore"));
    }

    #[test]
    fn masked_invalid_is_its_own_kind() {
        let mut r = raw(4);
        r.flags = MASKED;
        assert_eq!(decode(&bytes(&r), &NoNames).unwrap().kind, Kind::TcpLiberal);
    }

    #[test]
    fn ipv6_tuples() {
        let mut r = raw(7);
        r.family = 6;
        r.orig.src = Ipv6Addr::LOCALHOST.octets();
        r.orig.dst = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let e = decode(&bytes(&r), &NoNames).unwrap();
        assert_eq!(e.orig.to_string(), "[::1]:40000 > [2001:db8::1]:80");
    }

    #[test]
    fn event_json_roundtrip_keeps_contract_names() {
        let mut r = raw(2);
        r.flags = REPLY | SNAT;
        r.port = 1024;
        let e = decode(&bytes(&r), &NoNames).unwrap();
        let v = serde_json::to_value(&e).unwrap();
        for k in [
            "ts_ns", "kind", "cpu", "netns", "family", "proto", "orig", "reply", "port", "reason",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["kind"], "insert_failed");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["orig"]["sport"], 40000);
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
