//! The correlation stage over event fixtures: races, recoveries, UDP loss and
//! clashes, escaped segments, arrival out of order, incidents open at the end.

use super::*;
use crate::event::{Event, Kind, Tcp, Tuple};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn t(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    Tuple {
        src: src.parse().unwrap(),
        sport,
        dst: dst.parse().unwrap(),
        dport,
    }
}

/// The single-port SNAT node: every client is translated to 192.0.2.1:40000.
fn client(i: u16) -> Tuple {
    t(&format!("10.9.0.{i}"), 30000 + i, "192.0.2.2", 80)
}
fn reply() -> Tuple {
    t("192.0.2.2", 80, "192.0.2.1", 40000)
}

fn ev(kind: Kind, orig: Tuple, ts: u64, cpu: u32) -> Event {
    let mut e = Event::new(kind, orig);
    e.ts_ns = ts;
    e.cpu = cpu;
    e.netns = 7;
    e
}
fn alloc(i: u16, ts: u64, cpu: u32) -> Event {
    let mut e = ev(Kind::NatAlloc, client(i), ts, cpu);
    e.reply = Some(reply());
    e
}
fn failed(i: u16, ts: u64, cpu: u32) -> Event {
    let mut e = ev(Kind::InsertFailed, client(i), ts, cpu);
    e.reply = Some(reply());
    e
}
fn drop_of(ts: u64, cpu: u32) -> Event {
    ev(Kind::NfDrop, inverse(&reply()), ts, cpu)
}
fn retrans(i: u16, ts: u64) -> Event {
    let mut e = ev(Kind::SynRetrans, client(i), ts, 0);
    e.netns = 8; // the pod's netns
    e
}

fn run(events: Vec<Event>, end: u64) -> Output {
    correlate(Config::default(), events, end)
}

#[test]
fn single_port_race_names_the_one_that_connected_and_every_loser_fails() {
    // client 1 wins; 2 and 3 lose each of their three SYNs (0 s, 1 s, 3 s)
    let mut v = vec![alloc(1, 10 * MS, 0)];
    for (k, at) in [(0u64, 0u64), (1, S), (2, 3 * S)] {
        let base = 10 * MS + at;
        for (i, cpu) in [(2u16, 0u32), (3, 1)] {
            if k > 0 {
                v.push(retrans(i, base));
            }
            v.push(alloc(i, base + MS, cpu));
            v.push(failed(i, base + MS + 1000, cpu));
            v.push(drop_of(base + MS + 2000, cpu));
        }
    }
    let order: Vec<u64> = v.iter().map(|e| e.ts_ns).collect();
    let out = run(v, 12 * S);
    assert_eq!(out.incidents.len(), 2, "{:#?}", out.incidents);
    for inc in &out.incidents {
        assert_eq!(inc.kind, "snat_race");
        assert_eq!(inc.outcome, "failed", "{inc:?}");
        assert_eq!(inc.events["insert_failed"], 3);
        assert_eq!(inc.events["nf_drop"], 3);
        assert_eq!(inc.events["syn_retrans"], 2);
        assert_eq!(inc.winner.as_ref().unwrap().orig, client(1));
        assert_eq!(inc.translated, Some(reply()));
    }
    let losers: Vec<&Event> = out
        .events
        .iter()
        .map(|e| &**e)
        .filter(|e| e.kind == Kind::InsertFailed)
        .collect();
    assert_eq!(losers.len(), 6);
    for e in losers {
        let w = e.winner.known().expect("every loser names its winner");
        assert_eq!(w.orig, client(1));
        assert_eq!(w.seen, "nat");
        assert!(e.incident.is_some());
    }
    // every event leaves, in the order it came
    assert_eq!(out.events.len(), 1 + 3 * 2 * 3 + 2 * 2);
    assert_eq!(
        out.events.iter().map(|e| e.ts_ns).collect::<Vec<_>>(),
        order
    );
}

#[test]
fn a_retransmit_that_gets_through_recovers_with_the_delay_the_client_saw() {
    let v = vec![
        alloc(1, 0, 0),
        alloc(2, MS, 1),
        failed(2, MS + 500, 1),
        drop_of(MS + 900, 1),
        retrans(2, S + MS),
        {
            // the retransmit's entry gets another port: no failure follows
            let mut a = ev(Kind::NatAlloc, client(2), S + MS + 100, 1);
            a.reply = Some(t("192.0.2.2", 80, "192.0.2.1", 40001));
            a
        },
    ];
    let out = run(v, 5 * S);
    assert_eq!(out.incidents.len(), 1);
    let inc = &out.incidents[0];
    assert_eq!(inc.outcome, "recovered");
    assert_eq!(inc.delay_ms, Some(1000));
    assert_eq!(inc.events["insert_failed"], 1);
}

