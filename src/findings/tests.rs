use super::*;
use crate::event::{Event, Kind, Tuple};
use crate::node::{parse_iptables_save, BootConfig, ConfSetting, NodeState, Sysctls};
use crate::record::KernelCounters;
use doc::facts;

fn ev(kind: Kind, proto: &str, src: &str, sport: u16, dst: &str, dport: u16) -> Event {
    let orig = Tuple {
        src: src.parse().unwrap(),
        sport,
        dst: dst.parse().unwrap(),
        dport,
    };
    let mut e = Event::new(kind, orig);
    e.ts_ns = 1;
    e.cpu = 1;
    e.netns = 7;
    e.proto = proto.to_string().into();
    e
}

fn insert_failed(sport: u16, port: u16) -> Event {
    let mut e = ev(
        Kind::InsertFailed,
        "tcp",
        "10.0.0.2",
        sport,
        "192.0.2.1",
        80,
    );
    e.nat = Some("snat".into());
    e.port = Some(port);
    e.reason = "clash with an existing entry, not resolved (insert_failed, drop)".into();
    e
}

fn invalid(reason: &str, nat: &str) -> Event {
    let mut e = ev(Kind::TcpInvalid, "tcp", "192.0.2.1", 80, "10.0.0.2", 40000);
    e.reason = reason.to_string().into();
    e.nat = Some(nat.to_string().into());
    e
}

const OVER: &str = "SEQ is over upper bound 123456 (over the window of the receiver)";
const UNDER: &str = "SEQ is under lower bound 1000 (already ACKed data retransmitted)";
const UNDER_OLD: &str =
    "nf_ct_tcp: SEQ is under the lower bound (already ACKed data retransmitted)";

fn agg(events: &[Event]) -> Aggregate {
    let mut a = Aggregate::default();
    for e in events {
        a.add(e);
    }
    a
}

fn counters(insert_failed: u64, invalid: u64) -> KernelCounters {
    KernelCounters {
        insert_failed,
        drop: insert_failed,
        invalid,
        ..Default::default()
    }
}

fn input<'a>(
    a: &'a Aggregate,
    k: Option<&'a KernelCounters>,
    node: Option<&'a NodeState>,
    kernel: &'a str,
) -> Input<'a> {
    Input {
        agg: a,
        kernel_counters: k,
        duration_s: 10.0,
        lost: 0,
        table_fill: None,
        node,
        kernel: Some(kernel),
    }
}

const MASQ: &str =
    "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.0.0.0/24 -j MASQUERADE\nCOMMIT\n";
const MASQ_RF: &str =
    "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.0.0.0/24 -j MASQUERADE --random-fully\nCOMMIT\n";
const DROP_FWD: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n";
const DROP_IN: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n";

