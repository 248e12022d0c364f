//! What has been counted: the [`Model`] (statistics, the event ring, per-second
//! series, the kernel's and the node's state) and the fixed facts about the
//! source ([`SourceInfo`]) that the header shows.

use std::collections::VecDeque;

use crate::ctstat::{CpuStats, Snapshot};
use crate::event::{Event, Kind};
use crate::node::NodeState;
use crate::probe::plan::Plan;
use crate::record::Header;
use crate::stats::Stats;

/// Events kept for the log (the newest).
pub const RING_CAP: usize = 10_000;
/// Seconds of history per kind (rates and sparklines).
pub const HISTORY_SECS: usize = 120;
/// Destinations and flows tracked by the top-k counters.
pub const TOPK: usize = 1024;
/// Rows the top table offers (before filtering).
pub const TOP_ROWS: usize = 256;
/// Closed incidents kept for the incidents panel (the newest).
pub const INCIDENT_CAP: usize = 2_000;

pub(super) const NS: u64 = 1_000_000_000;

/// Where the events come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    Live,
    /// A built-in lab traced live; the lab's name.
    Lab(String),
    /// A recording; its file name and the replay speed.
    Replay {
        file: String,
        speed: f64,
    },
}

/// One probe as the header shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeLine {
    pub name: String,
    /// The chosen flavour (fentry, kprobe, stable); None: missing.
    pub flavour: Option<String>,
    pub hooks: Vec<String>,
    /// Degradations (fewer fields, missing hooks).
    pub notes: Vec<String>,
}

impl ProbeLine {
    pub fn missing(&self) -> bool {
        self.flavour.is_none()
    }
    pub fn degraded(&self) -> bool {
        self.flavour.is_some() && !self.notes.is_empty()
    }
}

/// What the header says about the source; fixed for a session.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceInfo {
    pub origin: Origin,
    pub hostname: String,
    pub kernel: String,
    pub mode: String,
    pub netns: u32,
    pub probes: Vec<ProbeLine>,
    /// Session notes and recording warnings (shown in help).
    pub notes: Vec<String>,
    /// A recording's problem the header shows (cut off, no trailer, a
    /// second trailer): the details are in `notes`.
    pub warning: Option<String>,
    /// A recording without its trailer: how many events were lost is not
    /// known (the header says "lost ?", never 0).
    pub lost_unknown: bool,
    /// The events' clock at the start (kernel monotonic ns).
    pub start_ns: u64,
    /// UTC time of day (ns) at `start_ns`, to print event times; None: relative.
    pub tod_at_start_ns: Option<u64>,
}

impl SourceInfo {
    /// A live session's description from its attach plan.
    pub fn from_plan(plan: &Plan, origin: Origin) -> SourceInfo {
        SourceInfo {
            origin,
            hostname: String::new(),
            kernel: plan.kernel.clone(),
            mode: plan.mode.name().into(),
            netns: 0,
            probes: plan
                .probes
                .iter()
                .map(|p| ProbeLine {
                    name: p.probe.name().into(),
                    flavour: p.chosen.map(|f| f.name().to_string()),
                    hooks: p.hooks.clone(),
                    notes: p.notes.clone(),
                })
                .collect(),
            notes: Vec::new(),
            warning: None,
            lost_unknown: false,
            start_ns: 0,
            tod_at_start_ns: None,
        }
    }

    /// A recording's description from its header.
    pub fn from_header(h: &Header, file: &str, speed: f64) -> SourceInfo {
        let strs = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut probes: Vec<ProbeLine> = h
            .probes
            .iter()
            .map(|(name, v)| ProbeLine {
                name: name.clone(),
                flavour: v.get("mode").and_then(|m| m.as_str()).map(String::from),
                hooks: strs(v.get("hooks")),
                notes: strs(v.get("notes")),
            })
            .collect();
        // the order `ctrace probes` uses
        let rank = |n: &str| {
            crate::probe::Probe::ALL
                .iter()
                .position(|p| p.name() == n)
                .unwrap_or(usize::MAX)
        };
        probes.sort_by_key(|p| rank(&p.name));
        SourceInfo {
            origin: Origin::Replay {
                file: file.into(),
                speed,
            },
            hostname: h.hostname.clone(),
            kernel: h.kernel.clone(),
            mode: h.mode.clone().unwrap_or_default(),
            netns: h.netns,
            probes,
            notes: Vec::new(),
            warning: None,
            lost_unknown: false,
            start_ns: h.start_mono_ns,
            tod_at_start_ns: tod_from_rfc3339(&h.start_wall),
        }
    }

    pub fn is_replay(&self) -> bool {
        matches!(self.origin, Origin::Replay { .. })
    }

    /// An event's time: UTC time of day where known, else seconds since start.
    pub fn event_time(&self, ts_ns: u64) -> String {
        let rel = ts_ns.saturating_sub(self.start_ns);
        match self.tod_at_start_ns {
            Some(tod) => {
                let t = (tod + rel) % (86_400 * NS);
                let s = t / NS;
                format!(
                    "{:02}:{:02}:{:02}.{:03}",
                    s / 3600,
                    s / 60 % 60,
                    s % 60,
                    t % NS / 1_000_000
                )
            }
            None => format!("+{}.{:03}", rel / NS, rel % NS / 1_000_000),
        }
    }
}

