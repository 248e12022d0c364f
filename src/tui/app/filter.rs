//! The `/` filter: what the log and the top tables keep.

use std::net::IpAddr;

use crate::event::{Event, Kind};

/// One term of a filter; every term must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    Kinds(Vec<Kind>),
    Port(u16),
    /// A substring of an address.
    Addr(String),
}

/// The `/` filter: words separated by spaces. A kind name (or its start:
/// `tcp` means every tcp_* kind), a port number, or part of an address;
/// `kind:`, `port:` and `addr:` force the meaning.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub text: String,
    pub terms: Vec<Term>,
}

impl Filter {
    pub fn parse(text: &str) -> Filter {
        let terms = text
            .split_whitespace()
            .map(|w| {
                let kinds = |p: &str| -> Vec<Kind> {
                    match Kind::from_name(p) {
                        Some(k) => vec![k],
                        None => Kind::ALL
                            .into_iter()
                            .filter(|k| k.name().starts_with(p))
                            .collect(),
                    }
                };
                if let Some(k) = w.strip_prefix("kind:") {
                    Term::Kinds(kinds(k))
                } else if let Some(p) = w.strip_prefix("port:") {
                    p.parse().map(Term::Port).unwrap_or(Term::Kinds(vec![]))
                } else if let Some(a) = w.strip_prefix("addr:") {
                    Term::Addr(a.to_string())
                } else if let Ok(p) = w.parse::<u16>() {
                    Term::Port(p)
                } else if w.contains('.') || w.contains(':') {
                    Term::Addr(w.to_string())
                } else {
                    let k = kinds(w);
                    if k.is_empty() {
                        Term::Addr(w.to_string())
                    } else {
                        Term::Kinds(k)
                    }
                }
            })
            .collect();
        Filter {
            text: text.to_string(),
            terms,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Kinds(ks) => ks.contains(&e.kind),
            Term::Port(p) => {
                e.orig.sport == *p
                    || e.orig.dport == *p
                    || e.port == Some(*p)
                    || e.reply.is_some_and(|r| r.sport == *p || r.dport == *p)
            }
            Term::Addr(a) => {
                addr_has(&e.orig.src, a)
                    || addr_has(&e.orig.dst, a)
                    || e.reply
                        .is_some_and(|r| addr_has(&r.src, a) || addr_has(&r.dst, a))
            }
        })
    }

    /// For the top tables: address and port terms apply, kinds do not.
    pub fn matches_endpoints(&self, eps: &[(IpAddr, u16)]) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Kinds(_) => true,
            Term::Port(p) => eps.iter().any(|(_, port)| port == p),
            Term::Addr(a) => eps.iter().any(|(ip, _)| addr_has(ip, a)),
        })
    }
}

fn addr_has(ip: &IpAddr, needle: &str) -> bool {
    ip.to_string().contains(needle)
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyCode;

    use super::*;
    use crate::tui::app::tests::{code, ev, info, key};
    use crate::tui::app::{App, Mode};
    use crate::tui::event::Msg;

    #[test]
    fn filter_by_kind_port_and_address() {
        let mut app = App::new(info());
        let mut e = ev(0, Kind::TcpInvalid, 443);
        e.orig.src = "10.1.2.3".parse().unwrap();
        app.update(Msg::Events(vec![
            ev(1, Kind::InsertFailed, 80),
            e,
            ev(2, Kind::NatAlloc, 53),
        ]));
        let shown = |app: &App| -> Vec<Kind> { app.log_events().map(|(_, e)| e.kind).collect() };
        assert_eq!(shown(&app).len(), 3);
        app.update(key('/'));
        for c in "tcp".chars() {
            app.update(key(c));
        }
        assert_eq!(shown(&app), vec![Kind::TcpInvalid]);
        // typing on: "tcp 80" matches nothing (both must hold)
        for c in " 80".chars() {
            app.update(key(c));
        }
        assert!(shown(&app).is_empty());
        app.update(code(KeyCode::Enter));
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(app.filter.text, "tcp 80");
        app.filter = Filter::parse("10.1.2");
        assert_eq!(shown(&app), vec![Kind::TcpInvalid]);
        app.filter = Filter::parse("port:53");
        assert_eq!(shown(&app), vec![Kind::NatAlloc]);
        app.filter = Filter::parse("insert_failed");
        assert_eq!(shown(&app), vec![Kind::InsertFailed]);
        // Esc clears
        app.update(code(KeyCode::Esc));
        assert_eq!(shown(&app).len(), 3);
        // the top table keeps the endpoints that match
        app.filter = Filter::parse("443");
        let rows = app.top_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].dst.1, 443);
    }
}
