//! The ring buffer -> its records, copied -> a bounded channel, on one thin
//! thread. The consumer decodes what it receives (which checks each record's
//! size), then symbolizes, aggregates and writes.
//! When the consumer falls behind, the queue fills to its bound and what is
//! past it is dropped here and counted (`lost_user`), the failures last; a
//! ring the reader does not drain fills and the kernel counts what it could
//! not write (`lost`). Lost events are never silent.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};
use libbpf_rs::{MapHandle, RingBufferBuilder};

use crate::abi;
use crate::event::{self, EnumNames, Event};

/// Events move through the consumer boxed: an [`Event`] is ~500 bytes, and
/// by value each of its ~9 moves (batch, hold, release, output, writer
/// queue) was a copy, a third of the consumer's time under a drop flood.
pub type Batch = Vec<Box<Event>>;

/// Kernel enum names from the running kernel's BTF.
#[derive(Clone, Default)]
pub struct BtfNames {
    drop: HashMap<u32, &'static str>,
    rst: HashMap<u32, &'static str>,
}

impl BtfNames {
    /// Read once per process (the names are leaked, to be borrowed by
    /// events), then copied.
    pub fn load() -> BtfNames {
        static NAMES: std::sync::OnceLock<BtfNames> = std::sync::OnceLock::new();
        NAMES.get_or_init(BtfNames::read).clone()
    }

    fn read() -> BtfNames {
        use libbpf_rs::btf::types::Enum;
        use libbpf_rs::btf::Btf;
        let mut n = BtfNames::default();
        let Ok(btf) = Btf::from_vmlinux() else {
            return n;
        };
        for (ty, prefix, map) in [
            ("skb_drop_reason", "SKB_DROP_REASON_", &mut n.drop),
            ("sk_rst_reason", "SK_RST_REASON_", &mut n.rst),
        ] {
            if let Some(e) = btf.type_by_name::<Enum>(ty) {
                for m in e.iter() {
                    if let Some(name) = m.name {
                        let name = name.to_string_lossy();
                        // leaked: read once per process (a few hundred
                        // names), then borrowed by every event
                        let name: &'static str = Box::leak(
                            name.strip_prefix(prefix)
                                .unwrap_or(&name)
                                .to_string()
                                .into_boxed_str(),
                        );
                        map.insert(m.value as u32, name);
                    }
                }
            }
        }
        n
    }
}

impl EnumNames for BtfNames {
    fn drop_reason(&self, v: u32) -> Option<&'static str> {
        self.drop.get(&v).copied()
    }
    fn rst_reason(&self, v: u32) -> Option<&'static str> {
        self.rst.get(&v).copied()
    }
}

/// The most events waiting for the consumer. A consumer that stalls (a
/// blocked output: `record | slow-reader`) must not cost unbounded memory:
/// past this, events are dropped here and counted (`lost_user`), never
/// silently. They wait as the ring's records (108-224 bytes, enum ct_len in
/// bpf/ctrace.h, plus a `--pcap` packet), not decoded: a full queue of
/// nf_drop records is ~15 MiB, where decoded events with their strings (~750
/// bytes each) made ~95 MiB, the peak of `bench/run mem`.
pub const MAX_QUEUED_EVENTS: u64 = 131_072;

/// Past [`MAX_QUEUED_EVENTS`], the failures themselves (insert_failed,
/// clash_resolved, tcp_invalid: [`is_failure`]) are still queued, up to this
/// many times the bound in all; only the rest is dropped. A flood of another
/// netns's nf_drop (symptoms see every netns) must not cost the traced netns
/// its insert failures: a lagging reader under such a flood lost a whole
/// wave of them, 7 of 21, all counted in `lost_user`.
pub const FAILURE_ROOM: u64 = 2;

/// A record of one of the failures ctrace exists to show, by its kind (the
/// record's head; anything short of one is not).
fn is_failure(rec: &[u8]) -> bool {
    let at = std::mem::offset_of!(abi::RawEvent, kind);
    let Some(k) = rec.get(at..at + 4) else {
        return false;
    };
    matches!(
        u32::from_ne_bytes(k.try_into().unwrap_or_default()),
        abi::kind::INSERT_FAILED | abi::kind::CLASH_RESOLVED | abi::kind::TCP_INVALID
    )
}

