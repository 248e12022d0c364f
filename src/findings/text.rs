//! The human form of findings, and the wording helpers the verdicts share.

use std::fmt::Write as _;

use super::{Counted, Finding, Origin};

pub(super) fn pct(x: f64) -> String {
    if x >= 0.1 || x == 0.0 {
        format!("{:.1}%", x * 100.0)
    } else {
        format!("{:.3}%", x * 100.0)
    }
}

pub(super) fn kv_name(k: Option<(u32, u32)>) -> String {
    k.map_or("unknown".into(), |(a, b)| format!("{a}.{b}"))
}

/// Human-readable rendering of findings.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    if findings.is_empty() {
        s.push_str("No findings.\n");
        return s;
    }
    for f in findings {
        let _ = writeln!(
            s,
            "\n[{}] {} ({}, {})",
            f.severity.name().to_uppercase(),
            f.title,
            f.kind,
            if f.origin == Origin::Node {
                "node configuration"
            } else {
                "traced"
            }
        );
        let _ = write!(s, "  What: {}", f.what.summary);
        if let Some(r) = f.what.rate_per_s {
            let _ = write!(s, " [{r:.2}/s]");
        }
        s.push('\n');
        let ev = &f.evidence;
        let list = |name: &str, v: &[Counted], s: &mut String| {
            if !v.is_empty() {
                let items: Vec<String> = v
                    .iter()
                    .map(|c| format!("{} ({})", c.key, c.count))
                    .collect();
                let _ = writeln!(s, "  {name}: {}", items.join(", "));
            }
        };
        list("Destinations", &ev.destinations, &mut s);
        list("Flows", &ev.flows, &mut s);
        list("CPUs", &ev.cpus, &mut s);
        list("Translated ports", &ev.ports, &mut s);
        list("Reasons", &ev.reasons, &mut s);
        for c in &ev.config {
            let _ = writeln!(s, "  Node: {c}");
        }
        for e in &ev.examples {
            let _ = write!(
                s,
                "  Example: {} cpu{} {} {}",
                e.kind, e.cpu, e.proto, e.orig
            );
            if let Some(r) = &e.reply {
                let _ = write!(s, " (reply {r})");
            }
            if let Some(p) = e.port {
                let _ = write!(s, " port {p}");
            }
            if !e.reason.is_empty() {
                let _ = write!(s, ": {}", e.reason);
            }
            s.push('\n');
        }
        let _ = writeln!(s, "  Why: {}", f.why);
        for (k, m) in f.mitigation.iter().enumerate() {
            let _ = writeln!(s, "  {} {m}", if k == 0 { "Fix:" } else { "    " });
        }
    }
    s
}
