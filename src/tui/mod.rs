//! `ctrace top`: the live view (and the browser of recordings).
//!
//! - `app`: the state and how messages change it (pure).
//! - `ui`: rendering, a pure function of the state.
//! - `event`: the one message enum (keys, ticks, data).
//! - `replay`: the clock that replays a recording.
//!
//! Threads: the main thread owns the terminal and the [`App`]; one thread
//! forwards terminal input; one owns the tracing session (it enters the
//! traced netns) and forwards event batches and the kernel's counters; one,
//! started from the session thread so that it shares its netns, reads the
//! node's mitigation state every few seconds.

pub mod app;
pub mod event;
pub mod replay;
pub mod ui;

use std::io::{IsTerminal, Stdout};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::{
    cursor,
    event::{self as ct_event, Event as CtEvent},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::Terminal;

use crate::cli::TopArgs;
use crate::ctstat::{CpuStats, Snapshot};
use crate::record::Reader;
use crate::session::{Session, SessionConfig};

use app::{App, Origin, SourceInfo};
use event::Msg;
use replay::ReplayFeed;

/// How often the node's mitigation state is read.
const NODE_EVERY: Duration = Duration::from_secs(5);
/// How often the kernel's counters and the lost count are read.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

pub fn run(a: &TopArgs) -> Result<i32> {
    if a.interval < Duration::from_millis(20) {
        bail!("--interval {:?} is too short: use 20ms or more", a.interval);
    }
    if let Some(path) = &a.replay {
        return run_replay(a, path);
    }
    need_terminal()?;
    let stop = crate::cmd::run::stop_on_signals()?;
    let mut cfg = crate::cmd::session_config(&a.trace);
    let mut lab = crate::lab::Background::for_session(a.lab, &mut cfg)?;
    let origin = match a.lab {
        Some(kind) => Origin::Lab(crate::lab::LabKind::name(kind).into()),
        None => Origin::Live,
    };
    let (tx, rx) = mpsc::sync_channel(256);
    let traffic = lab.as_ref().map(|l| l.traffic());
    let workloads = !a.trace.no_workloads;
    let (info, session) = start_live(cfg, origin, tx.clone(), stop.clone(), traffic, workloads)?;
    if let Some(l) = lab.as_mut() {
        l.resume();
    }
    let mut app = App::new(info);
    // Whatever the view does (a panic included), the session detaches and
    // the lab is removed before the run ends.
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ui_loop(&mut app, rx, tx, a.interval, &stop, None)
    }));
    stop.store(true, Ordering::Relaxed);
    // rx is gone with ui_loop: a session thread blocked on a full channel wakes up
    let joined = session.join();
    drop(lab);
    let res = res.unwrap_or_else(|p| std::panic::resume_unwind(p));
    res?;
    joined.map_err(|_| anyhow!("the tracing session thread panicked"))?;
    Ok(crate::exit::OK)
}

fn need_terminal() -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("ctrace top needs a terminal; to save events to a file use 'ctrace record -o FILE'");
    }
    Ok(())
}

