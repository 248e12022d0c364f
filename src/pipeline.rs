//! The ring buffer -> decoded events -> a bounded channel, on one thin thread.
//! Decoding happens here (it is cheap and checks the record's size); anything
//! heavier (symbolizing, aggregation, output) happens on the consumer's side.
//! When the consumer falls behind, the channel fills, the ring buffers fill and
//! the kernel counts what it could not write: lost events are never silent.

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

use crate::event::{self, EnumNames, Event};

pub type Batch = Vec<Event>;

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

/// The most decoded events waiting for the consumer. A consumer that stalls
/// (a blocked output: `record | slow-reader`) must not cost unbounded memory:
/// past this, events are dropped here and counted (`lost_user`), never
/// silently. An event is 496 bytes and its strings ~250 more: about 95 MiB
/// when full, the peak of `bench/run mem` (issue 13's 64 MiB target is not
/// met while this bound holds events that big).
pub const MAX_QUEUED_EVENTS: u64 = 131_072;

/// How long the reader sleeps when nothing woke it. The BPF side submits
/// without a wake-up (`ct_submit` in bpf/common.bpf.h: a wake-up is a
/// self-IPI, a VM exit under virtualization) and forces one only when a burst
/// has queued a sixteenth of the ring, at most once a millisecond per object.
/// So a lone record reaches user space at most this long after it was
/// written, plus one drain of the ring (a full 4 MiB ring, 16k records, is
/// decoded in ~5 ms): worst case under 35 ms on a machine that runs the
/// reader when it wakes. `tests/latency_host.rs` checks < 100 ms.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(25);

/// Events per batch sent from the reader thread to the consumer.
const BATCH: usize = 256;

/// The reader thread's side of the channel.
struct Out {
    batch: Batch,
    tx: std::sync::mpsc::SyncSender<Batch>,
    decoded: Arc<AtomicU64>,
    lost_user: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
    /// The consumer hung up.
    gone: bool,
}

impl Out {
    fn push(&mut self, e: Event) {
        self.batch.push(e);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let v = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let n = v.len() as u64;
        self.decoded.fetch_add(n, Ordering::Relaxed);
        if self.queued.load(Ordering::Relaxed) + n > MAX_QUEUED_EVENTS {
            self.lost_user.fetch_add(n, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.send(v).is_err() {
            self.gone = true;
        }
    }
}

pub struct Pipeline {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    rx: Receiver<Batch>,
    /// Records that did not decode (wrong size, unknown kind): counted as lost.
    pub bad_records: Arc<AtomicU64>,
    pub decoded: Arc<AtomicU64>,
    /// Events decoded but dropped because the consumer was MAX_QUEUED_EVENTS behind.
    pub lost_user: Arc<AtomicU64>,
    /// Events sent and not yet received.
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
        let decoded = Arc::new(AtomicU64::new(0));
        let lost_user = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicU64::new(0));
        let caught_up_ns = Arc::new(AtomicU64::new(0));
        let caught2 = caught_up_ns.clone();
        let (tx, rx) = sync_channel::<Batch>(4096);
        let (stop2, bad2, dec2) = (stop.clone(), bad.clone(), decoded.clone());
        let (lost2, queued2) = (lost_user.clone(), queued.clone());
        let thread = std::thread::Builder::new()
            .name("ctrace-ringbuf".into())
            .spawn(move || -> Result<()> {
                // Batches of at most BATCH events, sent as soon as they are
                // full: a drain of a full ring is sent in pieces of one size
                // (the allocator reuses them), never grown into one vector
                // of tens of thousands of events (a fresh mapping, faulted
                // in page by page and copied on every growth: a third of
                // the consumer's CPU at 190k events/s).
                let out = Rc::new(RefCell::new(Out {
                    batch: Vec::with_capacity(BATCH),
                    tx,
                    decoded: dec2,
                    lost_user: lost2,
                    queued: queued2,
                    gone: false,
                }));
                let mut b = RingBufferBuilder::new();
                {
                    let out = out.clone();
                    let bad = bad2.clone();
                    let names = &names;
                    b.add(&ring, move |data: &[u8]| {
                        match event::decode(data, names) {
                            Ok(e) => out.borrow_mut().push(e),
                            Err(_) => {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
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
            bad_records: bad,
            decoded,
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

    /// The next batch if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<Batch> {
        let b = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(b.len() as u64, Ordering::Relaxed);
        Some(b)
    }

    /// The next batch, waiting at most `d`.
    pub fn recv_timeout(&self, d: Duration) -> Option<Batch> {
        let b = self.rx.recv_timeout(d).ok()?;
        self.queued.fetch_sub(b.len() as u64, Ordering::Relaxed);
        Some(b)
    }

    /// Stops polling after one last drain; returns what is still queued.
    pub fn finish(&mut self) -> Result<Vec<Event>> {
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
        rest.extend(self.rx.try_iter().flatten());
        Ok(rest)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
