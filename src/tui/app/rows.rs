//! The rows the tables show, built from the viewed [`Model`](super::Model):
//! counters, per CPU, and the top destinations or flows.

use std::net::IpAddr;

use crate::event::Kind;

use super::model::{kernel_counter, REASON_KINDS, TOP_ROWS};
use super::{App, SortCol, TopView};

/// A row of the top tables.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRow {
    /// Flows only.
    pub src: Option<(IpAddr, u16)>,
    pub dst: (IpAddr, u16),
    pub count: u64,
    /// Space-Saving overestimate (0: exact).
    pub err: u64,
}

/// A row of the per-CPU table.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuRow {
    pub cpu: u32,
    pub insert_failed: u64,
    pub tcp_invalid: u64,
    pub kernel_insert_failed: Option<u64>,
    pub kernel_invalid: Option<u64>,
}

/// A row of the counters table: a kind, or one reason of a kind.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterRow {
    pub kind: Kind,
    /// Some: this row is a reason of `kind`.
    pub reason: Option<String>,
    pub total: u64,
    pub rate: Option<u64>,
    pub kernel: Option<(&'static str, u64)>,
}

impl App {
    pub fn counter_rows(&self) -> Vec<CounterRow> {
        let m = self.view();
        let kt = m.kernel_total();
        let mut rows = Vec::new();
        for k in Kind::ALL {
            rows.push(CounterRow {
                kind: k,
                reason: None,
                total: m.stats.count(k),
                rate: Some(m.rate(Some(k))),
                kernel: kt.as_ref().and_then(|c| kernel_counter(k, c)),
            });
        }
        for k in REASON_KINDS {
            for (r, n) in m.stats.reasons_of(k) {
                rows.push(CounterRow {
                    kind: k,
                    reason: Some(r.to_string()),
                    total: n,
                    rate: None,
                    kernel: None,
                });
            }
        }
        rows
    }

    pub fn cpu_rows(&self) -> Vec<CpuRow> {
        let m = self.view();
        let mut cpus: Vec<u32> = m.stats.per_cpu.keys().copied().collect();
        if let Some(k) = &m.kernel {
            cpus.extend(
                k.per_cpu
                    .iter()
                    // u32::MAX: totals without a per-CPU split (old trailers)
                    .filter(|c| c.cpu != u32::MAX && (c.insert_failed > 0 || c.invalid > 0))
                    .map(|c| c.cpu),
            );
        }
        cpus.sort_unstable();
        cpus.dedup();
        cpus.into_iter()
            .map(|cpu| {
                let kc = m
                    .kernel
                    .as_ref()
                    .and_then(|k| k.per_cpu.iter().find(|c| c.cpu == cpu));
                CpuRow {
                    cpu,
                    insert_failed: m.stats.cpu_count(cpu, Kind::InsertFailed),
                    tcp_invalid: m.stats.cpu_count(cpu, Kind::TcpInvalid),
                    kernel_insert_failed: kc.map(|c| c.insert_failed),
                    kernel_invalid: kc.map(|c| c.invalid),
                }
            })
            .filter(|r| {
                r.insert_failed + r.tcp_invalid > 0
                    || r.kernel_insert_failed.unwrap_or(0) + r.kernel_invalid.unwrap_or(0) > 0
            })
            .collect()
    }

    /// The incidents panel's rows, newest first: those of the chosen
    /// destination or flow, and those the `/` filter's addresses and ports match.
    pub fn incident_rows(&self) -> Vec<&crate::incident::Incident> {
        let m = self.view();
        m.incident_list
            .iter()
            .rev()
            .filter(|i| self.incident_scope.map_or(true, |s| s.matches(i)))
            .filter(|i| {
                self.filter.is_empty()
                    || self.filter.matches_endpoints(&[
                        (i.flow.src, i.flow.sport),
                        (i.flow.dst, i.flow.dport),
                    ])
            })
            .collect()
    }

