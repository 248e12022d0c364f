//! The four logical probes, the hooks that can implement each one, and how one
//! is chosen for the running kernel.
//!
//! - `features`: what the running kernel offers (kallsyms, BTF, what loads).
//! - `plan`: a pure function from features and mode to a choice per probe.
//! - `load`: opening, loading and attaching the chosen programs.

pub mod features;
pub mod load;
pub mod plan;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::cli::{ModeArg, ProbesArgs};

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
        match self {
            Probe::Nat => "nat",
            Probe::Confirm => "confirm",
            Probe::Window => "window",
            Probe::Symptoms => "symptoms",
        }
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

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Fentry => Mode::Fentry,
            ModeArg::Kprobe => Mode::Kprobe,
            ModeArg::Stable => Mode::Stable,
        }
    }
}

/// `ctrace probes`: the resolution table for this kernel.
pub fn cmd_probes(a: &ProbesArgs) -> Result<i32> {
    crate::sys::require_tracing_privileges()?;
    crate::sys::require_btf()?;
    if let Some(ns) = &a.trace.netns {
        crate::netns::enter(ns)?;
    }
    let mode = Mode::from(a.trace.mode);
    if a.features {
        let f = features::detect_all();
        println!("{}", serde_json::to_string_pretty(&f)?);
        return Ok(crate::exit::OK);
    }
    let (plan, _f) = load::resolve_by_trying(mode, &load::Config::default());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan.render());
    }
    Ok(if plan.probes.iter().any(|p| p.chosen.is_none()) {
        crate::exit::ERROR
    } else {
        crate::exit::OK
    })
}