fn run_replay(a: &TopArgs, path: &Path) -> Result<i32> {
    if !(a.speed.is_finite() && a.speed > 0.0) {
        bail!("--speed {} must be a positive number", a.speed);
    }
    // a first pass reads the whole file (one event at a time): its errors
    // come before the terminal is taken, its trailer and warnings are shown
    // from the start; the replay then streams the file again
    let mut scan = Reader::open(path)?;
    let mut last_ts = None;
    while let Some(e) = scan.next_event()? {
        last_ts = Some(last_ts.map_or(e.ts_ns, |t: u64| t.max(e.ts_ns)));
    }
    let header = scan.header().clone();
    let summary = scan.finish()?;
    let mut info = SourceInfo::from_header(&header, &path.display().to_string(), a.speed);
    info.lost_unknown = summary.trailer.is_none();
    info.warning = match (&summary.trailer, summary.warnings.len()) {
        (None, _) => Some("cut off: no trailer (?)".into()),
        (Some(_), 0) => None,
        (Some(_), n) => Some(format!("{n} problem(s) in the file (?)")),
    };
    info.notes = summary.warnings;
    let mut app = App::new(info);
    let mut end = last_ts;
    if let Some(t) = &summary.trailer {
        app.live.lost = t.lost;
        app.live.kernel = t.kernel_counters.as_ref().map(|k| {
            let per_cpu = if k.per_cpu.is_empty() {
                // totals only: one pseudo-CPU the per-CPU panel leaves out
                vec![CpuStats {
                    cpu: u32::MAX,
                    insert_failed: k.insert_failed,
                    drop: k.drop,
                    invalid: k.invalid,
                    clash_resolve: k.clash_resolve,
                    ..Default::default()
                }]
            } else {
                k.per_cpu.clone()
            };
            Snapshot { per_cpu }
        });
        if t.end_mono_ns > 0 {
            end = Some(end.unwrap_or(0).max(t.end_mono_ns));
        }
    }
    let events = Reader::open(path)?;
    let feed = ReplayFeed::new(Box::new(events), header.start_mono_ns, end, a.speed);
    need_terminal()?;
    let stop = crate::cmd::run::stop_on_signals()?;
    let (tx, rx) = mpsc::sync_channel(256);
    ui_loop(&mut app, rx, tx, a.interval, &stop, Some(feed))?;
    Ok(crate::exit::OK)
}

/// Starts the session on its own thread (it enters the traced netns there)
/// and waits until it is attached, so that errors are printed before the
/// terminal is taken over.
fn start_live(
    cfg: SessionConfig,
    origin: Origin,
    tx: SyncSender<Msg>,
    stop: Arc<AtomicBool>,
    traffic: Option<crate::lab::Traffic>,
    workloads: bool,
) -> Result<(SourceInfo, JoinHandle<()>)> {
    let (itx, irx) = mpsc::channel::<Result<SourceInfo>>();
    let h = std::thread::Builder::new()
        .name("ctrace-session".into())
        .spawn(move || {
            let mut session = match Session::start(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = itx.send(Err(e));
                    return;
                }
            };
            let mut info = SourceInfo::from_plan(&session.plan, origin);
            info.hostname = session.hostname.clone();
            info.netns = session.netns;
            info.notes = session.notes.clone();
            info.notes.sort();
            info.notes.dedup();
            info.start_ns = session.start_mono_ns;
            info.tod_at_start_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| (d.as_nanos() % (86_400 * 1_000_000_000u128)) as u64);
            let _ = itx.send(Ok(info));
            // started from this thread: it reads the traced netns
            let node = {
                let (tx, stop) = (tx.clone(), stop.clone());
                std::thread::Builder::new()
                    .name("ctrace-node".into())
                    .spawn(move || node_loop(tx, stop))
                    .ok()
            };
            session_loop(&mut session, &tx, &stop, workloads);
            stop.store(true, Ordering::Relaxed);
            // the driver's order: the lab's traffic stops before the detach
            let _ = crate::cmd::run::finish(session, traffic.as_ref());
            if let Some(n) = node {
                let _ = n.join();
            }
        })
        .context("starting the session thread")?;
    match irx.recv() {
        Ok(Ok(info)) => Ok((info, h)),
        Ok(Err(e)) => {
            let _ = h.join();
            Err(e)
        }
        Err(_) => {
            let _ = h.join();
            bail!("the tracing session thread ended before attaching")
        }
    }
}

/// The model keeps events by value (it holds a bounded log of them); the
/// engine hands them over boxed ([`crate::pipeline::Batch`]).
#[allow(clippy::vec_box)]
fn unboxed(v: Vec<Box<crate::event::Event>>) -> Vec<crate::event::Event> {
    v.into_iter().map(|e| *e).collect()
}