    /// The selected row of the top table (its first visible one).
    pub fn selected_top_row(&self) -> Option<TopRow> {
        self.top_rows().into_iter().nth(self.scroll[2])
    }

    /// The selected incident (the incidents panel's first visible row).
    pub fn selected_incident(&self) -> Option<&crate::incident::Incident> {
        self.incident_rows().into_iter().nth(self.scroll[4])
    }

    pub fn incident_by_id(&self, id: u64) -> Option<&crate::incident::Incident> {
        self.view().incident_list.iter().find(|i| i.id == id)
    }

    /// The top table's rows: filtered, sorted by the chosen column.
    pub fn top_rows(&self) -> Vec<TopRow> {
        let m = self.view();
        let mut rows: Vec<TopRow> = match self.top_view {
            // one per losing connection once the correlation has closed any
            // (a lost SYN is also a drop and a retransmit: events count it thrice)
            TopView::Destinations if m.incidents > 0 => m
                .incident_destinations
                .top(TOP_ROWS)
                .into_iter()
                .map(|(d, count, err)| TopRow {
                    src: None,
                    dst: d,
                    count,
                    err,
                })
                .collect(),
            TopView::Destinations => m
                .stats
                .top_destinations
                .top(TOP_ROWS)
                .into_iter()
                .map(|(d, count, err)| TopRow {
                    src: None,
                    dst: d,
                    count,
                    err,
                })
                .collect(),
            TopView::Flows => m
                .stats
                .top_flows
                .top(TOP_ROWS)
                .into_iter()
                .map(|((s, sp, d, dp), count, err)| TopRow {
                    src: Some((s, sp)),
                    dst: (d, dp),
                    count,
                    err,
                })
                .collect(),
        };
        if !self.filter.is_empty() {
            rows.retain(|r| {
                let mut eps = vec![r.dst];
                eps.extend(r.src);
                self.filter.matches_endpoints(&eps)
            });
        }
        let sort = self.sort;
        rows.sort_by(|a, b| {
            let o = match sort {
                SortCol::Count => a.count.cmp(&b.count),
                SortCol::Source => a.src.cmp(&b.src),
                SortCol::Destination => a.dst.cmp(&b.dst),
                SortCol::Port => a.dst.1.cmp(&b.dst.1),
            };
            let o = if self.sort_desc { o.reverse() } else { o };
            // ties: most failures first, then address order
            o.then(b.count.cmp(&a.count))
                .then(a.dst.cmp(&b.dst))
                .then(a.src.cmp(&b.src))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use crate::ctstat::{CpuStats, Snapshot};
    use crate::event::Kind;
    use crate::tui::app::tests::{ev, info};
    use crate::tui::app::App;
    use crate::tui::event::Msg;

    #[test]
    fn kernel_counters_and_cpu_rows() {
        let mut app = App::new(info());
        app.update(Msg::Events(vec![
            ev(1, Kind::InsertFailed, 80),
            ev(2, Kind::TcpInvalid, 80),
        ]));
        app.update(Msg::Kernel(Snapshot {
            per_cpu: vec![
                CpuStats {
                    cpu: 1,
                    insert_failed: 4,
                    ..Default::default()
                },
                CpuStats {
                    cpu: 7,
                    invalid: 9,
                    ..Default::default()
                },
            ],
        }));
        let rows = app.cpu_rows();
        assert_eq!(
            rows.iter().map(|r| r.cpu).collect::<Vec<_>>(),
            vec![1, 2, 7]
        );
        assert_eq!(rows[0].insert_failed, 1);
        assert_eq!(rows[0].kernel_insert_failed, Some(4));
        assert_eq!(rows[2].kernel_invalid, Some(9));
        let c = app.counter_rows();
        let ins = c.iter().find(|r| r.kind == Kind::InsertFailed).unwrap();
        assert_eq!(ins.kernel, Some(("insert_failed", 4)));
    }
}
