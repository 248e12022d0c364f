//! Loads a BPF object file, attaches every program in it, prints "attached"
//! and stays attached until a signal ends it. bench/run uses
//! it for bench/null.bpf.c, the per-program measurement floor.
//!
//!   bpfnull OBJECT.o

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bpfnull OBJECT.o"))?;
    let obj = libbpf_rs::ObjectBuilder::default()
        .open_file(&path)?
        .load()?;
    let mut links = Vec::new();
    for p in obj.progs_mut() {
        links.push(p.attach()?);
    }
    println!("attached");
    // until a signal ends the process (its descriptors, links included, close)
    loop {
        std::thread::park();
        let _ = &links;
    }
}
