//! The four logical probes, the hooks that can implement each one, and how one
//! is chosen for the running kernel.
//!
//! - `features`: what the running kernel offers (kallsyms, BTF, what loads).
//! - `plan`: a pure function from features and mode to a choice per probe.
//! - `load`: opening, loading and attaching the chosen programs.

pub mod features;
pub mod load;
pub mod plan;

use serde::{Deserialize, Serialize};

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
