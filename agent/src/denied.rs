//! Why the kernel refused us a process (EPERM on /proc/PID/exe or process_vm_readv), in words
//! that name the real cause: the kernel's ptrace access check (which both use) fails for root
//! too, when ctxprobe runs in a user namespace, without CAP_SYS_PTRACE, under Yama's strictest
//! setting or a security module. "Run as root" is only said to a user who is not root.
//!
//! The check itself (kernel/ptrace.c `__ptrace_may_access`, then the security modules' hooks,
//! commoncap first) cannot be queried; what can be read without privilege is read here and the
//! first cause that fits is named.

use std::fs;

/// Linux capability number of CAP_SYS_PTRACE.
const CAP_SYS_PTRACE: u32 = 19;

/// What can be read about ourselves and the target without being allowed to inspect it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub euid: u32,
    /// The target's real uid, from /proc/PID/status (readable by anyone).
    pub target_uid: Option<u32>,
    /// Our effective capability set has CAP_SYS_PTRACE.
    pub has_sys_ptrace: bool,
    /// /proc/self/uid_map, whitespace-normalised; "0 0 4294967295" in the initial namespace.
    pub uid_map: Option<String>,
    /// kernel.yama.ptrace_scope, when Yama is built in.
    pub yama_scope: Option<u8>,
    /// /sys/kernel/security/lsm: the active security modules (securityfs may not be mounted).
    pub lsms: Option<String>,
    /// Our AppArmor profile, when confined.
    pub apparmor_profile: Option<String>,
    /// The kernel has Landlock enabled (a Landlock-sandboxed process may not inspect processes
    /// outside its sandbox, whatever its privileges).
    pub landlock: bool,
}

impl Facts {
    pub fn read(pid: u32) -> Facts {
        let read = |p: &str| fs::read_to_string(p).ok();
        let status_field = |text: &str, key: &str| -> Option<String> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let target_uid = read(&format!("/proc/{pid}/status"))
            .and_then(|s| status_field(&s, "Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok());
        let has_sys_ptrace = read("/proc/self/status")
            .and_then(|s| status_field(&s, "CapEff:"))
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0);
        let uid_map = read("/proc/self/uid_map").map(|m| normalise(&m));
        let yama_scope =
            read("/proc/sys/kernel/yama/ptrace_scope").and_then(|s| s.trim().parse().ok());
        let lsms = read("/sys/kernel/security/lsm")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let apparmor_profile = read("/proc/self/attr/apparmor/current")
            .map(|s| s.trim_end_matches(['\n', '\0']).to_string())
            .filter(|s| !s.is_empty() && s != "unconfined");
        // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION): the ABI version,
        // or an error when Landlock is not enabled.
        // SAFETY: with a null attribute pointer and size 0 the kernel reads nothing.
        let landlock_abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0usize,
                1u32,
            )
        };
        Facts {
            landlock: landlock_abi > 0,
            // SAFETY: geteuid has no preconditions.
            euid: unsafe { libc::geteuid() },
            target_uid,
            has_sys_ptrace,
            uid_map,
            yama_scope,
            lsms,
            apparmor_profile,
        }
    }
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The initial user namespace maps every uid to itself.
const INITIAL_UID_MAP: &str = "0 0 4294967295";

/// Why process `pid` may not be inspected, as the end of a one-line message.
pub fn cause(pid: u32) -> String {
    explain(pid, &Facts::read(pid))
}

