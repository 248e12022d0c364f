//! A process's cgroup path -> the container it runs in: the layouts of Docker
//! (cgroup v2 systemd `docker-<id>.scope`, cgroupfs `/docker/<id>`) and of
//! kubelet's pods under containerd, CRI-O or dockershim
//! (`kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope`, `crio-<id>.scope`,
//! cgroupfs `/kubepods/<qos>/pod<uid>/<id>`).

/// Which runtime the cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    /// A bare id under a kubepods pod (cgroupfs driver): any CRI runtime.
    Cri,
}

/// The container a cgroup path belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupRef {
    pub runtime: Runtime,
    pub id: String,
    /// The pod's uid, dashed, when the path is under kubepods.
    pub pod_uid: Option<String>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `kubepods-burstable-pod<uid>.slice` (systemd: '-' became '_') or
/// `pod<uid>` (cgroupfs).
fn pod_uid(component: &str) -> Option<String> {
    let c = component.strip_suffix(".slice").unwrap_or(component);
    let i = c.rfind("pod")?;
    if i > 0 && !c[..i].ends_with('-') {
        return None;
    }
    let uid = c[i + 3..].replace('_', "-");
    let ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// The container of one cgroup path (`/kubepods.slice/...`).
pub fn parse_path(path: &str) -> Option<CgroupRef> {
    let mut uid = None;
    let mut prev = "";
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if let Some(u) = pod_uid(c) {
            uid = Some(u);
        }
        let scoped = |prefix: &str| {
            c.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(".scope"))
                .filter(|id| is_id(id))
                .map(str::to_string)
        };
        let found = if let Some(id) = scoped("docker-") {
            Some((Runtime::Docker, id))
        } else if let Some(id) = scoped("cri-containerd-") {
            Some((Runtime::Containerd, id))
        } else if let Some(id) = scoped("crio-") {
            Some((Runtime::Crio, id))
        } else if is_id(c) && prev == "docker" {
            Some((Runtime::Docker, c.to_string()))
        } else if is_id(c) && uid.is_some() {
            Some((Runtime::Cri, c.to_string()))
        } else {
            None
        };
        if let Some((runtime, id)) = found {
            return Some(CgroupRef {
                runtime,
                id,
                pod_uid: uid,
            });
        }
        prev = c;
    }
    None
}

/// The container of a `/proc/<pid>/cgroup` file (v2 `0::<path>` or v1
/// `<n>:<controllers>:<path>` lines; the first line that names one).
pub fn parse(text: &str) -> Option<CgroupRef> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(parse_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    const ID: &str = "4f1c0a3e9b2d7c6a5e8f1b0c3d2a4e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
    const UID: &str = "6b3e3c2a-1f4d-4c8e-9a7b-2d5e8f1a0c3b";

    #[test]
    fn the_layouts_of_docker_containerd_crio_and_cgroupfs() {
        let d2 = parse(&format!("0::/system.slice/docker-{ID}.scope\n")).unwrap();
        assert_eq!(
            (d2.runtime, d2.id.as_str(), d2.pod_uid),
            (Runtime::Docker, ID, None)
        );
        let d1 = parse(&format!("12:pids:/docker/{ID}\n0::/\n")).unwrap();
        assert_eq!((d1.runtime, d1.id.as_str()), (Runtime::Docker, ID));
        let u = UID.replace('-', "_");
        let ctd = parse(&format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"
        ))
        .unwrap();
        assert_eq!(ctd.runtime, Runtime::Containerd);
        assert_eq!(ctd.pod_uid.as_deref(), Some(UID));
        let crio = parse(&format!(
            "0::/kubepods.slice/kubepods-pod{u}.slice/crio-{ID}.scope\n"
        ))
        .unwrap();
        assert_eq!(
            (crio.runtime, crio.pod_uid.as_deref()),
            (Runtime::Crio, Some(UID))
        );
        let fs = parse(&format!("4:memory:/kubepods/besteffort/pod{UID}/{ID}\n")).unwrap();
        assert_eq!(
            (fs.runtime, fs.pod_uid.as_deref()),
            (Runtime::Cri, Some(UID))
        );
    }

    #[test]
    fn host_cgroups_name_no_container() {
        assert_eq!(parse("0::/system.slice/ssh.service\n"), None);
        assert_eq!(parse("0::/user.slice/user-0.slice/session-3.scope\n"), None);
        assert_eq!(
            parse(&format!("0::/system.slice/crio-conmon-{ID}.scope\n")),
            None
        );
        assert_eq!(parse(""), None);
    }
}
