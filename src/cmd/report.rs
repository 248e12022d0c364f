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
use crate::record::{Header, Reader, Summary};
use crate::stats::kind_counts;

/// Reads a recording as a stream and aggregates it on the way: memory does
/// not grow with the file (the aggregation is bounded, no event is kept).
/// The correlation runs again over the events (recordings made before
/// incidents existed have none): events it made itself are made again.
pub fn aggregate<R: std::io::BufRead>(mut r: Reader<R>) -> Result<(Header, Aggregate, Summary)> {
    let mut agg = Aggregate::for_netns(Some(r.header().netns));
    let stable_confirm = r
        .header()
        .probes
        .get("confirm")
        .and_then(|p| p.get("mode"))
        .and_then(|m| m.as_str())
        == Some("stable");
    let mut corr = crate::incident::Correlator::new(crate::incident::Config {
        synthesize_clashes: stable_confirm,
    });
    while let Some(e) = r.next_event()? {
        if e.source == "correlation" {
            continue;
        }
        agg.add_output(&corr.push(e));
    }
    let header = r.header().clone();
    let summary = r.finish()?;
    let end = summary.trailer.as_ref().map_or(0, |t| t.end_mono_ns);
    agg.add_output(&corr.finish(end));
    Ok((header, agg, summary))
}

/// Builds the document of a recording read back and aggregated.
pub fn document(path: &Path, header: Option<&Header>, agg: &Aggregate, s: &Summary) -> Document {
    let header = header.cloned();
    let trailer = s.trailer.clone();
    let kc = trailer.as_ref().and_then(|t| t.kernel_counters.clone());
    // no trailer: how many were lost is not known (and never shown as 0)
    let lost = trailer.as_ref().map(|t| t.lost);
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
        agg,
        kernel_counters: kc.as_ref(),
        duration_s,
        lost: lost.unwrap_or(0),
        table_fill: None,
        node: None,
        kernel: kernel.as_deref(),
    };
    let findings = evaluate(&input);
    let events = kind_counts(&agg.stats);
    let mut warnings = s.warnings.clone();
    if let Some(t) = &trailer {
        // the trailer's own counts against the events read back
        if t.events != events && s.warnings.is_empty() {
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
    d.incidents = agg.incidents.by_kind.clone();
    d.incident_examples = agg.incidents.examples.clone();
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
    let (header, agg, summary) = aggregate(Reader::open(&a.file)?)?;
    let d = document(&a.file, Some(&header), &agg, &summary);
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
