//! Verdicts: pure functions from what was traced (or recorded), the kernel's
//! own counters, the node's configuration and the kernel version to ordered
//! findings, each with evidence, the reason it happens on this kernel, and the
//! mitigation that fits this node.
//!
//! `evidence` holds what a finding is made of, `snat` and `invalid` the
//! verdicts on traced events, `node_verdicts` those on the node's
//! configuration alone, `rule_fix` the fixes of single NAT rules, `text` the
//! human form; `doc` the document around them.

pub mod doc;
mod evidence;
mod invalid;
mod node_verdicts;
mod rule_fix;
mod snat;
mod text;

pub use evidence::{
    Aggregate, Collector, Counted, Evidence, Finding, Incidents, Input, Origin, Severity, What,
    EXAMPLES,
};
pub use invalid::{ignores_under_lower_bound, reason_class, reason_resets, ReasonClass};
pub use node_verdicts::{node_findings, not_read};
pub use text::render;

use invalid::{tcp_ignored, tcp_invalid_masked, tcp_invalid_reset};
use snat::{clash_resolved, snat_race, table_full};

/// Every finding kind, in the order of their usual seriousness. Stable ids:
/// `--fail-on` and scripts use them.
pub const KINDS: [&str; 13] = [
    "snat_race",
    "insert_failed",
    "tcp_invalid_reset",
    "conntrack_table_full",
    "events_lost",
    "be_liberal_boot_order",
    "nat_without_random_fully",
    "snat_pool_small",
    "invalid_drop_wrong_chain",
    "invalid_unmitigated",
    "tcp_invalid_masked",
    "tcp_ignored",
    "clash_resolved",
];
fn events_lost(i: &Input) -> Option<Finding> {
    (i.lost > 0).then(|| Finding {
        kind: "events_lost".into(),
        severity: Severity::Warning,
        origin: Origin::Traced,
        title: "Events were lost: counts are lower bounds".into(),
        what: What {
            count: i.lost,
            summary: format!(
                "{} records could not be delivered (ring buffer full) — compare with the kernel counters",
                i.lost
            ),
            ..Default::default()
        },
        evidence: Evidence::default(),
        why: "The ring buffer filled faster than ctrace read it.".into(),
        mitigation: vec!["larger --ringbuf-mb, or trace one netns (--netns) rather than --all-netns".into()],
    })
}

fn rank(kind: &str) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len())
}

/// Most serious first; then traced before node; then the usual order.
pub fn sort(v: &mut [Finding]) {
    v.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then((a.origin == Origin::Node).cmp(&(b.origin == Origin::Node)))
            .then(rank(&a.kind).cmp(&rank(&b.kind)))
            .then(b.what.count.cmp(&a.what.count))
    });
}

/// Every finding: traced ones, then the node's configuration ones (those that
/// the traced ones do not already cover), most serious first.
pub fn evaluate(i: &Input) -> Vec<Finding> {
    let mut out: Vec<Finding> = [
        snat_race(i),
        tcp_invalid_reset(i),
        table_full(
            i.table_fill,
            i.kernel_counters.map_or(0, |k| k.early_drop),
            Origin::Traced,
        ),
        events_lost(i),
        tcp_invalid_masked(i),
        tcp_ignored(i),
        clash_resolved(i),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(n) = i.node {
        for f in node_findings(n) {
            if !out.iter().any(|o| o.kind == f.kind) {
                out.push(f);
            }
        }
    }
    sort(&mut out);
    out
}

/// Whether a finding counts for the exit code: with `fail_on` empty, traced
/// findings of warning or worse (configuration advice and info do not); else
/// exactly the listed kinds.
pub fn counts_for_exit(f: &Finding, fail_on: &[String], node_only: bool) -> bool {
    if !fail_on.is_empty() {
        return fail_on.iter().any(|k| k == &f.kind);
    }
    f.severity >= Severity::Warning && (node_only || f.origin == Origin::Traced)
}

/// Refuses unknown kinds in --fail-on with the list of known ones.
pub fn validate_fail_on(kinds: &[String]) -> anyhow::Result<()> {
    for k in kinds {
        if !KINDS.contains(&k.as_str()) {
            anyhow::bail!(
                "--fail-on: unknown finding kind '{k}' (known: {})",
                KINDS.join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
