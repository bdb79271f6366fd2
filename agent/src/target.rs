//! The target process: does it exist, what is its executable, where is it loaded, what clock
//! does it see.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use crate::freezer::Freezer;

pub struct TargetProcess {
    pub pid: u32,
    /// `/proc/PID/exe`: opens the very file the process runs, even if it was replaced on disk.
    pub exe_link: PathBuf,
    /// What the link points to, for messages.
    pub exe_path: String,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat): tells a reused pid.
    start_ticks: u64,
    /// Add to our CLOCK_MONOTONIC to get the target's (time namespaces shift it).
    pub monotonic_offset_ns: i64,
    /// What tells this program image from the next one after an `exec` (same pid, same start
    /// time).
    image: ImageIdentity,
    /// Where a frozen cgroup shows.
    freezer: Freezer,
    /// Its main thread exited while other threads run on (see [`TargetProcess::state`]).
    main_thread_exited: AtomicBool,
}

/// How long a main thread that is a zombie while other threads live is looked at before the
/// process is taken to run on without it (an exec by another thread ends the program's other
/// threads first, which under emulation can take hundreds of milliseconds).
const MAIN_THREAD_SETTLE_NS: i64 = 2_000_000_000;

/// The program image a process runs: the executable file (device, inode) and where its initial
/// stack was placed (randomised at every `exec`, so an exec of the same file shows too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ImageIdentity {
    exe_dev: u64,
    exe_ino: u64,
    start_stack: u64,
}

/// What the target is doing, as far as ctxprobe's reads are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Running,
    /// Stopped by a signal (SIGSTOP, a debugger): nothing in it moves.
    Stopped,
    Exited,
    /// It replaced its program (`exec`): what we know of its memory no longer holds.
    Execed,
}

