//! `serve --record DIR`: a rotating recording. Every file is a complete
//! recording (header, events, trailer with the kernel's counter deltas over
//! that file), created 0600 by [`Writer`]; a file is closed when it reaches
//! the size limit, and the oldest files go when there are more than the
//! count limit. With `--pcap`, each file has its capture beside it (same
//! name, `.pcapng`), begun, ended and removed with it; the size limit is the
//! recording's.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::ctstat::Snapshot;
use crate::event::Event;
use crate::record::pcap::{PcapFile, PcapWriter};
use crate::record::{Behind, Header, Line, Trailer, Writer};

const PREFIX: &str = "ctrace-serve-";
const SUFFIX: &str = ".jsonl";

/// Where the counters stood when the current file began.
struct Open {
    /// The file's writer thread (JSON and writes off the consumer's).
    w: Behind,
    pcap: Option<PcapWriter<std::io::BufWriter<std::fs::File>>>,
    path: PathBuf,
    /// Per kind; `&'static` keys: no allocation per event.
    events: BTreeMap<&'static str, u64>,
    incidents: BTreeMap<String, BTreeMap<String, u64>>,
    lost_at_start: u64,
    lost_failures_at_start: u64,
    lost_user_at_start: u64,
    kernel_at_start: Option<Snapshot>,
}

pub struct Rotator {
    dir: PathBuf,
    max_bytes: u64,
    max_files: usize,
    seq: u64,
    open: Option<Open>,
    /// `--pcap`: the snap length of each file's capture.
    pcap_snaplen: Option<u32>,
}

/// What the session looks like now, for a file's trailer or the next header.
pub struct Now<'a> {
    pub header: &'a Header,
    pub kernel: Option<Snapshot>,
    pub lost: u64,
    pub lost_failures: u64,
    pub lost_user: u64,
}

impl Rotator {
    /// Checks (or creates, mode 0700) the directory before anything attaches.
    pub fn new(dir: &Path, max_bytes: u64, max_files: usize) -> Result<Rotator> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the recording directory {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {} to its owner", dir.display()))?;
        }
        let md =
            std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        if !md.is_dir() {
            anyhow::bail!("--record {}: not a directory", dir.display());
        }
        Ok(Rotator {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            max_files: max_files.max(1),
            seq: 0,
            open: None,
            pcap_snaplen: None,
        })
    }

    /// Each file gets its capture (`serve --record DIR --pcap`).
    pub fn with_pcap(mut self, snaplen: u32) -> Rotator {
        self.pcap_snaplen = Some(snaplen);
        self
    }

    /// This directory's recordings, oldest first (their names sort by time).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        n.starts_with(PREFIX) && n.ends_with(SUFFIX)
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Begins a new file (removing the oldest beyond the count limit).
    pub fn begin(&mut self, now: &Now) -> Result<()> {
        self.seq += 1;
        let stamp: String = crate::record::now_rfc3339()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let path = self
            .dir
            .join(format!("{PREFIX}{stamp}-{:06}{SUFFIX}", self.seq));
        let mut w = Writer::create(&path)?;
        let pcap = match self.pcap_snaplen {
            Some(n) => Some(PcapFile::create(&pcap_path(&path), false)?.begin(n, now.header)?),
            None => None,
        };
        w.write(&Line::Header(now.header.clone()))?;
        w.flush()?;
        let w = Behind::spawn(w)?;
        self.open = Some(Open {
            w,
            pcap,
            path,
            events: BTreeMap::new(),
            incidents: BTreeMap::new(),
            lost_at_start: now.lost,
            lost_failures_at_start: now.lost_failures,
            lost_user_at_start: now.lost_user,
            kernel_at_start: now.kernel.clone(),
        });
        let files = self.files();
        if files.len() > self.max_files {
            for old in &files[..files.len() - self.max_files] {
                let _ = std::fs::remove_file(old);
                let _ = std::fs::remove_file(pcap_path(old));
            }
        }
        Ok(())
    }

    pub fn incident(&mut self, i: &crate::incident::Incident) -> Result<()> {
        if let Some(o) = self.open.as_mut() {
            *o.incidents
                .entry(i.kind.clone())
                .or_default()
                .entry(i.outcome.clone())
                .or_default() += 1;
            o.w.write(Line::Incident(Box::new(i.clone())))?;
        }
        Ok(())
    }

    /// Writes the event (and its packet, with `--pcap`: `e.frame` is set to
    /// its frame in the current file's capture).
    pub fn event(&mut self, e: impl Into<Box<Event>>) -> Result<()> {
        let mut e = e.into();
        if let Some(o) = self.open.as_mut() {
            *o.events.entry(e.kind.name()).or_default() += 1;
            if let Some(p) = o.pcap.as_mut() {
                e.frame = p.packet(&e)?;
            }
            o.w.event(e)?;
        }
        Ok(())
    }

    /// Flushes, and rotates once the file has reached the size limit.
    pub fn tick(&mut self, now: &Now) -> Result<()> {
        let Some(o) = self.open.as_mut() else {
            return Ok(());
        };
        o.w.flush()?;
        if let Some(p) = o.pcap.as_mut() {
            p.flush()?;
        }
        let len = std::fs::metadata(&o.path).map(|m| m.len()).unwrap_or(0);
        if len >= self.max_bytes {
            self.end(now, "rotated", None)?;
            self.begin(now)?;
        }
        Ok(())
    }

    /// Writes the current file's trailer.
    pub fn end(&mut self, now: &Now, ended_by: &str, signal: Option<String>) -> Result<()> {
        let Some(mut o) = self.open.take() else {
            return Ok(());
        };
        let kernel_counters = match (&now.kernel, &o.kernel_at_start) {
            (Some(k), Some(base)) => Some(k.delta(base).to_counters()),
            _ => None,
        };
        let t = Trailer {
            end_wall: crate::record::now_rfc3339(),
            end_mono_ns: crate::sys::monotonic_ns(),
            events: o.events.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            lost: now.lost.saturating_sub(o.lost_at_start),
            lost_failures: now.lost_failures.saturating_sub(o.lost_failures_at_start),
            lost_user: now.lost_user.saturating_sub(o.lost_user_at_start),
            missed: Default::default(),
            missed_covered: Default::default(),
            kernel_counters,
            ended_by: ended_by.to_string(),
            signal,
            incidents: o.incidents,
        };
        o.w.write(Line::Trailer(t))?;
        if let Some(p) = o.pcap.as_mut() {
            p.flush()?;
        }
        o.w.flush()
    }
}

