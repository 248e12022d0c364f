//! Keys as one table: which key does what in which mode, and how the help
//! names it. The dispatcher ([`App::on_key`]) and the help overlay both read
//! [`KEYS`], so a key and its help are written once.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::filter::Filter;
use super::{App, IncidentScope, Mode, Panel, SortCol, TopView};

/// The modes a binding applies in: a [`Mode`] without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Normal,
    /// Typing a filter: keys the table does not name are typed.
    Filter,
    /// The help or the legend: keys the table does not name close it.
    Help,
    /// An event's record or an incident's timeline: keys the table does not
    /// name close it.
    Detail,
}

impl Scope {
    pub fn of(mode: Mode) -> Scope {
        match mode {
            Mode::Normal => Scope::Normal,
            Mode::Filter => Scope::Filter,
            Mode::Help | Mode::Legend => Scope::Help,
            Mode::Detail(_) | Mode::Timeline(_) => Scope::Detail,
        }
    }
}

/// A line of the help: the bindings of one group share it, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Session,
    Move,
    Top,
    Filter,
    Event,
}

impl Group {
    /// The help's order.
    pub const ALL: [Group; 5] = [
        Group::Session,
        Group::Move,
        Group::Top,
        Group::Filter,
        Group::Event,
    ];
}

/// What a key does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    TogglePause,
    OpenHelp,
    OpenLegend,
    /// Scroll the help or the legend by lines.
    ScrollHelp(i64),
    /// Scroll the event log sideways by columns.
    ScrollLog(i64),
    /// Esc: out of an incident list to the top table, else clear the filter.
    Back,
    /// Start typing the filter, from the one in force.
    EditFilter,
    /// Stop typing and keep the filter.
    KeepFilter,
    /// Clear the filter (and stop typing).
    ClearFilter,
    /// Delete the last character typed.
    EraseChar,
    NextPanel,
    PrevPanel,
    NextSort,
    ReverseSort,
    ToggleTopView,
    /// Scroll the focused panel by rows; the log moves its selection.
    Scroll(i64),
    /// Scroll the event's record by lines.
    ScrollDetail(i64),
    /// Enter: the selected event's full record, the selected destination's
    /// or flow's incidents, or the selected incident's timeline.
    Open,
}

/// A key: its code and the modifiers that must be held. Others may be held
/// too: `S` arrives with Shift, and Ctrl does not change what `s` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

impl Key {
    pub fn matches(&self, k: &KeyEvent) -> bool {
        k.code == self.code && k.modifiers.contains(self.mods)
    }
}

/// One row of the table.
#[derive(Debug)]
pub struct Binding {
    pub scopes: &'static [Scope],
    /// Each key and what it does.
    pub keys: &'static [(Key, Action)],
    /// How the help names the keys.
    pub label: &'static str,
    /// What the help says they do; empty: the help leaves them out, because
    /// the screen says so where they apply (the footer, the record's title).
    pub help: &'static str,
    pub group: Group,
}

const fn code(code: KeyCode) -> Key {
    Key {
        code,
        mods: KeyModifiers::NONE,
    }
}

const fn ch(c: char) -> Key {
    code(KeyCode::Char(c))
}

/// Rows per page.
const PAGE: i64 = 10;
/// Far enough to reach either end of any panel, and far from overflowing.
const FIRST: i64 = i64::MIN / 2;
const LAST: i64 = i64::MAX / 2;
/// Columns per ←/→ in the event log.
const LOG_STEP: i64 = 8;
/// How far the log scrolls sideways.
pub const LOG_HSCROLL_MAX: u16 = 400;
/// How far the event's record scrolls.
pub const DETAIL_SCROLL_MAX: u16 = 200;

const ANY: &[Scope] = &[Scope::Normal, Scope::Filter, Scope::Help, Scope::Detail];
const NORMAL: &[Scope] = &[Scope::Normal];

