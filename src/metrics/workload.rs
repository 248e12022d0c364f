//! Which workload a failure belongs to, and the bound on how many get their
//! own series.
//!
//! [`resolve`] is the one place a workload is named: today the event's netns
//! (`namespace=""`, `workload="netns:<inode>"`); the workload resolver
//! (container/pod from the runtime's files) replaces its body.
//!
//! [`Slots`] keeps the label set bounded: at most `max` workloads get a
//! series of their own, every other one is counted as `workload="other"`.
//! A workload keeps its slot once it has one, so that every exposed counter
//! only grows (a series that moved in and out of `other` would look like a
//! counter reset to Prometheus) and the sum over workloads always equals the
//! unlabelled total. The first `max` workloads to fail take the slots: on a
//! node those are the ones affected first when a failure storm starts.

use std::collections::HashSet;

use crate::event::Event;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub namespace: String,
    pub workload: String,
}

impl Workload {
    pub fn other() -> Workload {
        Workload {
            namespace: String::new(),
            workload: "other".into(),
        }
    }
}

/// The workload an event is attributed to: the resolver's (a pod: its
/// namespace and name; a container, a named netns: its name), else its
/// network namespace.
pub fn resolve(e: &Event) -> Workload {
    match &e.workload {
        Some(w) => Workload {
            namespace: w.namespace.clone().unwrap_or_default(),
            workload: w
                .name
                .clone()
                .unwrap_or_else(|| format!("netns:{}", w.netns)),
        },
        None => Workload {
            namespace: String::new(),
            workload: format!("netns:{}", e.netns),
        },
    }
}

/// At most `max` workloads with a series of their own.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    held: HashSet<Workload>,
    /// Events counted as `other` because every slot was taken.
    pub folded: u64,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            max,
            held: HashSet::with_capacity(max.min(4096)),
            folded: 0,
        }
    }

    /// The label this workload's events are counted under.
    pub fn label(&mut self, w: Workload) -> Workload {
        if self.held.contains(&w) {
            return w;
        }
        if self.held.len() < self.max {
            self.held.insert(w.clone());
            return w;
        }
        self.folded += 1;
        Workload::other()
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: u32) -> Workload {
        Workload {
            namespace: String::new(),
            workload: format!("netns:{i}"),
        }
    }

    #[test]
    fn slots_are_kept_and_the_rest_is_other() {
        let mut s = Slots::new(2);
        assert_eq!(s.label(w(1)), w(1));
        assert_eq!(s.label(w(2)), w(2));
        assert_eq!(s.label(w(3)), Workload::other());
        // a slot holder keeps its series
        assert_eq!(s.label(w(1)), w(1));
        assert_eq!(s.held(), 2);
        assert_eq!(s.folded, 1);
        // zero slots: everything is other
        let mut z = Slots::new(0);
        assert_eq!(z.label(w(1)), Workload::other());
    }
}
