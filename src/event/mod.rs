//! The event model: the decoded [`Event`] that every user interface and the
//! recording format share. The raw record is the ABI's (`crate::abi`, defined
//! once in `bpf/ctrace.h`); `decode` turns one into the other.

mod decode;

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use crate::abi::{RawEvent, RAW_EVENT_SIZE};
pub use decode::{decode, from_raw, hook_name, proto_name, tcp_flags};

/// Which bound a window verdict crossed (the kernel's nf_tcp_log_invalid
/// cases). The names are part of the recording format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowLog {
    /// "%u bytes more than expected"
    LenLong,
    /// "SEQ is over upper bound %u (over the window of the receiver)"
    SeqOver,
    /// "ACK is over upper bound %u (ACKed data not seen yet)"
    AckOver,
    /// "SEQ is under lower bound %u (already ACKed data retransmitted)"
    SeqUnder,
    /// "ignored ACK under lower bound %u (possible overly delayed)"
    AckUnder,
}

impl WindowLog {
    /// Under the lower bound (or longer than expected): retransmitted or
    /// delayed data, which 6.1+ IGNOREs instead of marking INVALID.
    pub fn under_lower(self) -> bool {
        matches!(
            self,
            WindowLog::SeqUnder | WindowLog::AckUnder | WindowLog::LenLong
        )
    }
}

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
    pub proto: Cow<'static, str>,
    pub orig: Tuple,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Tuple>,
    /// The translated port NAT chose (SNAT: source, DNAT: destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The reason, in the kernel's wording where the kernel has one.
    #[serde(default)]
    pub reason: Cow<'static, str>,
    #[serde(default)]
    pub reason_code: u32,
    /// Window verdicts: which bound the segment crossed, from the reason's
    /// code (the typed log) or the kernel's own format string (kprobe); absent
    /// where the mode cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_log: Option<WindowLog>,
    /// "snat", "dnat" or "snat+dnat" where NAT touched the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remapped: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub random_fully: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Box<Tcp>>,
    /// "task" when pid/comm/cgroup_id describe the process that caused the event;
    /// "unattributed" when the hook may run in softirq, where the current task is
    /// whoever was interrupted: no pid is given rather than a wrong one.
    pub context: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Symbolized kernel location (`nf_hook_slow+0x9c`) where the kernel gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Shared: one string per kernel location, whatever the events at it.
    pub location: Option<std::sync::Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_addr: Option<String>,
    /// Which hook flavour produced it: netfilter, kprobe, fentry, tracepoint.
    pub source: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<Cow<'static, str>>,
    /// Who owns the original source address (a pod, a container, a netns,
    /// the host), filled by the consumer (`crate::workload`); absent where
    /// unknown or turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<std::sync::Arc<crate::workload::Workload>>,
    /// The incident this event belongs to (`{"type":"incident","id":N}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<u64>,
    /// insert_failed and clash_resolved: the connection that holds the tuple
    /// the loser wanted; `null` when not known, with `winner_unknown` saying why.
    #[serde(
        default,
        skip_serializing_if = "WinnerSlot::is_absent",
        with = "winner_slot"
    )]
    pub winner: WinnerSlot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner_unknown: Option<String>,
    /// With `record --pcap`: the frame of this event's packet in the capture
    /// (1-based, tshark's `frame.number`); absent when not captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<u64>,
    /// The packet's first bytes as BPF captured them (`--pcap`): for the
    /// capture file only, never in the JSON.
    #[serde(skip)]
    pub packet: Option<Packet>,
}

/// An offending packet's first bytes, from its IP header on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The packet's length on the wire from its IP header on.
    pub len: u32,
    /// The captured bytes (at most the snap length).
    pub data: Vec<u8>,
}

/// The connection that won a clash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Winner {
    pub orig: Tuple,
    pub reply: Tuple,
    /// The CPU and time of the winner's NAT allocation (`seen:"nat"`); null
    /// when it was found in the table instead (`seen:"table"`).
    pub cpu: Option<u32>,
    pub ts_ns: Option<u64>,
    /// "nat": from the NAT allocation that took the reply tuple; "table": from
    /// the conntrack table.
    pub seen: String,
}

/// An event's `winner`: not applicable (absent), not known (`null`), or known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WinnerSlot {
    #[default]
    Absent,
    Unknown,
    Known(Box<Winner>),
}

impl WinnerSlot {
    pub fn is_absent(&self) -> bool {
        matches!(self, WinnerSlot::Absent)
    }

    pub fn known(&self) -> Option<&Winner> {
        match self {
            WinnerSlot::Known(w) => Some(w),
            _ => None,
        }
    }
}

mod winner_slot {
    use super::{Winner, WinnerSlot};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(w: &WinnerSlot, s: S) -> Result<S::Ok, S::Error> {
        match w {
            WinnerSlot::Known(w) => w.serialize(s),
            _ => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WinnerSlot, D::Error> {
        Ok(match Option::<Winner>::deserialize(d)? {
            Some(w) => WinnerSlot::Known(Box::new(w)),
            None => WinnerSlot::Unknown,
        })
    }
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
            reason: Cow::Borrowed(""),
            reason_code: 0,
            window_log: None,
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
            incident: None,
            winner: WinnerSlot::Absent,
            winner_unknown: None,
            workload: None,
            frame: None,
            packet: None,
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
/// Names are `'static`: an event borrows them instead of copying a string.
pub trait EnumNames {
    fn drop_reason(&self, value: u32) -> Option<&'static str>;
    fn rst_reason(&self, value: u32) -> Option<&'static str>;
}

/// No names known: values are printed as numbers.
pub struct NoNames;

impl EnumNames for NoNames {
    fn drop_reason(&self, _: u32) -> Option<&'static str> {
        None
    }
    fn rst_reason(&self, _: u32) -> Option<&'static str> {
        None
    }
}
