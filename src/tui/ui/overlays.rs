//! What goes over or under the panels: the footer (keys, or the filter as
//! typed), an event's full record, and the help.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
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
            key("/"),
            txt(" filter "),
            key("Enter"),
            txt(" open "),
            key("Esc"),
            txt(" back "),
            key("h"),
            txt(" help "),
            key("?"),
            txt(" legend"),
        ];
        if r.width >= 100 {
            v.splice(
                6..6,
                [key("s/S"), txt(" sort "), key("←→"), txt(" scroll ")],
            );
        }
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

/// The last line of the help: scrolling reaches it.
pub const HELP_END: &str = "(end of help: Esc closes, ? shows the legend)";
/// The last line of the legend.
pub const LEGEND_END: &str = "(end of the legend: Esc closes, h shows the keys)";

/// The help's lines: the keys (from the key table), the probes as attached
/// and their notes, the session's and the node's notes.
pub fn help_lines(app: &App) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = key_help().into_iter().map(Line::from).collect();
    lines.push(Line::from(""));
    lines.push(Line::styled("Probes", Style::new().bold()));
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
    lines.push(Line::from(""));
    lines.push(Line::styled(HELP_END, Style::new().fg(Color::DarkGray)));
    lines
}

/// What the colours, marks and columns mean.
pub fn legend_lines() -> Vec<Line<'static>> {
    use crate::event::Kind;
    let mut lines = vec![Line::styled("Colours (kinds)", Style::new().bold())];
    let groups: [(&[Kind], &str); 5] = [
        (
            &[
                Kind::InsertFailed,
                Kind::TcpInvalid,
                Kind::HostRst,
                Kind::NfDrop,
            ],
            "a failure: a packet dropped, a connection reset",
        ),
        (&[Kind::SynRetrans], "a client retrying (the delay it sees)"),
        (
            &[Kind::ClashResolved],
            "a clash the kernel resolved: nothing lost",
        ),
        (
            &[Kind::TcpIgnored, Kind::TcpLiberal],
            "out of window, but not INVALID (ignored, or accepted by be_liberal)",
        ),
        (
            &[Kind::NatAlloc],
            "a NAT allocation (context, not a failure)",
        ),
    ];
    for (kinds, what) in groups {
        let mut spans: Vec<Span> = Vec::new();
        for k in kinds {
            spans.push(Span::styled(
                format!("{} ", k.name()),
                super::kind_style(*k),
            ));
        }
        spans.push(Span::raw(format!("- {what}")));
        lines.push(Line::from(spans));
    }
    lines.push(Line::from("grey kind name: none counted yet"));
    lines.push(Line::from(""));
    lines.push(Line::styled("Marks", Style::new().bold()));
    for l in [
        "probe:flavour*  (header, yellow) the probe runs degraded: fewer fields or hooks; h says why",
        "probe:MISSING   (header, red) no hook for the probe on this kernel",
        "lost N          (red) records the kernel could not write: the ring buffer was full",
        "123~            (top tables) a count that may be over by up to the ~ amount (top-k estimate)",
        "▼ ▲             the sort column and its order",
        "#N              (events) the incident the event belongs to",
        "as A:P          (events) the source the node's NAT gave the connection (translated tuple)",
        "rf              --random-fully on the NAT rule (header's node line)",
        "reverse video   the selection: Enter opens it",
    ] {
        lines.push(Line::from(l));
    }
    lines.push(Line::from(""));
    lines.push(Line::styled("Columns", Style::new().bold()));
    for l in [
        "total, /s: ctrace's own counts, all and in the last complete second",
        "last Ns, peak/s: a sparkline per kind, one character a second, each row scaled to \
         its own peak (the number after it, events per second)",
        "kernel (T s ago): the kernel's own conntrack counters since ctrace started \
         (insert_failed, clash_resolve, invalid for all protocols, drop), read once a \
         second: until the next read they can lag ctrace's count; yellow: insert_failed \
         differs at the last read",
        "who (events): the workload that owns the original source (pod, container, named \
         netns, host); ns:N: none known, seen in another netns than the traced one; -: \
         none known",
        "Per CPU: ctrace/kernel per CPU",
    ] {
        lines.push(Line::from(l));
    }
    lines.push(Line::from(""));
    lines.push(Line::styled("Small screens", Style::new().bold()));
    lines.push(Line::from(
        "Panels give way as the screen shrinks: first Per CPU (below 140 columns), then \
         Incidents (when they and the log would have under 20 rows), then Top (below 70 columns); counters and events stay. \
         The focused panel is always shown (Tab), and a line names the hidden ones.",
    ));
    lines.push(Line::from(""));
    lines.push(Line::styled(LEGEND_END, Style::new().fg(Color::DarkGray)));
    lines
}