fn node(kernel: &str, rules: &str, liberal: Option<bool>, trap: bool) -> NodeState {
    NodeState {
        kernel: Some(kernel.into()),
        sysctl: Sysctls {
            tcp_be_liberal: liberal,
            conntrack_max: Some(1000),
            conntrack_count: Some(10),
            ..Default::default()
        },
        rules: Some(parse_iptables_save(rules)),
        boot: BootConfig {
            be_liberal_settings: vec![ConfSetting {
                file: "/etc/sysctl.d/90-ct.conf".into(),
                line: 3,
                value: "1".into(),
            }],
            conntrack_modules_load: if trap {
                vec![]
            } else {
                vec!["/etc/modules-load.d/ct.conf: nf_conntrack".into()]
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn find<'a>(v: &'a [Finding], kind: &str) -> &'a Finding {
    v.iter().find(|f| f.kind == kind).unwrap_or_else(|| {
        panic!(
            "no {kind} in {:?}",
            v.iter().map(|f| &f.kind).collect::<Vec<_>>()
        )
    })
}

#[test]
fn snat_race_counts_share_evidence_and_kernel_agreement() {
    let mut evs: Vec<Event> = (0..4).map(|i| insert_failed(40000 + i, 1024)).collect();
    for i in 0..36 {
        let mut n = ev(
            Kind::NatAlloc,
            "tcp",
            "10.0.0.2",
            41000 + i,
            "192.0.2.1",
            80,
        );
        n.nat = Some("snat".into());
        evs.push(n);
    }
    let a = agg(&evs);
    let k = counters(4, 0);
    let v = evaluate(&input(&a, Some(&k), None, "6.1.0-27-cloud-amd64"));
    let f = find(&v, "snat_race");
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.what.count, 4);
    assert_eq!(f.what.kernel_count, Some(4));
    assert_eq!(f.what.share, Some(4.0 / 36.0));
    assert_eq!(f.what.rate_per_s, Some(0.4));
    assert!(f.what.summary.contains("agrees: 4"), "{}", f.what.summary);
    assert!(f.what.summary.contains("11.1% of 36"), "{}", f.what.summary);
    assert_eq!(f.evidence.examples.len(), EXAMPLES);
    assert_eq!(f.evidence.destinations[0].key, "192.0.2.1:80");
    assert_eq!(f.evidence.destinations[0].count, 4);
    assert_eq!(f.evidence.ports[0].key, "1024");
    assert_eq!(f.evidence.cpus[0].key, "cpu1");
    // no node state offline: generic advice
    assert!(f.mitigation[0].contains("--random-fully"));
}

#[test]
fn snat_race_reports_kernel_disagreement() {
    let a = agg(&[insert_failed(1, 1024)]);
    let k = counters(3, 0);
    let v = evaluate(&input(&a, Some(&k), None, "6.12.0"));
    let f = find(&v, "snat_race");
    assert!(f.what.summary.contains("says 3"), "{}", f.what.summary);
}

#[test]
fn snat_race_mitigation_fits_the_rules() {
    let a = agg(&[insert_failed(1, 1024)]);
    let plain = node("6.1.0", MASQ, Some(false), false);
    let v = evaluate(&input(&a, None, Some(&plain), "6.1.0"));
    let f = find(&v, "snat_race");
    assert!(
        f.mitigation[0].starts_with("add --random-fully to this rule")
            && f.mitigation[0]
                .contains("-R POSTROUTING 1 -s 10.0.0.0/24 -j MASQUERADE --random-fully"),
        "{:?}",
        f.mitigation
    );
    assert!(f.evidence.config[0].contains("(no --random-fully)"));
    let rf = node("6.1.0", MASQ_RF, Some(false), false);
    let v = evaluate(&input(&a, None, Some(&rf), "6.1.0"));
    let f = find(&v, "snat_race");
    assert!(
        f.mitigation[0].contains("already has --random-fully")
            && f.mitigation[0].contains("SNAT addresses"),
        "{:?}",
        f.mitigation
    );
    let single = node(
        "6.1.0",
        "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j SNAT --to-source 192.0.2.9:1024 --random-fully\nCOMMIT\n",
        Some(false),
        false,
    );
    let v = evaluate(&input(&a, None, Some(&single), "6.1.0"));
    assert!(find(&v, "snat_race")
        .mitigation
        .iter()
        .any(|m| m.contains("only 1 address:port")));
}

#[test]
fn insert_failures_without_nat_are_not_called_a_snat_race() {
    let mut e = ev(
        Kind::InsertFailed,
        "udp",
        "10.0.0.2",
        5353,
        "10.96.0.10",
        53,
    );
    e.reason = "clash".into();
    let a = agg(&[e]);
    let v = evaluate(&input(&a, None, None, "6.1.0"));
    assert!(v.iter().all(|f| f.kind != "snat_race"));
    assert!(find(&v, "insert_failed").what.summary.contains("1 UDP"));
}

#[test]
fn window_reasons_reset_by_kernel_version() {
    let k60 = Some((6, 0));
    let k61 = Some((6, 1));
    assert_eq!(reason_resets(k60, UNDER), Some(true));
    assert_eq!(reason_resets(k60, UNDER_OLD), Some(true));
    assert_eq!(reason_resets(k61, UNDER), Some(false));
    assert_eq!(
        reason_resets(
            k61,
            "ignored ACK under lower bound 5 (possible overly delayed)"
        ),
        Some(false)
    );
    assert_eq!(reason_resets(k61, OVER), Some(true));
    assert_eq!(reason_resets(k60, OVER), Some(true));
    assert_eq!(
        reason_resets(
            Some((5, 10)),
            "ACK is over the upper bound (ACKed data not seen yet)"
        ),
        Some(true)
    );
    assert_eq!(reason_resets(None, UNDER), None);
}

#[test]
fn tcp_invalid_reset_wording_depends_on_the_kernel() {
    let a = agg(&[invalid(UNDER_OLD, "snat")]);
    let v = evaluate(&input(&a, None, None, "5.10.0-30-cloud-amd64"));
    let f = find(&v, "tcp_invalid_reset");
    assert!(
        f.why.contains("5.10, ≤ 6.0") && f.why.contains("spurious retransmissions"),
        "{}",
        f.why
    );
    assert_eq!(f.severity, Severity::Critical);
    assert!(
        f.what.summary.contains("1 under the lower bound"),
        "{}",
        f.what.summary
    );

    let a = agg(&[invalid(OVER, "snat")]);
    let v = evaluate(&input(&a, None, None, "6.1.0-27-cloud-amd64"));
    let f = find(&v, "tcp_invalid_reset");
    assert!(
        f.why.contains("6.1, ≥ 6.1") && f.why.contains("IGNOREs"),
        "{}",
        f.why
    );
    assert!(f.what.summary.contains("1 over the upper bound"));
    // no RST seen on 6.1: warning; with the node's RST: critical
    assert_eq!(f.severity, Severity::Warning);
    let a = agg(&[
        invalid(OVER, "snat"),
        ev(Kind::HostRst, "tcp", "10.0.0.9", 1, "192.0.2.1", 80),
    ]);
    let v = evaluate(&input(&a, None, None, "6.1.0"));
    let f = find(&v, "tcp_invalid_reset");
    assert_eq!(f.severity, Severity::Critical);
    assert!(f.what.summary.contains("sent 1 RSTs"));
    // RSTs of other network namespaces are not this node's
    let mut other = ev(Kind::HostRst, "tcp", "10.9.9.9", 1, "192.0.2.1", 80);
    other.netns = 99;
    let mut a = Aggregate::for_netns(Some(7));
    for e in [invalid(OVER, "snat"), other.clone(), other] {
        a.add(&e);
    }
    let v = evaluate(&input(&a, None, None, "6.1.0"));
    let f = find(&v, "tcp_invalid_reset");
    assert!(f.what.summary.contains("sent 0 RSTs"), "{}", f.what.summary);
    assert_eq!(f.severity, Severity::Warning);
    // stable mode sees the node's own RST as INVALID too (OUTPUT hook)
    let mut own = ev(
        Kind::TcpInvalid,
        "tcp",
        "198.51.100.1",
        40000,
        "192.0.2.1",
        80,
    );
    own.hook = Some("output".into());
    let a = agg(&[invalid(OVER, "snat"), own]);
    let v = evaluate(&input(&a, None, None, "6.18.0"));
    let f = find(&v, "tcp_invalid_reset");
    assert_eq!(f.what.count, 2);
    assert!(
        f.what
            .summary
            .contains("(1 from the network, 1 sent by the node itself"),
        "{}",
        f.what.summary
    );
}

#[test]
fn tcp_invalid_mitigation_be_liberal_off_and_on() {
    let a = agg(&[invalid(OVER, "snat")]);
    let off = node("6.1.0", MASQ, Some(false), false);
    let v = evaluate(&input(&a, None, Some(&off), "6.1.0"));
    let f = find(&v, "tcp_invalid_reset");
    assert!(
        f.mitigation[0].starts_with("sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1"),
        "{:?}",
        f.mitigation
    );
    assert!(f.mitigation.iter().any(|m| m.contains("iptables -I INPUT")));

    let on = node("6.1.0", MASQ, Some(true), false);
    let v = evaluate(&input(&a, None, Some(&on), "6.1.0"));
    let f = find(&v, "tcp_invalid_reset");
    assert!(
        f.mitigation[0].contains("nf_conntrack_tcp_ignore_invalid_rst=1"),
        "{:?}",
        f.mitigation
    );
    assert!(!f
        .mitigation
        .iter()
        .any(|m| m.starts_with("sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal")));
}

#[test]
fn tcp_invalid_mitigation_names_the_boot_order_trap() {
    let a = agg(&[invalid(OVER, "snat")]);
    let trap = node("6.1.0", MASQ, Some(false), true);
    let v = evaluate(&input(&a, None, Some(&trap), "6.1.0"));
    let f = find(&v, "tcp_invalid_reset");
    assert!(
        f.mitigation[0].contains("/etc/sysctl.d/90-ct.conf")
            && f.mitigation[0].contains("modules-load.d"),
        "{:?}",
        f.mitigation
    );
    // the node finding is there too, critical because the running value is 0
    let b = find(&v, "be_liberal_boot_order");
    assert_eq!(b.severity, Severity::Critical);
    assert_eq!(b.origin, Origin::Node);
}

#[test]
fn invalid_drop_in_forward_does_not_cover_snat_but_covers_dnat() {
    let fwd_only = node("6.1.0", &format!("{DROP_FWD}{MASQ}"), Some(false), false);
    let a = agg(&[invalid(OVER, "snat")]);
    let v = evaluate(&input(&a, None, Some(&fwd_only), "6.1.0"));
    let f = find(&v, "tcp_invalid_reset");
    let step = f
        .mitigation
        .iter()
        .find(|m| m.contains("iptables -I INPUT"))
        .expect("INPUT step");
    assert!(step.contains("does not cover INPUT"), "{step}");
    assert!(!f.mitigation.iter().any(|m| m.contains("-I FORWARD")));

    let a = agg(&[invalid(OVER, "dnat")]);
    let v = evaluate(&input(&a, None, Some(&fwd_only), "6.1.0"));
    let f = find(&v, "tcp_invalid_reset");
    assert!(
        !f.mitigation.iter().any(|m| m.contains("iptables -I")),
        "{:?}",
        f.mitigation
    );

    let in_only = node("6.1.0", &format!("{DROP_IN}{MASQ}"), Some(false), false);
    let a = agg(&[invalid(OVER, "snat")]);
    let v = evaluate(&input(&a, None, Some(&in_only), "6.1.0"));
    let f = find(&v, "tcp_invalid_reset");
    assert!(
        !f.mitigation.iter().any(|m| m.contains("iptables -I")),
        "{:?}",
        f.mitigation
    );
    let a = agg(&[invalid(OVER, "dnat")]);
    let v = evaluate(&input(&a, None, Some(&in_only), "6.1.0"));
    assert!(find(&v, "tcp_invalid_reset")
        .mitigation
        .iter()
        .any(|m| m.contains("iptables -I FORWARD")));
}

#[test]
fn node_findings_for_each_configuration() {
    // no --random-fully, FORWARD-only drop, be_liberal 0, trap
    let n = node("6.1.0", &format!("{DROP_FWD}{MASQ}"), Some(false), true);
    let v = node_findings(&n);
    let kinds: Vec<&str> = v.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "be_liberal_boot_order",
            "nat_without_random_fully",
            "invalid_drop_wrong_chain"
        ]
    );
    // with --random-fully, INPUT drop, be_liberal 1, no trap: clean
    let n = node("6.1.0", &format!("{DROP_IN}{MASQ_RF}"), Some(true), false);
    assert!(node_findings(&n).is_empty(), "{:?}", node_findings(&n));
    // be_liberal 1 now, trap still armed: a warning, not critical
    let n = node("6.1.0", MASQ_RF, Some(true), true);
    let v = node_findings(&n);
    assert_eq!(
        find(&v, "be_liberal_boot_order").severity,
        Severity::Warning
    );
    // nothing mitigates INVALID: warning on 6.0, info on 6.1
    let n = node("6.0.9", MASQ_RF, Some(false), false);
    assert_eq!(
        find(&node_findings(&n), "invalid_unmitigated").severity,
        Severity::Warning
    );
    let n = node("6.1.0", MASQ_RF, Some(false), false);
    let f = node_findings(&n);
    let f = find(&f, "invalid_unmitigated");
    assert_eq!(f.severity, Severity::Info);
    assert!(f.what.summary.contains("over the window's upper bound"));
}

