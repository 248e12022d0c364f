//! Pure aggregation of events: counts by kind, per-CPU split, bounded top-k of
//! destinations and flows, reasons. Shared by `top`, `report` and `check`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::net::IpAddr;

use crate::event::{Event, Kind, Tuple};

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
/// `order` indexes the keys by count, so that finding the smallest is O(log cap)
/// rather than a scan of every key: under a SNAT race nearly every failure is a
/// new flow, and a scan per event made `Stats::add` cost ~4 µs (bench/RESULTS.md).
#[derive(Clone, Debug)]
pub struct TopK<K: Eq + Hash + Clone> {
    cap: usize,
    counts: HashMap<K, (u64, u64)>, // key -> (count, overestimate)
    /// (count, key) for every key in `counts`; the first is the one to evict
    /// (smallest count; ties: the largest key, for determinism).
    order: BTreeSet<(u64, Reverse<K>)>,
}

impl<K: Eq + Hash + Clone + Ord> TopK<K> {
    pub fn new(cap: usize) -> TopK<K> {
        TopK {
            cap: cap.max(1),
            counts: HashMap::with_capacity(cap),
            order: BTreeSet::new(),
        }
    }

    pub fn add(&mut self, k: K, n: u64) {
        if let Some(c) = self.counts.get_mut(&k) {
            let mut key = (c.0, Reverse(k));
            self.order.remove(&key);
            c.0 += n;
            key.0 = c.0;
            self.order.insert(key);
            return;
        }
        if self.counts.len() < self.cap {
            self.counts.insert(k.clone(), (n, 0));
            self.order.insert((n, Reverse(k)));
            return;
        }
        let Some((min, Reverse(victim))) = self.order.pop_first() else {
            return;
        };
        self.counts.remove(&victim);
        self.counts.insert(k.clone(), (min + n, min));
        self.order.insert((min + n, Reverse(k)));
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
            top_destinations: TopK::new(topk),
            top_flows: TopK::new(topk),
            remapped: 0,
            random_fully: 0,
            first_ts_ns: None,
            last_ts_ns: None,
            netns: BTreeMap::new(),
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
            let key = (e.kind, e.reason.clone());
            if self.reasons.len() < MAX_REASONS || self.reasons.contains_key(&key) {
                *self.reasons.entry(key).or_default() += 1;
            }
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

    /// The indexed eviction picks the same victim as a scan would: the smallest
    /// count, ties broken towards the largest key.
    #[test]
    fn topk_matches_a_linear_scan() {
        let mut t = TopK::new(8);
        let mut model: HashMap<u32, (u64, u64)> = HashMap::new();
        let mut x = 12345u32;
        for _ in 0..5000 {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            let k = (x >> 16) % 40;
            let n = 1 + (x % 3) as u64;
            t.add(k, n);
            if let Some(c) = model.get_mut(&k) {
                c.0 += n;
            } else if model.len() < 8 {
                model.insert(k, (n, 0));
            } else {
                let (v, (min, _)) = model
                    .iter()
                    .min_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.0.cmp(a.0)))
                    .map(|(k, v)| (*k, *v))
                    .unwrap();
                model.remove(&v);
                model.insert(k, (min + n, min));
            }
        }
        let mut want: Vec<(u32, u64, u64)> = model.iter().map(|(k, (c, e))| (*k, *c, *e)).collect();
        want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(t.top(8), want);
        assert_eq!(t.order.len(), t.counts.len());
    }
}