/// Every key. The first row that applies in the mode and matches wins.
pub static KEYS: &[Binding] = &[
    Binding {
        scopes: ANY,
        keys: &[(
            Key {
                code: KeyCode::Char('c'),
                mods: KeyModifiers::CONTROL,
            },
            Action::Quit,
        )],
        label: "Ctrl-c",
        help: "",
        group: Group::Session,
    },
    Binding {
        scopes: &[Scope::Normal, Scope::Help, Scope::Detail],
        keys: &[(ch('q'), Action::Quit)],
        label: "q",
        help: "quit",
        group: Group::Session,
    },
    Binding {
        scopes: &[Scope::Normal, Scope::Detail],
        keys: &[(ch('p'), Action::TogglePause)],
        label: "p",
        help: "pause/resume the view (counting goes on; a replay's clock stops)",
        group: Group::Session,
    },
    Binding {
        scopes: NORMAL,
        keys: &[(ch('h'), Action::OpenHelp), (code(KeyCode::F(1)), Action::OpenHelp)],
        label: "h / F1",
        help: "this help",
        group: Group::Session,
    },
    Binding {
        scopes: NORMAL,
        keys: &[(ch('?'), Action::OpenLegend)],
        label: "?",
        help: "legend: colours, marks, columns",
        group: Group::Session,
    },
    Binding {
        scopes: &[Scope::Help],
        keys: &[
            (code(KeyCode::Up), Action::ScrollHelp(-1)),
            (ch('k'), Action::ScrollHelp(-1)),
            (code(KeyCode::Down), Action::ScrollHelp(1)),
            (ch('j'), Action::ScrollHelp(1)),
            (code(KeyCode::PageUp), Action::ScrollHelp(-PAGE)),
            (code(KeyCode::PageDown), Action::ScrollHelp(PAGE)),
            (code(KeyCode::Home), Action::ScrollHelp(FIRST)),
            (ch('g'), Action::ScrollHelp(FIRST)),
            (code(KeyCode::End), Action::ScrollHelp(LAST)),
            (ch('G'), Action::ScrollHelp(LAST)),
        ],
        label: "in help: ↑↓ j k PgUp PgDn Home End",
        help: "scroll it (other keys close it)",
        group: Group::Session,
    },
    Binding {
        scopes: NORMAL,
        keys: &[
            (code(KeyCode::Tab), Action::NextPanel),
            (code(KeyCode::BackTab), Action::PrevPanel),
        ],
        label: "Tab / Shift-Tab",
        help: "move between panels",
        group: Group::Move,
    },
    Binding {
        scopes: NORMAL,
        keys: &[
            (code(KeyCode::Up), Action::Scroll(-1)),
            (ch('k'), Action::Scroll(-1)),
            (code(KeyCode::Down), Action::Scroll(1)),
            (ch('j'), Action::Scroll(1)),
            (code(KeyCode::PageUp), Action::Scroll(-PAGE)),
            (code(KeyCode::PageDown), Action::Scroll(PAGE)),
            (code(KeyCode::Home), Action::Scroll(FIRST)),
            (ch('g'), Action::Scroll(FIRST)),
            (code(KeyCode::End), Action::Scroll(LAST)),
            (ch('G'), Action::Scroll(LAST)),
        ],
        label: "↑↓ PgUp PgDn Home End",
        help: "scroll the focused one (top, incidents: its first row is the selection)",
        group: Group::Move,
    },
    Binding {
        scopes: NORMAL,
        keys: &[
            (code(KeyCode::Left), Action::ScrollLog(-LOG_STEP)),
            (code(KeyCode::Right), Action::ScrollLog(LOG_STEP)),
        ],
        label: "←/→",
        help: "scroll the event log sideways",
        group: Group::Move,
    },
    Binding {
        scopes: &[Scope::Detail],
        keys: &[
            (code(KeyCode::Up), Action::ScrollDetail(-1)),
            (ch('k'), Action::ScrollDetail(-1)),
            (code(KeyCode::Down), Action::ScrollDetail(1)),
            (ch('j'), Action::ScrollDetail(1)),
        ],
        label: "↑/↓",
        help: "",
        group: Group::Event,
    },
    Binding {
        scopes: NORMAL,
        keys: &[(ch('s'), Action::NextSort)],
        label: "s",
        help: "next sort column",
        group: Group::Top,
    },
    Binding {
        scopes: NORMAL,
        keys: &[(ch('S'), Action::ReverseSort)],
        label: "S",
        help: "reverse order",
        group: Group::Top,
    },
    Binding {
        scopes: NORMAL,
        keys: &[(ch('t'), Action::ToggleTopView)],
        label: "t",
        help: "destinations / flows",
        group: Group::Top,
    },
    Binding {
        scopes: NORMAL,
        keys: &[(ch('/'), Action::EditFilter)],
        label: "/",
        help: "filter: kind (or its start: tcp), port, address part; kind: port: addr: force it",
        group: Group::Filter,
    },
    Binding {
        scopes: &[Scope::Filter],
        keys: &[
            (code(KeyCode::Enter), Action::KeepFilter),
            (code(KeyCode::Backspace), Action::EraseChar),
        ],
        label: "Enter",
        help: "",
        group: Group::Filter,
    },
    Binding {
        scopes: NORMAL,
        keys: &[(code(KeyCode::Enter), Action::Open)],
        label: "Enter",
        help: "on an event: its full record; on a destination or flow: its incidents; on an incident: its timeline",
        group: Group::Event,
    },
    Binding {
        scopes: NORMAL,
        keys: &[(code(KeyCode::Esc), Action::Back)],
        label: "Esc",
        help: "back (from a destination's incidents), clear the filter, close",
        group: Group::Event,
    },
    Binding {
        scopes: &[Scope::Filter],
        keys: &[(code(KeyCode::Esc), Action::ClearFilter)],
        label: "Esc",
        help: "",
        group: Group::Filter,
    },
];

