//! The offending packets as pcapng (`record --pcap`): for each event whose
//! packet BPF captured (the SYN or datagram confirm dropped, an INVALID or
//! IGNORED segment, the segment the node answered with a RST), one Enhanced
//! Packet Block with the packet's first bytes from its IP header on (link type
//! RAW: the hooks see layer 3), on one interface per netns and hook
//! (`netns:4026532246/postrouting`), commented with ctrace's verdict.
//!
//! Timestamps are the event's `ts_ns` converted with the header's own
//! `start_wall` and `start_mono_ns`, so that a frame and its event line up;
//! the event's `frame` is the frame's number (1-based, tshark's frame.number).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};

use super::Header;
use crate::event::{Event, Kind};

/// The kinds whose packet is captured (`--pcap`): the offending packets.
pub const CAPTURED: [Kind; 4] = [
    Kind::InsertFailed,
    Kind::TcpInvalid,
    Kind::TcpIgnored,
    Kind::HostRst,
];

/// Writes the capture; `W` is a file in use, a buffer in tests.
pub struct PcapWriter<W: Write> {
    w: PcapNgWriter<W>,
    name: String,
    snaplen: u32,
    /// Interface name -> its id, in the order the blocks were written.
    ifaces: HashMap<String, u32>,
    frames: u64,
    /// The header's clock: wall time (ns since the epoch) at `start_mono_ns`.
    start_wall_ns: u64,
    start_mono_ns: u64,
}

/// The capture's file, opened before tracing starts (an unwritable path fails
/// before anything touches the kernel); removed again if tracing never starts.
pub struct PcapFile {
    f: File,
    name: String,
    created: Created,
}

impl PcapFile {
    /// A new capture file, made as safely as a recording (0600 whatever the
    /// umask, O_EXCL and O_NOFOLLOW, a lock; `force` replaces a regular file,
    /// never a symlink's target).
    pub fn create(path: &Path, force: bool) -> Result<PcapFile> {
        let (f, created) = super::write::create_file(path, force, "--pcap")?;
        Ok(PcapFile {
            f,
            name: path.display().to_string(),
            created: Created(created.then(|| path.to_path_buf())),
        })
    }

    /// Tracing started (`header` is its recording's): the capture begins, and
    /// the file stays whatever follows, even without a frame (an empty
    /// capture of a run that saw nothing is an answer too).
    pub fn begin(self, snaplen: u32, header: &Header) -> Result<PcapWriter<BufWriter<File>>> {
        let PcapFile {
            f,
            name,
            mut created,
        } = self;
        created.0 = None;
        PcapWriter::new(BufWriter::with_capacity(1 << 16, f), name, snaplen, header)
    }
}

impl<W: Write> PcapWriter<W> {
    pub fn new(out: W, name: String, snaplen: u32, header: &Header) -> Result<Self> {
        let shb = SectionHeaderBlock {
            endianness: Endianness::native(),
            options: vec![
                SectionHeaderOption::UserApplication(
                    format!("ctrace {}", env!("CARGO_PKG_VERSION")).into(),
                ),
                SectionHeaderOption::OS(format!("Linux {}", header.kernel).into()),
                SectionHeaderOption::Hardware(header.hostname.clone().into()),
            ],
            ..Default::default()
        };
        let w = PcapNgWriter::with_section_header(out, shb)
            .with_context(|| format!("writing {name}"))?;
        Ok(PcapWriter {
            w,
            name,
            snaplen,
            ifaces: HashMap::new(),
            frames: 0,
            start_wall_ns: super::unix_ns_from_rfc3339(&header.start_wall).unwrap_or(0),
            start_mono_ns: header.start_mono_ns,
        })
    }