impl TargetProcess {
    pub fn open(pid: u32) -> Result<TargetProcess> {
        if pid == 0 {
            bail!("--pid 0 is not a process id");
        }
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let stat = match fs::read_to_string(proc_dir.join("stat")) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("no process with pid {pid}")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read /proc/{pid}/stat")),
        };
        let start_ticks =
            parse_start_ticks(&stat).with_context(|| format!("cannot parse /proc/{pid}/stat"))?;
        let exe_link = proc_dir.join("exe");
        let exe_path = match fs::read_link(&exe_link) {
            Ok(p) => p.display().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let comm = fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
                bail!(
                    "not permitted to inspect process {pid} ({}): {}",
                    comm.trim_end(),
                    crate::denied::cause(pid)
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && has_live_thread(pid) => {
                bail!(
                    "process {pid} has no executable: its main thread has exited while other \
                     threads run on, and its memory cannot be read through it"
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("process {pid} has no executable (a kernel thread or a zombie)")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read /proc/{pid}/exe")),
        };
        let image = image_identity(pid, &stat).with_context(|| {
            format!("cannot identify the executable of process {pid} (/proc/{pid}/exe)")
        })?;
        let monotonic_offset_ns = timens_monotonic_offset(&format!("/proc/{pid}/timens_offsets"))
            .unwrap_or(0)
            - timens_monotonic_offset("/proc/self/timens_offsets").unwrap_or(0);
        Ok(TargetProcess {
            pid,
            exe_link,
            exe_path,
            start_ticks,
            monotonic_offset_ns,
            image,
            freezer: Freezer::find(),
            main_thread_exited: AtomicBool::new(false),
        })
    }

    /// False once the process has exited (or its pid now names another process).
    pub fn is_alive(&self) -> bool {
        !matches!(self.state(), TargetState::Exited)
    }

    /// Running, stopped, gone, or running another program than the one we attached to.
    pub fn state(&self) -> TargetState {
        // The main thread is a zombie while another thread lives: a thread other than the main
        // one is in exec (the kernel waits for the main thread to become a zombie before the
        // exec'ing thread takes its pid and the new image shows), or the main thread alone
        // exited (a C program's `pthread_exit`). Looked at again for a moment: an exec ends
        // within it, a lone exited main thread does not (then the process runs on, and later
        // looks do not wait again).
        let settle_until = monotonic_ns().saturating_add(MAIN_THREAD_SETTLE_NS);
        loop {
            match self.look() {
                Some(state) => return state,
                None if self.main_thread_exited.load(Ordering::Relaxed)
                    || monotonic_ns() > settle_until =>
                {
                    self.main_thread_exited.store(true, Ordering::Relaxed);
                    return TargetState::Running;
                }
                None => std::thread::sleep(std::time::Duration::from_millis(2)),
            }
        }
    }

    /// The state as /proc shows it now; None while the main thread is a zombie (or its exe
    /// link is gone) and another thread lives (see [`TargetProcess::state`]).
    fn look(&self) -> Option<TargetState> {
        match self.look_once() {
            // The thread in exec may have taken the pid between our reads of the main thread
            // and of the task list (then the list shows it under the pid, and no other thread):
            // a process that exited still looks exited a moment later, one that exec'd shows
            // its new image.
            Some(TargetState::Exited) => self.look_once(),
            state => state,
        }
    }

    fn look_once(&self) -> Option<TargetState> {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return Some(TargetState::Exited);
        };
        if parse_start_ticks(&stat) != Some(self.start_ticks) {
            return Some(TargetState::Exited);
        }
        let image = if is_zombie(&stat) {
            None
        } else {
            // The exe link vanishes as the process exits.
            image_identity(self.pid, &stat).ok()
        };
        match image {
            Some(image) if image != self.image => return Some(TargetState::Execed),
            Some(_) => {}
            None if has_live_thread(self.pid) => return None,
            None => return Some(TargetState::Exited),
        }
        if is_stopped(&stat) || self.freezer.is_frozen(self.pid) {
            Some(TargetState::Stopped)
        } else {
            Some(TargetState::Running)
        }
    }

    /// The load bias of the executable: runtime address − link-time address. Found from the
    /// mapping of the executable's first `PT_LOAD` segment in /proc/PID/maps.
    pub fn load_bias(&self, elf: &gobinary::elf::ElfFile) -> Result<u64> {
        if !elf.is_pie() {
            return Ok(0);
        }
        let maps = crate::procmaps::mappings(self.pid)
            .with_context(|| format!("cannot read /proc/{}/maps", self.pid))?;
        let seg = elf
            .segments()
            .iter()
            .filter(|s| s.filesz > 0)
            .min_by_key(|s| s.vaddr)
            .context("the executable has no loadable segment")?;
        let want_off = seg.file_offset & !0xfff;
        // A program upgraded in place runs on from its deleted file: /proc says "(deleted)".
        let exe = self.exe_path.trim_end_matches(" (deleted)");
        maps.iter()
            .find(|m| m.path.as_deref() == Some(exe) && m.offset == want_off)
            .map(|m| m.start.wrapping_sub(seg.vaddr & !0xfff))
            .with_context(|| {
                format!(
                    "cannot find the executable's mapping in /proc/{}/maps",
                    self.pid
                )
            })
    }

    /// The target's CLOCK_MONOTONIC now, in nanoseconds (Go's `nanotime`).
    pub fn monotonic_now_ns(&self) -> i64 {
        monotonic_ns() + self.monotonic_offset_ns
    }
}

/// Our CLOCK_MONOTONIC in nanoseconds (the clock `bpf_ktime_get_ns` uses, outside namespaces).
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Fields after the command name: field 3 (state) is index 0.
fn stat_field(stat: &str, field: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(field.checked_sub(3)?)
}

/// `T` (stopped by a signal) or `t` (stopped by a tracer).
fn is_stopped(stat: &str) -> bool {
    matches!(stat_field(stat, 3), Some("T" | "t"))
}

fn image_identity(pid: u32, stat: &str) -> std::io::Result<ImageIdentity> {
    use std::os::unix::fs::MetadataExt;
    let exe = fs::metadata(format!("/proc/{pid}/exe"))?;
    Ok(ImageIdentity {
        exe_dev: exe.dev(),
        exe_ino: exe.ino(),
        // Field 28, `startstack`; 0 when the kernel hides it from us, then the file decides.
        start_stack: stat_field(stat, 28)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    })
}

/// Whether a thread of `pid` other than its main thread is alive (not a zombie).
fn has_live_thread(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let name = t.file_name();
        name.to_str() != Some(&pid.to_string())
            && fs::read_to_string(t.path().join("stat")).is_ok_and(|st| !is_zombie(&st))
    })
}

fn is_zombie(stat: &str) -> bool {
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X")
}

fn timens_monotonic_offset(path: &str) -> Option<i64> {
    let text = fs::read_to_string(path).ok()?;
    for line in text.lines() {
        let mut cols = line.split_whitespace();
        if cols.next()? == "monotonic" {
            let secs: i64 = cols.next()?.parse().ok()?;
            let nsecs: i64 = cols.next()?.parse().ok()?;
            return Some(secs * 1_000_000_000 + nsecs);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let stat = "123 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 999 20";
        assert_eq!(parse_start_ticks(stat), Some(999));
        assert!(!is_zombie(stat));
        assert!(!is_stopped(stat));
        assert_eq!(stat_field(stat, 28), None);
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(stat_field("garbage", 3), None);
        assert!(is_stopped("7 (x) T 1"));
    }

    #[test]
    fn self_is_alive() {
        let me = TargetProcess::open(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert_eq!(me.state(), TargetState::Running);
    }
}
