//! `ctrace doctor`: the node's configuration alone (no tracing).
use anyhow::Result;

use crate::cli::DoctorArgs;
use crate::findings::doc::{facts, Document};
use crate::findings::{node_findings, not_read, Aggregate, Input};

use super::check::{exit_code, print};

pub fn run(a: &DoctorArgs) -> Result<i32> {
    if let Some(spec) = &a.netns {
        // a clear error for a netns that does not exist; entering it is tried later
        crate::netns::resolve(spec)?;
    }
    let node = crate::node::read_state(&a.root, a.netns.as_deref());
    if node.sysctl.tcp_be_liberal.is_none()
        && node.rules.is_none()
        && node.kernel.is_none()
        && node.boot == Default::default()
    {
        anyhow::bail!(
            "nothing of the node's configuration could be read under {}: {}",
            a.root.display(),
            node.notes.join("; ")
        );
    }
    let agg = Aggregate::default();
    let input = Input {
        agg: &agg,
        kernel_counters: None,
        duration_s: 0.0,
        lost: 0,
        table_fill: None,
        node: Some(&node),
        kernel: node.kernel.as_deref(),
    };
    let mut d = Document::new("doctor");
    d.kernel = node.kernel.clone();
    d.netns = a.netns.clone();
    d.facts = facts(&input);
    d.findings = node_findings(&node);
    d.not_read = not_read(&node);
    d.exit = exit_code(&d, &[], true);
    if !d.not_read.is_empty() {
        // "No findings" about rules it never saw would read as a clean node
        d.warnings.push(format!(
            "doctor could not read everything it judges (exit 2): {}{}",
            node.notes.join("; "),
            if nix::unistd::geteuid().is_root() {
                ""
            } else {
                "; run it as root"
            }
        ));
        d.exit = crate::exit::ERROR;
    }
    d.node = Some(node);
    print(&d, a.json);
    Ok(d.exit)
}