/// What a key does in a mode, if the table names it.
pub fn action(mode: Mode, k: &KeyEvent) -> Option<Action> {
    let scope = Scope::of(mode);
    KEYS.iter()
        .filter(|b| b.scopes.contains(&scope))
        .flat_map(|b| b.keys)
        .find(|(key, _)| key.matches(k))
        .map(|(_, a)| *a)
}

impl App {
    pub fn on_key(&mut self, k: KeyEvent) {
        if let Some(a) = action(self.mode, &k) {
            self.apply(a);
            return;
        }
        match self.mode {
            Mode::Filter => {
                if let KeyCode::Char(c) = k.code {
                    self.filter_input.push(c);
                    self.set_filter();
                }
            }
            Mode::Help | Mode::Legend | Mode::Detail(_) | Mode::Timeline(_) => {
                self.mode = Mode::Normal
            }
            Mode::Normal => {}
        }
    }

    pub fn apply(&mut self, a: Action) {
        match a {
            Action::Quit => self.quit = true,
            Action::TogglePause => self.toggle_pause(),
            Action::OpenHelp => {
                self.help_scroll = 0;
                self.mode = Mode::Help;
            }
            Action::OpenLegend => {
                self.help_scroll = 0;
                self.mode = Mode::Legend;
            }
            Action::ScrollHelp(d) => {
                // the drawing clamps it to the text's length
                self.help_scroll = (i64::from(self.help_scroll) + d).clamp(0, 10_000) as u16;
            }
            Action::ScrollLog(d) => {
                let max = i64::from(LOG_HSCROLL_MAX);
                self.log_hscroll = (i64::from(self.log_hscroll) + d).clamp(0, max) as u16;
            }
            Action::Back => {
                if self.incident_scope.take().is_some() {
                    self.scroll[4] = 0;
                    self.focus = Panel::Top;
                } else {
                    self.filter_input.clear();
                    self.set_filter();
                }
            }
            Action::EditFilter => {
                self.filter_input = self.filter.text.clone();
                self.mode = Mode::Filter;
            }
            Action::KeepFilter => self.mode = Mode::Normal,
            Action::ClearFilter => {
                self.filter_input.clear();
                self.set_filter();
                self.mode = Mode::Normal;
            }
            Action::EraseChar => {
                self.filter_input.pop();
                self.set_filter();
            }
            Action::NextPanel => {
                self.focus = Panel::ALL[(self.focus.index() + 1) % Panel::ALL.len()]
            }
            Action::PrevPanel => {
                let n = Panel::ALL.len();
                self.focus = Panel::ALL[(self.focus.index() + n - 1) % n]
            }
            Action::NextSort => self.cycle_sort(),
            Action::ReverseSort => self.sort_desc = !self.sort_desc,
            Action::ToggleTopView => {
                self.top_view = match self.top_view {
                    TopView::Destinations => TopView::Flows,
                    TopView::Flows => TopView::Destinations,
                };
                if self.top_view == TopView::Destinations && self.sort == SortCol::Source {
                    self.sort = SortCol::Count;
                }
                self.scroll[2] = 0;
            }
            Action::Scroll(d) => self.scroll_by(d),
            Action::ScrollDetail(d) => {
                let max = i64::from(DETAIL_SCROLL_MAX);
                self.detail_scroll = (i64::from(self.detail_scroll) + d).clamp(0, max) as u16;
            }
            Action::Open => match self.focus {
                Panel::Log => {
                    if let Some(seq) = self.selected_seq() {
                        self.detail_scroll = 0;
                        self.mode = Mode::Detail(seq);
                    }
                }
                Panel::Top => {
                    if let Some(r) = self.selected_top_row() {
                        self.incident_scope = Some(IncidentScope {
                            dst: r.dst,
                            src: r.src,
                        });
                        self.scroll[4] = 0;
                        self.focus = Panel::Incidents;
                    }
                }
                Panel::Incidents => {
                    if let Some(id) = self.selected_incident().map(|i| i.id) {
                        self.detail_scroll = 0;
                        self.mode = Mode::Timeline(id);
                    }
                }
                Panel::Counters | Panel::Cpu => {}
            },
        }
    }

