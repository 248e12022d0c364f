//! What goes over or under the panels: the footer (keys, or the filter as
//! typed), an event's full record, and the help.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};
use ratatui::Frame;

use crate::tui::app::{App, Group, Mode, KEYS};

pub(super) fn footer(app: &App, f: &mut Frame, r: Rect) {
    let line = if app.mode == Mode::Filter {
        Line::from(vec![
            Span::styled("/", Style::new().fg(Color::Yellow).bold()),
            Span::raw(app.filter_input.clone()),
            Span::styled("█", Style::new().fg(Color::Yellow)),
            Span::styled(
                "  kind, port or address; Enter keeps, Esc clears",
                Style::new().fg(Color::DarkGray),
            ),
        ])
    } else {
        let key = |k: &'static str| Span::styled(k, Style::new().fg(Color::Cyan).bold());
        let txt = |t: &'static str| Span::raw(t);
        let mut v = vec![
            key("q"),
            txt(" quit "),
            key("p"),
            txt(if app.paused() { " resume " } else { " pause " }),
            key("Tab"),
            txt(" panel "),
            key("s/S"),
            txt(" sort "),
            key("/"),
            txt(" filter "),
            key("Enter"),
            txt(" detail "),
            key("?"),
            txt(" help"),
        ];
        if !app.filter.is_empty() {
            v.push(Span::styled(
                format!("  filter: {}", app.filter.text),
                Style::new().fg(Color::Yellow),
            ));
        }
        Line::from(v)
    };
    f.render_widget(Paragraph::new(line), r);
}

/// The keys as the help lists them: a line per group of the key table, its
/// bindings in table order ("keys what-they-do", joined by " · ").
fn key_help() -> Vec<String> {
    Group::ALL
        .iter()
        .map(|g| {
            KEYS.iter()
                .filter(|b| b.group == *g && !b.help.is_empty())
                .map(|b| format!("{} {}", b.label, b.help))
                .collect::<Vec<_>>()
                .join(" · ")
        })
        .filter(|l| !l.is_empty())
        .collect()
}

fn centered(area: Rect, pct_w: u16, pct_h: u16) -> Rect {
    let w = (area.width * pct_w / 100).max(area.width.min(20));
    let h = (area.height * pct_h / 100).max(area.height.min(5));
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

pub(super) fn detail(app: &App, f: &mut Frame, area: Rect, seq: u64) {
    let r = centered(area, 90, 85);
    let text = match app.event_by_seq(seq) {
        Some(e) => serde_json::to_string_pretty(e).unwrap_or_else(|e| e.to_string()),
        None => "this event is no longer kept (the log keeps the newest events)".into(),
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text).scroll((app.detail_scroll, 0)).block(
            Block::bordered()
                .title(format!(" Event #{seq}  (↑/↓ scroll, Esc close) "))
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        r,
    );
}

pub(super) fn help(app: &App, f: &mut Frame, area: Rect) {
    let r = centered(area, 90, 90);
    let mut lines: Vec<Line> = key_help().into_iter().map(Line::from).collect();
    lines.extend(
        [
            "Kernel column: insert_failed, clash_resolve, invalid (all protocols), drop",
            "from the kernel's own conntrack statistics since ctrace started.",
            "",
        ]
        .map(Line::from),
    );
    for p in &app.info.probes {
        let what = match &p.flavour {
            Some(fl) => format!("{}: {fl} {}", p.name, p.hooks.join(" + ")),
            None => format!("{}: MISSING", p.name),
        };
        lines.push(Line::from(what));
        for n in &p.notes {
            lines.push(Line::styled(
                format!("    note: {n}"),
                Style::new().fg(Color::Yellow),
            ));
        }
    }
    for n in &app.info.notes {
        lines.push(Line::styled(
            format!("note: {n}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    if let Some(node) = &app.view().node {
        for e in &node.notes {
            lines.push(Line::styled(
                format!("node: {e}"),
                Style::new().fg(Color::Yellow),
            ));
        }
    }
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Help (any key closes) ")),
        r,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyCode;

    use super::*;
    use crate::event::Kind;
    use crate::tui::event::Msg;
    use crate::tui::testkit;
    use crate::tui::ui::tests::{app, counter, key, screen};

    #[test]
    fn paused_view_is_frozen_and_says_so() {
        let mut a = app();
        a.update(Msg::Events(testkit::mix(80, 1)));
        key(&mut a, KeyCode::Char('p'));
        a.update(Msg::Events(testkit::mix(80, 1)));
        let s = screen(&a, 100, 30);
        assert!(s.contains("PAUSED (+80 new)"), "{s}");
        assert_eq!(counter(&s, "insert_failed")[0], 10);
        assert!(s.contains("p resume"));
        key(&mut a, KeyCode::Char('p'));
        let s = screen(&a, 100, 30);
        assert!(!s.contains("PAUSED"));
        assert_eq!(counter(&s, "insert_failed")[0], 20);
    }

    #[test]
    fn detail_help_and_filter_prompt() {
        let mut a = app();
        a.update(Msg::Events(vec![testkit::event(
            7,
            Kind::InsertFailed,
            5,
            2,
            53,
        )]));
        key(&mut a, KeyCode::Enter);
        let s = screen(&a, 100, 30);
        assert!(s.contains("Event #0"), "{s}");
        assert!(s.contains("\"kind\": \"insert_failed\""), "{s}");
        assert!(s.contains("\"dport\": 53"));
        key(&mut a, KeyCode::Esc);
        key(&mut a, KeyCode::Char('?'));
        let s = screen(&a, 100, 30);
        assert!(s.contains("note: no window bounds"), "{s}");
        assert!(s.contains("symptoms: MISSING"));
        key(&mut a, KeyCode::Esc);
        key(&mut a, KeyCode::Char('/'));
        for c in "port:99".chars() {
            key(&mut a, KeyCode::Char(c));
        }
        let s = screen(&a, 100, 30);
        assert!(s.contains("/port:99█"), "{s}");
        assert!(s.contains("(1 kept of 1) filter: port:99"));
        assert!(!s.contains("insert_failed  c2"), "filtered out\n{s}");
    }

    /// The help's key lines come from the key table, worded as before it.
    #[test]
    fn help_lists_the_key_table() {
        assert_eq!(
            key_help(),
            [
                "q quit · p pause/resume the view (counting goes on; a replay's clock stops)",
                "Tab / Shift-Tab move between panels · ↑↓ PgUp PgDn Home End scroll the focused one",
                "s next sort column · S reverse order · t destinations / flows",
                "/ filter: kind (or its start: tcp), port, address part; kind: port: addr: force it",
                "Enter the selected event's full record · Esc clear the filter / close",
            ]
        );
        let mut a = app();
        key(&mut a, KeyCode::Char('?'));
        let s = screen(&a, 100, 30);
        for l in key_help() {
            assert!(s.contains(&l), "{l:?} not in\n{s}");
        }
    }
}
