//! Loads `bpf/futex.bpf.c` and attaches its futex syscall tracepoints, filtered to one process.
//!
//! The programs record each wait in progress in `waiting` (read here on demand), send one event per
//! wait that ended after at least `event_threshold_ns`, and sum long waits per futex word in
//! `contention`.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::trace_point::TracePointLinkId;
use aya::programs::{ProgramError, TracePoint};
use aya::{Ebpf, EbpfLoader};

use crate::abi::{
    FutexContention, FutexEvent, FutexWaitRec, FutexWakeRec, FCTR_CALLS, FCTR_EVENTS,
    FCTR_LOST_EVENTS, FCTR_UPDATE_ERRORS, FCTR_WAITS, FCTR_WAKES,
};
use crate::error::{classify, program_load_error, ProbeError};
use crate::maps::{self, bpf_error, missing};

const WAITING_MAP: &str = "waiting";
const LAST_WAKE_MAP: &str = "last_wake";
const CONTENTION_MAP: &str = "contention";
const EVENTS_MAP: &str = "futex_events";
const COUNTERS_MAP: &str = "futex_counters";
const TRACEFS: &str = "/sys/kernel/tracing";
const BPF_NOEXIST: u64 = 1;

/// (program, syscalls tracepoint, required). The futex2 syscalls (futex_waitv: Linux 5.16,
/// futex_wait/futex_wake: 6.7) are attached when this kernel has them.
const TRACEPOINTS: &[(&str, &str, bool)] = &[
    ("futex_enter", "sys_enter_futex", true),
    ("futex_exit", "sys_exit_futex", true),
    ("futex_wait_enter", "sys_enter_futex_wait", false),
    ("futex_wait_exit", "sys_exit_futex_wait", false),
    ("futex_waitv_enter", "sys_enter_futex_waitv", false),
    ("futex_waitv_exit", "sys_exit_futex_waitv", false),
    ("futex_wake_enter", "sys_enter_futex_wake", false),
];

/// Which process to watch and what counts as long.
#[derive(Debug, Clone)]
pub struct FutexConfig {
    pub pid: u32,
    /// Waits at least this long send a [`FutexEvent`] when they end.
    pub event_threshold_ns: u64,
    /// Waits at least this long are summed in the contention map.
    pub contention_floor_ns: u64,
}

/// Sums of the per-CPU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FutexCounters {
    pub calls: u64,
    pub waits: u64,
    pub wakes: u64,
    pub events: u64,
    pub lost_events: u64,
    pub update_errors: u64,
}

