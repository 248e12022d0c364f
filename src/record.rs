//! The recording format (JSON Lines): a header, one line per event, a trailer.
//! Field names are a contract with users' scripts: add fields, never rename.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::ctstat::KernelCounters;
use crate::event::Event;

/// The format version this build writes and the newest it reads.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub ctrace: String,
    pub kernel: String,
    pub hostname: String,
    pub start_wall: String,
    pub start_mono_ns: u64,
    pub netns: u32,
    /// Probe name -> chosen hook description (or why it is missing).
    pub probes: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trailer {
    pub end_wall: String,
    #[serde(default)]
    pub end_mono_ns: u64,
    pub events: BTreeMap<String, u64>,
    pub lost: u64,
    /// Events decoded but dropped in user space because the output stalled
    /// (beside `lost`, the kernel's count of records it could not write).
    /// Written when not zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_user: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_counters: Option<KernelCounters>,
    /// Why the recording ended: "duration", "signal", "error: ...".
    #[serde(default)]
    pub ended_by: String,
    /// With `ended_by: "signal"`: which one (SIGINT, SIGTERM, SIGHUP, SIGQUIT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    Header(Header),
    Event(Box<Event>),
    Trailer(Trailer),
}

/// Writes a recording line by line. Each line is flushed as a whole so that a
/// reader (or a crash) never sees half a line except at the very end.
pub struct Writer {
    out: BufWriter<Box<dyn Write + Send>>,
    name: String,
    lines: u64,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Writer> {
        let f = File::create(path).with_context(|| {
            format!(
                "cannot write the recording to {}: choose a writable path with -o",
                path.display()
            )
        })?;
        Ok(Writer::new(Box::new(f), path.display().to_string()))
    }

    pub fn stdout() -> Writer {
        Writer::new(Box::new(std::io::stdout()), "standard output".into())
    }

    pub fn new(out: Box<dyn Write + Send>, name: String) -> Writer {
        Writer {
            out: BufWriter::with_capacity(1 << 16, out),
            name,
            lines: 0,
        }
    }

    pub fn write(&mut self, line: &Line) -> Result<()> {
        serde_json::to_writer(&mut self.out, line)
            .with_context(|| format!("writing {}", self.name))?;
        self.out
            .write_all(b"\n")
            .with_context(|| format!("writing {}", self.name))?;
        self.lines += 1;
        Ok(())
    }

    pub fn event(&mut self, e: &Event) -> Result<()> {
        // Serialize the event with its "type" tag without cloning it.
        #[derive(Serialize)]
        struct Tagged<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            #[serde(flatten)]
            e: &'a Event,
        }
        serde_json::to_writer(&mut self.out, &Tagged { ty: "event", e })
            .with_context(|| format!("writing {}", self.name))?;
        self.out
            .write_all(b"\n")
            .with_context(|| format!("writing {}", self.name))?;
        self.lines += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("flushing {}", self.name))
    }
}

