//! The resolver: a pure function from a kernel's features and the requested mode
//! to an attach plan per probe, with the reason every better candidate lost.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::features::Features;
use super::{Flavour, Mode, Probe};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub candidate: String,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbePlan {
    pub probe: Probe,
    /// None: no candidate works on this kernel in this mode.
    pub chosen: Option<Flavour>,
    /// Human description of the hooks used.
    pub hooks: Vec<String>,
    /// BPF program names to load (the loader executes exactly this).
    pub programs: Vec<String>,
    /// What this choice cannot see.
    pub notes: Vec<String>,
    pub rejected: Vec<Rejected>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub kernel: String,
    pub mode: Mode,
    pub probes: Vec<ProbePlan>,
}

/// The load key of fexit nf_tcp_log_invalid, the optional part of the fentry
/// window probe (refused where the kernel's BTF marks the function variadic).
pub const WINDOW_FENTRY_LOG: &str = "window:fentry-log";

/// The programs of `probe` in `flavour` on a kernel with `f`: what a load
/// attempt and the final load both use.
pub fn programs(probe: Probe, fl: Flavour, f: &Features) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = match (probe, fl) {
        (Probe::Nat, Flavour::Fentry) => vec!["nat_fexit"],
        (Probe::Nat, Flavour::Kprobe) => vec!["nat_kprobe", "nat_kretprobe"],
        (Probe::Nat, Flavour::Stable) => vec!["nat_nf"],
        (Probe::Confirm, Flavour::Fentry) => vec!["confirm_fentry", "confirm_fexit"],
        (Probe::Confirm, Flavour::Kprobe) => vec!["confirm_kprobe", "confirm_kretprobe"],
        (Probe::Confirm, Flavour::Stable) => {
            vec!["confirm_nf", "confirm_kfree_skb"]
        }
        (Probe::Window, Flavour::Fentry) => {
            let mut v = vec!["win_fentry", "win_fexit"];
            if f.has("nf_tcp_log_invalid")
                && !matches!(f.load_named(WINDOW_FENTRY_LOG), Some(Err(_)))
            {
                v.push("win_log_fexit");
            }
            v
        }
        (Probe::Window, Flavour::Kprobe) => {
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
        (Probe::Window, Flavour::Stable) => vec!["win_nf"],
        (Probe::Symptoms, fl) => {
            let mut v = vec!["sym_retransmit"];
            if f.kfree_skb_reason {
                v.push("sym_kfree_skb");
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
    };
    v.dedup();
    v
}

fn need_symbols(f: &Features, syms: &[&str]) -> Result<(), String> {
    for s in syms {
        if !f.has(s) {
            return Err(format!(
                "{s} is not in /proc/kallsyms (inlined on this kernel, or its module is not loaded)"
            ));
        }
    }
    Ok(())
}

fn need_load(f: &Features, p: Probe, fl: Flavour) -> Result<(), String> {
    match f.load(p, fl) {
        Some(Err(e)) => Err(format!("load refused: {e}")),
        _ => Ok(()),
    }
}

/// Checks one candidate. Ok: (hooks, notes). Err: why it cannot be used.
fn candidate(p: Probe, fl: Flavour, f: &Features) -> Result<(Vec<String>, Vec<String>), String> {
    let mut notes = Vec::new();
    let hooks: Vec<String> = match fl {
        Flavour::Fentry => {
            if !f.btf {
                return Err("fentry needs kernel BTF".into());
            }
            match p {
                Probe::Nat => {
                    need_symbols(f, &["nf_nat_setup_info"])?;
                    vec!["fexit nf_nat_setup_info".into()]
                }
                Probe::Confirm => {
                    need_symbols(f, &["__nf_conntrack_confirm"])?;
                    vec!["fentry+fexit __nf_conntrack_confirm".into()]
                }
                Probe::Window => {
                    need_symbols(f, &["nf_conntrack_tcp_packet"])?;
                    let mut h = vec!["fentry+fexit nf_conntrack_tcp_packet".to_string()];
                    if programs(p, fl, f).contains(&"win_log_fexit") {
                        h.push("fexit nf_tcp_log_invalid".into());
                        notes.push("fentry cannot read the variadic reason arguments: no bound, reason text only where the kernel exposes it".into());
                    } else {
                        let why = match f.load_named(WINDOW_FENTRY_LOG) {
                            Some(Err(e)) => format!("fexit nf_tcp_log_invalid refused: {e}"),
                            _ => "no nf_tcp_log_invalid on this kernel".into(),
                        };
                        notes.push(format!(
                            "{why}: INVALID verdicts only, no reasons, no IGNORED"
                        ));
                    }
                    h
                }
                Probe::Symptoms => symptoms_hooks(f, fl, &mut notes)?,
            }
        }
        Flavour::Kprobe => {
            if !f.kprobe_pmu {
                return Err(
                    "kprobes are not available on this kernel (no kprobe PMU: CONFIG_KPROBES is off)"
                        .into(),
                );
            }
            match p {
                Probe::Nat => {
                    need_symbols(f, &["nf_nat_setup_info"])?;
                    vec!["kprobe+kretprobe nf_nat_setup_info".into()]
                }
                Probe::Confirm => {
                    need_symbols(f, &["__nf_conntrack_confirm"])?;
                    vec!["kprobe+kretprobe __nf_conntrack_confirm".into()]
                }
                Probe::Window => {
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
                Probe::Symptoms => symptoms_hooks(f, fl, &mut notes)?,
            }
        }
        Flavour::Stable => match p {
            Probe::Nat => vec!["netfilter POSTROUTING+INPUT at INT_MAX-2 (after NAT)".into()],
            Probe::Confirm => {
                if !f.kfree_skb_reason {
                    return Err("tp_btf/kfree_skb has no drop reason on this kernel (5.17+)".into());
                }
                notes.push("stable mode: resolved clashes (clash_resolve) are not visible, only lost inserts".into());
                vec![
                    "netfilter POSTROUTING+INPUT at INT_MAX-1 (before confirm)".into(),
                    "tp_btf/kfree_skb reason NETFILTER_DROP".into(),
                ]
            }
            Probe::Window => {
                notes.push("stable mode: INVALID only (a TCP packet left without a ct), no reason text, no IGNORED verdicts".into());
                vec!["netfilter PREROUTING+OUTPUT at -199 (after conntrack)".into()]
            }
            Probe::Symptoms => symptoms_hooks(f, fl, &mut notes)?,
        },
    };
    match p {
        Probe::Nat | Probe::Confirm | Probe::Window if fl == Flavour::Stable => {
            if let Some(Err(e)) = f.load(p, fl) {
                let has_hooks = crate::node::kernel_version(&f.kernel).is_some_and(|v| v >= (6, 4));
                return Err(if has_hooks {
                    format!("load refused: {e} (the verifier's log: CTRACE_DEBUG=1)")
                } else {
                    format!(
                        "netfilter BPF hooks are not available (kernel 6.4+): load refused: {e}"
                    )
                });
            }
        }
        _ => need_load(f, p, fl)?,
    }
    Ok((hooks, notes))
}

fn symptoms_hooks(
    f: &Features,
    fl: Flavour,
    notes: &mut Vec<String>,
) -> Result<Vec<String>, String> {
    let mut h = vec!["tp_btf/tcp_retransmit_skb (SYN_SENT)".to_string()];
    if f.kfree_skb_reason {
        h.push("tp_btf/kfree_skb (NETFILTER_DROP)".into());
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

/// The order in which flavours are tried for a probe in a mode. Symptoms are
/// tracepoints in every mode; only their RST hook follows the mode when the
/// tracepoint cannot see the no-socket RST.
fn order(p: Probe, mode: Mode) -> Vec<Flavour> {
    // Only the kprobe reads nf_tcp_log_invalid's variadic arguments (the
    // reason's bound, and its text on every kernel): it ranks first for window.
    if p == Probe::Window && mode == Mode::Auto {
        return vec![Flavour::Kprobe, Flavour::Fentry, Flavour::Stable];
    }
    if p == Probe::Symptoms {
        let mut v = vec![Flavour::Stable];
        v.extend(mode.candidates().iter().filter(|f| **f != Flavour::Stable));
        if mode == Mode::Stable {
            return v;
        }
        return v;
    }
    mode.candidates().to_vec()
}

/// The pure resolver.
pub fn resolve(f: &Features, mode: Mode) -> Plan {
    let probes = super::Probe::ALL
        .iter()
        .map(|&p| resolve_probe(f, mode, p))
        .collect();
    Plan {
        kernel: f.kernel.clone(),
        mode,
        probes,
    }
}

fn resolve_probe(f: &Features, mode: Mode, p: Probe) -> ProbePlan {
    let mut rejected = Vec::new();
    // The hooks the design names first, where ctrace does not use them.
    let named: &[&str] = match p {
        Probe::Nat => &["nf_nat_l4proto_unique_tuple", "get_unique_tuple"],
        Probe::Window => &["tcp_in_window"],
        Probe::Confirm => &["nf_ct_resolve_clash"],
        Probe::Symptoms => &[],
    };
    for s in named {
        let why = if f.has(s) {
            match p {
                Probe::Nat => "a symbol here, but nf_nat_setup_info gives both tuples on every kernel: ctrace hooks that",
                Probe::Confirm => "a symbol here; the return of __nf_conntrack_confirm already tells a merged clash from a lost one",
                _ => "a symbol here, but its verdict is read at nf_tcp_log_invalid and nf_conntrack_tcp_packet",
            }
            .to_string()
        } else {
            "not a symbol on this kernel (inlined)".to_string()
        };
        rejected.push(Rejected {
            candidate: s.to_string(),
            why,
        });
    }
    for fl in order(p, mode) {
        match candidate(p, fl, f) {
            Ok((hooks, notes)) => {
                return ProbePlan {
                    probe: p,
                    chosen: Some(fl),
                    hooks,
                    programs: programs(p, fl, f).into_iter().map(String::from).collect(),
                    notes,
                    rejected,
                };
            }
            Err(why) => rejected.push(Rejected {
                candidate: fl.name().to_string(),
                why,
            }),
        }
    }
    if p == Probe::Symptoms && f.kfree_skb_reason {
        // Drops and SYN retransmits still work without a RST hook.
        let mut programs: Vec<String> = vec!["sym_retransmit".into(), "sym_kfree_skb".into()];
        programs.sort();
        return ProbePlan {
            probe: p,
            chosen: Some(Flavour::Stable),
            hooks: vec![
                "tp_btf/tcp_retransmit_skb (SYN_SENT)".into(),
                "tp_btf/kfree_skb (NETFILTER_DROP)".into(),
            ],
            programs,
            notes: vec!["host_rst: no hook on this kernel in this mode".into()],
            rejected,
        };
    }
    ProbePlan {
        probe: p,
        chosen: None,
        hooks: vec![],
        programs: vec![],
        notes: vec![],
        rejected,
    }
}

impl Plan {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "kernel {} · mode {}", self.kernel, self.mode.name());
        for p in &self.probes {
            let chosen = p.chosen.map(|f| f.name()).unwrap_or("MISSING");
            let _ = writeln!(
                s,
                "{:<9} {:<8} {}",
                p.probe.name(),
                chosen,
                p.hooks.join(" + ")
            );
            for n in &p.notes {
                let _ = writeln!(s, "{:<18}note: {n}", "");
            }
            for r in &p.rejected {
                let _ = writeln!(s, "{:<18}not {}: {}", "", r.candidate, r.why);
            }
        }
        s
    }

    pub fn get(&self, p: Probe) -> Option<&ProbePlan> {
        self.probes.iter().find(|x| x.probe == p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Features {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/features")
            .join(format!("{name}.json"));
        let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&s).unwrap()
    }

    fn chosen(plan: &Plan, p: Probe) -> Option<Flavour> {
        plan.get(p).unwrap().chosen
    }

    #[test]
    fn host_6_18_falls_back_to_stable_everywhere() {
        let f = fixture("6.18-host");
        let plan = resolve(&f, Mode::Auto);
        for p in Probe::ALL {
            assert_eq!(
                chosen(&plan, p),
                Some(Flavour::Stable),
                "{p:?}\n{}",
                plan.render()
            );
        }
        let nat = plan.get(Probe::Nat).unwrap();
        let why: Vec<_> = nat
            .rejected
            .iter()
            .map(|r| (r.candidate.as_str(), r.why.as_str()))
            .collect();
        assert!(why.contains(&(
            "nf_nat_l4proto_unique_tuple",
            "not a symbol on this kernel (inlined)"
        )));
        assert!(
            why.iter()
                .any(|(c, w)| *c == "fentry" && w.contains("EPERM")),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|(c, w)| *c == "kprobe" && w.contains("kprobe PMU")),
            "{why:?}"
        );
        // the host RST is a tracepoint on 6.10+
        assert!(plan
            .get(Probe::Symptoms)
            .unwrap()
            .programs
            .contains(&"sym_send_reset".to_string()));
    }

    #[test]
    fn host_6_18_forced_kprobe_has_nothing() {
        let plan = resolve(&fixture("6.18-host"), Mode::Kprobe);
        assert_eq!(chosen(&plan, Probe::Nat), None);
        assert_eq!(chosen(&plan, Probe::Confirm), None);
        // symptoms keep their tracepoints
        assert_eq!(chosen(&plan, Probe::Symptoms), Some(Flavour::Stable));
    }

    #[test]
    fn debian_6_1_fentry_except_window_which_needs_the_kprobe() {
        let f = fixture("6.1-debian");
        let plan = resolve(&f, Mode::Auto);
        assert_eq!(
            chosen(&plan, Probe::Nat),
            Some(Flavour::Fentry),
            "{}",
            plan.render()
        );
        assert_eq!(chosen(&plan, Probe::Confirm), Some(Flavour::Fentry));
        // auto ranks the kprobe first for window (it reads the reason)
        assert_eq!(chosen(&plan, Probe::Window), Some(Flavour::Kprobe));
        // tcp_send_reset has no no-socket RST before 6.10: the RST hook is fentry
        let sym = plan.get(Probe::Symptoms).unwrap();
        assert_eq!(sym.chosen, Some(Flavour::Fentry));
        assert!(sym.programs.contains(&"sym_v4_reset_fentry".to_string()));
        // no netfilter BPF hooks before 6.4
        let stable = resolve(&f, Mode::Stable);
        assert_eq!(chosen(&stable, Probe::Nat), None);
        assert!(stable
            .get(Probe::Nat)
            .unwrap()
            .rejected
            .iter()
            .any(|r| r.why.contains("6.4")));
    }

    #[test]
    fn debian_6_12_fentry_for_all_and_every_mode_works() {
        let f = fixture("6.12-debian");
        let plan = resolve(&f, Mode::Auto);
        for p in [Probe::Nat, Probe::Confirm] {
            assert_eq!(
                chosen(&plan, p),
                Some(Flavour::Fentry),
                "{p:?}\n{}",
                plan.render()
            );
        }
        // the kprobe reads the reason text and bound: first for window
        assert_eq!(chosen(&plan, Probe::Window), Some(Flavour::Kprobe));
        for (mode, fl) in [
            (Mode::Fentry, Flavour::Fentry),
            (Mode::Kprobe, Flavour::Kprobe),
            (Mode::Stable, Flavour::Stable),
        ] {
            let plan = resolve(&f, mode);
            for p in [Probe::Nat, Probe::Confirm, Probe::Window] {
                assert_eq!(
                    chosen(&plan, p),
                    Some(fl),
                    "{mode:?} {p:?}\n{}",
                    plan.render()
                );
            }
        }
    }

    #[test]
    fn untested_loads_are_tried_in_order() {
        let mut f = fixture("6.12-debian");
        f.loads.clear();
        let plan = resolve(&f, Mode::Auto);
        assert_eq!(chosen(&plan, Probe::Nat), Some(Flavour::Fentry));
    }

    #[test]
    fn fentry_window_degrades_without_the_log_hook() {
        // A kernel whose BTF marks nf_tcp_log_invalid variadic (the host's 6.18,
        // older 6.1 point releases) refuses the fexit. Debian's 6.1.192 and
        // 6.12.117 do not: the VM captures show a 4-argument void form
        // (skb, ct, state, const struct nf_tcp_invalid_log *log) and the
        // fexit loads there, so the refusal is set here, not read from them.
        let mut f = fixture("6.1-debian");
        f.loads.insert(
            WINDOW_FENTRY_LOG.into(),
            "EINVAL: Invalid argument (os error 22)".into(),
        );
        let plan = resolve(&f, Mode::Fentry);
        let w = plan.get(Probe::Window).unwrap();
        assert_eq!(w.chosen, Some(Flavour::Fentry), "{}", plan.render());
        assert!(!w.programs.contains(&"win_log_fexit".to_string()));
        assert!(
            w.notes.iter().any(|n| n.contains("INVALID verdicts only")),
            "{:?}",
            w.notes
        );
    }

    #[test]
    fn window_kprobe_programs_follow_the_symbols() {
        let mut f = fixture("6.1-debian");
        f.symbols.insert("nf_tcp_log_invalid".into(), false);
        let progs = programs(Probe::Window, Flavour::Kprobe, &f);
        assert!(!progs.contains(&"win_log_kprobe"));
        assert!(progs.contains(&"win_l4_kprobe"));
    }
}
