//! A tracing session: the engine that every interface (record, top, check)
//! drives. It enters the requested netns, resolves and attaches the probes,
//! streams decoded events, and reads the kernel's own counters for comparison.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ctstat::{CtNetlink, Snapshot};
use crate::event::{Event, Tuple};
use crate::incident::{self, Correlator};
use crate::pipeline::{Batch, BtfNames, Pipeline};
use crate::probe::load::{self, Config, Loaded, Shared};
use crate::probe::plan::Plan;
use crate::probe::{features::Features, Mode, Probe};
use crate::record::Header;

/// The most events [`Session::next_output`] takes in one call (about: whole
/// batches).
pub const MAX_OUTPUT_EVENTS: usize = 4096;

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub mode: Mode,
    pub netns: Option<String>,
    pub all_netns: bool,
    /// Symptoms of the traced netns only (default: every netns).
    pub symptoms_here: bool,
    pub ringbuf_mb: u32,
    /// A lab's node, traced before its traffic starts: an empty table is
    /// expected there, not worth a note.
    pub lab: bool,
    /// Packet bytes each offending event carries (`--pcap`); 0: none.
    pub snaplen: u32,
}

/// What is left when a session ends.
pub struct Finish {
    /// Events still queued when tracing stopped.
    pub remaining: Batch,
    /// Kernel counters over the session (per CPU).
    pub counters: Option<Snapshot>,
    pub lost: u64,
    /// Of `lost`, records of the failure kinds: 0 means every insert
    /// failure, clash and INVALID segment the kernel reported is here.
    pub lost_failures: u64,
    /// Events dropped in user space because the consumer stalled.
    pub lost_user: u64,
    /// Program runs the kernel skipped (nested in themselves), by program.
    pub missed: BTreeMap<String, u64>,
    /// The same, of programs whose twin took those runs: nothing missing.
    pub missed_covered: BTreeMap<String, u64>,
}

pub struct Session {
    pub plan: Plan,
    pub features: Features,
    pub netns: u32,
    pub kernel: String,
    pub hostname: String,
    pub start_mono_ns: u64,
    pub start_wall: String,
    /// From the start of `start` to every probe attached.
    pub attach_time: Duration,
    /// Notes from attaching: degradations the user should know about.
    pub notes: Vec<String>,
    probes: Vec<Loaded>,
    shared: Shared,
    pipeline: Pipeline,
    ct: Option<CtNetlink>,
    baseline: Option<Snapshot>,
}

impl Session {
    pub fn start(cfg: &SessionConfig) -> Result<Session> {
        let t0 = Instant::now();
        crate::sys::require_tracing_privileges()?;
        crate::sys::require_btf()?;
        if cfg.ringbuf_mb == 0 || !cfg.ringbuf_mb.is_power_of_two() || cfg.ringbuf_mb > 1024 {
            bail!(
                "--ringbuf-mb {} must be a power of two between 1 and 1024",
                cfg.ringbuf_mb
            );
        }
        let netns = match &cfg.netns {
            Some(spec) => crate::netns::enter(spec)?,
            None => crate::netns::current_inode()?,
        };
        // probes on module functions need the modules
        crate::sys::modprobe("nf_conntrack");
        crate::sys::modprobe("nf_nat");
        let mut ct = CtNetlink::open()?;
        let baseline = ct.per_cpu().with_context(|| {
            "conntrack is not active in this network namespace: nothing to trace (load nf_conntrack, or pick the netns that does NAT with --netns)"
        })?;
        let lcfg = Config {
            filter_netns: if cfg.all_netns { 0 } else { netns },
            symptoms_netns: if cfg.symptoms_here { netns } else { 0 },
            ringbuf_bytes: cfg.ringbuf_mb << 20,
            snaplen: cfg.snaplen,
        };
        let shared = Shared::create(lcfg.ringbuf_bytes)?;
        let (plan, features, kept) = load::resolve_by_trying_kept(cfg.mode, &lcfg, &shared);
        let conntrack_probes = [Probe::Nat, Probe::Confirm, Probe::Window];
        if conntrack_probes
            .iter()
            .all(|p| plan.get(*p).and_then(|x| x.chosen).is_none())
        {
            bail!(
                "no conntrack probe can attach on this kernel in --mode {}:\n{}",
                cfg.mode.name(),
                plan.render()
            );
        }
        // Resolving loads programs and can take a second: the kernel's
        // counters are read again just before attaching, so that failures in
        // between are not counted as ones ctrace missed.
        let baseline = ct.per_cpu().unwrap_or(baseline);
        // The session starts before the first program is attached: no event
        // can be stamped before the header's start_mono_ns.
        let start_mono_ns = crate::sys::monotonic_ns();
        let start_wall = crate::record::now_rfc3339();
        // The reader runs before the first program is attached: a flood that
        // starts with the attach (another netns's drops, every probe on at
        // last) would otherwise fill the ring before anyone reads it.
        let ring = libbpf_rs::MapHandle::try_from(&shared.events)
            .context("duplicating the ring buffer handle")?;
        let pipeline = Pipeline::start(ring, BtfNames::load())?;
        let probes = load::attach_plan_kept(&plan, &lcfg, &shared, kept)?;
        let mut notes: Vec<String> = probes.iter().flat_map(|p| p.notes.clone()).collect();
        let t = baseline.total();
        if !cfg.lab
            && t.found + t.invalid + t.insert_failed + t.drop + t.clash_resolve == 0
            && ct.table_fill().map(|(n, _)| n).unwrap_or(0) == 0
        {
            notes.push(format!(
                "conntrack has tracked nothing in netns {netns} yet: if no NAT or conntrack rule lives here, there is nothing to see (choose the NAT netns with --netns)"
            ));
        }
        for pp in &plan.probes {
            if pp.chosen.is_none() {
                notes.push(format!(
                    "probe {} is not available: {}",
                    pp.probe.name(),
                    pp.rejected
                        .last()
                        .map(|r| r.why.as_str())
                        .unwrap_or("no candidate")
                ));
            }
        }
        Ok(Session {
            plan,
            features,
            netns,
            kernel: crate::sys::kernel_release(),
            hostname: crate::sys::hostname(),
            start_mono_ns,
            start_wall,
            attach_time: t0.elapsed(),
            notes,
            probes,
            shared,
            pipeline,
            ct: Some(ct),
            baseline: Some(baseline),
        })
    }

