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
    let widths = [
        Constraint::Length(14),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Fill(1),
        Constraint::Length(9),
    ];
    // what is left for the sparkline: borders, fixed columns, 4 gaps
    let spark_w = (r.width.saturating_sub(2 + 14 + 9 + 6 + 9 + 4) as usize).min(60);
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
                    Some((_, n)) => Cell::from(format!("{n:>9}")).style(
                        if n != c.total && c.kind == Kind::InsertFailed {
                            Style::new().fg(Color::Yellow)
                        } else {
                            Style::new()
                        },
                    ),
                    None => Cell::from(""),
                };
                Row::new(vec![
                    Cell::from(c.kind.name()).style(style),
                    Cell::from(format!("{:>9}", c.total)),
                    Cell::from(format!("{:>6}", c.rate.unwrap_or(0))),
                    Cell::from(spark(&m.spark(c.kind, spark_w))).style(kind_style(c.kind)),
                    kernel,
                ])
            }
            Some(reason) => Row::new(vec![
                Cell::from(format!(
                    " └{}",
                    c.kind.name().strip_prefix("tcp_").unwrap_or(c.kind.name())
                ))
                .style(Style::new().fg(Color::DarkGray)),
                Cell::from(format!("{:>9}", c.total)),
                Cell::from(""),
                Cell::from(reason).style(Style::new().fg(Color::DarkGray)),
                Cell::from(""),
            ]),
        })
        .collect();
    let head = Row::new(vec![
        "kind",
        "    total",
        "    /s",
        "per second",
        "   kernel",
    ])
    .style(header_style());
    let title = if m.kernel.is_some() {
        " Counters: ctrace | kernel ".to_string()
    } else {
        " Counters (kernel: n/a) ".to_string()
    };
    f.render_widget(
        Table::new(rows, widths)
            .header(head)
            .block(block(app, Panel::Counters, title)),
        r,
    );
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
    let rows: Vec<Row> = all
        .into_iter()
        .skip(app.scroll[2])
        .map(|t| {
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
            Row::new(cells)
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
    let title = format!(" Top {what} by failures ({n})  t: {other}  s/S: sort ");
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(head).style(header_style()))
            .block(block(app, Panel::Top, title)),
        r,
    );
}

/// One log line: time, kind, CPU, original -> reply tuple, port, reason.
pub fn log_line(app: &App, e: &Event) -> Line<'static> {
    let mut spans = vec![
        Span::styled(
            format!("{} ", app.info.event_time(e.ts_ns)),
            Style::new().fg(Color::DarkGray),
        ),
        Span::styled(format!("{:<15}", e.kind.name()), kind_style(e.kind)),
        Span::raw(format!("c{:<3}", e.cpu)),
        Span::raw(format!("{} {}", e.proto, e.orig)),
    ];
    if let Some(r) = &e.reply {
        spans.push(Span::styled(" → ", Style::new().fg(Color::DarkGray)));
        spans.push(Span::raw(r.to_string()));
    }
    if let Some(p) = e.port {
        spans.push(Span::raw(format!(" port {p}")));
    }
    if !e.reason.is_empty() {
        spans.push(Span::styled(
            format!("  {}", e.reason),
            Style::new().fg(Color::DarkGray),
        ));
    }
    Line::from(spans)
}

pub(super) fn log(app: &App, f: &mut Frame, r: Rect) {
    let m = app.view();
    let h = r.height.saturating_sub(2) as usize;
    let idx = app.log_index();
    let offset = if idx < h { 0 } else { idx + 1 - h };
    let lines: Vec<Line> = app
        .log_events()
        .skip(offset)
        .take(h)
        .enumerate()
        .map(|(i, (_, e))| {
            let l = log_line(app, e);
            if i + offset == idx && (app.focus == Panel::Log || app.log_sel.is_some()) {
                l.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                l
            }
        })
        .collect();
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
    f.render_widget(
        Paragraph::new(lines).block(block(app, Panel::Log, title)),
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
        let s = screen(&a, 120, 40);
        // total, per second (20000 over 10 s, 1/8 of them insert_failed), kernel
        assert_eq!(counter(&s, "insert_failed"), vec![want_insert, 250, 2600]);
        assert_eq!(counter(&s, "nat_alloc")[0], 7500);
        assert!(s.contains("2000 ev/s  20000 events  up 00:00:10"), "{s}");
        assert!(s.contains("Events, newest first (10000 kept of 20000)"));
        // the newest event is the first log line, with its tuples
        let first = line_with(&s, "Events, newest first");
        let idx = s.lines().position(|l| l == first).unwrap();
        let l = s.lines().nth(idx + 1).unwrap();
        assert!(l.contains(newest.kind.name()), "{l}");
        assert!(l.contains(&newest.orig.to_string()), "{l}");
        assert!(l.contains(&format!("→ {}", newest.reply.unwrap())), "{l}");
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
