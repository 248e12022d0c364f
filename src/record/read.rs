//! Reading a recording back as a stream, with bounded memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{Header, Line, Trailer, FORMAT};
use crate::event::Event;

/// The longest line a reader accepts (newline included). A recorded event is
/// a few hundred bytes: anything near this is not a ctrace recording, and a
/// reader must never buffer an unbounded line (`/dev/zero` has no newline).
pub const MAX_LINE: usize = 16 << 20;

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

/// What a [`Reader`] learnt once the events are read: the trailer (merged
/// when there are several: the largest `lost` wins), and the problems that
/// did not stop the read.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub trailer: Option<Trailer>,
    /// Events read (after the trailer included).
    pub events: u64,
    pub warnings: Vec<String>,
}

/// One line of a recording, as the reader met it.
#[allow(clippy::large_enum_variant)] // one at a time, on the stack
enum Got {
    Line(Line),
    /// The last line, cut short (no newline and not valid JSON): why.
    Truncated(String),
    Eof,
}

/// Reads a recording as a stream: the header when opened, then events one
/// at a time ([`Reader::next_event`]), then a [`Summary`]. Memory is bounded
/// by [`MAX_LINE`] whatever the file's size.
///
/// A last line cut short (a recording still being written, a crash, a cut
/// inside a multi-byte character) is a warning: the complete lines before it
/// are kept. A second trailer or events after the trailer are warnings too.
/// Anything else malformed is an error naming the file and line.
pub struct Reader<R> {
    lines: Lines<R>,
    header: Header,
    trailer: Option<Trailer>,
    trailer_line: usize,
    events: u64,
    /// Events after the first trailer, and the line of the first of them.
    after_trailer: u64,
    after_trailer_line: usize,
    warnings: Vec<String>,
    done: bool,
}

/// Lines of a file through a bounded window, with their numbers.
struct Lines<R> {
    r: R,
    path: PathBuf,
    /// Lines read so far (the number of the last one).
    line: usize,
    buf: Vec<u8>,
}

impl Reader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| ReadError {
            path: path.to_path_buf(),
            line: 0,
            msg: format!("cannot open: {e}"),
        })?;
        Reader::new(BufReader::with_capacity(1 << 16, f), path)
    }
}

