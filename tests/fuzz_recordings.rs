//! A fuzz harness over mutated fixture recordings, with a fixed seed (a
//! small xorshift PRNG): byte flips, truncations, duplicated and swapped
//! lines, huge numbers, deleted bytes, invalid UTF-8, deep nesting, long
//! strings. Each case runs what `report` and `top --replay` run on a file
//! (the streaming reader, the aggregation, the findings, both renderings,
//! the replay feed) in-process: errors are fine, a panic is a failure.
//! Thousands of cases; a second or two in release mode.
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use ctrace::record::Reader;
use ctrace::tui::replay::ReplayFeed;

const SEED: u64 = 0x5eed_c7ac_e202_6001;
const CASES_PER_FIXTURE: usize = 3_000;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// 0..n (n > 0)
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const HUGE: [&str; 9] = [
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "-1",
    "-9223372036854775809",
    "1e999",
    "4294967296",
    "65536",
    "0.5",
];

/// Line boundaries: the start of every line.
fn line_starts(b: &[u8]) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(
        b.iter()
            .enumerate()
            .filter(|(_, c)| **c == b'\n')
            .map(|(i, _)| i + 1)
            .filter(|&i| i < b.len()),
    );
    v
}

fn line_at(b: &[u8], rng: &mut XorShift) -> (usize, usize) {
    let starts = line_starts(b);
    let i = rng.below(starts.len());
    let s = starts[i];
    let e = starts.get(i + 1).copied().unwrap_or(b.len());
    (s, e)
}

/// The byte range of a number in `b` (after a ':'), if there is one.
fn a_number(b: &[u8], rng: &mut XorShift) -> Option<(usize, usize)> {
    let colons: Vec<usize> = b
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] == b':' && (w[1].is_ascii_digit() || w[1] == b' '))
        .map(|(i, _)| i + 1)
        .collect();
    if colons.is_empty() {
        return None;
    }
    let mut s = colons[rng.below(colons.len())];
    while s < b.len() && b[s] == b' ' {
        s += 1;
    }
    let mut e = s;
    while e < b.len() && (b[e].is_ascii_digit() || b[e] == b'-' || b[e] == b'.') {
        e += 1;
    }
    (e > s).then_some((s, e))
}

fn mutate(b: &mut Vec<u8>, rng: &mut XorShift) {
    if b.is_empty() {
        b.extend_from_slice(b"{}\n");
    }
    let len = b.len();
    match rng.below(10) {
        // flip a bit
        0 => {
            let i = rng.below(len);
            b[i] ^= 1 << rng.below(8);
        }
        // truncate (often inside a line, sometimes inside a character)
        1 => b.truncate(rng.below(len)),
        // duplicate a line (a second header, a second trailer, ...)
        2 => {
            let (s, e) = line_at(b, rng);
            let l = b[s..e].to_vec();
            let at = line_at(b, rng).1;
            b.splice(at..at, l);
        }
        // a huge (or negative, or fractional) number in place of one
        3 => {
            let h = HUGE[rng.below(HUGE.len())].as_bytes();
            match a_number(b, rng) {
                Some((s, e)) => drop(b.splice(s..e, h.iter().copied())),
                None => {
                    let i = rng.below(len);
                    b.splice(i..i, h.iter().copied());
                }
            }
        }
        // delete bytes
        4 => {
            let s = rng.below(len);
            let e = (s + 1 + rng.below(64)).min(len);
            b.drain(s..e);
        }
        // insert bytes that are not UTF-8, or half a character
        5 => {
            let junk: &[&[u8]] = &[b"\xff", b"\xe2\x80", b"\xc3", b"\x00", b"\r", b"\n"];
            let i = rng.below(len);
            b.splice(i..i, junk[rng.below(junk.len())].iter().copied());
        }
        // swap two lines
        6 => {
            let (s1, e1) = line_at(b, rng);
            let l1 = b[s1..e1].to_vec();
            b.drain(s1..e1);
            let at = if b.is_empty() { 0 } else { line_at(b, rng).0 };
            b.splice(at..at, l1);
        }
        // a value nested very deep
        7 => {
            let depth = 1 + rng.below(400);
            let mut v = "[".repeat(depth).into_bytes();
            v.extend(std::iter::repeat(b']').take(depth));
            match a_number(b, rng) {
                Some((s, e)) => drop(b.splice(s..e, v)),
                None => b.extend(v),
            }
        }
        // a long string in place of a number or inside a string
        8 => {
            let n = 1 + rng.below(200_000);
            let mut v = b"\"".to_vec();
            v.extend(std::iter::repeat(b'x').take(n));
            v.push(b'"');
            match a_number(b, rng) {
                Some((s, e)) => drop(b.splice(s..e, v)),
                None => {
                    let i = rng.below(len);
                    b.splice(i..i, v[1..v.len() - 1].iter().copied());
                }
            }
        }
        // a field's name changed: unknown kinds, types, missing fields
        _ => {
            let names: &[(&[u8], &[u8])] = &[
                (b"\"event\"", b"\"trailer\""),
                (b"\"trailer\"", b"\"header\""),
                (b"\"insert_failed\"", b"\"no_such_kind\""),
                (b"\"ipv4\"", b"\"ipv6\""),
                (b"\"ts_ns\"", b"\"ts_nz\""),
                (b"\"lost\"", b"\"lots\""),
                (b"\"kernel_counters\"", b"\"k\""),
            ];
            let (from, to) = names[rng.below(names.len())];
            if let Some(i) = b.windows(from.len()).position(|w| w == from) {
                b.splice(i..i + from.len(), to.iter().copied());
            }
        }
    }
}

