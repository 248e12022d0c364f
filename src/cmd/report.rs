//! `ctrace report FILE`: the aggregation and findings of a recording, offline.
//! No root: the node's configuration is not known here, so mitigations are
//! stated for the general case; the recording's kernel decides the wording.
use std::path::Path;

use anyhow::Result;

use crate::cli::ReportArgs;
use crate::findings::doc::{
    agreement_per_cpu, facts, insert_failed_per_cpu, Document, RecordingInfo,
};
use crate::findings::{counts_for_exit, evaluate, Aggregate, Input};
use crate::record::Recording;
use crate::stats::kind_counts;

/// Builds the document of a recording read back.
pub fn document(path: &Path, rec: &Recording) -> Document {
    let mut agg = Aggregate::for_netns(rec.header.as_ref().map(|h| h.netns));
    for e in &rec.events {
        agg.add(e);
    }
    let header = rec.header.clone();
    let trailer = rec.trailer.clone();
    let kc = trailer.as_ref().and_then(|t| t.kernel_counters.clone());
    let lost = trailer.as_ref().map_or(0, |t| t.lost);
    let start = header.as_ref().map_or(0, |h| h.start_mono_ns);
    let end = trailer.as_ref().map_or(0, |t| t.end_mono_ns);
    let duration_s = if start > 0 && end > start {
        (end - start) as f64 / 1e9
    } else {
        // cut off: from the start to the last event seen
        match agg.stats.last_ts_ns {
            Some(b) if start > 0 && b > start => (b - start) as f64 / 1e9,
            _ => 0.0,
        }
    };
    let kernel = header.as_ref().map(|h| h.kernel.clone());
    let input = Input {
        agg: &agg,
        kernel_counters: kc.as_ref(),
        duration_s,
        lost,
        table_fill: None,
        node: None,
        kernel: kernel.as_deref(),
    };
    let findings = evaluate(&input);
    let events = kind_counts(&agg.stats);
    let mut warnings = rec.warnings.clone();
    if let Some(t) = &trailer {
        // the trailer's own counts against the events read back
        if t.events != events && rec.warnings.is_empty() {
            warnings.push(format!(
                "{}: the trailer counts {:?} but the file holds {:?}",
                path.display(),
                t.events,
                events
            ));
        }
    }
    let mut d = Document::new("report");
    d.kernel = kernel.clone();
    d.netns = header.as_ref().map(|h| h.netns.to_string());
    d.duration_s = Some(duration_s);
    d.probes = header
        .as_ref()
        .map(|h| h.probes.clone())
        .unwrap_or_default();
    d.agreement = kc
        .as_ref()
        .map(|k| agreement_per_cpu(k, &events, &insert_failed_per_cpu(&agg.stats)))
        .unwrap_or_default();
    d.events = events;
    d.lost = lost;
    d.facts = facts(&input);
    d.kernel_counters = kc.clone();
    d.exit = if findings.iter().any(|f| counts_for_exit(f, &[], false)) {
        crate::exit::FINDINGS
    } else {
        crate::exit::OK
    };
    d.findings = findings;
    d.warnings = warnings;
    if let Some(h) = header {
        d.recording = Some(RecordingInfo {
            file: path.display().to_string(),
            header: h,
            trailer,
        });
    }
    d
}

pub fn run(a: &ReportArgs) -> Result<i32> {
    let rec = crate::record::read(&a.file)?;
    let d = document(&a.file, &rec);
    for w in &d.warnings {
        eprintln!("ctrace: warning: {w}");
    }
    if a.json {
        println!("{}", d.to_json());
    } else {
        print!("{}", d.to_text());
    }
    Ok(d.exit)
}
