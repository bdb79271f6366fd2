//! Whether a process's cgroup is frozen: the cgroup v2 freezer (`cgroup.freeze`, reported in
//! `cgroup.events` as `frozen 1`) or the v1 freezer controller (`freezer.state` `FROZEN`). A
//! frozen process runs no more than a stopped one, yet `/proc/PID/stat` does not say `T`.

use std::fs;
use std::path::{Path, PathBuf};

/// Where this machine mounts the cgroup hierarchies a freeze shows in (our mount namespace:
/// `/proc/PID/cgroup` paths are relative to our cgroup namespace, which these mounts show).
#[derive(Debug, Default, Clone)]
pub struct Freezer {
    v2_root: Option<PathBuf>,
    v1_freezer_root: Option<PathBuf>,
}

impl Freezer {
    pub fn find() -> Freezer {
        let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
            return Freezer::default();
        };
        let mut f = Freezer::default();
        for line in mountinfo.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4);
            let mut r = right.split(' ');
            let (Some(fstype), _, Some(super_opts)) = (r.next(), r.next(), r.next()) else {
                continue;
            };
            let Some(mount_point) = mount_point.map(PathBuf::from) else {
                continue;
            };
            match fstype {
                "cgroup2" if f.v2_root.is_none() => f.v2_root = Some(mount_point),
                "cgroup"
                    if f.v1_freezer_root.is_none()
                        && super_opts.split(',').any(|o| o == "freezer") =>
                {
                    f.v1_freezer_root = Some(mount_point)
                }
                _ => {}
            }
        }
        f
    }

    /// Is `pid`'s cgroup frozen (or freezing) now? False when it cannot be told.
    pub fn is_frozen(&self, pid: u32) -> bool {
        let Ok(cgroups) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if controllers.is_empty() {
                if let Some(root) = &self.v2_root {
                    if v2_frozen(&root.join(rel)) {
                        return true;
                    }
                }
            } else if controllers.split(',').any(|c| c == "freezer") {
                if let Some(root) = &self.v1_freezer_root {
                    if v1_frozen(&root.join(rel)) {
                        return true;
                    }
                }
            }
        }
        false
    }
}

fn v2_frozen(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l.trim() == "frozen 1"))
}

fn v1_frozen(dir: &Path) -> bool {
    fs::read_to_string(dir.join("freezer.state"))
        .is_ok_and(|s| matches!(s.trim(), "FROZEN" | "FREEZING"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn we_are_not_frozen() {
        let f = Freezer::find();
        assert!(!f.is_frozen(std::process::id()));
        assert!(!f.is_frozen(u32::MAX));
    }
}