    fn set_filter(&mut self) {
        self.filter = Filter::parse(&self.filter_input);
        self.scroll[2] = 0;
        self.scroll[4] = 0;
    }

    fn cycle_sort(&mut self) {
        let cols: &[SortCol] = match self.top_view {
            TopView::Destinations => &[SortCol::Count, SortCol::Destination, SortCol::Port],
            TopView::Flows => &[
                SortCol::Count,
                SortCol::Source,
                SortCol::Destination,
                SortCol::Port,
            ],
        };
        let i = cols.iter().position(|c| *c == self.sort).unwrap_or(0);
        self.sort = cols[(i + 1) % cols.len()];
        // counts read best largest first, addresses in order
        self.sort_desc = self.sort == SortCol::Count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;
    use crate::tui::app::tests::{code, ev, info, key};
    use crate::tui::event::Msg;

    #[test]
    fn sort_by_columns_and_reverse() {
        let mut app = App::new(info());
        let mut v = Vec::new();
        for (i, (port, n)) in [(80u16, 3u64), (53, 5), (443, 1)].iter().enumerate() {
            for j in 0..*n {
                v.push(ev(i as u64 * 10 + j, Kind::InsertFailed, *port));
            }
        }
        app.update(Msg::Events(v));
        let ports = |app: &App| -> Vec<u16> { app.top_rows().iter().map(|r| r.dst.1).collect() };
        assert_eq!(ports(&app), vec![53, 80, 443]); // most failures first
        app.update(key('S'));
        assert_eq!(ports(&app), vec![443, 80, 53]);
        app.update(key('s')); // destination, ascending
        assert_eq!(app.sort, SortCol::Destination);
        app.update(key('s')); // port, ascending
        assert_eq!(app.sort, SortCol::Port);
        assert_eq!(ports(&app), vec![53, 80, 443]);
        app.update(key('S'));
        assert_eq!(ports(&app), vec![443, 80, 53]);
        app.update(key('s'));
        assert_eq!(app.sort, SortCol::Count);
        // flows have a source column
        app.update(key('t'));
        app.update(key('s'));
        assert_eq!(app.sort, SortCol::Source);
    }

    #[test]
    fn log_scroll_is_bounded_and_follows_newest_at_the_top() {
        let mut app = App::new(info());
        app.update(Msg::Events(
            (0..5).map(|i| ev(i, Kind::NatAlloc, 80)).collect(),
        ));
        assert_eq!(app.focus, Panel::Log);
        assert_eq!(app.selected_seq(), Some(4));
        app.update(code(KeyCode::Up));
        assert_eq!(app.log_sel, None);
        app.update(code(KeyCode::Down));
        app.update(code(KeyCode::Down));
        assert_eq!(app.selected_seq(), Some(2));
        // new events do not move the selection
        app.update(Msg::Events(vec![ev(5, Kind::NatAlloc, 80)]));
        assert_eq!(app.selected_seq(), Some(2));
        app.update(code(KeyCode::PageDown));
        assert_eq!(app.selected_seq(), Some(0));
        app.update(code(KeyCode::Down));
        assert_eq!(app.selected_seq(), Some(0));
        app.update(code(KeyCode::Home));
        assert_eq!(app.log_sel, None);
        assert_eq!(app.selected_seq(), Some(5));
        app.update(code(KeyCode::Enter));
        assert_eq!(app.mode, Mode::Detail(5));
        assert_eq!(
            app.event_by_seq(5).unwrap().ts_ns,
            ev(5, Kind::NatAlloc, 80).ts_ns
        );
        app.update(code(KeyCode::Esc));
        assert_eq!(app.mode, Mode::Normal);
        // other panels clamp their scroll to their rows
        app.update(code(KeyCode::Tab));
        assert_eq!(app.focus, Panel::Incidents);
        app.update(code(KeyCode::Tab));
        assert_eq!(app.focus, Panel::Counters);
        app.update(code(KeyCode::End));
        assert_eq!(app.scroll[0], app.counter_rows().len() - 1);
        app.update(code(KeyCode::PageUp));
        app.update(code(KeyCode::PageUp));
        assert_eq!(app.scroll[0], 0);
        app.update(code(KeyCode::Up));
        assert_eq!(app.scroll[0], 0);
    }

    #[test]
    fn ctrl_c_quits_even_while_typing_and_other_keys_are_typed() {
        let mut app = App::new(info());
        app.update(key('/'));
        app.update(Msg::Key(KeyEvent::new(
            KeyCode::Char('q'),
            KeyModifiers::NONE,
        )));
        assert!(!app.quit);
        assert_eq!(app.filter_input, "q");
        app.update(Msg::Key(KeyEvent::new(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL,
        )));
        assert!(app.quit);
        assert_eq!(app.filter_input, "q");
    }

    #[test]
    fn help_and_detail_close_on_keys_the_table_does_not_name_there() {
        let mut app = App::new(info());
        app.update(Msg::Events(vec![ev(0, Kind::NatAlloc, 80)]));
        app.update(key('h'));
        assert_eq!(app.mode, Mode::Help);
        app.update(key('p')); // pauses in the detail, not in the help
        assert_eq!(app.mode, Mode::Normal);
        assert!(!app.paused());
        app.update(code(KeyCode::Enter));
        assert_eq!(app.mode, Mode::Detail(0));
        app.update(key('j'));
        app.update(key('j'));
        app.update(key('k'));
        assert_eq!(app.detail_scroll, 1);
        app.update(key('p'));
        assert!(app.paused());
        app.update(code(KeyCode::PageDown));
        assert_eq!(app.mode, Mode::Normal);
    }

    /// A key means one thing in a mode: no row shadows another.
    #[test]
    fn no_key_is_bound_twice_in_a_mode() {
        for scope in [Scope::Normal, Scope::Filter, Scope::Help, Scope::Detail] {
            let keys: Vec<&Key> = KEYS
                .iter()
                .filter(|b| b.scopes.contains(&scope))
                .flat_map(|b| b.keys.iter().map(|(k, _)| k))
                .collect();
            for (i, a) in keys.iter().enumerate() {
                for b in &keys[i + 1..] {
                    assert_ne!(a.code, b.code, "{:?} bound twice in {scope:?}", a.code);
                }
            }
        }
    }
}