    /// The correlation stage for this session's events: clashes synthesized
    /// where the stable confirm hook cannot see them itself, and winners no
    /// NAT allocation names asked of this netns's conntrack table.
    pub fn correlator(&self) -> Correlator {
        let stable_confirm = self.plan.get(Probe::Confirm).and_then(|p| p.chosen)
            == Some(crate::probe::Flavour::Stable);
        let corr = Correlator::new(incident::Config {
            synthesize_clashes: stable_confirm,
        });
        // a socket opens in the netns of the thread that opens it
        let here = crate::netns::current_inode().ok() == Some(self.netns);
        match CtNetlink::open() {
            Ok(ct) if here => corr.with_table(Box::new(CtTable {
                netns: self.netns,
                ct,
            })),
            _ => corr,
        }
    }

    /// The next events (waiting at most `d` for the first), through the
    /// correlation stage; then the stage's clock moves on to the time up to
    /// which every event has been read, never to "now": a reader that lags
    /// (a loaded node, a VM) must not close an incident whose next event is
    /// still in the ring.
    ///
    /// At most about [`MAX_OUTPUT_EVENTS`] events are taken per call, in
    /// batches, so that a consumer that fell behind works through its backlog
    /// in pieces of one size instead of gathering all of it first. Until the
    /// queue is empty the clock does not move: events still queued may be
    /// older than `upto`.
    pub fn next_output(&self, corr: &mut Correlator, d: Duration) -> incident::Output {
        let upto = self.pipeline.caught_up_ns();
        let mut out = incident::Output::default();
        let mut taken = 0;
        let mut next = self.pipeline.recv_timeout(d);
        let mut drained = next.is_none();
        while let Some(b) = next.take() {
            taken += b.len();
            for e in b {
                out.extend(corr.push(e));
            }
            if taken >= MAX_OUTPUT_EVENTS {
                break;
            }
            next = self.pipeline.try_recv();
            drained = next.is_none();
        }
        if drained {
            out.extend(corr.tick(upto));
        }
        out
    }

    /// Batches of decoded events, in arrival order per ring buffer.
    pub fn recv_timeout(&self, d: Duration) -> Option<Batch> {
        self.pipeline.recv_timeout(d)
    }

