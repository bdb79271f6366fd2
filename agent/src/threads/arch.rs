//! What the thread watcher needs to know about the target's architecture (from its ELF
//! machine): the futex syscall numbers in `/proc/PID/task/TID/syscall` (whose fields, `NR ARG0..5
//! SP PC`, are the same everywhere) and whether its stacks can be unwound.

use gobinary::elf::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadArch {
    /// `futex` (x86_64 202, arm64 98); `futex_waitv` (449) and `futex_wait` (455) come from the
    /// unified table every architecture shares since 5.16.
    pub sys_futex: i64,
    /// The target's architecture, for the stack unwinder.
    pub arch: Arch,
}

impl ThreadArch {
    pub fn of(arch: Arch) -> ThreadArch {
        match arch {
            Arch::Aarch64 => ThreadArch {
                sys_futex: 98,
                arch,
            },
            _ => ThreadArch {
                sys_futex: 202,
                arch,
            },
        }
    }
}

pub const SYS_FUTEX_WAITV: i64 = 449;
pub const SYS_FUTEX_WAIT: i64 = 455;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futex_numbers_per_architecture() {
        assert_eq!(ThreadArch::of(Arch::X86_64).sys_futex, 202);
        assert_eq!(ThreadArch::of(Arch::Aarch64).sys_futex, 98);
        assert_eq!(
            Arch::of_file(std::path::Path::new("/proc/self/exe")),
            Some(Arch::host())
        );
        assert_eq!(
            Arch::of_file(std::path::Path::new("/proc/self/status")),
            None
        );
    }
}
