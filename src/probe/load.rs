//! Opening, loading and attaching the probe objects. The plan says which
//! programs; this module only executes it. Every link is owned by [`Loaded`]:
//! dropping it detaches everything (no pinning, so nothing outlives ctrace).

use std::collections::BTreeSet;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle, MapType};
use libbpf_rs::{NetfilterOpts, NFPROTO_IPV4, NFPROTO_IPV6};

use super::features::{self, Features};
use super::object::{Object, OpenCfg};
use super::plan::{self, Plan};
use super::{Flavour, Mode, Probe};
use crate::abi;

#[derive(Clone, Debug)]
pub struct Config {
    /// Only events of this netns inode (0: every netns).
    pub filter_netns: u32,
    /// Symptoms: only this netns (0: every netns).
    pub symptoms_netns: u32,
    pub ringbuf_bytes: u32,
    /// Packet bytes an offending event carries (`record --pcap`); 0: none.
    pub snaplen: u32,
}

/// The most packet bytes one event carries (`bpf/ctrace.h`, CT_SNAP_MAX).
pub const SNAP_MAX: u32 = crate::abi::SNAP_MAX;

impl Config {
    /// The room reserved after a captured record: the snap length, capped,
    /// rounded up to 8 (records stay aligned).
    pub fn snap_room(&self) -> u32 {
        self.snaplen.min(SNAP_MAX).div_ceil(8) * 8
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            filter_netns: 0,
            symptoms_netns: 0,
            ringbuf_bytes: 4 << 20,
            snaplen: 0,
        }
    }
}

/// The one ring buffer and the one lost counter that every probe object
/// writes to (each object's own maps are replaced by these before load), so
/// that events reach user space in the order the ring saw them and one
/// `--ringbuf-mb` is the whole budget.
pub struct Shared {
    pub events: MapHandle,
    pub lost: MapHandle,
    pub ring_bytes: u32,
}

impl Shared {
    pub fn create(ring_bytes: u32) -> Result<Shared> {
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>()
                as libbpf_rs::libbpf_sys::size_t,
            ..Default::default()
        };
        let events =
            MapHandle::create(MapType::RingBuf, Some("events"), 0, 0, ring_bytes, &opts)
                .with_context(|| format!("creating the ring buffer ({} MiB)", ring_bytes >> 20))?;
        let lost = MapHandle::create(
            MapType::PercpuArray,
            Some("lost"),
            4,
            8,
            abi::lost::KEYS,
            &opts,
        )
        .context("creating the lost-record counter")?;
        Ok(Shared {
            events,
            lost,
            ring_bytes,
        })
    }

    /// Records lost because the ring buffer was full, or refused to keep its
    /// last quarter for the failures (sum over CPUs and kinds).
    pub fn lost(&self) -> u64 {
        read_lost(&self.lost, abi::lost::OTHERS) + read_lost(&self.lost, abi::lost::FAILURES)
    }

    /// Of [`Shared::lost`], the records of the failure kinds (insert_failed,
    /// clash_resolved, tcp_invalid).
    pub fn lost_failures(&self) -> u64 {
        read_lost(&self.lost, abi::lost::FAILURES)
    }
}

/// A loaded (and, after `attach`, attached) probe object.
pub struct Loaded {
    pub probe: Probe,
    pub flavour: Flavour,
    pub links: Vec<Link>,
    /// Netfilter hooks attached: (program, family, hook, priority used).
    pub nf_attached: Vec<(String, i32, i32, i32)>,
    /// Notes from attaching (an IPv6 hook that could not attach, ...).
    pub notes: Vec<String>,
    object: Object,
}

/// Loads (verifies) the given programs of a probe without attaching them.
pub fn load(
    p: Probe,
    progs: &[String],
    cfg: &Config,
    shared: &Shared,
    fl: Flavour,
) -> Result<Loaded> {
    let set: BTreeSet<&str> = progs.iter().map(String::as_str).collect();
    let netns = if p == Probe::Symptoms {
        cfg.symptoms_netns
    } else {
        cfg.filter_netns
    };
    let object = (p.spec().open)(&OpenCfg {
        programs: &set,
        netns,
        ring_bytes: shared.ring_bytes,
        snap_room: cfg.snap_room(),
        events: &shared.events,
        lost: &shared.lost,
    })?;
    Ok(Loaded {
        probe: p,
        flavour: fl,
        links: Vec::new(),
        nf_attached: Vec::new(),
        notes: Vec::new(),
        object,
    })
}

