//! The engine's probes. Every probe is a room (`nat/`, `confirm/`, `window/`,
//! `symptoms/`): its BPF C beside the Rust that knows it, summed up in one
//! [`Spec`] (its programs per flavour, hooks, candidate order, netfilter
//! slots). [`SPECS`] is the one table the resolver and the loader read: a new
//! hook touches its room and nothing else.
//!
//! - `features`: what the running kernel offers (kallsyms, BTF, what loads).
//! - `plan`: a pure function from features and mode to a choice per probe.
//! - `load`: opening, loading and attaching the chosen programs, every object
//!   sharing one ring buffer.
//! - `object`: one skeleton opened, configured and loaded (used by the rooms).

pub mod features;
pub mod load;
pub mod object;
pub mod plan;

pub mod confirm;
pub mod nat;
pub mod symptoms;
pub mod window;

use serde::{Deserialize, Serialize};

use features::Features;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Nat,
    Confirm,
    Window,
    Symptoms,
}

impl Probe {
    pub const ALL: [Probe; 4] = [Probe::Nat, Probe::Confirm, Probe::Window, Probe::Symptoms];

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn spec(self) -> &'static Spec {
        SPECS
            .iter()
            .copied()
            .find(|s| s.probe == self)
            .unwrap_or(&nat::SPEC)
    }
}

/// The kind of hook a probe's programs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    Fentry,
    Kprobe,
    /// Netfilter BPF hooks and BTF tracepoints: no kprobes, no fentry.
    Stable,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Fentry => "fentry",
            Flavour::Kprobe => "kprobe",
            Flavour::Stable => "stable",
        }
    }
}

/// `--mode`: which flavours may be used, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Auto,
    Fentry,
    Kprobe,
    Stable,
}

impl Mode {
    pub fn candidates(self) -> &'static [Flavour] {
        match self {
            Mode::Auto => &[Flavour::Fentry, Flavour::Kprobe, Flavour::Stable],
            Mode::Fentry => &[Flavour::Fentry],
            Mode::Kprobe => &[Flavour::Kprobe],
            Mode::Stable => &[Flavour::Stable],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Fentry => "fentry",
            Mode::Kprobe => "kprobe",
            Mode::Stable => "stable",
        }
    }
}

/// A netfilter hook a stable-mode program attaches to: (hook number, priority).
pub type NfSlot = (i32, i32);

/// A room's own conditions on a flavour (see [`Spec::hooks`]).
pub type HooksFn = fn(Flavour, &Features, &mut Vec<String>) -> Result<Vec<String>, String>;

/// Everything ctrace knows about one probe, written once, in its room.
pub struct Spec {
    pub probe: Probe,
    pub name: &'static str,
    /// Kernel functions the probe hooks or names as candidates (looked up in
    /// kallsyms; the resolver's input).
    pub symbols: &'static [&'static str],
    /// Functions the design names first that ctrace does not hook, with why
    /// (said by `ctrace probes` when the symbol exists).
    pub named: &'static [&'static str],
    pub named_why: &'static str,
    /// The flavours to try, best first, in a mode.
    pub order: fn(Mode) -> Vec<Flavour>,
    /// The programs of a flavour on a kernel with these features: what a load
    /// attempt and the final load both use.
    pub programs: fn(Flavour, &Features) -> Vec<&'static str>,
    /// The probe's own conditions on a flavour: Ok(hook descriptions), notes
    /// pushed for what the choice cannot see; Err(why not).
    pub hooks: HooksFn,
    /// Stable mode is netfilter BPF hooks (6.4+) for this probe.
    pub stable_is_netfilter: bool,
    /// An optional program, with its own load key: if the set with it does not
    /// load, the set without it is tried and the refusal recorded under the key.
    pub optional: Option<(&'static str, &'static str)>,
    /// What is left when no flavour works (symptoms without a RST hook).
    pub degraded: Option<fn(&Features) -> Option<Degraded>>,
    /// Netfilter hooks per program (stable mode).
    pub nf_slots: fn(&str) -> &'static [NfSlot],
    /// Programs loaded in pairs on one hook, each doing the other's work
    /// when the kernel skips it as nested (see confirm.bpf.c): a skipped run
    /// of one of a pair loaded together is the other's, not a missed event.
    pub twins: &'static [(&'static str, &'static str)],
    /// Opens, configures and loads the room's skeleton with these programs.
    pub open: fn(&object::OpenCfg) -> anyhow::Result<object::Object>,
    /// Every program name in the room's skeleton (opened, not loaded).
    pub skeleton_programs: fn() -> anyhow::Result<Vec<String>>,
}

/// A probe working in part, without any of its flavours.
pub struct Degraded {
    pub flavour: Flavour,
    pub hooks: Vec<String>,
    pub programs: Vec<&'static str>,
    pub notes: Vec<String>,
}

/// The one table of probes, in the order they are resolved and shown.
pub static SPECS: [&Spec; 4] = [&nat::SPEC, &confirm::SPEC, &window::SPEC, &symptoms::SPEC];

/// Every kernel symbol some probe needs to know about.
pub fn symbols() -> Vec<&'static str> {
    let mut v: Vec<&str> = SPECS
        .iter()
        .flat_map(|s| s.symbols.iter().copied())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `features` lacks one of `syms`: why, in one line.
pub fn need_symbols(f: &Features, syms: &[&str]) -> Result<(), String> {
    for s in syms {
        if !f.has(s) {
            return Err(format!(
                "{s} is not in /proc/kallsyms (inlined on this kernel, or its module is not loaded)"
            ));
        }
    }
    Ok(())
}

/// No netfilter hooks outside stable mode.
pub fn no_nf_slots(_: &str) -> &'static [NfSlot] {
    &[]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program the plan can choose, on every captured kernel, in every
    /// mode, exists in its room's skeleton (names are written once, in the
    /// rooms' `programs`, and checked against the BPF objects here).
    #[test]
    fn every_program_the_plan_can_choose_is_in_its_skeleton() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/features");
        let mut kernels = 0;
        for ent in std::fs::read_dir(&dir).unwrap() {
            let p = ent.unwrap().path();
            let f: Features = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            kernels += 1;
            for spec in SPECS {
                let have = (spec.skeleton_programs)().unwrap();
                for fl in [Flavour::Fentry, Flavour::Kprobe, Flavour::Stable] {
                    for prog in (spec.programs)(fl, &f) {
                        assert!(
                            have.iter().any(|h| h == prog),
                            "{}: {} {prog} is not in the skeleton ({have:?})",
                            p.display(),
                            spec.name
                        );
                    }
                }
                if let Some((prog, _)) = spec.optional {
                    assert!(have.iter().any(|h| h == prog), "{prog}");
                }
                if let Some(d) = spec.degraded {
                    for prog in d(&f).map(|d| d.programs).unwrap_or_default() {
                        assert!(have.iter().any(|h| h == prog), "{prog}");
                    }
                }
                // a netfilter slot names a program of the skeleton
                for h in &have {
                    let _ = (spec.nf_slots)(h);
                }
            }
        }
        assert!(kernels >= 3, "feature fixtures missing");
        // and the table holds each probe once, in Probe::ALL's order
        let names: Vec<_> = SPECS.iter().map(|s| s.probe).collect();
        assert_eq!(names, Probe::ALL.to_vec());
    }
}
