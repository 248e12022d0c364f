//! Loads a BPF object file, attaches every program in it, prints "attached"
//! and stays attached until a signal ends it. bench/run uses
//! it for bench/null.bpf.c, the per-program measurement floor.
//!
//!   bpfnull OBJECT.o
//!
//! Netfilter programs attach to the netns of the process (bench/run runs it
//! in the NAT node), IPv4, next to ctrace's own slots: `null_nf_pre_out` to
//! PREROUTING and LOCAL_OUT at -198, `null_nf_post_in` to POSTROUTING and
//! LOCAL_IN at INT_MAX-3.
//!
//! A ring buffer named `null_events` (the event floor's) is drained the way
//! ctrace drains its own: a poll with a 25 ms timeout, then every record
//! read (the records come without a wake-up, so the poll alone reads none).

use anyhow::{bail, Context};
use libbpf_rs::{MapCore, NetfilterOpts, NFPROTO_IPV4};

const PRE_ROUTING: i32 = 0;
const LOCAL_IN: i32 = 1;
const LOCAL_OUT: i32 = 3;
const POST_ROUTING: i32 = 4;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bpfnull OBJECT.o"))?;
    let obj = libbpf_rs::ObjectBuilder::default()
        .open_file(&path)?
        .load()?;
    let mut links = Vec::new();
    for p in obj.progs_mut() {
        let name = p.name().to_string_lossy().into_owned();
        if p.section().to_string_lossy() != "netfilter" {
            links.push(p.attach().with_context(|| format!("attaching {name}"))?);
            continue;
        }
        let slots: &[(i32, i32)] = match name.as_str() {
            "null_nf_pre_out" => &[(PRE_ROUTING, -198), (LOCAL_OUT, -198)],
            "null_nf_post_in" => &[(POST_ROUTING, i32::MAX - 3), (LOCAL_IN, i32::MAX - 3)],
            _ => bail!("{name}: no netfilter slot known for it"),
        };
        for &(hook, priority) in slots {
            let opts = NetfilterOpts {
                protocol_family: NFPROTO_IPV4,
                hooknum: hook,
                priority,
                ..Default::default()
            };
            links.push(
                p.attach_netfilter_with_opts(opts)
                    .with_context(|| format!("attaching {name} to hook {hook} at {priority}"))?,
            );
        }
    }
    let ring = obj
        .maps()
        .find(|m| m.name() == "null_events")
        .map(|m| {
            let mut b = libbpf_rs::RingBufferBuilder::new();
            b.add(&m, |_| 0).context("adding null_events")?;
            b.build().context("building the ring reader")
        })
        .transpose()?;
    println!("attached");
    // until a signal ends the process (its descriptors, links included, close)
    loop {
        match &ring {
            Some(r) => {
                // records come without a wake-up: drain after every
                // timeout, as ctrace's reader does (src/pipeline.rs)
                let _ = r.poll(std::time::Duration::from_millis(25));
                let _ = r.consume();
            }
            None => std::thread::park(),
        }
        let _ = &links;
    }
}
