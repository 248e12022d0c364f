//! Replaying a recording at recorded speed (times `--speed`): a clock on the
//! events' own timeline that the main loop advances by the wall time between
//! ticks, unless paused. Events come from a stream (the file's reader) with a
//! bounded window read ahead, so a replay's memory does not grow with the file.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use anyhow::Result;

use crate::event::Event;

/// Events read ahead of the replay clock, at most: they are replayed in
/// timestamp order within this window (a recording is written nearly in
/// order already; an event later than that is replayed as soon as it is read).
pub const WINDOW: usize = 16_384;
/// Events one `advance` hands over at most (a huge --speed catches up over
/// several ticks rather than in one unbounded batch).
pub const MAX_BATCH: usize = 16_384;

/// An event waiting for the clock, ordered by (timestamp, file order).
struct Pending(u64, u64, Event);

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

pub type Source = Box<dyn Iterator<Item = Result<Event>>>;

pub struct ReplayFeed {
    source: Source,
    /// The source has nothing more (its end, or an error).
    exhausted: bool,
    error: Option<String>,
    pending: BinaryHeap<Reverse<Pending>>,
    read: u64,
    /// The replay clock, on the events' clock (ns).
    clock_ns: u64,
    end_ns: u64,
    speed: f64,
}

impl ReplayFeed {
    /// `start_ns`: the recording's start (its header); `end_ns`: its end (the
    /// trailer, or the last event's time), where known.
    pub fn new(source: Source, start_ns: u64, end_ns: Option<u64>, speed: f64) -> Self {
        let mut f = ReplayFeed {
            source,
            exhausted: false,
            error: None,
            pending: BinaryHeap::with_capacity(WINDOW.min(1024)),
            read: 0,
            clock_ns: start_ns,
            end_ns: end_ns.unwrap_or(0),
            speed,
        };
        f.fill();
        if let Some(Reverse(p)) = f.pending.peek() {
            f.clock_ns = f.clock_ns.min(p.0);
        }
        f.end_ns = f.end_ns.max(f.clock_ns);
        f
    }

    /// A replay of events held in memory (tests).
    pub fn from_events(events: Vec<Event>, start_ns: u64, end_ns: Option<u64>, speed: f64) -> Self {
        ReplayFeed::new(
            Box::new(events.into_iter().map(Ok)),
            start_ns,
            end_ns,
            speed,
        )
    }

    /// Reads ahead up to the window.
    fn fill(&mut self) {
        while !self.exhausted && self.pending.len() < WINDOW {
            match self.source.next() {
                Some(Ok(e)) => {
                    self.end_ns = self.end_ns.max(e.ts_ns);
                    self.read += 1;
                    self.pending.push(Reverse(Pending(e.ts_ns, self.read, e)));
                }
                Some(Err(e)) => {
                    self.exhausted = true;
                    self.error = Some(format!("{e:#}"));
                }
                None => self.exhausted = true,
            }
        }
    }

    /// Moves the clock on by `dt` of wall time and returns the events it passed.
    pub fn advance(&mut self, dt: Duration) -> Vec<Event> {
        let step = (dt.as_nanos() as f64 * self.speed).min(u64::MAX as f64 / 2.0) as u64;
        self.clock_ns = self.clock_ns.saturating_add(step).min(self.end_ns);
        let mut out = Vec::new();
        loop {
            self.fill();
            match self.pending.peek() {
                Some(Reverse(p)) if p.0 <= self.clock_ns && out.len() < MAX_BATCH => {}
                _ => return out,
            }
            if let Some(Reverse(Pending(_, _, e))) = self.pending.pop() {
                out.push(e);
            }
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.clock_ns
    }

    /// Events read ahead and not replayed yet (at most [`WINDOW`]).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Every event has been replayed and the clock reached the end (or the
    /// file could not be read further).
    pub fn done(&self) -> bool {
        self.exhausted
            && self.pending.is_empty()
            && (self.clock_ns >= self.end_ns || self.error.is_some())
    }

    /// Why the replay ended, once [`done`](Self::done).
    pub fn end_reason(&self) -> String {
        match &self.error {
            Some(e) => format!("cannot read on: {e}"),
            None => "end of recording".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;

    #[test]
    fn replays_at_recorded_speed_times_the_factor() {
        let ev = |ts| crate::tui::testkit::event(0, Kind::InsertFailed, ts, 0, 80);
        let s = 1_000_000_000u64;
        let mut f = ReplayFeed::from_events(
            vec![ev(3 * s), ev(s + s / 2), ev(2 * s)],
            s,
            Some(10 * s),
            2.0,
        );
        assert!(f.advance(Duration::from_millis(1)).is_empty()); // clock at 1.002 s
        let got = f.advance(Duration::from_millis(400)); // 1.802 s
        assert_eq!(
            got.iter().map(|e| e.ts_ns).collect::<Vec<_>>(),
            vec![s + s / 2]
        );
        assert_eq!(f.advance(Duration::from_millis(200))[0].ts_ns, 2 * s); // 2.202 s
        assert!(f.advance(Duration::from_millis(300)).is_empty()); // 2.802 s
        assert_eq!(f.advance(Duration::from_secs(1)).len(), 1); // 4.802 s
        assert!(!f.done());
        f.advance(Duration::from_secs(100));
        assert_eq!(f.now_ns(), 10 * s);
        assert!(f.done());
    }

    #[test]
    fn reads_a_bounded_window_ahead_of_the_clock() {
        let s = 1_000_000_000u64;
        let n = 5 * WINDOW as u64;
        // a lazy source: counts what has been taken from it
        let taken = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let t = taken.clone();
        let src = (0..n).map(move |i| {
            t.set(t.get() + 1);
            Ok(crate::tui::testkit::event(
                i,
                Kind::NatAlloc,
                s + i * 1_000,
                0,
                80,
            ))
        });
        let mut f = ReplayFeed::new(Box::new(src), s, None, 1.0);
        assert_eq!(taken.get(), WINDOW as u64);
        assert!(f.buffered() <= WINDOW);
        // 1 ms: a thousand events
        assert_eq!(f.advance(Duration::from_millis(1)).len(), 1001);
        assert!(f.buffered() <= WINDOW && taken.get() <= 1001 + WINDOW as u64);
        let mut total = 1001;
        while !f.done() {
            let got = f.advance(Duration::from_secs(1));
            assert!(got.len() <= MAX_BATCH);
            assert!(f.buffered() <= WINDOW);
            total += got.len() as u64;
        }
        assert_eq!(total, n);
        assert_eq!(f.end_reason(), "end of recording");
    }

    #[test]
    fn out_of_order_events_within_the_window_come_in_order_and_errors_end_it() {
        let ev = |ts| Ok(crate::tui::testkit::event(0, Kind::InsertFailed, ts, 0, 80));
        let src = vec![
            ev(30),
            ev(10),
            ev(20),
            Err(anyhow::anyhow!("r.jsonl:5: not JSON")),
        ];
        let mut f = ReplayFeed::new(Box::new(src.into_iter()), 0, Some(1_000), 1.0);
        let got: Vec<u64> = f
            .advance(Duration::from_nanos(25))
            .iter()
            .map(|e| e.ts_ns)
            .collect();
        assert_eq!(got, vec![10, 20]);
        assert!(!f.done());
        assert_eq!(f.advance(Duration::from_nanos(10)).len(), 1);
        // the error ends the replay once the events before it are out
        assert!(f.done());
        assert_eq!(f.end_reason(), "cannot read on: r.jsonl:5: not JSON");
    }
}
