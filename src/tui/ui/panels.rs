//! The four panels: counters, per CPU, top destinations or flows, and the
//! event log.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;

use crate::event::{Event, Kind};
use crate::tui::app::{App, Panel, SortCol, TopView};

const SPARK: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

fn block(app: &App, panel: Panel, title: String) -> Block<'static> {
    let focused = app.focus == panel;
    let style = if focused {
        Style::new().fg(Color::Cyan)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    let title = if focused {
        Span::styled(title, Style::new().fg(Color::Cyan).bold())
    } else {
        Span::raw(title)
    };
    Block::new()
        .borders(Borders::ALL)
        .border_style(style)
        .title(title)
}

pub fn kind_style(k: Kind) -> Style {
    match k {
        Kind::InsertFailed | Kind::TcpInvalid | Kind::HostRst | Kind::NfDrop => {
            Style::new().fg(Color::LightRed)
        }
        Kind::SynRetrans => Style::new().fg(Color::Yellow),
        Kind::ClashResolved => Style::new().fg(Color::Cyan),
        Kind::TcpIgnored | Kind::TcpLiberal => Style::new().fg(Color::Magenta),
        Kind::NatAlloc => Style::new(),
    }
}

/// A text sparkline, scaled to its own maximum.
pub fn spark(v: &[u64]) -> String {
    let max = v.iter().copied().max().unwrap_or(0);
    v.iter()
        .map(|&x| {
            if x == 0 || max == 0 {
                SPARK[0]
            } else {
                SPARK[(1 + (x * 7 / max) as usize).min(8)]
            }
        })
        .collect()
}

fn header_style() -> Style {
    Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
}

pub(super) fn counters(app: &App, f: &mut Frame, r: Rect) {
    let m = app.view();
    // narrow screens: narrower number columns, to leave the sparkline room
    let (tw, rw, kw) = if r.width >= 70 { (9, 6, 9) } else { (7, 5, 7) };
    let widths = [
        Constraint::Length(14),
        Constraint::Length(tw),
        Constraint::Length(rw),
        Constraint::Fill(1),
        Constraint::Length(kw),
    ];
    // what is left for the sparkline and its peak: borders, fixed columns, 4 gaps
    let cell_w = r.width.saturating_sub(2 + 14 + tw + rw + kw + 4) as usize;
    let spark_w = cell_w.saturating_sub(5).clamp(1, 60);
    let (tw, rw, kw) = (tw as usize, rw as usize, kw as usize);
    let rows: Vec<Row> = app
        .counter_rows()
        .into_iter()
        .skip(app.scroll[0])
        .map(|c| match c.reason {
            None => {
                let style = if c.total > 0 {
                    kind_style(c.kind)
                } else {
                    Style::new().fg(Color::DarkGray)
                };
                let kernel = match c.kernel {
                    Some((_, n)) => Cell::from(format!("{n:>kw$}")).style(
                        if n != c.total && c.kind == Kind::InsertFailed {
                            Style::new().fg(Color::Yellow)
                        } else {
                            Style::new()
                        },
                    ),
                    None => Cell::from(""),
                };
                let series = m.spark(c.kind, spark_w);
                let peak = series.iter().copied().max().unwrap_or(0);
                let mut line = vec![Span::styled(spark(&series), kind_style(c.kind))];
                if peak > 0 {
                    line.push(Span::styled(
                        format!(" {peak}"),
                        Style::new().fg(Color::DarkGray),
                    ));
                }
                Row::new(vec![
                    Cell::from(c.kind.name()).style(style),
                    Cell::from(format!("{:>tw$}", c.total)),
                    Cell::from(format!("{:>rw$}", c.rate.unwrap_or(0))),
                    Cell::from(Line::from(line)),
                    kernel,
                ])
            }
            Some(reason) => Row::new(vec![
                Cell::from(format!(
                    " └{}",
                    c.kind.name().strip_prefix("tcp_").unwrap_or(c.kind.name())
                ))
                .style(Style::new().fg(Color::DarkGray)),
                Cell::from(format!("{:>tw$}", c.total)),
                Cell::from(""),
                Cell::from(reason).style(Style::new().fg(Color::DarkGray)),
                Cell::from(""),
            ]),
        })
        .collect();
    let head = Row::new(vec![
        "kind".to_string(),
        format!("{:>tw$}", "total"),
        format!("{:>rw$}", "/s"),
        if cell_w >= 16 {
            format!("last {spark_w}s, peak/s")
        } else {
            format!("{spark_w}s, peak")
        },
        format!("{:>kw$}", "kernel"),
    ])
    .style(header_style());
    let title = format!(" Counters: ctrace | {} ", kernel_label(app));
    f.render_widget(
        Table::new(rows, widths)
            .header(head)
            .block(block(app, Panel::Counters, title)),
        r,
    );
}