fn session_loop(session: &mut Session, tx: &SyncSender<Msg>, stop: &AtomicBool, workloads: bool) {
    // as `record` does, on this consumer thread: a lookup is a cache hit, a
    // scan of the node on a miss at most once a second
    let mut resolver = workloads.then(|| crate::workload::Resolver::new("/"));
    let mut last = Instant::now();
    let mut first = true;
    let mut corr = session.correlator();
    while !stop.load(Ordering::Relaxed) {
        let mut out = session.next_output(&mut corr, Duration::from_millis(100));
        if let Some(r) = resolver.as_mut() {
            for e in &mut out.events {
                r.fill(e);
            }
            for i in &mut out.incidents {
                i.workload = r
                    .resolve(i.flow.src)
                    .and_then(|w| serde_json::to_value(w).ok());
            }
        }
        if !out.events.is_empty() && tx.send(Msg::Events(unboxed(out.events))).is_err() {
            return;
        }
        if !out.incidents.is_empty() && tx.send(Msg::Incidents(out.incidents)).is_err() {
            return;
        }
        if first || last.elapsed() >= COUNTERS_EVERY {
            first = false;
            last = Instant::now();
            let sent = match session.counters() {
                Ok(s) => tx.send(Msg::Kernel(s)),
                Err(_) => Ok(()),
            };
            if sent.is_err() || tx.send(Msg::Lost(session.lost())).is_err() {
                return;
            }
        }
    }
}