/// A recording read back, with what went wrong on the way.
#[derive(Debug, Default)]
pub struct Recording {
    pub header: Option<Header>,
    pub events: Vec<Event>,
    pub trailer: Option<Trailer>,
    /// Problems that did not stop the read (a truncated last line, no trailer).
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct ReadError {
    pub path: PathBuf,
    pub line: usize,
    pub msg: String,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.msg)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.msg)
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads a whole recording. A last line cut short (a recording still being
/// written, or a crash) is a warning: the complete lines before it are kept.
/// Anything else malformed is an error naming the file and line.
pub fn read(path: &Path) -> Result<Recording> {
    let err = |line: usize, msg: String| ReadError {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let f = File::open(path).map_err(|e| err(0, format!("cannot open: {e}")))?;
    read_from(BufReader::new(f), path)
}

pub fn read_from(mut r: impl BufRead, path: &Path) -> Result<Recording> {
    let err = |line: usize, msg: String| ReadError {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let mut rec = Recording::default();
    let mut buf = String::new();
    let mut n = 0;
    loop {
        buf.clear();
        let got = r
            .read_line(&mut buf)
            .map_err(|e| err(n + 1, format!("read failed: {e}")))?;
        if got == 0 {
            break;
        }
        n += 1;
        let complete = buf.ends_with('\n');
        let text = buf.trim_end();
        if text.is_empty() {
            continue;
        }
        let line: Line = match serde_json::from_str(text) {
            Ok(l) => l,
            Err(e) if !complete => {
                rec.warnings.push(format!(
                    "{}:{n}: last line is truncated ({e}); the {} complete events before it are kept",
                    path.display(),
                    rec.events.len()
                ));
                break;
            }
            Err(e) => {
                // A line we cannot parse: say whether it is JSON at all.
                let msg = match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(v) if v.get("type").is_some() => {
                        format!("not a valid {} line: {e}", v["type"])
                    }
                    Ok(_) => format!("a JSON line without a \"type\": {e}"),
                    Err(_) => format!("not JSON: {e}"),
                };
                return Err(err(n, msg).into());
            }
        };
        match line {
            Line::Header(h) => {
                if n != 1 || rec.header.is_some() {
                    return Err(err(n, "a header line after the first line".into()).into());
                }
                if h.format > FORMAT {
                    return Err(err(
                        n,
                        format!(
                            "recording format {} is newer than this ctrace reads ({FORMAT}): upgrade ctrace",
                            h.format
                        ),
                    )
                    .into());
                }
                rec.header = Some(h);
            }
            Line::Event(e) => {
                if rec.header.is_none() {
                    return Err(err(
                        n,
                        "an event before the header: not a ctrace recording".into(),
                    )
                    .into());
                }
                rec.events.push(*e);
            }
            Line::Trailer(t) => rec.trailer = Some(t),
        }
    }
    if rec.header.is_none() {
        bail!(err(
            0,
            "no header line: empty or not a ctrace recording".into()
        ));
    }
    if rec.trailer.is_none() {
        rec.warnings.push(format!(
            "{}: no trailer: the recording was cut off (kernel counters unknown)",
            path.display()
        ));
    }
    Ok(rec)
}

pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

/// UTC RFC 3339 with microseconds, from seconds since the epoch.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // civil-from-days (Howard Hinnant)
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:06}Z",
        nanos / 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header() -> String {
        r#"{"type":"header","format":1,"ctrace":"0.1.0","kernel":"6.18","hostname":"h","start_wall":"2026-01-01T00:00:00.000000Z","start_mono_ns":1,"netns":4026531840,"probes":{}}"#.into()
    }
    fn event() -> String {
        r#"{"type":"event","ts_ns":5,"kind":"insert_failed","cpu":0,"netns":1,"family":"ipv4","proto":"tcp","orig":{"src":"10.0.0.1","sport":1,"dst":"10.0.0.2","dport":80},"port":1024,"reason":"x","reason_code":3,"context":"unattributed","source":"netfilter"}"#.into()
    }

    fn parse(s: &str) -> Result<Recording> {
        read_from(Cursor::new(s.to_string()), Path::new("rec.jsonl"))
    }

    #[test]
    fn reads_a_complete_recording() {
        let t = r#"{"type":"trailer","end_wall":"x","events":{"insert_failed":1},"lost":0}"#;
        let r = parse(&format!("{}\n{}\n{}\n", header(), event(), t)).unwrap();
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.trailer.unwrap().events["insert_failed"], 1);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn truncated_last_line_keeps_the_events_before() {
        let e = event();
        let r = parse(&format!("{}\n{e}\n{e}\n{}", header(), &e[..40])).unwrap();
        assert_eq!(r.events.len(), 2);
        assert!(
            r.warnings[0].contains("rec.jsonl:4: last line is truncated"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn a_line_that_is_not_json_names_file_and_line() {
        let err = parse(&format!("{}\nhello\n", header()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("rec.jsonl:2: not JSON"), "{err}");
    }

    #[test]
    fn newer_format_is_refused() {
        let h = header().replace("\"format\":1", "\"format\":9");
        let err = parse(&format!("{h}\n")).unwrap_err().to_string();
        assert!(
            err.contains("rec.jsonl:1: recording format 9 is newer"),
            "{err}"
        );
    }

    #[test]
    fn writer_output_reads_back() {
        let mut buf = Vec::new();
        {
            struct Shared(*mut Vec<u8>);
            // SAFETY: the buffer outlives the writer, which is dropped in this scope.
            unsafe impl Send for Shared {}
            impl Write for Shared {
                fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                    // SAFETY: see above; single-threaded use.
                    unsafe { (*self.0).extend_from_slice(b) };
                    Ok(b.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            let mut w = Writer::new(Box::new(Shared(&mut buf)), "buf".into());
            let h: Line = serde_json::from_str(&header()).unwrap();
            w.write(&h).unwrap();
            let e: Line = serde_json::from_str(&event()).unwrap();
            if let Line::Event(e) = &e {
                w.event(e).unwrap();
            }
            w.write(&Line::Trailer(Trailer::default())).unwrap();
            w.flush().unwrap();
        }
        let r = read_from(Cursor::new(buf), Path::new("x")).unwrap();
        assert_eq!(r.events.len(), 1);
        assert!(r.trailer.is_some());
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_800_000_000, 5_000), "2027-01-15T08:00:00.000005Z");
    }
}
