//! Render tests at the sizes issue 15 measured (80x24, 100x30, 160x45,
//! 240x60), on a buffer (ratatui's TestBackend): what must be on screen at
//! each, with concrete values.

use ratatui::crossterm::event::KeyCode;

use crate::ctstat::{CpuStats, Snapshot};
use crate::event::{Event, Kind};
use crate::incident::{Incident, Step};
use crate::tui::app::{App, Mode, Panel};
use crate::tui::event::Msg;
use crate::tui::testkit;
use crate::tui::ui::overlays::{HELP_END, LEGEND_END};
use crate::tui::ui::tests::{app, counter, key, line_with, screen};
use crate::workload::{Workload, WorkloadKind};

const SIZES: [(u16, u16); 4] = [(80, 24), (100, 30), (160, 45), (240, 60)];
const NS: u64 = 1_000_000_000;
/// The workload the lab's losers belong to in the fixture.
const POD: &str = "shop/web-1";
/// testkit's node address: every translation is to it.
const NODE: &str = "198.51.100.1";

fn pod() -> Workload {
    Workload {
        kind: WorkloadKind::Kubernetes,
        namespace: Some("shop".into()),
        name: Some("web-1".into()),
        container: None,
        id: None,
        netns: 4026532999,
    }
}

/// A lab-like session: NAT allocations and insert failures to port 80, the
/// failures of one pod, one incident per failure, and the kernel's counters
/// read 0.8 s before the last tick, equal to ctrace's count.
fn lab_app() -> (App, Vec<Event>, Vec<Incident>) {
    let mut a = app();
    let mut events = Vec::new();
    let mut incidents = Vec::new();
    for i in 0..12u64 {
        let kind = if i % 3 == 2 {
            Kind::InsertFailed
        } else {
            Kind::NatAlloc
        };
        let mut e = testkit::event(i, kind, NS + i * 50_000_000, (i % 2) as u32, 80);
        e.workload = Some(std::sync::Arc::new(pod()));
        if kind == Kind::InsertFailed {
            let id = incidents.len() as u64 + 1;
            e.incident = Some(id);
            incidents.push(Incident {
                id,
                kind: "snat_race".into(),
                start_ns: e.ts_ns,
                end_ns: e.ts_ns + 1_020_000_000,
                netns: e.netns,
                flow: e.orig,
                translated: e.reply,
                winner: None,
                winner_unknown: Some("no NAT allocation of the tuple was seen".into()),
                workload: serde_json::to_value(pod()).ok(),
                events: [
                    ("insert_failed".to_string(), 1),
                    ("syn_retrans".to_string(), 1),
                ]
                .into_iter()
                .collect(),
                outcome: "recovered".into(),
                delay_ms: Some(1020),
                note: None,
                timeline: vec![
                    Step {
                        ts_ns: e.ts_ns,
                        kind: "insert_failed".into(),
                        reason: e.reason.to_string(),
                    },
                    Step {
                        ts_ns: e.ts_ns + 1_020_000_000,
                        kind: "syn_retrans".into(),
                        reason: String::new(),
                    },
                ],
            });
        }
        events.push(e);
    }
    a.update(Msg::Events(events.clone()));
    a.update(Msg::Incidents(incidents.clone()));
    a.update(Msg::Tick { now_ns: 2 * NS });
    a.update(Msg::Kernel(Snapshot {
        per_cpu: vec![CpuStats {
            cpu: 0,
            insert_failed: 4,
            drop: 4,
            ..Default::default()
        }],
    }));
    a.update(Msg::Tick {
        now_ns: 2 * NS + 800_000_000,
    });
    (a, events, incidents)
}

#[test]
fn every_size_fits_and_shows_the_failures_the_translation_and_who() {
    let (a, events, _) = lab_app();
    let newest = events.last().unwrap();
    let r = newest.reply.unwrap();
    let xlat = format!("{}:{}", r.dst, r.dport);
    assert!(xlat.starts_with(NODE));
    for (w, h) in SIZES {
        let s = screen(&a, w, h);
        assert_eq!(s.lines().count(), h as usize, "{w}x{h}");
        assert!(s.lines().all(|l| l.chars().count() == w as usize));
        // ctrace's insert_failed and the kernel's, on one row
        let row = counter(&s, "insert_failed");
        assert_eq!((row[0], *row.last().unwrap()), (4, 4), "{w}x{h}\n{s}");
        assert!(s.contains("kernel (0.8 s ago)"), "{w}x{h}\n{s}");
        // the newest event's whole translated endpoint, its workload
        assert!(s.contains(&format!("as {xlat}")), "{w}x{h}\n{s}");
        assert!(s.contains(&format!("reply {r}")), "{w}x{h}\n{s}");
        assert!(s.contains(POD), "{w}x{h}\n{s}");
        // the header's lines end inside the screen
        assert!(s.contains("symptoms:MISSING"), "{w}x{h}\n{s}");
        assert!(s.contains("? legend"), "{w}x{h}\n{s}");
        // the top table is there, at every size
        assert!(s.contains("┌ Top destinations"), "{w}x{h}\n{s}");
        assert!(line_with(&s, "192.0.2.81").contains("80"), "{w}x{h}");
        // the sparkline's scale
        assert!(s.contains("peak"), "{w}x{h}\n{s}");
    }
}