/// Loads a probe's programs in a flavour (as the plan would choose them on a
/// kernel with `f`): the loaded object and its program list, or the error in
/// one line.
fn load_for(
    p: Probe,
    fl: Flavour,
    f: &Features,
    cfg: &Config,
    shared: &Shared,
) -> Result<(Vec<String>, Loaded), String> {
    let progs: Vec<String> = plan::programs(p, fl, f)
        .into_iter()
        .map(String::from)
        .collect();
    match load(p, &progs, cfg, shared, fl) {
        Ok(l) => Ok((progs, l)),
        Err(e) => Err(short_error(&e)),
    }
}

/// Tries a probe's load in a flavour and records the answer in `f`; returns
/// what loaded. A room's optional program (the fentry window probe's log
/// hook): when the whole set fails, the set without it is tried, and the
/// optional program's failure is recorded under its own key.
pub fn try_load_into(
    p: Probe,
    fl: Flavour,
    f: &mut Features,
    cfg: &Config,
    shared: &Shared,
) -> Option<(Vec<String>, Loaded)> {
    let key = features::load_key(p, fl);
    let optional = p
        .spec()
        .optional
        .filter(|(prog, _)| plan::programs(p, fl, f).contains(prog));
    let r = match (load_for(p, fl, f, cfg, shared), optional) {
        (Err(e), Some((_, opt_key))) => {
            f.loads.insert(opt_key.into(), e);
            load_for(p, fl, f, cfg, shared)
        }
        (r, opt) => {
            if let (Ok(_), Some((_, opt_key))) = (&r, opt) {
                f.loads.insert(opt_key.into(), "ok".into());
            }
            r
        }
    };
    match r {
        Ok(loaded) => {
            f.loads.insert(key, "ok".into());
            Some(loaded)
        }
        Err(e) => {
            f.loads.insert(key, e);
            None
        }
    }
}

/// "EPERM (Operation not permitted)" and the like, from a libbpf error chain.
fn short_error(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    for (code, name) in [
        (libc::EPERM, "EPERM"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOENT, "ENOENT"),
        (libc::ESRCH, "ESRCH"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::E2BIG, "E2BIG"),
        (libc::EACCES, "EACCES"),
    ] {
        let msg = std::io::Error::from_raw_os_error(code).to_string();
        let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
        if s.contains(&msg) || s.contains(&format!("os error {code})")) {
            return format!("{name}: {s}");
        }
    }
    s
}

/// The kernel allows one BPF hook per (netns, family, hook, priority): EBUSY
/// means another program (another ctrace, say) holds it. Step away from the
/// preferred slot, downwards, which keeps every hook on the same side of NAT,
/// conntrack and confirm (our ranges stay clear of their priorities).
const PRIORITY_TRIES: i32 = 16;

fn attach_nf(
    prog: &libbpf_rs::ProgramMut<'_>,
    pf: i32,
    hook: i32,
    priority: i32,
) -> Result<(Link, i32)> {
    let mut last = None;
    for step in 0..PRIORITY_TRIES {
        // nat/confirm use INT_MAX-1.. (step by 2 so they never meet), window -199..
        let p = if priority > 0 {
            priority - 2 * step
        } else {
            priority + step
        };
        match prog.attach_netfilter_with_opts(NetfilterOpts {
            protocol_family: pf,
            hooknum: hook,
            priority: p,
            ..Default::default()
        }) {
            Ok(l) => return Ok((l, p)),
            Err(e) if format!("{e:#}").contains("os error 16") => last = Some(e), // EBUSY
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow!("no free priority")))
    .context("every nearby netfilter priority is taken by other BPF programs")
}

