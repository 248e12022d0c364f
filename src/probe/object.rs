//! One probe object: a room's skeleton opened, configured through rodata,
//! pointed at the shared ring buffer and lost counter, and loaded with exactly
//! the programs the plan chose.

use std::any::Any;
use std::collections::BTreeSet;
use std::mem::MaybeUninit;

use libbpf_rs::{MapHandle, OpenObject};

/// What every object is opened with.
pub struct OpenCfg<'a> {
    pub programs: &'a BTreeSet<&'a str>,
    /// Only events of this netns inode (0: every netns).
    pub netns: u32,
    pub ring_bytes: u32,
    /// Bytes reserved after a captured event for its packet (0: no capture).
    pub snap_room: u32,
    /// The one ring buffer and lost counter every object writes to.
    pub events: &'a MapHandle,
    pub lost: &'a MapHandle,
}

/// A loaded skeleton, owned; dropping it unloads its programs.
pub struct Object {
    // Owns the skeleton: programs and maps live as long as this.
    _skel: Box<dyn Any>,
    obj: *const libbpf_rs::Object,
}

impl Object {
    /// `obj` must point into the skeleton `skel` owns.
    pub fn new(skel: Box<dyn Any>, obj: *const libbpf_rs::Object) -> Object {
        Object { _skel: skel, obj }
    }

    pub fn object(&self) -> &libbpf_rs::Object {
        // SAFETY: obj points into the skeleton owned by self._skel, which lives
        // (boxed, never moved out) as long as self.
        unsafe { &*self.obj }
    }
}

/// Storage a skeleton borrows for as long as it lives; the tracer lives for
/// the whole run, so the few hundred bytes are leaked on purpose.
pub fn storage() -> &'static mut MaybeUninit<OpenObject> {
    Box::leak(Box::new(MaybeUninit::uninit()))
}

/// Opens, configures and loads one room's skeleton (`$module` under
/// `crate::abi::skel`, `$builder` its generated builder).
#[macro_export]
macro_rules! open_probe_object {
    ($module:ident, $builder:ident, $cfg:expr) => {{
        use anyhow::Context as _;
        use libbpf_rs::skel::{OpenSkel as _, Skel as _, SkelBuilder as _};
        use std::os::fd::AsFd as _;
        let cfg: &$crate::probe::object::OpenCfg = $cfg;
        let mut open = $crate::abi::skel::$module::$builder::default()
            .open($crate::probe::object::storage())
            .context("opening the BPF object")?;
        if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
            ro.filter_netns = cfg.netns;
            ro.ring_bytes = u64::from(cfg.ring_bytes);
            ro.snap_room = cfg.snap_room;
            ro.rst_fns = $crate::probe::features::reset_fn_ranges();
            ro.ct_btf_id = $crate::probe::features::ct_btf_id();
            ro.pkt_btf_id = $crate::probe::features::packet_btf_ids();
        }
        open.maps
            .events
            .reuse_fd(cfg.events.as_fd())
            .context("sharing the ring buffer")?;
        open.maps
            .lost
            .reuse_fd(cfg.lost.as_fd())
            .context("sharing the lost counter")?;
        for mut p in open.open_object_mut().progs_mut() {
            let name = p.name().to_string_lossy().into_owned();
            p.set_autoload(cfg.programs.contains(name.as_str()));
        }
        // boxed before its address is taken: the box never moves it again
        let skel = Box::new(open.load()?);
        let obj = skel.object() as *const libbpf_rs::Object;
        let boxed: Box<dyn std::any::Any> = skel;
        Ok($crate::probe::object::Object::new(boxed, obj))
    }};
}

/// Every program name of one room's skeleton, opened without loading.
#[macro_export]
macro_rules! probe_object_programs {
    ($module:ident, $builder:ident) => {{
        use anyhow::Context as _;
        use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
        let mut storage = std::mem::MaybeUninit::uninit();
        let open = $crate::abi::skel::$module::$builder::default()
            .open(&mut storage)
            .context("opening the BPF object")?;
        let names: Vec<String> = open
            .open_object()
            .progs()
            .map(|p| p.name().to_string_lossy().into_owned())
            .collect();
        Ok(names)
    }};
}
