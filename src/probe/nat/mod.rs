//! Probe "nat": which translated tuple (and port) NAT gave a new connection
//! (`nat_alloc`). BPF side: nat.bpf.c.

use libbpf_rs::{NF_INET_LOCAL_IN, NF_INET_POST_ROUTING};

use super::features::Features;
use super::object::{Object, OpenCfg};
use super::{need_symbols, Flavour, Mode, NfSlot, Probe, Spec};

/// Just below confirm's slot: after both NAT manips (100), before confirm (INT_MAX).
pub const AFTER_NAT: i32 = i32::MAX - 2;

pub static SPEC: Spec = Spec {
    probe: Probe::Nat,
    name: "nat",
    symbols: &[
        "nf_nat_l4proto_unique_tuple",
        "get_unique_tuple",
        "nf_nat_setup_info",
    ],
    named: &["nf_nat_l4proto_unique_tuple", "get_unique_tuple"],
    named_why:
        "a symbol here, but nf_nat_setup_info gives both tuples on every kernel: ctrace hooks that",
    order: |m: Mode| m.candidates().to_vec(),
    programs,
    hooks,
    stable_is_netfilter: true,
    optional: None,
    degraded: None,
    nf_slots,
    twins: &[],
    open,
    skeleton_programs: || crate::probe_object_programs!(nat, NatSkelBuilder),
};

fn programs(fl: Flavour, _: &Features) -> Vec<&'static str> {
    match fl {
        Flavour::Fentry => vec!["nat_fexit"],
        Flavour::Kprobe => vec!["nat_kprobe", "nat_kretprobe"],
        Flavour::Stable => vec!["nat_nf"],
    }
}

fn hooks(fl: Flavour, f: &Features, _notes: &mut Vec<String>) -> Result<Vec<String>, String> {
    Ok(match fl {
        Flavour::Fentry => {
            need_symbols(f, &["nf_nat_setup_info"])?;
            vec!["fexit nf_nat_setup_info".into()]
        }
        Flavour::Kprobe => {
            need_symbols(f, &["nf_nat_setup_info"])?;
            vec!["kprobe+kretprobe nf_nat_setup_info".into()]
        }
        Flavour::Stable => vec!["netfilter POSTROUTING+INPUT at INT_MAX-2 (after NAT)".into()],
    })
}

fn nf_slots(prog: &str) -> &'static [NfSlot] {
    match prog {
        "nat_nf" => &[
            (NF_INET_POST_ROUTING, AFTER_NAT),
            (NF_INET_LOCAL_IN, AFTER_NAT),
        ],
        _ => &[],
    }
}

fn open(cfg: &OpenCfg) -> anyhow::Result<Object> {
    crate::open_probe_object!(nat, NatSkelBuilder, cfg)
}
