//! Kernel addresses to `function+0xoff`, with blazesym over /proc/kallsyms.
//! blazesym's Symbolizer is not Send: create one on the thread that uses it.
use std::collections::HashMap;
use std::sync::Arc;

use blazesym::symbolize::source::{Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::MaybeDefault;

use crate::event::Event;

pub struct KernelSymbols {
    sym: Symbolizer,
    /// By address; each name made once and shared by the events at it (a
    /// clone per event was an allocation and a copy, an eighth of the
    /// consumer's time under a drop flood).
    cache: HashMap<u64, Option<Arc<str>>, foldhash::fast::RandomState>,
}

impl Default for KernelSymbols {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelSymbols {
    pub fn new() -> KernelSymbols {
        KernelSymbols {
            sym: Symbolizer::new(),
            cache: HashMap::default(),
        }
    }

    /// `nf_hook_slow+0x9c` (with ` [module]` where it lives in one), or None.
    pub fn name(&mut self, addr: u64) -> Option<Arc<str>> {
        if addr == 0 {
            return None;
        }
        if let Some(v) = self.cache.get(&addr) {
            return v.clone();
        }
        let src = Source::Kernel(Kernel {
            kallsyms: MaybeDefault::Default,
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Default::default()
        });
        let v = match self.sym.symbolize_single(&src, Input::AbsAddr(addr)) {
            Ok(Symbolized::Sym(s)) => Some(Arc::from(match &s.module {
                Some(m) if !m.is_empty() => {
                    format!("{}+{:#x} [{}]", s.name, s.offset, m.to_string_lossy())
                }
                _ => format!("{}+{:#x}", s.name, s.offset),
            })),
            _ => None,
        };
        // bounded: kernels have a few thousand distinct drop sites at most
        if self.cache.len() < 65536 {
            self.cache.insert(addr, v.clone());
        }
        v
    }

    /// Fills `location` from `location_addr`.
    pub fn fill(&mut self, e: &mut Event) {
        if e.location.is_some() {
            return;
        }
        if let Some(a) = e
            .location_addr
            .as_deref()
            .and_then(|s| u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok())
        {
            e.location = self.name(a);
        }
    }
}
