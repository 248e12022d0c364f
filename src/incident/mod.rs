//! Incidents: a pure correlation stage from events to stories, shared by
//! `record`, `top`, `report` and `check`. One lost SYN is an `insert_failed`,
//! an `nf_drop` and later a `syn_retrans`; one escaped segment is a
//! `tcp_invalid`, the node's `host_rst` and that RST's own INVALID verdict.
//! This stage joins them, names the connection that won the tuple the loser
//! wanted, and says how each story ended.
//!
//! How it works: events are held for [`HOLD_NS`] of event time (a delay line:
//! they leave in the order they came), so that everything a failure's story
//! needs right after it (the drop of the same packet, the failure of a racing
//! allocation) has arrived when the failure is released. Matching happens on
//! arrival, winners and closing on release or on [`Correlator::tick`].
//!
//! Kinds and how they close:
//! - `snat_race`: one losing connection (its original tuple): its insert
//!   failure(s), the dropped packet(s), the client's SYN retransmits (seen in
//!   the pod's netns) and NAT allocations of the retransmits. TCP closes
//!   `recovered` when an attempt after a failure is not followed by another
//!   failure within [`RECOVER_NS`] (`delay_ms`: first failure to that
//!   attempt, the ~1 s / 3 s the client saw), `failed` when no retransmit
//!   comes within the next SYN timeout (1 s doubled per SYN sent, plus
//!   [`SLACK_NS`]). UDP closes `lost` at once: the datagram is gone (to port
//!   53, the resolver waits for its timeout, glibc: 5 s, before retrying).
//! - `udp_clash`: a clash the kernel resolved (`clash_resolved`): `merged`.
//! - `invalid_reset`: a TCP segment from the network classified INVALID, the
//!   node's RST answering it and that RST's INVALID verdict; closes after
//!   [`QUIET_NS`] without a new event: `reset` when the node's RST was seen.
//! - Still open at the end of a recording: `unknown`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Kind, Tuple, Winner, WinnerSlot};

/// The stage's tables, keyed by tuples (and sequence numbers), looked up
/// several times per event: hashed with foldhash, seeded per process (keys
/// come from the network), instead of SipHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Events wait this long (event time) before they are released.
pub const HOLD_NS: u64 = 200_000_000;
/// An attempt after a failure that no failure follows within this recovered.
pub const RECOVER_NS: u64 = 200_000_000;
/// Added to the SYN timeout before a silent client is said to have given up.
pub const SLACK_NS: u64 = 500_000_000;
/// An invalid_reset closes after this long without a new event.
pub const QUIET_NS: u64 = 1_000_000_000;
/// Two allocations of one UDP original tuple this close are a clash (stable
/// mode sees no clash itself: the second allocation is its trace).
pub const CLASH_NS: u64 = 1_000_000_000;
/// NAT allocations remembered (by reply tuple) to name winners: 245 ms of
/// them at 100k new flows/s. Kept under half of the 65,536 buckets the two
/// tables keyed by tuple then have: entries come and go, and a hash table
/// full of removed entries rehashes in place only while at most half full;
/// above that it doubles (at 32,768 both tables grew to 131,072 buckets,
/// 19 MiB of `record`'s RSS at 1M flows).
pub const MAX_ALLOCS: usize = 24_576;
/// Incidents open at once; past this the oldest closes as `unknown`.
pub const MAX_OPEN: usize = 8_192;
/// Timeline entries kept per incident (the counts in `events` are whole).
pub const MAX_TIMELINE: usize = 16;
/// Events held at most; past this the oldest leave before their 200 ms.
pub const MAX_HELD: usize = 8_192;
/// Allocations remembered per reply tuple and per original tuple.
const PER_KEY: usize = 16;

/// Table lookups allowed per second of event time (a storm of losers whose
/// winners predate the trace must not turn into a storm of netlink requests).
pub const TABLE_LOOKUPS_PER_S: u32 = 1_000;

