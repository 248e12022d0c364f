//! The ABI between the BPF programs and user space, defined once in
//! `bpf/ctrace.h`: the record (`struct ct_event`) and every enum it carries
//! (kind, reason, flags, source, window log type, verdict). Rust reaches all of
//! them through the skeletons generated from the probe rooms (build.rs): the
//! values below are read from the generated types, never copied by hand.

/// The generated skeletons, one per probe room (`src/probe/<name>/`).
#[allow(
    clippy::all,
    clippy::pedantic,
    non_camel_case_types,
    dead_code,
    unused_imports
)]
pub mod skel {
    pub mod nat {
        include!(concat!(env!("OUT_DIR"), "/nat.skel.rs"));
    }
    pub mod confirm {
        include!(concat!(env!("OUT_DIR"), "/confirm.skel.rs"));
    }
    pub mod window {
        include!(concat!(env!("OUT_DIR"), "/window.skel.rs"));
    }
    pub mod symptoms {
        include!(concat!(env!("OUT_DIR"), "/symptoms.skel.rs"));
    }
}

use skel::symptoms::types as t;

/// The record as the kernel writes it.
pub type RawEvent = t::ct_event;
/// One direction of a connection, as the kernel writes it.
pub type RawTuple = t::ct_tuple;

// SAFETY: ct_event is a plain C struct of integers and byte arrays; every bit
// pattern is a valid value.
unsafe impl plain::Plain for RawEvent {}

/// Size of one record; every probe object is built from the same header.
pub const RAW_EVENT_SIZE: usize = std::mem::size_of::<RawEvent>();

const _: () = {
    assert!(std::mem::size_of::<skel::nat::types::ct_event>() == RAW_EVENT_SIZE);
    assert!(std::mem::size_of::<skel::confirm::types::ct_event>() == RAW_EVENT_SIZE);
    assert!(std::mem::size_of::<skel::window::types::ct_event>() == RAW_EVENT_SIZE);
    // ts, location, ct (3 x u64), 13 x u32, 2 x u16, 8 x u8, 2 tuples (36 B),
    // reason_text 64
    assert!(RAW_EVENT_SIZE == 24 + 52 + 4 + 8 + 72 + 64);
    // a record followed by its packet's bytes keeps the ring's 8-byte alignment
    assert!(RAW_EVENT_SIZE % 8 == 0);
    assert!(LEN_FULL == RAW_EVENT_SIZE);
    assert!(LEN_PACKET < LEN_CONN && LEN_CONN < LEN_FULL);
};

/// `enum ct_len`: the bytes of a record that describes a packet (nf_drop,
/// syn_retrans: up to the reply tuple) or a connection (nat_alloc,
/// clash_resolved: up to the window state); every other record is whole.
/// What a shorter record lacks reads as zeros.
pub const LEN_PACKET: usize = t::ct_len::CT_LEN_PACKET.0 as usize;
pub const LEN_CONN: usize = t::ct_len::CT_LEN_CONN.0 as usize;
pub const LEN_FULL: usize = t::ct_len::CT_LEN_FULL.0 as usize;

/// `enum ct_lost`: the lost counter's keys.
pub mod lost {
    use super::t::ct_lost as L;
    pub const OTHERS: u32 = L::CT_LOST_OTHERS.0;
    pub const FAILURES: u32 = L::CT_LOST_FAILURES.0;
    pub const KEYS: u32 = L::CT_LOST_KEYS.0;
}

/// `enum ct_snap`: the most packet bytes one record carries after it.
pub const SNAP_MAX: u32 = t::ct_snap::CT_SNAP_MAX.0;

/// `enum ct_kind`.
pub mod kind {
    use super::t::ct_kind as K;
    pub const NAT_ALLOC: u32 = K::CT_KIND_NAT_ALLOC.0;
    pub const INSERT_FAILED: u32 = K::CT_KIND_INSERT_FAILED.0;
    pub const CLASH_RESOLVED: u32 = K::CT_KIND_CLASH_RESOLVED.0;
    pub const TCP_INVALID: u32 = K::CT_KIND_TCP_INVALID.0;
    pub const TCP_IGNORED: u32 = K::CT_KIND_TCP_IGNORED.0;
    pub const HOST_RST: u32 = K::CT_KIND_HOST_RST.0;
    pub const SYN_RETRANS: u32 = K::CT_KIND_SYN_RETRANS.0;
    pub const NF_DROP: u32 = K::CT_KIND_NF_DROP.0;
}

