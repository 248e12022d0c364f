//! The generated skeletons, one per logical probe (see build.rs).
#![allow(
    clippy::all,
    clippy::pedantic,
    non_camel_case_types,
    dead_code,
    unused_imports
)]

pub mod nat {
    include!(concat!(env!("OUT_DIR"), "/nat.skel.rs"));
}
pub mod confirm {
    include!(concat!(env!("OUT_DIR"), "/confirm.skel.rs"));
}
pub mod window {
    include!(concat!(env!("OUT_DIR"), "/window.skel.rs"));
}
pub mod symptoms {
    include!(concat!(env!("OUT_DIR"), "/symptoms.skel.rs"));
}
