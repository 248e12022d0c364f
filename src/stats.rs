//! Pure aggregation of events: counts by kind, per-CPU split, bounded top-k of
//! destinations and flows, reasons. Shared by `top`, `report` and `check`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;

use crate::event::{Event, Kind, Tuple, WindowLog};

/// Kinds that are failures (as opposed to normal NAT activity).
pub const FAILURES: [Kind; 5] = [
    Kind::InsertFailed,
    Kind::TcpInvalid,
    Kind::HostRst,
    Kind::SynRetrans,
    Kind::NfDrop,
];

/// A bounded heavy-hitters counter (Space-Saving): at most `cap` keys are kept;
/// a new key evicts the smallest and inherits its count as the error bound.
/// Counts are exact while fewer than `cap` distinct keys have been seen.
///
/// Eviction is amortized O(1): once full, the minimum count never decreases,
/// so one scan collects every key at the minimum and they are evicted in turn
/// (skipping those that have grown since) until none is left.
#[derive(Clone, Debug)]
pub struct TopK<K: Eq + Hash + Clone> {
    cap: usize,
    counts: HashMap<K, (u64, u64)>, // key -> (count, overestimate)
    /// Keys that had the minimum count `evict_min` at the last scan, in key
    /// order: the next victim is popped from the end (ties: the largest key).
    evict: Vec<K>,
    evict_min: u64,
}

impl<K: Eq + Hash + Clone + Ord> TopK<K> {
    pub fn new(cap: usize) -> TopK<K> {
        TopK {
            cap: cap.max(1),
            counts: HashMap::with_capacity(cap),
            evict: Vec::new(),
            evict_min: 0,
        }
    }

    pub fn add(&mut self, k: K, n: u64) {
        if let Some(c) = self.counts.get_mut(&k) {
            c.0 += n;
            return;
        }
        if self.counts.len() < self.cap {
            self.counts.insert(k, (n, 0));
            return;
        }
        // evict the smallest (ties: the largest key, for determinism)
        loop {
            let Some(victim) = self.evict.pop() else {
                let Some(min) = self.counts.values().map(|c| c.0).min() else {
                    return;
                };
                self.evict = self
                    .counts
                    .iter()
                    .filter(|(_, c)| c.0 == min)
                    .map(|(k, _)| k.clone())
                    .collect();
                self.evict.sort_unstable();
                self.evict_min = min;
                continue;
            };
            if self
                .counts
                .get(&victim)
                .is_some_and(|c| c.0 == self.evict_min)
            {
                self.counts.remove(&victim);
                let min = self.evict_min;
                self.counts.insert(k, (min + n, min));
                if n == 0 {
                    // the new key is itself at the minimum: scan again next time
                    self.evict.clear();
                }
                return;
            }
        }
    }