/// UTC time of day in ns from "YYYY-MM-DDTHH:MM:SS[.frac]Z".
pub fn tod_from_rfc3339(s: &str) -> Option<u64> {
    let t = s.get(11..)?;
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<u64>().ok();
    let (h, m, sec) = (num(0..2)?, num(3..5)?, num(6..8)?);
    let mut frac = 0u64;
    if t.as_bytes().get(8) == Some(&b'.') {
        let digits: String = t[9..].chars().take_while(|c| c.is_ascii_digit()).collect();
        let d = &digits[..digits.len().min(9)];
        frac = d.parse::<u64>().unwrap_or(0) * 10u64.pow(9 - d.len() as u32);
    }
    Some((h * 3600 + m * 60 + sec) * NS + frac)
}

/// Per-second counts over the last [`HISTORY_SECS`] seconds.
#[derive(Clone, Debug)]
pub struct Series {
    start_sec: u64,
    buckets: VecDeque<u64>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            start_sec: 0,
            buckets: vec![0; HISTORY_SECS].into(),
        }
    }
}

impl Series {
    /// Moves the window so that `sec` is its newest bucket (or within it).
    pub fn advance_to(&mut self, sec: u64) {
        let n = HISTORY_SECS as u64;
        if sec < self.start_sec + n {
            return;
        }
        let new_start = sec + 1 - n;
        if new_start - self.start_sec >= n {
            self.buckets.iter_mut().for_each(|b| *b = 0);
        } else {
            for _ in self.start_sec..new_start {
                self.buckets.pop_front();
                self.buckets.push_back(0);
            }
        }
        self.start_sec = new_start;
    }

    pub fn add(&mut self, sec: u64, n: u64) {
        if sec < self.start_sec {
            return; // older than the window
        }
        self.advance_to(sec);
        self.buckets[(sec - self.start_sec) as usize] += n;
    }

    pub fn at(&self, sec: u64) -> u64 {
        if sec < self.start_sec {
            return 0;
        }
        self.buckets
            .get((sec - self.start_sec) as usize)
            .copied()
            .unwrap_or(0)
    }

    /// The `n` complete seconds before `now_sec`, oldest first.
    pub fn last(&self, now_sec: u64, n: usize) -> Vec<u64> {
        (0..n as u64)
            .rev()
            .map(|i| match now_sec.checked_sub(1 + i) {
                Some(s) => self.at(s),
                None => 0,
            })
            .collect()
    }
}

/// Everything counted: what the view shows. Pausing freezes a copy of it.
#[derive(Clone, Debug)]
pub struct Model {
    pub stats: Stats,
    /// The newest events with their sequence number; newest at the back.
    pub ring: VecDeque<(u64, Event)>,
    /// Events seen so far (the next sequence number).
    pub seq: u64,
    /// Per kind (in `Kind::ALL` order), then all kinds.
    pub series: Vec<Series>,
    pub lost: u64,
    pub kernel: Option<Snapshot>,
    pub node: Option<NodeState>,
    /// Time since the start, on the events' clock.
    pub now_ns: u64,
    /// The source stopped: why.
    pub ended: Option<String>,
    /// Incidents closed so far, and by the destination the client wanted:
    /// the top table counts these (one per losing connection) once there are any.
    pub incidents: u64,
    pub incident_destinations: crate::stats::TopK<(std::net::IpAddr, u16)>,
    /// The newest closed incidents (at most [`INCIDENT_CAP`]), newest at the back.
    pub incident_list: VecDeque<crate::incident::Incident>,
    /// `now_ns` when the kernel's counters were last read; None: never, or
    /// they are a recording's totals (its trailer).
    pub kernel_read_ns: Option<u64>,
}

impl Model {
    pub fn new() -> Model {
        Model {
            stats: Stats::new(TOPK),
            ring: VecDeque::with_capacity(RING_CAP),
            seq: 0,
            series: vec![Series::default(); Kind::ALL.len() + 1],
            lost: 0,
            kernel: None,
            node: None,
            now_ns: 0,
            ended: None,
            incidents: 0,
            incident_destinations: crate::stats::TopK::new(TOPK),
            incident_list: VecDeque::new(),
            kernel_read_ns: None,
        }
    }

    pub(super) fn add_incident(&mut self, i: &crate::incident::Incident) {
        self.incidents += 1;
        self.incident_destinations
            .add((i.flow.dst, i.flow.dport), 1);
        if self.incident_list.len() >= INCIDENT_CAP {
            self.incident_list.pop_front();
        }
        self.incident_list.push_back(i.clone());
    }

    /// How long ago the kernel's counters were read, on the view's clock.
    pub fn kernel_age_ns(&self) -> Option<u64> {
        self.kernel_read_ns.map(|t| self.now_ns.saturating_sub(t))
    }

