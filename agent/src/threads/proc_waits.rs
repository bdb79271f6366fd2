//! Default source: long futex waits found by looking at /proc at each poll, at no cost per futex
//! call to the target or to the rest of the machine.
//!
//! At each poll, for every thread of the target: the syscall it is blocked in
//! (`/proc/PID/task/TID/syscall`) and, for a futex wait, its scheduler record (`.../sched`). A
//! thread seen in the same futex wait (same syscall, arguments, sp and pc) at two polls with the
//! same `nr_switches` did not run in between: it is one wait. When it began is `se.exec_start`,
//! the scheduler's stamp of when the thread last ran, converted to CLOCK_MONOTONIC (see
//! schedclock); that holds for threads blocked before attach too. The end of a wait is only known
//! to lie between the last poll that saw it and the next one.

use std::collections::{HashMap, HashSet};

use super::contention::Tally;
use super::flags::{Ending, Flags, Wait};
use super::procfs::{self, SyscallState};
use super::schedclock::{self, SchedClock};
use super::{futex_wait_of, ThreadEvent};

/// A futex wait seen at one or more consecutive polls.
#[derive(Debug, Clone, Copy)]
struct Seen {
    st: SyscallState,
    nr_switches: u64,
    wait: Wait,
    /// Consecutive polls that saw this very wait.
    polls: u32,
    last_seen_ns: u64,
}

/// Ended waits of at least the contention floor on one futex word.
#[derive(Debug, Clone, Copy, Default)]
struct Ended {
    waits: u64,
    total_ns: u64,
    max_ns: u64,
}

pub struct ProcWaits {
    pid: u32,
    threshold_ns: u64,
    floor_ns: u64,
    clock: SchedClock,
    seen: HashMap<u32, Seen>,
    ended: HashMap<u64, Ended>,
    /// Threads of the target and when the previous poll began.
    prev_poll: Option<(u64, HashSet<u32>)>,
}

impl ProcWaits {
    pub fn new(pid: u32, threshold_ns: u64, floor_ns: u64) -> ProcWaits {
        ProcWaits {
            pid,
            threshold_ns,
            floor_ns,
            clock: SchedClock::default(),
            seen: HashMap::new(),
            ended: HashMap::new(),
            prev_poll: None,
        }
    }

    /// Looks at every thread once; flags waits that lasted the threshold and were seen at two
    /// polls, and reports the flagged waits that ended.
    pub fn poll(&mut self, flags: &mut Flags, out: &mut Vec<ThreadEvent>) {
        let began = procfs::monotonic_ns();
        self.clock.begin_poll();
        let tids = procfs::task_ids(self.pid);
        let mut now_seen = HashMap::new();
        for &tid in &tids {
            if let Some(seen) = self.look(flags, tid, began) {
                now_seen.insert(tid, seen);
            }
        }
        let now = procfs::monotonic_ns();
        for (tid, old) in std::mem::replace(&mut self.seen, now_seen) {
            let same = self
                .seen
                .get(&tid)
                .is_some_and(|s| s.polls == old.polls.saturating_add(1));
            if !same {
                self.wait_ended(flags, tid, &old, out);
            }
        }
        for (&tid, s) in &self.seen {
            if s.polls < 2 || now.saturating_sub(s.wait.start_ns) < self.threshold_ns {
                continue;
            }
            match flags.get_mut(tid) {
                Some(f) if f.wait.start_ns == s.wait.start_ns => f.last_seen_ns = s.last_seen_ns,
                _ => flags.flag(tid, s.wait, Some(&s.st), now, out),
            }
        }
        self.prev_poll = Some((began, tids.into_iter().collect()));
    }

    /// The futex wait `tid` is in now, continuing the one seen at the last poll if it is the same.
    fn look(&mut self, flags: &Flags, tid: u32, began: u64) -> Option<Seen> {
        let st = procfs::syscall_state(self.pid, tid)?;
        let (uaddr, op) = futex_wait_of(flags.arch(), &st, flags.mem())?;
        let sched = procfs::sched_state(self.pid, tid)?;
        let now = procfs::monotonic_ns();
        if let Some(prev) = self.seen.get(&tid) {
            if prev.st == st && prev.nr_switches == sched.nr_switches {
                return Some(Seen {
                    polls: prev.polls.saturating_add(1),
                    last_seen_ns: now,
                    ..*prev
                });
            }
        }
        // A new wait. If the previous poll saw this thread and not in this wait, the wait began
        // after that poll did, whatever the scheduler's stamp says.
        let floor = match &self.prev_poll {
            Some((at, tids)) if tids.contains(&tid) => *at,
            _ => 0,
        };
        let start_ns = schedclock::went_to_sleep(&mut self.clock, self.pid, tid, &sched)
            .map_or(if floor > 0 { floor } else { began }, |t| t.max(floor));
        Some(Seen {
            st,
            nr_switches: sched.nr_switches,
            wait: Wait {
                uaddr,
                op,
                start_ns,
                // Not the syscall's entry but when the thread last ran, through a per-CPU clock
                // offset measured now: the CPU's steal time during the wait makes it a little
                // short (a few ms in 10 s on the test VM) and a wait interrupted and resumed
                // inside the kernel counts from the resumption. Close, but not exact.
                exact: false,
            },
            polls: 1,
            last_seen_ns: now,
        })
    }

    /// `old` is over: it was last seen at `old.last_seen_ns`.
    fn wait_ended(&mut self, flags: &mut Flags, tid: u32, old: &Seen, out: &mut Vec<ThreadEvent>) {
        let dur = old.last_seen_ns.saturating_sub(old.wait.start_ns);
        if old.polls > 1 && dur >= self.floor_ns {
            let e = self.ended.entry(old.wait.uaddr).or_default();
            e.waits += 1;
            e.total_ns = e.total_ns.saturating_add(dur);
            e.max_ns = e.max_ns.max(dur);
        }
        if flags
            .get(tid)
            .is_some_and(|f| f.wait.start_ns == old.wait.start_ns)
        {
            let ending = Ending {
                end_ns: old.last_seen_ns,
                woken_by_tid: None,
                result: None,
            };
            flags.end(tid, ending, out);
        }
    }

    /// Waits seen at two polls or more (a single sighting may be a short wait caught in passing).
    pub fn contention(&self, tally: &mut Tally) {
        for (&addr, e) in &self.ended {
            tally.ended(addr, e.waits, e.total_ns, e.max_ns);
        }
        for s in self.seen.values() {
            let dur = s.last_seen_ns.saturating_sub(s.wait.start_ns);
            if s.polls > 1 && dur >= self.floor_ns {
                tally.waiting(s.wait.uaddr, dur);
            }
        }
    }
}
