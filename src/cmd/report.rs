//! `ctrace report FILE`: the aggregation and findings of a recording, offline.
//! No root: the node's configuration is not known here, so mitigations are
//! stated for the general case; the recording's kernel decides the wording.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use anyhow::Result;

use crate::cli::ReportArgs;
use crate::ctstat::COUNTER_NAMES;
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
    d.set_incidents(&agg.incidents);
    d.events = events;
    d.lost = lost;
    d.missed = trailer
        .as_ref()
        .map(|t| t.missed.clone())
        .unwrap_or_default();
    if !d.missed.is_empty() {
        warnings.push(format!(
            "{}: the kernel skipped runs of {:?} (a probe fired while it already ran on that CPU): events may be missing",
            path.display(),
            d.missed
        ));
    }
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
    if let [file] = a.files.as_slice() {
        return one(file, a.json);
    }
    nodes(&a.files, a.json)
}

/// One recording: its document, as it has always been printed.
fn one(file: &Path, json: bool) -> Result<i32> {
    let (header, agg, summary) = aggregate(Reader::open(file)?)?;
    let d = document(file, Some(&header), &agg, &summary);
    for w in &d.warnings {
        eprintln!("ctrace: warning: {w}");
    }
    if json {
        println!("{}", d.to_json());
    } else {
        print!("{}", d.to_text());
    }
    Ok(d.exit)
}

/// Sums over several recordings' documents.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub recordings: usize,
    pub events: BTreeMap<String, u64>,
    /// None when a recording has no trailer (how many were lost is unknown).
    pub lost: Option<u64>,
    /// The kernel's counter deltas, summed (recordings with a trailer).
    pub kernel_counters: BTreeMap<String, u64>,
    pub findings: usize,
}

impl Totals {
    fn add(&mut self, d: &Document) {
        if self.recordings == 0 {
            self.lost = Some(0);
        }
        self.recordings += 1;
        for (k, v) in &d.events {
            *self.events.entry(k.clone()).or_default() += v;
        }
        self.lost = match (self.lost, d.lost) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        if let Some(kc) = &d.kernel_counters {
            // one list of names: ctstat's
            let v = serde_json::to_value(kc).unwrap_or_default();
            for n in COUNTER_NAMES {
                *self.kernel_counters.entry(n.to_string()).or_default() +=
                    v[*n].as_u64().unwrap_or(0);
            }
        }
        self.findings += d.findings.len();
    }

    fn merge(&mut self, o: &Totals) {
        if self.recordings == 0 {
            self.lost = Some(0);
        }
        self.recordings += o.recordings;
        for (k, v) in &o.events {
            *self.events.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.kernel_counters {
            *self.kernel_counters.entry(k.clone()).or_default() += v;
        }
        self.lost = match (self.lost, o.lost) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.findings += o.findings;
    }

    fn line(&self) -> String {
        let ev: Vec<String> = self
            .events
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let k = |n: &str| self.kernel_counters.get(n).copied().unwrap_or(0);
        format!(
            "{} recording(s); events: {}; lost {}; kernel: insert_failed {} drop {} invalid {} clash_resolve {}; {} finding(s)",
            self.recordings,
            if ev.is_empty() { "none".to_string() } else { ev.join(", ") },
            self.lost.map_or("unknown (a recording has no trailer)".to_string(), |l| l.to_string()),
            k("insert_failed"),
            k("drop"),
            k("invalid"),
            k("clash_resolve"),
            self.findings,
        )
    }
}

/// One node's recordings.
#[derive(Debug, Serialize)]
pub struct Node {
    pub hostname: String,
    pub recordings: Vec<Document>,
    pub totals: Totals,
}

/// The document of several recordings grouped by node.
#[derive(Debug, Serialize)]
pub struct NodesDocument {
    pub format: u32,
    pub command: &'static str,
    pub ctrace: &'static str,
    pub nodes: Vec<Node>,
    pub totals: Totals,
    pub exit: i32,
}

/// Groups documents by node (hostname, in name order; a node's recordings
/// in the order given) and sums them.
pub fn group(docs: Vec<Document>) -> NodesDocument {
    let mut by: BTreeMap<String, Vec<Document>> = BTreeMap::new();
    for d in docs {
        let host = d
            .recording
            .as_ref()
            .map(|r| r.header.hostname.clone())
            .unwrap_or_default();
        by.entry(host).or_default().push(d);
    }
    let mut totals = Totals::default();
    let mut exit = crate::exit::OK;
    let nodes = by
        .into_iter()
        .map(|(hostname, recordings)| {
            let mut t = Totals::default();
            for d in &recordings {
                t.add(d);
                exit = exit.max(d.exit);
            }
            totals.merge(&t);
            Node {
                hostname,
                recordings,
                totals: t,
            }
        })
        .collect();
    NodesDocument {
        format: crate::findings::doc::FORMAT,
        command: "report",
        ctrace: env!("CARGO_PKG_VERSION"),
        nodes,
        totals,
        exit,
    }
}

impl NodesDocument {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s.push_str(&format!(
                "=== node {} ({} recording(s)) ===\n\n",
                n.hostname,
                n.recordings.len()
            ));
            for d in &n.recordings {
                s.push_str(&d.to_text());
                s.push('\n');
            }
            s.push_str(&format!(
                "node {} totals: {}\n\n",
                n.hostname,
                n.totals.line()
            ));
        }
        s.push_str(&format!("=== all {} nodes ===\n", self.nodes.len()));
        for n in &self.nodes {
            s.push_str(&format!("  {:<24} {}\n", n.hostname, n.totals.line()));
        }
        s.push_str(&format!("  {:<24} {}\n", "total", self.totals.line()));
        s
    }
}

/// Several recordings, grouped by node, with totals.
fn nodes(files: &[PathBuf], json: bool) -> Result<i32> {
    let mut docs = Vec::with_capacity(files.len());
    for f in files {
        let (header, agg, summary) = aggregate(Reader::open(f)?)?;
        let d = document(f, Some(&header), &agg, &summary);
        for w in &d.warnings {
            eprintln!("ctrace: warning: {w}");
        }
        docs.push(d);
    }
    let nd = group(docs);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&nd).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else {
        print!("{}", nd.to_text());
    }
    Ok(nd.exit)
}
