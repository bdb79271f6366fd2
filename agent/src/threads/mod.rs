//! Blocked threads of any process: futex waits longer than a threshold, with the blocked thread's
//! symbolized user stack, who woke it, and the most contended futex words.
//!
//! The kernel side (probe_ebpf::FutexProbes) tracks every futex wait of the target in a map and
//! sends an event only when a long wait ends. `poll` flags waits in that map that crossed the
//! threshold: a blocked thread's stack does not change while it stays blocked, so its sp/pc from
//! /proc/PID/task/TID/syscall plus a read of its stack memory are enough to unwind it then.
//! Threads already blocked before attach are found in /proc the same way, with a lower-bound start.

mod modules;
mod ops;
mod procfs;
mod symbols;
mod unwind;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use probe_ebpf::{FutexConfig, FutexCounters, FutexProbes, FutexWaitRec};
use serde::Serialize;

use crate::procmem::ProcessMemory;
use modules::AddressSpace;
use procfs::{SyscallState, SYS_FUTEX, SYS_FUTEX_WAIT, SYS_FUTEX_WAITV};
use unwind::ReadWord;

pub use symbols::StackFrame;

/// Waits at least this long (or the threshold, if shorter) count in `top_contended`; shorter ones
/// would cost a map update per contended lock.
const CONTENTION_FLOOR: Duration = Duration::from_millis(1);
/// Polls a flagged wait may be missing from the kernel's map before it is taken as ended without
/// an event (event lost, or it ended between the event drain and the map read).
const MISSING_POLLS: u8 = 2;