    /// The top `n`: (key, count, overestimate), largest first.
    pub fn top(&self, n: usize) -> Vec<(K, u64, u64)> {
        let mut v: Vec<(K, u64, u64)> = self
            .counts
            .iter()
            .map(|(k, (c, e))| (k.clone(), *c, *e))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// Aggregates of an event stream. Memory is bounded whatever the number of
/// distinct flows: maps are keyed by small domains (kind, CPU, reason text) or
/// are top-k structures.
#[derive(Clone, Debug)]
pub struct Stats {
    pub total: u64,
    pub by_kind: BTreeMap<Kind, u64>,
    /// cpu -> kind -> count
    pub per_cpu: BTreeMap<u32, BTreeMap<Kind, u64>>,
    /// (kind, reason text) -> count; bounded to MAX_REASONS distinct entries.
    pub reasons: BTreeMap<(Kind, String), u64>,
    /// Window verdicts by the bound they crossed (`Event::window_log`).
    pub window_logs: BTreeMap<(Kind, WindowLog), u64>,
    /// Failures by destination (address, port).
    pub top_destinations: TopK<(IpAddr, u16)>,
    /// Failures by original flow.
    pub top_flows: TopK<TupleKey>,
    /// NAT allocations that changed the port.
    pub remapped: u64,
    /// NAT allocations from rules with --random-fully.
    pub random_fully: u64,
    pub first_ts_ns: Option<u64>,
    pub last_ts_ns: Option<u64>,
    pub netns: BTreeMap<u32, u64>,
    /// Events whose reason (or netns) did not fit the bounded maps above:
    /// counted, so that a cap is never silent.
    pub reasons_overflow: u64,
    pub netns_overflow: u64,
}

/// A flow as an ordered key.
pub type TupleKey = (IpAddr, u16, IpAddr, u16);

pub fn tuple_key(t: &Tuple) -> TupleKey {
    (t.src, t.sport, t.dst, t.dport)
}

const MAX_REASONS: usize = 256;
const MAX_NETNS: usize = 1024;

impl Default for Stats {
    fn default() -> Self {
        Stats::new(1024)
    }
}

impl Stats {
    /// `topk`: how many destinations/flows to keep track of.
    pub fn new(topk: usize) -> Stats {
        Stats {
            total: 0,
            by_kind: BTreeMap::new(),
            per_cpu: BTreeMap::new(),
            reasons: BTreeMap::new(),
            window_logs: BTreeMap::new(),
            top_destinations: TopK::new(topk),
            top_flows: TopK::new(topk),
            remapped: 0,
            random_fully: 0,
            first_ts_ns: None,
            last_ts_ns: None,
            netns: BTreeMap::new(),
            reasons_overflow: 0,
            netns_overflow: 0,
        }
    }

    pub fn add(&mut self, e: &Event) {
        self.total += 1;
        *self.by_kind.entry(e.kind).or_default() += 1;
        *self
            .per_cpu
            .entry(e.cpu)
            .or_default()
            .entry(e.kind)
            .or_default() += 1;
        if !e.reason.is_empty() {
            let key = (e.kind, e.reason.to_string());
            if self.reasons.len() < MAX_REASONS || self.reasons.contains_key(&key) {
                *self.reasons.entry(key).or_default() += 1;
            } else {
                self.reasons_overflow += 1;
            }
        }
        if let Some(w) = window_log(e) {
            *self.window_logs.entry((e.kind, w)).or_default() += 1;
        }
        if FAILURES.contains(&e.kind) {
            self.top_destinations.add(e.destination(), 1);
            self.top_flows.add(tuple_key(&e.orig), 1);
        }
        if e.kind == Kind::NatAlloc {
            self.remapped += e.remapped as u64;
            self.random_fully += e.random_fully as u64;
        }
        if self.netns.len() < MAX_NETNS || self.netns.contains_key(&e.netns) {
            *self.netns.entry(e.netns).or_default() += 1;
        } else {
            self.netns_overflow += 1;
        }
        self.first_ts_ns = Some(self.first_ts_ns.map_or(e.ts_ns, |t| t.min(e.ts_ns)));
        self.last_ts_ns = Some(self.last_ts_ns.map_or(e.ts_ns, |t| t.max(e.ts_ns)));
    }

    pub fn count(&self, k: Kind) -> u64 {
        self.by_kind.get(&k).copied().unwrap_or(0)
    }

    pub fn cpu_count(&self, cpu: u32, k: Kind) -> u64 {
        self.per_cpu
            .get(&cpu)
            .and_then(|m| m.get(&k))
            .copied()
            .unwrap_or(0)
    }

    /// Verdicts of one kind whose bound satisfies `f`.
    pub fn window_count(&self, k: Kind, f: impl Fn(WindowLog) -> bool) -> u64 {
        self.window_logs
            .iter()
            .filter(|((kind, w), _)| *kind == k && f(*w))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Reasons of one kind, most frequent first.
    pub fn reasons_of(&self, k: Kind) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .reasons
            .iter()
            .filter(|((kind, _), _)| *kind == k)
            .map(|((_, r), n)| (r.as_str(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}

/// The bound a window verdict crossed: the event's own `window_log` (set from
/// the reason's code when it was decoded). Recordings made before events
/// carried it have only the kernel's wording: that is classified instead.
pub fn window_log(e: &Event) -> Option<WindowLog> {
    if !matches!(
        e.kind,
        Kind::TcpInvalid | Kind::TcpIgnored | Kind::TcpLiberal
    ) {
        return None;
    }
    e.window_log
        .or_else(|| crate::probe::window::reason::class_of_kernel_text(&e.reason))
}

/// Counts per kind as the recording trailer writes them.
pub fn kind_counts(s: &Stats) -> BTreeMap<String, u64> {
    s.by_kind
        .iter()
        .map(|(k, v)| (k.name().to_string(), *v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_is_exact_below_capacity_and_bounded_above() {
        let mut t = TopK::new(3);
        for (k, n) in [(1, 5), (2, 3), (3, 1)] {
            t.add(k, n);
        }
        assert_eq!(t.top(2), vec![(1, 5, 0), (2, 3, 0)]);
        t.add(1, 10_000);
        for k in 100..10_000 {
            t.add(k, 1);
        }
        assert_eq!(t.len(), 3);
        // a key above N/cap survives any flood (Space-Saving's guarantee)
        assert_eq!(t.top(1)[0].0, 1);
    }

    /// The eviction shortcut gives exactly what a full scan per eviction gives.
    #[test]
    fn topk_matches_a_full_scan_per_eviction() {
        fn naive(cap: usize, stream: &[(u32, u64)]) -> Vec<(u32, u64, u64)> {
            let mut m: HashMap<u32, (u64, u64)> = HashMap::new();
            for &(k, n) in stream {
                if let Some(c) = m.get_mut(&k) {
                    c.0 += n;
                } else if m.len() < cap {
                    m.insert(k, (n, 0));
                } else {
                    let (v, (min, _)) = m
                        .iter()
                        .min_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.0.cmp(a.0)))
                        .map(|(k, v)| (*k, *v))
                        .unwrap();
                    m.remove(&v);
                    m.insert(k, (min + n, min));
                }
            }
            let mut v: Vec<_> = m.into_iter().map(|(k, (c, e))| (k, c, e)).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            v
        }
        // a small deterministic pseudo-random stream with heavy hitters
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut stream = Vec::new();
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = if i % 3 == 0 {
                (x % 5) as u32
            } else {
                (x % 400) as u32
            };
            stream.push((k, 1 + (x >> 60) % 3 * (i % 2)));
        }
        for cap in [1, 7, 64] {
            let mut t = TopK::new(cap);
            for &(k, n) in &stream {
                t.add(k, n);
            }
            assert_eq!(t.top(cap), naive(cap, &stream), "cap {cap}");
        }
    }
}
