//! `ctrace completions SHELL` and `ctrace man`: generated from the clap
//! definitions in `crate::cli`, so that they never disagree with `--help`.
//! The man page adds the exit codes (`crate::exit::CODES`) and the recording
//! format, taken from the README's "Recording format" section (one text,
//! compiled in: the README stays its only source).

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

/// The README, whose "Recording format" section the man page carries.
const README: &str = include_str!("../../README.md");
const FORMAT_HEADING: &str = "## Recording format";

pub fn completions(a: &CompletionsArgs) -> Result<i32> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut Cli::command(), "ctrace", &mut out);
    out.flush().context("writing the completion script")?;
    Ok(crate::exit::OK)
}

pub fn man() -> Result<i32> {
    let mut out = std::io::stdout().lock();
    out.write_all(&man_page()?)
        .and_then(|_| out.flush())
        .context("writing the man page")?;
    Ok(crate::exit::OK)
}

/// The whole page: clap's sections, each command's options, exit status and
/// the recording format.
pub fn man_page() -> Result<Vec<u8>> {
    let cmd = Cli::command();
    let mut buf = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone()).section("1");
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    // each command with its options, on this one page (clap_mangen's own
    // list points at a page per command, which we do not ship)
    writeln!(buf, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("ctrace {}", sub.get_name());
        writeln!(buf, ".SS \"{}\"", roff_text(&name))?;
        if let Some(about) = sub.get_about() {
            writeln!(buf, "{}", roff_text(&about.to_string()))?;
        }
        let mut opts = Vec::new();
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut opts)?;
        // nested under the command: its OPTIONS heading becomes a paragraph
        let opts = String::from_utf8_lossy(&opts).replacen(".SH OPTIONS", ".PP\nOptions:", 1);
        buf.extend_from_slice(opts.as_bytes());
        if let Some(after) = sub.get_after_help() {
            writeln!(buf, ".PP")?;
            for l in after.to_string().lines() {
                writeln!(buf, "{}\n.br", roff_text(l))?;
            }
        }
    }
    writeln!(buf, ".SH \"EXIT STATUS\"")?;
    for (code, what) in crate::exit::CODES {
        writeln!(buf, ".TP\n{code}\n{}", roff_text(what))?;
    }
    writeln!(buf, ".SH \"RECORDING FORMAT\"")?;
    buf.extend_from_slice(markdown_to_roff(recording_format()).as_bytes());
    man.render_version_section(&mut buf)?;
    Ok(buf)
}

/// The README's "Recording format" section, without its heading.
pub fn recording_format() -> &'static str {
    let Some(start) = README.find(FORMAT_HEADING) else {
        return "";
    };
    let body = &README[start + FORMAT_HEADING.len()..];
    let end = body.find("\n## ").unwrap_or(body.len());
    body[..end].trim()
}

/// Text safe in a roff line: backslashes escaped, no leading control
/// character, markdown's backquotes dropped.
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('`', "");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// The little markdown the section uses: paragraphs, `- ` lists (with
/// continuation lines) and fenced blocks (kept as they are, unfilled).
fn markdown_to_roff(md: &str) -> String {
    let mut out = String::from(".PP\n");
    let mut fenced = false;
    for line in md.lines() {
        if line.starts_with("```") {
            out.push_str(if fenced { ".fi\n.PP\n" } else { ".nf\n" });
            fenced = !fenced;
        } else if fenced {
            // verbatim: escape, but keep the spacing (no backquotes dropped)
            let l = line.replace('\\', "\\e");
            let l = if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            };
            out.push_str(&l);
            out.push('\n');
        } else if line.trim().is_empty() {
            out.push_str(".PP\n");
        } else if let Some(item) = line.strip_prefix("- ") {
            out.push_str(".IP \\(bu 2\n");
            out.push_str(&roff_text(item));
            out.push('\n');
        } else {
            out.push_str(&roff_text(line.trim_start()));
            out.push('\n');
        }
    }
    if fenced {
        out.push_str(".fi\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_section_is_found_and_carries_the_fields() {
        let f = recording_format();
        assert!(f.starts_with("JSON Lines"), "{f:.80}");
        for field in ["\"ts_ns\"", "start_mono_ns", "kernel_counters", "workload"] {
            assert!(f.contains(field), "{field} missing");
        }
        assert!(!f.contains("\n## "), "ran into the next section");
    }

    #[test]
    fn the_page_has_exit_status_and_no_unescaped_control_lines() {
        let page = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(page.contains(".SH \"EXIT STATUS\""));
        assert!(page.contains(".SH \"RECORDING FORMAT\""));
        assert!(page.contains("ctrace record"));
        assert!(page.contains("insert_failed"));
        assert_eq!(roff_text(".x \\n `y`"), "\\&.x \\en y");
    }
}
