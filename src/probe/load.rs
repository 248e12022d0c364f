//! Opening, loading and attaching the probe objects. The plan says which
//! programs; this module only executes it. Every link is owned by [`Loaded`]:
//! dropping it detaches everything (no pinning, so nothing outlives ctrace).

use std::any::Any;
use std::collections::BTreeSet;
use std::mem::MaybeUninit;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapHandle, Object, OpenObject};
use libbpf_rs::{
    NetfilterOpts, NFPROTO_IPV4, NFPROTO_IPV6, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT,
    NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING,
};

use super::features::{self, Features};
use super::plan::{self, Plan};
use super::{Flavour, Mode, Probe};

#[derive(Clone, Debug)]
pub struct Config {
    /// Only events of this netns inode (0: every netns).
    pub filter_netns: u32,
    /// Symptoms: only this netns (0: every netns).
    pub symptoms_netns: u32,
    pub ringbuf_bytes: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            filter_netns: 0,
            symptoms_netns: 0,
            ringbuf_bytes: 4 << 20,
        }
    }
}

/// A loaded (and, after `attach`, attached) probe object.
pub struct Loaded {
    pub probe: Probe,
    pub flavour: Flavour,
    pub links: Vec<Link>,
    pub events: MapHandle,
    pub lost: MapHandle,
    /// Notes from attaching (an IPv6 hook that could not attach, ...).
    pub notes: Vec<String>,
    // Owns the skeleton: programs and maps live as long as this.
    _object: Box<dyn Any>,
    obj_ptr: *const Object,
}

// The skeleton is created and used on the thread that owns the tracer; links and
// map handles are plain file descriptors.

fn storage() -> &'static mut MaybeUninit<OpenObject> {
    // A skeleton borrows its storage for as long as it lives; the tracer lives
    // for the whole run, so the few hundred bytes are leaked on purpose.
    Box::leak(Box::new(MaybeUninit::uninit()))
}

macro_rules! open_load {
    ($module:ident, $builder:ident, $progs:expr, $cfg:expr, $netns:expr) => {{
        let mut open = crate::bpf::$module::$builder::default()
            .open(storage())
            .context("opening the BPF object")?;
        if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
            ro.filter_netns = $netns;
            ro.ring_bytes = u64::from($cfg.ringbuf_bytes);
            ro.rst_fns = crate::probe::features::reset_fn_ranges();
        }
        open.maps
            .events
            .set_max_entries($cfg.ringbuf_bytes)
            .context("sizing the ring buffer")?;
        for mut p in open.open_object_mut().progs_mut() {
            let name = p.name().to_string_lossy().into_owned();
            p.set_autoload($progs.contains(name.as_str()));
        }
        let skel = open.load()?;
        let events = MapHandle::try_from(&skel.maps.events)?;
        let lost = MapHandle::try_from(&skel.maps.lost)?;
        let boxed: Box<dyn Any> = Box::new(skel);
        (boxed, events, lost)
    }};
}

fn object_of(b: &dyn Any, p: Probe) -> Option<*const Object> {
    use libbpf_rs::skel::Skel;
    Some(match p {
        Probe::Nat => b
            .downcast_ref::<crate::bpf::nat::NatSkel<'static>>()?
            .object(),
        Probe::Confirm => b
            .downcast_ref::<crate::bpf::confirm::ConfirmSkel<'static>>()?
            .object(),
        Probe::Window => b
            .downcast_ref::<crate::bpf::window::WindowSkel<'static>>()?
            .object(),
        Probe::Symptoms => b
            .downcast_ref::<crate::bpf::symptoms::SymptomsSkel<'static>>()?
            .object(),
    } as *const Object)
}

