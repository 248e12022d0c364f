//! `ctrace serve`: a long-running agent for Prometheus. It attaches like
//! `record` (through the one driver, [`Traced`]), counts every event into
//! [`Metrics`], reads the kernel's counters of the traced netns a few times a
//! second, and answers `/metrics`, `/healthz` and `/readyz` from one HTTP
//! thread. The listening socket is bound before anything attaches (and
//! before the session enters `--netns`): a taken port is an error at once,
//! and the socket stays in ctrace's own netns.

pub mod http;
pub mod rotate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::run::{ending_signal, say, Traced};
use crate::cli::ServeArgs;
use crate::metrics::{Config, Format, Metrics};
use crate::symbolize::KernelSymbols;
use http::{Request, Response};
use rotate::{Now, Rotator};

/// How often the kernel's counters and the table fill are read.
const KERNEL_EVERY: Duration = Duration::from_millis(250);

/// What the HTTP thread reads.
struct State {
    metrics: Mutex<Metrics>,
    /// Every probe attached.
    ready: AtomicBool,
    /// Why not ready (the answer of `/readyz` until it is).
    not_ready: Mutex<String>,
}

fn answer(st: &State, r: &Request) -> Response {
    match r.path.as_str() {
        "/metrics" => {
            let f = Format::from_accept(r.accept.as_deref());
            let body = match st.metrics.lock() {
                Ok(m) => m.render(f),
                Err(p) => p.into_inner().render(f),
            };
            Response {
                status: 200,
                content_type: f.content_type(),
                body,
            }
        }
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            if st.ready.load(Ordering::Relaxed) {
                Response::text(200, "ready: every probe is attached\n")
            } else {
                let why = st.not_ready.lock().map(|s| s.clone()).unwrap_or_default();
                Response::text(503, format!("not ready: {why}\n"))
            }
        }
        _ => Response::text(404, "not found: /metrics, /healthz, /readyz\n"),
    }
}

pub fn run(a: &ServeArgs) -> Result<i32> {
    crate::sys::require_tracing_privileges()?;
    let listener = http::bind(&a.listen)?;
    let rot = match &a.record {
        Some(d) => Some(Rotator::new(
            d,
            a.record_max_mb.saturating_mul(1 << 20),
            a.record_max_files,
        )?),
        None => None,
    };
    let mut rot = rot.map(|r| if a.pcap { r.with_pcap(a.snaplen) } else { r });
    let state = Arc::new(State {
        metrics: Mutex::new(Metrics::new(
            Config {
                workload_labels: a.workload_labels,
                max_workloads: a.max_workloads,
            },
            &crate::sys::kernel_release(),
        )),
        ready: AtomicBool::new(false),
        not_ready: Mutex::new("attaching the probes".into()),
    });
    let done = Arc::new(AtomicBool::new(false));
    let server = {
        let st = state.clone();
        let done = done.clone();
        std::thread::Builder::new()
            .name("ctrace-http".into())
            .spawn(move || http::serve(listener, done, |r| answer(&st, r)))?
    };
    let stop_server = || {
        done.store(true, Ordering::Relaxed);
    };
    let mut cfg = crate::cmd::session_config(&a.trace);
    if a.pcap {
        cfg.snaplen = a.snaplen;
    }
    let traced = match Traced::start(cfg, None) {
        Ok(t) => t,
        Err(e) => {
            stop_server();
            let _ = server.join();
            return Err(e);
        }
    };
    let result = trace(a, traced, &state, rot.as_mut());
    stop_server();
    let _ = server.join();
    result
}

