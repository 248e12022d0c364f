//! Writing a recording: one line at a time, and the file it goes to.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

use super::Line;
use crate::event::Event;

/// Writes a recording line by line. Each line is flushed as a whole so that a
/// reader (or a crash) never sees half a line except at the very end.
pub struct Writer {
    out: BufWriter<Box<dyn Write + Send>>,
    name: String,
    lines: u64,
    /// One event's JSON, reused.
    buf: Vec<u8>,
    /// The file this writer created: removed again if not even the header
    /// was written (a `record` that failed to start leaves nothing behind
    /// that would make the next try refuse the path).
    created: Option<PathBuf>,
}

/// Where `record -o` writes: none or `-` is standard output, anything else
/// a new file (see [`Writer::create_with`]).
pub fn output(path: Option<&Path>, force: bool) -> Result<Writer> {
    match path {
        None => Ok(Writer::stdout()),
        Some(p) if p.as_os_str() == "-" => Ok(Writer::stdout()),
        Some(p) => Writer::create_with(p, force),
    }
}

impl Writer {
    /// A new recording file; an existing path is refused.
    pub fn create(path: &Path) -> Result<Writer> {
        Writer::create_with(path, false)
    }

    /// A new recording file, mode 0600 whatever the umask (connection tuples
    /// are not for every local user), created with O_EXCL and O_NOFOLLOW and
    /// held with an exclusive `flock` so that two recorders never interleave.
    ///
    /// An existing path: a symbolic link is always refused (a link planted in
    /// /tmp must not make root overwrite its target), a character device
    /// (/dev/null) is written as is, a regular file is refused unless `force`,
    /// which replaces it (unlinks it and creates a new one, never following a
    /// link); anything else is refused.
    pub fn create_with(path: &Path, force: bool) -> Result<Writer> {
        let (f, created) = create_file(path, force, "-o")?;
        let mut w = Writer::new(Box::new(f), path.display().to_string());
        w.created = created.then(|| path.to_path_buf());
        Ok(w)
    }

    pub fn stdout() -> Writer {
        Writer::new(Box::new(std::io::stdout()), "standard output".into())
    }

