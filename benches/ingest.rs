//! Ingest benchmark (issue 6): how many ring-buffer records one core decodes and
//! aggregates per second, and how much memory the aggregation keeps for 1M
//! distinct flows. `harness = false` and no framework: the figures bench/run
//! needs are a handful of rates and one RSS, and the per-stage split (decode,
//! +Stats::add, +JSON as `record` writes it) plus thread-CPU-time rates are
//! easier to get right by hand than through criterion's per-function model.
//! CPU-time rates (CLOCK_THREAD_CPUTIME_ID) are the headline: on a shared
//! machine they do not count the time this thread waited for a core.
//!
//!   cargo bench --bench ingest                 throughput, then memory
//!   cargo bench --bench ingest -- throughput [EVENTS] [REPEATS] [STAGE]
//!   cargo bench --bench ingest -- mem [FLOWS]
//!
//! Output lines start with `ingest:` and are `key=value`, for bench/run.

use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use ctrace::event::{self, NoNames, RawEvent, RAW_EVENT_SIZE};
use ctrace::incident::{Config, Correlator, Output};
use ctrace::record::Writer;
use ctrace::stats::Stats;
use ctrace::symbolize::KernelSymbols;

const POOL: usize = 4096;
/// Records per batch from the ring thread, as in the pipeline.
const BATCH: usize = 256;

fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A cheap deterministic generator (xorshift), so that runs are repeatable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn put(dst: &mut [i8], s: &[u8]) {
    for (d, c) in dst.iter_mut().zip(s) {
        *d = *c as i8;
    }
}

/// A realistic mix as a NAT node under a SNAT race produces it: mostly NAT
/// allocations, then insert failures, netfilter drops, SYN retransmits, host
/// RSTs and a few window verdicts with the kernel's own text.
fn pool() -> Vec<RawEvent> {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    (0..POOL)
        .map(|i| {
            let roll = rng.next() % 100;
            let kind = match roll {
                0..=54 => 1,  // nat_alloc
                55..=69 => 2, // insert_failed
                70..=79 => 8, // nf_drop
                80..=89 => 7, // syn_retrans
                90..=94 => 6, // host_rst
                _ => 4,       // tcp_invalid
            };
            let v6 = rng.next() % 10 == 0;
            let mut r = RawEvent {
                ts_ns: 1_000_000 + i as u64 * 1000,
                kind,
                cpu: (rng.next() % 16) as u32,
                netns: 4026532000 + (rng.next() % 4) as u32,
                family: if v6 { 6 } else { 4 },
                proto: if rng.next() % 5 == 0 { 17 } else { 6 },
                source: 1,
                hook: 4,
                ..Default::default()
            };
            if v6 {
                r.orig.src = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
                r.orig.dst = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            } else {
                r.orig.src[..4].copy_from_slice(&[10, 244, (i % 7) as u8, 2 + (i % 50) as u8]);
                r.orig.dst[..4].copy_from_slice(&[192, 0, 2, 1 + (rng.next() % 20) as u8]);
            }
            r.orig.sport = 32768 + (rng.next() % 28000) as u16;
            r.orig.dport = [80, 443, 53, 5432][(rng.next() % 4) as usize];
            match kind {
                1 | 2 => {
                    r.flags = 0x02 | 0x40 | if rng.next() % 3 == 0 { 0x04 } else { 0 };
                    r.reply.src = r.orig.dst;
                    r.reply.sport = r.orig.dport;
                    r.reply.dst[..4].copy_from_slice(&[198, 51, 100, 7]);
                    r.reply.dport = 1024 + (rng.next() % 60000) as u16;
                    r.port = r.reply.dport;
                    r.ct = 0xffff_8880_0000_0000 + rng.next() % (1 << 30);
                    if kind == 2 {
                        r.reason = 3;
                        r.drop_reason = 6;
                        r.location = 0xffff_ffff_8100_0000 + (rng.next() % 8) * 0x40;
                    }
                }
                8 => {
                    r.reason = 20;
                    r.drop_reason = 6;
                    r.tcp_flags = 0x02;
                    r.seq = rng.next() as u32;
                    r.location = 0xffff_ffff_8100_0000 + (rng.next() % 8) * 0x40;
                    r.source = 4;
                    r.hook = 0xff;
                }
                7 => {
                    r.tcp_flags = 0x02;
                    r.source = 4;
                    r.hook = 0xff;
                }
                6 => {
                    r.reason = 21;
                    r.drop_reason = 2;
                    r.tcp_flags = 0x14;
                    r.seq = rng.next() as u32;
                    r.ack = rng.next() as u32;
                    r.source = 4;
                    r.hook = 0xff;
                }
                _ => {
                    r.proto = 6;
                    r.flags = 0x20 | 0x02;
                    r.reason = 10;
                    r.bound = rng.next() as u32;
                    r.verdict = 1;
                    r.final_verdict = 1;
                    r.tcp_flags = 0x10;
                    r.seq = rng.next() as u32;
                    r.ack = rng.next() as u32;
                    r.win = 502;
                    r.td_end = rng.next() as u32;
                    r.td_maxend = rng.next() as u32;
                    r.td_maxwin = 64240;
                    put(
                        &mut r.reason_text,
                        b"SEQ is over upper bound %u (over the window of the receiver)",
                    );
                }
            }
            r
        })
        .collect()
}