/// How long the reader sleeps when nothing woke it. The BPF side submits
/// without a wake-up (`ct_submit` in bpf/common.bpf.h: a wake-up is a
/// self-IPI, a VM exit under virtualization) and forces one only when a burst
/// has queued a sixteenth of the ring, at most once a millisecond per object.
/// So a lone record reaches user space at most this long after it was
/// written, plus one drain of the ring (a full 4 MiB ring, 16k records, is
/// copied in well under 5 ms): worst case under 35 ms on a machine that runs
/// the reader when it wakes. `tests/latency_host.rs` checks < 100 ms.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(25);

/// Records per batch sent from the reader thread to the consumer.
const BATCH: usize = 256;

/// Records as the ring held them, each a native-endian u32 length and its
/// bytes padded to 8: one allocation per batch, whatever the records hold.
/// Decoding happens on the consumer's side ([`Pipeline::recv_timeout`]): the
/// reader thread only copies, and no event is allocated on one thread and
/// freed on another.
struct Raw {
    bytes: Vec<u8>,
    n: usize,
}

impl Raw {
    fn new() -> Raw {
        Raw {
            bytes: Vec::with_capacity(BATCH * (abi::LEN_CONN + 8)),
            n: 0,
        }
    }

    fn new_empty() -> Raw {
        Raw {
            bytes: Vec::new(),
            n: 0,
        }
    }

    fn push(&mut self, rec: &[u8]) {
        self.bytes
            .extend_from_slice(&(rec.len() as u32).to_ne_bytes());
        self.bytes.extend_from_slice(rec);
        let pad = (8 - (rec.len() + 4) % 8) % 8;
        self.bytes.extend_from_slice(&[0u8; 8][..pad]);
        self.n += 1;
    }

    /// Only the records `keep` wants, in their order.
    fn retain(&self, keep: impl Fn(&[u8]) -> bool) -> Raw {
        let mut r = Raw::new_empty();
        for rec in self.records().filter(|rec| keep(rec)) {
            r.push(rec);
        }
        r
    }

    /// The records, in the order they were pushed.
    fn records(&self) -> impl Iterator<Item = &[u8]> {
        let mut b = &self.bytes[..];
        std::iter::from_fn(move || {
            let len = u32::from_ne_bytes(b.get(..4)?.try_into().ok()?) as usize;
            let rec = b.get(4..4 + len)?;
            let step = (4 + len).div_ceil(8) * 8;
            b = b.get(step.min(b.len())..).unwrap_or(&[]);
            Some(rec)
        })
    }
}

/// The reader thread's side of the channel.
struct Out {
    batch: Raw,
    tx: std::sync::mpsc::SyncSender<Raw>,
    lost_user: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
    /// [`MAX_QUEUED_EVENTS`], or a test's smaller bound.
    bound: u64,
    /// The consumer hung up.
    gone: bool,
}

impl Out {
    fn push(&mut self, rec: &[u8]) {
        self.batch.push(rec);
        if self.batch.n >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.n == 0 {
            return;
        }
        let mut v = std::mem::replace(&mut self.batch, Raw::new());
        // a drain that ends early sends a short batch: it waits in the
        // queue at its own size, not at a full batch's capacity (4,096
        // short batches would hold 160 MiB of room for nothing)
        if v.n < BATCH {
            v.bytes.shrink_to_fit();
        }
        let queued = self.queued.load(Ordering::Relaxed);
        if queued + v.n as u64 > self.bound {
            // over the bound: the failures stay, up to their own
            let mut kept = v.retain(is_failure);
            if queued + kept.n as u64 > self.bound * FAILURE_ROOM {
                kept = Raw::new_empty();
            }
            self.lost_user
                .fetch_add((v.n - kept.n) as u64, Ordering::Relaxed);
            v = kept;
            if v.n == 0 {
                return;
            }
        }
        let n = v.n as u64;
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.send(v).is_err() {
            self.gone = true;
        }
    }
}

pub struct Pipeline {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    rx: Receiver<Raw>,
    names: BtfNames,
    /// Records that did not decode (wrong size, unknown kind): counted as lost.
    pub bad_records: Arc<AtomicU64>,
    /// Events read but dropped because the consumer was MAX_QUEUED_EVENTS behind.
    pub lost_user: Arc<AtomicU64>,
    /// Records sent and not yet received.
    queued: Arc<AtomicU64>,
    /// Every record committed before this time (CLOCK_MONOTONIC ns, the
    /// events' clock) has been read and sent: the clock a consumer may close
    /// things by. Slower than "now" by the reader's latency, which a loaded
    /// or virtualized machine can stretch to seconds.
    caught_up_ns: Arc<AtomicU64>,
}