#[test]
fn table_full_thresholds() {
    assert!(table_full(Some((70, 100)), 0, Origin::Traced).is_none());
    assert_eq!(
        table_full(Some((85, 100)), 0, Origin::Traced)
            .unwrap()
            .severity,
        Severity::Warning
    );
    assert_eq!(
        table_full(Some((96, 100)), 0, Origin::Traced)
            .unwrap()
            .severity,
        Severity::Critical
    );
    assert_eq!(
        table_full(Some((85, 100)), 3, Origin::Traced)
            .unwrap()
            .severity,
        Severity::Critical
    );
    assert!(table_full(Some((0, 0)), 0, Origin::Traced).is_none());
}

#[test]
fn ignored_masked_and_clash_are_info_and_do_not_fail_check() {
    let mut ign = ev(Kind::TcpIgnored, "tcp", "192.0.2.1", 80, "10.0.0.2", 1);
    ign.reason = UNDER.into();
    let a = agg(&[
        ign,
        ev(Kind::TcpLiberal, "tcp", "192.0.2.1", 80, "10.0.0.2", 1),
        ev(
            Kind::ClashResolved,
            "udp",
            "10.0.0.2",
            5000,
            "10.96.0.10",
            53,
        ),
    ]);
    let v = evaluate(&input(&a, None, None, "6.1.0"));
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|f| f.severity == Severity::Info));
    assert!(find(&v, "tcp_ignored").why.contains("≤ 6.0"));
    assert!(v.iter().all(|f| !counts_for_exit(f, &[], false)));
    let fail_on = vec!["clash_resolved".to_string()];
    assert!(counts_for_exit(find(&v, "clash_resolved"), &fail_on, false));
    assert!(!counts_for_exit(find(&v, "tcp_ignored"), &fail_on, false));
}