/// Wrapped `lines` in a scrolling box: the first line shown is `scroll`,
/// clamped so that the last line can be reached and no further.
fn scrolling(f: &mut Frame, r: Rect, title: &str, lines: Vec<Line<'static>>, scroll: u16) {
    let w = r.width.saturating_sub(2) as usize;
    let h = r.height.saturating_sub(2) as usize;
    let mut wrapped: Vec<Line> = Vec::new();
    for l in lines {
        let style = l.spans.first().map(|s| s.style).unwrap_or_default();
        let text: String = l.spans.iter().map(|s| s.content.as_ref()).collect();
        if text.chars().count() <= w {
            wrapped.push(l);
        } else {
            // keep the indentation (the timeline's right-aligned times)
            let body = text.trim_start();
            let indent = " ".repeat(text.len() - body.len());
            wrapped.extend(
                super::panels::wrap(body, w.saturating_sub(indent.len()))
                    .into_iter()
                    .map(|t| Line::styled(format!("{indent}{t}"), style)),
            );
        }
    }
    let max = wrapped.len().saturating_sub(h);
    let top = (scroll as usize).min(max);
    let more = if top < max {
        format!(" ↓ {} more ", max - top)
    } else {
        String::new()
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(wrapped.split_off(top)).block(
            Block::bordered()
                .title(format!(" {title} "))
                .title_bottom(more)
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        r,
    );
}

pub(super) fn help(app: &App, f: &mut Frame, area: Rect) {
    let r = centered(area, 90, 90);
    scrolling(
        f,
        r,
        "Help (↑↓ PgUp PgDn Home End scroll, Esc closes)",
        help_lines(app),
        app.help_scroll,
    );
}

pub(super) fn legend(app: &App, f: &mut Frame, area: Rect) {
    let r = centered(area, 90, 90);
    scrolling(
        f,
        r,
        "Legend (↑↓ PgUp PgDn scroll, Esc closes)",
        legend_lines(),
        app.help_scroll,
    );
}

/// An incident's story: what it is, then its timeline from its first event.
pub fn timeline_lines(app: &App, id: u64) -> Vec<Line<'static>> {
    let Some(i) = app.incident_by_id(id) else {
        return vec![Line::from(
            "this incident is no longer kept (the panel keeps the newest)",
        )];
    };
    let bold = Style::new().bold();
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("#{} {} ", i.id, i.kind), bold),
        Span::raw(format!("outcome {}", i.outcome)),
        Span::raw(
            i.delay_ms
                .map(|d| format!(", the client waited {d} ms"))
                .unwrap_or_default(),
        ),
    ])];
    lines.push(Line::from(format!("flow        {}", i.flow)));
    if let Some(t) = &i.translated {
        lines.push(Line::from(format!("translated  {t}")));
    }
    match (&i.winner, &i.winner_unknown) {
        (Some(w), _) => {
            // a winner found in the conntrack table has no CPU
            let cpu = w.cpu.map(|c| format!("cpu {c}, ")).unwrap_or_default();
            lines.push(Line::from(format!(
                "winner      {} (reply {}, {cpu}seen {})",
                w.orig, w.reply, w.seen
            )))
        }
        (None, Some(why)) => lines.push(Line::from(format!("winner      unknown: {why}"))),
        (None, None) => {}
    }
    if let Some(w) = i
        .workload
        .as_ref()
        .and_then(|v| serde_json::from_value::<crate::workload::Workload>(v.clone()).ok())
    {
        lines.push(Line::from(format!("who         {}", w.label())));
    }
    lines.push(Line::from(format!("netns       {}", i.netns)));
    let counts: Vec<String> = i.events.iter().map(|(k, n)| format!("{k} {n}")).collect();
    lines.push(Line::from(format!("events      {}", counts.join(" · "))));
    if let Some(n) = &i.note {
        lines.push(Line::styled(
            format!("note        {n}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    lines.push(Line::from(""));
    lines.push(Line::styled("timeline (ms from the first event)", bold));
    for s in &i.timeline {
        let ms = s.ts_ns.saturating_sub(i.start_ns) as f64 / 1e6;
        let kind_style = crate::event::Kind::from_name(&s.kind)
            .map(super::kind_style)
            .unwrap_or_default();
        lines.push(Line::from(vec![
            Span::raw(format!("{ms:>10.3}  ")),
            Span::styled(format!("{:<14} ", s.kind), kind_style),
            Span::styled(s.reason.clone(), Style::new().fg(Color::DarkGray)),
        ]));
    }
    lines
}

pub(super) fn timeline(app: &App, f: &mut Frame, area: Rect, id: u64) {
    let r = centered(area, 90, 85);
    scrolling(
        f,
        r,
        &format!("Incident #{id}  (↑/↓ scroll, Esc back)"),
        timeline_lines(app, id),
        app.detail_scroll,
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
        key(&mut a, KeyCode::Char('h'));
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
                "q quit · p pause/resume the view (counting goes on; a replay's clock stops) · \
                 h / F1 this help · ? legend: colours, marks, columns · \
                 in help: ↑↓ j k PgUp PgDn Home End scroll it (other keys close it)",
                "Tab / Shift-Tab move between panels · ↑↓ PgUp PgDn Home End scroll the focused \
                 one (top, incidents: its first row is the selection) · \
                 ←/→ scroll the event log sideways",
                "s next sort column · S reverse order · t destinations / flows",
                "/ filter: kind (or its start: tcp), port, address part; kind: port: addr: force it",
                "Enter on an event: its full record; on a destination or flow: its incidents; \
                 on an incident: its timeline · \
                 Esc back (from a destination's incidents), clear the filter, close",
            ]
        );
        let mut a = app();
        key(&mut a, KeyCode::Char('h'));
        let s = screen(&a, 100, 30);
        // wrapped to the box: each line's beginning is on screen
        for l in key_help() {
            let head: String = l.chars().take(40).collect();
            assert!(s.contains(&head), "{head:?} not in\n{s}");
        }
    }
}
