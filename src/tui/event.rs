//! Everything the TUI reacts to, as one enum: keys and resizes from the input
//! thread, ticks from the main loop, data from the tracing session (or a
//! replayed recording) and the node's state from its reader thread.

use ratatui::crossterm::event::KeyEvent;

use crate::ctstat::Snapshot;
use crate::event::Event;
use crate::node::NodeState;

#[derive(Debug)]
pub enum Msg {
    Key(KeyEvent),
    Resize(u16, u16),
    /// Time has passed: `now_ns` on the events' clock (kernel monotonic for a
    /// live session, the recording's clock for a replay).
    Tick {
        now_ns: u64,
    },
    /// A batch of decoded events.
    Events(Vec<Event>),
    /// Incidents the correlation stage closed.
    Incidents(Vec<crate::incident::Incident>),
    /// The kernel's conntrack counters since the session started.
    Kernel(Snapshot),
    /// Lost records so far (a running total).
    Lost(u64),
    Node(Box<NodeState>),
    /// The event source stopped (the message says why).
    SourceEnded(String),
}