/// The capture beside a recording file: same name, `.pcapng`.
fn pcap_path(recording: &Path) -> PathBuf {
    recording.with_extension("pcapng")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Kind, Tuple};
    use std::os::unix::fs::MetadataExt;

    fn header() -> Header {
        Header {
            format: crate::record::FORMAT,
            ctrace: "0".into(),
            kernel: "6.18".into(),
            hostname: "n".into(),
            start_wall: "x".into(),
            start_mono_ns: 1,
            netns: 1,
            probes: BTreeMap::new(),
            mode: None,
        }
    }

    #[test]
    fn rotates_by_size_keeps_the_newest_files_each_a_recording() {
        let dir = std::env::temp_dir().join(format!("ctrace-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let h = header();
        let now = Now {
            header: &h,
            kernel: None,
            lost: 0,
            lost_failures: 0,
            lost_user: 0,
        };
        let mut r = Rotator::new(&dir, 4096, 3).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        r.begin(&now).unwrap();
        let e = Event::new(
            Kind::InsertFailed,
            Tuple {
                src: "10.0.0.1".parse().unwrap(),
                sport: 1,
                dst: "10.0.0.2".parse().unwrap(),
                dport: 2,
            },
        );
        for _ in 0..200 {
            r.event(e.clone()).unwrap();
            r.tick(&now).unwrap();
        }
        r.end(&now, "signal", Some("SIGTERM".into())).unwrap();
        let files = r.files();
        assert_eq!(files.len(), 3, "{files:?}");
        let mut events = 0;
        for f in &files {
            assert_eq!(std::fs::metadata(f).unwrap().mode() & 0o777, 0o600);
            let rec = crate::record::read(f).unwrap();
            let t = rec.trailer.expect("every file has its trailer");
            assert_eq!(
                t.events.get("insert_failed").copied().unwrap_or(0),
                rec.events.len() as u64
            );
            events += rec.events.len();
        }
        assert!(
            events > 0 && events < 200,
            "the oldest were removed: {events}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `--pcap`: each file's capture beside it, frames numbered per file,
    /// the oldest removed with their recordings.
    #[test]
    fn each_file_has_its_capture_and_loses_it_with_itself() {
        let dir = std::env::temp_dir().join(format!("ctrace-rotate-pcap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut h = header();
        h.start_wall = "2026-12-01T14:00:00.000000Z".into();
        let now = Now {
            header: &h,
            kernel: None,
            lost: 0,
            lost_failures: 0,
            lost_user: 0,
        };
        let mut r = Rotator::new(&dir, 4096, 2).unwrap().with_pcap(64);
        r.begin(&now).unwrap();
        let mut e = Event::new(
            Kind::TcpInvalid,
            Tuple {
                src: "10.0.0.1".parse().unwrap(),
                sport: 1,
                dst: "10.0.0.2".parse().unwrap(),
                dport: 2,
            },
        );
        e.packet = Some(crate::event::Packet {
            len: 40,
            data: vec![0x45; 40],
        });
        for _ in 0..200 {
            r.event(e.clone()).unwrap();
            r.tick(&now).unwrap();
        }
        r.end(&now, "signal", None).unwrap();
        let files = r.files();
        assert_eq!(files.len(), 2, "{files:?}");
        let caps: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|d| d.file_name().to_string_lossy().ends_with(".pcapng"))
            .collect();
        assert_eq!(caps.len(), 2, "the oldest captures went with their files");
        for f in &files {
            let cap = pcap_path(f);
            assert_eq!(std::fs::metadata(&cap).unwrap().mode() & 0o777, 0o600);
            let rec = crate::record::read(f).unwrap();
            let frames: Vec<u64> = rec.events.iter().map(|e| e.frame.unwrap()).collect();
            let want: Vec<u64> = (1..=rec.events.len() as u64).collect();
            assert_eq!(frames, want, "{}", f.display());
            let bytes = std::fs::read(&cap).unwrap();
            let mut rd = pcap_file::pcapng::PcapNgReader::new(bytes.as_slice()).unwrap();
            let mut n = 0;
            while let Some(b) = rd.next_block() {
                if let pcap_file::pcapng::Block::EnhancedPacket(_) = b.unwrap() {
                    n += 1;
                }
            }
            assert_eq!(n, rec.events.len());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
