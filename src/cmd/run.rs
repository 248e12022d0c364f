//! The driver every tracing face shares (record, check, top): one signal
//! handler and one shutdown order, written once.
//!
//! - INT, TERM, HUP (an SSH disconnect, a closed tmux) and QUIT all end a run
//!   the same clean way; STOP/CONT and a debugger's attach never end it (the
//!   pipeline treats an interrupted poll as a wakeup).
//! - The order: the lab's traffic stops, then the session detaches every
//!   probe and drains the ring, then the kernel's counters are read, then the
//!   face writes its trailer or report, and last the lab's namespaces go.
//! - Nothing printed to a terminal that hung up may end the run: notes and
//!   progress go through [`say`], which ignores a failed write.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};

use crate::lab::{Background, LabKind, Traffic};
use crate::session::{Finish, Session, SessionConfig};

/// The signals that end a run.
pub const ENDING_SIGNALS: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

fn last_signal() -> &'static Arc<AtomicUsize> {
    static LAST: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    LAST.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// Every ending signal sets the returned flag instead of killing the process,
/// so every exit path writes its trailer, detaches the probes and removes
/// what a lab made.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in ENDING_SIGNALS {
        signal_hook::flag::register_usize(sig, last_signal().clone(), sig as usize)
            .context("installing a signal handler")?;
        signal_hook::flag::register(sig, stop.clone()).context("installing a signal handler")?;
    }
    Ok(stop)
}

/// The signal that ended the run ("SIGHUP"), for the trailer's `signal`.
pub fn ending_signal() -> Option<&'static str> {
    Some(match last_signal().load(Ordering::Relaxed) as i32 {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGQUIT => "SIGQUIT",
        _ => return None,
    })
}

pub use crate::sys::say;

/// A progress line (no newline) on stderr, same rule.
pub fn progress(msg: impl std::fmt::Display) {
    let mut e = std::io::stderr();
    let _ = write!(e, "{msg}");
    let _ = e.flush();
}

/// A run that traces: the session, and the lab it traces if asked for one.
pub struct Traced {
    pub session: Session,
    pub stop: Arc<AtomicBool>,
    spec: Option<String>,
    // dropped last: its namespaces outlive the session's detach
    lab: Option<Background>,
}

impl Traced {
    /// Installs the signal handler, builds the lab with its traffic held,
    /// attaches, then lets the traffic run: every failure the kernel counts
    /// is one the probes could see.
    pub fn start(mut cfg: SessionConfig, lab: Option<LabKind>) -> Result<Traced> {
        let stop = stop_on_signals()?;
        let mut lab = Background::for_session(lab, &mut cfg)?;
        let session = Session::start(&cfg)?;
        if let Some(l) = lab.as_mut() {
            l.resume();
        }
        Ok(Traced {
            session,
            stop,
            spec: cfg.netns,
            lab,
        })
    }

    /// What `--netns` names the traced netns: the flag's, or the lab's node.
    pub fn netns_spec(&self) -> Option<String> {
        match &self.lab {
            Some(l) => Some(l.node_netns().to_string()),
            None => self.spec.clone(),
        }
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Ends the run in the one order; the lab's namespaces go when the
    /// returned guard is dropped (after the face has written its output).
    pub fn finish(self) -> Result<(Finish, Option<Background>)> {
        let traffic = self.lab.as_ref().map(|l| l.traffic());
        let fin = finish(self.session, traffic.as_ref())?;
        Ok((fin, self.lab))
    }

    /// Asks the lab's traffic to end after its current round (up to a few
    /// seconds of SYN retransmits), without waiting: the face keeps reading
    /// until [`Traced::wound_down`], then calls [`Traced::finish`]. A face
    /// that only waited read nothing for those seconds, while a flood
    /// elsewhere on the node kept filling its queue.
    pub fn wind_down(&self) {
        if let Some(l) = &self.lab {
            l.traffic().request_stop();
        }
    }

    /// Whether nothing more of the lab's can come: no lab, or its traffic
    /// has ended.
    pub fn wound_down(&self) -> bool {
        self.lab.as_ref().map_or(true, |l| l.finished())
    }
}

/// The shutdown order for a session (also used where the session lives on
/// another thread than the lab, as in `top`): traffic first, then detach and
/// drain, then the counters.
pub fn finish(session: Session, traffic: Option<&Traffic>) -> Result<Finish> {
    if let Some(t) = traffic {
        t.stop();
    }
    session.finish()
}
