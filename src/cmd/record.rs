//! `ctrace record`: a one-shot recording, valid even when interrupted.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::run::{ending_signal, say, Traced};
use crate::cli::RecordArgs;
use crate::incident;
use crate::record::pcap::{PcapFile, PcapWriter};
use crate::record::{Behind, Line, Trailer};
use crate::symbolize::KernelSymbols;
use crate::workload::Resolver;

pub fn run(a: &RecordArgs) -> Result<i32> {
    crate::sys::require_tracing_privileges()?;
    // Fail on an unwritable output before touching the kernel.
    let mut w = crate::record::output(a.output.as_deref(), a.force)?;
    let pcap_file = match &a.pcap {
        Some(p) => Some(PcapFile::create(p, a.force)?),
        None => None,
    };
    let mut cfg = crate::cmd::session_config(&a.trace);
    if pcap_file.is_some() {
        cfg.snaplen = a.snaplen;
    }
    let traced = Traced::start(cfg, a.lab)?;
    let session = &traced.session;
    let progress = !a.quiet && std::io::stderr().is_terminal();
    for n in &session.notes {
        say(format!("ctrace: note: {n}"));
    }
    let header = session.header();
    w.write(&Line::Header(header.clone()))?;
    w.flush()?;
    // from here on JSON and writes are the writer thread's
    let mut w = Behind::spawn(w)?;
    let mut pcap = match pcap_file {
        Some(f) => Some(f.begin(a.snaplen, &header)?),
        None => None,
    };

    let mut syms = KernelSymbols::new();
    // on this (the consumer) thread, never the ring buffer's: its cost is a
    // cache lookup, a scan of the node on a miss at most once a second
    let mut workloads = (!a.trace.no_workloads).then(|| Resolver::new("/"));
    // per kind; &'static keys: no allocation per event
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut total = 0u64;
    let t0 = Instant::now();
    let deadline = a.duration.map(|d| t0 + d);
    let mut last_progress = Instant::now();
    let mut last_flush = Instant::now();
    let mut ended_by = "signal".to_string();
    let mut write_err = None;

    // events -> incidents (held ~200 ms to join each story), then the file
    let mut corr = session.correlator();
    let mut incidents: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut emit = |out: incident::Output,
                    w: &mut Behind,
                    pcap: &mut Option<PcapWriter<BufWriter<File>>>,
                    counts: &mut BTreeMap<&'static str, u64>,
                    total: &mut u64,
                    incidents: &mut BTreeMap<String, BTreeMap<String, u64>>|
     -> Result<()> {
        for mut e in out.events {
            syms.fill(&mut e);
            if let Some(r) = workloads.as_mut() {
                r.fill(&mut e);
            }
            *counts.entry(e.kind.name()).or_default() += 1;
            *total += 1;
            // the frame after the event's incident, winner and workload are
            // known: its comment names them
            if let Some(p) = pcap.as_mut() {
                e.frame = p.packet(&e)?;
            }
            w.event(e)?;
        }
        for mut i in out.incidents {
            // the loser's workload: its original source's, like its events'
            if let Some(r) = workloads.as_mut() {
                i.workload = r
                    .resolve(i.flow.src)
                    .and_then(|w| serde_json::to_value(w).ok());
            }
            *incidents
                .entry(i.kind.clone())
                .or_default()
                .entry(i.outcome.clone())
                .or_default() += 1;
            w.write(Line::Incident(Box::new(i)))?;
        }
        Ok(())
    };

    // once ended (a signal, the duration), the loop goes on while a lab's
    // traffic winds down: what it still causes is written as it comes
    let mut ending = false;
    loop {
        if !ending {
            if traced.stop_requested() {
                ending = true;
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                ended_by = "duration".into();
                ending = true;
            }
            if ending {
                traced.wind_down();
            }
        }
        if ending && traced.wound_down() {
            break;
        }
        let out = session.next_output(&mut corr, Duration::from_millis(100));
        if let Err(err) = emit(
            out,
            &mut w,
            &mut pcap,
            &mut counts,
            &mut total,
            &mut incidents,
        ) {
            write_err = Some(err);
        }
        if write_err.is_some() {
            break;
        }
        if last_flush.elapsed() >= Duration::from_millis(500) {
            w.flush()?;
            if let Some(p) = pcap.as_mut() {
                p.flush()?;
            }
            last_flush = Instant::now();
        }
        if progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let kinds: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let user = match session.lost_user() {
                0 => String::new(),
                n => format!(" (+{n} dropped: output too slow)"),
            };
            super::run::progress(format!(
                "\rctrace: {:>5.0}s  {total} events ({})  lost {}{user}   ",
                t0.elapsed().as_secs_f64(),
                kinds.join(", "),
                session.lost()
            ));
        }
    }
    // the lab's traffic has ended before the probes detach: nothing it
    // causes goes untraced
    let (fin, lab) = traced.finish()?;
    if let Some(err) = write_err {
        return Err(err);
    }
    let end_mono_ns = crate::sys::monotonic_ns();
    let mut o = incident::Output::default();
    for e in fin.remaining {
        o.extend(corr.push(e));
    }
    // incidents still open close now (as unknown unless their time has come)
    o.extend(corr.finish(end_mono_ns));
    emit(
        o,
        &mut w,
        &mut pcap,
        &mut counts,
        &mut total,
        &mut incidents,
    )?;
    let trailer = Trailer {
        end_wall: crate::record::now_rfc3339(),
        end_mono_ns,
        events: counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        incidents,
        lost: fin.lost,
        lost_failures: fin.lost_failures,
        lost_user: fin.lost_user,
        missed: fin.missed.clone(),
        missed_covered: fin.missed_covered.clone(),
        signal: (ended_by == "signal")
            .then(ending_signal)
            .flatten()
            .map(String::from),
        kernel_counters: fin.counters.map(|c| c.to_counters()),
        ended_by,
    };
    if progress {
        say("");
    }
    if !a.quiet {
        let kc = trailer.kernel_counters.as_ref();
        say(format!(
            "ctrace: {total} events, {} lost{}; kernel: insert_failed {} drop {} invalid {} clash_resolve {}",
            trailer.lost,
            match trailer.lost_user {
                0 => String::new(),
                n => format!(" (+{n} dropped in ctrace: the output was too slow)"),
            },
            kc.map_or(0, |k| k.insert_failed),
            kc.map_or(0, |k| k.drop),
            kc.map_or(0, |k| k.invalid),
            kc.map_or(0, |k| k.clash_resolve),
        ));
    }
    if !trailer.missed.is_empty() {
        // said even with -q: events may be missing
        let by: Vec<String> = trailer
            .missed
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        say(format!(
            "ctrace: warning: the kernel skipped program runs (a probe fired while it already ran on that CPU): {}; events may be missing",
            by.join(", ")
        ));
    }
    w.write(Line::Trailer(trailer))?;
    w.flush()?;
    if let Some(p) = pcap.as_mut() {
        p.flush()?;
    }
    // the lab's namespaces go last, after the trailer is safe
    drop(lab);
    Ok(crate::exit::OK)
}