fn as_bytes(r: &RawEvent) -> &[u8] {
    // SAFETY: RawEvent is a plain C struct (see event.rs); viewed as its bytes.
    unsafe { plain::as_bytes(r) }
}

/// The record for event number `i`: a pool entry whose source address and port
/// are patched from `i`, so that every event is a distinct flow (as under a
/// port-allocation race, where every loser is a new connection).
#[inline(always)]
fn record(pool: &[Vec<u8>], i: u64, buf: &mut [u8; RAW_EVENT_SIZE]) {
    buf.copy_from_slice(&pool[(i as usize) % POOL]);
    // orig.src[2..4] and orig.sport: offsets from the layout in bpf/ctrace.h
    let src = ORIG_OFF;
    buf[src + 2] = (i >> 24) as u8;
    buf[src + 3] = (i >> 16) as u8;
    buf[src + 32..src + 34].copy_from_slice(&(i as u16).to_ne_bytes());
}

/// Offset of `orig` in the record: 4 x u64 + 13 x u32 + 2 x u16 + 8 x u8.
const ORIG_OFF: usize = 32 + 52 + 4 + 8;

#[derive(Clone, Copy)]
enum Stage {
    Copy,
    Decode,
    Stats,
    Record,
    Correlate,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Copy => "copy",
            Stage::Decode => "decode",
            Stage::Stats => "decode+stats",
            Stage::Record => "decode+json",
            Stage::Correlate => "decode+correlate+json",
        }
    }
}