pub fn explain(pid: u32, f: &Facts) -> String {
    if f.yama_scope == Some(3) {
        return "kernel.yama.ptrace_scope is 3, which lets no process inspect another, root \
                included (only a reboot lowers it)"
            .into();
    }
    if f.euid != 0 {
        let owner = match f.target_uid {
            Some(uid) if uid == f.euid => match f.yama_scope {
                Some(scope @ (1 | 2)) => {
                    format!("it runs as your uid {uid}, but kernel.yama.ptrace_scope is {scope}")
                }
                _ => format!(
                    "it runs as your uid {uid} but is not dumpable (setuid or capabilities)"
                ),
            },
            Some(uid) => format!("it belongs to uid {uid}"),
            None => "it belongs to another user".into(),
        };
        return format!("{owner}; run ctxprobe as root (sudo ctxprobe --pid {pid})");
    }
    if let Some(map) = f.uid_map.as_deref().filter(|m| *m != INITIAL_UID_MAP) {
        return format!(
            "ctxprobe is root only inside a user namespace (uid_map \"{map}\"), which gives no \
             privilege over process {pid} outside it; run ctxprobe in the host's user namespace"
        );
    }
    if !f.has_sys_ptrace {
        let yama = match f.yama_scope {
            Some(2) => " and kernel.yama.ptrace_scope is 2",
            _ => "",
        };
        return format!(
            "ctxprobe runs as root without CAP_SYS_PTRACE{yama} (dropped from its capabilities, \
             e.g. by a container runtime, systemd or setpriv), and process {pid} has privileges \
             ctxprobe lacks; give ctxprobe CAP_SYS_PTRACE"
        );
    }
    let which = match (&f.apparmor_profile, &f.lsms) {
        (Some(profile), _) => format!("ctxprobe is confined by AppArmor profile \"{profile}\""),
        (None, Some(lsms)) => format!("active security modules: {lsms}"),
        (None, None) => format!(
            "{}AppArmor, SELinux or a BPF LSM: /sys/kernel/security is not mounted, so which one \
             cannot be told",
            if f.landlock {
                "Landlock (enabled in this kernel), "
            } else {
                ""
            }
        ),
    };
    format!(
        "ctxprobe runs as root with CAP_SYS_PTRACE in the host's user namespace, so a security \
         module refused access ({which})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Facts {
        Facts {
            euid: 0,
            target_uid: Some(0),
            has_sys_ptrace: true,
            uid_map: Some(INITIAL_UID_MAP.into()),
            yama_scope: Some(1),
            lsms: Some("lockdown,capability,landlock,yama,apparmor".into()),
            apparmor_profile: None,
            landlock: true,
        }
    }

    #[test]
    fn root_is_never_told_to_run_as_root() {
        for f in [
            root(),
            Facts {
                has_sys_ptrace: false,
                ..root()
            },
            Facts {
                uid_map: Some("0 100000 65536".into()),
                ..root()
            },
            Facts {
                yama_scope: Some(3),
                ..root()
            },
            Facts {
                lsms: None,
                yama_scope: None,
                ..root()
            },
        ] {
            let why = explain(1, &f);
            assert!(!why.contains("run ctxprobe as root"), "{f:?}: {why}");
        }
    }

    #[test]
    fn each_cause_is_named() {
        assert_eq!(
            explain(
                7,
                &Facts {
                    yama_scope: Some(3),
                    ..root()
                }
            ),
            "kernel.yama.ptrace_scope is 3, which lets no process inspect another, root \
             included (only a reboot lowers it)"
        );
        assert_eq!(
            explain(
                7,
                &Facts {
                    uid_map: Some("0 1000 1".into()),
                    ..root()
                }
            ),
            "ctxprobe is root only inside a user namespace (uid_map \"0 1000 1\"), which gives \
             no privilege over process 7 outside it; run ctxprobe in the host's user namespace"
        );
        assert_eq!(
            explain(
                7,
                &Facts {
                    has_sys_ptrace: false,
                    ..root()
                }
            ),
            "ctxprobe runs as root without CAP_SYS_PTRACE (dropped from its capabilities, e.g. \
             by a container runtime, systemd or setpriv), and process 7 has privileges ctxprobe \
             lacks; give ctxprobe CAP_SYS_PTRACE"
        );
        assert_eq!(
            explain(7, &root()),
            "ctxprobe runs as root with CAP_SYS_PTRACE in the host's user namespace, so a \
             security module refused access (active security modules: \
             lockdown,capability,landlock,yama,apparmor)"
        );
        let confined = Facts {
            apparmor_profile: Some("ctxprobe (enforce)".into()),
            ..root()
        };
        assert!(explain(7, &confined)
            .ends_with("(ctxprobe is confined by AppArmor profile \"ctxprobe (enforce)\")"));
        let user = Facts {
            euid: 1000,
            target_uid: Some(0),
            ..root()
        };
        assert_eq!(
            explain(7, &user),
            "it belongs to uid 0; run ctxprobe as root (sudo ctxprobe --pid 7)"
        );
        let same_user = Facts {
            euid: 1000,
            target_uid: Some(1000),
            ..root()
        };
        assert_eq!(
            explain(7, &same_user),
            "it runs as your uid 1000, but kernel.yama.ptrace_scope is 1; run ctxprobe as root \
             (sudo ctxprobe --pid 7)"
        );
    }

    #[test]
    fn facts_of_ourselves_parse() {
        let f = Facts::read(std::process::id());
        assert_eq!(f.target_uid, Some(f.euid));
        assert!(f.uid_map.is_some());
    }
}