/// What the kernel column is: how old its last read is (it lags ctrace's
/// own counts by up to a second), or a recording's totals.
pub fn kernel_label(app: &App) -> String {
    let m = app.view();
    match (&m.kernel, m.kernel_age_ns()) {
        (None, _) => "kernel: n/a".into(),
        (Some(_), Some(age)) => format!("kernel ({:.1} s ago)", age as f64 / 1e9),
        (Some(_), None) if app.info.is_replay() => "kernel (recording's totals)".into(),
        (Some(_), None) => "kernel".into(),
    }
}

pub(super) fn cpu(app: &App, f: &mut Frame, r: Rect) {
    let pair = |ours: u64, k: Option<u64>| match k {
        Some(k) => format!("{ours}/{k}"),
        None => format!("{ours}"),
    };
    let rows: Vec<Row> = app
        .cpu_rows()
        .into_iter()
        .skip(app.scroll[1])
        .map(|c| {
            Row::new(vec![
                Cell::from(format!("{:>3}", c.cpu)),
                Cell::from(pair(c.insert_failed, c.kernel_insert_failed)),
                Cell::from(pair(c.tcp_invalid, c.kernel_invalid)),
            ])
        })
        .collect();
    let head = Row::new(vec!["cpu", "insert_failed", "invalid"]).style(header_style());
    let title = if app.view().kernel.is_some() {
        " Per CPU (ctrace/kernel) "
    } else {
        " Per CPU "
    };
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(3),
                Constraint::Length(14),
                Constraint::Fill(1),
            ],
        )
        .header(head)
        .block(block(app, Panel::Cpu, title.into())),
        r,
    );
}