#[test]
fn drops_that_arrive_before_their_failure_are_still_claimed() {
    // the drop's program ran first on the shared tracepoint
    let v = vec![
        alloc(1, 0, 0),
        alloc(2, MS, 1),
        drop_of(MS + 200, 1),
        failed(2, MS + 300, 1),
    ];
    let out = run(v, S / 2);
    let inc = &out.incidents[0];
    assert_eq!(inc.events.get("nf_drop"), Some(&1), "{inc:?}");
    assert!(out
        .events
        .iter()
        .filter(|e| e.kind == Kind::NfDrop)
        .all(|e| e.incident == Some(inc.id)));
}

#[test]
fn a_winner_outlives_more_failed_attempts_on_its_tuple_than_are_kept_per_key() {
    // 8 losers x 3 SYNs on the one reply tuple: 24 failed allocations after
    // the winner's, more than PER_KEY; the winner must still be named
    let losers: Vec<u16> = (2..10).collect();
    assert!(losers.len() * 3 > PER_KEY);
    let mut v = vec![alloc(1, 10 * MS, 0)];
    for at in [0u64, S, 3 * S] {
        for (n, &i) in losers.iter().enumerate() {
            let base = 10 * MS + at + n as u64 * 10_000;
            let cpu = (n % 2) as u32;
            v.push(alloc(i, base + MS, cpu));
            v.push(failed(i, base + MS + 1000, cpu));
        }
    }
    let out = run(v, 12 * S);
    let losers_seen: Vec<&Event> = out
        .events
        .iter()
        .map(|e| &**e)
        .filter(|e| e.kind == Kind::InsertFailed)
        .collect();
    assert_eq!(losers_seen.len(), 24);
    for e in losers_seen {
        let w = e
            .winner
            .known()
            .unwrap_or_else(|| panic!("no winner: {e:?}"));
        assert_eq!(w.orig, client(1));
    }
}

#[test]
fn a_clash_right_after_the_remembered_tuples_overflow_is_still_seen() {
    // MAX_ALLOCS one-off UDP flows, then one tuple allocated twice: the stage
    // (stable mode synthesizes clashes) must still know its first allocation
    let udp = |orig: Tuple, reply: Tuple, ts: u64| {
        let mut e = ev(Kind::NatAlloc, orig, ts, 0);
        e.proto = "udp".into();
        e.reply = Some(reply);
        e
    };
    let flow = |i: u32| {
        t(
            &format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            5353,
            "192.0.2.53",
            53,
        )
    };
    // one-off flows filling the memory up to its bound, then a tuple
    // allocated twice, then one more new tuple: the memory overflows by one,
    // as on a busy node, and only the oldest one-off may be forgotten
    let mut v = Vec::new();
    let n = MAX_ALLOCS as u32 - 1;
    for i in 0..n {
        v.push(udp(flow(i), inverse(&flow(i)), 10 * MS + i as u64));
    }
    let pair = t("10.200.0.1", 4000, "192.0.2.53", 53);
    v.push(udp(pair, t("192.0.2.53", 53, "192.0.2.1", 4000), 2 * S));
    v.push(udp(
        pair,
        t("192.0.2.54", 53, "192.0.2.1", 4000),
        2 * S + 500 * MS,
    ));
    v.push(udp(flow(n), inverse(&flow(n)), 2 * S + 501 * MS));
    let out = correlate(
        Config {
            synthesize_clashes: true,
        },
        v,
        4 * S,
    );
    let clashes = out
        .events
        .iter()
        .map(|e| &**e)
        .filter(|e| e.kind == Kind::ClashResolved)
        .count();
    assert_eq!(clashes, 1);
}

#[test]
fn events_slightly_out_of_order_across_cpus_keep_their_order_and_winner() {
    // cpu1's alloc arrives after cpu0's failure although it is older
    let v = vec![
        alloc(2, 5 * MS, 0),
        failed(2, 5 * MS + 10, 0),
        alloc(1, 4 * MS, 1),
    ];
    let out = run(v, S);
    let e = out
        .events
        .iter()
        .find(|e| e.kind == Kind::InsertFailed)
        .unwrap();
    assert_eq!(e.winner.known().map(|w| w.orig), Some(client(1)));
    let kinds: Vec<Kind> = out.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![Kind::NatAlloc, Kind::InsertFailed, Kind::NatAlloc]
    );
}

#[test]
fn a_winner_not_seen_is_null_with_the_reason() {
    let out = run(vec![failed(2, MS, 0)], S);
    let e = &out.events[0];
    assert_eq!(e.winner, WinnerSlot::Unknown);
    assert!(e
        .winner_unknown
        .as_deref()
        .unwrap()
        .contains("no NAT allocation"));
    let v = serde_json::to_value(e).unwrap();
    assert!(v["winner"].is_null() && v.get("winner").is_some(), "{v}");
    assert!(out.incidents[0].winner.is_none());
}