#[test]
fn panels_give_way_in_order_and_the_hint_names_them() {
    let (a, _, _) = lab_app();
    let s = screen(&a, 80, 24);
    assert!(s.contains("hidden at 80x24: Per CPU, Incidents"), "{s}");
    assert!(!s.contains("┌ Per CPU"));
    let s = screen(&a, 100, 30);
    assert!(s.contains("hidden at 100x30: Per CPU, Incidents"), "{s}");
    for (w, h) in [(160, 45), (240, 60)] {
        let s = screen(&a, w, h);
        assert!(!s.contains("hidden at"), "{w}x{h}\n{s}");
        assert!(s.contains("┌ Per CPU"), "{w}x{h}\n{s}");
        assert!(s.contains("┌ Incidents (4)"), "{w}x{h}\n{s}");
        // at these widths the selected event's reason is whole
        assert!(s.contains("insert_failed: clash with an existing entry"));
    }
}

#[test]
fn a_quiet_node_says_how_to_see_a_demo() {
    let mut a = app();
    a.update(Msg::Events(vec![testkit::event(
        0,
        Kind::NatAlloc,
        NS,
        0,
        80,
    )]));
    for (w, h) in SIZES {
        let s = screen(&a, w, h);
        assert!(
            s.contains("no failures yet: `ctrace top --lab` shows a demo"),
            "{w}x{h}\n{s}"
        );
    }
    // and not once there are failures
    let (a, _, _) = lab_app();
    assert!(!screen(&a, 100, 30).contains("no failures yet"));
}

#[test]
fn help_and_legend_scroll_to_their_last_line() {
    let (mut a, _, _) = lab_app();
    for (open, end) in [('h', HELP_END), ('?', LEGEND_END)] {
        key(&mut a, KeyCode::Char(open));
        let s = screen(&a, 80, 24);
        assert!(!s.contains(end), "{end:?} fits without scrolling?\n{s}");
        assert!(s.contains("more"), "no sign of more lines\n{s}");
        // PgDn until the end shows; further keeps it on screen
        let mut seen = false;
        for _ in 0..20 {
            key(&mut a, KeyCode::PageDown);
            if screen(&a, 80, 24).contains(end) {
                seen = true;
                break;
            }
        }
        assert!(seen, "{end:?} never shown\n{}", screen(&a, 80, 24));
        key(&mut a, KeyCode::End);
        key(&mut a, KeyCode::Down);
        assert!(screen(&a, 80, 24).contains(end));
        key(&mut a, KeyCode::Home);
        assert!(!screen(&a, 80, 24).contains(end));
        key(&mut a, KeyCode::Esc);
        assert_eq!(a.mode, Mode::Normal);
    }
    // F1 opens the help too
    key(&mut a, KeyCode::F(1));
    assert_eq!(a.mode, Mode::Help);
}

#[test]
fn legend_explains_colours_marks_and_the_kernel_column() {
    let (mut a, _, _) = lab_app();
    key(&mut a, KeyCode::Char('?'));
    let s = screen(&a, 240, 60);
    for want in [
        "Colours (kinds)",
        "probe:flavour*",
        "123~",
        "kernel (T s ago)",
        "last Ns, peak/s",
        "Panels give way",
    ] {
        assert!(s.contains(want), "{want:?}\n{s}");
    }
}

#[test]
fn enter_on_a_destination_lists_its_incidents_and_enter_shows_a_timeline() {
    let (mut a, _, incidents) = lab_app();
    // the top table: one destination with failures, 192.0.2.81:80
    key(&mut a, KeyCode::BackTab);
    assert_eq!(a.focus, Panel::Top);
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.focus, Panel::Incidents);
    for (w, h) in SIZES {
        let s = screen(&a, w, h);
        assert!(s.contains("Incidents to 192.0.2.81:80 (4)"), "{w}x{h}\n{s}");
        assert!(s.contains("#4"), "{w}x{h}\n{s}");
    }
    let newest = incidents.last().unwrap();
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.mode, Mode::Timeline(newest.id));
    let s = screen(&a, 100, 30);
    assert!(s.contains(&format!("Incident #{}", newest.id)), "{s}");
    assert!(
        s.contains("outcome recovered, the client waited 1020 ms"),
        "{s}"
    );
    assert!(s.contains(&format!("translated  {}", newest.translated.unwrap())));
    assert!(s.contains("who         shop/web-1"), "{s}");
    assert!(s.contains("1020.000  syn_retrans"), "{s}");
    // a step too wide for the box wraps, and keeps its column
    let s = screen(&a, 60, 24);
    assert!(s.contains("     0.000  insert_failed"), "{s}");
    // Esc: back to the list, then back to the top table
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.mode, Mode::Normal);
    assert_eq!(a.focus, Panel::Incidents);
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.focus, Panel::Top);
    assert!(a.incident_scope.is_none());
    assert!(screen(&a, 160, 45).contains("┌ Incidents (4)"));
}

#[test]
fn the_log_scrolls_sideways() {
    let (mut a, events, _) = lab_app();
    let newest = events.last().unwrap();
    let reason = &newest.reason;
    let s = screen(&a, 80, 24);
    let first = line_with(&s, "insert_failed  shop/web-1");
    assert!(!first.contains(reason.as_ref() as &str), "{first}");
    for _ in 0..8 {
        key(&mut a, KeyCode::Right);
    }
    let s = screen(&a, 80, 24);
    assert!(s.contains("[+64 cols]"), "{s}");
    // the reason's start, which was cut, is on the selected line now
    let l = line_with(&s, "c1 #4");
    assert!(l.contains("insert_failed: clash"), "{l}");
    for _ in 0..8 {
        key(&mut a, KeyCode::Left);
    }
    assert_eq!(a.log_hscroll, 0);
}