    /// Writes the event's packet, if it has one, and returns its frame number.
    pub fn packet(&mut self, e: &Event) -> Result<Option<u64>> {
        let Some(p) = &e.packet else {
            return Ok(None);
        };
        let ifname = interface_name(e);
        let id = match self.ifaces.get(&ifname) {
            Some(id) => *id,
            None => {
                let id = self.ifaces.len() as u32;
                let idb = InterfaceDescriptionBlock {
                    linktype: DataLink::RAW,
                    snaplen: self.snaplen,
                    options: vec![
                        InterfaceDescriptionOption::IfName(ifname.clone().into()),
                        InterfaceDescriptionOption::IfDescription(interface_description(e).into()),
                        // pcap-file 2 writes timestamps in nanoseconds
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                };
                self.w
                    .write_pcapng_block(idb)
                    .with_context(|| format!("writing {}", self.name))?;
                self.ifaces.insert(ifname, id);
                id
            }
        };
        // BPF's room is the snap length rounded up to 8: the interface
        // promises the snap length itself
        let data = &p.data[..p.data.len().min(self.snaplen as usize)];
        let epb = EnhancedPacketBlock {
            interface_id: id,
            timestamp: Duration::from_nanos(self.wall_ns(e.ts_ns)),
            original_len: p.len.max(p.data.len() as u32),
            data: data.into(),
            options: vec![EnhancedPacketOption::Comment(comment(e).into())],
        };
        self.w
            .write_pcapng_block(epb)
            .with_context(|| format!("writing {}", self.name))?;
        self.frames += 1;
        Ok(Some(self.frames))
    }

    /// Wall-clock nanoseconds of a monotonic stamp, the header's way.
    pub fn wall_ns(&self, ts_ns: u64) -> u64 {
        let d = ts_ns as i128 - self.start_mono_ns as i128;
        (self.start_wall_ns as i128 + d).max(0) as u64
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    pub fn flush(&mut self) -> Result<()> {
        self.w
            .get_mut()
            .flush()
            .with_context(|| format!("flushing {}", self.name))
    }

    pub fn into_inner(self) -> W {
        self.w.into_inner()
    }
}

/// The file a writer created, removed when dropped unless kept.
struct Created(Option<PathBuf>);

impl Drop for Created {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The interface a packet is shown on: its netns and the hook that saw it.
pub fn interface_name(e: &Event) -> String {
    format!("netns:{}/{}", e.netns, hook_of(e))
}

fn hook_of(e: &Event) -> &str {
    if let Some(h) = e.hook.as_deref() {
        return h;
    }
    match (e.kind, e.source.as_ref()) {
        (Kind::HostRst, "tracepoint") => "tcp_send_reset",
        (Kind::HostRst, _) if e.family == crate::event::Family::Ipv6 => "tcp_v6_send_reset",
        (Kind::HostRst, _) => "tcp_v4_send_reset",
        (Kind::InsertFailed, _) => "nf_conntrack_confirm",
        (Kind::TcpInvalid | Kind::TcpIgnored, _) => "nf_conntrack_tcp_packet",
        _ => "unknown",
    }
}

fn interface_description(e: &Event) -> String {
    let what = match e.kind {
        Kind::HostRst => {
            "segments the node answered with a RST (the RST itself is built after the hook)"
        }
        Kind::InsertFailed => "packets dropped at conntrack confirm",
        _ => "TCP segments conntrack judged out of its window",
    };
    format!(
        "ctrace {} hook in netns {}: {what}; raw IP from the network header",
        e.source, e.netns
    )
}

/// The frame's comment: ctrace's verdict on the packet. Starts with
/// `ctrace: <kind>: <reason>`, then `; key value` parts for what is known.
pub fn comment(e: &Event) -> String {
    let reason = match (&e.reason, &e.drop_reason) {
        (r, _) if !r.is_empty() => r.clone(),
        (_, Some(d)) => d.clone(),
        _ => "no reason given".into(),
    };
    let mut s = format!("ctrace: {}: {reason}", e.kind);
    if e.kind == Kind::HostRst {
        s.push_str("; frame: the segment the node answered with a RST");
    }
    if let Some(i) = e.incident {
        s.push_str(&format!("; incident {i}"));
    }
    match &e.winner {
        crate::event::WinnerSlot::Known(w) => {
            s.push_str(&format!("; winner {} (seen: {}", w.orig, w.seen));
            if let Some(cpu) = w.cpu {
                s.push_str(&format!(", cpu {cpu}"));
            }
            s.push(')');
        }
        crate::event::WinnerSlot::Unknown => s.push_str(&format!(
            "; winner unknown{}",
            e.winner_unknown
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        )),
        crate::event::WinnerSlot::Absent => {}
    }
    if let Some(w) = &e.workload {
        s.push_str(&format!("; workload {}", w.label()));
    }
    s.push_str(&format!("; flow {}", e.orig));
    if let Some(r) = &e.reply {
        s.push_str(&format!("; reply {r}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Packet, Tuple, Winner, WinnerSlot};
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn header() -> Header {
        Header {
            format: 1,
            ctrace: "0.1.0".into(),
            kernel: "6.18".into(),
            hostname: "node1".into(),
            start_wall: "2026-12-01T14:00:00.250000Z".into(),
            start_mono_ns: 1_000_000_000,
            netns: 7,
            probes: Default::default(),
            mode: None,
        }
    }

    fn event(kind: Kind, netns: u32, hook: Option<&str>, ts_ns: u64) -> Event {
        let t = Tuple {
            src: "10.0.0.2".parse().unwrap(),
            sport: 40000,
            dst: "192.0.2.1".parse().unwrap(),
            dport: 80,
        };
        let mut e = Event::new(kind, t);
        e.netns = netns;
        e.hook = hook.map(|h| h.to_string().into());
        e.ts_ns = ts_ns;
        e.reason = "packet without a conntrack entry".into();
        e.packet = Some(Packet {
            len: 60,
            data: (0..40u8).collect(),
        });
        e
    }

    #[test]
    fn frames_round_trip_with_interfaces_comments_and_times() {
        let h = header();
        let mut w = PcapWriter::new(Vec::new(), "buf".into(), 256, &h).unwrap();
        let mut a = event(Kind::TcpInvalid, 11, Some("prerouting"), 1_500_000_123);
        a.incident = Some(3);
        let mut b = event(Kind::InsertFailed, 11, Some("postrouting"), 2_000_000_000);
        b.winner = WinnerSlot::Known(Box::new(Winner {
            orig: a.orig,
            reply: a.orig,
            cpu: Some(1),
            ts_ns: Some(0),
            seen: "nat".into(),
        }));
        let mut c = event(Kind::HostRst, 11, None, 3_000_000_000);
        c.source = "tracepoint".into();
        let d = event(Kind::TcpInvalid, 11, Some("prerouting"), 4_000_000_000);
        let mut no_packet = event(Kind::NatAlloc, 11, Some("postrouting"), 5);
        no_packet.packet = None;
        assert_eq!(w.packet(&a).unwrap(), Some(1));
        assert_eq!(w.packet(&no_packet).unwrap(), None);
        assert_eq!(w.packet(&b).unwrap(), Some(2));
        assert_eq!(w.packet(&c).unwrap(), Some(3));
        assert_eq!(w.packet(&d).unwrap(), Some(4));
        assert_eq!(w.frames(), 4);
        let bytes = w.into_inner();

        let mut r = PcapNgReader::new(bytes.as_slice()).unwrap();
        let mut ifaces = Vec::new();
        let mut frames = Vec::new();
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(i) => {
                    assert_eq!(i.linktype, DataLink::RAW);
                    assert_eq!(i.snaplen, 256);
                    assert!(i
                        .options
                        .iter()
                        .any(|o| matches!(o, InterfaceDescriptionOption::IfTsResol(9))));
                    let name = i.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    });
                    ifaces.push(name.unwrap());
                }
                Block::EnhancedPacket(p) => {
                    let c = p.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                        _ => None,
                    });
                    frames.push((
                        p.interface_id,
                        p.timestamp,
                        p.original_len,
                        p.data.to_vec(),
                        c.unwrap(),
                    ));
                }
                _ => {}
            }
        }
        // one interface per netns and hook, in first-seen order
        assert_eq!(
            ifaces,
            [
                "netns:11/prerouting",
                "netns:11/postrouting",
                "netns:11/tcp_send_reset"
            ]
        );
        let ids: Vec<u32> = frames.iter().map(|f| f.0).collect();
        assert_eq!(ids, [0, 1, 2, 0]);
        // never more than the snap length, whatever BPF's rounded room held
        let mut w = PcapWriter::new(Vec::new(), "buf".into(), 35, &h).unwrap();
        w.packet(&a).unwrap();
        let bytes = w.into_inner();
        let mut r = PcapNgReader::new(bytes.as_slice()).unwrap();
        let mut lens = Vec::new();
        while let Some(b) = r.next_block() {
            if let Block::EnhancedPacket(p) = b.unwrap() {
                lens.push((p.data.len(), p.original_len));
            }
        }
        assert_eq!(lens, [(35, 60)]);
        // 14:00:00.25 + (1.500000123 - 1) s
        let start = unix_ns("2026-12-01T14:00:00.250000Z");
        assert_eq!(frames[0].1, Duration::from_nanos(start + 500_000_123));
        assert_eq!(frames[0].2, 60);
        assert_eq!(frames[0].3, (0..40u8).collect::<Vec<_>>());
        assert!(
            frames[0]
                .4
                .starts_with("ctrace: tcp_invalid: packet without a conntrack entry"),
            "{}",
            frames[0].4
        );
        assert!(frames[0].4.contains("; incident 3"), "{}", frames[0].4);
        assert!(frames[1].4.starts_with("ctrace: insert_failed: "));
        assert!(
            frames[1]
                .4
                .contains("; winner 10.0.0.2:40000 > 192.0.2.1:80 (seen: nat, cpu 1)"),
            "{}",
            frames[1].4
        );
        assert!(frames[2]
            .4
            .contains("the segment the node answered with a RST"));
    }

    fn unix_ns(s: &str) -> u64 {
        super::super::unix_ns_from_rfc3339(s).unwrap()
    }

    #[test]
    fn the_file_is_0600_and_removed_when_the_recording_never_started() {
        use std::os::unix::fs::MetadataExt;
        let d = std::env::temp_dir().join(format!("ctrace-pcap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("c.pcapng");
        let f = PcapFile::create(&p, false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        drop(f);
        assert!(!p.exists());
        let mut w = PcapFile::create(&p, false)
            .unwrap()
            .begin(256, &header())
            .unwrap();
        w.flush().unwrap();
        drop(w);
        assert!(p.exists());
        assert!(std::fs::metadata(&p).unwrap().len() > 0);
        let err = PcapFile::create(&p, false).err().unwrap().to_string();
        assert!(err.contains("--force") && err.contains("--pcap"), "{err}");
        std::fs::remove_dir_all(&d).ok();
    }
}