fn node_loop(tx: SyncSender<Msg>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if tx
            .send(Msg::Node(Box::new(crate::node::read_state(
                std::path::Path::new("/"),
                None,
            ))))
            .is_err()
        {
            return;
        }
        let t = Instant::now();
        while t.elapsed() < NODE_EVERY && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the TUI currently holds the terminal (raw mode, alternate screen).
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Gives the terminal back: leaves the alternate screen, shows the cursor,
/// ends raw mode. Safe to call more than once.
pub fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// Owns the terminal while the TUI runs; restores it on drop and, through a
/// panic hook, when anything panics.
pub struct TerminalGuard {
    /// Never dropped: ratatui's Terminal shows the cursor on drop and
    /// `eprintln!`s (a panic) when that fails, as it does on a terminal that
    /// hung up; [`restore_terminal`] does the same without failing.
    pub terminal: std::mem::ManuallyDrop<Terminal<CrosstermBackend<Stdout>>>,
}

impl TerminalGuard {
    pub fn enter() -> Result<TerminalGuard> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                prev(info);
            }));
        });
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        TERMINAL_TAKEN.store(true, Ordering::SeqCst);
        let guard = (|| -> Result<TerminalGuard> {
            execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)?;
            let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
            terminal.clear()?;
            Ok(TerminalGuard {
                terminal: std::mem::ManuallyDrop::new(terminal),
            })
        })();
        if guard.is_err() {
            restore_terminal();
        }
        guard
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn input_loop(tx: SyncSender<Msg>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match ct_event::poll(Duration::from_millis(100)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        let msg = match ct_event::read() {
            Ok(CtEvent::Key(k)) => Msg::Key(k),
            Ok(CtEvent::Resize(w, h)) => Msg::Resize(w, h),
            Ok(_) => continue,
            Err(_) => return,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// The main loop: take the terminal, apply messages, tick and draw at
/// `interval` (and at once after a key), until `q` or a signal.
fn ui_loop(
    app: &mut App,
    rx: Receiver<Msg>,
    tx: SyncSender<Msg>,
    interval: Duration,
    stop: &Arc<AtomicBool>,
    mut feed: Option<ReplayFeed>,
) -> Result<()> {
    let mut guard = TerminalGuard::enter()?;
    let input_stop = Arc::new(AtomicBool::new(false));
    let input = {
        let (tx, s) = (tx, input_stop.clone());
        std::thread::Builder::new()
            .name("ctrace-input".into())
            .spawn(move || input_loop(tx, s))
            .context("starting the input thread")?
    };
    let res = (|| -> Result<()> {
        let mut last = Instant::now();
        let mut next_tick = Instant::now();
        let mut dirty = true;
        let mut ended = false;
        // a replay's events pass through the correlation stage too (the
        // events a stable-mode recording made of clashes are in the file)
        let mut corr = crate::incident::Correlator::new(crate::incident::Config::default());
        loop {
            if app.quit || stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_tick {
                let dt = now - last;
                last = now;
                let now_ns = match feed.as_mut() {
                    Some(f) => {
                        if !app.paused() {
                            let mut out = crate::incident::Output::default();
                            for e in f.advance(dt) {
                                let o = corr.push(e);
                                out.events.extend(o.events);
                                out.incidents.extend(o.incidents);
                            }
                            let o = corr.tick(f.now_ns());
                            out.events.extend(o.events);
                            out.incidents.extend(o.incidents);
                            if f.done() && !ended {
                                let o = corr.finish(f.now_ns());
                                out.events.extend(o.events);
                                out.incidents.extend(o.incidents);
                            }
                            if !out.events.is_empty() {
                                app.add_events(unboxed(out.events));
                            }
                            if !out.incidents.is_empty() {
                                app.update(Msg::Incidents(out.incidents));
                            }
                        }
                        if f.done() && !ended {
                            ended = true;
                            app.update(Msg::SourceEnded(f.end_reason()));
                        }
                        f.now_ns()
                    }
                    None => crate::sys::monotonic_ns(),
                };
                app.update(Msg::Tick { now_ns });
                guard.terminal.draw(|f| ui::render(app, f))?;
                dirty = false;
                // lets the tests check that a panic gives the terminal back
                if std::env::var_os("CTRACE_TEST_PANIC_AFTER_DRAW").is_some() {
                    panic!("CTRACE_TEST_PANIC_AFTER_DRAW is set");
                }
                next_tick += interval;
                if next_tick < now {
                    next_tick = now + interval;
                }
            } else if dirty {
                guard.terminal.draw(|f| ui::render(app, f))?;
                dirty = false;
            }
            match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(msg) => dirty |= app.update(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    })();
    input_stop.store(true, Ordering::Relaxed);
    drop(rx);
    // A terminal that hung up (its tmux or ssh gone) can leave crossterm's
    // read spinning on end-of-file, where the input thread never sees its
    // stop flag: wait a little, then leave it; the process is ending.
    let t0 = Instant::now();
    while !input.is_finished() && t0.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if input.is_finished() {
        let _ = input.join();
    }
    drop(guard);
    res
}

/// Helpers shared by the unit tests, the integration tests and the benchmark.
#[doc(hidden)]
pub mod testkit {
    use std::net::{IpAddr, Ipv4Addr};

    use crate::event::{Event, Kind, Tuple};

    use super::app::{Origin, ProbeLine, SourceInfo};

    /// A plausible event: source 10.0.(i/250).(i%250), destination
    /// 192.0.2.(1 + dport%200):dport, translated port 1024 + i%60000.
    pub fn event(i: u64, kind: Kind, ts_ns: u64, cpu: u32, dport: u16) -> Event {
        let src = IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250 % 250) as u8, (i % 250) as u8));
        let dst = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + (dport % 200) as u8));
        let node = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        let sport = 30_000 + (i % 30_000) as u16;
        let port = 1024 + (i % 60_000) as u16;
        let orig = Tuple {
            src,
            sport,
            dst,
            dport,
        };
        let reply = Tuple {
            src: dst,
            sport: dport,
            dst: node,
            dport: port,
        };
        let reason = match kind {
            Kind::InsertFailed => "insert_failed: clash with an existing entry",
            Kind::TcpInvalid => "SEQ is over upper bound (over the window of the receiver)",
            Kind::TcpIgnored => "ACK is under the lower bound (possible overly delayed ACK)",
            _ => "",
        };
        let mut e = Event::new(kind, orig);
        e.ts_ns = ts_ns;
        e.cpu = cpu;
        e.netns = 4026531840;
        e.reply = Some(reply);
        e.port = Some(port);
        e.reason = reason.into();
        e.nat = Some("snat".into());
        e.source = "fentry".into();
        e
    }

    pub fn info(origin: Origin) -> SourceInfo {
        let probe = |name: &str, fl: Option<&str>, notes: &[&str]| ProbeLine {
            name: name.into(),
            flavour: fl.map(String::from),
            hooks: vec!["hook".into()],
            notes: notes.iter().map(|s| s.to_string()).collect(),
        };
        SourceInfo {
            origin,
            hostname: "node-1".into(),
            kernel: "6.18.0-test".into(),
            mode: "auto".into(),
            netns: 4026531840,
            probes: vec![
                probe("nat", Some("fentry"), &[]),
                probe("confirm", Some("fentry"), &[]),
                probe("window", Some("kprobe"), &["no window bounds"]),
                probe("symptoms", None, &[]),
            ],
            notes: vec![],
            warning: None,
            lost_unknown: false,
            start_ns: 0,
            tod_at_start_ns: None,
        }
    }

    /// A mix of kinds, `n` events over `secs` seconds, spread over 4 CPUs
    /// and 50 destinations.
    pub fn mix(n: u64, secs: u64) -> Vec<Event> {
        const KINDS: [Kind; 8] = [
            Kind::NatAlloc,
            Kind::NatAlloc,
            Kind::NatAlloc,
            Kind::InsertFailed,
            Kind::ClashResolved,
            Kind::TcpInvalid,
            Kind::HostRst,
            Kind::TcpIgnored,
        ];
        (0..n)
            .map(|i| {
                let ts = i * secs * 1_000_000_000 / n.max(1);
                event(
                    i,
                    KINDS[(i % 8) as usize],
                    ts,
                    (i % 4) as u32,
                    80 + (i % 50) as u16,
                )
            })
            .collect()
    }
}