impl<R: BufRead> Reader<R> {
    /// Reads up to and including the header.
    pub fn new(r: R, path: &Path) -> Result<Self> {
        let mut lines = Lines {
            r,
            path: path.to_path_buf(),
            line: 0,
            buf: Vec::new(),
        };
        let header = match lines.next()? {
            Got::Line(Line::Header(h)) => {
                if h.format > FORMAT {
                    return Err(lines
                        .err(format!(
                            "recording format {} is newer than this ctrace reads ({FORMAT}): upgrade ctrace",
                            h.format
                        ))
                        .into());
                }
                h
            }
            Got::Line(Line::Event(_)) | Got::Line(Line::Incident(_)) => {
                return Err(lines
                    .err("an event before the header: not a ctrace recording".into())
                    .into())
            }
            Got::Line(Line::Trailer(_)) | Got::Truncated(_) | Got::Eof => {
                return Err(ReadError {
                    path: lines.path,
                    line: 0,
                    msg: "no header line: empty or not a ctrace recording".into(),
                }
                .into())
            }
        };
        Ok(Reader {
            lines,
            header,
            trailer: None,
            trailer_line: 0,
            events: 0,
            after_trailer: 0,
            after_trailer_line: 0,
            warnings: Vec::new(),
            done: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next event; None at the end of the file (or at a truncated last
    /// line, which becomes a warning).
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        while !self.done {
            match self.lines.next() {
                Err(e) => {
                    self.done = true;
                    return Err(e.into());
                }
                Ok(Got::Eof) => self.done = true,
                Ok(Got::Truncated(why)) => {
                    self.done = true;
                    self.warnings.push(format!(
                        "{}:{}: last line is truncated ({why}); the {} complete events before it are kept",
                        self.lines.path.display(),
                        self.lines.line,
                        self.events
                    ));
                }
                Ok(Got::Line(Line::Header(_))) => {
                    self.done = true;
                    return Err(self
                        .lines
                        .err("a header line after the first line".into())
                        .into());
                }
                Ok(Got::Line(Line::Event(e))) => {
                    self.events += 1;
                    if self.trailer.is_some() {
                        if self.after_trailer == 0 {
                            self.after_trailer_line = self.lines.line;
                        }
                        self.after_trailer += 1;
                    }
                    return Ok(Some(*e));
                }
                Ok(Got::Line(Line::Trailer(t))) => self.add_trailer(t),
                // the correlation runs again over the events (old recordings
                // have no incident lines): the recorded ones are not needed
                Ok(Got::Line(Line::Incident(_))) => {}
            }
        }
        Ok(None)
    }

    /// Reads what is left and says what was found: the trailer and warnings.
    pub fn finish(mut self) -> Result<Summary> {
        while self.next_event()?.is_some() {}
        if self.after_trailer > 0 {
            self.warnings.push(format!(
                "{}:{}: {} event(s) after the trailer (line {}): they are reported, but the trailer did not count them",
                self.lines.path.display(),
                self.after_trailer_line,
                self.after_trailer,
                self.trailer_line
            ));
        }
        if self.trailer.is_none() {
            self.warnings.push(format!(
                "{}: no trailer: the recording was cut off (lost events and kernel counters unknown)",
                self.lines.path.display()
            ));
        }
        Ok(Summary {
            trailer: self.trailer,
            events: self.events,
            warnings: self.warnings,
        })
    }

    /// A second trailer never hides loss: the first is kept with the
    /// largest `lost` of all, and the reader says so.
    fn add_trailer(&mut self, t: Trailer) {
        let Some(first) = self.trailer.as_mut() else {
            self.trailer = Some(t);
            self.trailer_line = self.lines.line;
            return;
        };
        let lost = first.lost.max(t.lost);
        self.warnings.push(format!(
            "{}:{}: another trailer (the first is line {}; lost {} there, {} here): the first is kept, with the larger lost, {lost}",
            self.lines.path.display(),
            self.lines.line,
            self.trailer_line,
            first.lost,
            t.lost
        ));
        first.lost = lost;
        first.lost_user = first.lost_user.max(t.lost_user);
    }
}

impl<R: BufRead> Lines<R> {
    fn err(&self, msg: String) -> ReadError {
        ReadError {
            path: self.path.clone(),
            line: self.line,
            msg,
        }
    }

    /// The next non-blank line, read through a bounded window: never more
    /// than [`MAX_LINE`] bytes are buffered.
    fn next(&mut self) -> Result<Got, ReadError> {
        loop {
            self.buf.clear();
            if self.buf.capacity() > 1 << 20 {
                // one long line must not keep its buffer for the rest of the file
                self.buf.shrink_to(1 << 16);
            }
            let got = (&mut self.r)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf);
            self.line += 1;
            let got = got.map_err(|e| self.err(format!("read failed: {e}")))?;
            if got == 0 {
                self.line -= 1;
                return Ok(Got::Eof);
            }
            let complete = self.buf.last() == Some(&b'\n');
            if !complete && self.buf.len() > MAX_LINE {
                return Err(self.err(format!(
                    "a line longer than {} MiB: not a ctrace recording",
                    MAX_LINE >> 20
                )));
            }
            let text = self.buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Line>(text) {
                Ok(l) => return Ok(Got::Line(l)),
                // no newline: the end of the file, cut short (perhaps inside a character)
                Err(e) if !complete => return Ok(Got::Truncated(e.to_string())),
                Err(e) => {
                    // a line we cannot parse: say whether it is JSON at all
                    let msg = match serde_json::from_slice::<serde_json::Value>(text) {
                        Ok(v) if v.get("type").is_some() => {
                            format!("not a valid {} line: {e}", v["type"])
                        }
                        Ok(_) => format!("a JSON line without a \"type\": {e}"),
                        Err(_) => format!("not JSON: {e}"),
                    };
                    return Err(self.err(msg));
                }
            }
        }
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Event>;
    fn next(&mut self) -> Option<Result<Event>> {
        self.next_event().transpose()
    }
}

/// Reads a whole recording into memory: for small files and tests. `report`
/// and `top --replay` stream with [`Reader`] instead.
pub fn read(path: &Path) -> Result<Recording> {
    collect(Reader::open(path)?)
}

pub fn read_from(r: impl BufRead, path: &Path) -> Result<Recording> {
    collect(Reader::new(r, path)?)
}

fn collect<R: BufRead>(mut rd: Reader<R>) -> Result<Recording> {
    let mut events = Vec::new();
    while let Some(e) = rd.next_event()? {
        events.push(e);
    }
    let header = rd.header().clone();
    let s = rd.finish()?;
    Ok(Recording {
        header: Some(header),
        events,
        trailer: s.trailer,
        warnings: s.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Writer;
    use std::io::{Cursor, Write};

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

    fn trailer(lost: u64) -> String {
        format!(
            r#"{{"type":"trailer","end_wall":"x","events":{{"insert_failed":1}},"lost":{lost}}}"#
        )
    }

    #[test]
    fn a_cut_inside_a_character_is_a_truncated_last_line() {
        let e = event().replace("\"reason\":\"x\"", "\"reason\":\"clash \u{2014} 2\"");
        let full = format!("{}\n{e}\n{e}\n", header());
        // cut in the middle of the three bytes of the em dash of the last event
        let cut = full.rfind('\u{2014}').unwrap() + 1;
        let r = read_from(
            Cursor::new(full.as_bytes()[..cut].to_vec()),
            Path::new("rec.jsonl"),
        )
        .unwrap();
        assert_eq!(r.events.len(), 1);
        assert!(r.events[0].reason.contains('\u{2014}'));
        assert!(
            r.warnings[0].contains("rec.jsonl:3: last line is truncated"),
            "{:?}",
            r.warnings
        );
        // invalid UTF-8 in a complete line is still an error naming the line
        let mut bad = format!("{}\n", header()).into_bytes();
        bad.extend_from_slice(&full.as_bytes()[header().len() + 1..cut]);
        bad.push(b'\n');
        let err = read_from(Cursor::new(bad), Path::new("rec.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("rec.jsonl:3:"), "{err}");
    }

    #[test]
    fn a_second_trailer_never_hides_the_larger_lost() {
        for (a, b) in [(5, 0), (0, 5)] {
            let r = parse(&format!(
                "{}\n{}\n{}\n{}\n",
                header(),
                event(),
                trailer(a),
                trailer(b)
            ))
            .unwrap();
            assert_eq!(r.trailer.unwrap().lost, 5);
            assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
            assert!(
                r.warnings[0].contains("rec.jsonl:4: another trailer (the first is line 3"),
                "{:?}",
                r.warnings
            );
            assert!(r.warnings[0].contains("the larger lost, 5"));
        }
    }

    #[test]
    fn events_after_the_trailer_are_kept_and_reported() {
        let e = event();
        let r = parse(&format!("{}\n{e}\n{}\n{e}\n{e}\n", header(), trailer(0))).unwrap();
        assert_eq!(r.events.len(), 3);
        assert!(
            r.warnings[0].contains("rec.jsonl:4: 2 event(s) after the trailer (line 3)"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn no_trailer_says_lost_is_unknown() {
        let r = parse(&format!("{}\n{}\n", header(), event())).unwrap();
        assert!(r.trailer.is_none());
        assert!(r.warnings[0].contains("no trailer"), "{:?}", r.warnings);
        assert!(r.warnings[0].contains("lost events and kernel counters unknown"));
    }

    #[test]
    fn a_line_longer_than_the_maximum_is_an_error_without_buffering_it_all() {
        // an endless line: the reader stops at MAX_LINE + 1 bytes
        let zeros = std::io::repeat(0).take(4 * MAX_LINE as u64);
        let r = format!("{}\n", header()).into_bytes();
        let err = Reader::new(BufReader::new(Cursor::new(r).chain(zeros)), Path::new("z"))
            .and_then(|mut rd| rd.next_event().map(|_| ()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "z:2: a line longer than 16 MiB: not a ctrace recording"
        );
        // and as the first line
        let err = Reader::new(BufReader::new(std::io::repeat(b'x')), Path::new("z"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("z:1: a line longer than 16 MiB"), "{err}");
    }

    #[test]
    fn the_streaming_reader_yields_header_events_then_summary() {
        let e = event();
        let text = format!("{}\n\n{e}\n{e}\n{}\n", header(), trailer(3));
        let mut rd = Reader::new(Cursor::new(text), Path::new("r")).unwrap();
        assert_eq!(rd.header().netns, 4026531840);
        assert_eq!(rd.by_ref().filter(|e| e.is_ok()).count(), 2);
        let s = rd.finish().unwrap();
        assert_eq!((s.events, s.trailer.unwrap().lost), (2, 3));
        assert!(s.warnings.is_empty());
    }
}