impl Loaded {
    /// Runs the kernel skipped, per loaded program with any: a tracing
    /// program that fires while the same program already runs on that CPU
    /// (a softirq interrupting it; in kprobe mode, any kprobe program) is not
    /// run, and only `bpf_prog_info.recursion_misses` tells. A skipped run may
    /// have been an event: the count goes in the trailer and the summary,
    /// never silently. Raw tracepoints have had the guard and its count
    /// since 6.2 (none skipped before); kprobes' skips are counted since
    /// 6.7. Runs of a
    /// program whose twin is loaded too are the twin's ([`super::Spec::twins`]).
    /// Each entry: (program, runs skipped, whether its twin took them).
    pub fn missed(&self) -> Vec<(String, u64, bool)> {
        use std::os::fd::{AsFd, AsRawFd};
        let loaded: BTreeSet<String> = self
            .object
            .object()
            .progs()
            .filter(|p| p.autoload())
            .map(|p| p.name().to_string_lossy().into_owned())
            .collect();
        let covered = |name: &str| {
            self.probe.spec().twins.iter().any(|(a, b)| {
                (name == *a && loaded.contains(*b)) || (name == *b && loaded.contains(*a))
            })
        };
        let mut out = Vec::new();
        for prog in self.object.object().progs() {
            let name = prog.name().to_string_lossy().into_owned();
            if !prog.autoload() {
                continue;
            }
            let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
            let mut len = std::mem::size_of_val(&info) as u32;
            // SAFETY: info is a bpf_prog_info of len bytes, written by the kernel
            let rc = unsafe {
                libbpf_rs::libbpf_sys::bpf_obj_get_info_by_fd(
                    prog.as_fd().as_raw_fd(),
                    (&mut info as *mut libbpf_rs::libbpf_sys::bpf_prog_info).cast(),
                    &mut len,
                )
            };
            if rc == 0 && info.recursion_misses > 0 {
                let c = covered(&name);
                out.push((name, info.recursion_misses, c));
            }
        }
        out
    }

    /// Attaches every loaded program, each to its hook(s). Netfilter hooks go
    /// to the netns of the calling thread.
    pub fn attach(&mut self) -> Result<()> {
        let mut links = Vec::new();
        let mut notes = Vec::new();
        let mut attached = Vec::new();
        let nf_slots = self.probe.spec().nf_slots;
        let twins = self.probe.spec().twins;
        // a twin after its first: one tracepoint calls its programs in the
        // order they were attached, and symptoms' twin relies on it
        let is_second = |p: &libbpf_rs::ProgramMut| {
            let n = p.name().to_string_lossy();
            twins.iter().any(|(_, b)| *b == n)
        };
        let mut progs: Vec<_> = self.object.object().progs_mut().collect();
        progs.sort_by_key(|p| is_second(p));
        // tests only: the firsts run alone this long before the twins attach
        let twin_delay = std::env::var("CTRACE_TEST_TWIN_ATTACH_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis);
        let mut delayed = false;
        for prog in progs {
            if !prog.autoload() {
                continue;
            }
            if let Some(d) = twin_delay.filter(|_| !delayed && is_second(&prog)) {
                std::thread::sleep(d);
                delayed = true;
            }
            let name = prog.name().to_string_lossy().into_owned();
            let hooks = nf_slots(&name);
            if hooks.is_empty() {
                let link = prog.attach().with_context(|| {
                    format!("attaching {name} ({})", prog.section().to_string_lossy())
                })?;
                links.push(link);
                continue;
            }
            for &(hook, priority) in hooks {
                for pf in [NFPROTO_IPV4, NFPROTO_IPV6] {
                    match attach_nf(&prog, pf, hook, priority) {
                        Ok((l, used)) => {
                            attached.push((name.clone(), pf, hook, used));
                            if used != priority {
                                notes.push(format!(
                                    "{name}: priority {priority} was taken (another BPF hook); attached at {used}"
                                ));
                            }
                            links.push(l)
                        }
                        Err(e) if pf == NFPROTO_IPV6 => {
                            notes.push(format!("{name}: IPv6 hook not attached ({e})"))
                        }
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!(
                                    "attaching {name} to netfilter hook {hook} priority {priority}"
                                )
                            })
                        }
                    }
                }
            }
        }
        notes.dedup();
        self.links = links;
        self.notes = notes;
        self.nf_attached = attached;
        if !twins.is_empty() {
            self.clear_twin_keys()?;
        }
        Ok(())
    }

    /// Zeroes the twins' key stacks (symptoms.bpf.c `twin_keys`, where a
    /// probe has one): until its twin attached, a first pushed keys that
    /// nothing popped, and a stale key could make a later drop look handled.
    /// A key zeroed while its pair is between the two programs costs at most
    /// one repeated event.
    fn clear_twin_keys(&self) -> Result<()> {
        let Some(map) = self
            .object
            .object()
            .maps()
            .find(|m| m.name() == "twin_keys")
        else {
            return Ok(());
        };
        let cpus = libbpf_rs::num_possible_cpus().context("counting possible CPUs")?;
        let zero = vec![vec![0u8; map.value_size() as usize]; cpus];
        for key in 0..map.max_entries() {
            map.update_percpu(&key.to_ne_bytes(), &zero, libbpf_rs::MapFlags::ANY)
                .context("zeroing twin_keys")?;
        }
        Ok(())
    }
}