#[test]
fn incidents_still_open_at_the_end_are_unknown() {
    // one failure, and the recording ends 300 ms later: neither recovered nor given up
    let v = vec![alloc(1, 0, 0), alloc(2, MS, 0), failed(2, MS + 10, 0)];
    let out = run(v, 300 * MS);
    assert_eq!(out.incidents.len(), 1);
    assert_eq!(out.incidents[0].outcome, "unknown");
}

#[test]
fn a_lost_dns_datagram_is_lost_and_says_the_resolver_waits() {
    let q = t("10.9.0.2", 5353, "10.96.0.10", 53);
    let mut a = ev(Kind::NatAlloc, q, 0, 0);
    a.proto = "udp".into();
    a.reply = Some(t("10.96.0.10", 53, "192.0.2.1", 5353));
    let mut f = a.clone();
    f.kind = Kind::InsertFailed;
    f.ts_ns = 1000;
    let out = run(vec![a, f], S);
    let inc = &out.incidents[0];
    assert_eq!(inc.outcome, "lost");
    assert!(inc.note.as_deref().unwrap().contains("5 s"));
}

fn dns_pair() -> Vec<Event> {
    // one socket, A and AAAA from two threads: two entries of one tuple, the
    // second translated to another backend, neither lost
    let q = t("10.9.0.2", 41000, "10.96.0.10", 53);
    let mut a = ev(Kind::NatAlloc, q, 0, 0);
    a.proto = "udp".into();
    a.reply = Some(t("10.0.5.1", 53, "10.9.0.2", 41000));
    let mut b = a.clone();
    b.ts_ns = 40_000;
    b.cpu = 1;
    b.reply = Some(t("10.0.5.2", 53, "10.9.0.2", 41000));
    vec![a, b]
}

#[test]
fn stable_mode_sees_a_resolved_clash_in_two_allocations_of_one_tuple() {
    let out = correlate(
        Config {
            synthesize_clashes: true,
        },
        dns_pair(),
        S,
    );
    let clash: Vec<&Event> = out
        .events
        .iter()
        .map(|e| &**e)
        .filter(|e| e.kind == Kind::ClashResolved)
        .collect();
    assert_eq!(clash.len(), 1);
    assert_eq!(clash[0].source, "correlation");
    assert_eq!(out.incidents.len(), 1);
    let inc = &out.incidents[0];
    assert_eq!(
        (inc.kind.as_str(), inc.outcome.as_str()),
        ("udp_clash", "merged")
    );
    // both translations named: the winner's and the loser's
    assert_eq!(
        inc.winner.as_ref().unwrap().reply.src.to_string(),
        "10.0.5.1"
    );
    assert_eq!(inc.translated.unwrap().src.to_string(), "10.0.5.2");
    // without stable mode the kernel's own clash events are the truth
    let out = correlate(Config::default(), dns_pair(), S);
    assert!(out.events.iter().all(|e| e.kind != Kind::ClashResolved));
    assert!(out.incidents.is_empty());
}

fn seg(kind: Kind, orig: Tuple, ts: u64, flags: &str, hook: Option<&str>) -> Event {
    let mut e = ev(kind, orig, ts, 0);
    e.tcp = Some(Box::new(Tcp {
        flags: flags.into(),
        ..Default::default()
    }));
    e.hook = hook.map(|h| h.to_string().into());
    e
}

#[test]
fn an_invalid_segment_the_nodes_rst_and_its_verdict_are_one_incident() {
    let wire = t("192.0.2.2", 9001, "192.0.2.1", 40000);
    let mut conn = alloc(1, 0, 0);
    conn.orig = t("10.77.0.11", 41767, "192.0.2.2", 9001);
    conn.reply = Some(wire);
    let v = vec![
        conn,
        seg(Kind::TcpInvalid, wire, S, "ACK,PSH", Some("prerouting")),
        seg(Kind::HostRst, wire, S + 10_000, "ACK,PSH", None),
        seg(
            Kind::TcpInvalid,
            inverse(&wire),
            S + 50_000,
            "RST",
            Some("output"),
        ),
        // IGNORED: no incident
        seg(
            Kind::TcpIgnored,
            t("192.0.2.2", 9002, "192.0.2.1", 40000),
            2 * S,
            "ACK",
            None,
        ),
    ];
    let out = run(v, 5 * S);
    assert_eq!(out.incidents.len(), 1, "{:#?}", out.incidents);
    let inc = &out.incidents[0];
    assert_eq!(inc.kind, "invalid_reset");
    assert_eq!(inc.outcome, "reset");
    assert_eq!(inc.events["tcp_invalid"], 2);
    assert_eq!(inc.events["host_rst"], 1);
    // named by the pod's original tuple, not the translated one
    assert_eq!(inc.flow, t("10.77.0.11", 41767, "192.0.2.2", 9001));
    assert_eq!(inc.translated, Some(wire));
    assert_eq!(inc.timeline.len(), 3);
}