/// The loaded futex programs and maps. Dropping it detaches the tracepoints.
pub struct FutexProbes {
    // Taken out of `ebpf` so it can be drained while the other maps are borrowed.
    events: RingBuf<MapData>,
    ebpf: Ebpf,
    links: Vec<(&'static str, TracePointLinkId)>,
}

impl std::fmt::Debug for FutexProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FutexProbes")
            .field("attached", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl FutexProbes {
    /// Creates the maps and verifies and loads the programs; attaches nothing.
    pub fn load(cfg: &FutexConfig) -> Result<FutexProbes, ProbeError> {
        if cfg.pid == 0 {
            return Err(ProbeError::Config("pid must not be 0".to_string()));
        }
        if !Path::new(&format!("/proc/{}", cfg.pid)).exists() {
            return Err(ProbeError::Config(format!(
                "no process with pid {}",
                cfg.pid
            )));
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("target_tgid", &cfg.pid, true)
            .override_global("event_threshold_ns", &cfg.event_threshold_ns, true)
            .override_global("contention_floor_ns", &cfg.contention_floor_ns, true)
            .load(crate::FUTEX_BPF_OBJECT)
            .map_err(|e| {
                classify(&e, "load the futex eBPF object", |detail| ProbeError::Bpf {
                    action: "load the futex eBPF object (create maps)".to_string(),
                    detail,
                })
            })?;
        for (name, _, _) in TRACEPOINTS {
            tracepoint(&mut ebpf, name)?
                .load()
                .map_err(|e| program_load_error(name, e))?;
        }
        let events = ebpf
            .take_map(EVENTS_MAP)
            .ok_or_else(|| missing(EVENTS_MAP))
            .and_then(|m| {
                RingBuf::try_from(m).map_err(|e| bpf_error("open the futex events ring buffer", &e))
            })?;
        Ok(FutexProbes {
            events,
            ebpf,
            links: Vec::new(),
        })
    }

    /// Attaches every tracepoint this kernel has (the futex(2) pair is required).
    pub fn attach(&mut self) -> Result<(), ProbeError> {
        if !self.links.is_empty() {
            return Ok(());
        }
        let events_dir = ensure_tracefs()?;
        for &(name, event, required) in TRACEPOINTS {
            if !required && !events_dir.join(event).exists() {
                continue;
            }
            let prog = tracepoint(&mut self.ebpf, name)?;
            match prog.attach("syscalls", event) {
                Ok(link) => self.links.push((name, link)),
                Err(e) => {
                    let err = classify(&e, &format!("attach the {event} tracepoint"), |detail| {
                        ProbeError::KernelSupport {
                            feature: format!(
                                "the syscalls/{event} tracepoint (CONFIG_FTRACE_SYSCALLS)"
                            ),
                            detail,
                        }
                    });
                    self.detach();
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Detaches all tracepoints (the maps stay readable).
    pub fn detach(&mut self) {
        for (name, link) in std::mem::take(&mut self.links) {
            if let Ok(prog) = tracepoint(&mut self.ebpf, name) {
                // Detaching a link that is already gone is not an error worth reporting.
                let _ = prog.detach(link);
            }
        }
    }

    pub fn attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Waits in progress as (tid, record). Two syscalls per entry; entries that vanish during the
    /// walk are skipped.
    pub fn waiting(&self) -> Result<Vec<(u32, FutexWaitRec)>, ProbeError> {
        let map = self
            .ebpf
            .map(WAITING_MAP)
            .ok_or_else(|| missing(WAITING_MAP))?;
        let waiting = HashMap::<&MapData, u32, FutexWaitRec>::try_from(map)
            .map_err(|e| bpf_error("open the waiting map", &e))?;
        Ok(waiting.iter().filter_map(Result::ok).collect())
    }

    /// Records a wait that began before attach (found by userspace), unless the programs already
    /// track one for `tid`. Returns whether it was inserted.
    pub fn insert_waiting(&mut self, tid: u32, rec: FutexWaitRec) -> Result<bool, ProbeError> {
        let map = self
            .ebpf
            .map_mut(WAITING_MAP)
            .ok_or_else(|| missing(WAITING_MAP))?;
        let mut waiting = HashMap::<&mut MapData, u32, FutexWaitRec>::try_from(map)
            .map_err(|e| bpf_error("open the waiting map", &e))?;
        match waiting.insert(tid, rec, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(e) if crate::error::errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(bpf_error("add to the waiting map", &e)),
        }
    }

    /// Forgets the wait of `tid` if it is still the one that began at `start_ns` (for threads that
    /// died while waiting, or records userspace inserted that turned out stale).
    pub fn remove_waiting(&mut self, tid: u32, start_ns: u64) {
        let Some(map) = self.ebpf.map_mut(WAITING_MAP) else {
            return;
        };
        let Ok(mut waiting) = HashMap::<&mut MapData, u32, FutexWaitRec>::try_from(map) else {
            return;
        };
        if waiting.get(&tid, 0).is_ok_and(|r| r.start_ns == start_ns) {
            // Not-found (the wait just ended) is fine.
            let _ = waiting.remove(&tid);
        }
    }

    /// The last wake-type futex call seen on `uaddr`.
    pub fn last_wake(&self, uaddr: u64) -> Option<FutexWakeRec> {
        let map = self.ebpf.map(LAST_WAKE_MAP)?;
        let wakes = HashMap::<&MapData, u64, FutexWakeRec>::try_from(map).ok()?;
        wakes.get(&uaddr, 0).ok()
    }

    /// Long waits summed per futex word, as (uaddr, sums).
    pub fn contention(&self) -> Result<Vec<(u64, FutexContention)>, ProbeError> {
        let map = self
            .ebpf
            .map(CONTENTION_MAP)
            .ok_or_else(|| missing(CONTENTION_MAP))?;
        let c = HashMap::<&MapData, u64, FutexContention>::try_from(map)
            .map_err(|e| bpf_error("open the contention map", &e))?;
        Ok(c.iter().filter_map(Result::ok).collect())
    }

    /// Drains the ring buffer without blocking.
    pub fn take_events(&mut self) -> Vec<FutexEvent> {
        maps::drain(&mut self.events)
    }

    /// Readable when events are pending (for epoll/tokio AsyncFd).
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Per-CPU counters summed over CPUs.
    pub fn counters(&self) -> Result<FutexCounters, ProbeError> {
        let [calls, waits, wakes, events, lost_events, update_errors] = maps::sum_counters(
            &self.ebpf,
            COUNTERS_MAP,
            [
                FCTR_CALLS,
                FCTR_WAITS,
                FCTR_WAKES,
                FCTR_EVENTS,
                FCTR_LOST_EVENTS,
                FCTR_UPDATE_ERRORS,
            ],
        )?;
        Ok(FutexCounters {
            calls,
            waits,
            wakes,
            events,
            lost_events,
            update_errors,
        })
    }
}

impl Drop for FutexProbes {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The tracefs `events/syscalls` directory, mounting tracefs first if nothing is mounted (a fresh
/// VM often has neither /sys/kernel/tracing nor debugfs mounted; aya needs one of them).
fn ensure_tracefs() -> Result<std::path::PathBuf, ProbeError> {
    for root in [TRACEFS, "/sys/kernel/debug/tracing"] {
        let dir = Path::new(root).join("events/syscalls");
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    let src = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are NUL-terminated strings alive for the call; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(classify(
            &e,
            "mount tracefs on /sys/kernel/tracing",
            |detail| ProbeError::KernelSupport {
                feature: "tracefs (CONFIG_TRACING)".to_string(),
                detail,
            },
        ));
    }
    let dir = Path::new(TRACEFS).join("events/syscalls");
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(ProbeError::KernelSupport {
            feature: "syscall tracepoints (CONFIG_FTRACE_SYSCALLS)".to_string(),
            detail: format!("{} does not exist", dir.display()),
        })
    }
}

fn tracepoint<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut TracePoint, ProbeError> {
    let prog = ebpf.program_mut(name).ok_or_else(|| ProbeError::Bpf {
        action: "find program".to_string(),
        detail: format!("`{name}` is missing from the embedded futex eBPF object"),
    })?;
    prog.try_into()
        .map_err(|e: ProgramError| bpf_error(&format!("use `{name}` as a tracepoint"), &e))
}