/// What `report` and `top --replay` do with a file; an error is fine.
fn run_case(bytes: &[u8]) -> (bool, u64) {
    let path = Path::new("fuzz.jsonl");
    let Ok(r) = Reader::new(Cursor::new(bytes.to_vec()), path) else {
        return (false, 0);
    };
    let Ok((header, agg, summary)) = ctrace::cmd::report::aggregate(r) else {
        return (false, 0);
    };
    let d = ctrace::cmd::report::document(path, Some(&header), &agg, &summary);
    let _ = d.to_json();
    let _ = d.to_text();
    // the replay feed over the same bytes, its clock run to the end
    if let Ok(r) = Reader::new(Cursor::new(bytes.to_vec()), path) {
        let end = summary.trailer.as_ref().map(|t| t.end_mono_ns);
        let mut f = ReplayFeed::new(Box::new(r), header.start_mono_ns, end, 1e9);
        for _ in 0..64 {
            if f.done() {
                break;
            }
            f.advance(Duration::from_secs(3600));
        }
    }
    (true, summary.events)
}

#[test]
fn mutated_fixtures_never_panic_the_reader_or_the_report() {
    let mut fixtures: Vec<_> = std::fs::read_dir("tests/fixtures/recordings")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 5, "{fixtures:?}");
    let mut rng = XorShift(SEED);
    let (mut cases, mut read_ok, mut events) = (0u64, 0u64, 0u64);
    let mut panics = Vec::new();
    let t0 = Instant::now();
    // quiet: a panic is reported below with its case
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for f in &fixtures {
        let orig = std::fs::read(f).unwrap();
        for i in 0..CASES_PER_FIXTURE {
            let mut b = orig.clone();
            for _ in 0..1 + rng.below(4) {
                mutate(&mut b, &mut rng);
            }
            cases += 1;
            match catch_unwind(AssertUnwindSafe(|| run_case(&b))) {
                Ok((ok, n)) => {
                    read_ok += ok as u64;
                    events += n;
                }
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let keep = Path::new(env!("CARGO_TARGET_TMPDIR"))
                        .join(format!("fuzz-panic-{}-{i}.jsonl", panics.len()));
                    let _ = std::fs::write(&keep, &b);
                    panics.push(format!(
                        "{} case {i}: {msg} (input: {})",
                        f.display(),
                        keep.display()
                    ));
                }
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!(
        "fuzz: {cases} cases (seed {SEED:#x}) in {:.1} s: {read_ok} read through, {events} events, {} panics",
        t0.elapsed().as_secs_f64(),
        panics.len()
    );
    assert!(cases >= 5_000);
    // the mutations leave many files readable: the aggregation is exercised
    assert!(
        read_ok > cases / 10,
        "only {read_ok} of {cases} read through"
    );
    assert!(
        panics.is_empty(),
        "{} panics:\n{}",
        panics.len(),
        panics.join("\n")
    );
}
