//! The state of `ctrace top`: what has been counted ([`Model`]), what the view
//! shows (focus, mode, filter, sort, scroll) and how messages change it. Pure:
//! no terminal, no clock, no kernel; the main loop feeds it [`Msg`]s.

use std::collections::VecDeque;
use std::net::IpAddr;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::ctstat::{CpuStats, Snapshot};
use crate::event::{Event, Kind};
use crate::node::NodeState;
use crate::probe::plan::Plan;
use crate::record::Header;
use crate::stats::Stats;

use super::event::Msg;

/// Events kept for the log (the newest).
pub const RING_CAP: usize = 10_000;
/// Seconds of history per kind (rates and sparklines).
pub const HISTORY_SECS: usize = 120;
/// Destinations and flows tracked by the top-k counters.
pub const TOPK: usize = 1024;
/// Rows the top table offers (before filtering).
pub const TOP_ROWS: usize = 256;

const NS: u64 = 1_000_000_000;

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
        }
    }

    fn add(&mut self, e: Event, start_ns: u64, ring_cap: usize) {
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

/// One term of a filter; every term must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    Kinds(Vec<Kind>),
    Port(u16),
    /// A substring of an address.
    Addr(String),
}

/// The `/` filter: words separated by spaces. A kind name (or its start:
/// `tcp` means every tcp_* kind), a port number, or part of an address;
/// `kind:`, `port:` and `addr:` force the meaning.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub text: String,
    pub terms: Vec<Term>,
}

impl Filter {
    pub fn parse(text: &str) -> Filter {
        let terms = text
            .split_whitespace()
            .map(|w| {
                let kinds = |p: &str| -> Vec<Kind> {
                    match Kind::from_name(p) {
                        Some(k) => vec![k],
                        None => Kind::ALL
                            .into_iter()
                            .filter(|k| k.name().starts_with(p))
                            .collect(),
                    }
                };
                if let Some(k) = w.strip_prefix("kind:") {
                    Term::Kinds(kinds(k))
                } else if let Some(p) = w.strip_prefix("port:") {
                    p.parse().map(Term::Port).unwrap_or(Term::Kinds(vec![]))
                } else if let Some(a) = w.strip_prefix("addr:") {
                    Term::Addr(a.to_string())
                } else if let Ok(p) = w.parse::<u16>() {
                    Term::Port(p)
                } else if w.contains('.') || w.contains(':') {
                    Term::Addr(w.to_string())
                } else {
                    let k = kinds(w);
                    if k.is_empty() {
                        Term::Addr(w.to_string())
                    } else {
                        Term::Kinds(k)
                    }
                }
            })
            .collect();
        Filter {
            text: text.to_string(),
            terms,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Kinds(ks) => ks.contains(&e.kind),
            Term::Port(p) => {
                e.orig.sport == *p
                    || e.orig.dport == *p
                    || e.port == Some(*p)
                    || e.reply.is_some_and(|r| r.sport == *p || r.dport == *p)
            }
            Term::Addr(a) => {
                addr_has(&e.orig.src, a)
                    || addr_has(&e.orig.dst, a)
                    || e.reply
                        .is_some_and(|r| addr_has(&r.src, a) || addr_has(&r.dst, a))
            }
        })
    }

    /// For the top tables: address and port terms apply, kinds do not.
    pub fn matches_endpoints(&self, eps: &[(IpAddr, u16)]) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Kinds(_) => true,
            Term::Port(p) => eps.iter().any(|(_, port)| port == p),
            Term::Addr(a) => eps.iter().any(|(ip, _)| addr_has(ip, a)),
        })
    }
}

