//! Probe "confirm": how a new connection's insert at conntrack confirm ended:
//! `insert_failed` (the packet dropped) or `clash_resolved`. BPF side:
//! confirm.bpf.c; its reason wording: reason.rs.

pub mod reason;

use libbpf_rs::{NF_INET_LOCAL_IN, NF_INET_POST_ROUTING};

use super::features::Features;
use super::object::{Object, OpenCfg};
use super::{need_symbols, Flavour, Mode, NfSlot, Probe, Spec};

/// The last slot before confirm (INT_MAX); nat sits just below.
pub const BEFORE_CONFIRM: i32 = i32::MAX - 1;

pub static SPEC: Spec = Spec {
    probe: Probe::Confirm,
    name: "confirm",
    symbols: &[
        "__nf_conntrack_confirm",
        "nf_ct_resolve_clash",
        "__nf_ct_resolve_clash",
    ],
    named: &["nf_ct_resolve_clash"],
    named_why: "a symbol here; the return of __nf_conntrack_confirm already tells a merged clash from a lost one",
    order: |m: Mode| m.candidates().to_vec(),
    programs,
    hooks,
    stable_is_netfilter: true,
    optional: None,
    degraded: None,
    nf_slots,
    twins: &[("confirm_kfree_skb", "confirm_kfree_twin")],
    open,
    skeleton_programs: || crate::probe_object_programs!(confirm, ConfirmSkelBuilder),
};

fn programs(fl: Flavour, _: &Features) -> Vec<&'static str> {
    match fl {
        Flavour::Fentry => vec!["confirm_fentry", "confirm_fexit"],
        Flavour::Kprobe => vec!["confirm_kprobe", "confirm_kretprobe"],
        Flavour::Stable => vec!["confirm_nf", "confirm_kfree_skb", "confirm_kfree_twin"],
    }
}

fn hooks(fl: Flavour, f: &Features, notes: &mut Vec<String>) -> Result<Vec<String>, String> {
    Ok(match fl {
        Flavour::Fentry => {
            need_symbols(f, &["__nf_conntrack_confirm"])?;
            vec!["fentry+fexit __nf_conntrack_confirm".into()]
        }
        Flavour::Kprobe => {
            need_symbols(f, &["__nf_conntrack_confirm"])?;
            vec!["kprobe+kretprobe __nf_conntrack_confirm".into()]
        }
        Flavour::Stable => {
            if !f.kfree_skb_reason {
                return Err("tp_btf/kfree_skb has no drop reason on this kernel (5.17+)".into());
            }
            notes.push(
                "stable mode: resolved clashes (clash_resolve) are not visible, only lost inserts"
                    .into(),
            );
            vec![
                "netfilter POSTROUTING+INPUT at INT_MAX-1 (before confirm)".into(),
                "tp_btf/kfree_skb reason NETFILTER_DROP, twice".into(),
            ]
        }
    })
}

fn nf_slots(prog: &str) -> &'static [NfSlot] {
    match prog {
        "confirm_nf" => &[
            (NF_INET_POST_ROUTING, BEFORE_CONFIRM),
            (NF_INET_LOCAL_IN, BEFORE_CONFIRM),
        ],
        _ => &[],
    }
}

fn open(cfg: &OpenCfg) -> anyhow::Result<Object> {
    crate::open_probe_object!(confirm, ConfirmSkelBuilder, cfg)
}
