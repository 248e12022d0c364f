//! The recording format (JSON Lines): a header, one line per event, a trailer.
//! Field names are a contract with users' scripts: add fields, never rename.
//!
//! - `write`: the writer, and how `record -o` creates its file (0600, never
//!   through a symlink, never over another recorder's file).
//! - `read`: the streaming reader, bounded whatever the file's size.

pub mod pcap;
mod read;
mod write;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::ctstat::KernelCounters;
use crate::event::Event;
pub use read::{read, read_from, ReadError, Reader, Recording, Summary, MAX_LINE};
pub use write::{output, Behind, Writer};

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
    /// Of `lost`, the records of the failure kinds (insert_failed,
    /// clash_resolved, tcp_invalid): the ring keeps its last quarter for
    /// them, so a flood of other events is lost first. Written when not zero;
    /// with it 0, the failures in the file are all the kernel reported.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_failures: u64,
    /// Events decoded but dropped in user space because the output stalled
    /// (beside `lost`, the kernel's count of records it could not write).
    /// Written when not zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_user: u64,
    /// Program runs the kernel skipped, by program: a tracing program that
    /// fired while the same program already ran on that CPU is not run (its
    /// recursion guard). A skipped run may have been an event that is not in
    /// the file. Written when any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missed: BTreeMap<String, u64>,
    /// Runs the kernel skipped of programs loaded in pairs, whose twin ran
    /// instead (confirm's kfree_skb pair): nothing is missing; written when
    /// any, as a sign that the node nests drops.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missed_covered: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_counters: Option<KernelCounters>,
    /// Why the recording ended: "duration", "signal", "error: ...".
    #[serde(default)]
    pub ended_by: String,
    /// Incidents by kind, then outcome (the `{"type":"incident"}` lines).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub incidents: BTreeMap<String, BTreeMap<String, u64>>,
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
    Incident(Box<crate::incident::Incident>),
    Trailer(Trailer),
}

pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

/// Nanoseconds since the epoch of a UTC RFC 3339 time as [`rfc3339`] writes
/// it (`2026-12-01T14:00:00.250000Z`): how a header's `start_wall` is read.
pub fn unix_ns_from_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut frac = 0i64;
    if b[19] == b'.' {
        let digits = &s[20..s.len() - 1];
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        frac = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
    } else if b.len() != 20 {
        return None;
    }
    // days-from-civil (Howard Hinnant), the inverse of rfc3339's
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs * 1_000_000_000 + frac).ok()
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

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_800_000_000, 5_000), "2027-01-15T08:00:00.000005Z");
    }

    #[test]
    fn rfc3339_reads_back_what_it_wrote() {
        for (secs, nanos) in [(0, 0), (1_800_000_000, 5_000), (951_782_400, 999_999_000)] {
            let s = rfc3339(secs, nanos);
            assert_eq!(
                unix_ns_from_rfc3339(&s),
                Some(secs * 1_000_000_000 + u64::from(nanos)),
                "{s}"
            );
        }
        assert_eq!(
            unix_ns_from_rfc3339("2026-12-01T14:00:00Z"),
            Some(1_796_133_600_000_000_000)
        );
        assert_eq!(unix_ns_from_rfc3339("x"), None);
        assert_eq!(unix_ns_from_rfc3339("2026-12-01T14:00:00.Z"), None);
    }
}