    /// Records the kernel could not write (ring buffer full) plus records that
    /// did not decode.
    pub fn lost(&self) -> u64 {
        self.shared.lost()
            + self
                .pipeline
                .bad_records
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Of [`Session::lost`], the records of the failure kinds the kernel
    /// could not write (the ring keeps its last quarter for them).
    pub fn lost_failures(&self) -> u64 {
        self.shared.lost_failures()
    }

    /// Events decoded but dropped in user space: the consumer (an output that
    /// blocks) fell `pipeline::MAX_QUEUED_EVENTS` behind.
    pub fn lost_user(&self) -> u64 {
        self.pipeline
            .lost_user
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Program runs the kernel skipped since load, by program (see
    /// [`Loaded::missed`]): those that may be missing events, and those
    /// whose twin took the runs.
    pub fn missed(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let (mut bare, mut covered) = (BTreeMap::new(), BTreeMap::new());
        for (name, n, c) in self.probes.iter().flat_map(|p| p.missed()) {
            if c { &mut covered } else { &mut bare }.insert(name, n);
        }
        (bare, covered)
    }

    /// The kernel's conntrack counters since the session started, per CPU.
    pub fn counters(&mut self) -> Result<Snapshot> {
        let (Some(ct), Some(base)) = (self.ct.as_mut(), self.baseline.as_ref()) else {
            bail!("no ctnetlink socket");
        };
        Ok(ct.per_cpu()?.delta(base))
    }

    /// The kernel's conntrack counters now, absolute (what `conntrack -S`
    /// prints), per CPU.
    pub fn counters_now(&mut self) -> Result<Snapshot> {
        match self.ct.as_mut() {
            Some(ct) => ct.per_cpu(),
            None => bail!("no ctnetlink socket"),
        }
    }

    /// Entries and maximum of the conntrack table.
    pub fn table_fill(&mut self) -> Result<(u64, u64)> {
        match self.ct.as_mut() {
            Some(ct) => ct.table_fill(),
            None => bail!("no ctnetlink socket"),
        }
    }

    pub fn header(&self) -> Header {
        let probes = self
            .plan
            .probes
            .iter()
            .map(|p| {
                // the netfilter slots actually taken (another BPF hook may
                // hold the preferred priority)
                let attached: Vec<serde_json::Value> = self
                    .probes
                    .iter()
                    .filter(|l| l.probe == p.probe)
                    .flat_map(|l| l.nf_attached.iter())
                    .map(|(prog, pf, hook, prio)| {
                        serde_json::json!({
                            "program": prog,
                            "family": if *pf == libbpf_rs::NFPROTO_IPV6 { "ipv6" } else { "ipv4" },
                            "hook": crate::event::hook_name(*hook as u8),
                            "priority": prio,
                        })
                    })
                    .collect();
                let mut v = serde_json::json!({
                    "mode": p.chosen.map(|f| f.name()),
                    "hooks": p.hooks,
                    "notes": p.notes,
                });
                if !attached.is_empty() {
                    v["netfilter"] = serde_json::Value::Array(attached);
                }
                (p.probe.name().to_string(), v)
            })
            .collect();
        Header {
            format: crate::record::FORMAT,
            ctrace: env!("CARGO_PKG_VERSION").into(),
            kernel: self.kernel.clone(),
            hostname: self.hostname.clone(),
            start_wall: self.start_wall.clone(),
            start_mono_ns: self.start_mono_ns,
            netns: self.netns,
            probes,
            mode: Some(self.plan.mode.name().into()),
        }
    }

    /// Detaches every probe, reads the counters and drains what is queued.
    /// The counters are read as soon as the last link is gone (detaching
    /// takes ~25 ms for 19 links here), not after the drain: a failure the
    /// kernel counts while the queue drains is one no program saw.
    pub fn finish(mut self) -> Result<Finish> {
        for p in &mut self.probes {
            p.links.clear();
        }
        let counters = self.counters().ok();
        let remaining = self.pipeline.finish()?;
        let lost = self.lost();
        let lost_failures = self.lost_failures();
        let lost_user = self.lost_user();
        let (missed, missed_covered) = self.missed();
        Ok(Finish {
            remaining,
            counters,
            lost,
            lost_failures,
            lost_user,
            missed,
            missed_covered,
        })
    }
}

/// The traced netns's conntrack table, asked who holds a reply tuple (a
/// socket of its own: the session's is read on its own schedule).
struct CtTable {
    netns: u32,
    ct: CtNetlink,
}

impl incident::Table for CtTable {
    fn holder(
        &mut self,
        netns: u32,
        e: &Event,
        reply: &Tuple,
    ) -> std::result::Result<Option<Tuple>, String> {
        if netns != self.netns {
            return Err(format!(
                "the loser is in netns {netns}, ctrace reads the table of netns {}",
                self.netns
            ));
        }
        let proto = match e.proto.as_ref() {
            "tcp" => libc::IPPROTO_TCP,
            "udp" => libc::IPPROTO_UDP,
            p => return Err(format!("no table lookup for protocol {p}")),
        };
        self.ct
            .holder_of_reply(proto as u8, reply)
            .map_err(|e| format!("{e:#}"))
    }
}
