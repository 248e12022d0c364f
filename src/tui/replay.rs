//! Replaying a recording at recorded speed (times `--speed`): a clock on the
//! events' own timeline that the main loop advances by the wall time between
//! ticks, unless paused.

use std::collections::VecDeque;
use std::time::Duration;

use crate::event::Event;

pub struct ReplayFeed {
    events: VecDeque<Event>,
    /// The replay clock, on the events' clock (ns).
    clock_ns: u64,
    end_ns: u64,
    speed: f64,
}

impl ReplayFeed {
    /// `start_ns`: the recording's start (its header); `end_ns`: its end (the
    /// trailer), where known. Events are replayed in timestamp order.
    pub fn new(mut events: Vec<Event>, start_ns: u64, end_ns: Option<u64>, speed: f64) -> Self {
        events.sort_by_key(|e| e.ts_ns);
        let first = events.first().map_or(start_ns, |e| e.ts_ns);
        let last = events.last().map_or(start_ns, |e| e.ts_ns);
        ReplayFeed {
            clock_ns: start_ns.min(first),
            end_ns: end_ns.unwrap_or(0).max(last),
            events: events.into(),
            speed,
        }
    }

    /// Moves the clock on by `dt` of wall time and returns the events it passed.
    pub fn advance(&mut self, dt: Duration) -> Vec<Event> {
        let step = (dt.as_nanos() as f64 * self.speed).min(u64::MAX as f64 / 2.0) as u64;
        self.clock_ns = self.clock_ns.saturating_add(step).min(self.end_ns);
        let n = self
            .events
            .iter()
            .take_while(|e| e.ts_ns <= self.clock_ns)
            .count();
        self.events.drain(..n).collect()
    }

    pub fn now_ns(&self) -> u64 {
        self.clock_ns
    }

    /// Every event has been replayed and the clock reached the end.
    pub fn done(&self) -> bool {
        self.events.is_empty() && self.clock_ns >= self.end_ns
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
        let mut f = ReplayFeed::new(
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
}
