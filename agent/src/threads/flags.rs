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
        let mut unwound = unwind::unwind(&mut self.space, &self.mem, self.arch.arch, st.sp, st.pc);
        // The thread runs on while its stack is read: a walk may have read a stack that had
        // already changed (it woke and waited again, elsewhere or at the same place), which
        // either fails or, worse, ends early at a plausible-looking frame. Walk again when the
        // walk failed or the thread is no longer where /proc said when the walk began.
        for _ in 0..2 {
            let Some(now) = procfs::syscall_state(self.pid, tid) else {
                break;
            };
            let moved = (now.nr, now.sp, now.pc) != (st.nr, st.sp, st.pc);
            if !moved && !matches!(unwound.end, StackEnd::Cut(_)) {
                break;
            }
            let again = unwind::unwind(&mut self.space, &self.mem, self.arch.arch, now.sp, now.pc);
            let settled = again == unwound;
            unwound = again;
            if settled {
                break;
            }
        }
        (
            symbols::symbolize(&mut self.space, &unwound.pcs),
            unwound.end,
        )
    }
}