fn addr_has(ip: &IpAddr, needle: &str) -> bool {
    ip.to_string().contains(needle)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Panel {
    Counters,
    Cpu,
    Top,
    Log,
}

impl Panel {
    pub const ALL: [Panel; 4] = [Panel::Counters, Panel::Cpu, Panel::Top, Panel::Log];
    fn index(self) -> usize {
        Panel::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter after `/`.
    Filter,
    /// The full record of one event (by sequence number).
    Detail(u64),
    Help,
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

/// A row of the top tables.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRow {
    /// Flows only.
    pub src: Option<(IpAddr, u16)>,
    pub dst: (IpAddr, u16),
    pub count: u64,
    /// Space-Saving overestimate (0: exact).
    pub err: u64,
}

/// A row of the per-CPU table.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuRow {
    pub cpu: u32,
    pub insert_failed: u64,
    pub tcp_invalid: u64,
    pub kernel_insert_failed: Option<u64>,
    pub kernel_invalid: Option<u64>,
}

/// A row of the counters table: a kind, or one reason of a kind.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterRow {
    pub kind: Kind,
    /// Some: this row is a reason of `kind`.
    pub reason: Option<String>,
    pub total: u64,
    pub rate: Option<u64>,
    pub kernel: Option<(&'static str, u64)>,
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
    /// First visible row of the counters, CPU and top panels.
    pub scroll: [usize; 3],
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
            scroll: [0; 3],
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
            Msg::Kernel(s) => {
                self.live.kernel = Some(s);
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

    pub fn on_key(&mut self, k: KeyEvent) {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        match self.mode {
            Mode::Filter => match k.code {
                KeyCode::Enter => self.mode = Mode::Normal,
                KeyCode::Esc => {
                    self.filter_input.clear();
                    self.set_filter();
                    self.mode = Mode::Normal;
                }
                KeyCode::Backspace => {
                    self.filter_input.pop();
                    self.set_filter();
                }
                KeyCode::Char(c) => {
                    self.filter_input.push(c);
                    self.set_filter();
                }
                _ => {}
            },
            Mode::Help => match k.code {
                KeyCode::Char('q') => self.quit = true,
                _ => self.mode = Mode::Normal,
            },
            Mode::Detail(_) => match k.code {
                KeyCode::Char('q') => self.quit = true,
                KeyCode::Up | KeyCode::Char('k') => {
                    self.detail_scroll = self.detail_scroll.saturating_sub(1)
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    self.detail_scroll = self.detail_scroll.saturating_add(1).min(200)
                }
                KeyCode::Char('p') => self.toggle_pause(),
                _ => self.mode = Mode::Normal,
            },
            Mode::Normal => match k.code {
                KeyCode::Char('q') => self.quit = true,
                KeyCode::Char('p') => self.toggle_pause(),
                KeyCode::Char('?') => self.mode = Mode::Help,
                KeyCode::Char('/') => {
                    self.filter_input = self.filter.text.clone();
                    self.mode = Mode::Filter;
                }
                KeyCode::Esc => {
                    self.filter_input.clear();
                    self.set_filter();
                }
                KeyCode::Tab => self.focus = Panel::ALL[(self.focus.index() + 1) % 4],
                KeyCode::BackTab => self.focus = Panel::ALL[(self.focus.index() + 3) % 4],
                KeyCode::Char('s') => self.cycle_sort(),
                KeyCode::Char('S') => self.sort_desc = !self.sort_desc,
                KeyCode::Char('t') => {
                    self.top_view = match self.top_view {
                        TopView::Destinations => TopView::Flows,
                        TopView::Flows => TopView::Destinations,
                    };
                    if self.top_view == TopView::Destinations && self.sort == SortCol::Source {
                        self.sort = SortCol::Count;
                    }
                    self.scroll[2] = 0;
                }
                KeyCode::Up | KeyCode::Char('k') => self.scroll_by(-1),
                KeyCode::Down | KeyCode::Char('j') => self.scroll_by(1),
                KeyCode::PageUp => self.scroll_by(-10),
                KeyCode::PageDown => self.scroll_by(10),
                KeyCode::Home | KeyCode::Char('g') => self.scroll_by(i64::MIN / 2),
                KeyCode::End | KeyCode::Char('G') => self.scroll_by(i64::MAX / 2),
                KeyCode::Enter if self.focus == Panel::Log => {
                    if let Some(seq) = self.selected_seq() {
                        self.detail_scroll = 0;
                        self.mode = Mode::Detail(seq);
                    }
                }
                _ => {}
            },
        }
    }

    fn set_filter(&mut self) {
        self.filter = Filter::parse(&self.filter_input);
        self.scroll[2] = 0;
    }

    fn cycle_sort(&mut self) {
        let cols: &[SortCol] = match self.top_view {
            TopView::Destinations => &[SortCol::Count, SortCol::Destination, SortCol::Port],
            TopView::Flows => &[
                SortCol::Count,
                SortCol::Source,
                SortCol::Destination,
                SortCol::Port,
            ],
        };
        let i = cols.iter().position(|c| *c == self.sort).unwrap_or(0);
        self.sort = cols[(i + 1) % cols.len()];
        // counts read best largest first, addresses in order
        self.sort_desc = self.sort == SortCol::Count;
    }

    /// Scrolls the focused panel; the log moves its selection.
    pub fn scroll_by(&mut self, d: i64) {
        let len = match self.focus {
            Panel::Counters => self.counter_rows().len(),
            Panel::Cpu => self.cpu_rows().len(),
            Panel::Top => self.top_rows().len(),
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

    pub fn counter_rows(&self) -> Vec<CounterRow> {
        let m = self.view();
        let kt = m.kernel_total();
        let mut rows = Vec::new();
        for k in Kind::ALL {
            rows.push(CounterRow {
                kind: k,
                reason: None,
                total: m.stats.count(k),
                rate: Some(m.rate(Some(k))),
                kernel: kt.as_ref().and_then(|c| kernel_counter(k, c)),
            });
        }
        for k in REASON_KINDS {
            for (r, n) in m.stats.reasons_of(k) {
                rows.push(CounterRow {
                    kind: k,
                    reason: Some(r.to_string()),
                    total: n,
                    rate: None,
                    kernel: None,
                });
            }
        }
        rows
    }

    pub fn cpu_rows(&self) -> Vec<CpuRow> {
        let m = self.view();
        let mut cpus: Vec<u32> = m.stats.per_cpu.keys().copied().collect();
        if let Some(k) = &m.kernel {
            cpus.extend(
                k.per_cpu
                    .iter()
                    // u32::MAX: totals without a per-CPU split (old trailers)
                    .filter(|c| c.cpu != u32::MAX && (c.insert_failed > 0 || c.invalid > 0))
                    .map(|c| c.cpu),
            );
        }
        cpus.sort_unstable();
        cpus.dedup();
        cpus.into_iter()
            .map(|cpu| {
                let kc = m
                    .kernel
                    .as_ref()
                    .and_then(|k| k.per_cpu.iter().find(|c| c.cpu == cpu));
                CpuRow {
                    cpu,
                    insert_failed: m.stats.cpu_count(cpu, Kind::InsertFailed),
                    tcp_invalid: m.stats.cpu_count(cpu, Kind::TcpInvalid),
                    kernel_insert_failed: kc.map(|c| c.insert_failed),
                    kernel_invalid: kc.map(|c| c.invalid),
                }
            })
            .filter(|r| {
                r.insert_failed + r.tcp_invalid > 0
                    || r.kernel_insert_failed.unwrap_or(0) + r.kernel_invalid.unwrap_or(0) > 0
            })
            .collect()
    }

    /// The top table's rows: filtered, sorted by the chosen column.
    pub fn top_rows(&self) -> Vec<TopRow> {
        let m = self.view();
        let mut rows: Vec<TopRow> = match self.top_view {
            TopView::Destinations => m
                .stats
                .top_destinations
                .top(TOP_ROWS)
                .into_iter()
                .map(|(d, count, err)| TopRow {
                    src: None,
                    dst: d,
                    count,
                    err,
                })
                .collect(),
            TopView::Flows => m
                .stats
                .top_flows
                .top(TOP_ROWS)
                .into_iter()
                .map(|((s, sp, d, dp), count, err)| TopRow {
                    src: Some((s, sp)),
                    dst: (d, dp),
                    count,
                    err,
                })
                .collect(),
        };
        if !self.filter.is_empty() {
            rows.retain(|r| {
                let mut eps = vec![r.dst];
                eps.extend(r.src);
                self.filter.matches_endpoints(&eps)
            });
        }
        let sort = self.sort;
        rows.sort_by(|a, b| {
            let o = match sort {
                SortCol::Count => a.count.cmp(&b.count),
                SortCol::Source => a.src.cmp(&b.src),
                SortCol::Destination => a.dst.cmp(&b.dst),
                SortCol::Port => a.dst.1.cmp(&b.dst.1),
            };
            let o = if self.sort_desc { o.reverse() } else { o };
            // ties: most failures first, then address order
            o.then(b.count.cmp(&a.count))
                .then(a.dst.cmp(&b.dst))
                .then(a.src.cmp(&b.src))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ev(i: u64, kind: Kind, dport: u16) -> Event {
        crate::tui::testkit::event(i, kind, 1_000 + i * 1_000_000, (i % 4) as u32, dport)
    }

    fn info() -> SourceInfo {
        crate::tui::testkit::info(Origin::Live)
    }

    fn key(c: char) -> Msg {
        Msg::Key(KeyEvent::from(KeyCode::Char(c)))
    }

    fn code(c: KeyCode) -> Msg {
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
    fn filter_by_kind_port_and_address() {
        let mut app = App::new(info());
        let mut e = ev(0, Kind::TcpInvalid, 443);
        e.orig.src = "10.1.2.3".parse().unwrap();
        app.update(Msg::Events(vec![
            ev(1, Kind::InsertFailed, 80),
            e,
            ev(2, Kind::NatAlloc, 53),
        ]));
        let shown = |app: &App| -> Vec<Kind> { app.log_events().map(|(_, e)| e.kind).collect() };
        assert_eq!(shown(&app).len(), 3);
        app.update(key('/'));
        for c in "tcp".chars() {
            app.update(key(c));
        }
        assert_eq!(shown(&app), vec![Kind::TcpInvalid]);
        // typing on: "tcp 80" matches nothing (both must hold)
        for c in " 80".chars() {
            app.update(key(c));
        }
        assert!(shown(&app).is_empty());
        app.update(code(KeyCode::Enter));
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(app.filter.text, "tcp 80");
        app.filter = Filter::parse("10.1.2");
        assert_eq!(shown(&app), vec![Kind::TcpInvalid]);
        app.filter = Filter::parse("port:53");
        assert_eq!(shown(&app), vec![Kind::NatAlloc]);
        app.filter = Filter::parse("insert_failed");
        assert_eq!(shown(&app), vec![Kind::InsertFailed]);
        // Esc clears
        app.update(code(KeyCode::Esc));
        assert_eq!(shown(&app).len(), 3);
        // the top table keeps the endpoints that match
        app.filter = Filter::parse("443");
        let rows = app.top_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].dst.1, 443);
    }

    #[test]
    fn sort_by_columns_and_reverse() {
        let mut app = App::new(info());
        let mut v = Vec::new();
        for (i, (port, n)) in [(80u16, 3u64), (53, 5), (443, 1)].iter().enumerate() {
            for j in 0..*n {
                v.push(ev(i as u64 * 10 + j, Kind::InsertFailed, *port));
            }
        }
        app.update(Msg::Events(v));
        let ports = |app: &App| -> Vec<u16> { app.top_rows().iter().map(|r| r.dst.1).collect() };
        assert_eq!(ports(&app), vec![53, 80, 443]); // most failures first
        app.update(key('S'));
        assert_eq!(ports(&app), vec![443, 80, 53]);
        app.update(key('s')); // destination, ascending
        assert_eq!(app.sort, SortCol::Destination);
        app.update(key('s')); // port, ascending
        assert_eq!(app.sort, SortCol::Port);
        assert_eq!(ports(&app), vec![53, 80, 443]);
        app.update(key('S'));
        assert_eq!(ports(&app), vec![443, 80, 53]);
        app.update(key('s'));
        assert_eq!(app.sort, SortCol::Count);
        // flows have a source column
        app.update(key('t'));
        app.update(key('s'));
        assert_eq!(app.sort, SortCol::Source);
    }

    #[test]
    fn log_scroll_is_bounded_and_follows_newest_at_the_top() {
        let mut app = App::new(info());
        app.update(Msg::Events(
            (0..5).map(|i| ev(i, Kind::NatAlloc, 80)).collect(),
        ));
        assert_eq!(app.focus, Panel::Log);
        assert_eq!(app.selected_seq(), Some(4));
        app.update(code(KeyCode::Up));
        assert_eq!(app.log_sel, None);
        app.update(code(KeyCode::Down));
        app.update(code(KeyCode::Down));
        assert_eq!(app.selected_seq(), Some(2));
        // new events do not move the selection
        app.update(Msg::Events(vec![ev(5, Kind::NatAlloc, 80)]));
        assert_eq!(app.selected_seq(), Some(2));
        app.update(code(KeyCode::PageDown));
        assert_eq!(app.selected_seq(), Some(0));
        app.update(code(KeyCode::Down));
        assert_eq!(app.selected_seq(), Some(0));
        app.update(code(KeyCode::Home));
        assert_eq!(app.log_sel, None);
        assert_eq!(app.selected_seq(), Some(5));
        app.update(code(KeyCode::Enter));
        assert_eq!(app.mode, Mode::Detail(5));
        assert_eq!(
            app.event_by_seq(5).unwrap().ts_ns,
            ev(5, Kind::NatAlloc, 80).ts_ns
        );
        app.update(code(KeyCode::Esc));
        assert_eq!(app.mode, Mode::Normal);
        // other panels clamp their scroll to their rows
        app.update(code(KeyCode::Tab));
        assert_eq!(app.focus, Panel::Counters);
        app.update(code(KeyCode::End));
        assert_eq!(app.scroll[0], app.counter_rows().len() - 1);
        app.update(code(KeyCode::PageUp));
        app.update(code(KeyCode::PageUp));
        assert_eq!(app.scroll[0], 0);
        app.update(code(KeyCode::Up));
        assert_eq!(app.scroll[0], 0);
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
    fn kernel_counters_and_cpu_rows() {
        let mut app = App::new(info());
        app.update(Msg::Events(vec![
            ev(1, Kind::InsertFailed, 80),
            ev(2, Kind::TcpInvalid, 80),
        ]));
        app.update(Msg::Kernel(Snapshot {
            per_cpu: vec![
                CpuStats {
                    cpu: 1,
                    insert_failed: 4,
                    ..Default::default()
                },
                CpuStats {
                    cpu: 7,
                    invalid: 9,
                    ..Default::default()
                },
            ],
        }));
        let rows = app.cpu_rows();
        assert_eq!(
            rows.iter().map(|r| r.cpu).collect::<Vec<_>>(),
            vec![1, 2, 7]
        );
        assert_eq!(rows[0].insert_failed, 1);
        assert_eq!(rows[0].kernel_insert_failed, Some(4));
        assert_eq!(rows[2].kernel_invalid, Some(9));
        let c = app.counter_rows();
        let ins = c.iter().find(|r| r.kind == Kind::InsertFailed).unwrap();
        assert_eq!(ins.kernel, Some(("insert_failed", 4)));
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
