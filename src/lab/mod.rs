//! `ctrace lab`: reproduce both failures in throwaway network namespaces.
use anyhow::{bail, Result};

use crate::cli::LabArgs;

pub fn run(_a: &LabArgs) -> Result<i32> {
    bail!("ctrace lab is not built yet")
}

/// A lab running in the background while ctrace traces its node (the built-in
/// demo: `record --lab`, `top --lab`, `check --lab`). Dropping it stops the
/// traffic and removes every namespace, rule and link it made.
pub struct Background {
    node_netns: String,
}

impl Background {
    pub fn start(_kind: crate::cli::LabKind) -> Result<Background> {
        bail!("ctrace lab is not built yet")
    }

    /// The node's netns name (what --netns takes).
    pub fn node_netns(&self) -> &str {
        &self.node_netns
    }
}
