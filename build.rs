//! Generates one libbpf-rs skeleton per probe room: every `src/probe/<name>/<name>.bpf.c`
//! becomes `<name>.skel.rs` in OUT_DIR (included by src/abi.rs). A new probe is a
//! new room; nothing here lists them.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH is set by cargo");
    let (vmlinux_arch, target_arch) = match arch.as_str() {
        "x86_64" => ("x86_64", "x86"),
        "aarch64" => ("aarch64", "arm64"),
        other => {
            panic!("ctrace has no vmlinux.h for {other}: run vmlinux/gen.sh on such a machine")
        }
    };
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let vmlinux = manifest.join("vmlinux").join(vmlinux_arch);
    let bpf = manifest.join("bpf");
    let rooms = manifest.join("src").join("probe");

    let mut probes: Vec<(String, PathBuf)> = std::fs::read_dir(&rooms)
        .unwrap_or_else(|e| panic!("reading {}: {e}", rooms.display()))
        .filter_map(|d| d.ok())
        .filter_map(|d| {
            let name = d.file_name().to_string_lossy().into_owned();
            let src = d.path().join(format!("{name}.bpf.c"));
            src.is_file().then_some((name, src))
        })
        .collect();
    probes.sort();
    assert!(!probes.is_empty(), "no src/probe/<name>/<name>.bpf.c found");
    println!("cargo:rerun-if-changed={}", rooms.display());
    for (probe, src) in &probes {
        let skel = out.join(format!("{probe}.skel.rs"));
        SkeletonBuilder::new()
            .source(src)
            .clang_args([
                format!("-I{}", vmlinux.display()),
                format!("-I{}", bpf.display()),
                format!("-D__TARGET_ARCH_{target_arch}"),
                "-Wall".to_string(),
                "-Wno-unused-function".to_string(),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
        println!("cargo:rerun-if-changed={}", src.display());
    }
    for h in ["ctrace.h", "common.bpf.h"] {
        println!("cargo:rerun-if-changed={}", bpf.join(h).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        vmlinux.join("vmlinux.h").display()
    );
}