pub(super) fn top(app: &App, f: &mut Frame, r: Rect) {
    let arrow = |c: SortCol| {
        if app.sort == c {
            if app.sort_desc {
                "▼"
            } else {
                "▲"
            }
        } else {
            ""
        }
    };
    let all = app.top_rows();
    let n = all.len();
    let focused = app.focus == Panel::Top;
    let rows: Vec<Row> = all
        .into_iter()
        .skip(app.scroll[2])
        .enumerate()
        .map(|(i, t)| {
            let count = if t.err > 0 {
                format!("{:>8}~", t.count)
            } else {
                format!("{:>8}", t.count)
            };
            let mut cells = vec![Cell::from(count)];
            if let Some((ip, port)) = t.src {
                cells.push(Cell::from(format!("{ip}:{port}")));
            }
            cells.push(Cell::from(t.dst.0.to_string()));
            cells.push(Cell::from(format!("{:>5}", t.dst.1)));
            let row = Row::new(cells);
            if i == 0 && focused {
                row.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let (head, widths, what, other): (Vec<String>, Vec<Constraint>, &str, &str) = match app.top_view
    {
        TopView::Destinations => (
            vec![
                format!("failures{}", arrow(SortCol::Count)),
                format!("destination{}", arrow(SortCol::Destination)),
                format!("port{}", arrow(SortCol::Port)),
            ],
            vec![
                Constraint::Length(9),
                Constraint::Fill(1),
                Constraint::Length(6),
            ],
            "destinations",
            "flows",
        ),
        TopView::Flows => (
            vec![
                format!("failures{}", arrow(SortCol::Count)),
                format!("source{}", arrow(SortCol::Source)),
                format!("destination{}", arrow(SortCol::Destination)),
                format!("port{}", arrow(SortCol::Port)),
            ],
            vec![
                Constraint::Length(9),
                Constraint::Fill(1),
                Constraint::Fill(1),
                Constraint::Length(6),
            ],
            "flows",
            "destinations",
        ),
    };
    // the longest that fits
    let title = [
        format!(" Top {what} by failures ({n})  t: {other}  s/S: sort  Enter: incidents "),
        format!(" Top {what} by failures ({n})  Enter: incidents "),
        format!(" Top {what} by failures ({n}) "),
        format!(" Top {what} ({n}) "),
    ]
    .into_iter()
    .find(|t| t.chars().count() + 2 <= r.width as usize)
    .unwrap_or_else(|| format!(" Top ({n}) "));
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(head).style(header_style()))
            .block(block(app, Panel::Top, title)),
        r,
    );
}

/// Who an event belongs to: the workload that owns its original source, or,
/// when none is known, the netns it was seen in if that is not the traced one.
pub fn who(app: &App, e: &Event) -> String {
    match &e.workload {
        Some(w) => w.label(),
        None if e.netns != 0 && e.netns != app.info.netns => format!("ns:{}", e.netns),
        None => "-".into(),
    }
}

/// The translation in a few characters: `as ADDR:PORT` (the new source) for
/// a source NAT, else the whole reply tuple.
pub fn translation(e: &Event) -> Option<String> {
    let r = e.reply.as_ref()?;
    let ep = |a: std::net::IpAddr, p: u16| match a {
        std::net::IpAddr::V6(a) => format!("[{a}]:{p}"),
        a => format!("{a}:{p}"),
    };
    if r.src == e.orig.dst && r.sport == e.orig.dport {
        if r.dst == e.orig.src && r.dport == e.orig.sport {
            return None; // not translated
        }
        Some(format!("as {}", ep(r.dst, r.dport)))
    } else {
        Some(format!("reply {r}"))
    }
}

fn clip(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        format!("{s:<w$}")
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// One log line: time, kind, who (workload or netns), protocol and original
/// tuple, its translation, CPU, incident, reason. `wide`: milliseconds and a
/// wider workload column.
pub fn log_line(app: &App, e: &Event, wide: bool) -> Line<'static> {
    let mut time = app.info.event_time(e.ts_ns);
    if !wide && !time.starts_with('+') {
        time.truncate(8);
    }
    let dim = Style::new().fg(Color::DarkGray);
    let mut spans = vec![
        Span::styled(format!("{time} "), dim),
        Span::styled(format!("{:<14} ", e.kind.name()), kind_style(e.kind)),
        Span::styled(
            format!("{} ", clip(&who(app, e), if wide { 18 } else { 10 })),
            Style::new().fg(Color::Cyan),
        ),
        Span::raw(format!("{} {}", e.proto, e.orig)),
    ];
    if let Some(t) = translation(e) {
        spans.push(Span::styled(format!(" {t}"), Style::new().bold()));
    }
    spans.push(Span::styled(format!(" c{}", e.cpu), dim));
    if let Some(i) = e.incident {
        spans.push(Span::styled(
            format!(" #{i}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    if !e.reason.is_empty() {
        spans.push(Span::styled(format!("  {}", e.reason), dim));
    }
    Line::from(spans)
}

/// The line without its first `n` columns (the log's sideways scroll).
fn skip_cols(line: Line<'static>, mut n: usize) -> Line<'static> {
    let style = line.style;
    let mut out = Vec::new();
    for sp in line.spans {
        let len = sp.content.chars().count();
        if n >= len {
            n -= len;
            continue;
        }
        let rest: String = sp.content.chars().skip(n).collect();
        n = 0;
        out.push(Span::styled(rest, sp.style));
    }
    Line::from(out).style(style)
}

/// Words of `text` in lines of at most `w` columns (longer words are cut).
pub fn wrap(text: &str, w: usize) -> Vec<String> {
    let w = w.max(1);
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        let (cl, wl) = (cur.chars().count(), word.chars().count());
        if cl > 0 && cl + 1 + wl > w {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
        while cur.chars().count() > w {
            let head: String = cur.chars().take(w).collect();
            cur = cur.chars().skip(w).collect();
            lines.push(head);
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

/// `parts` joined by " · " in lines of at most `w` columns, a part never
/// broken unless it is wider than a line on its own.
pub fn wrap_parts(parts: &[String], w: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for p in parts {
        let (cl, pl) = (cur.chars().count(), p.chars().count());
        if cl > 0 && cl + 3 + pl <= w {
            cur.push_str(" · ");
            cur.push_str(p);
            continue;
        }
        if cl > 0 {
            lines.push(std::mem::take(&mut cur));
        }
        if pl <= w {
            cur = p.clone();
        } else {
            let mut v = wrap(p, w);
            cur = v.pop().unwrap_or_default();
            lines.extend(v);
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// The selected event's detail under its line, wrapped: nothing of it is
/// cut, whatever the width; the translation first.
fn detail_lines(app: &App, e: &Event, w: usize, max: usize) -> Vec<Line<'static>> {
    let mut parts = Vec::new();
    if let Some(t) = translation(e) {
        parts.push(t);
    }
    if let Some(r) = &e.reply {
        parts.push(format!("reply {r}"));
    }
    parts.push(format!("{} {}", e.proto, e.orig));
    if let Some(p) = e.port {
        parts.push(format!("port {p}"));
    }
    parts.push(format!("who {}", who(app, e)));
    parts.push(format!("netns {}", e.netns));
    parts.push(format!("cpu {}", e.cpu));
    if let Some(i) = e.incident {
        parts.push(format!("incident #{i}"));
    }
    if !e.reason.is_empty() {
        parts.push(e.reason.to_string());
    }
    wrap_parts(&parts, w.saturating_sub(4))
        .into_iter()
        .take(max)
        .enumerate()
        .map(|(i, l)| {
            let lead = if i == 0 { "  ↳ " } else { "    " };
            Line::styled(format!("{lead}{l}"), Style::new().fg(Color::Gray))
        })
        .collect()
}

/// The hint a node without failures shows.
pub fn quiet_hint(app: &App) -> Option<&'static str> {
    if app.view().failures() > 0 {
        return None;
    }
    Some(match app.info.origin {
        crate::tui::app::Origin::Live => "no failures yet: `ctrace top --lab` shows a demo",
        crate::tui::app::Origin::Lab(_) => "no failures yet: the lab's traffic is starting",
        crate::tui::app::Origin::Replay { .. } => "no failures in this recording so far",
    })
}

pub(super) fn log(app: &App, f: &mut Frame, r: Rect) {
    let m = app.view();
    let inner_w = r.width.saturating_sub(2) as usize;
    let wide = r.width >= 120;
    let mut h = r.height.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = Vec::new();
    if let Some(hint) = quiet_hint(app) {
        lines.push(Line::styled(hint, Style::new().fg(Color::Yellow)));
        h = h.saturating_sub(1);
    }
    let idx = app.log_index();
    let highlight = app.focus == Panel::Log || app.log_sel.is_some();
    let detail = if highlight {
        app.log_events()
            .nth(idx)
            // at most half the log: the events stay in view
            .map(|(_, e)| detail_lines(app, e, inner_w, (h / 2).clamp(1, 4)))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let rows = h.saturating_sub(detail.len()).max(1);
    let offset = if idx < rows { 0 } else { idx + 1 - rows };
    let mut cut = false;
    for (i, (_, e)) in app.log_events().skip(offset).take(rows).enumerate() {
        let l = log_line(app, e, wide);
        cut |= l.width() > inner_w + app.log_hscroll as usize;
        let l = skip_cols(l, app.log_hscroll as usize);
        if i + offset == idx && highlight {
            lines.push(l.style(Style::new().add_modifier(Modifier::REVERSED)));
            lines.extend(detail.iter().cloned());
        } else {
            lines.push(l);
        }
    }
    let mut title = format!(
        " Events, newest first ({} kept of {}) ",
        m.ring.len(),
        m.stats.total
    );
    if !app.filter.is_empty() {
        title.push_str(&format!("filter: {} ", app.filter.text));
    }
    if app.log_sel.is_some() {
        title.push_str(&format!("[{} down] ", idx));
    }
    if app.log_hscroll > 0 {
        title.push_str(&format!("[+{} cols] ", app.log_hscroll));
    }
    if cut {
        title.push_str("←/→ ");
    }
    f.render_widget(
        Paragraph::new(lines).block(block(app, Panel::Log, title)),
        r,
    );
}

/// The incidents: all, or those of the destination or flow chosen in the
/// top table; newest first, the first visible row selected.
pub(super) fn incidents(app: &App, f: &mut Frame, r: Rect) {
    let all = app.incident_rows();
    let n = all.len();
    let focused = app.focus == Panel::Incidents;
    let lines: Vec<Line> = all
        .into_iter()
        .skip(app.scroll[4])
        .take(r.height.saturating_sub(2) as usize)
        .enumerate()
        .map(|(i, inc)| {
            let outcome_style = match inc.outcome.as_str() {
                "recovered" | "merged" => Style::new().fg(Color::Green),
                "failed" | "lost" | "reset" => Style::new().fg(Color::LightRed),
                _ => Style::new().fg(Color::Yellow),
            };
            let delay = inc.delay_ms.map(|d| format!(" {d}ms")).unwrap_or_default();
            let mut spans = vec![
                Span::styled(format!("#{:<5}", inc.id), Style::new().fg(Color::Yellow)),
                Span::raw(format!("{:<14}", inc.kind)),
                Span::styled(format!("{:<9}", inc.outcome), outcome_style),
                Span::raw(format!("{delay} {}", inc.flow)),
            ];
            if let Some(t) = &inc.translated {
                spans.push(Span::raw(format!(" as {}:{}", t.dst, t.dport)));
            }
            let l = Line::from(spans);
            if i == 0 && focused {
                l.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                l
            }
        })
        .collect();
    let mut title = match app.incident_scope {
        Some(s) => match s.src {
            Some((ip, p)) => format!(" Incidents of {ip}:{p} > {}:{} ({n}) ", s.dst.0, s.dst.1),
            None => format!(" Incidents to {}:{} ({n}) ", s.dst.0, s.dst.1),
        },
        None => format!(" Incidents ({n}) "),
    };
    if focused {
        title.push_str(if app.incident_scope.is_some() {
            "Enter: timeline  Esc: back "
        } else {
            "Enter: timeline "
        });
    }
    let body = if n == 0 {
        vec![Line::styled(
            "none closed yet (an incident closes when its story ends)",
            Style::new().fg(Color::DarkGray),
        )]
    } else {
        lines
    };
    f.render_widget(
        Paragraph::new(body).block(block(app, Panel::Incidents, title)),
        r,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctstat::{CpuStats, Snapshot};
    use crate::tui::app::{Origin, SourceInfo};
    use crate::tui::event::Msg;
    use crate::tui::testkit;
    use crate::tui::ui::tests::{app, counter, line_with, screen};

    #[test]
    fn flooding() {
        let mut a = app();
        let evs = testkit::mix(20_000, 10);
        let want_insert = evs.iter().filter(|e| e.kind == Kind::InsertFailed).count() as u64;
        let newest = evs.last().unwrap().clone();
        a.update(Msg::Events(evs));
        a.update(Msg::Tick {
            now_ns: 10_000_000_000,
        });
        a.update(Msg::Kernel(Snapshot {
            per_cpu: vec![CpuStats {
                cpu: 0,
                insert_failed: 2600,
                ..Default::default()
            }],
        }));
        let s = screen(&a, 160, 45);
        // total, per second (20000 over 10 s, 1/8 of them insert_failed), the
        // sparkline's peak, kernel
        assert_eq!(
            counter(&s, "insert_failed"),
            vec![want_insert, 250, 250, 2600]
        );
        assert_eq!(counter(&s, "nat_alloc")[0], 7500);
        assert!(s.contains("2000 ev/s  20000 events  up 00:00:10"), "{s}");
        assert!(s.contains("Events, newest first (10000 kept of 20000)"));
        // the newest event is the first log line, with its tuples
        let first = line_with(&s, "Events, newest first");
        let idx = s.lines().position(|l| l == first).unwrap();
        let l = s.lines().nth(idx + 1).unwrap();
        assert!(l.contains(newest.kind.name()), "{l}");
        assert!(l.contains(&newest.orig.to_string()), "{l}");
        let reply = newest.reply.unwrap();
        assert!(
            l.contains(&format!(" as {}:{} ", reply.dst, reply.dport)),
            "{l}"
        );
        // and under it, the selected event's detail: the whole reply tuple
        let d = s.lines().nth(idx + 2).unwrap();
        assert!(d.contains(&format!("reply {reply}")), "{d}");
        // top destinations: 50 ports, failures only
        assert!(s.contains("Top destinations by failures (50)"), "{s}");
        // per CPU: insert_failed happen on CPU 3 only (i % 8 == 3)
        let cpu3 = line_with(&s, "│  3 ");
        assert!(cpu3.contains(&format!("{want_insert}")), "{cpu3}");
        assert!(line_with(&s, "│  0 ").contains("0/2600"));
        // reasons under the counters
        assert!(s.contains("SEQ is over upper bound"));
    }

    #[test]
    fn event_times_use_the_source_clock() {
        let mut info: SourceInfo = testkit::info(Origin::Live);
        info.tod_at_start_ns = Some(3_600_000_000_000);
        let mut a = App::new(info);
        a.update(Msg::Events(vec![testkit::event(
            1,
            Kind::HostRst,
            61_500_000_000,
            0,
            80,
        )]));
        assert!(screen(&a, 120, 30).contains("01:01:01.500 host_rst"));
    }

    #[test]
    fn sparkline_scales() {
        assert_eq!(spark(&[0, 1, 2, 4, 8]), " ▁▂▄█");
        assert_eq!(spark(&[0, 0]), "  ");
        assert_eq!(spark(&[]), "");
    }
}