/// `enum ct_reason`: the wording of each lives with the probe that emits it.
pub mod reason {
    use super::t::ct_reason as R;
    pub const NONE: u32 = R::CT_R_NONE.0;
    pub const CONFIRM_CLASH: u32 = R::CT_R_CONFIRM_CLASH.0;
    pub const CONFIRM_DYING: u32 = R::CT_R_CONFIRM_DYING.0;
    pub const CONFIRM_DROP: u32 = R::CT_R_CONFIRM_DROP.0;
    pub const CLASH_MERGED: u32 = R::CT_R_CLASH_MERGED.0;
    pub const CLASH_NAT_HARDER: u32 = R::CT_R_CLASH_NAT_HARDER.0;
    pub const WIN_TEXT: u32 = R::CT_R_WIN_TEXT.0;
    pub const WIN_NO_CT: u32 = R::CT_R_WIN_NO_CT.0;
    pub const WIN_UNLOGGED: u32 = R::CT_R_WIN_UNLOGGED.0;
    pub const WIN_NOTEXT: u32 = R::CT_R_WIN_NOTEXT.0;
    pub const WIN_TYPED: u32 = R::CT_R_WIN_TYPED.0;
    pub const DROP_REASON: u32 = R::CT_R_DROP_REASON.0;
    pub const RST_REASON: u32 = R::CT_R_RST_REASON.0;
}

/// `enum ct_flag` (the record's `flags` byte).
pub mod flag {
    use super::t::ct_flag as F;
    pub const REPLY: u8 = F::CT_F_REPLY.0 as u8;
    pub const REMAPPED: u8 = F::CT_F_REMAPPED.0 as u8;
    pub const MASKED: u8 = F::CT_F_MASKED.0 as u8;
    pub const RANDOM_FULLY: u8 = F::CT_F_RANDOM_FULLY.0 as u8;
    pub const WINDOW: u8 = F::CT_F_WINDOW.0 as u8;
    pub const SNAT: u8 = F::CT_F_SNAT.0 as u8;
    pub const DNAT: u8 = F::CT_F_DNAT.0 as u8;
}

/// `enum ct_source`: which hook flavour wrote the record.
pub mod source {
    use super::t::ct_source as S;
    pub const NETFILTER: u8 = S::CT_SRC_NETFILTER.0 as u8;
    pub const KPROBE: u8 = S::CT_SRC_KPROBE.0 as u8;
    pub const FENTRY: u8 = S::CT_SRC_FENTRY.0 as u8;
    pub const TRACEPOINT: u8 = S::CT_SRC_TRACEPOINT.0 as u8;
}

/// `enum ct_win_log`: the typed window log (with `reason::WIN_TYPED`).
pub mod win_log {
    use super::t::ct_win_log as W;
    pub const LEN_LONG: u32 = W::CT_WIN_LOG_LEN_LONG.0;
    pub const SEQ_OVER: u32 = W::CT_WIN_LOG_SEQ_OVER.0;
    pub const ACK_OVER: u32 = W::CT_WIN_LOG_ACK_OVER.0;
    pub const SEQ_UNDER: u32 = W::CT_WIN_LOG_SEQ_UNDER.0;
    pub const ACK_UNDER: u32 = W::CT_WIN_LOG_ACK_UNDER.0;
}

