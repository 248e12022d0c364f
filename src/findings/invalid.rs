//! Verdicts on TCP window tracking: INVALID segments that escape de-NAT and
//! provoke the node's RST, and the ones be_liberal masked or the kernel
//! IGNOREd; with the be_liberal and INVALID-drop steps that fit the node.

use std::fmt::Write as _;

use super::evidence::{cpus, rate, reasons, simple_traced, top_dest, top_flows, Collector};
use super::text::kv_name;
use super::{Evidence, Finding, Input, Origin, Severity, What, EXAMPLES};
use crate::event::{Kind, WindowLog};
use crate::node::{Hook, NodeState};

/// Window reasons by what the kernel does with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonClass {
    /// SEQ/ACK over the upper bound: INVALID on every kernel.
    OverUpper,
    /// Under the lower bound (retransmitted / delayed): INVALID ≤ 6.0, IGNORED ≥ 6.1.
    UnderLower,
    Other,
}

impl ReasonClass {
    pub fn of(w: Option<WindowLog>) -> ReasonClass {
        match w {
            Some(w) if w.under_lower() => ReasonClass::UnderLower,
            Some(_) => ReasonClass::OverUpper,
            None => ReasonClass::Other,
        }
    }
}

/// Classifies the kernel's wording (6.1+ and older forms), for reasons that
/// carry no code (recordings made before `window_log`).
pub fn reason_class(reason: &str) -> ReasonClass {
    ReasonClass::of(crate::probe::window::reason::class_of_kernel_text(reason))
}

/// 6.1 made tcp_in_window IGNORE retransmitted/under-lower-bound segments.
pub fn ignores_under_lower_bound(kernel: Option<(u32, u32)>) -> Option<bool> {
    kernel.map(|v| v >= (6, 1))
}

/// Whether a segment with this reason is INVALID (escapes de-NAT, provokes the
/// node's RST) on this kernel. None: the kernel version is unknown.
pub fn reason_resets(kernel: Option<(u32, u32)>, reason: &str) -> Option<bool> {
    match reason_class(reason) {
        ReasonClass::UnderLower => ignores_under_lower_bound(kernel).map(|i| !i),
        _ => Some(true),
    }
}

/// Where escaped segments go: INPUT when the connection was source-NATed by
/// this node (the reply is addressed to the node), FORWARD when it was DNATed
/// to a pod (ClusterIP) and the segment is routed on.
fn needed_hooks(c: &Collector, node: Option<&NodeState>) -> Vec<Hook> {
    let snat = c.nat_count(Kind::TcpInvalid, |n| n.contains("snat"));
    let dnat = c.nat_count(Kind::TcpInvalid, |n| n.contains("dnat"));
    let mut v = Vec::new();
    if snat > 0 || (dnat == 0 && node.is_some_and(|n| !n.nat_rules().is_empty())) {
        v.push(Hook::Input);
    }
    if dnat > 0 {
        v.push(Hook::Forward);
    }
    if v.is_empty() {
        v.push(Hook::Input);
    }
    v
}

fn be_liberal_steps(node: Option<&NodeState>, steps: &mut Vec<String>, config: &mut Vec<String>) {
    let persist = "persist it in /etc/sysctl.d/90-conntrack.conf AND list `nf_conntrack` in /etc/modules-load.d/nf_conntrack.conf, or systemd-sysctl runs before the module exists and the setting is silently lost at boot";
    match node {
        Some(n) if n.boot.boot_order_trap() => {
            for s in &n.boot.be_liberal_settings {
                config.push(format!(
                    "{}:{}: nf_conntrack_tcp_be_liberal = {}",
                    s.file, s.line, s.value
                ));
            }
            config.push("no nf_conntrack in any modules-load.d file".into());
            steps.push(format!(
                "be_liberal=1 is configured ({}) but does not survive boot: nf_conntrack is not in /etc/modules-load.d, so systemd-sysctl runs before the module exists. `echo nf_conntrack > /etc/modules-load.d/nf_conntrack.conf` and `sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1` now",
                n.boot
                    .be_liberal_settings
                    .last()
                    .map(|s| s.file.as_str())
                    .unwrap_or("sysctl files")
            ));
        }
        _ => steps.push(format!(
            "sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1 in the traced netns; {persist}"
        )),
    }
}