/// CPU cost of the UI thread's work at a given event rate: `rate` events per
/// second for `secs` seconds of feed, delivered in batches every 25 ms and
/// drawn 4 times a second onto a `TestBackend` of `w`x`h`, as fast as the
/// machine goes. Returns the thread's CPU seconds per second of feed.
#[doc(hidden)]
pub fn bench_feed(rate: u64, secs: u64, w: u16, h: u16) -> f64 {
    use ratatui::backend::TestBackend;
    let events = testkit::mix(rate * secs, secs);
    let mut app = App::new(testkit::info(Origin::Live));
    let mut term = match Terminal::new(TestBackend::new(w, h)) {
        Ok(t) => t,
        Err(e) => match e {},
    };
    let per_batch = (rate / 40).max(1) as usize; // 40 batches a second
    let t0 = thread_cpu();
    let mut it = events.into_iter().peekable();
    let mut step = 0u64;
    while it.peek().is_some() {
        let batch: Vec<_> = it.by_ref().take(per_batch).collect();
        app.update(Msg::Events(batch));
        step += 1;
        if step % 10 == 0 {
            app.update(Msg::Tick {
                now_ns: step * 25_000_000,
            });
            let _ = term.draw(|f| ui::render(&app, f));
        }
    }
    (thread_cpu() - t0) / secs as f64
}

fn thread_cpu() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    /// The UI thread's share of one core at 10,000 events/s, drawn 4 times a
    /// second (thread CPU time, so other load on the machine does not count).
    #[test]
    fn ui_thread_costs_under_5_percent_of_a_core_at_10k_events_per_second() {
        let cost = super::bench_feed(10_000, 10, 120, 40);
        eprintln!(
            "ui thread: {:.2}% of one core at 10,000 events/s",
            cost * 100.0
        );
        // unoptimized builds are several times slower
        let limit = if cfg!(debug_assertions) { 0.5 } else { 0.05 };
        assert!(cost < limit, "{:.3} s of CPU per s of feed", cost);
    }
}
