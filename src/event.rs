//! The event model: the raw record the BPF programs write (defined once, in
//! `bpf/ctrace.h`, reached here through the skeleton's generated type), and the
//! decoded [`Event`] that every user interface and the recording format share.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The record as the kernel writes it: the skeleton's generated type.
pub type RawEvent = crate::bpf::symptoms::types::ct_event;

// SAFETY: ct_event is a plain C struct of integers and byte arrays; every bit
// pattern is a valid value.
unsafe impl plain::Plain for RawEvent {}

/// Size of one record; every probe object is built from the same header.
pub const RAW_EVENT_SIZE: usize = std::mem::size_of::<RawEvent>();

const _: () = {
    assert!(std::mem::size_of::<crate::bpf::nat::types::ct_event>() == RAW_EVENT_SIZE);
    assert!(std::mem::size_of::<crate::bpf::confirm::types::ct_event>() == RAW_EVENT_SIZE);
    assert!(std::mem::size_of::<crate::bpf::window::types::ct_event>() == RAW_EVENT_SIZE);
    // ts, cgroup, location, ct (4 x u64), 13 x u32, 2 x u16, 8 x u8, 2 tuples (36 B),
    // comm 16, reason_text 64
    assert!(RAW_EVENT_SIZE == 32 + 52 + 4 + 8 + 72 + 16 + 64);
};

// Values from bpf/ctrace.h.
const F_TASK: u8 = 0x01;
const F_REPLY: u8 = 0x02;
const F_REMAPPED: u8 = 0x04;
const F_MASKED: u8 = 0x08;
const F_RANDOM_FULLY: u8 = 0x10;
const F_WINDOW: u8 = 0x20;
const F_SNAT: u8 = 0x40;
const F_DNAT: u8 = 0x80;

/// What happened. The names are part of the recording format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// NAT gave a new connection its translated tuple.
    NatAlloc,
    /// The conntrack insert failed at confirm: the packet was dropped.
    InsertFailed,
    /// Two entries clashed at confirm and the kernel resolved it.
    ClashResolved,
    /// Conntrack classified a TCP segment INVALID: it escapes NAT.
    TcpInvalid,
    /// Conntrack IGNOREd an out-of-window segment (6.1+).
    TcpIgnored,
    /// Would be INVALID, accepted because of be_liberal.
    TcpLiberal,
    /// The node answered a segment no socket wanted with a RST.
    HostRst,
    /// A local connect retransmitted its SYN.
    SynRetrans,
    /// Netfilter dropped a packet.
    NfDrop,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::NatAlloc,
        Kind::InsertFailed,
        Kind::ClashResolved,
        Kind::TcpInvalid,
        Kind::TcpIgnored,
        Kind::TcpLiberal,
        Kind::HostRst,
        Kind::SynRetrans,
        Kind::NfDrop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::NatAlloc => "nat_alloc",
            Kind::InsertFailed => "insert_failed",
            Kind::ClashResolved => "clash_resolved",
            Kind::TcpInvalid => "tcp_invalid",
            Kind::TcpIgnored => "tcp_ignored",
            Kind::TcpLiberal => "tcp_liberal",
            Kind::HostRst => "host_rst",
            Kind::SynRetrans => "syn_retrans",
            Kind::NfDrop => "nf_drop",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn from_raw(kind: u32, flags: u8) -> Option<Kind> {
        Some(match kind {
            1 => Kind::NatAlloc,
            2 => Kind::InsertFailed,
            3 => Kind::ClashResolved,
            4 if flags & F_MASKED != 0 => Kind::TcpLiberal,
            4 => Kind::TcpInvalid,
            5 => Kind::TcpIgnored,
            6 => Kind::HostRst,
            7 => Kind::SynRetrans,
            8 => Kind::NfDrop,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tuple {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.src, self.dst) {
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                write!(f, "[{s}]:{} > [{d}]:{}", self.sport, self.dport)
            }
            (s, d) => write!(f, "{s}:{} > {d}:{}", self.sport, self.dport),
        }
    }
}

/// TCP header fields and, for window verdicts, the sender's window state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    pub flags: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub td_end: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub td_maxend: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub td_maxwin: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<u32>,
    /// Window verdicts: what tcp_in_window proposed and what conntrack did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_verdict: Option<String>,
}