fn invalid_drop_step(
    needed: &[Hook],
    node: Option<&NodeState>,
    steps: &mut Vec<String>,
    config: &mut Vec<String>,
) {
    let mut missing = Vec::new();
    for h in needed {
        match node.and_then(|n| n.invalid_drop_on(*h)) {
            Some(true) => {}
            _ => missing.push(*h),
        }
    }
    if let Some(r) = node.and_then(|n| n.rules.as_ref()) {
        for d in &r.invalid_drops {
            config.push(format!(
                "INVALID drop in {} {} (reached from {}): {}",
                d.table,
                d.chain,
                if d.hooks.is_empty() {
                    "no base chain".to_string()
                } else {
                    d.hooks
                        .iter()
                        .map(|h| h.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                d.rule
            ));
        }
    }
    for h in missing {
        let wrong = node
            .and_then(|n| n.rules.as_ref())
            .is_some_and(|r| !r.invalid_drops.is_empty());
        steps.push(format!(
            "or drop them before they reach the stack: `iptables -I {h} -m conntrack --ctstate INVALID -j DROP`{}",
            if wrong {
                format!(" — the node's INVALID-drop rule does not cover {h}, the chain these segments go through{}", if h == Hook::Input { " (an escaped reply to a source-NATed connection is addressed to the node itself)" } else { "" })
            } else {
                String::new()
            }
        ));
    }
}

pub(super) fn tcp_invalid_reset(i: &Input) -> Option<Finding> {
    let s = &i.agg.stats;
    let c = &i.agg.collector;
    let n = s.count(Kind::TcpInvalid);
    if n == 0 {
        return None;
    }
    let kv = i.kernel.and_then(crate::node::kernel_version);
    let rst = c.host_rst;
    let rs = reasons(s, Kind::TcpInvalid);
    // by the verdict's code (window_log), never by its text
    let over = s.window_count(Kind::TcpInvalid, |w| !w.under_lower());
    let under = s.window_count(Kind::TcpInvalid, |w| w.under_lower());
    let mut summary = format!("{n} TCP segments classified INVALID by conntrack");
    if c.local_invalid > 0 {
        let _ = write!(
            summary,
            " ({} from the network, {} sent by the node itself: its RSTs have no conntrack entry either)",
            n.saturating_sub(c.local_invalid),
            c.local_invalid
        );
    }
    if over + under > 0 {
        let _ = write!(
            summary,
            " ({over} over the upper bound, {under} under the lower bound)"
        );
    }
    let _ = write!(
        summary,
        "; the node sent {rst} RSTs for segments no socket wanted"
    );
    if let Some(k) = i.kernel_counters {
        let _ = write!(
            summary,
            "; the kernel's invalid counter rose by {} (it counts the node's own RSTs too)",
            k.invalid
        );
    }
    let why_base = "An INVALID segment loses its conntrack entry, so NAT does not translate it back: it reaches the node's own TCP stack, which knows no such socket and answers with a RST that tears down the pod's connection (\"connection reset by peer\").";
    let why = match ignores_under_lower_bound(kv) {
        Some(true) => format!(
            "On this kernel ({}, ≥ 6.1) conntrack IGNOREs retransmitted and under-the-lower-bound segments (the classic spurious-retransmission story no longer resets); only segments over the upper bound of the window (SEQ/ACK over upper bound) are INVALID. {why_base}",
            kv_name(kv)
        ),
        Some(false) => format!(
            "On this kernel ({}, ≤ 6.0) every out-of-window segment is INVALID, including spurious retransmissions and reordered or delayed segments under the lower bound (the usual trigger on long, busy connections). {why_base}",
            kv_name(kv)
        ),
        None => format!(
            "Kernels ≤ 6.0 mark every out-of-window segment INVALID (retransmitted/under the lower bound too); ≥ 6.1 IGNOREs those and marks only segments over the upper bound INVALID. {why_base}"
        ),
    };
    let mut steps = Vec::new();
    let mut config = Vec::new();
    let liberal = i.node.and_then(|n| n.sysctl.tcp_be_liberal);
    if liberal == Some(true) {
        steps.push("be_liberal is already 1, which accepts every out-of-window segment but RSTs: the remaining INVALID segments are out-of-window RSTs or not window verdicts — set net.netfilter.nf_conntrack_tcp_ignore_invalid_rst=1 (5.14+)".into());
        config.push("net.netfilter.nf_conntrack_tcp_be_liberal = 1".into());
    } else {
        if liberal == Some(false) {
            config.push("net.netfilter.nf_conntrack_tcp_be_liberal = 0".into());
        }
        be_liberal_steps(i.node, &mut steps, &mut config);
    }
    invalid_drop_step(&needed_hooks(c, i.node), i.node, &mut steps, &mut config);
    let severity = if rst > 0 || ignores_under_lower_bound(kv) != Some(true) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        kind: "tcp_invalid_reset".into(),
        severity,
        origin: Origin::Traced,
        title: "INVALID TCP segments escape de-NAT and provoke the node's RST".into(),
        what: What {
            count: n,
            kernel_count: i.kernel_counters.map(|k| k.invalid),
            rate_per_s: rate(n, i.duration_s),
            share: None,
            summary,
        },
        evidence: Evidence {
            destinations: top_dest(c.destinations.get(&Kind::TcpInvalid)),
            flows: top_flows(c.flows.get(&Kind::TcpInvalid)),
            cpus: cpus(s, Kind::TcpInvalid),
            ports: Vec::new(),
            reasons: rs,
            config,
            examples: c
                .examples
                .get(&Kind::TcpInvalid)
                .into_iter()
                .flatten()
                .chain(c.examples.get(&Kind::HostRst).into_iter().flatten())
                .take(EXAMPLES)
                .cloned()
                .collect(),
        },
        why,
        mitigation: steps,
    })
}

