//! `ctrace check` and `ctrace doctor`: findings with evidence and mitigations.
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::run::{say, Traced};
use crate::cli::CheckArgs;
use crate::findings::doc::{agreement_per_cpu, facts, insert_failed_per_cpu, Document};
use crate::findings::{counts_for_exit, evaluate, validate_fail_on, Aggregate, Input};
use crate::stats::kind_counts;

pub(crate) fn exit_code(d: &Document, fail_on: &[String], node_only: bool) -> i32 {
    if d.findings
        .iter()
        .any(|f| counts_for_exit(f, fail_on, node_only))
    {
        crate::exit::FINDINGS
    } else {
        crate::exit::OK
    }
}

pub(crate) fn print(d: &Document, json: bool) {
    for w in &d.warnings {
        eprintln!("ctrace: warning: {w}");
    }
    if json {
        println!("{}", d.to_json());
    } else {
        print!("{}", d.to_text());
    }
}

pub fn run(a: &CheckArgs) -> Result<i32> {
    validate_fail_on(&a.fail_on)?;
    let cfg = crate::cmd::session_config(&a.trace);
    let mut traced = Traced::start(cfg, a.lab)?;
    // The node's configuration, read in the traced netns (from a helper
    // thread: Session::start moved this thread into it).
    let netns_arg = traced.netns_spec();
    let node = crate::node::read_state(std::path::Path::new("/"), netns_arg.as_deref());
    let progress = std::io::stderr().is_terminal();
    let mut seen = std::collections::BTreeSet::new();
    for n in &traced.session.notes {
        if seen.insert(n) {
            say(format!("ctrace: note: {n}"));
        }
    }

    let header = traced.session.header();
    let mut agg = Aggregate::for_netns(Some(header.netns));
    let mut corr = traced.session.correlator();
    let t0 = Instant::now();
    let deadline = t0 + a.duration;
    let mut last_progress = Instant::now();
    let mut ended_early = false;
    // once ended, reading goes on while a lab's traffic winds down
    let mut ending = false;
    loop {
        if !ending && (traced.stop_requested() || Instant::now() >= deadline) {
            ended_early = traced.stop_requested();
            ending = true;
            traced.wind_down();
        }
        if ending && traced.wound_down() {
            break;
        }
        agg.add_output(
            &traced
                .session
                .next_output(&mut corr, Duration::from_millis(100)),
        );
        if progress && last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            super::run::progress(format!(
                "\rctrace check: {:>4.0}s / {:.0}s  {} events (insert_failed {}, tcp_invalid {})  lost {}   ",
                t0.elapsed().as_secs_f64(),
                a.duration.as_secs_f64(),
                agg.stats.total,
                agg.stats.count(crate::event::Kind::InsertFailed),
                agg.stats.count(crate::event::Kind::TcpInvalid),
                traced.session.lost()
            ));
        }
    }
    if progress {
        super::run::progress(format!("\r{:78}\r", ""));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let table_fill = traced.session.table_fill().ok();
    // traffic stops, probes detach, counters are read: in that order
    let (fin, lab) = traced.finish()?;
    for e in fin.remaining {
        agg.add_output(&corr.push(e));
    }
    agg.add_output(&corr.finish(crate::sys::monotonic_ns()));
    drop(lab);
    let kc = fin.counters.map(|c| c.to_counters());
    let input = Input {
        agg: &agg,
        kernel_counters: kc.as_ref(),
        duration_s: elapsed,
        lost: fin.lost + fin.lost_user,
        table_fill,
        node: Some(&node),
        kernel: Some(header.kernel.as_str()),
    };
    let mut d = Document::new("check");
    d.kernel = Some(header.kernel.clone());
    d.netns = Some(netns_arg.unwrap_or_else(|| header.netns.to_string()));
    d.duration_s = Some(elapsed);
    d.probes = header.probes.clone();
    d.events = kind_counts(&agg.stats);
    d.lost = Some(fin.lost + fin.lost_user);
    d.lost_user = Some(fin.lost_user);
    d.lost_failures = Some(fin.lost_failures);
    d.missed = fin.missed.clone();
    d.agreement = kc
        .as_ref()
        .map(|k| agreement_per_cpu(k, &d.events, &insert_failed_per_cpu(&agg.stats)))
        .unwrap_or_default();
    d.facts = facts(&input);
    d.findings = evaluate(&input);
    d.kernel_counters = kc.clone();
    d.set_incidents(&agg.incidents);
    if ended_early {
        d.warnings.push(format!(
            "interrupted after {elapsed:.1} s of {:.0} s",
            a.duration.as_secs_f64()
        ));
    }
    if kc.is_none() {
        d.warnings
            .push("the kernel's conntrack counters could not be read at the end".into());
    }
    d.node = Some(node);
    d.exit = exit_code(&d, &a.fail_on, false);
    print(&d, a.json);
    Ok(d.exit)
}

#[cfg(test)]
mod tests {
    #[test]
    fn help_lists_every_finding_kind() {
        use clap::CommandFactory;
        let mut cmd = crate::cli::Cli::command();
        let check = cmd.find_subcommand_mut("check").unwrap();
        let help = check.render_long_help().to_string();
        for k in crate::findings::KINDS {
            assert!(help.contains(k), "check --help does not name {k}");
        }
        assert!(help.contains("Exit codes:"));
    }
}
