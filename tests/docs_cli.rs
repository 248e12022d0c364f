//! `ctrace completions` and `ctrace man`: the shells and `man` accept what
//! they print.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ctrace");

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "ctrace {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn tmpfile(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ctrace-docs-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bash_accepts_the_bash_completion() {
    let script = run(&["completions", "bash"]);
    assert!(script.contains("ctrace"), "{script:.200}");
    for sub in ["record", "top", "report", "check", "completions", "man"] {
        assert!(script.contains(sub), "bash completion lacks {sub}");
    }
    let f = tmpfile("ctrace.bash", &script);
    let out = Command::new("bash").arg("-n").arg(&f).output().unwrap();
    let _ = std::fs::remove_file(&f);
    assert!(
        out.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn zsh_and_fish_completions_name_the_commands() {
    for shell in ["zsh", "fish"] {
        let script = run(&["completions", shell]);
        assert!(!script.trim().is_empty(), "{shell}: empty");
        for sub in ["record", "top", "report", "check", "doctor", "serve"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    // and options of a command, with their values
    assert!(run(&["completions", "fish"]).contains("snat-race"));
}

#[test]
fn man_renders_the_page_with_exit_status_and_the_recording_fields() {
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("skipped: man is not installed (bash .ci/setup installs man-db)");
        return;
    }
    let page = run(&["man"]);
    let f = tmpfile("ctrace.1", &page);
    let out = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(&f)
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&f);
    assert!(out.status.success(), "man -l: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().is_empty(), "man/groff warnings:\n{err}");
    // without a terminal grotty overstrikes bold and underlined letters
    // ("N\bN", "_\bx"): keep the letter
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    for want in [
        "EXIT STATUS",
        "RECORDING FORMAT",
        "start_mono_ns",
        "kernel_counters",
        "ctrace top",
        "--replay",
    ] {
        assert!(
            text.contains(want),
            "{want:?} not in the rendered page:\n{text:.2000}"
        );
    }
    // every exit code, as the crate defines it
    for (code, _) in ctrace::exit::CODES {
        assert!(
            text.lines()
                .any(|l| l.trim() == code.to_string() || l.trim().starts_with(&format!("{code} "))),
            "exit code {code} missing"
        );
    }
}
