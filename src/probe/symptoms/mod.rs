//! Probe "symptoms": what the failures look like from the hosts: a connect's
//! SYN retransmitted (`syn_retrans`), a packet netfilter dropped (`nf_drop`),
//! the node's own RST to a segment no socket wanted (`host_rst`). Tracepoints
//! in every mode; only the RST hook follows the mode before 6.10. BPF side:
//! symptoms.bpf.c.

use super::features::Features;
use super::object::{Object, OpenCfg};
use super::{need_symbols, no_nf_slots, Degraded, Flavour, Mode, Probe, Spec};

pub static SPEC: Spec = Spec {
    probe: Probe::Symptoms,
    name: "symptoms",
    symbols: &["tcp_v4_send_reset", "tcp_v6_send_reset"],
    named: &[],
    named_why: "",
    order,
    programs,
    hooks,
    stable_is_netfilter: false,
    optional: None,
    degraded: Some(degraded),
    nf_slots: no_nf_slots,
    twins: &[
        ("sym_kfree_skb", "sym_kfree_twin"),
        ("sym_retransmit", "sym_retrans_twin"),
    ],
    open,
    skeleton_programs: || crate::probe_object_programs!(symptoms, SymptomsSkelBuilder),
};

/// Tracepoints first in every mode; the mode's own flavours follow for the RST.
fn order(m: Mode) -> Vec<Flavour> {
    let mut v = vec![Flavour::Stable];
    v.extend(m.candidates().iter().filter(|f| **f != Flavour::Stable));
    v
}

fn programs(fl: Flavour, f: &Features) -> Vec<&'static str> {
    let mut v = vec!["sym_retransmit", "sym_retrans_twin"];
    if f.kfree_skb_reason {
        v.extend(["sym_kfree_skb", "sym_kfree_twin"]);
    }
    match fl {
        Flavour::Stable if f.tcp_send_reset_nosk => v.push("sym_send_reset"),
        Flavour::Stable => {}
        Flavour::Kprobe => {
            v.push("sym_v4_reset_kprobe");
            if f.has("tcp_v6_send_reset") {
                v.push("sym_v6_reset_kprobe");
            }
        }
        Flavour::Fentry => {
            v.push("sym_v4_reset_fentry");
            if f.has("tcp_v6_send_reset") {
                v.push("sym_v6_reset_fentry");
            }
        }
    }
    v
}

fn hooks(fl: Flavour, f: &Features, notes: &mut Vec<String>) -> Result<Vec<String>, String> {
    let mut h = vec!["tp_btf/tcp_retransmit_skb (SYN_SENT), twice".to_string()];
    if f.kfree_skb_reason {
        h.push("tp_btf/kfree_skb (NETFILTER_DROP), twice".into());
    } else {
        notes.push("nf_drop: kfree_skb has no drop reason on this kernel (5.17+)".into());
    }
    match fl {
        Flavour::Stable if f.tcp_send_reset_nosk => {
            h.push("tp_btf/tcp_send_reset (no socket)".into())
        }
        Flavour::Stable => {
            return Err("tcp_send_reset does not report the no-socket RST before 6.10: host_rst needs a kprobe or fentry on tcp_v4_send_reset".into());
        }
        Flavour::Fentry | Flavour::Kprobe => {
            need_symbols(f, &["tcp_v4_send_reset"])?;
            if fl == Flavour::Kprobe && !f.kprobe_pmu {
                return Err("kprobes are not available on this kernel (no kprobe PMU)".into());
            }
            h.push(format!("{} tcp_v4_send_reset/tcp_v6_send_reset", fl.name()));
        }
    }
    Ok(h)
}

/// Drops and SYN retransmits still work without a RST hook.
fn degraded(f: &Features) -> Option<Degraded> {
    f.kfree_skb_reason.then(|| Degraded {
        flavour: Flavour::Stable,
        hooks: vec![
            "tp_btf/tcp_retransmit_skb (SYN_SENT), twice".into(),
            "tp_btf/kfree_skb (NETFILTER_DROP), twice".into(),
        ],
        programs: vec![
            "sym_kfree_skb",
            "sym_kfree_twin",
            "sym_retransmit",
            "sym_retrans_twin",
        ],
        notes: vec!["host_rst: no hook on this kernel in this mode".into()],
    })
}

fn open(cfg: &OpenCfg) -> anyhow::Result<Object> {
    crate::open_probe_object!(symptoms, SymptomsSkelBuilder, cfg)
}
