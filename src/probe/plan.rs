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

pub use super::window::FENTRY_LOG as WINDOW_FENTRY_LOG;

/// The programs of `probe` in `flavour` on a kernel with `f`: what a load
/// attempt and the final load both use (the room's list).
pub fn programs(probe: Probe, fl: Flavour, f: &Features) -> Vec<&'static str> {
    let mut v = (probe.spec().programs)(fl, f);
    v.dedup();
    v
}

/// Checks one candidate. Ok: (hooks, notes). Err: why it cannot be used.
/// What every probe of a flavour needs is checked here; the room checks its own.
fn candidate(p: Probe, fl: Flavour, f: &Features) -> Result<(Vec<String>, Vec<String>), String> {
    let spec = p.spec();
    match fl {
        Flavour::Fentry if !f.btf => return Err("fentry needs kernel BTF".into()),
        Flavour::Kprobe if !f.kprobe_pmu => {
            return Err(
                "kprobes are not available on this kernel (no kprobe PMU: CONFIG_KPROBES is off)"
                    .into(),
            )
        }
        _ => {}
    }
    let mut notes = Vec::new();
    let hooks = (spec.hooks)(fl, f, &mut notes)?;
    match f.load(p, fl) {
        Some(Err(e)) if fl == Flavour::Stable && spec.stable_is_netfilter => {
            let has_hooks = crate::node::kernel_version(&f.kernel).is_some_and(|v| v >= (6, 4));
            return Err(if has_hooks {
                format!("load refused: {e} (the verifier's log: CTRACE_DEBUG=1)")
            } else {
                format!("netfilter BPF hooks are not available (kernel 6.4+): load refused: {e}")
            });
        }
        Some(Err(e)) => return Err(format!("load refused: {e}")),
        _ => {}
    }
    Ok((hooks, notes))
}

/// The pure resolver.
pub fn resolve(f: &Features, mode: Mode) -> Plan {
    let probes = super::SPECS
        .iter()
        .map(|s| resolve_probe(f, mode, s.probe))
        .collect();
    Plan {
        kernel: f.kernel.clone(),
        mode,
        probes,
    }
}

fn resolve_probe(f: &Features, mode: Mode, p: Probe) -> ProbePlan {
    let spec = p.spec();
    let mut rejected = Vec::new();
    // The hooks the design names first, where ctrace does not use them.
    for s in spec.named {
        let why = if f.has(s) {
            spec.named_why.to_string()
        } else {
            "not a symbol on this kernel (inlined)".to_string()
        };
        rejected.push(Rejected {
            candidate: s.to_string(),
            why,
        });
    }
    for fl in (spec.order)(mode) {
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
    if let Some(d) = spec.degraded.and_then(|d| d(f)) {
        return ProbePlan {
            probe: p,
            chosen: Some(d.flavour),
            hooks: d.hooks,
            programs: d.programs.into_iter().map(String::from).collect(),
            notes: d.notes,
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

    /// Debian's 6.18 (trixie-backports), captured in the VM: unlike this host's
    /// 6.18 it has kprobes and lets fentry load, so every mode resolves to its
    /// own flavour. Its `nf_tcp_log_invalid` is the variadic upstream one again
    /// (the fexit is refused with EINVAL, where Debian's 6.12 accepted it):
    /// fentry's window degrades to verdicts only and says so.
    #[test]
    fn debian_6_18_kprobes_and_fentry_attach_unlike_the_host() {
        let f = fixture("6.18-debian");
        assert!(f.kprobe_pmu);
        let plan = resolve(&f, Mode::Auto);
        for p in [Probe::Nat, Probe::Confirm] {
            assert_eq!(
                chosen(&plan, p),
                Some(Flavour::Fentry),
                "{p:?}\n{}",
                plan.render()
            );
        }
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
        let plan = resolve(&f, Mode::Fentry);
        let w = plan.get(Probe::Window).unwrap();
        assert!(!w.programs.contains(&"win_log_fexit".to_string()));
        assert!(
            w.notes.iter().any(|n| n.contains("INVALID verdicts only")),
            "{:?}",
            w.notes
        );
        // the host's 6.18 resolves the same probes to stable only
        let host = resolve(&fixture("6.18-host"), Mode::Auto);
        assert_eq!(chosen(&host, Probe::Confirm), Some(Flavour::Stable));
    }

    /// Debian's newest 7.x (7.3.4 when captured): every mode resolves to its
    /// own flavour, and the fexit on `nf_tcp_log_invalid` loads again (the
    /// non-variadic form, as on Debian's 6.12), so fentry's window keeps it.
    #[test]
    fn debian_7_x_every_mode_and_the_log_fexit_loads() {
        let f = fixture("7.3-debian");
        assert!(f.kernel.starts_with("7."), "{}", f.kernel);
        let plan = resolve(&f, Mode::Auto);
        for p in [Probe::Nat, Probe::Confirm] {
            assert_eq!(chosen(&plan, p), Some(Flavour::Fentry), "{p:?}");
        }
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
        let plan = resolve(&f, Mode::Fentry);
        let w = plan.get(Probe::Window).unwrap();
        assert!(
            w.programs.contains(&"win_log_fexit".to_string()),
            "{}",
            plan.render()
        );
        // the RST is the tcp_send_reset tracepoint (6.10+)
        assert!(plan
            .get(Probe::Symptoms)
            .unwrap()
            .programs
            .contains(&"sym_send_reset".to_string()));
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
