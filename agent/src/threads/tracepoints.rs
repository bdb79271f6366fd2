//! Precise source: the futex syscall tracepoints (probe_ebpf::FutexProbes) track every futex wait
//! of the target in a map and send an event when a wait of at least the threshold ends, with its
//! exact duration, result and waker. Enabling a syscall tracepoint puts every task on the machine
//! on the slow syscall path, so this is only used in precise mode.

use std::collections::HashMap;

use anyhow::{Context, Result};
use probe_ebpf::{FutexConfig, FutexCounters, FutexEvent, FutexProbes, FutexWaitRec};

use super::contention::Tally;
use super::flags::{Ending, Flags, Wait};
use super::procfs;
use super::schedclock::{self, SchedClock};
use super::{futex_wait_of, ThreadEvent};

/// Polls a flagged wait may be missing from the kernel's map before it is taken as ended without
/// an event (event lost, or it ended between the event drain and the map read).
const MISSING_POLLS: u8 = 2;

pub struct TraceWaits {
    pid: u32,
    threshold_ns: u64,
    floor_ns: u64,
    probes: FutexProbes,
    /// Start times userspace inserted for waits found before attach (estimates), by tid.
    inexact: HashMap<u32, u64>,
    /// The kernel's `waiting` map at the last poll.
    waiting: Vec<(u32, FutexWaitRec)>,
    counters: FutexCounters,
}

impl TraceWaits {
    /// Attaches the futex tracepoints and registers the threads already blocked in a futex wait.
    pub fn start(pid: u32, threshold_ns: u64, floor_ns: u64, flags: &Flags) -> Result<TraceWaits> {
        let cfg = FutexConfig {
            pid,
            event_threshold_ns: threshold_ns,
            contention_floor_ns: floor_ns,
        };
        let mut probes = FutexProbes::load(&cfg)
            .with_context(|| format!("cannot load the futex probes for process {pid}"))?;
        probes
            .attach()
            .with_context(|| format!("cannot attach the futex probes for process {pid}"))?;
        let mut t = TraceWaits {
            pid,
            threshold_ns,
            floor_ns,
            probes,
            inexact: HashMap::new(),
            waiting: Vec::new(),
            counters: FutexCounters::default(),
        };
        t.find_already_blocked(flags)?;
        Ok(t)
    }

    /// Threads in a futex wait that began before attach: the programs only see waits begin, so
    /// put these in their map (the wait's end is then traced like any other). Start = when the
    /// scheduler last ran the thread, or else now (a lower bound).
    fn find_already_blocked(&mut self, flags: &Flags) -> Result<()> {
        let mut clock = SchedClock::default();
        for tid in procfs::task_ids(self.pid) {
            let Some(st) = procfs::syscall_state(self.pid, tid) else {
                continue;
            };
            let Some((uaddr, op)) = futex_wait_of(flags.arch(), &st, flags.mem()) else {
                continue;
            };
            let sched = procfs::sched_state(self.pid, tid);
            let start_ns = sched
                .and_then(|s| schedclock::went_to_sleep(&mut clock, self.pid, tid, &s))
                .unwrap_or_else(procfs::monotonic_ns);
            let rec = FutexWaitRec {
                uaddr,
                start_ns,
                op,
                pad: 0,
            };
            if !self.probes.insert_waiting(tid, rec)? {
                continue; // a wait that began after attach: the programs know it exactly
            }
            // If the thread left that wait between the reads, the record would describe its
            // next futex call instead: drop it.
            let same_sched = sched.is_none()
                || procfs::sched_state(self.pid, tid).map(|s| s.nr_switches)
                    == sched.map(|s| s.nr_switches);
            if same_sched && procfs::syscall_state(self.pid, tid) == Some(st) {
                self.inexact.insert(tid, start_ns);
            } else {
                self.probes.remove_waiting(tid, start_ns);
            }
        }
        Ok(())
    }

    /// Flags waits that crossed the threshold since the last call and reports those that ended.
    pub fn poll(&mut self, flags: &mut Flags, out: &mut Vec<ThreadEvent>) -> Result<()> {
        for ev in self.probes.take_events() {
            self.on_long_wait_ended(flags, &ev, out);
        }
        self.waiting = self
            .probes
            .waiting()
            .context("cannot read the futex waiting map")?;
        let now = procfs::monotonic_ns();
        self.flag_new_waits(flags, now, out);
        self.expire_missing(flags, now, out);
        self.counters = self
            .probes
            .counters()
            .context("cannot read the futex counters")?;
        Ok(())
    }