/// The decoded event: one line of a recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ns: u64,
    pub kind: Kind,
    pub cpu: u32,
    pub netns: u32,
    pub family: Family,
    pub proto: String,
    pub orig: Tuple,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Tuple>,
    /// The translated port NAT chose (SNAT: source, DNAT: destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The reason, in the kernel's wording where the kernel has one.
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub reason_code: u32,
    /// "snat", "dnat" or "snat+dnat" where NAT touched the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remapped: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub random_fully: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Tcp>,
    /// "task" when pid/comm/cgroup_id describe the process that caused the event;
    /// "unattributed" when the hook may run in softirq, where the current task is
    /// whoever was interrupted: no pid is given rather than a wrong one.
    pub context: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Symbolized kernel location (`nf_hook_slow+0x9c`) where the kernel gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_addr: Option<String>,
    /// Which hook flavour produced it: netfilter, kprobe, fentry, tracepoint.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
}

impl Event {
    /// An event of `kind` on `orig` with every optional field empty: the base
    /// that builders (tests, generators) fill in, so the field list is written
    /// once. TCP, CPU 0, netns 0, no task context, from a netfilter hook.
    pub fn new(kind: Kind, orig: Tuple) -> Event {
        Event {
            ts_ns: 0,
            kind,
            cpu: 0,
            netns: 0,
            family: if orig.src.is_ipv6() {
                Family::Ipv6
            } else {
                Family::Ipv4
            },
            proto: "tcp".into(),
            orig,
            reply: None,
            port: None,
            reason: String::new(),
            reason_code: 0,
            nat: None,
            remapped: false,
            random_fully: false,
            tcp: None,
            context: "unattributed".into(),
            pid: None,
            comm: None,
            cgroup_id: None,
            location: None,
            location_addr: None,
            source: "netfilter".into(),
            hook: None,
            drop_reason: None,
        }
    }

    /// The flow a failure is attributed to: the original tuple.
    pub fn flow(&self) -> Tuple {
        self.orig
    }

    /// The destination a failure is attributed to.
    pub fn destination(&self) -> (IpAddr, u16) {
        (self.orig.dst, self.orig.dport)
    }
}

/// Names the kernel's own enums (drop reasons, RST reasons) by value. Built from
/// the running kernel's BTF by the pipeline; empty in tests and offline.
pub trait EnumNames {
    fn drop_reason(&self, value: u32) -> Option<String>;
    fn rst_reason(&self, value: u32) -> Option<String>;
}

/// No names known: values are printed as numbers.
pub struct NoNames;

impl EnumNames for NoNames {
    fn drop_reason(&self, _: u32) -> Option<String> {
        None
    }
    fn rst_reason(&self, _: u32) -> Option<String> {
        None
    }
}

/// Decodes one ring-buffer record. Fails on a short or oversized record, and on
/// an unknown kind, rather than guessing.
pub fn decode(data: &[u8], names: &dyn EnumNames) -> Result<Event> {
    if data.len() != RAW_EVENT_SIZE {
        bail!(
            "record of {} bytes, expected {RAW_EVENT_SIZE}: BPF objects and ctrace disagree on the event layout",
            data.len()
        );
    }
    let mut raw = RawEvent::default();
    plain::copy_from_bytes(&mut raw, data)
        .map_err(|e| anyhow::anyhow!("record does not fit the event layout: {e:?}"))?;
    from_raw(&raw, names)
}

fn addr(family: Family, b: &[u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(*b)),
    }
}

fn tuple(family: Family, t: &crate::bpf::symptoms::types::ct_tuple) -> Tuple {
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

pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => other.to_string(),
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
        0 => "ignore".into(),
        1 => "invalid".into(),
        2 => "accept".into(),
        n => n.to_string(),
    }
}

fn hook_name(h: u8) -> Option<String> {
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
        1 => "netfilter",
        2 => "kprobe",
        3 => "fentry",
        4 => "tracepoint",
        _ => "unknown",
    }
}

/// The wording of a reason code. The kernel's own text where it has one
/// (window verdicts, drop reasons), else ours, naming the kernel counter.
/// The wording the kernel logs for each `enum nf_tcp_invalid_log_type` (the
/// typed form of nf_tcp_log_invalid in Debian's 6.1 and 6.12).
fn typed_window_reason(ty: u32, bound: u32) -> String {
    match ty {
        1 => format!("{bound} bytes more than expected"),
        2 => format!("SEQ is over upper bound {bound} (over the window of the receiver)"),
        3 => format!("ACK is over upper bound {bound} (ACKed data not seen yet)"),
        4 => format!("SEQ is under lower bound {bound} (already ACKed data retransmitted)"),
        5 => format!("ignored ACK under lower bound {bound} (possible overly delayed)"),
        t => format!("window verdict type {t}, bound {bound}"),
    }
}

