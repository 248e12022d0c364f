//! Rendering: a pure function of the [`App`] state onto a frame. Nothing here
//! reads the clock, the kernel or the terminal.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use crate::event::{Event, Kind};
use crate::node::NodeState;

use super::app::{App, Mode, Origin, Panel, SortCol, TopView};

const SPARK: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Below this the screen only says it is too small (and the lost count).
pub const MIN_W: u16 = 20;
pub const MIN_H: u16 = 6;

pub fn render(app: &App, f: &mut Frame) {
    let area = f.area();
    let m = app.view();
    if area.width < MIN_W || area.height < MIN_H {
        let msg = Line::from(vec![
            lost_span(m.lost),
            Span::raw(format!(" · {}x{} too small", area.width, area.height)),
        ]);
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let header_h = if area.height >= 20 { 3 } else { 1 };
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(header_h),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    render_header(app, f, header);
    for (panel, r) in panel_areas(app, body) {
        match panel {
            Panel::Counters => render_counters(app, f, r),
            Panel::Cpu => render_cpu(app, f, r),
            Panel::Top => render_top(app, f, r),
            Panel::Log => render_log(app, f, r),
        }
    }
    render_footer(app, f, footer);
    match app.mode {
        Mode::Detail(seq) => render_detail(app, f, area, seq),
        Mode::Help => render_help(app, f, area),
        _ => {}
    }
}

/// Where each visible panel goes. Small screens show fewer panels; the
/// focused one is always visible.
pub fn panel_areas(app: &App, body: Rect) -> Vec<(Panel, Rect)> {
    let focus = app.focus;
    if body.height < 12 || body.width < 60 {
        return vec![(focus, body)];
    }
    let counter_rows = app.counter_rows().len() as u16;
    let upper_h = if body.height >= 30 {
        (counter_rows + 3).clamp(12, body.height / 2)
    } else {
        12
    };
    let [upper, lower] =
        Layout::vertical([Constraint::Length(upper_h), Constraint::Fill(1)]).areas(body);
    let mut out = Vec::new();
    if body.width >= 70 {
        let cpu_w = (body.width * 2 / 5).min(34);
        let [c, p] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(cpu_w)]).areas(upper);
        out.push((Panel::Counters, c));
        out.push((Panel::Cpu, p));
    } else if focus == Panel::Cpu {
        out.push((Panel::Cpu, upper));
    } else {
        out.push((Panel::Counters, upper));
    }
    if lower.height >= 18 {
        let [t, l] = Layout::vertical([Constraint::Length(10), Constraint::Fill(1)]).areas(lower);
        out.push((Panel::Top, t));
        out.push((Panel::Log, l));
    } else if focus == Panel::Top {
        out.push((Panel::Top, lower));
    } else {
        out.push((Panel::Log, lower));
    }
    out
}

fn lost_span(lost: u64) -> Span<'static> {
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

fn header_line1(app: &App) -> Line<'static> {
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
        spans.push(Span::raw(format!("  node {}", app.info.hostname)));
    }
    Line::from(spans)
}

fn header_line2(app: &App) -> Line<'static> {
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
            "  (? for why)",
            Style::new().fg(Color::DarkGray),
        ));
    }
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

fn render_header(app: &App, f: &mut Frame, r: Rect) {
    let mut lines = vec![header_line1(app)];
    if r.height >= 3 {
        lines.push(header_line2(app));
        lines.push(node_line(app.view().node.as_ref(), app.info.is_replay()));
    }
    f.render_widget(Paragraph::new(lines), r);
}

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