#[test]
fn node_advice_does_not_fail_check_unless_asked() {
    let n = node("6.1.0", MASQ, Some(false), false);
    let a = Aggregate::default();
    let v = evaluate(&input(&a, None, Some(&n), "6.1.0"));
    let f = find(&v, "nat_without_random_fully");
    assert!(!counts_for_exit(f, &[], false));
    assert!(counts_for_exit(f, &[], true), "doctor counts it");
    assert!(counts_for_exit(
        f,
        &["nat_without_random_fully".into()],
        false
    ));
}

#[test]
fn most_serious_first() {
    let a = agg(&[
        ev(
            Kind::ClashResolved,
            "udp",
            "10.0.0.2",
            5000,
            "10.96.0.10",
            53,
        ),
        insert_failed(1, 1024),
    ]);
    let mut i = input(&a, None, None, "6.1.0");
    i.lost = 5;
    let v = evaluate(&i);
    let kinds: Vec<&str> = v.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(kinds, vec!["snat_race", "events_lost", "clash_resolved"]);
}

#[test]
fn fail_on_refuses_unknown_kinds() {
    assert!(validate_fail_on(&["snat_race".into()]).is_ok());
    let e = validate_fail_on(&["snat".into()]).unwrap_err().to_string();
    assert!(
        e.contains("unknown finding kind 'snat'") && e.contains("snat_race"),
        "{e}"
    );
}

