//! What happens at boot: sysctl.d and modules-load.d files, udev rules and
//! whether nf_conntrack is built in, read under a root path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{BootConfig, ConfSetting};

/// Parses one sysctl.d file: `key = value` lines (keys with `.` or `/`, an
/// optional leading `-`). Returns (key in dotted form, line number, value).
pub fn parse_sysctl_conf(text: &str) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_start_matches('-').replace('/', ".");
        out.push((k, i + 1, v.trim().to_string()));
    }
    out
}

/// Modules that, listed for boot, bring nf_conntrack with them.
const LOADS_CONNTRACK: [&str; 12] = [
    "nf_conntrack",
    "nf_nat",
    "xt_conntrack",
    "xt_state",
    "xt_masquerade",
    "xt_nat",
    "iptable_nat",
    "ip6table_nat",
    "nf_conntrack_netlink",
    "nft_ct",
    "nft_masq",
    "nft_nat",
];

/// Parses one modules-load.d file (or /etc/modules): module names, one a line.
/// Returns the entries that load nf_conntrack.
pub fn parse_modules_load(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or("").trim())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|m| {
            let m = m.replace('-', "_").to_ascii_lowercase();
            LOADS_CONNTRACK.contains(&m.as_str()) || m.starts_with("nf_conntrack_")
        })
        .map(str::to_string)
        .collect()
}

/// Config files of a systemd-style `*.d` directory set, in application order:
/// by file name, a name in an earlier directory hiding the same name later.
fn conf_files(root: &Path, dirs: &[&str]) -> Vec<PathBuf> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in dirs.iter().rev() {
        let dir = root.join(d.trim_start_matches('/'));
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") {
                by_name.insert(name, e.path());
            }
        }
    }
    by_name.into_values().collect()
}

fn shown(root: &Path, p: &Path) -> String {
    match p.strip_prefix(root) {
        Ok(rel) if root != Path::new("/") => format!("/{}", rel.display()),
        _ => p.display().to_string(),
    }
}

/// Reads the boot configuration under `root`.
pub fn read_boot(root: &Path, kernel: Option<&str>) -> BootConfig {
    let mut b = BootConfig::default();
    let mut files = conf_files(
        root,
        &[
            "/etc/sysctl.d",
            "/run/sysctl.d",
            "/usr/local/lib/sysctl.d",
            "/usr/lib/sysctl.d",
            "/lib/sysctl.d",
        ],
    );
    files.push(root.join("etc/sysctl.conf"));
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (k, line, value) in parse_sysctl_conf(&text) {
            if k == "net.netfilter.nf_conntrack_tcp_be_liberal" {
                b.be_liberal_settings.push(ConfSetting {
                    file: shown(root, &f),
                    line,
                    value,
                });
            }
        }
    }
    let mut files = conf_files(
        root,
        &[
            "/etc/modules-load.d",
            "/run/modules-load.d",
            "/usr/local/lib/modules-load.d",
            "/usr/lib/modules-load.d",
            "/lib/modules-load.d",
        ],
    );
    files.push(root.join("etc/modules"));
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            for m in parse_modules_load(&text) {
                b.conntrack_modules_load
                    .push(format!("{}: {m}", shown(root, &f)));
            }
        }
    }
    for d in [
        "etc/udev/rules.d",
        "usr/lib/udev/rules.d",
        "lib/udev/rules.d",
    ] {
        let Ok(rd) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                if text.lines().any(|l| {
                    !l.trim_start().starts_with('#')
                        && l.contains("nf_conntrack")
                        && l.contains("sysctl")
                }) {
                    b.udev_reapplies_sysctl = true;
                }
            }
        }
    }
    if let Some(rel) = kernel {
        let builtin = root.join("lib/modules").join(rel).join("modules.builtin");
        if let Ok(text) = std::fs::read_to_string(builtin) {
            b.conntrack_builtin =
                Some(text.lines().any(|l| l.trim().ends_with("/nf_conntrack.ko")));
        } else if root.join("sys/module/nf_conntrack").exists() {
            // loaded; built in when it has no refcnt/initstate of a module
            b.conntrack_builtin = Some(!root.join("sys/module/nf_conntrack/initstate").exists());
        }
    }
    b
}