/// Loads (verifies) the given programs of a probe without attaching them.
pub fn load(p: Probe, progs: &[String], cfg: &Config, fl: Flavour) -> Result<Loaded> {
    let set: BTreeSet<&str> = progs.iter().map(String::as_str).collect();
    let netns = if p == Probe::Symptoms {
        cfg.symptoms_netns
    } else {
        cfg.filter_netns
    };
    let (object, events, lost) = match p {
        Probe::Nat => open_load!(nat, NatSkelBuilder, set, cfg, netns),
        Probe::Confirm => open_load!(confirm, ConfirmSkelBuilder, set, cfg, netns),
        Probe::Window => open_load!(window, WindowSkelBuilder, set, cfg, netns),
        Probe::Symptoms => open_load!(symptoms, SymptomsSkelBuilder, set, cfg, netns),
    };
    let obj_ptr = object_of(object.as_ref(), p).ok_or_else(|| anyhow!("skeleton type mismatch"))?;
    Ok(Loaded {
        probe: p,
        flavour: fl,
        links: Vec::new(),
        events,
        lost,
        notes: Vec::new(),
        _object: object,
        obj_ptr,
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
) -> Result<(Vec<String>, Loaded), String> {
    let progs: Vec<String> = plan::programs(p, fl, f)
        .into_iter()
        .map(String::from)
        .collect();
    match load(p, &progs, cfg, fl) {
        Ok(l) => Ok((progs, l)),
        Err(e) => Err(short_error(&e)),
    }
}

/// Tries a probe's load in a flavour and records the answer in `f`; returns
/// what loaded. The fentry window probe's log hook is optional: when the whole
/// set fails, the set without it is tried, and the log hook's failure is
/// recorded on its own.
pub fn try_load_into(
    p: Probe,
    fl: Flavour,
    f: &mut Features,
    cfg: &Config,
) -> Option<(Vec<String>, Loaded)> {
    let key = features::load_key(p, fl);
    let with_log = plan::programs(p, fl, f).contains(&"win_log_fexit");
    let r = match load_for(p, fl, f, cfg) {
        Err(e) if with_log => {
            f.loads.insert(plan::WINDOW_FENTRY_LOG.into(), e);
            load_for(p, fl, f, cfg)
        }
        r => {
            if with_log && r.is_ok() {
                f.loads.insert(plan::WINDOW_FENTRY_LOG.into(), "ok".into());
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

/// Netfilter hooks a stable-mode program attaches to: (hook, priority).
fn nf_hooks(prog: &str) -> &'static [(i32, i32)] {
    // The kernel refuses two BPF hooks at one priority (EBUSY): nat sits just
    // below confirm's slot; both run after NAT (100) and before confirm (INT_MAX).
    const BEFORE_CONFIRM: i32 = i32::MAX - 1;
    const AFTER_NAT: i32 = i32::MAX - 2;
    match prog {
        "nat_nf" => &[
            (NF_INET_POST_ROUTING, AFTER_NAT),
            (NF_INET_LOCAL_IN, AFTER_NAT),
        ],
        "confirm_nf" => &[
            (NF_INET_POST_ROUTING, BEFORE_CONFIRM),
            (NF_INET_LOCAL_IN, BEFORE_CONFIRM),
        ],
        // conntrack runs at -200 in PREROUTING and OUTPUT
        "win_nf" => &[(NF_INET_PRE_ROUTING, -199), (NF_INET_LOCAL_OUT, -199)],
        _ => &[],
    }
}

impl Loaded {
    fn object(&self) -> &Object {
        // SAFETY: obj_ptr points into the skeleton owned by self.object, which
        // lives (boxed, never moved out) as long as self.
        unsafe { &*self.obj_ptr }
    }

    /// Attaches every loaded program, each to its hook(s). Netfilter hooks go
    /// to the netns of the calling thread.
    pub fn attach(&mut self) -> Result<()> {
        let mut links = Vec::new();
        let mut notes = Vec::new();
        for prog in self.object().progs_mut() {
            if !prog.autoload() {
                continue;
            }
            let name = prog.name().to_string_lossy().into_owned();
            let hooks = nf_hooks(&name);
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
        Ok(())
    }

    /// Records lost because the ring buffer was full (sum over CPUs).
    pub fn lost(&self) -> u64 {
        read_lost(&self.lost)
    }
}

pub fn read_lost(map: &MapHandle) -> u64 {
    let key = 0u32.to_ne_bytes();
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
pub fn resolve_by_trying(mode: Mode, cfg: &Config) -> (Plan, Features) {
    let (plan, f, _) = resolve_by_trying_kept(mode, cfg);
    (plan, f)
}

/// Objects that loaded while resolving, kept so that attaching does not load
/// (verify, relocate against the kernel's BTF) the same object a second time:
/// each load costs tens of milliseconds of start-up (bench/RESULTS.md).
pub struct Kept(Vec<(Probe, Flavour, Vec<String>, Loaded)>);

/// [`resolve_by_trying`], keeping what loaded for [`attach_plan_kept`].
pub fn resolve_by_trying_kept(mode: Mode, cfg: &Config) -> (Plan, Features, Kept) {
    let mut f = features::detect_static();
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
            if let Some((progs, l)) = try_load_into(pp.probe, fl, &mut f, cfg) {
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
pub fn attach_plan(plan: &Plan, cfg: &Config) -> Result<Vec<Loaded>> {
    attach_plan_kept(plan, cfg, Kept(Vec::new()))
}

/// [`attach_plan`], reusing an object loaded while resolving where it holds
/// exactly the programs the plan wants.
pub fn attach_plan_kept(plan: &Plan, cfg: &Config, kept: Kept) -> Result<Vec<Loaded>> {
    let mut kept = kept.0;
    let mut out = Vec::new();
    for pp in &plan.probes {
        let Some(fl) = pp.chosen else { continue };
        let reuse = kept
            .iter()
            .position(|(p, f, progs, _)| *p == pp.probe && *f == fl && *progs == pp.programs);
        let mut l = match reuse {
            Some(i) => kept.swap_remove(i).3,
            None => load(pp.probe, &pp.programs, cfg, fl)
                .with_context(|| format!("loading probe {} ({})", pp.probe.name(), fl.name()))?,
        };
        l.attach()
            .with_context(|| format!("attaching probe {} ({})", pp.probe.name(), fl.name()))?;
        out.push(l);
    }
    Ok(out)
}