#[test]
fn render_names_severity_evidence_and_fix() {
    let a = agg(&[insert_failed(40000, 1024)]);
    let v = evaluate(&input(&a, None, None, "6.1.0"));
    let t = render(&v);
    assert!(t.contains("[CRITICAL] NAT port-allocation race"), "{t}");
    assert!(
        t.contains("Example: insert_failed cpu1 tcp 10.0.0.2:40000 > 192.0.2.1:80 port 1024"),
        "{t}"
    );
    assert!(t.contains("Fix: add --random-fully"), "{t}");
    assert_eq!(render(&[]), "No findings.\n");
}

#[test]
fn hot_destinations_are_failures_of_this_netns_not_symptoms() {
    let a = agg(&[
        insert_failed(1, 1024),
        insert_failed(2, 1024),
        ev(Kind::SynRetrans, "tcp", "10.9.0.2", 1, "192.0.2.99", 8000),
        ev(Kind::SynRetrans, "tcp", "10.9.0.2", 1, "192.0.2.99", 8000),
        ev(Kind::SynRetrans, "tcp", "10.9.0.2", 1, "192.0.2.99", 8000),
        invalid(OVER, "snat"),
    ]);
    let f = doc::facts(&input(&a, None, None, "6.1.0"));
    let keys: Vec<(&str, u64)> = f
        .hot_destinations
        .iter()
        .map(|c| (c.key.as_str(), c.count))
        .collect();
    assert_eq!(keys, vec![("192.0.2.1:80", 2), ("10.0.0.2:40000", 1)]);
    assert_eq!(f.insert_failed, 2);
}