pub(super) fn tcp_invalid_masked(i: &Input) -> Option<Finding> {
    let n = i.agg.stats.count(Kind::TcpLiberal);
    (n > 0).then(|| simple_traced(
        i,
        Kind::TcpLiberal,
        "tcp_invalid_masked",
        Severity::Info,
        "be_liberal accepted out-of-window segments that would have been INVALID",
        (
        format!("{n} segments would have been INVALID (and reset the connection) but nf_conntrack_tcp_be_liberal=1 accepted them"),
        "be_liberal makes conntrack accept out-of-window segments (all but RSTs): the mitigation is working.".into(),
        vec!["keep be_liberal=1 — and make sure it survives a reboot (nf_conntrack in /etc/modules-load.d)".into()],
        ),
    ))
}

pub(super) fn tcp_ignored(i: &Input) -> Option<Finding> {
    let n = i.agg.stats.count(Kind::TcpIgnored);
    let kv = i.kernel.and_then(crate::node::kernel_version);
    (n > 0).then(|| simple_traced(
        i,
        Kind::TcpIgnored,
        "tcp_ignored",
        Severity::Info,
        "Out-of-window segments IGNORED by conntrack (harmless on this kernel)",
        (
        format!("{n} retransmitted or under-the-lower-bound segments were IGNORED: not INVALID, still de-NATed, no reset"),
        format!("Since 6.1 (this kernel: {}) tcp_in_window returns IGNORE for segments under the lower bound; on ≤ 6.0 these same segments would have been INVALID and reset the connection.", kv_name(kv)),
        Vec::new(),
        ),
    ))
}
