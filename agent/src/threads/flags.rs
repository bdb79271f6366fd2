//! What both wait sources share: the waits reported as blocked, and how their records are built
//! (the blocked thread's stack is read once, when it is flagged).

use std::collections::HashMap;

use crate::procmem::ProcessMemory;

use super::arch::ThreadArch;
use super::modules::AddressSpace;
use super::procfs::{self, SyscallState};
use super::unwind::StackEnd;
use super::{ops, symbols, unwind, StackFrame, ThreadBlocked, ThreadEvent, ThreadUnblocked};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub uaddr: u64,
    pub op: u32,
    pub start_ns: u64,
    pub exact: bool,
}

/// Walks of a thread's stack tried before one that read a still stack (see `stack`).
const STACK_TRIES: usize = 4;

/// The stack error of a wait whose thread ran while its stack was read, at every try.
pub const MOVED_WHILE_READ: &str = "the thread ran while its stack was read";

#[derive(Debug, Clone)]
pub struct Flagged {
    pub wait: Wait,
    pub name: Option<String>,
    /// Polls the wait was not seen where it should be (tracepoint source).
    pub missing_polls: u8,
    /// The last poll that saw the thread still in this wait.
    pub last_seen_ns: u64,
}

/// How a flagged wait ended.
pub struct Ending {
    pub end_ns: u64,
    pub woken_by_tid: Option<u32>,
    pub result: Option<i64>,
}

pub struct Flags {
    pid: u32,
    arch: ThreadArch,
    mem: ProcessMemory,
    space: AddressSpace,
    flagged: HashMap<u32, Flagged>,
}

impl Flags {
    pub fn new(pid: u32, arch: ThreadArch) -> Flags {
        Flags {
            pid,
            arch,
            mem: ProcessMemory::new(pid),
            space: AddressSpace::new(pid),
            flagged: HashMap::new(),
        }
    }

    pub fn mem(&self) -> &ProcessMemory {
        &self.mem
    }

    pub fn arch(&self) -> ThreadArch {
        self.arch
    }

    pub fn get(&self, tid: u32) -> Option<&Flagged> {
        self.flagged.get(&tid)
    }

    pub fn get_mut(&mut self, tid: u32) -> Option<&mut Flagged> {
        self.flagged.get_mut(&tid)
    }

    pub fn tids(&self) -> Vec<u32> {
        self.flagged.keys().copied().collect()
    }

    /// Reports `wait` of `tid` as blocked at `now`, with the stack from `st` (None: the wait has
    /// already ended and its stack is gone). A wait flagged before for `tid` must be ended first.
    pub fn flag(
        &mut self,
        tid: u32,
        wait: Wait,
        st: Option<&SyscallState>,
        now: u64,
        out: &mut Vec<ThreadEvent>,
    ) {
        let name = procfs::thread_name(self.pid, tid);
        let (stack, end) = match st {
            Some(st) => self.stack(tid, st),
            None => (
                Vec::new(),
                StackEnd::Cut("the wait ended before its stack could be read".into()),
            ),
        };
        let (stack_complete, stack_error) = match end {
            StackEnd::Outermost => (true, None),
            StackEnd::Cut(why) => (false, Some(why)),
        };
        out.push(ThreadEvent::Blocked(ThreadBlocked {
            tid,
            thread_name: name.clone(),
            futex_addr: wait.uaddr,
            futex_op: ops::op_name(wait.op),
            blocked_ns: now.saturating_sub(wait.start_ns),
            since_exact: wait.exact,
            stack,
            stack_complete,
            stack_error,
            goid: None,
        }));
        self.flagged.insert(
            tid,
            Flagged {
                wait,
                name,
                missing_polls: 0,
                last_seen_ns: now,
            },
        );
    }

    /// Reports the end of `tid`'s flagged wait, if it has one.
    pub fn end(&mut self, tid: u32, ending: Ending, out: &mut Vec<ThreadEvent>) {
        let Some(f) = self.flagged.remove(&tid) else {
            return;
        };
        out.push(ThreadEvent::Unblocked(ThreadUnblocked {
            tid,
            thread_name: f.name,
            futex_addr: f.wait.uaddr,
            blocked_ns: ending.end_ns.saturating_sub(f.wait.start_ns),
            since_exact: f.wait.exact,
            woken_by_tid: ending.woken_by_tid,
            result: ending.result,
        }));
    }

    fn stack(&mut self, tid: u32, st: &SyscallState) -> (Vec<StackFrame>, StackEnd) {
        self.space.begin_batch();
        // The thread runs on while its stack is read: a walk may read a stack that is changing
        // (it woke, ran, waited again), which either fails or, worse, ends early at a
        // plausible-looking frame. A walk is kept when the thread did not run while it was read
        // (its context switch count stood still) and still waits where /proc said; otherwise
        // the stack is walked again from where it waits now.
        let mut at = (st.nr, st.sp, st.pc);
        let mut unwound = None;
        let mut read_still = false;
        for attempt in 0..STACK_TRIES {
            let before = procfs::sched_state(self.pid, tid).map(|s| s.nr_switches);
            let walk = unwind::unwind(&mut self.space, &self.mem, self.arch.arch, at.1, at.2);
            let after = procfs::sched_state(self.pid, tid).map(|s| s.nr_switches);
            let now = procfs::syscall_state(self.pid, tid);
            // The same wait: the same syscall on the same first two arguments (a futex's
            // address and operation: a wake on the same futex is not the wait).
            let same_wait = now
                .as_ref()
                .map(|n| (n.nr, n.args[0], n.args[1]) == (st.nr, st.args[0], st.args[1]));
            let now = now.map(|n| (n.nr, n.sp, n.pc));
            // Without the scheduler's counts (/proc/.../sched), a complete walk is trusted.
            let quiet = match (before, after) {
                (Some(b), Some(a)) => b == a,
                _ => !matches!(walk.end, StackEnd::Cut(_)),
            };
            let still = quiet && now == Some(at);
            unwound = Some(walk);
            if still {
                read_still = true;
                break;
            }
            // Walked again only while the thread is in the same wait: a thread now in another
            // (or running on) has ended the wait being reported, and its new stack is not that
            // wait's.
            match now {
                Some(now) if same_wait == Some(true) => at = now,
                Some(_) => break,
                None if attempt + 1 < STACK_TRIES => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    match procfs::syscall_state(self.pid, tid) {
                        Some(n)
                            if (n.nr, n.args[0], n.args[1]) == (st.nr, st.args[0], st.args[1]) =>
                        {
                            at = (n.nr, n.sp, n.pc);
                        }
                        _ => break,
                    }
                }
                None => break,
            }
        }
        // Frames walked from a stack that changed under the walk may be anything past the
        // first (which /proc gave): only that one is kept, and the record says why.
        let unwound = match unwound {
            Some(u) if read_still => u,
            Some(_) => unwind::Unwound {
                pcs: vec![st.pc],
                end: StackEnd::Cut(MOVED_WHILE_READ.into()),
            },
            None => unwind::Unwound {
                pcs: vec![st.pc],
                end: StackEnd::Cut("no walk".into()),
            },
        };
        (
            symbols::symbolize(&mut self.space, &unwound.pcs),
            unwound.end,
        )
    }
}