/// Docker's MASQUERADE of docker0, as `iptables-save -c` shows it on a busy host.
const DOCKER: &str = "*nat\n:POSTROUTING ACCEPT [10291:643595]\n:DOCKER - [0:0]\n[48213:2892780] -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n[0:0] -A DOCKER -i docker0 -j RETURN\nCOMMIT\n";
/// The same after someone followed the -D/-A advice and Docker restarted:
/// Docker's rule is back ahead of the --random-fully copy.
const SHADOWED: &str = "*nat\n:POSTROUTING ACCEPT [10291:643595]\n[48213:2892780] -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n[0:0] -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE --random-fully\nCOMMIT\n";

#[test]
fn docker_managed_rule_gets_the_fix_that_survives_a_restart() {
    let n = node("6.1.0", &format!("{DROP_IN}{DOCKER}"), Some(true), false);
    let v = node_findings(&n);
    let f = find(&v, "nat_without_random_fully");
    let m = &f.mitigation;
    assert!(
        m[0].contains("Docker re-creates it")
            && m[0].contains("After=docker.service")
            && m[0].contains(
                "iptables -t nat -I POSTROUTING 1 -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE --random-fully"
            ),
        "{m:?}"
    );
    assert!(
        m[1].contains("ip saddr 172.17.0.0/16 oifname != \"docker0\" masquerade fully-random")
            && m[1].contains("priority srcnat - 1"),
        "{m:?}"
    );
    // never the edit Docker undoes: delete and append
    assert!(!m.iter().any(|s| s.contains("-t nat -A ")), "{m:?}");
    assert!(
        f.evidence.config[0].contains("Docker's"),
        "{:?}",
        f.evidence.config
    );
    // the traced verdict gives the same fix
    let a = agg(&[insert_failed(1, 1024)]);
    let v = evaluate(&input(&a, None, Some(&n), "6.1.0"));
    let f = find(&v, "snat_race");
    assert!(
        f.mitigation[0].contains("-I POSTROUTING 1"),
        "{:?}",
        f.mitigation
    );
    // a rule that is not Docker's is replaced in place, not moved
    let plain = node("6.1.0", &format!("{DROP_IN}{MASQ}"), Some(true), false);
    let v = node_findings(&plain);
    let m = &find(&v, "nat_without_random_fully").mitigation;
    assert!(
        m[0].contains("-R POSTROUTING 1") && !m[0].contains("Docker"),
        "{m:?}"
    );
}

