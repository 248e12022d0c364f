//! Generates one libbpf-rs skeleton per logical probe from the C under `bpf/`.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const PROBES: &[&str] = &["nat", "confirm", "window", "symptoms"];

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

    for probe in PROBES {
        let src = bpf.join(format!("{probe}.bpf.c"));
        let skel = out.join(format!("{probe}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
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
    println!("cargo:rerun-if-changed={}", bpf.join("ctrace.h").display());
    println!(
        "cargo:rerun-if-changed={}",
        bpf.join("common.bpf.h").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        vmlinux.join("vmlinux.h").display()
    );
}