/// The conntrack table, asked who holds a loser's reply tuple when no NAT
/// allocation of it was seen (it predates the trace, or the nat probe is
/// off). Live faces give one (a ctnetlink GET in the traced netns); offline
/// there is none: the table of a recording's node is gone.
pub trait Table {
    /// The original tuple of the entry whose reply tuple is `reply`, in the
    /// netns `netns` (`None`: no entry holds it); `Err`: why it can't tell.
    fn holder(&mut self, netns: u32, e: &Event, reply: &Tuple) -> Result<Option<Tuple>, String>;
}

/// One line of a recording: `{"type":"incident",...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub kind: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub netns: u32,
    /// The client's original tuple (from the conntrack entry).
    pub flow: Tuple,
    /// The translated (reply) tuple, where NAT was involved.
    pub translated: Option<Tuple>,
    pub winner: Option<Winner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner_unknown: Option<String>,
    /// The workload the loser was (filled by the face that resolves them).
    pub workload: Option<serde_json::Value>,
    /// Events of the incident by kind.
    pub events: BTreeMap<String, u64>,
    pub outcome: String,
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Step>,
}

/// One event of an incident's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub ts_ns: u64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// What the stage knows of the mode the events came from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The confirm probe runs in stable mode, which sees no resolved clash:
    /// a second NAT allocation of one UDP original tuple is reported as one.
    pub synthesize_clashes: bool,
}

/// Events released (annotated, in arrival order) and incidents closed.
#[derive(Debug, Default)]
pub struct Output {
    /// Boxed: see [`crate::pipeline::Batch`].
    pub events: Vec<Box<Event>>,
    pub incidents: Vec<Incident>,
}

impl Output {
    pub fn extend(&mut self, o: Output) {
        self.events.extend(o.events);
        self.incidents.extend(o.incidents);
    }
}

#[derive(Clone, Debug)]
struct Alloc {
    orig: Tuple,
    reply: Tuple,
    cpu: u32,
    ts_ns: u64,
    failed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum IncKind {
    SnatRace,
    UdpClash,
    InvalidReset,
}

impl IncKind {
    fn name(self) -> &'static str {
        match self {
            IncKind::SnatRace => "snat_race",
            IncKind::UdpClash => "udp_clash",
            IncKind::InvalidReset => "invalid_reset",
        }
    }
}

/// An unordered pair of endpoints: both directions of one connection.
type ConnKey = ((IpAddr, u16), (IpAddr, u16));