/// Runs `n` events through `stage`; returns (wall s, thread CPU s).
fn run(stage: Stage, pool: &[Vec<u8>], n: u64, first: u64, syms: &mut KernelSymbols) -> (f64, f64) {
    let mut buf = [0u8; RAW_EVENT_SIZE];
    let mut stats = Stats::default();
    let mut w = Writer::new(Box::new(std::io::sink()), "sink".into());
    let mut corr = Correlator::new(Config::default());
    let mut batch = Vec::with_capacity(BATCH);
    let (t0, c0) = (Instant::now(), cpu_now());
    for i in first..first + n {
        record(pool, i, &mut buf);
        match stage {
            Stage::Copy => {
                black_box(&buf);
            }
            Stage::Decode => {
                black_box(event::decode(black_box(&buf), &NoNames).unwrap());
            }
            Stage::Stats => {
                let e = event::decode(black_box(&buf), &NoNames).unwrap();
                stats.add(&e);
            }
            Stage::Record => {
                // what `ctrace record` does per event: decode (ring-buffer
                // thread), symbolize the location (cached), write one line
                let mut e = event::decode(black_box(&buf), &NoNames).unwrap();
                syms.fill(&mut e);
                w.event(&e).unwrap();
            }
            Stage::Correlate => {
                // `record`'s whole path on one thread: records decoded in
                // batches as the ring thread hands them over, held and
                // matched into incidents, symbolized, written
                batch.push(Box::new(event::decode(black_box(&buf), &NoNames).unwrap()));
                if batch.len() == BATCH || i + 1 == first + n {
                    let mut out = Output::default();
                    for e in batch.drain(..) {
                        out.extend(corr.push(e));
                    }
                    for mut e in out.events {
                        syms.fill(&mut e);
                        w.event(&e).unwrap();
                    }
                }
            }
        }
    }
    for mut e in corr.finish(u64::MAX).events {
        syms.fill(&mut e);
        w.event(&e).unwrap();
    }
    w.flush().unwrap();
    black_box(&stats);
    (t0.elapsed().as_secs_f64(), cpu_now() - c0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn throughput(n: u64, repeats: usize, only: Option<&str>) {
    let pool: Vec<Vec<u8>> = pool().iter().map(|r| as_bytes(r).to_vec()).collect();
    let stages: Vec<Stage> = [
        Stage::Copy,
        Stage::Decode,
        Stage::Stats,
        Stage::Record,
        Stage::Correlate,
    ]
    .into_iter()
    .filter(|s| only.map_or(true, |o| o == s.name()))
    .collect();
    // one symbolizer for the run, as in `record` (it loads kallsyms once)
    let mut syms = KernelSymbols::new();
    let mut cpu_rates: Vec<Vec<f64>> = vec![Vec::new(); stages.len()];
    let mut wall_rates: Vec<Vec<f64>> = vec![Vec::new(); stages.len()];
    // warm-up, then stages interleaved within each repeat
    run(Stage::Record, &pool, n / 10, 0, &mut syms);
    for rep in 0..repeats {
        for (k, s) in stages.iter().enumerate() {
            let (wall, cpu) = run(*s, &pool, n, rep as u64 * n, &mut syms);
            cpu_rates[k].push(n as f64 / cpu);
            wall_rates[k].push(n as f64 / wall);
        }
    }
    for (k, s) in stages.iter().enumerate() {
        let mut c = cpu_rates[k].clone();
        let mut w = wall_rates[k].clone();
        let best = c.iter().cloned().fold(0.0, f64::max);
        let worst = c.iter().cloned().fold(f64::MAX, f64::min);
        println!(
            "ingest: stage={} events={n} repeats={repeats} cpu_rate_median={:.0} cpu_rate_min={:.0} cpu_rate_max={:.0} wall_rate_median={:.0} ns_per_event={:.0}",
            s.name(),
            median(&mut c),
            worst,
            best,
            median(&mut w),
            1e9 / median(&mut cpu_rates[k].clone()),
        );
    }
    let _ = std::io::stdout().flush();
}

/// 1M (or `flows`) distinct flows through Stats, generated on the fly: the
/// aggregation's resident memory must stay bounded (top-k), not grow with flows.
fn mem(flows: u64) {
    let pool: Vec<Vec<u8>> = pool().iter().map(|r| as_bytes(r).to_vec()).collect();
    let mut buf = [0u8; RAW_EVENT_SIZE];
    let mut stats = Stats::default();
    let base = status_kb("VmRSS:");
    let step = (flows / 10).max(1);
    let mut samples = Vec::new();
    let c0 = cpu_now();
    for i in 0..flows {
        record(&pool, i, &mut buf);
        let e = event::decode(&buf, &NoNames).unwrap();
        stats.add(&e);
        if (i + 1) % step == 0 {
            samples.push(status_kb("VmRSS:"));
        }
    }
    let cpu = cpu_now() - c0;
    black_box(&stats);
    println!(
        "ingest: mem flows={flows} rss_before_kb={base} rss_samples_kb={} vmhwm_kb={} top_flows={} cpu_rate={:.0}",
        samples
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
        status_kb("VmHWM:"),
        stats.top_flows.len(),
        flows as f64 / cpu,
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let num = |i: usize, d: u64| -> u64 { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d) };
    match args.first().map(String::as_str) {
        Some("throughput") => throughput(
            num(1, 1_000_000),
            num(2, 5) as usize,
            args.get(3).map(String::as_str),
        ),
        Some("mem") => mem(num(1, 1_000_000)),
        None => {
            throughput(1_000_000, 5, None);
            mem(1_000_000);
        }
        Some(other) => {
            eprintln!("usage: ingest [throughput [EVENTS] [REPEATS] | mem [FLOWS]] (got {other})");
            std::process::exit(2);
        }
    }
}