pub fn reason_text(code: u32, kernel_text: &str, bound: u32, value: Option<String>) -> String {
    match code {
        0 => String::new(),
        1 => "clash with an existing entry, not resolved (insert_failed, drop)".into(),
        2 => "entry was dying at confirm (insert_failed)".into(),
        3 => "confirm dropped the packet: tuple already taken (insert_failed)".into(),
        4 => "clash resolved: merged into the existing entry (clash_resolve)".into(),
        5 => "clash resolved: NAT clash, kept with IPS_NAT_CLASH (clash_resolve)".into(),
        10 => expand_format(kernel_text, bound),
        11 => {
            "no conntrack entry after conntrack: INVALID (stable mode cannot see the reason)".into()
        }
        12 => "INVALID (the kernel logged no reason)".into(),
        13 => "out of window (fentry cannot read the kernel's reason text here: use --mode kprobe)"
            .into(),
        20 | 21 => value.unwrap_or_default(),
        n => format!("reason {n}"),
    }
}

/// The kernel logs "SEQ is over upper bound %u (over the window of the receiver)":
/// print it as the kernel would, with the bound filled in.
fn expand_format(fmt: &str, bound: u32) -> String {
    let mut out = String::with_capacity(fmt.len() + 10);
    let mut it = fmt.chars().peekable();
    let mut used = false;
    while let Some(c) = it.next() {
        if c == '%' && !used {
            // skip the conversion: flags, width, length, and the letter
            while let Some(&n) = it.peek() {
                it.next();
                if n.is_ascii_alphabetic() && !matches!(n, 'l' | 'h' | 'z') {
                    break;
                }
            }
            out.push_str(&bound.to_string());
            used = true;
        } else {
            out.push(c);
        }
    }
    out.trim_end_matches('\n').to_string()
}

pub fn from_raw(raw: &RawEvent, names: &dyn EnumNames) -> Result<Event> {
    let Some(kind) = Kind::from_raw(raw.kind, raw.flags) else {
        bail!("unknown event kind {}", raw.kind);
    };
    let family = match raw.family {
        4 => Family::Ipv4,
        6 => Family::Ipv6,
        other => bail!("unknown address family {other} in a {kind} record"),
    };
    let flags = raw.flags;
    let reply = (flags & F_REPLY != 0).then(|| tuple(family, &raw.reply));
    let nat = match (flags & F_SNAT != 0, flags & F_DNAT != 0) {
        (true, true) => Some("snat+dnat".to_string()),
        (true, false) => Some("snat".to_string()),
        (false, true) => Some("dnat".to_string()),
        _ => None,
    };
    let is_window = matches!(kind, Kind::TcpInvalid | Kind::TcpIgnored | Kind::TcpLiberal);
    let logged = matches!(raw.reason, 10 | 13 | 14);
    let tcp = (raw.proto == 6 && kind != Kind::NatAlloc && kind != Kind::InsertFailed || is_window)
        .then(|| {
            let w = flags & F_WINDOW != 0;
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
    let drop_reason = match raw.reason {
        20 => Some(
            names
                .drop_reason(raw.drop_reason)
                .unwrap_or_else(|| raw.drop_reason.to_string()),
        ),
        21 => Some(
            names
                .rst_reason(raw.drop_reason)
                .unwrap_or_else(|| raw.drop_reason.to_string()),
        ),
        _ => None,
    };
    let task = flags & F_TASK != 0;
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
        reason: if raw.reason == 14 {
            typed_window_reason(raw.drop_reason, raw.bound)
        } else {
            reason_text(raw.reason, &text, raw.bound, drop_reason.clone())
        },
        reason_code: raw.reason,
        nat,
        remapped: flags & F_REMAPPED != 0,
        random_fully: flags & F_RANDOM_FULLY != 0,
        tcp,
        context: if task { "task" } else { "unattributed" }.into(),
        pid: task.then_some(raw.pid),
        comm: task.then(|| c_str(&raw.comm)),
        cgroup_id: task.then_some(raw.cgroup_id),
        location: None,
        location_addr: (raw.location != 0).then(|| format!("{:#x}", raw.location)),
        source: source_name(raw.source).into(),
        hook: hook_name(raw.hook),
        drop_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        r.flags = F_REPLY | F_SNAT | F_REMAPPED;
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
        r.flags = F_WINDOW | F_REPLY;
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
        r.flags = F_MASKED;
        assert_eq!(decode(&bytes(&r), &NoNames).unwrap().kind, Kind::TcpLiberal);
    }

    #[test]
    fn task_context_carries_pid_and_comm() {
        let mut r = raw(1);
        r.flags = F_TASK;
        r.pid = 77;
        for (d, s) in r.comm.iter_mut().zip(b"curl") {
            *d = *s as i8;
        }
        let e = decode(&bytes(&r), &NoNames).unwrap();
        assert_eq!(e.pid, Some(77));
        assert_eq!(e.comm.as_deref(), Some("curl"));
        assert_eq!(e.context, "task");
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
        r.flags = F_REPLY | F_SNAT;
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