    /// Failures counted so far (every kind but NAT allocations).
    pub fn failures(&self) -> u64 {
        Kind::ALL
            .iter()
            .filter(|k| **k != Kind::NatAlloc)
            .map(|k| self.stats.count(*k))
            .sum()
    }

    pub(super) fn add(&mut self, e: Event, start_ns: u64, ring_cap: usize) {
        self.stats.add(&e);
        let sec = e.ts_ns.saturating_sub(start_ns) / NS;
        self.series[kind_index(e.kind)].add(sec, 1);
        self.series[Kind::ALL.len()].add(sec, 1);
        if self.ring.len() >= ring_cap {
            self.ring.pop_front();
        }
        self.ring.push_back((self.seq, e));
        self.seq += 1;
    }

    pub fn now_sec(&self) -> u64 {
        self.now_ns / NS
    }

    /// Events of a kind in the last complete second.
    pub fn rate(&self, k: Option<Kind>) -> u64 {
        let i = k.map_or(Kind::ALL.len(), kind_index);
        self.now_sec()
            .checked_sub(1)
            .map_or(0, |s| self.series[i].at(s))
    }

    pub fn spark(&self, k: Kind, n: usize) -> Vec<u64> {
        self.series[kind_index(k)].last(self.now_sec(), n)
    }

    pub fn kernel_total(&self) -> Option<CpuStats> {
        self.kernel.as_ref().map(|s| s.total())
    }
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

pub fn kind_index(k: Kind) -> usize {
    Kind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

/// The kernel's counter that corresponds to a kind, where there is one.
pub fn kernel_counter(k: Kind, c: &CpuStats) -> Option<(&'static str, u64)> {
    match k {
        Kind::InsertFailed => Some(("insert_failed", c.insert_failed)),
        Kind::ClashResolved => Some(("clash_resolve", c.clash_resolve)),
        Kind::TcpInvalid => Some(("invalid", c.invalid)),
        Kind::NfDrop => Some(("drop", c.drop)),
        _ => None,
    }
}

/// Kinds whose reasons the counters panel lists.
pub const REASON_KINDS: [Kind; 3] = [Kind::TcpInvalid, Kind::TcpIgnored, Kind::TcpLiberal];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::tests::{ev, info};
    use crate::tui::app::App;
    use crate::tui::event::Msg;

    #[test]
    fn rates_and_sparklines_come_from_event_times() {
        let mut app = App::new(info());
        let mut v = Vec::new();
        for i in 0..30 {
            let mut e = ev(i, Kind::InsertFailed, 80);
            e.ts_ns = 2 * NS + i; // all in second 2
            v.push(e);
        }
        app.update(Msg::Events(v));
        app.update(Msg::Tick { now_ns: 3 * NS + 5 });
        assert_eq!(app.live.rate(Some(Kind::InsertFailed)), 30);
        assert_eq!(app.live.rate(None), 30);
        assert_eq!(app.live.spark(Kind::InsertFailed, 3), vec![0, 0, 30]);
        app.update(Msg::Tick { now_ns: 500 * NS });
        assert_eq!(app.live.rate(Some(Kind::InsertFailed)), 0);
        assert_eq!(app.live.stats.count(Kind::InsertFailed), 30);
    }

    #[test]
    fn series_window_moves_and_resets_after_long_gaps() {
        let mut s = Series::default();
        s.add(5, 2);
        s.add(HISTORY_SECS as u64 + 10, 1);
        assert_eq!(s.at(5), 0); // fell out
        assert_eq!(s.at(HISTORY_SECS as u64 + 10), 1);
        s.add(10_000, 7);
        assert_eq!(s.at(HISTORY_SECS as u64 + 10), 0);
        assert_eq!(s.last(10_001, 2), vec![0, 7]);
        s.add(1, 9); // too old: ignored
        assert_eq!(s.buckets.iter().sum::<u64>(), 7);
    }

    #[test]
    fn replay_header_is_read_from_the_recording() {
        let h: Header = serde_json::from_value(serde_json::json!({
            "format": 1, "ctrace": "0.1.0", "kernel": "6.1.0-test", "hostname": "node-a",
            "start_wall": "2026-11-23T10:20:30.250000Z", "start_mono_ns": 1000, "netns": 7,
            "probes": {"nat": {"mode": "fentry", "hooks": ["nf_nat_setup_info"], "notes": []},
                       "window": {"mode": null, "hooks": [], "notes": ["gone"]},
                       "confirm": {"mode": "kprobe", "hooks": [], "notes": []}},
        }))
        .unwrap();
        let i = SourceInfo::from_header(&h, "r.jsonl", 2.0);
        assert!(i.is_replay());
        let names: Vec<&str> = i.probes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["nat", "confirm", "window"]);
        assert!(i.probes[2].missing());
        assert_eq!(i.event_time(1000 + 1_500_000_000), "10:20:31.750");
        assert_eq!(tod_from_rfc3339("bad"), None);
    }
}
