//! `ctrace probes`: which hook each probe uses here, and why.
use anyhow::Result;

use crate::cli::ProbesArgs;

/// `ctrace probes`: the resolution table for this kernel.
pub fn run(a: &ProbesArgs) -> Result<i32> {
    crate::sys::require_tracing_privileges()?;
    crate::sys::require_btf()?;
    if let Some(ns) = &a.trace.netns {
        crate::netns::enter(ns)?;
    }
    let mode = a.trace.mode;
    if a.features {
        let f = crate::probe::load::detect_all(a.snaplen)?;
        println!("{}", serde_json::to_string_pretty(&f)?);
        return Ok(crate::exit::OK);
    }
    let cfg = crate::probe::load::Config {
        snaplen: a.snaplen,
        ..Default::default()
    };
    let (plan, _f) = crate::probe::load::resolve_by_trying(
        mode,
        &cfg,
        &crate::probe::load::Shared::create(cfg.ringbuf_bytes)?,
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan.render());
    }
    Ok(if plan.probes.iter().any(|p| p.chosen.is_none()) {
        crate::exit::ERROR
    } else {
        crate::exit::OK
    })
}
