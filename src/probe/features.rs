//! What the running kernel offers to ctrace: the resolver's input. Captured as
//! JSON (`ctrace probes --features`) from real kernels under tests/fixtures/.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Flavour, Probe};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    pub kernel: String,
    pub arch: String,
    /// /sys/kernel/btf/vmlinux exists.
    pub btf: bool,
    /// The kprobe PMU exists (kprobes are built in and can be attached).
    pub kprobe_pmu: bool,
    /// Each symbol a probe names (`probe::symbols()`): present in /proc/kallsyms?
    pub symbols: BTreeMap<String, bool>,
    /// kfree_skb's tracepoint carries a drop reason (5.17+).
    pub kfree_skb_reason: bool,
    /// tcp_send_reset fires for the no-socket RST (6.10+: it has an sk_rst_reason).
    pub tcp_send_reset_nosk: bool,
    /// "probe:flavour" -> "ok" or the load error. Absent: not tried.
    #[serde(default)]
    pub loads: BTreeMap<String, String>,
}

pub fn load_key(p: Probe, f: Flavour) -> String {
    format!("{}:{}", p.name(), f.name())
}

impl Features {
    pub fn has(&self, sym: &str) -> bool {
        self.symbols.get(sym).copied().unwrap_or(false)
    }

    /// None: not tried yet. Some(Ok) loaded. Some(Err(why)).
    pub fn load(&self, p: Probe, f: Flavour) -> Option<Result<(), String>> {
        self.load_named(&load_key(p, f))
    }

    pub fn load_named(&self, key: &str) -> Option<Result<(), String>> {
        self.loads
            .get(key)
            .map(|v| if v == "ok" { Ok(()) } else { Err(v.clone()) })
    }
}

/// Everything that can be known without loading a program.
pub fn detect_static(symbols: &[&str]) -> Features {
    detect_static_at(Path::new("/"), symbols)
}

/// The same, with /proc and /sys read under `root` (tests point it at fixtures).
pub fn detect_static_at(root: &Path, wanted: &[&str]) -> Features {
    let kallsyms = std::fs::read_to_string(root.join("proc/kallsyms")).unwrap_or_default();
    let mut symbols: BTreeMap<String, bool> =
        wanted.iter().map(|s| (s.to_string(), false)).collect();
    for line in kallsyms.lines() {
        // "ffffffff81f8ec20 T __nf_conntrack_confirm\t[nf_conntrack]"
        let mut it = line.split_whitespace();
        let (_, _, name) = (it.next(), it.next(), it.next());
        if let Some(name) = name {
            if let Some(v) = symbols.get_mut(name) {
                *v = true;
            }
        }
    }
    let btf_path = root.join("sys/kernel/btf/vmlinux");
    let facts = btf_facts(&btf_path);
    let (kfree_skb_reason, tcp_send_reset_nosk) = (facts.reason, facts.rst);
    if root == Path::new("/") {
        let _ = RESET_FNS.set(reset_fn_ranges_in(&kallsyms));
        let _ = CASTS.set(facts.casts);
    }
    Features {
        kernel: crate::sys::kernel_release(),
        arch: std::env::consts::ARCH.to_string(),
        btf: btf_path.exists(),
        kprobe_pmu: root
            .join("sys/bus/event_source/devices/kprobe/type")
            .exists(),
        symbols,
        kfree_skb_reason,
        tcp_send_reset_nosk,
        loads: BTreeMap::new(),
    }
}

static RESET_FNS: std::sync::OnceLock<[u64; 4]> = std::sync::OnceLock::new();
static CASTS: std::sync::OnceLock<Casts> = std::sync::OnceLock::new();

/// vmlinux BTF ids of the types BPF casts kernel memory to with
/// `bpf_rdonly_cast` (6.2+), so that their fields are plain loads instead of
/// `bpf_probe_read_kernel` calls; all 0 where the kfunc is missing.
#[derive(Clone, Copy, Default)]
struct Casts {
    nf_conn: u32,
    /// struct iphdr, ipv6hdr, tcphdr, udphdr (`pkt_btf_id` in bpf/common.bpf.h).
    packet: [u32; 4],
}

fn casts() -> Casts {
    *CASTS.get_or_init(|| btf_facts(Path::new("/sys/kernel/btf/vmlinux")).casts)
}

/// The vmlinux BTF id of `struct nf_conn` when BPF can cast a conntrack
/// entry to it (`ct_btf_id` in bpf/common.bpf.h), else 0: only where the type
/// is in vmlinux BTF (conntrack built in: a module's types are in module BTF,
/// which `bpf_rdonly_cast` does not take) and the kfunc exists (6.2+). Given
/// from here, not by a CO-RE type-id relocation: vmlinux also has
/// `nf_conn___init` (the conntrack kfuncs' flavour), which makes that
/// relocation ambiguous. Read from the kernel's BTF once per process (the
/// feature scan fills it on the way).
pub fn ct_btf_id() -> u32 {
    casts().nf_conn
}

/// The vmlinux BTF ids of `struct iphdr`, `ipv6hdr`, `tcphdr` and `udphdr`
/// where BPF can cast a packet's headers to them (`pkt_btf_id` in
/// bpf/common.bpf.h: every header read is then a few plain loads, where it
/// was two `bpf_probe_read_kernel` calls, a fifth of a drop event's cost),
/// else zeros (before 6.2: the probe reads stay). Their layout is the wire
/// format, the same on every kernel; only the ids differ.
pub fn packet_btf_ids() -> [u32; 4] {
    casts().packet
}