#[test]
fn shadowed_random_fully_rule_is_reported_and_removed_first() {
    let n = node("6.1.0", &format!("{DROP_IN}{SHADOWED}"), Some(true), false);
    let v = node_findings(&n);
    let f = find(&v, "nat_without_random_fully");
    assert_eq!(f.what.count, 2, "the lacking rule and the shadowed one");
    assert!(
        f.what.summary.contains("1 of 2")
            && f.what
                .summary
                .contains("never sees a connection: it is shadowed"),
        "{}",
        f.what.summary
    );
    assert!(
        f.evidence
            .config
            .iter()
            .any(|c| c.contains("[0 packets] shadowed by iptables nat POSTROUTING rule 1")),
        "{:?}",
        f.evidence.config
    );
    let m = &f.mitigation;
    assert!(
        m[0].contains("rule 2 has --random-fully but is shadowed")
            && m[0].contains("48213 connections took the earlier rule, 0 took this one")
            && m[0].ends_with("iptables -t nat -D POSTROUTING 2"),
        "{m:?}"
    );
    assert!(m[1].contains("-I POSTROUTING 1"), "{m:?}");
    let a = Aggregate::default();
    let fa = facts(&input(&a, None, Some(&n), "6.1.0"));
    assert_eq!(
        (
            fa.nat_rules,
            fa.nat_rules_random_fully,
            fa.nat_rules_shadowed
        ),
        (Some(2), Some(1), Some(1))
    );
    // without counters (plain iptables-save) the position alone says it
    let plain = SHADOWED
        .replace("[48213:2892780] ", "")
        .replace("[0:0] ", "");
    let n = node("6.1.0", &format!("{DROP_IN}{plain}"), Some(true), false);
    let v = node_findings(&n);
    let m = &find(&v, "nat_without_random_fully").mitigation;
    assert!(m[0].contains("from the positions alone"), "{m:?}");
    // the copy ahead of the plain rule is not shadowed
    let ahead = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE --random-fully\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n";
    let n = node("6.1.0", &format!("{DROP_IN}{ahead}"), Some(true), false);
    assert!(n.shadowed().is_empty());
    let v = node_findings(&n);
    assert!(!find(&v, "nat_without_random_fully")
        .what
        .summary
        .contains("shadowed"));
}

#[test]
fn one_port_pool_is_widened_before_random_fully() {
    for to in ["192.0.2.9:1024", "192.0.2.9-192.0.2.9:1024-1024"] {
        let rules = format!(
            "{DROP_IN}*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.0.0.0/24 -j SNAT --to-source {to}\nCOMMIT\n"
        );
        let n = node("6.1.0", &rules, Some(true), false);
        let v = node_findings(&n);
        for kind in ["nat_without_random_fully", "snat_pool_small"] {
            let m = &find(&v, kind).mitigation;
            assert!(
                m[0].contains("single port")
                    && m[0].contains("--random-fully cannot help")
                    && m[0].contains("First give it more ports")
                    && !m[0].starts_with("add --random-fully"),
                "{to} {kind}: {m:?}"
            );
        }
        let a = agg(&[insert_failed(1, 1024)]);
        let v = evaluate(&input(&a, None, Some(&n), "6.1.0"));
        let m = &find(&v, "snat_race").mitigation;
        assert!(
            m[0].contains("--random-fully cannot help") && m[0].contains("more addresses"),
            "{to}: {m:?}"
        );
    }
}

#[test]
fn rules_that_could_not_be_read_are_named_not_passed_over() {
    let mut n = node("6.1.0", MASQ, Some(true), false);
    n.rules = None;
    n.notes = vec![
        "iptables-save failed: iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)".into(),
        "the NAT and filter rules need root to read (iptables-save, nft)".into(),
    ];
    let nr = not_read(&n);
    assert_eq!(nr.len(), 1, "{nr:?}");
    assert!(nr[0].contains("NAT and filter rules") && nr[0].contains("no verdict"));
    // no rule verdict is made up from rules never seen
    let v = node_findings(&n);
    assert!(
        !v.iter().any(|f| f.kind == "nat_without_random_fully"
            || f.kind == "invalid_drop_wrong_chain"
            || f.kind == "invalid_unmitigated"),
        "{v:?}"
    );
    // a traced race says the rules were not read, and gives the general fix
    let a = agg(&[insert_failed(1, 1024)]);
    let v = evaluate(&input(&a, None, Some(&n), "6.1.0"));
    let f = find(&v, "snat_race");
    assert!(
        f.evidence
            .config
            .iter()
            .any(|c| c.starts_with("NAT rules not read: ") && c.contains("you must be root")),
        "{:?}",
        f.evidence.config
    );
    // everything read: nothing to name
    assert!(not_read(&node("6.1.0", MASQ, Some(true), false)).is_empty());
}
