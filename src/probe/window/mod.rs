//! Probe "window": TCP segments conntrack judged out of window: INVALID
//! (`tcp_invalid`, they escape de-NAT), IGNORED (`tcp_ignored`), or accepted
//! only because of be_liberal (`tcp_liberal`). BPF side: window.bpf.c; its
//! reason wording and verdict classes: reason.rs.

pub mod reason;

use libbpf_rs::{NF_INET_LOCAL_OUT, NF_INET_PRE_ROUTING};

use super::features::Features;
use super::object::{Object, OpenCfg};
use super::{need_symbols, Flavour, Mode, NfSlot, Probe, Spec};

/// The load key of fexit nf_tcp_log_invalid, the optional part of the fentry
/// window probe (refused where the kernel's BTF marks the function variadic).
pub const FENTRY_LOG: &str = "window:fentry-log";

/// Conntrack runs at -200 in PREROUTING and OUTPUT: just after it.
pub const AFTER_CONNTRACK: i32 = -199;

pub static SPEC: Spec = Spec {
    probe: Probe::Window,
    name: "window",
    symbols: &[
        "tcp_in_window",
        "nf_conntrack_tcp_packet",
        "nf_tcp_log_invalid",
        "nf_ct_l4proto_log_invalid",
        "nf_l4proto_log_invalid",
    ],
    named: &["tcp_in_window"],
    named_why:
        "a symbol here, but its verdict is read at nf_tcp_log_invalid and nf_conntrack_tcp_packet",
    order,
    programs,
    hooks,
    stable_is_netfilter: true,
    optional: Some(("win_log_fexit", FENTRY_LOG)),
    degraded: None,
    nf_slots,
    twins: &[],
    open,
    skeleton_programs: || crate::probe_object_programs!(window, WindowSkelBuilder),
};

/// Only the kprobe reads nf_tcp_log_invalid's variadic arguments (the reason's
/// bound, and its text on every kernel): it ranks first in auto mode.
fn order(m: Mode) -> Vec<Flavour> {
    if m == Mode::Auto {
        return vec![Flavour::Kprobe, Flavour::Fentry, Flavour::Stable];
    }
    m.candidates().to_vec()
}

fn programs(fl: Flavour, f: &Features) -> Vec<&'static str> {
    match fl {
        Flavour::Fentry => {
            let mut v = vec!["win_fentry", "win_fexit"];
            if f.has("nf_tcp_log_invalid") && !matches!(f.load_named(FENTRY_LOG), Some(Err(_))) {
                v.push("win_log_fexit");
            }
            v
        }
        Flavour::Kprobe => {
            let mut v = vec!["win_kprobe", "win_kretprobe"];
            if f.has("nf_tcp_log_invalid") {
                v.extend(["win_log_kprobe", "win_log_kretprobe"]);
            }
            if f.has("nf_ct_l4proto_log_invalid") {
                v.push("win_l4_kprobe");
            }
            if f.has("nf_l4proto_log_invalid") {
                v.push("win_l4p_kprobe");
            }
            v
        }
        Flavour::Stable => vec!["win_nf"],
    }
}

fn hooks(fl: Flavour, f: &Features, notes: &mut Vec<String>) -> Result<Vec<String>, String> {
    Ok(match fl {
        Flavour::Fentry => {
            need_symbols(f, &["nf_conntrack_tcp_packet"])?;
            let mut h = vec!["fentry+fexit nf_conntrack_tcp_packet".to_string()];
            if programs(fl, f).contains(&"win_log_fexit") {
                h.push("fexit nf_tcp_log_invalid".into());
                notes.push("fentry cannot read the variadic reason arguments: no bound, reason text only where the kernel exposes it".into());
            } else {
                let why = match f.load_named(FENTRY_LOG) {
                    Some(Err(e)) => format!("fexit nf_tcp_log_invalid refused: {e}"),
                    _ => "no nf_tcp_log_invalid on this kernel".into(),
                };
                notes.push(format!(
                    "{why}: INVALID verdicts only, no reasons, no IGNORED"
                ));
            }
            h
        }
        Flavour::Kprobe => {
            need_symbols(f, &["nf_conntrack_tcp_packet"])?;
            let mut h = vec!["kprobe+kretprobe nf_conntrack_tcp_packet".to_string()];
            if f.has("nf_tcp_log_invalid") {
                h.push("kprobe+kretprobe nf_tcp_log_invalid".into());
            } else {
                notes.push("no nf_tcp_log_invalid (kernel 6.0 or older): no window bounds, no IGNORED verdicts".into());
            }
            if f.has("nf_ct_l4proto_log_invalid") {
                h.push("kprobe nf_ct_l4proto_log_invalid".into());
            }
            if f.has("nf_l4proto_log_invalid") {
                h.push("kprobe nf_l4proto_log_invalid".into());
            }
            h
        }
        Flavour::Stable => {
            notes.push("stable mode: INVALID only (a TCP packet left without a ct), no reason text, no IGNORED verdicts".into());
            vec!["netfilter PREROUTING+OUTPUT at -199 (after conntrack)".into()]
        }
    })
}

fn nf_slots(prog: &str) -> &'static [NfSlot] {
    match prog {
        "win_nf" => &[
            (NF_INET_PRE_ROUTING, AFTER_CONNTRACK),
            (NF_INET_LOCAL_OUT, AFTER_CONNTRACK),
        ],
        _ => &[],
    }
}

fn open(cfg: &OpenCfg) -> anyhow::Result<Object> {
    crate::open_probe_object!(window, WindowSkelBuilder, cfg)
}