fn render_counters(app: &App, f: &mut Frame, r: Rect) {
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

fn render_cpu(app: &App, f: &mut Frame, r: Rect) {
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

fn render_top(app: &App, f: &mut Frame, r: Rect) {
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

fn render_log(app: &App, f: &mut Frame, r: Rect) {
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

fn render_footer(app: &App, f: &mut Frame, r: Rect) {
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

fn render_detail(app: &App, f: &mut Frame, area: Rect, seq: u64) {
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

fn render_help(app: &App, f: &mut Frame, area: Rect) {
    let r = centered(area, 90, 90);
    let mut lines: Vec<Line> = [
        "q quit · p pause/resume the view (counting goes on; a replay's clock stops)",
        "Tab / Shift-Tab move between panels · ↑↓ PgUp PgDn Home End scroll the focused one",
        "s next sort column · S reverse order · t destinations / flows",
        "/ filter: kind (or its start: tcp), port, address part; kind: port: addr: force it",
        "Enter the selected event's full record · Esc clear the filter / close",
        "Kernel column: insert_failed, clash_resolve, invalid (all protocols), drop",
        "from the kernel's own conntrack statistics since ctrace started.",
        "",
    ]
    .into_iter()
    .map(Line::from)
    .collect();
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
    use super::*;
    use crate::ctstat::{CpuStats, Snapshot};
    use crate::node::NodeState;
    use crate::tui::app::SourceInfo;
    use crate::tui::event::Msg;
    use crate::tui::testkit;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent};
    use ratatui::Terminal;

    fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(app, f)).unwrap();
        t
    }

    fn text(t: &Terminal<TestBackend>) -> String {
        let buf = t.backend().buffer();
        let mut s = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    fn screen(app: &App, w: u16, h: u16) -> String {
        text(&draw(app, w, h))
    }

    /// The screen line that contains `needle` (the first one).
    fn line_with<'a>(s: &'a str, needle: &str) -> &'a str {
        s.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{s}"))
    }

    /// The numbers on the counters row of a kind.
    fn counter(s: &str, kind: &str) -> Vec<u64> {
        let l = line_with(s, &format!("│{kind} "));
        let l = l.split('│').nth(1).unwrap();
        l.split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    }

    fn app() -> App {
        App::new(testkit::info(Origin::Live))
    }

    fn key(app: &mut App, c: KeyCode) {
        app.update(Msg::Key(KeyEvent::from(c)));
    }

    #[test]
    fn empty_state() {
        let s = screen(&app(), 100, 30);
        assert!(
            s.contains("ctrace top LIVE  lost 0  0 ev/s  0 events"),
            "{s}"
        );
        assert!(
            s.contains("kernel 6.18.0-test nat:fentry confirm:fentry"),
            "{s}"
        );
        assert!(s.contains("nat:fentry"));
        assert!(s.contains("window:kprobe*"), "degraded marker\n{s}");
        assert!(s.contains("symptoms:MISSING"));
        assert!(s.contains("node: reading mitigation state"));
        assert_eq!(counter(&s, "insert_failed"), vec![0, 0]);
        assert!(s.contains("Events, newest first (0 kept of 0)"));
        assert!(s.contains("q quit"));
    }

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
    fn lost_events_are_red() {
        let mut a = app();
        a.update(Msg::Lost(42));
        let t = draw(&a, 100, 30);
        let s = text(&t);
        assert!(s.contains("lost 42"));
        let (x, y) = s
            .lines()
            .enumerate()
            .find_map(|(y, l)| {
                l.find("lost 42")
                    .map(|b| (l[..b].chars().count() as u16, y as u16))
            })
            .unwrap();
        assert_eq!(t.backend().buffer()[(x, y)].bg, Color::Red);
        // and still shown on the smallest screens
        for (w, h) in [(80, 24), (40, 10), (30, 3)] {
            assert!(screen(&a, w, h).contains("lost 42"), "{w}x{h}");
        }
        let mut z = app();
        z.update(Msg::Lost(0));
        let t = draw(&z, 100, 30);
        let s = text(&t);
        let x = line_with(&s, "lost 0").find("lost 0").unwrap() as u16;
        assert_ne!(t.backend().buffer()[(x, 0)].bg, Color::Red);
    }

    #[test]
    fn usable_at_80x24() {
        let mut a = app();
        a.update(Msg::Events(testkit::mix(800, 2)));
        a.update(Msg::Tick {
            now_ns: 2_000_000_000,
        });
        let s = screen(&a, 80, 24);
        assert_eq!(s.lines().count(), 24);
        assert!(s.lines().all(|l| l.chars().count() == 80));
        assert!(s.contains("lost 0"));
        assert_eq!(counter(&s, "insert_failed")[0], 100);
        assert!(s.contains("Per CPU"));
        assert!(s.contains("Events, newest first (800 kept of 800)"));
        assert!(s.contains("q quit"));
        // the top table replaces the log when focused
        key(&mut a, KeyCode::BackTab);
        let s = screen(&a, 80, 24);
        assert!(s.contains("Top destinations by failures"), "{s}");
        assert!(s.contains("failures▼"));
    }

    #[test]
    fn small_terminals_degrade_without_panicking() {
        let mut a = app();
        a.update(Msg::Events(testkit::mix(500, 1)));
        a.update(Msg::Lost(3));
        for w in 0..=90 {
            for h in 0..=30 {
                screen(&a, w, h);
            }
        }
        // one panel: the focused one
        let s = screen(&a, 50, 12);
        assert!(s.contains("Events, newest first"), "{s}");
        assert!(!s.contains("Per CPU"));
        let s = screen(&a, 10, 4);
        assert!(s.contains("lost 3"), "{s}");
        assert!(s.contains("small"), "{s}");
        // resizing one terminal back and forth
        let mut t = Terminal::new(TestBackend::new(120, 40)).unwrap();
        for (w, h) in [(120, 40), (20, 6), (80, 24), (200, 60), (1, 1), (100, 30)] {
            t.backend_mut().resize(w, h);
            t.draw(|f| render(&a, f)).unwrap();
        }
        assert!(text(&t).contains("lost 3"));
    }

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
    fn a_replay_without_trailer_says_lost_is_unknown() {
        let mut info = testkit::info(Origin::Replay {
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
