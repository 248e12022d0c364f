//! The header: source, lost count, pause and rates; the probes as attached;
//! the node's mitigation state.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::node::NodeState;
use crate::tui::app::{App, Origin};

pub(super) fn lost_span(lost: u64) -> Span<'static> {
    let s = format!("lost {lost}");
    if lost > 0 {
        Span::styled(s, Style::new().fg(Color::White).bg(Color::Red).bold())
    } else {
        Span::styled(s, Style::new().fg(Color::Green))
    }
}

fn hms(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn header_line1(app: &App, w: usize) -> Line<'static> {
    let m = app.view();
    let origin = match &app.info.origin {
        Origin::Live => Span::styled("LIVE", Style::new().fg(Color::Green).bold()),
        Origin::Lab(k) => Span::styled(format!("LAB {k}"), Style::new().fg(Color::Green).bold()),
        Origin::Replay { file, speed } => {
            let name = std::path::Path::new(file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.clone());
            Span::styled(
                format!("REPLAY {name} x{speed}"),
                Style::new().fg(Color::Cyan).bold(),
            )
        }
    };
    let mut spans = vec![
        Span::styled("ctrace top ", Style::new().bold()),
        origin,
        Span::raw("  "),
        if app.info.lost_unknown {
            Span::styled(
                "lost ?",
                Style::new().fg(Color::Black).bg(Color::Yellow).bold(),
            )
        } else {
            lost_span(m.lost)
        },
    ];
    if let Some(w) = &app.info.warning {
        spans.push(Span::raw("  "));
        spans.push(Span::styled(
            format!("WARNING {w}"),
            Style::new().fg(Color::Black).bg(Color::Yellow).bold(),
        ));
    }
    if app.paused() {
        let new = app.live.seq.saturating_sub(m.seq);
        spans.push(Span::raw("  "));
        spans.push(Span::styled(
            format!("PAUSED (+{new} new)"),
            Style::new().fg(Color::Black).bg(Color::Yellow).bold(),
        ));
    }
    if let Some(why) = &m.ended {
        spans.push(Span::styled(
            format!("  ended: {why}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    spans.push(Span::raw(format!(
        "  {} ev/s  {} events  up {}",
        m.rate(None),
        m.stats.total,
        hms(m.now_ns)
    )));
    if !app.info.hostname.is_empty() {
        let node = format!("  node {}", app.info.hostname);
        let used: usize = spans.iter().map(|s| s.width()).sum();
        // the host's name is the first to go (the terminal's title has it)
        if used + node.chars().count() <= w {
            spans.push(Span::raw(node));
        }
    }
    Line::from(spans)
}

/// The line's width in columns.
fn width(l: &Line) -> usize {
    l.width()
}

/// The probes line, or, where it does not fit, the probes grouped by
/// flavour ("nat confirm:stable").
fn header_line2(app: &App, w: usize) -> Line<'static> {
    let full = header_line2_full(app);
    if width(&full) <= w {
        return full;
    }
    let mut spans = vec![Span::raw(format!("kernel {}", app.info.kernel))];
    let mut groups: Vec<(String, Style, Vec<String>)> = Vec::new();
    for p in &app.info.probes {
        let (fl, style) = match &p.flavour {
            None => ("MISSING".to_string(), Style::new().fg(Color::Red).bold()),
            Some(fl) if p.degraded() => (format!("{fl}*"), Style::new().fg(Color::Yellow)),
            Some(fl) => (fl.clone(), Style::new()),
        };
        match groups.iter_mut().find(|g| g.0 == fl) {
            Some(g) => g.2.push(p.name.clone()),
            None => groups.push((fl, style, vec![p.name.clone()])),
        }
    }
    for (fl, style, names) in groups {
        spans.push(Span::styled(format!(" {}:{fl}", names.join(",")), style));
    }
    if app.info.probes.iter().any(|p| p.degraded() || p.missing()) {
        spans.push(Span::styled(" (h: why)", Style::new().fg(Color::DarkGray)));
    }
    Line::from(spans)
}

fn header_line2_full(app: &App) -> Line<'static> {
    let mut head = format!("kernel {}", app.info.kernel);
    if !app.info.mode.is_empty() && app.info.mode != "auto" {
        head.push_str(&format!(" mode {}", app.info.mode));
    }
    let mut spans = vec![Span::raw(head)];
    for p in &app.info.probes {
        let (text, style) = match &p.flavour {
            None => (
                format!(" {}:MISSING", p.name),
                Style::new().fg(Color::Red).bold(),
            ),
            Some(fl) if p.degraded() => {
                (format!(" {}:{fl}*", p.name), Style::new().fg(Color::Yellow))
            }
            Some(fl) => (format!(" {}:{fl}", p.name), Style::new()),
        };
        spans.push(Span::styled(text, style));
    }
    if app.info.probes.iter().any(|p| p.degraded() || p.missing()) {
        spans.push(Span::styled(
            "  (h for why)",
            Style::new().fg(Color::DarkGray),
        ));
    }
    Line::from(spans)
}

/// The node's line, shortened where it does not fit: "MASQ", "rf" for
/// --random-fully (the legend says so).
fn node_line_fit(node: Option<&NodeState>, replay: bool, w: usize) -> Line<'static> {
    let full = node_line(node, replay);
    if width(&full) <= w {
        return full;
    }
    let spans = full
        .spans
        .into_iter()
        .map(|s| {
            let t = s
                .content
                .replace("node: be_liberal", "be_liberal")
                .replace("INVALID drop:", "INVALID-drop")
                .replace("MASQUERADE", "MASQ")
                .replace(" w/o --random-fully", " w/o rf")
                .replace("all --random-fully", "all rf")
                .replace("  ", " ");
            Span::styled(t, s.style)
        })
        .collect::<Vec<_>>();
    Line::from(spans)
}