fn trace(
    a: &ServeArgs,
    mut traced: Traced,
    st: &State,
    mut rot: Option<&mut Rotator>,
) -> Result<i32> {
    let header = traced.session.header();
    for n in &traced.session.notes {
        say(format!("ctrace: note: {n}"));
    }
    let missing: Vec<&str> = traced
        .session
        .plan
        .probes
        .iter()
        .filter(|p| p.chosen.is_none())
        .map(|p| p.probe.name())
        .collect();
    let kernel_now = |t: &mut Traced| t.session.counters_now().ok();
    {
        let mut m = st.metrics.lock().unwrap_or_else(|p| p.into_inner());
        m.set_probes(&traced.session.plan);
        if let Some(k) = kernel_now(&mut traced) {
            m.set_kernel(k.total());
        }
        if let Ok((n, max)) = traced.session.table_fill() {
            m.set_table(n, max);
        }
    }
    if missing.is_empty() {
        st.ready.store(true, Ordering::Relaxed);
    } else if let Ok(mut w) = st.not_ready.lock() {
        *w = format!("probes not attached on this kernel: {}", missing.join(", "));
    }
    say(format!(
        "ctrace: serving /metrics on http://{} (netns {}, {} ms to attach)",
        a.listen,
        traced.session.netns,
        traced.session.attach_time.as_millis()
    ));
    // a file's kernel counters: the session's deltas (since attach) at its
    // start and at its end, so that the last one ends with the session's own
    // final read, after every probe is detached
    if let Some(r) = rot.as_deref_mut() {
        r.begin(&Now {
            header: &header,
            kernel: traced.session.counters().ok(),
            lost: 0,
            lost_failures: 0,
            lost_user: 0,
        })?;
    }
    let mut syms = KernelSymbols::new();
    let mut corr = traced.session.correlator();
    let mut workloads =
        (!a.trace.no_workloads).then(|| crate::workload::Resolver::new(std::path::Path::new("/")));
    // events through the correlation stage, then the file and the counters
    let mut emit = |out: crate::incident::Output, rot: Option<&mut Rotator>| -> Result<()> {
        let mut events = out.events;
        if let Some(r) = workloads.as_mut() {
            for e in events.iter_mut() {
                r.fill(e);
            }
        }
        {
            let mut m = st.metrics.lock().unwrap_or_else(|p| p.into_inner());
            for e in &events {
                m.observe(e);
            }
            for i in &out.incidents {
                m.observe_incident(i);
            }
        }
        // counted, then handed to the file's thread
        if let Some(r) = rot {
            for mut e in events {
                syms.fill(&mut e);
                r.event(e)?;
            }
            for i in &out.incidents {
                r.incident(i)?;
            }
        }
        Ok(())
    };
    let mut last_kernel = Instant::now();
    let mut last_tick = Instant::now();
    while !traced.stop_requested() {
        let out = traced
            .session
            .next_output(&mut corr, Duration::from_millis(100));
        emit(out, rot.as_deref_mut())?;
        if last_kernel.elapsed() >= KERNEL_EVERY {
            last_kernel = Instant::now();
            let k = kernel_now(&mut traced);
            let fill = traced.session.table_fill().ok();
            let lost = traced.session.lost() + traced.session.lost_user();
            let mut m = st.metrics.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = k {
                m.set_kernel(k.total());
            }
            if let Some((n, max)) = fill {
                m.set_table(n, max);
            }
            m.set_lost(lost);
            m.set_runs_skipped(traced.session.missed().0);
        }
        if last_tick.elapsed() >= Duration::from_millis(500) {
            last_tick = Instant::now();
            if let Some(r) = rot.as_deref_mut() {
                let now = Now {
                    header: &header,
                    kernel: traced.session.counters().ok(),
                    lost: traced.session.lost(),
                    lost_failures: traced.session.lost_failures(),
                    lost_user: traced.session.lost_user(),
                };
                r.tick(&now)?;
            }
        }
    }
    st.ready.store(false, Ordering::Relaxed);
    if let Ok(mut w) = st.not_ready.lock() {
        *w = "shutting down".into();
    }
    // the one shutdown order: detach and drain, then the counters
    let (fin, _lab) = traced.finish()?;
    let mut rot = rot;
    for e in fin.remaining {
        let o = corr.push(e);
        emit(o, rot.as_deref_mut())?;
    }
    let o = corr.finish(crate::sys::monotonic_ns());
    emit(o, rot.as_deref_mut())?;
    if let Some(r) = rot {
        r.end(
            &Now {
                header: &header,
                kernel: fin.counters.clone(),
                lost: fin.lost,
                lost_failures: fin.lost_failures,
                lost_user: fin.lost_user,
            },
            "signal",
            ending_signal().map(String::from),
        )?;
    }
    say(format!(
        "ctrace: serve stopped by {}: every probe detached",
        ending_signal().unwrap_or("a signal")
    ));
    Ok(crate::exit::OK)
}
