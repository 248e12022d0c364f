//! The state of `ctrace top`: what has been counted ([`Model`]), what the view
//! shows (focus, mode, filter, sort, scroll) and how messages change it. Pure:
//! no terminal, no clock, no kernel; the main loop feeds it [`Msg`]s.
//!
//! `model` holds the counts, `keys` the key table and its dispatcher, `filter`
//! the `/` filter and `rows` the tables' rows; their public items are
//! re-exported here.

mod filter;
mod keys;
mod model;
mod rows;

use ratatui::crossterm::event::KeyEventKind;

use crate::event::Event;

use super::event::Msg;

pub use filter::{Filter, Term};
pub use keys::{Action, Binding, Group, Key, Scope, KEYS};
pub use model::{
    kernel_counter, kind_index, tod_from_rfc3339, Model, Origin, ProbeLine, Series, SourceInfo,
    HISTORY_SECS, INCIDENT_CAP, REASON_KINDS, RING_CAP, TOPK, TOP_ROWS,
};
pub use rows::{CounterRow, CpuRow, TopRow};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Panel {
    Counters,
    Cpu,
    Top,
    Log,
    Incidents,
}

impl Panel {
    /// Tab's order.
    pub const ALL: [Panel; 5] = [
        Panel::Counters,
        Panel::Cpu,
        Panel::Top,
        Panel::Log,
        Panel::Incidents,
    ];
    fn index(self) -> usize {
        Panel::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    pub fn title(self) -> &'static str {
        match self {
            Panel::Counters => "Counters",
            Panel::Cpu => "Per CPU",
            Panel::Top => "Top destinations",
            Panel::Log => "Events",
            Panel::Incidents => "Incidents",
        }
    }
}

/// What the incidents panel lists: the incidents of one destination (or
/// one flow), chosen with Enter on a row of the top table; None: all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IncidentScope {
    pub dst: (std::net::IpAddr, u16),
    /// A flow's source; None: every source to `dst`.
    pub src: Option<(std::net::IpAddr, u16)>,
}