/// The node's mitigation state in one line.
pub fn node_line(node: Option<&NodeState>, replay: bool) -> Line<'static> {
    let Some(n) = node else {
        return Line::from(Span::styled(
            if replay {
                "node: mitigation state not read (replay)"
            } else {
                "node: reading mitigation state..."
            },
            Style::new().fg(Color::DarkGray),
        ));
    };
    let good = Style::new().fg(Color::Green);
    let warn = Style::new().fg(Color::Yellow);
    let mut spans = vec![Span::raw("node: be_liberal ")];
    spans.push(match n.sysctl.tcp_be_liberal {
        Some(true) => Span::styled("1", good),
        Some(false) => Span::raw("0"),
        None => Span::styled("?", warn),
    });
    match n.facts() {
        None => spans.push(Span::styled("  rules: unreadable", warn)),
        Some(r) => {
            spans.push(Span::raw("  INVALID drop: "));
            spans.push(if r.invalid_drop > 0 {
                Span::styled(format!("{} rule(s)", r.invalid_drop), good)
            } else {
                Span::raw("none")
            });
            let nat = |name: &str, n: u32, rf: u32| -> Vec<Span<'static>> {
                let without = n - rf.min(n);
                let mut v = vec![Span::raw(format!("  {name} {n}"))];
                if n > 0 {
                    v.push(if without > 0 {
                        Span::styled(format!(" ({without} w/o --random-fully)"), warn)
                    } else {
                        Span::styled(" (all --random-fully)", good)
                    });
                }
                v
            };
            spans.extend(nat("MASQUERADE", r.masquerade, r.masquerade_random_fully));
            spans.extend(nat("SNAT", r.snat, r.snat_random_fully));
        }
    }
    Line::from(spans)
}

pub(super) fn render(app: &App, f: &mut Frame, r: Rect) {
    let w = r.width as usize;
    let mut lines = vec![header_line1(app, w)];
    if r.height >= 3 {
        lines.push(header_line2(app, w));
        lines.push(node_line_fit(
            app.view().node.as_ref(),
            app.info.is_replay(),
            w,
        ));
    }
    f.render_widget(Paragraph::new(lines), r);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctstat::{CpuStats, Snapshot};
    use crate::tui::event::Msg;
    use crate::tui::testkit;
    use crate::tui::ui::tests::{app, counter, line_with, screen};

    #[test]
    fn replay_header() {
        let mut info = testkit::info(Origin::Replay {
            file: "/tmp/x/rec.jsonl".into(),
            speed: 2.0,
        });
        info.kernel = "6.1.0-27-amd64".into();
        let mut a = App::new(info);
        a.update(Msg::Kernel(Snapshot {
            per_cpu: vec![CpuStats {
                cpu: u32::MAX,
                insert_failed: 9,
                ..Default::default()
            }],
        }));
        let s = screen(&a, 100, 30);
        assert!(s.contains("REPLAY rec.jsonl x2"), "{s}");
        assert!(s.contains("kernel 6.1.0-27-amd64"));
        assert!(s.contains("not read (replay)"));
        assert_eq!(counter(&s, "insert_failed"), vec![0, 0, 9]);
        // the totals-only pseudo CPU is not a CPU
        assert!(!s.contains("4294967295"));
        a.update(Msg::SourceEnded("end of recording".into()));
        assert!(screen(&a, 100, 30).contains("ended: end of recording"));
    }

    #[test]
    fn node_state_line() {
        let rules = crate::node::parse_iptables_save(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n\
             -A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE\n\
             -A POSTROUTING -s 10.1.0.0/16 -j MASQUERADE --random-fully\n\
             -A POSTROUTING -s 10.2.0.0/16 -j SNAT --to-source 192.0.2.1 --random-fully\n\
             COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
             -A INPUT -m conntrack --ctstate INVALID -j DROP\n\
             -A FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n",
        );
        let mut n = NodeState::default();
        n.sysctl.tcp_be_liberal = Some(true);
        n.rules = Some(rules);
        let mut a = app();
        a.update(Msg::Node(Box::new(n)));
        let s = screen(&a, 160, 30);
        let l = line_with(&s, "node: ");
        assert!(l.contains("be_liberal 1"), "{l}");
        assert!(l.contains("INVALID drop: 2 rule(s)"), "{l}");
        assert!(l.contains("MASQUERADE 2 (1 w/o --random-fully)"), "{l}");
        assert!(l.contains("SNAT 1 (all --random-fully)"), "{l}");
        let l = node_line(Some(&NodeState::default()), false);
        let t: String = l.spans.iter().map(|s| s.content.as_ref()).collect();
        assert_eq!(t, "node: be_liberal ?  rules: unreadable");
    }

    #[test]
    fn a_replay_without_trailer_says_lost_is_unknown() {
        let mut info = testkit::info(crate::tui::app::Origin::Replay {
            file: "/tmp/x/rec.jsonl".into(),
            speed: 1.0,
        });
        info.lost_unknown = true;
        info.warning = Some("cut off: no trailer (?)".into());
        let a = App::new(info);
        let s = screen(&a, 200, 30);
        assert!(s.contains("lost ?"), "{s}");
        assert!(!s.contains("lost 0"), "{s}");
        assert!(s.contains("WARNING cut off: no trailer (?)"), "{s}");
    }
}
