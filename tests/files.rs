//! `ctrace record -o`: the output file is checked before anything touches the
//! kernel, so these run without tracing. `record` checks privileges first
//! (as `nobody` it creates nothing): they need root to get that far and are
//! skipped otherwise. Modes and locks: the unit tests of `record::Writer`.
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;

fn ctrace() -> Command {
    Command::cargo_bin("ctrace").unwrap()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ctrace-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn an_existing_file_is_refused_without_force_and_left_as_it_was() {
    if !is_root() {
        eprintln!("skipped: needs root to get past the privilege check");
        return;
    }
    let d = tmpdir("exists");
    let p = d.join("r.jsonl");
    std::fs::write(&p, "yesterday's recording\n").unwrap();
    ctrace()
        .args(["record", "-d", "1s", "-o"])
        .arg(&p)
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(format!(
            "{} already exists: ctrace does not overwrite it; use --force",
            p.display()
        )));
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "yesterday's recording\n"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_planted_symlink_is_refused_even_with_force_and_its_target_untouched() {
    if !is_root() {
        eprintln!("skipped: needs root to get past the privilege check");
        return;
    }
    let d = tmpdir("link");
    let target = d.join("passwd");
    std::fs::write(&target, "root:x:0:0\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = d.join("x.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for force in [false, true] {
        let mut c = ctrace();
        c.args(["record", "-d", "1s", "-o"]).arg(&link);
        if force {
            c.arg("--force");
        }
        c.assert().code(2).stderr(predicate::str::contains(format!(
            "{} is a symbolic link: ctrace does not follow it",
            link.display()
        )));
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:x:0:0\n");
    let mode = std::fs::metadata(&target).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o644, "target's mode changed");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    std::fs::remove_dir_all(&d).ok();
}

/// `-o -` is standard output: no file named `-` appears. The bad ring size
/// is refused after the output is opened and before anything is attached.
#[test]
fn dash_means_standard_output_not_a_file_named_dash() {
    if !is_root() {
        eprintln!("skipped: needs root to get past the privilege check");
        return;
    }
    let d = tmpdir("dash");
    ctrace()
        .current_dir(&d)
        .args(["record", "--ringbuf-mb", "3", "-d", "1s", "-o", "-"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("power of two"));
    assert!(!d.join("-").exists(), "a file named '-' was created");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    std::fs::remove_dir_all(&d).ok();
}

/// A recording that fails to start leaves no empty file behind (which the
/// next try would then refuse).
#[test]
fn a_record_that_fails_to_start_leaves_no_file() {
    if !is_root() {
        eprintln!("skipped: needs root to get past the privilege check");
        return;
    }
    let d = tmpdir("nofile");
    let p = d.join("r.jsonl");
    ctrace()
        .args(["record", "--ringbuf-mb", "3", "-d", "1s", "-o"])
        .arg(&p)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("power of two"));
    assert!(!p.exists());
    std::fs::remove_dir_all(&d).ok();
}
