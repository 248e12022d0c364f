//! Network namespaces: name/path resolution and entering one.
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Where a --netns argument points: a name under /run/netns, pid:N, or a path.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    if spec.is_empty() {
        bail!("empty --netns: give a name under /run/netns, a path, or pid:N");
    }
    let path = if let Some(pid) = spec.strip_prefix("pid:") {
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("--netns {spec}: pid:N needs a number"))?;
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    } else if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        PathBuf::from("/run/netns").join(spec)
    };
    if !path.exists() {
        bail!(
            "network namespace '{spec}' not found ({} does not exist): list them with 'ip netns list'",
            path.display()
        );
    }
    Ok(path)
}

/// The inode of the current thread's network namespace.
pub fn current_inode() -> Result<u32> {
    let m = std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading /proc/thread-self/ns/net")?;
    Ok(m.ino() as u32)
}

/// Moves the calling thread into the given network namespace and returns its
/// inode. Threads started afterwards inherit it.
pub fn enter(spec: &str) -> Result<u32> {
    let path = resolve(spec)?;
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let ino = f.metadata()?.ino() as u32;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| {
        format!(
            "cannot enter network namespace {} (needs CAP_SYS_ADMIN: run as root)",
            path.display()
        )
    })?;
    Ok(ino)
}

/// Runs `f` inside another network namespace on a helper thread, leaving the
/// caller where it is.
pub fn run_in<T: Send + 'static>(
    spec: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let spec = spec.to_string();
    std::thread::spawn(move || {
        enter(&spec)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread inside netns panicked"))?
}
