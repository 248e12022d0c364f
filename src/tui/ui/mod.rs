//! Rendering: a pure function of the [`App`] state onto a frame. Nothing here
//! reads the clock, the kernel or the terminal.
//!
//! `header`, `panels` and `overlays` draw the parts; their public items are
//! re-exported here.

mod header;
mod overlays;
mod panels;
#[cfg(test)]
mod sizes;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, Mode, Panel};

pub use header::node_line;
pub use overlays::{HELP_END, LEGEND_END};
pub use panels::{kind_style, log_line, spark};

/// Below this the screen only says it is too small (and the lost count).
pub const MIN_W: u16 = 20;
pub const MIN_H: u16 = 6;

pub fn render(app: &App, f: &mut Frame) {
    let area = f.area();
    let m = app.view();
    if area.width < MIN_W || area.height < MIN_H {
        let msg = Line::from(vec![
            header::lost_span(m.lost),
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
    header::render(app, f, header);
    let (shown, hidden) = panel_areas(app, body);
    for (panel, r) in shown {
        match panel {
            Panel::Counters => panels::counters(app, f, r),
            Panel::Cpu => panels::cpu(app, f, r),
            Panel::Top => panels::top(app, f, r),
            Panel::Log => panels::log(app, f, r),
            Panel::Incidents => panels::incidents(app, f, r),
        }
    }
    if !hidden.is_empty() {
        let hint = Rect {
            y: body.y + body.height - 1,
            height: 1,
            ..body
        };
        f.render_widget(Paragraph::new(hidden_hint(&hidden, area)), hint);
    }
    overlays::footer(app, f, footer);
    match app.mode {
        Mode::Detail(seq) => overlays::detail(app, f, area, seq),
        Mode::Help => overlays::help(app, f, area),
        Mode::Legend => overlays::legend(app, f, area),
        Mode::Timeline(id) => overlays::timeline(app, f, area, id),
        _ => {}
    }
}

/// The line that names the panels the screen has no room for.
fn hidden_hint(hidden: &[Panel], area: Rect) -> Line<'static> {
    let names: Vec<&str> = hidden.iter().map(|p| p.title()).collect();
    Line::from(vec![
        Span::styled(
            format!(
                "hidden at {}x{}: {}",
                area.width,
                area.height,
                names.join(", ")
            ),
            Style::new().fg(Color::Yellow),
        ),
        Span::styled(
            " · Tab shows each in turn · all from 160x45",
            Style::new().fg(Color::DarkGray),
        ),
    ])
}

/// Where each visible panel goes, and which panels have no room.
///
/// As the screen shrinks, panels give way in this order: the per-CPU split
/// first (below 140 columns it leaves the row of the counters), then the
/// incidents (below 20 rows for the log and them), then the top table (below
/// 70 columns); the counters and the log stay. The focused panel is always
/// shown, in the place of its neighbour; a hint line names the hidden ones.
pub fn panel_areas(app: &App, body: Rect) -> (Vec<(Panel, Rect)>, Vec<Panel>) {
    let (shown, hidden) = place(app, body);
    if hidden.is_empty() || body.height < 2 {
        return (shown, hidden);
    }
    // one line for the hint
    let body = Rect {
        height: body.height - 1,
        ..body
    };
    place(app, body)
}

fn place(app: &App, body: Rect) -> (Vec<(Panel, Rect)>, Vec<Panel>) {
    let focus = app.focus;
    let mut out = Vec::new();
    if body.height < 12 || body.width < 60 {
        out.push((focus, body));
    } else {
        let counter_rows = app.counter_rows().len() as u16;
        let upper_h = if body.height >= 30 {
            (counter_rows + 3).clamp(12, body.height / 2)
        } else {
            12
        };
        let [upper, lower] =
            Layout::vertical([Constraint::Length(upper_h), Constraint::Fill(1)]).areas(body);
        // the upper row: counters, then the top table and the CPUs as room allows
        if body.width >= 140 {
            let top_w = (body.width / 4).clamp(40, 60);
            let [c, t, p] = Layout::horizontal([
                Constraint::Fill(1),
                Constraint::Length(top_w),
                Constraint::Length(34),
            ])
            .areas(upper);
            out.extend([(Panel::Counters, c), (Panel::Top, t), (Panel::Cpu, p)]);
        } else if body.width >= 70 {
            let right_w = if body.width >= 100 { 40 } else { 32 };
            let [c, r] =
                Layout::horizontal([Constraint::Fill(1), Constraint::Length(right_w)]).areas(upper);
            out.push((Panel::Counters, c));
            out.push((
                if focus == Panel::Cpu {
                    Panel::Cpu
                } else {
                    Panel::Top
                },
                r,
            ));
        } else {
            let p = match focus {
                Panel::Cpu | Panel::Top => focus,
                _ => Panel::Counters,
            };
            out.push((p, upper));
        }
        // the lower part: the log, and the incidents as room allows
        if body.width >= 200 {
            let [l, i] =
                Layout::horizontal([Constraint::Fill(1), Constraint::Length(72)]).areas(lower);
            out.extend([(Panel::Log, l), (Panel::Incidents, i)]);
        } else if lower.height >= 20 {
            let [i, l] =
                Layout::vertical([Constraint::Length(8), Constraint::Fill(1)]).areas(lower);
            out.extend([(Panel::Incidents, i), (Panel::Log, l)]);
        } else if !out.iter().any(|(p, _)| *p == focus) {
            out.push((focus, lower));
        } else {
            out.push((Panel::Log, lower));
        }
    }
    let hidden = Panel::ALL
        .iter()
        .copied()
        .filter(|p| !out.iter().any(|(q, _)| q == p))
        .collect();
    (out, hidden)
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent};
    use ratatui::style::Color;
    use ratatui::Terminal;

    use super::*;
    use crate::tui::app::Origin;
    use crate::tui::event::Msg;
    use crate::tui::testkit;

    pub(super) fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(app, f)).unwrap();
        t
    }

    pub(super) fn text(t: &Terminal<TestBackend>) -> String {
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

    pub(super) fn screen(app: &App, w: u16, h: u16) -> String {
        text(&draw(app, w, h))
    }

    /// The screen line that contains `needle` (the first one).
    pub(super) fn line_with<'a>(s: &'a str, needle: &str) -> &'a str {
        s.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{s}"))
    }

    /// The numbers on the counters row of a kind.
    pub(super) fn counter(s: &str, kind: &str) -> Vec<u64> {
        let l = line_with(s, &format!("│{kind} "));
        let l = l.split('│').nth(1).unwrap();
        l.split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    }

    pub(super) fn app() -> App {
        App::new(testkit::info(Origin::Live))
    }

    pub(super) fn key(app: &mut App, c: KeyCode) {
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
        // the top table beside the counters; the CPUs give way, and say so
        assert!(s.contains("┌ Top destinations (50)"), "{s}");
        assert!(s.contains("failures▼"));
        assert!(s.contains("hidden at 80x24: Per CPU, Incidents"), "{s}");
        assert!(s.contains("Events, newest first (800 kept of 800)"));
        assert!(s.contains("q quit"));
        // a hidden panel takes its neighbour's place when focused
        key(&mut a, KeyCode::BackTab);
        key(&mut a, KeyCode::BackTab);
        assert_eq!(a.focus, Panel::Cpu);
        let s = screen(&a, 80, 24);
        assert!(s.contains("┌ Per CPU"), "{s}");
        assert!(
            s.contains("hidden at 80x24: Top destinations, Incidents"),
            "{s}"
        );
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
        assert!(!s.contains("┌ Per CPU"), "{s}");
        assert!(s.contains("hidden at 50x12: Counters, Per CPU"), "{s}");
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
}
