//! Blocked threads of any process: futex waits longer than a threshold, with the blocked thread's
//! symbolized user stack, who woke it, and the most contended futex words.
//!
//! Two sources of waits share the reporting (flags.rs):
//! - by default, /proc at each poll (proc_waits.rs): no cost per futex call, durations from the
//!   scheduler's stamp of when the thread last ran, ends known to within a poll;
//! - in precise mode, the futex syscall tracepoints (tracepoints.rs): exact starts, ends, results
//!   and wakers, at a cost on every syscall of every task on the machine while attached.
//!
//! Either way a blocked thread's stack does not change while it stays blocked, so its sp/pc from
//! /proc/PID/task/TID/syscall plus a read of its stack memory are enough to unwind it once, when
//! its wait is flagged.

mod arch;
mod contention;
mod flags;
mod idle;
mod modules;
mod ops;
mod proc_waits;
mod procfs;
mod schedclock;
mod symbols;
mod tracepoints;
mod unwind;

#[cfg(test)]
mod tests;

use std::time::Duration;

use anyhow::Result;
use probe_ebpf::FutexCounters;
use serde::Serialize;

use arch::{ThreadArch, SYS_FUTEX_WAIT, SYS_FUTEX_WAITV};
use contention::Tally;
use flags::Flags;
use proc_waits::ProcWaits;
use procfs::SyscallState;
use tracepoints::TraceWaits;
use unwind::ReadWord;

pub use idle::{is_go_runtime_idle, is_signal_loop_wait};
pub use symbols::StackFrame;

/// Waits at least this long (or the threshold, if shorter) count in `top_contended`; shorter ones
/// would cost a map update per contended lock.
const CONTENTION_FLOOR: Duration = Duration::from_millis(1);

pub struct ThreadSettings {
    pub pid: u32,
    pub threshold: Duration,
    /// Watch futex waits with the syscall tracepoints (precise mode) instead of polling /proc.
    pub tracepoints: bool,
    /// The target's architecture (its ELF machine).
    pub arch: gobinary::elf::Arch,
}

/// A thread's futex wait crossed the threshold.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadBlocked {
    pub tid: u32,
    pub thread_name: Option<String>,
    #[serde(serialize_with = "hex")]
    pub futex_addr: u64,
    pub futex_op: String,
    pub blocked_ns: u64,
    /// True only when the tracepoints saw the wait begin (precise mode). Otherwise the start is
    /// when the scheduler last ran the thread (a close, slightly late estimate), or when ctxprobe
    /// first saw the wait: `blocked_ns` is then a lower bound.
    pub since_exact: bool,
    /// Innermost first; empty if the wait ended before its stack could be read.
    pub stack: Vec<StackFrame>,
    /// The walk reached the thread's outermost frame (`clone`, `start_thread`, `_start`, Go's
    /// `runtime.mstart`, `runtime.goexit`...): no frame is missing below the last one.
    pub stack_complete: bool,
    /// Why the stack ends early, when it does.
    pub stack_error: Option<String>,
    /// For Go programs, the goroutine the thread was running (filled in by the caller).
    pub goid: Option<u64>,
}

/// A flagged wait ended.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadUnblocked {
    pub tid: u32,
    pub thread_name: Option<String>,
    #[serde(serialize_with = "hex")]
    pub futex_addr: u64,
    pub blocked_ns: u64,
    pub since_exact: bool,
    /// The thread whose wake call on the same futex word came last after the wait began.
    pub woken_by_tid: Option<u32>,
    /// The wait's result: 0, or a negative errno (-110 ETIMEDOUT, -4 EINTR); None if the end was
    /// inferred (thread exited, event lost).
    pub result: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum ThreadEvent {
    Blocked(ThreadBlocked),
    Unblocked(ThreadUnblocked),
}

/// A futex word many threads waited on for long (waits ≥ 1 ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContendedFutex {
    #[serde(serialize_with = "hex")]
    pub futex_addr: u64,
    /// Long waits that ended, plus those in progress.
    pub waiters: u64,
    /// Of which still waiting at the last poll.
    pub blocked_now: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
}

#[allow(clippy::large_enum_variant)] // one per monitor: boxing would buy nothing
enum Source {
    Tracepoints(TraceWaits),
    Proc(ProcWaits),
}

pub struct ThreadMonitor {
    flags: Flags,
    source: Source,
}

impl ThreadMonitor {
    /// Starts watching `s.pid`'s threads: attaches the futex tracepoints in precise mode.
    pub fn start(s: &ThreadSettings) -> Result<ThreadMonitor> {
        let threshold_ns = u64::try_from(s.threshold.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let floor_ns = threshold_ns.min(CONTENTION_FLOOR.as_nanos() as u64);
        let flags = Flags::new(s.pid, ThreadArch::of(s.arch));
        let source = if s.tracepoints {
            Source::Tracepoints(TraceWaits::start(s.pid, threshold_ns, floor_ns, &flags)?)
        } else {
            Source::Proc(ProcWaits::new(s.pid, threshold_ns, floor_ns))
        };
        Ok(ThreadMonitor { flags, source })
    }

    /// Flags waits that crossed the threshold since the last call and reports those that ended.
    pub fn poll(&mut self) -> Result<Vec<ThreadEvent>> {
        let mut out = Vec::new();
        match &mut self.source {
            Source::Tracepoints(t) => t.poll(&mut self.flags, &mut out)?,
            Source::Proc(p) => p.poll(&mut self.flags, &mut out),
        }
        Ok(out)
    }

    /// The `n` futex words with the most total wait time (ended long waits and those in progress).
    pub fn top_contended(&self, n: usize) -> Vec<ContendedFutex> {
        let mut tally = Tally::default();
        match &self.source {
            Source::Tracepoints(t) => t.contention(&mut tally),
            Source::Proc(p) => p.contention(&mut tally),
        }
        tally.top(n)
    }

    /// Long-wait events the kernel side dropped because the ring buffer was full (tracepoints).
    pub fn lost_events(&self) -> u64 {
        self.counters().map(|c| c.lost_events).unwrap_or(0)
    }

    /// The kernel side's counters at the last poll (futex calls, waits, wakes, ...); `None`
    /// when no tracepoints are attached.
    pub fn counters(&self) -> Option<FutexCounters> {
        match &self.source {
            Source::Tracepoints(t) => Some(t.counters()),
            Source::Proc(_) => None,
        }
    }
}

/// The futex word and op of the wait a thread is blocked in, if it is a futex wait.
fn futex_wait_of(arch: ThreadArch, st: &SyscallState, mem: &dyn ReadWord) -> Option<(u64, u32)> {
    use probe_ebpf::abi::{FUTEX_OP_SYS_WAIT, FUTEX_OP_SYS_WAITV};
    match st.nr {
        nr if nr == arch.sys_futex => {
            let op = st.args[1] as u32;
            ops::is_wait_cmd(op).then_some((st.args[0], op))
        }
        // futex_wait(uaddr, val, mask, flags, timeout, clockid)
        SYS_FUTEX_WAIT => Some((st.args[0], FUTEX_OP_SYS_WAIT | (st.args[3] as u32 & 0xffff))),
        // futex_waitv(waiters, nr, flags, timeout, clockid); waiters[0].uaddr at offset 8
        SYS_FUTEX_WAITV => Some((
            mem.read_word(st.args[0].checked_add(8)?)?,
            FUTEX_OP_SYS_WAITV | (st.args[2] as u32 & 0xffff),
        )),
        _ => None,
    }
}

/// Addresses as "0x..." strings in JSON.
pub(crate) fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}