    /// A wait of at least the threshold ended (reported by the kernel side).
    fn on_long_wait_ended(
        &mut self,
        flags: &mut Flags,
        ev: &FutexEvent,
        out: &mut Vec<ThreadEvent>,
    ) {
        let exact = self.inexact.get(&ev.tid) != Some(&ev.start_ns);
        if !exact {
            self.inexact.remove(&ev.tid);
        }
        let this_wait = flags
            .get(ev.tid)
            .is_some_and(|f| f.wait.start_ns == ev.start_ns);
        if !this_wait {
            // It crossed the threshold and ended between two polls: too late for its stack.
            let wait = Wait {
                uaddr: ev.uaddr,
                op: ev.op,
                start_ns: ev.start_ns,
                exact,
            };
            if flags.get(ev.tid).is_some() {
                self.end_inferred(flags, ev.tid, ev.start_ns, out);
            }
            flags.flag(ev.tid, wait, None, ev.end_ns, out);
        }
        let ending = Ending {
            end_ns: ev.end_ns,
            woken_by_tid: (ev.woken_by_tid != 0).then_some(ev.woken_by_tid),
            result: Some(ev.ret),
        };
        flags.end(ev.tid, ending, out);
    }

    fn flag_new_waits(&mut self, flags: &mut Flags, now: u64, out: &mut Vec<ThreadEvent>) {
        let waiting = std::mem::take(&mut self.waiting);
        for &(tid, rec) in &waiting {
            if now.saturating_sub(rec.start_ns) < self.threshold_ns {
                continue;
            }
            if let Some(f) = flags.get_mut(tid) {
                if f.wait.start_ns == rec.start_ns {
                    f.missing_polls = 0;
                    f.last_seen_ns = now;
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
            if futex_wait_of(flags.arch(), &st, flags.mem()).map(|(uaddr, _)| uaddr)
                != Some(rec.uaddr)
            {
                continue;
            }
            let wait = Wait {
                uaddr: rec.uaddr,
                op: rec.op,
                start_ns: rec.start_ns,
                exact: self.inexact.get(&tid) != Some(&rec.start_ns),
            };
            // A previous flagged wait of this thread ended unseen.
            if flags.get(tid).is_some() {
                self.end_inferred(flags, tid, now, out);
            }
            flags.flag(tid, wait, Some(&st), now, out);
        }
        self.waiting = waiting;
    }

    /// Flagged waits gone from the kernel's map without an event: lost event, or exited thread.
    fn expire_missing(&mut self, flags: &mut Flags, now: u64, out: &mut Vec<ThreadEvent>) {
        for tid in flags.tids() {
            let Some(f) = flags.get_mut(tid) else {
                continue;
            };
            let exists = procfs::task_exists(self.pid, tid);
            let present = self
                .waiting
                .iter()
                .any(|(t, r)| *t == tid && r.start_ns == f.wait.start_ns);
            if present && exists {
                continue;
            }
            f.missing_polls += 1;
            if f.missing_polls >= MISSING_POLLS || !exists {
                let start_ns = f.wait.start_ns;
                self.probes.remove_waiting(tid, start_ns);
                self.end_inferred(flags, tid, now, out);
            }
        }
    }

    /// Ends `tid`'s flagged wait without an event from the kernel, at `end_ns`.
    fn end_inferred(&self, flags: &mut Flags, tid: u32, end_ns: u64, out: &mut Vec<ThreadEvent>) {
        let Some(f) = flags.get(tid) else {
            return;
        };
        let woken_by_tid = self
            .probes
            .last_wake(f.wait.uaddr)
            .filter(|w| w.ns >= f.wait.start_ns && w.tid != tid)
            .map(|w| w.tid);
        let ending = Ending {
            end_ns,
            woken_by_tid,
            result: None,
        };
        flags.end(tid, ending, out);
    }

    pub fn contention(&self, tally: &mut Tally) {
        for (addr, c) in self.probes.contention().unwrap_or_default() {
            tally.ended(addr, c.waits, c.total_ns, c.max_ns);
        }
        let now = procfs::monotonic_ns();
        for (_, rec) in &self.waiting {
            let dur = now.saturating_sub(rec.start_ns);
            if dur >= self.floor_ns {
                tally.waiting(rec.uaddr, dur);
            }
        }
    }

    pub fn counters(&self) -> FutexCounters {
        self.counters
    }
}