    pub fn new(out: Box<dyn Write + Send>, name: String) -> Writer {
        Writer {
            out: BufWriter::with_capacity(1 << 16, out),
            name,
            lines: 0,
            buf: Vec::with_capacity(1024),
            created: None,
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
        // The event's own object with its "type" tag first: serialized into
        // a reused buffer and written after `{"type":"event",` in place of
        // its opening brace. (A struct with the event flattened into it
        // went through serde's map path: a fifth of record's CPU at 200k
        // events/s.) Event always has fields, so the object is never `{}`.
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, e)
            .with_context(|| format!("writing {}", self.name))?;
        let body = self.buf.strip_prefix(b"{").unwrap_or(&self.buf);
        let w = (|| {
            self.out.write_all(br#"{"type":"event","#)?;
            self.out.write_all(body)?;
            self.out.write_all(b"\n")
        })();
        w.with_context(|| format!("writing {}", self.name))?;
        self.lines += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("flushing {}", self.name))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(p) = self.created.take() {
            if self.lines == 0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Lines queued for a [`Behind`]'s thread, in batches of this many.
const BEHIND_BATCH: usize = 256;
/// Batches waiting at most (~3 MiB of events); past them the consumer waits,
/// as it did on `write(2)`, and what arrives meanwhile waits in the
/// pipeline's queue as raw records, counted as lost past its bound. The depth
/// is what lets the two threads run apart on a crowded node: with four busy
/// loops (`bench/run lost`, 60 s) 4 batches lost 1.07 M of 6.9 M events,
/// 8 lost 637 k, 16 lost 0 in three runs and 3,226 in a fourth; each batch
/// costs ~0.2 MiB at the 1M-flow peak (`bench/run mem`).
const BEHIND_BATCHES: usize = 16;

enum Queued {
    Event(Box<Event>),
    Line(Box<Line>),
    /// Answered once everything queued before it is written and flushed.
    Flush(SyncSender<()>),
}

/// A [`Writer`] on a thread of its own: the consumer hands it events and
/// lines, and the thread turns them into JSON and writes them. Measured
/// under a 150k/s flood (perf, issue 13), serializing, escaping and copying
/// into the page cache were a third of the consumer's time; on their own
/// thread they no longer delay correlation, and they get a CPU share of
/// their own on a node whose cores are busy. Order is kept (one queue, one
/// writer). `flush` returns once everything before it is written; the first
/// error is kept and returned by every later call, so nothing fails
/// silently. A stalled output (a pipe nobody reads) blocks the thread, then
/// the consumer once the queue is full: memory stays bounded.
pub struct Behind {
    tx: Option<SyncSender<Vec<Queued>>>,
    batch: Vec<Queued>,
    /// Emptied batches back from the thread, reused.
    spare: Receiver<Vec<Queued>>,
    failed: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Behind {
    pub fn spawn(mut w: Writer) -> Result<Behind> {
        let (tx, rx) = sync_channel::<Vec<Queued>>(BEHIND_BATCHES);
        let (back, spare) = std::sync::mpsc::channel();
        let failed = Arc::new(Mutex::new(None));
        let seen = failed.clone();
        let thread = std::thread::Builder::new()
            .name("ctrace-write".into())
            .spawn(move || {
                for mut batch in rx {
                    for q in batch.drain(..) {
                        let (r, done) = match q {
                            Queued::Event(e) => (w.event(&e), None),
                            Queued::Line(l) => (w.write(&l), None),
                            Queued::Flush(done) => (w.flush(), Some(done)),
                        };
                        // the error is kept before a flush is answered
                        if let Err(e) = r {
                            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                            seen.get_or_insert(format!("{e:#}"));
                        }
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                    let _ = back.send(batch);
                }
                // the file is closed (or removed, if nothing was written) here
                let _ = w.flush();
            })
            .context("starting the recording's writer thread")?;
        Ok(Behind {
            tx: Some(tx),
            batch: Vec::with_capacity(BEHIND_BATCH),
            spare,
            failed,
            thread: Some(thread),
        })
    }

    fn failed(&self) -> Result<()> {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }

    fn queue(&mut self, q: Queued) -> Result<()> {
        self.batch.push(q);
        if self.batch.len() >= BEHIND_BATCH {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<()> {
        self.failed()?;
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BEHIND_BATCH));
        let batch = std::mem::replace(&mut self.batch, next);
        match self.tx.as_ref().map(|tx| tx.send(batch)) {
            Some(Ok(())) => Ok(()),
            _ => bail!("the recording's writer thread ended"),
        }
    }

    pub fn event(&mut self, e: impl Into<Box<Event>>) -> Result<()> {
        self.queue(Queued::Event(e.into()))
    }

    pub fn write(&mut self, l: Line) -> Result<()> {
        self.queue(Queued::Line(Box::new(l)))
    }

    /// Waits until everything queued so far is written and flushed.
    pub fn flush(&mut self) -> Result<()> {
        let (done, wait) = sync_channel(1);
        self.batch.push(Queued::Flush(done));
        self.send()?;
        let _ = wait.recv();
        self.failed()
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        // what was queued is written before the file is closed
        if !self.batch.is_empty() {
            let _ = self.send();
        }
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn cannot_write(path: &Path, flag: &str) -> String {
    let what = if flag == "-o" {
        "the recording"
    } else {
        "the capture"
    };
    format!(
        "cannot write {what} to {}: choose a writable path with {flag}",
        path.display()
    )
}

/// Opens an output file (a recording, `-o`; a capture, `--pcap`: `flag` names
/// the option in errors) as [`Writer::create_with`] says; true when it created
/// a new file.
pub(crate) fn create_file(path: &Path, force: bool, flag: &str) -> Result<(File, bool)> {
    let cannot_write = |p: &Path| cannot_write(p, flag);
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
    };
    let created = |f: File| -> Result<(File, bool)> {
        // the umask may only take bits away; set the mode exactly
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| cannot_write(path))?;
        lock(&f, path, flag)?;
        Ok((f, true))
    };
    match create() {
        Ok(f) => return created(f),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| cannot_write(path)),
    }
    let ft = std::fs::symlink_metadata(path)
        .with_context(|| cannot_write(path))?
        .file_type();
    if ft.is_symlink() {
        bail!(
            "{} is a symbolic link: ctrace does not follow it (a planted link would make it overwrite the link's target, even with --force); remove the link or choose another path with {flag}",
            path.display()
        );
    }
    if ft.is_char_device() {
        // /dev/null and the like: written as they are, without a lock
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(flags)
            .open(path)
            .with_context(|| cannot_write(path))?;
        if !f.metadata()?.file_type().is_char_device() {
            bail!(
                "{} changed while ctrace opened it: try again",
                path.display()
            );
        }
        return Ok((f, false));
    }
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a block device"
        };
        bail!(
            "{} is {what}, not a regular file: choose a file path with {flag}{}",
            path.display(),
            if flag == "-o" {
                " (or -o - for standard output)"
            } else {
                ""
            }
        );
    }
    if !force {
        bail!(
            "{} already exists: ctrace does not overwrite it; use --force to replace it, or choose another path with {flag}",
            path.display()
        );
    }
    // --force: hold the old file's lock while replacing it, so that a
    // recorder still writing it is refused rather than orphaned
    let old = OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| cannot_write(path))?;
    if !old.metadata()?.is_file() {
        bail!(
            "{} changed while ctrace opened it: try again",
            path.display()
        );
    }
    lock(&old, path, flag)?;
    std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    match create() {
        Ok(f) => created(f),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
            "{} was created again while ctrace replaced it: another process writes there",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| cannot_write(path)),
    }
}