/// One key of the lost counter (`abi::lost`), summed over CPUs.
pub fn read_lost(map: &MapHandle, key: u32) -> u64 {
    let key = key.to_ne_bytes();
    match map.lookup_percpu(&key, libbpf_rs::MapFlags::ANY) {
        Ok(Some(vals)) => vals
            .iter()
            .filter_map(|v| {
                v.get(..8)
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
            })
            .sum(),
        _ => 0,
    }
}

/// Resolves a plan by trying: the pure resolver proposes, a load attempt
/// confirms or refutes each proposal (its error becomes a feature), until every
/// probe's choice has loaded or nothing is left.
pub fn resolve_by_trying(mode: Mode, cfg: &Config, shared: &Shared) -> (Plan, Features) {
    let (plan, f, _) = resolve_by_trying_kept(mode, cfg, shared);
    (plan, f)
}

/// Objects that loaded while resolving, kept so that attaching does not load
/// (verify, relocate against the kernel's BTF) the same object a second time:
/// each load costs tens of milliseconds of start-up (bench/RESULTS.md).
pub struct Kept(Vec<(Probe, Flavour, Vec<String>, Loaded)>);

/// [`resolve_by_trying`], keeping what loaded for [`attach_plan_kept`].
pub fn resolve_by_trying_kept(mode: Mode, cfg: &Config, shared: &Shared) -> (Plan, Features, Kept) {
    let mut f = features::detect_static(&super::symbols());
    let mut kept = Vec::new();
    loop {
        let plan = plan::resolve(&f, mode);
        let mut changed = false;
        for pp in &plan.probes {
            let Some(fl) = pp.chosen else { continue };
            let key = features::load_key(pp.probe, fl);
            if f.loads.contains_key(&key) {
                continue;
            }
            if let Some((progs, l)) = try_load_into(pp.probe, fl, &mut f, cfg, shared) {
                kept.push((pp.probe, fl, progs, l));
            }
            changed = true;
        }
        if !changed {
            return (plan, f, Kept(kept));
        }
    }
}

/// Loads and attaches every probe the plan chose.
pub fn attach_plan(plan: &Plan, cfg: &Config, shared: &Shared) -> Result<Vec<Loaded>> {
    attach_plan_kept(plan, cfg, shared, Kept(Vec::new()))
}

/// [`attach_plan`], reusing an object loaded while resolving where it holds
/// exactly the programs the plan wants.
pub fn attach_plan_kept(
    plan: &Plan,
    cfg: &Config,
    shared: &Shared,
    kept: Kept,
) -> Result<Vec<Loaded>> {
    let mut kept = kept.0;
    let mut out = Vec::new();
    for pp in &plan.probes {
        let Some(fl) = pp.chosen else { continue };
        let reuse = kept
            .iter()
            .position(|(p, f, progs, _)| *p == pp.probe && *f == fl && *progs == pp.programs);
        let mut l = match reuse {
            Some(i) => kept.swap_remove(i).3,
            None => load(pp.probe, &pp.programs, cfg, shared, fl)
                .with_context(|| format!("loading probe {} ({})", pp.probe.name(), fl.name()))?,
        };
        l.attach()
            .with_context(|| format!("attaching probe {} ({})", pp.probe.name(), fl.name()))?;
        out.push(l);
    }
    Ok(out)
}

/// Static facts plus a load attempt of every probe in every flavour: the full
/// feature set, as captured in the fixtures (`ctrace probes --features`);
/// with `snaplen`, the programs as `record --pcap` loads them.
pub fn detect_all(snaplen: u32) -> Result<Features> {
    let mut f = features::detect_static(&super::symbols());
    let cfg = Config {
        snaplen,
        ..Config::default()
    };
    let shared = Shared::create(cfg.ringbuf_bytes)?;
    for spec in super::SPECS {
        for fl in [Flavour::Fentry, Flavour::Kprobe, Flavour::Stable] {
            try_load_into(spec.probe, fl, &mut f, &cfg, &shared);
        }
    }
    Ok(f)
}