impl Pipeline {
    /// Polls the one ring buffer every probe writes to.
    pub fn start(ring: MapHandle, names: BtfNames) -> Result<Pipeline> {
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(AtomicU64::new(0));
        let lost_user = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicU64::new(0));
        let caught_up_ns = Arc::new(AtomicU64::new(0));
        let caught2 = caught_up_ns.clone();
        let (tx, rx) = sync_channel::<Raw>(4096);
        let stop2 = stop.clone();
        let (lost2, queued2) = (lost_user.clone(), queued.clone());
        let thread = std::thread::Builder::new()
            .name("ctrace-ringbuf".into())
            .spawn(move || -> Result<()> {
                // Batches of at most BATCH records, sent as soon as they are
                // full: a drain of a full ring is sent in pieces of one size
                // (the allocator reuses them), never grown into one buffer
                // of tens of thousands of records (a fresh mapping, faulted
                // in page by page and copied on every growth: a third of
                // the consumer's CPU at 190k events/s).
                // tests only: a smaller queue, that a flood overflows at once
                let bound = std::env::var("CTRACE_TEST_QUEUE_EVENTS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(MAX_QUEUED_EVENTS);
                let out = Rc::new(RefCell::new(Out {
                    batch: Raw::new(),
                    tx,
                    lost_user: lost2,
                    queued: queued2,
                    bound,
                    gone: false,
                }));
                let mut b = RingBufferBuilder::new();
                {
                    let out = out.clone();
                    b.add(&ring, move |data: &[u8]| {
                        out.borrow_mut().push(data);
                        0
                    })?;
                }
                let rb = b.build()?;
                let flush = || -> bool {
                    let mut o = out.borrow_mut();
                    o.flush();
                    !o.gone
                };
                // A signal that stops or traces the process (SIGSTOP/SIGCONT,
                // a debugger's attach) interrupts the poll: that is a wakeup,
                // not an end.
                let retry = |r: libbpf_rs::Result<()>| match r {
                    Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => Ok(()),
                    r => r,
                };
                // tests only: a reader that lags this long behind the ring
                // (what a loaded node or a VM does to it)
                let lag = std::env::var("CTRACE_TEST_READER_LAG_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_millis);
                while !stop2.load(Ordering::Relaxed) {
                    retry(rb.poll(POLL_TIMEOUT))?;
                    if let Some(lag) = lag {
                        std::thread::sleep(lag);
                    }
                    // the BPF side rarely wakes us (ct_submit): drain what
                    // arrived without a wake-up
                    let t = crate::sys::monotonic_ns();
                    retry(rb.consume())?;
                    if !flush() {
                        return Ok(()); // consumer gone
                    }
                    // everything committed before t is sent (an event is
                    // stamped just before it is committed: a millisecond of
                    // margin)
                    caught2.fetch_max(t.saturating_sub(1_000_000), Ordering::Release);
                }
                retry(rb.consume())?;
                flush();
                Ok(())
            })?;
        Ok(Pipeline {
            stop,
            thread: Some(thread),
            rx,
            names,
            bad_records: bad,
            lost_user,
            queued,
            caught_up_ns,
        })
    }

    /// See [`Pipeline::caught_up_ns`](struct field): read before receiving,
    /// it is a time every event before which has been received by then.
    pub fn caught_up_ns(&self) -> u64 {
        self.caught_up_ns.load(Ordering::Acquire)
    }

    /// The events of a received batch, decoded here, on the consumer's
    /// thread; a record that does not decode is counted as lost.
    fn decode(&self, raw: Raw) -> Batch {
        self.queued.fetch_sub(raw.n as u64, Ordering::Relaxed);
        let mut out = Vec::with_capacity(raw.n);
        for rec in raw.records() {
            match event::decode(rec, &self.names) {
                Ok(e) => out.push(Box::new(e)),
                Err(_) => {
                    self.bad_records.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        out
    }

    /// The next batch if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<Batch> {
        let raw = self.rx.try_recv().ok()?;
        Some(self.decode(raw))
    }

    /// The next batch, waiting at most `d`.
    pub fn recv_timeout(&self, d: Duration) -> Option<Batch> {
        let raw = self.rx.recv_timeout(d).ok()?;
        Some(self.decode(raw))
    }

    /// Stops polling after one last drain; returns what is still queued.
    pub fn finish(&mut self) -> Result<Batch> {
        self.stop.store(true, Ordering::Relaxed);
        let mut rest = Vec::new();
        if let Some(t) = self.thread.take() {
            // drain while the thread finishes, so a full channel cannot block it
            while !t.is_finished() {
                if let Some(b) = self.recv_timeout(Duration::from_millis(20)) {
                    rest.extend(b);
                }
            }
            t.join()
                .map_err(|_| anyhow!("the ring buffer thread panicked"))??;
        }
        while let Some(b) = self.try_recv() {
            rest.extend(b);
        }
        Ok(rest)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_batches_give_back_each_record_whole_and_in_order() {
        let mut r = Raw::new();
        let lens = [
            abi::LEN_PACKET,
            abi::LEN_CONN,
            abi::LEN_FULL,
            abi::LEN_FULL + 64,
            1,
            0,
        ];
        let recs: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b + i) as u8).collect())
            .collect();
        for rec in &recs {
            r.push(rec);
        }
        assert_eq!(r.n, recs.len());
        let back: Vec<&[u8]> = r.records().collect();
        assert_eq!(back.len(), recs.len());
        for (a, b) in back.iter().zip(&recs) {
            assert_eq!(*a, &b[..]);
        }
        assert_eq!(r.bytes.len() % 8, 0);
    }

    fn record(kind: u32) -> Vec<u8> {
        let raw = abi::RawEvent {
            kind,
            ..Default::default()
        };
        // SAFETY: RawEvent is Plain (src/abi.rs)
        let b = unsafe { plain::as_bytes(&raw) };
        b[..abi::LEN_PACKET].to_vec()
    }

    /// An Out whose queue already holds `queued` events, and its receiver.
    fn out_with(queued: u64) -> (Out, Receiver<Raw>) {
        let (tx, rx) = sync_channel(16);
        let out = Out {
            batch: Raw::new(),
            tx,
            lost_user: Arc::default(),
            queued: Arc::new(AtomicU64::new(queued)),
            bound: MAX_QUEUED_EVENTS,
            gone: false,
        };
        (out, rx)
    }

    #[test]
    fn over_the_bound_only_failures_are_queued_and_the_rest_is_counted() {
        let kinds = [
            abi::kind::NF_DROP,
            abi::kind::INSERT_FAILED,
            abi::kind::NAT_ALLOC,
            abi::kind::SYN_RETRANS,
            abi::kind::CLASH_RESOLVED,
            abi::kind::TCP_INVALID,
        ];
        // under the bound: everything
        let (mut out, rx) = out_with(0);
        for k in kinds {
            out.push(&record(k));
        }
        out.flush();
        assert_eq!(rx.try_recv().unwrap().n, kinds.len());
        assert_eq!(out.lost_user.load(Ordering::Relaxed), 0);
        // at the bound: the three failures, and three counted as lost
        let (mut out, rx) = out_with(MAX_QUEUED_EVENTS);
        for k in kinds {
            out.push(&record(k));
        }
        out.flush();
        let got = rx.try_recv().unwrap();
        let at = std::mem::offset_of!(abi::RawEvent, kind);
        let got: Vec<u32> = got
            .records()
            .map(|r| u32::from_ne_bytes(r[at..at + 4].try_into().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                abi::kind::INSERT_FAILED,
                abi::kind::CLASH_RESOLVED,
                abi::kind::TCP_INVALID
            ]
        );
        assert_eq!(out.lost_user.load(Ordering::Relaxed), 3);
        assert_eq!(out.queued.load(Ordering::Relaxed), MAX_QUEUED_EVENTS + 3);
        // at the failures' own bound: nothing, all counted
        let (mut out, rx) = out_with(MAX_QUEUED_EVENTS * FAILURE_ROOM);
        for k in kinds {
            out.push(&record(k));
        }
        out.flush();
        assert!(rx.try_recv().is_err());
        assert_eq!(out.lost_user.load(Ordering::Relaxed), kinds.len() as u64);
    }
}