pub struct ThreadSettings {
    pub pid: u32,
    pub threshold: Duration,
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
    /// False for waits that began before attach: `blocked_ns` is then a lower bound.
    pub since_exact: bool,
    /// Innermost first; empty if the wait ended before its stack could be read.
    pub stack: Vec<StackFrame>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wait {
    uaddr: u64,
    op: u32,
    start_ns: u64,
    exact: bool,
}

#[derive(Debug, Clone)]
struct Flagged {
    wait: Wait,
    name: Option<String>,
    missing_polls: u8,
}

pub struct ThreadMonitor {
    pid: u32,
    threshold_ns: u64,
    floor_ns: u64,
    probes: FutexProbes,
    mem: ProcessMemory,
    space: AddressSpace,
    /// Start times userspace inserted for waits found before attach (lower bounds), by tid.
    inexact: HashMap<u32, u64>,
    flagged: HashMap<u32, Flagged>,
    /// The kernel's `waiting` map at the last poll.
    waiting: Vec<(u32, FutexWaitRec)>,
    counters: FutexCounters,
}

impl ThreadMonitor {
    /// Attaches the futex tracepoints for `s.pid` and registers the threads already blocked in a
    /// futex wait.
    pub fn start(s: &ThreadSettings) -> Result<ThreadMonitor> {
        let threshold_ns = u64::try_from(s.threshold.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let floor_ns = threshold_ns.min(CONTENTION_FLOOR.as_nanos() as u64);
        let cfg = FutexConfig {
            pid: s.pid,
            event_threshold_ns: threshold_ns,
            contention_floor_ns: floor_ns,
        };
        let mut probes = FutexProbes::load(&cfg)
            .with_context(|| format!("cannot load the futex probes for process {}", s.pid))?;
        probes
            .attach()
            .with_context(|| format!("cannot attach the futex probes for process {}", s.pid))?;
        let mut monitor = ThreadMonitor {
            pid: s.pid,
            threshold_ns,
            floor_ns,
            probes,
            mem: ProcessMemory::new(s.pid),
            space: AddressSpace::new(s.pid),
            inexact: HashMap::new(),
            flagged: HashMap::new(),
            waiting: Vec::new(),
            counters: FutexCounters::default(),
        };
        monitor.find_already_blocked()?;
        Ok(monitor)
    }

    /// Threads in a futex wait that began before attach: the programs only see waits begin, so
    /// put these in their map (the wait's end is then traced like any other). Start = now, a
    /// lower bound.
    fn find_already_blocked(&mut self) -> Result<()> {
        for tid in procfs::task_ids(self.pid) {
            let Some(st) = procfs::syscall_state(self.pid, tid) else {
                continue;
            };
            let Some((uaddr, op)) = futex_wait_of(&st, &self.mem) else {
                continue;
            };
            let start_ns = procfs::monotonic_ns();
            let rec = FutexWaitRec {
                uaddr,
                start_ns,
                op,
                pad: 0,
            };
            if !self.probes.insert_waiting(tid, rec)? {
                continue; // a wait that began after attach: the programs know it exactly
            }
            // If the thread left that wait between the two reads, the record would describe its
            // next futex call instead: drop it.
            if procfs::syscall_state(self.pid, tid) == Some(st) {
                self.inexact.insert(tid, start_ns);
            } else {
                self.probes.remove_waiting(tid, start_ns);
            }
        }
        Ok(())
    }

    /// Flags waits that crossed the threshold since the last call and reports those that ended.
    pub fn poll(&mut self) -> Result<Vec<ThreadEvent>> {
        let mut out = Vec::new();
        for ev in self.probes.take_events() {
            self.on_long_wait_ended(&ev, &mut out);
        }
        self.waiting = self
            .probes
            .waiting()
            .context("cannot read the futex waiting map")?;
        let now = procfs::monotonic_ns();
        self.flag_new_waits(now, &mut out);
        self.expire_missing(now, &mut out);
        self.counters = self
            .probes
            .counters()
            .context("cannot read the futex counters")?;
        Ok(out)
    }

    /// A wait of at least the threshold ended (reported by the kernel side).
    fn on_long_wait_ended(&mut self, ev: &probe_ebpf::FutexEvent, out: &mut Vec<ThreadEvent>) {
        let exact = self.inexact.get(&ev.tid) != Some(&ev.start_ns);
        if !exact {
            self.inexact.remove(&ev.tid);
        }
        let flagged = match self.flagged.get(&ev.tid) {
            Some(f) if f.wait.start_ns == ev.start_ns => self.flagged.remove(&ev.tid),
            _ => None,
        };
        let name = match flagged {
            Some(f) => f.name,
            None => {
                // It crossed the threshold and ended between two polls: too late for its stack.
                let name = procfs::thread_name(self.pid, ev.tid);
                out.push(ThreadEvent::Blocked(ThreadBlocked {
                    tid: ev.tid,
                    thread_name: name.clone(),
                    futex_addr: ev.uaddr,
                    futex_op: ops::op_name(ev.op),
                    blocked_ns: ev.end_ns.saturating_sub(ev.start_ns),
                    since_exact: exact,
                    stack: Vec::new(),
                    goid: None,
                }));
                name
            }
        };
        out.push(ThreadEvent::Unblocked(ThreadUnblocked {
            tid: ev.tid,
            thread_name: name,
            futex_addr: ev.uaddr,
            blocked_ns: ev.end_ns.saturating_sub(ev.start_ns),
            since_exact: exact,
            woken_by_tid: (ev.woken_by_tid != 0).then_some(ev.woken_by_tid),
            result: Some(ev.ret),
        }));
    }

    fn flag_new_waits(&mut self, now: u64, out: &mut Vec<ThreadEvent>) {
        let waiting = std::mem::take(&mut self.waiting);
        for &(tid, rec) in &waiting {
            if now.saturating_sub(rec.start_ns) < self.threshold_ns {
                continue;
            }
            if let Some(f) = self.flagged.get_mut(&tid) {
                if f.wait.start_ns == rec.start_ns {
                    f.missing_polls = 0;
                    continue;
                }
            }
            let Some(st) = procfs::syscall_state(self.pid, tid) else {
                if !procfs::task_exists(self.pid, tid) {
                    // The thread exited inside the wait: the programs never see its end.
                    self.probes.remove_waiting(tid, rec.start_ns);
                }
                continue;
            };
            // Only a thread still in that wait has the stack of that wait.
            if futex_wait_of(&st, &self.mem).map(|(uaddr, _)| uaddr) != Some(rec.uaddr) {
                continue;
            }
            let wait = Wait {
                uaddr: rec.uaddr,
                op: rec.op,
                start_ns: rec.start_ns,
                exact: self.inexact.get(&tid) != Some(&rec.start_ns),
            };
            let name = procfs::thread_name(self.pid, tid);
            let stack = self.stack(&st);
            out.push(ThreadEvent::Blocked(ThreadBlocked {
                tid,
                thread_name: name.clone(),
                futex_addr: wait.uaddr,
                futex_op: ops::op_name(wait.op),
                blocked_ns: now.saturating_sub(wait.start_ns),
                since_exact: wait.exact,
                stack,
                goid: None,
            }));
            // A previous flagged wait of this thread ended unseen: `expire_missing` reports it.
            if let Some(old) = self.flagged.insert(
                tid,
                Flagged {
                    wait,
                    name,
                    missing_polls: 0,
                },
            ) {
                out.push(self.inferred_end(tid, &old, now));
            }
        }
        self.waiting = waiting;
    }

    /// Flagged waits gone from the kernel's map without an event: lost event, or exited thread.
    fn expire_missing(&mut self, now: u64, out: &mut Vec<ThreadEvent>) {
        let mut ended = Vec::new();
        for (&tid, f) in self.flagged.iter_mut() {
            let present = self
                .waiting
                .iter()
                .any(|(t, r)| *t == tid && r.start_ns == f.wait.start_ns);
            if present && procfs::task_exists(self.pid, tid) {
                continue;
            }
            f.missing_polls += 1;
            if f.missing_polls >= MISSING_POLLS || !procfs::task_exists(self.pid, tid) {
                ended.push(tid);
            }
        }
        for tid in ended {
            if let Some(f) = self.flagged.remove(&tid) {
                self.probes.remove_waiting(tid, f.wait.start_ns);
                out.push(self.inferred_end(tid, &f, now));
            }
        }
    }

    fn inferred_end(&self, tid: u32, f: &Flagged, now: u64) -> ThreadEvent {
        let woken_by_tid = self
            .probes
            .last_wake(f.wait.uaddr)
            .filter(|w| w.ns >= f.wait.start_ns && w.tid != tid)
            .map(|w| w.tid);
        ThreadEvent::Unblocked(ThreadUnblocked {
            tid,
            thread_name: f.name.clone(),
            futex_addr: f.wait.uaddr,
            blocked_ns: now.saturating_sub(f.wait.start_ns),
            since_exact: f.wait.exact,
            woken_by_tid,
            result: None,
        })
    }

    fn stack(&mut self, st: &SyscallState) -> Vec<StackFrame> {
        self.space.begin_batch();
        let pcs = unwind::unwind(&mut self.space, &self.mem, st.sp, st.pc);
        symbols::symbolize(&mut self.space, &pcs)
    }

    /// The `n` futex words with the most total wait time (ended long waits and those in progress).
    pub fn top_contended(&self, n: usize) -> Vec<ContendedFutex> {
        let mut by_addr: HashMap<u64, ContendedFutex> = HashMap::new();
        let entry = |m: &mut HashMap<u64, ContendedFutex>, addr: u64| {
            m.entry(addr)
                .or_insert(ContendedFutex {
                    futex_addr: addr,
                    waiters: 0,
                    blocked_now: 0,
                    total_wait_ns: 0,
                    max_wait_ns: 0,
                })
                .futex_addr
        };
        for (addr, c) in self.probes.contention().unwrap_or_default() {
            entry(&mut by_addr, addr);
            if let Some(e) = by_addr.get_mut(&addr) {
                e.waiters += c.waits;
                e.total_wait_ns = e.total_wait_ns.saturating_add(c.total_ns);
                e.max_wait_ns = e.max_wait_ns.max(c.max_ns);
            }
        }
        let now = procfs::monotonic_ns();
        for (_, rec) in &self.waiting {
            let dur = now.saturating_sub(rec.start_ns);
            if dur < self.floor_ns {
                continue;
            }
            entry(&mut by_addr, rec.uaddr);
            if let Some(e) = by_addr.get_mut(&rec.uaddr) {
                e.waiters += 1;
                e.blocked_now += 1;
                e.total_wait_ns = e.total_wait_ns.saturating_add(dur);
                e.max_wait_ns = e.max_wait_ns.max(dur);
            }
        }
        let mut all: Vec<ContendedFutex> = by_addr.into_values().collect();
        all.sort_by(|a, b| {
            b.total_wait_ns
                .cmp(&a.total_wait_ns)
                .then(a.futex_addr.cmp(&b.futex_addr))
        });
        all.truncate(n);
        all
    }

    /// Long-wait events the kernel side dropped because the ring buffer was full.
    pub fn lost_events(&self) -> u64 {
        self.counters.lost_events
    }

    #[cfg_attr(not(test), allow(dead_code))] // the overhead test reads them
    /// The kernel side's counters at the last poll (futex calls, waits, wakes, ...).
    pub fn counters(&self) -> FutexCounters {
        self.counters
    }
}

/// The futex word and op of the wait a thread is blocked in, if it is a futex wait.
fn futex_wait_of(st: &SyscallState, mem: &dyn ReadWord) -> Option<(u64, u32)> {
    use probe_ebpf::abi::{FUTEX_OP_SYS_WAIT, FUTEX_OP_SYS_WAITV};
    match st.nr {
        SYS_FUTEX => {
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