fn conn_key(t: &Tuple) -> ConnKey {
    let a = (t.src, t.sport);
    let b = (t.dst, t.dport);
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

fn inverse(t: &Tuple) -> Tuple {
    Tuple {
        src: t.dst,
        sport: t.dport,
        dst: t.src,
        dport: t.sport,
    }
}

struct Open {
    inc: Incident,
    udp: bool,
    /// SYNs that failed (snat_race).
    failures: u32,
    last_failure_ns: u64,
    last_failure_cpu: u32,
    /// An attempt (retransmit or new allocation) after the last failure.
    attempt_ns: Option<u64>,
    last_event_ns: u64,
    host_rst: bool,
    keys: Vec<ConnKey>,
    close_at_release_of: Option<u64>,
}

struct Held {
    seq: u64,
    e: Box<Event>,
}

/// The correlation stage.
pub struct Correlator {
    cfg: Config,
    held: VecDeque<Held>,
    next_seq: u64,
    watermark: u64,
    allocs: Map<Tuple, VecDeque<Alloc>>,
    alloc_order: VecDeque<Tuple>,
    /// Recent allocations of each original tuple: (ts, reply), at most
    /// PER_KEY each (clash synthesis, merged clashes' winners).
    by_orig: Map<Tuple, VecDeque<(u64, Tuple)>>,
    /// by_orig's keys, oldest first (each once: pushed when its entry is made).
    orig_order: VecDeque<Tuple>,
    /// The latest failure on each wire tuple and CPU (its drop's match).
    fail_by_wire: Map<(Tuple, u32), (u64, u64)>,
    /// invalid_reset incidents by connection.
    invalid_by_conn: Map<ConnKey, u64>,
    /// Incidents that close when the event of this sequence number leaves.
    close_on_release: Map<u64, u64>,
    /// When each open incident is due to close, by time (lazy: an entry is
    /// checked against the incident's current deadline when it comes up).
    deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    open: BTreeMap<u64, Open>,
    /// snat_race incidents by the loser's original tuple.
    races: Map<Tuple, u64>,
    /// Recent drops not yet claimed: (translated tuple, cpu) -> (seq, ts).
    drops: Map<(Tuple, u32), (u64, u64)>,
    next_id: u64,
    closed: Vec<Incident>,
    table: Option<Box<dyn Table + Send>>,
    /// (second of event time, lookups made in it)
    table_budget: (u64, u32),
}

impl Correlator {
    pub fn new(cfg: Config) -> Correlator {
        Correlator {
            cfg,
            // its bound plus the one pushed before the bound is applied: a
            // deque left to grow doubles to 16,384 events (8 MiB)
            held: VecDeque::with_capacity(MAX_HELD + 1),
            next_seq: 0,
            watermark: 0,
            allocs: Map::default(),
            alloc_order: VecDeque::new(),
            by_orig: Map::default(),
            orig_order: VecDeque::new(),
            fail_by_wire: Map::default(),
            invalid_by_conn: Map::default(),
            close_on_release: Map::default(),
            deadlines: std::collections::BinaryHeap::new(),
            open: BTreeMap::new(),
            races: Map::default(),
            drops: Map::default(),
            next_id: 1,
            closed: Vec::new(),
            table: None,
            table_budget: (0, 0),
        }
    }

    /// Asks `table` for winners no NAT allocation names (`seen:"table"`).
    pub fn with_table(mut self, table: Box<dyn Table + Send>) -> Correlator {
        self.table = Some(table);
        self
    }

    /// Takes one event; returns what leaves the delay line.
    pub fn push(&mut self, e: impl Into<Box<Event>>) -> Output {
        let mut e = e.into();
        self.watermark = self.watermark.max(e.ts_ns);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.on_arrival(&mut e, seq);
        self.held.push_back(Held { seq, e });
        let mut out = self.release(self.watermark.saturating_sub(HOLD_NS));
        // bounded in events too: a dense stream (a replay at high speed, a
        // flood) leaves early rather than costing memory
        while self.held.len() > MAX_HELD {
            let head = self.held.front().map_or(0, |h| h.e.ts_ns);
            out.extend(self.release(head));
        }
        out
    }

    /// The clock moved on without events (a quiet ring): releases and closes
    /// by time. `now_ns` is on the events' clock (CLOCK_MONOTONIC).
    pub fn tick(&mut self, now_ns: u64) -> Output {
        self.watermark = self.watermark.max(now_ns);
        self.release(self.watermark.saturating_sub(HOLD_NS))
    }

    /// The stream ended at `end_ns` (0: unknown): everything is released;
    /// incidents whose deadline has passed close as they would have, the rest
    /// as `unknown`.
    pub fn finish(&mut self, end_ns: u64) -> Output {
        self.watermark = self.watermark.max(end_ns);
        let mut out = self.release(u64::MAX);
        let ids: Vec<u64> = self.open.keys().copied().collect();
        for id in ids {
            if let Some(o) = self.open.remove(&id) {
                self.finalize(o, "unknown", None);
            }
        }
        out.incidents.append(&mut self.closed);
        out
    }

    /// Incidents still open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn new_incident(&mut self, kind: IncKind, e: &Event, flow: Tuple) -> u64 {
        if self.open.len() >= MAX_OPEN {
            if let Some((&oldest, _)) = self.open.iter().next() {
                if let Some(o) = self.open.remove(&oldest) {
                    self.finalize(o, "unknown", None);
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let inc = Incident {
            id,
            kind: kind.name().into(),
            start_ns: e.ts_ns,
            end_ns: e.ts_ns,
            netns: e.netns,
            flow,
            translated: e.reply,
            winner: None,
            winner_unknown: None,
            workload: None,
            events: BTreeMap::new(),
            outcome: "unknown".into(),
            delay_ms: None,
            note: None,
            timeline: Vec::new(),
        };
        self.open.insert(
            id,
            Open {
                inc,
                udp: e.proto == "udp",
                failures: 0,
                last_failure_ns: e.ts_ns,
                last_failure_cpu: e.cpu,
                attempt_ns: None,
                last_event_ns: e.ts_ns,
                host_rst: false,
                keys: Vec::new(),
                close_at_release_of: None,
            },
        );
        id
    }

    fn join(&mut self, id: u64, e: &mut Event) {
        join(&mut self.open, id, e);
    }

    fn remember_alloc(&mut self, e: &Event) {
        let Some(reply) = e.reply else { return };
        let a = Alloc {
            orig: e.orig,
            reply,
            cpu: e.cpu,
            ts_ns: e.ts_ns,
            failed: false,
        };
        let q = self
            .allocs
            .entry(reply)
            .or_insert_with(|| VecDeque::with_capacity(1));
        q.push_back(a);
        if q.len() > PER_KEY {
            // a failed allocation never held the tuple, so it cannot be a
            // winner: it leaves first (a single-port SNAT node sees every
            // loser's retransmit allocate the one tuple its winner holds)
            match q.iter().position(|a| a.failed) {
                Some(i) => {
                    q.remove(i);
                }
                None => {
                    q.pop_front();
                }
            }
        }
        let orig_order = &mut self.orig_order;
        let o = self.by_orig.entry(e.orig).or_insert_with(|| {
            orig_order.push_back(e.orig);
            VecDeque::with_capacity(1)
        });
        o.push_back((e.ts_ns, reply));
        if o.len() > PER_KEY {
            o.pop_front();
        }
        // the oldest original tuples leave first: clearing them all at once
        // forgot the first allocation of a clash made just before
        while self.by_orig.len() > MAX_ALLOCS {
            match self.orig_order.pop_front() {
                Some(old) => {
                    self.by_orig.remove(&old);
                }
                None => break,
            }
        }
        self.alloc_order.push_back(reply);
        while self.alloc_order.len() > MAX_ALLOCS {
            if let Some(old) = self.alloc_order.pop_front() {
                if let Some(q) = self.allocs.get_mut(&old) {
                    q.pop_front();
                    if q.is_empty() {
                        self.allocs.remove(&old);
                    }
                }
            }
        }
    }

    /// The latest allocation of (orig, reply) at or before `ts` failed.
    fn mark_failed(&mut self, orig: &Tuple, reply: &Tuple, ts: u64) {
        if let Some(q) = self.allocs.get_mut(reply) {
            if let Some(a) = q
                .iter_mut()
                .rev()
                .find(|a| a.orig == *orig && a.ts_ns <= ts && !a.failed)
            {
                a.failed = true;
            }
        }
    }

    fn on_arrival(&mut self, e: &mut Event, seq: u64) {
        self.match_event(e, seq);
        if let Some(id) = e.incident {
            self.schedule(id);
        }
    }

    fn match_event(&mut self, e: &mut Event, seq: u64) {
        match e.kind {
            Kind::NatAlloc => {
                self.remember_alloc(e);
                if let Some(&id) = self.races.get(&e.orig) {
                    // the retransmitted SYN got a new entry: an attempt
                    self.join(id, e);
                    if let Some(o) = self.open.get_mut(&id) {
                        o.attempt_ns = Some(e.ts_ns);
                    }
                }
            }
            Kind::InsertFailed => {
                if let Some(reply) = e.reply {
                    self.mark_failed(&e.orig, &reply, e.ts_ns);
                }
                let id = match self.races.get(&e.orig) {
                    Some(&id) if self.open.contains_key(&id) => id,
                    _ => {
                        let id = self.new_incident(IncKind::SnatRace, e, e.orig);
                        self.races.insert(e.orig, id);
                        id
                    }
                };
                self.join(id, e);
                if let Some(o) = self.open.get_mut(&id) {
                    o.failures += 1;
                    o.last_failure_ns = e.ts_ns;
                    o.last_failure_cpu = e.cpu;
                    o.attempt_ns = None;
                    if o.inc.translated.is_none() {
                        o.inc.translated = e.reply;
                    }
                    if o.udp {
                        o.close_at_release_of = Some(seq);
                        self.close_on_release.insert(seq, id);
                    }
                }
                // the dropped packet, if its drop came first
                if let Some(reply) = e.reply {
                    let wire = inverse(&reply);
                    if self.fail_by_wire.len() > MAX_OPEN {
                        self.fail_by_wire.clear();
                    }
                    self.fail_by_wire.insert((wire, e.cpu), (id, e.ts_ns));
                    if let Some((dseq, dts)) = self.drops.remove(&(wire, e.cpu)) {
                        if e.ts_ns.abs_diff(dts) < 10_000_000 {
                            self.claim(dseq, id);
                        }
                    }
                }
            }
            Kind::NfDrop => {
                // the packet after NAT: its tuple is the reply tuple inverted;
                // a drop and its failure are one skb on one CPU, µs apart
                let claimed = self
                    .fail_by_wire
                    .get(&(e.orig, e.cpu))
                    .filter(|(id, ts)| {
                        self.open.contains_key(id) && e.ts_ns.abs_diff(*ts) < 10_000_000
                    })
                    .map(|(id, _)| *id);
                match claimed {
                    Some(id) => self.join(id, e),
                    None => {
                        if self.drops.len() > 4096 {
                            self.drops.clear();
                        }
                        self.drops.insert((e.orig, e.cpu), (seq, e.ts_ns));
                    }
                }
            }
            Kind::SynRetrans => {
                if let Some(&id) = self.races.get(&e.orig) {
                    if self.open.contains_key(&id) {
                        self.join(id, e);
                        if let Some(o) = self.open.get_mut(&id) {
                            o.attempt_ns = Some(e.ts_ns);
                        }
                    }
                }
            }
            Kind::ClashResolved => {
                let id = self.new_incident(IncKind::UdpClash, e, e.orig);
                self.join(id, e);
                if let Some(o) = self.open.get_mut(&id) {
                    o.close_at_release_of = Some(seq);
                    self.close_on_release.insert(seq, id);
                }
            }
            Kind::TcpInvalid => {
                let keys = event_keys(e);
                if let Some(id) = self.invalid_for(&keys) {
                    self.join(id, e);
                    return;
                }
                // the network's segment opens one; the node's own RST only joins
                let local = e.hook.as_deref() == Some("output")
                    || e.tcp.as_ref().is_some_and(|t| t.flags.contains("RST"));
                if local {
                    return;
                }
                let flow = self.pod_flow(e);
                let id = self.new_incident(IncKind::InvalidReset, e, flow.0);
                for k in &keys {
                    self.invalid_by_conn.insert(*k, id);
                }
                if let Some(o) = self.open.get_mut(&id) {
                    o.keys = keys;
                    o.inc.translated = flow.1;
                    if flow.1.is_none() {
                        o.inc.note = Some(
                            "no NAT allocation of this connection was seen: named by the segment's tuple"
                                .into(),
                        );
                    }
                }
                self.join(id, e);
            }
            Kind::HostRst => {
                let keys = event_keys(e);
                if let Some(id) = self.invalid_for(&keys) {
                    self.join(id, e);
                    if let Some(o) = self.open.get_mut(&id) {
                        o.host_rst = true;
                    }
                }
            }
            Kind::TcpIgnored | Kind::TcpLiberal => {}
        }
    }

    /// The open invalid_reset incident of one of these connections (the
    /// oldest, should two match). Looked up by connection: a scan of every
    /// open incident per segment was a fifth of the consumer's time beside
    /// a few thousand open SNAT races (`cargo bench --bench ingest`).
    fn invalid_for(&self, keys: &[ConnKey]) -> Option<u64> {
        keys.iter()
            .filter_map(|k| self.invalid_by_conn.get(k))
            .filter(|id| self.open.contains_key(id))
            .min()
            .copied()
    }

    /// The pod's original tuple of an INVALID segment: the entry's (kprobe and
    /// fentry read it), or the NAT allocation whose reply tuple the segment
    /// travels on. Returns (flow, translated).
    fn pod_flow(&self, e: &Event) -> (Tuple, Option<Tuple>) {
        if let Some(r) = e.reply {
            return (e.orig, Some(r));
        }
        for t in [e.orig, inverse(&e.orig)] {
            if let Some(a) = self.allocs.get(&t).and_then(|q| q.back()) {
                return (a.orig, Some(a.reply));
            }
        }
        (e.orig, None)
    }

    /// Gives a held event (by sequence number) to an incident.
    fn claim(&mut self, seq: u64, id: u64) {
        let head = self.held.front().map_or(seq, |h| h.seq);
        let Some(idx) = seq.checked_sub(head) else {
            return;
        };
        if let Some(h) = self.held.get_mut(idx as usize) {
            join(&mut self.open, id, &mut h.e);
        }
    }

    /// The winner of a loser's reply tuple, from the NAT allocations seen.
    fn winner_of(&mut self, e: &Event) -> (WinnerSlot, Option<String>) {
        let Some(reply) = e.reply else {
            return (
                WinnerSlot::Unknown,
                Some("the event has no reply tuple".into()),
            );
        };
        let cand = self.allocs.get(&reply).and_then(|q| {
            q.iter()
                .rev()
                .find(|a| a.orig != e.orig && !a.failed && a.ts_ns <= e.ts_ns)
        });
        match (cand, e.kind) {
            (Some(a), _) => (WinnerSlot::Known(Box::new(winner(a))), None),
            (None, Kind::ClashResolved) => {
                // a merged clash: the first allocation of the same original tuple
                let first = self
                    .by_orig
                    .get(&e.orig)
                    .and_then(|q| {
                        q.iter()
                            .filter(|(ts, _)| *ts <= e.ts_ns)
                            .min_by_key(|(ts, _)| *ts)
                    })
                    .and_then(|(ts, reply)| {
                        self.allocs
                            .get(reply)?
                            .iter()
                            .find(|a| a.orig == e.orig && a.ts_ns == *ts)
                    });
                match first {
                    Some(a) => (WinnerSlot::Known(Box::new(winner(a))), None),
                    None => (WinnerSlot::Unknown, Some("no NAT allocation of this tuple was seen (it predates the trace, or the nat probe is off)".into())),
                }
            }
            (None, _) => self.winner_in_table(e, &reply),
        }
    }

    /// No allocation names the winner: the table, if there is one, within
    /// its budget. Asked when the loser leaves the delay line (~200 ms after
    /// the loss): the winner's entry lives far longer (SYN_SENT: 120 s).
    fn winner_in_table(&mut self, e: &Event, reply: &Tuple) -> (WinnerSlot, Option<String>) {
        let unseen = "no NAT allocation of this reply tuple was seen (it predates the trace, or the nat probe is off)";
        let Some(table) = self.table.as_mut() else {
            return (WinnerSlot::Unknown, Some(unseen.into()));
        };
        let sec = e.ts_ns / 1_000_000_000;
        if self.table_budget.0 != sec {
            self.table_budget = (sec, 0);
        }
        if self.table_budget.1 >= TABLE_LOOKUPS_PER_S {
            return (
                WinnerSlot::Unknown,
                Some(format!("{unseen}; more losers this second than the {TABLE_LOOKUPS_PER_S} table lookups allowed")),
            );
        }
        self.table_budget.1 += 1;
        match table.holder(e.netns, e, reply) {
            Ok(Some(orig)) if orig != e.orig => (
                WinnerSlot::Known(Box::new(Winner {
                    orig,
                    reply: *reply,
                    cpu: None,
                    ts_ns: None,
                    seen: "table".into(),
                })),
                None,
            ),
            Ok(_) => (
                WinnerSlot::Unknown,
                Some(format!(
                    "{unseen}, and no other entry holds it in the table now (the winner is gone)"
                )),
            ),
            Err(why) => (
                WinnerSlot::Unknown,
                Some(format!("{unseen}; the table: {why}")),
            ),
        }
    }

    fn release(&mut self, upto: u64) -> Output {
        let mut out = Output::default();
        while self.held.front().is_some_and(|h| h.e.ts_ns <= upto) {
            let Some(Held { seq, mut e }) = self.held.pop_front() else {
                break;
            };
            if matches!(e.kind, Kind::InsertFailed | Kind::ClashResolved) {
                let (w, why) = self.winner_of(&e);
                if let Some(id) = e.incident {
                    if let Some(o) = self.open.get_mut(&id) {
                        if o.inc.winner.is_none() {
                            o.inc.winner = w.known().cloned();
                            o.inc.winner_unknown = why.clone();
                        }
                    }
                }
                e.winner = w;
                e.winner_unknown = why;
            }
            let synth =
                (self.cfg.synthesize_clashes && e.kind == Kind::NatAlloc && e.proto == "udp")
                    .then(|| self.clash_of(&e))
                    .flatten();
            out.events.push(e);
            if let Some(mut c) = synth {
                let cseq = self.next_seq;
                self.next_seq += 1;
                self.on_arrival(&mut c, cseq);
                let (w, why) = self.winner_of(&c);
                if let Some(id) = c.incident {
                    if let Some(o) = self.open.get_mut(&id) {
                        o.inc.winner = w.known().cloned();
                        o.inc.winner_unknown = why.clone();
                        if let Some(at) = o.close_at_release_of.take() {
                            self.close_on_release.remove(&at);
                        }
                    }
                    self.close(id, "merged", None);
                }
                c.winner = w;
                c.winner_unknown = why;
                out.events.push(Box::new(c));
            }
            if let Some(id) = self.close_on_release.remove(&seq) {
                let kind = self.open.get(&id).map(|o| o.inc.kind.clone());
                match kind.as_deref() {
                    Some("udp_clash") => self.close(id, "merged", None),
                    _ => self.close(id, "lost", None),
                }
            }
        }
        self.close_by_time();
        out.incidents.append(&mut self.closed);
        out
    }

    /// A second allocation of one UDP original tuple, close after the first,
    /// neither failed: the clash the kernel resolved (stable mode's view).
    fn clash_of(&self, e: &Event) -> Option<Event> {
        let reply = e.reply?;
        let mine = self
            .allocs
            .get(&reply)?
            .iter()
            .rev()
            .find(|a| a.orig == e.orig && a.ts_ns == e.ts_ns)?;
        if mine.failed {
            return None;
        }
        let earlier = self
            .by_orig
            .get(&e.orig)?
            .iter()
            .filter(|(ts, _)| *ts < e.ts_ns && e.ts_ns - *ts < CLASH_NS)
            .filter_map(|(ts, reply)| {
                self.allocs
                    .get(reply)?
                    .iter()
                    .find(|a| a.orig == e.orig && a.ts_ns == *ts && !a.failed)
            })
            .max_by_key(|a| a.ts_ns)?;
        let mut c = e.clone();
        c.kind = Kind::ClashResolved;
        c.reason_code = crate::abi::reason::CLASH_MERGED;
        c.reason = format!(
            "clash resolved: a second entry of this tuple was NATed {} after the first, and neither was lost (clash_resolve; seen by correlation: stable mode has no hook on the clash itself)",
            fmt_ms(e.ts_ns - earlier.ts_ns)
        )
        .into();
        c.source = "correlation".into();
        c.incident = None;
        Some(c)
    }

    /// When an open incident closes by time, with how, if nothing else comes.
    fn deadline(o: &Open) -> Option<(u64, &'static str, Option<u64>)> {
        match o.inc.kind.as_str() {
            "snat_race" if !o.udp => Some(match o.attempt_ns {
                Some(t) => (
                    t + RECOVER_NS,
                    "recovered",
                    Some((t - o.inc.start_ns + 500_000) / 1_000_000),
                ),
                None => {
                    // SYN timeout after the k-th failed SYN: 1 s, doubled per SYN
                    let rto = 1_000_000_000u64 << (o.failures.saturating_sub(1)).min(6);
                    (o.last_failure_ns + rto + SLACK_NS, "failed", None)
                }
            }),
            "invalid_reset" => Some((
                o.last_event_ns + QUIET_NS,
                if o.host_rst { "reset" } else { "unknown" },
                None,
            )),
            _ => None,
        }
    }

    /// Files an incident's current deadline (after anything that moves it).
    fn schedule(&mut self, id: u64) {
        if let Some((at, _, _)) = self.open.get(&id).and_then(Self::deadline) {
            self.deadlines.push(std::cmp::Reverse((at, id)));
        }
    }

    fn close_by_time(&mut self) {
        let now = self.watermark;
        while let Some(&std::cmp::Reverse((at, id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some((cur, outcome, delay)) = self.open.get(&id).and_then(Self::deadline) else {
                continue;
            };
            if cur <= now {
                self.close(id, outcome, delay);
            } else if cur != at {
                // moved on since: its newer entry is in the heap
                continue;
            }
        }
    }

    fn close(&mut self, id: u64, outcome: &str, delay_ms: Option<u64>) {
        if let Some(o) = self.open.remove(&id) {
            self.finalize(o, outcome, delay_ms);
        }
    }

    fn finalize(&mut self, mut o: Open, outcome: &str, delay_ms: Option<u64>) {
        if let Some(at) = o.close_at_release_of.take() {
            self.close_on_release.remove(&at);
        }
        if self.races.get(&o.inc.flow) == Some(&o.inc.id) {
            self.races.remove(&o.inc.flow);
        }
        for k in &o.keys {
            if self.invalid_by_conn.get(k) == Some(&o.inc.id) {
                self.invalid_by_conn.remove(k);
            }
        }
        o.inc.outcome = outcome.into();
        o.inc.delay_ms = delay_ms;
        if o.inc.kind == "snat_race" && o.udp && o.inc.flow.dport == 53 {
            o.inc.note = Some(
                "a DNS query lost: the resolver waits for its timeout (glibc: 5 s) before retrying"
                    .into(),
            );
        }
        self.closed.push(o.inc);
    }
}

/// Adds an event to an open incident.
fn join(open: &mut BTreeMap<u64, Open>, id: u64, e: &mut Event) {
    let Some(o) = open.get_mut(&id) else {
        return;
    };
    e.incident = Some(id);
    *o.inc.events.entry(e.kind.name().to_string()).or_default() += 1;
    o.inc.start_ns = o.inc.start_ns.min(e.ts_ns);
    o.inc.end_ns = o.inc.end_ns.max(e.ts_ns);
    o.last_event_ns = o.last_event_ns.max(e.ts_ns);
    if o.inc.timeline.len() < MAX_TIMELINE {
        o.inc.timeline.push(Step {
            ts_ns: e.ts_ns,
            kind: e.kind.name().into(),
            reason: e.reason.to_string(),
        });
    }
}

fn winner(a: &Alloc) -> Winner {
    Winner {
        orig: a.orig,
        reply: a.reply,
        cpu: Some(a.cpu),
        ts_ns: Some(a.ts_ns),
        seen: "nat".into(),
    }
}

fn event_keys(e: &Event) -> Vec<ConnKey> {
    let mut v = vec![conn_key(&e.orig)];
    if let Some(r) = e.reply {
        v.push(conn_key(&r));
    }
    v
}

fn fmt_ms(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{} ms", ns / 1_000_000)
    } else {
        format!("{} µs", ns / 1_000)
    }
}

/// Runs the stage over a whole stream (report, tests).
pub fn correlate(cfg: Config, events: impl IntoIterator<Item = Event>, end_ns: u64) -> Output {
    let mut c = Correlator::new(cfg);
    let mut out = Output::default();
    for e in events {
        out.extend(c.push(e));
    }
    out.extend(c.finish(end_ns));
    out
}

#[cfg(test)]
mod tests;