/// `[start, end)` of `tcp_v4_send_reset` and of `tcp_v6_send_reset` on the
/// running kernel (zeros where unknown): the symptoms probe reports a host
/// RST's location as the frame that called them. Read from /proc/kallsyms once
/// per process (the feature scan fills it on the way).
pub fn reset_fn_ranges() -> [u64; 4] {
    *RESET_FNS.get_or_init(|| {
        reset_fn_ranges_in(&std::fs::read_to_string("/proc/kallsyms").unwrap_or_default())
    })
}

/// The same, from the text of a kallsyms file. A function ends where the next
/// text symbol starts.
pub fn reset_fn_ranges_in(kallsyms: &str) -> [u64; 4] {
    let mut text = Vec::new();
    let (mut v4, mut v6) = (0u64, 0u64);
    for line in kallsyms.lines() {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(a) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if a == 0 {
            continue; // addresses hidden (kptr_restrict)
        }
        text.push(a);
        match name {
            "tcp_v4_send_reset" if v4 == 0 => v4 = a,
            "tcp_v6_send_reset" if v6 == 0 => v6 = a,
            _ => {}
        }
    }
    text.sort_unstable();
    let end = |start: u64| -> u64 {
        if start == 0 {
            return 0;
        }
        let i = text.partition_point(|&a| a <= start);
        text.get(i).copied().unwrap_or(0)
    };
    let (e4, e6) = (end(v4), end(v6));
    let keep = |s: u64, e: u64| if e > s { (s, e) } else { (0, 0) };
    let (v4, e4) = keep(v4, e4);
    let (v6, e6) = keep(v6, e6);
    [v4, e4, v6, e6]
}

/// Reads three facts from the kernel's BTF: does kfree_skb's tracepoint have
/// a reason (3+ arguments), does `enum sk_rst_reason` exist (6.10+, where
/// tcp_send_reset also fires for the RST sent without a socket), and can an
/// nf_conn and the packet headers be cast with bpf_rdonly_cast ([`Casts`]).
struct BtfFacts {
    reason: bool,
    rst: bool,
    casts: Casts,
}

fn btf_facts(path: &Path) -> BtfFacts {
    use libbpf_rs::btf::types::{Enum, Func, FuncProto, Struct, Typedef};
    use libbpf_rs::btf::{Btf, BtfKind};
    let Ok(btf) = Btf::from_path(path) else {
        return BtfFacts {
            reason: false,
            rst: false,
            casts: Casts::default(),
        };
    };
    let reason = btf
        .type_by_name::<Typedef>("btf_trace_kfree_skb")
        .and_then(|t| t.next_type())
        .map(|t| t.skip_mods_and_typedefs())
        .and_then(|t| {
            // typedef -> pointer -> func_proto
            if t.kind() == BtfKind::Ptr {
                t.next_type()
            } else {
                Some(t)
            }
        })
        .and_then(|t| FuncProto::try_from(t).ok())
        .map(|p| p.len() >= 4) // (void *ctx, skb, location, reason, ...)
        .unwrap_or(false);
    let rst = btf.type_by_name::<Enum>("sk_rst_reason").is_some();
    let mut casts = Casts::default();
    if btf.type_by_name::<Func>("bpf_rdonly_cast").is_some() {
        let id = |name: &str| {
            btf.type_by_name::<Struct>(name)
                .map(|t| u32::from(t.type_id()))
                .unwrap_or(0)
        };
        let packet = ["iphdr", "ipv6hdr", "tcphdr", "udphdr"].map(id);
        casts.nf_conn = id("nf_conn");
        // all four or none: the BPF side tests the first
        if packet.iter().all(|&i| i != 0) {
            casts.packet = packet;
        }
    }
    BtfFacts { reason, rst, casts }
}

#[cfg(test)]
mod tests {
    use super::reset_fn_ranges_in;

    #[test]
    fn reset_fn_ranges_end_at_the_next_text_symbol() {
        let k = "\
ffffffff81a00000 T tcp_v4_rcv
ffffffff81a01000 D some_data
ffffffff81a02000 t tcp_v4_send_reset
ffffffff81a02800 r not_text
ffffffff81a02900 T tcp_v4_send_synack
ffffffffc0100000 t tcp_v6_send_reset\t[ipv6]
ffffffffc0100400 t tcp_v6_rcv\t[ipv6]
";
        assert_eq!(
            reset_fn_ranges_in(k),
            [
                0xffffffff81a02000,
                0xffffffff81a02900,
                0xffffffffc0100000,
                0xffffffffc0100400
            ]
        );
        // hidden addresses (kptr_restrict) or a missing function: zeros
        let hidden = "0000000000000000 t tcp_v4_send_reset\n0000000000000000 T tcp_v4_rcv\n";
        assert_eq!(reset_fn_ranges_in(hidden), [0; 4]);
        let last = "ffffffff81a02000 t tcp_v4_send_reset\n";
        assert_eq!(reset_fn_ranges_in(last), [0; 4]);
    }
}