impl IncidentScope {
    pub fn matches(&self, i: &crate::incident::Incident) -> bool {
        (i.flow.dst, i.flow.dport) == self.dst
            && self.src.map_or(true, |s| (i.flow.src, i.flow.sport) == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter after `/`.
    Filter,
    /// The full record of one event (by sequence number).
    Detail(u64),
    /// The keys, the probes and the notes.
    Help,
    /// What the colours and marks mean.
    Legend,
    /// One incident's story (by incident id).
    Timeline(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopView {
    Destinations,
    Flows,
}

/// Columns of the top tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortCol {
    Count,
    Source,
    Destination,
    Port,
}

pub struct App {
    pub info: SourceInfo,
    pub live: Model,
    /// The view while paused.
    pub frozen: Option<Box<Model>>,
    pub mode: Mode,
    pub focus: Panel,
    pub filter: Filter,
    /// The filter as typed, while typing.
    pub filter_input: String,
    pub top_view: TopView,
    pub sort: SortCol,
    pub sort_desc: bool,
    /// First visible row of each panel but the log (by `Panel::index`); the
    /// top and incidents panels' first row is their selection.
    pub scroll: [usize; 5],
    /// Columns the log is scrolled to the right (←/→).
    pub log_hscroll: u16,
    /// The incidents panel lists these only (Enter on a top row).
    pub incident_scope: Option<IncidentScope>,
    /// First line shown of the help, the legend (clamped when drawn).
    pub help_scroll: u16,
    /// The selected log event; None: follow the newest.
    pub log_sel: Option<u64>,
    pub detail_scroll: u16,
    pub ring_cap: usize,
    pub quit: bool,
}

impl App {
    pub fn new(info: SourceInfo) -> App {
        App {
            info,
            live: Model::new(),
            frozen: None,
            mode: Mode::Normal,
            focus: Panel::Log,
            filter: Filter::default(),
            filter_input: String::new(),
            top_view: TopView::Destinations,
            sort: SortCol::Count,
            sort_desc: true,
            scroll: [0; 5],
            log_hscroll: 0,
            incident_scope: None,
            help_scroll: 0,
            log_sel: None,
            detail_scroll: 0,
            ring_cap: RING_CAP,
            quit: false,
        }
    }

    /// What the screen shows: the frozen copy while paused.
    pub fn view(&self) -> &Model {
        self.frozen.as_deref().unwrap_or(&self.live)
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    pub fn toggle_pause(&mut self) {
        self.frozen = match self.frozen {
            Some(_) => None,
            None => Some(Box::new(self.live.clone())),
        };
    }

    /// Applies a message; returns whether the screen should be redrawn now
    /// (keys and resizes: yes; data: at the next tick).
    pub fn update(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Key(k) => {
                if k.kind != KeyEventKind::Release {
                    self.on_key(k);
                }
                true
            }
            Msg::Resize(..) => true,
            Msg::Tick { now_ns } => {
                let rel = now_ns.saturating_sub(self.info.start_ns);
                self.live.now_ns = self.live.now_ns.max(rel);
                let sec = self.live.now_sec();
                for s in &mut self.live.series {
                    s.advance_to(sec);
                }
                true
            }
            Msg::Events(v) => {
                self.add_events(v);
                false
            }
            Msg::Incidents(v) => {
                for i in &v {
                    self.live.add_incident(i);
                }
                false
            }
            Msg::Kernel(s) => {
                self.live.kernel = Some(s);
                // the view's clock when it came: the counters say how old it is
                self.live.kernel_read_ns = Some(self.live.now_ns);
                false
            }
            Msg::Lost(n) => {
                self.live.lost = n;
                false
            }
            Msg::Node(n) => {
                self.live.node = Some(*n);
                false
            }
            Msg::SourceEnded(why) => {
                self.live.ended = Some(why);
                true
            }
        }
    }

    pub fn add_events(&mut self, v: Vec<Event>) {
        let start = self.info.start_ns;
        for e in v {
            self.live.add(e, start, self.ring_cap);
        }
    }

    /// Scrolls the focused panel; the log moves its selection.
    pub fn scroll_by(&mut self, d: i64) {
        let len = match self.focus {
            Panel::Counters => self.counter_rows().len(),
            Panel::Cpu => self.cpu_rows().len(),
            Panel::Top => self.top_rows().len(),
            Panel::Incidents => self.incident_rows().len(),
            Panel::Log => {
                self.log_move(d);
                return;
            }
        };
        let i = self.focus.index();
        let max = len.saturating_sub(1) as i64;
        self.scroll[i] = (self.scroll[i] as i64).saturating_add(d).clamp(0, max) as usize;
    }

    /// The log's events, newest first, filtered.
    pub fn log_events(&self) -> impl Iterator<Item = &(u64, Event)> {
        let f = &self.filter;
        self.view()
            .ring
            .iter()
            .rev()
            .filter(move |(_, e)| f.is_empty() || f.matches(e))
    }

    /// Position of the selection in `log_events` (0: newest).
    pub fn log_index(&self) -> usize {
        match self.log_sel {
            None => 0,
            Some(sel) => {
                let mut last = 0;
                for (i, (seq, _)) in self.log_events().enumerate() {
                    if *seq <= sel {
                        return i;
                    }
                    last = i;
                }
                last
            }
        }
    }

    fn log_move(&mut self, d: i64) {
        let seqs: Vec<u64> = self.log_events().map(|(s, _)| *s).collect();
        if seqs.is_empty() {
            self.log_sel = None;
            return;
        }
        let i = self.log_index() as i64;
        let j = i.saturating_add(d).clamp(0, seqs.len() as i64 - 1) as usize;
        self.log_sel = if j == 0 { None } else { Some(seqs[j]) };
    }

    /// The selected event's sequence number (the newest when following).
    pub fn selected_seq(&self) -> Option<u64> {
        self.log_events().nth(self.log_index()).map(|(s, _)| *s)
    }

    pub fn event_by_seq(&self, seq: u64) -> Option<&Event> {
        let ring = &self.view().ring;
        let first = ring.front()?.0;
        let (s, e) = ring.get(seq.checked_sub(first)? as usize)?;
        (*s == seq).then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::{KeyCode, KeyEvent};

    use super::*;
    use crate::event::Kind;

    pub(super) fn ev(i: u64, kind: Kind, dport: u16) -> Event {
        crate::tui::testkit::event(i, kind, 1_000 + i * 1_000_000, (i % 4) as u32, dport)
    }

    pub(super) fn info() -> SourceInfo {
        crate::tui::testkit::info(Origin::Live)
    }

    pub(super) fn key(c: char) -> Msg {
        Msg::Key(KeyEvent::from(KeyCode::Char(c)))
    }

    pub(super) fn code(c: KeyCode) -> Msg {
        Msg::Key(KeyEvent::from(c))
    }

    #[test]
    fn pause_freezes_the_view_while_counting_continues() {
        let mut app = App::new(info());
        app.update(Msg::Events(vec![ev(0, Kind::InsertFailed, 80)]));
        app.update(key('p'));
        assert!(app.paused());
        app.update(Msg::Events(vec![
            ev(1, Kind::InsertFailed, 80),
            ev(2, Kind::InsertFailed, 80),
        ]));
        app.update(Msg::Lost(5));
        assert_eq!(app.view().stats.count(Kind::InsertFailed), 1);
        assert_eq!(app.view().lost, 0);
        assert_eq!(app.live.stats.count(Kind::InsertFailed), 3);
        app.update(key('p'));
        assert!(!app.paused());
        assert_eq!(app.view().stats.count(Kind::InsertFailed), 3);
        assert_eq!(app.view().lost, 5);
    }

    #[test]
    fn ring_is_bounded_and_selection_survives_eviction() {
        let mut app = App::new(info());
        app.ring_cap = 100;
        app.update(Msg::Events(
            (0..100).map(|i| ev(i, Kind::NatAlloc, 80)).collect(),
        ));
        app.update(code(KeyCode::End));
        assert_eq!(app.selected_seq(), Some(0));
        app.update(Msg::Events(
            (100..150).map(|i| ev(i, Kind::NatAlloc, 80)).collect(),
        ));
        assert_eq!(app.live.ring.len(), 100);
        assert_eq!(app.live.stats.total, 150);
        // the selected event is gone: the oldest one left is selected
        assert_eq!(app.selected_seq(), Some(50));
    }
}