/// `enum ct_verdict`: what tcp_in_window proposed / conntrack did.
pub mod verdict {
    use super::t::ct_verdict as V;
    pub const IGNORE: u8 = V::CT_V_IGNORE.0 as u8;
    pub const INVALID: u8 = V::CT_V_INVALID.0 as u8;
    pub const ACCEPT: u8 = V::CT_V_ACCEPT.0 as u8;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    /// Every enumerator of bpf/ctrace.h, by name, with its value; one the
    /// header computes from the record's layout (`enum ct_len`) as its
    /// expression's text.
    fn header_enums() -> BTreeMap<String, Result<u64, String>> {
        let h = include_str!("../bpf/ctrace.h");
        let mut m = BTreeMap::new();
        let mut in_enum = false;
        for line in h.lines() {
            let l = line.trim();
            if l.starts_with("enum ") && l.ends_with('{') {
                in_enum = true;
                continue;
            }
            if in_enum && l.starts_with('}') {
                in_enum = false;
                continue;
            }
            if !in_enum {
                continue;
            }
            let Some((name, rest)) = l.split_once('=') else {
                continue;
            };
            let r = rest.trim();
            let v = if r.starts_with("__builtin_offsetof(") || r.starts_with("sizeof(") {
                let end = r.find(')').unwrap_or_else(|| panic!("{l}: unclosed"));
                Err(r[..=end].to_string())
            } else {
                let v = r.split(',').next().unwrap_or("").trim();
                Ok(match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                }
                .unwrap_or_else(|e| panic!("{l}: {e}")))
            };
            m.insert(name.trim().to_string(), v);
        }
        m
    }

    /// The Rust values are the skeleton's: they equal the header's for every
    /// enumerator, and every enumerator of the header is reachable from Rust.
    /// (A literal copied into Rust would drift from the header; these cannot.)
    #[test]
    fn abi_enums_come_from_the_header_through_the_skeleton() {
        use super::*;
        let rust: Vec<(&str, u64)> = vec![
            ("CT_KIND_NAT_ALLOC", kind::NAT_ALLOC.into()),
            ("CT_KIND_INSERT_FAILED", kind::INSERT_FAILED.into()),
            ("CT_KIND_CLASH_RESOLVED", kind::CLASH_RESOLVED.into()),
            ("CT_KIND_TCP_INVALID", kind::TCP_INVALID.into()),
            ("CT_KIND_TCP_IGNORED", kind::TCP_IGNORED.into()),
            ("CT_KIND_HOST_RST", kind::HOST_RST.into()),
            ("CT_KIND_SYN_RETRANS", kind::SYN_RETRANS.into()),
            ("CT_KIND_NF_DROP", kind::NF_DROP.into()),
            ("CT_R_NONE", reason::NONE.into()),
            ("CT_R_CONFIRM_CLASH", reason::CONFIRM_CLASH.into()),
            ("CT_R_CONFIRM_DYING", reason::CONFIRM_DYING.into()),
            ("CT_R_CONFIRM_DROP", reason::CONFIRM_DROP.into()),
            ("CT_R_CLASH_MERGED", reason::CLASH_MERGED.into()),
            ("CT_R_CLASH_NAT_HARDER", reason::CLASH_NAT_HARDER.into()),
            ("CT_R_WIN_TEXT", reason::WIN_TEXT.into()),
            ("CT_R_WIN_NO_CT", reason::WIN_NO_CT.into()),
            ("CT_R_WIN_UNLOGGED", reason::WIN_UNLOGGED.into()),
            ("CT_R_WIN_NOTEXT", reason::WIN_NOTEXT.into()),
            ("CT_R_WIN_TYPED", reason::WIN_TYPED.into()),
            ("CT_R_DROP_REASON", reason::DROP_REASON.into()),
            ("CT_R_RST_REASON", reason::RST_REASON.into()),
            ("CT_F_REPLY", flag::REPLY.into()),
            ("CT_F_REMAPPED", flag::REMAPPED.into()),
            ("CT_F_MASKED", flag::MASKED.into()),
            ("CT_F_RANDOM_FULLY", flag::RANDOM_FULLY.into()),
            ("CT_F_WINDOW", flag::WINDOW.into()),
            ("CT_F_SNAT", flag::SNAT.into()),
            ("CT_F_DNAT", flag::DNAT.into()),
            ("CT_SRC_NETFILTER", source::NETFILTER.into()),
            ("CT_SRC_KPROBE", source::KPROBE.into()),
            ("CT_SRC_FENTRY", source::FENTRY.into()),
            ("CT_SRC_TRACEPOINT", source::TRACEPOINT.into()),
            ("CT_WIN_LOG_LEN_LONG", win_log::LEN_LONG.into()),
            ("CT_WIN_LOG_SEQ_OVER", win_log::SEQ_OVER.into()),
            ("CT_WIN_LOG_ACK_OVER", win_log::ACK_OVER.into()),
            ("CT_WIN_LOG_SEQ_UNDER", win_log::SEQ_UNDER.into()),
            ("CT_WIN_LOG_ACK_UNDER", win_log::ACK_UNDER.into()),
            ("CT_V_IGNORE", verdict::IGNORE.into()),
            ("CT_V_INVALID", verdict::INVALID.into()),
            ("CT_V_ACCEPT", verdict::ACCEPT.into()),
            ("CT_SNAP_MAX", SNAP_MAX.into()),
            ("CT_LEN_PACKET", LEN_PACKET as u64),
            ("CT_LEN_CONN", LEN_CONN as u64),
            ("CT_LEN_FULL", LEN_FULL as u64),
            ("CT_LOST_OTHERS", lost::OTHERS.into()),
            ("CT_LOST_FAILURES", lost::FAILURES.into()),
            ("CT_LOST_KEYS", lost::KEYS.into()),
        ];
        // what the header computes from the layout, computed again here
        let layout = |expr: &str| -> u64 {
            let off = |f: &str| match f {
                "reply" => std::mem::offset_of!(RawEvent, reply),
                "td_end" => std::mem::offset_of!(RawEvent, td_end),
                _ => panic!("{expr}: no such field in the check"),
            };
            if let Some(f) = expr
                .strip_prefix("__builtin_offsetof(struct ct_event, ")
                .and_then(|r| r.strip_suffix(')'))
            {
                return off(f) as u64;
            }
            assert_eq!(expr, "sizeof(struct ct_event)");
            RAW_EVENT_SIZE as u64
        };
        let header = header_enums();
        for (name, v) in &rust {
            let h = header
                .get(*name)
                .unwrap_or_else(|| panic!("{name}: not in the header"));
            let h = match h {
                Ok(h) => *h,
                Err(expr) => layout(expr),
            };
            assert_eq!(h, *v, "{name}");
        }
        let reached: std::collections::BTreeSet<&str> = rust.iter().map(|(n, _)| *n).collect();
        for name in header.keys() {
            assert!(
                reached.contains(name.as_str()),
                "{name} is in bpf/ctrace.h but not exposed in src/abi.rs"
            );
        }
    }
}