/// An exclusive, non-blocking `flock`, held as long as the file is open.
fn lock(f: &File, path: &Path, flag: &str) -> Result<()> {
    // SAFETY: flock takes a descriptor `f` owns and no memory.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == ErrorKind::WouldBlock {
        bail!(
            "{} is being written by another ctrace record (it holds the file's lock): choose another path with {flag}",
            path.display()
        );
    }
    Err(e).with_context(|| format!("cannot lock {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Trailer;

    /// A directory of its own for a test's files.
    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ctrace-record-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn one_line(w: &mut Writer) {
        w.write(&Line::Trailer(Trailer::default())).unwrap();
        w.flush().unwrap();
    }

    #[test]
    fn an_event_line_is_the_tagged_line_byte_for_byte() {
        let d = tmpdir("event");
        let (a, b) = (d.join("a.jsonl"), d.join("b.jsonl"));
        let orig = crate::event::Tuple {
            src: "10.0.0.2".parse().unwrap(),
            sport: 40000,
            dst: "192.0.2.1".parse().unwrap(),
            dport: 80,
        };
        let mut e = crate::event::Event::new(crate::event::Kind::NfDrop, orig);
        e.tcp = Some(Box::new(crate::event::Tcp {
            seq: 7,
            ..Default::default()
        }));
        e.reason = "a \"quoted\" reason".into();
        e.location = Some("nft_do_chain+0x46f".into());
        {
            let mut w = Writer::create(&a).unwrap();
            w.event(&e).unwrap();
            w.event(&e).unwrap();
            w.flush().unwrap();
            let mut w = Writer::create(&b).unwrap();
            let line = Line::Event(Box::new(e.clone()));
            w.write(&line).unwrap();
            w.write(&line).unwrap();
            w.flush().unwrap();
        }
        let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_file_written_behind_keeps_every_line_in_order_even_unflushed() {
        let d = tmpdir("behind");
        let p = d.join("r.jsonl");
        let orig = crate::event::Tuple {
            src: "10.0.0.2".parse().unwrap(),
            sport: 40000,
            dst: "192.0.2.1".parse().unwrap(),
            dport: 80,
        };
        // more than the thread's queue holds, so the consumer waits on it
        let n = (BEHIND_BATCH * BEHIND_BATCHES * 3) as u64;
        {
            let mut w = Behind::spawn(Writer::create(&p).unwrap()).unwrap();
            for i in 0..n {
                let mut e = crate::event::Event::new(crate::event::Kind::NfDrop, orig);
                e.ts_ns = i;
                w.event(e).unwrap();
            }
            // dropped without a flush: what was queued is still written
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let ts: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["ts_ns"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ts, (0..n).collect::<Vec<_>>());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_write_error_on_the_writer_thread_is_returned_not_lost() {
        // /dev/full: every write fails with ENOSPC
        let mut w =
            Behind::spawn(Writer::create_with(Path::new("/dev/full"), false).unwrap()).unwrap();
        let t = || Line::Trailer(Trailer::default());
        // the error shows at a flush at the latest
        let got = w.write(t()).and_then(|_| w.flush());
        let err = format!("{:#}", got.unwrap_err());
        assert!(
            err.contains("/dev/full") && err.contains("No space left"),
            "{err}"
        );
        // and again: the first error is kept
        assert!(w.flush().is_err());
    }

    #[test]
    fn a_new_file_is_0600_whatever_the_umask() {
        use std::os::unix::fs::MetadataExt;
        let d = tmpdir("mode");
        let p = d.join("r.jsonl");
        // SAFETY: umask has no preconditions (it is process-wide: 022 is
        // the usual default, so other tests are not disturbed).
        let old = unsafe { libc::umask(0o022) };
        let w = Writer::create(&p);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let mut w = w.unwrap();
        one_line(&mut w);
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        drop(w);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_symlink_is_refused_even_with_force_and_its_target_untouched() {
        let d = tmpdir("link");
        let target = d.join("target");
        std::fs::write(&target, "precious\n").unwrap();
        let link = d.join("r.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // a dangling link too: it must not create its target
        let dangling = d.join("d.jsonl");
        std::os::unix::fs::symlink(d.join("nothing"), &dangling).unwrap();
        for force in [false, true] {
            for l in [&link, &dangling] {
                let err = Writer::create_with(l, force).err().unwrap().to_string();
                assert!(err.contains("is a symbolic link"), "{err}");
                assert!(err.contains(&l.display().to_string()), "{err}");
            }
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        assert!(!d.join("nothing").exists());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn an_existing_file_is_refused_unless_force_replaces_it() {
        use std::os::unix::fs::MetadataExt;
        let d = tmpdir("exists");
        let p = d.join("r.jsonl");
        std::fs::write(&p, "old\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Writer::create(&p).err().unwrap().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert!(err.contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\n");
        let mut w = Writer::create_with(&p, true).unwrap();
        // while one writer holds it, a second one (even forced) is refused
        let err = Writer::create_with(&p, true).err().unwrap().to_string();
        assert!(
            err.contains("being written by another ctrace record"),
            "{err}"
        );
        one_line(&mut w);
        drop(w);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("{\"type\":\"trailer\""), "{text}");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn devices_are_written_other_special_files_refused() {
        let mut w = Writer::create(Path::new("/dev/null")).unwrap();
        one_line(&mut w);
        drop(w);
        assert!(Path::new("/dev/null").exists());
        let d = tmpdir("special");
        let err = Writer::create_with(&d, true).err().unwrap().to_string();
        assert!(err.contains("is a directory, not a regular file"), "{err}");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn dash_is_standard_output_and_an_unused_file_is_removed() {
        let d = tmpdir("dash");
        let cwd = d.join("-");
        let w = output(Some(Path::new("-")), false).unwrap();
        assert_eq!(w.name, "standard output");
        assert!(!cwd.exists() && !Path::new("-").exists());
        // a file that never got a line (record failed to start) is not left behind
        let p = d.join("r.jsonl");
        drop(Writer::create(&p).unwrap());
        assert!(!p.exists());
        std::fs::remove_dir_all(&d).ok();
    }
}
