//! Stacks of goroutines that are not running, read from the target's memory, and symbolized
//! from the binary's `.gopclntab` the way the runtime's own traceback prints them.
//!
//! A parked goroutine's stack does not change while it stays parked, so one read of its stack
//! memory plus the scheduler state saved in its `g` is enough: frame pointers from
//! `g.sched.bp` (always on for amd64 since before Go 1.19), or for goroutines in a syscall
//! `g.syscallbp` (Go 1.23+) or the pclntab SP-delta table (older releases, whose `save()`
//! does not record a frame pointer).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use gobinary::pclntab::{Frame, Pclntab};
use serde::Serialize;

use crate::goroutines::RawG;
use crate::procmem::ProcessMemory;

/// The runtime prints at most 100 frames of a goroutine; so do we.
const MAX_FRAMES: usize = 100;
/// Stack bytes read per goroutine at most; deeper frames are reported as elided.
const MAX_STACK_READ: u64 = 512 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFrame {
    pub func: String,
    pub file: String,
    pub line: u32,
}

pub struct Symbolizer<'a> {
    pclntab: &'a Pclntab,
    bias: u64,
    /// Logical frames by runtime return address: goroutines share most of their stacks.
    cache: RefCell<HashMap<u64, Rc<[Frame]>>>,
}

impl<'a> Symbolizer<'a> {
    pub fn new(pclntab: &'a Pclntab, bias: u64) -> Self {
        Symbolizer {
            pclntab,
            bias,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// Logical frames for a return address (the call instruction is at `pc - 1`).
    pub fn frames_for_return_pc(&self, pc: u64) -> Rc<[Frame]> {
        if let Some(f) = self.cache.borrow().get(&pc) {
            return f.clone();
        }
        let link_pc = pc.wrapping_sub(self.bias).wrapping_sub(1);
        let frames: Rc<[Frame]> = self.pclntab.frames_at(link_pc).into();
        self.cache.borrow_mut().insert(pc, frames.clone());
        frames
    }

    pub fn func_name(&self, pc: u64) -> Option<String> {
        self.pclntab
            .func_at(pc.wrapping_sub(self.bias))
            .map(|f| f.name)
    }

    /// The `go` statement at `gopc`, as the runtime's "created by" line shows it: the physical
    /// function's name and the source position of the call.
    pub fn creation_site(&self, gopc: u64) -> Option<SourceFrame> {
        if gopc == 0 {
            return None;
        }
        let link = gopc.wrapping_sub(self.bias);
        let f = self.pclntab.func_at(link)?;
        if !shown_by_runtime(&f.name) {
            return None;
        }
        let at = if link > f.entry { link - 1 } else { link };
        let (file, line) = self.pclntab.line_at(at)?;
        Some(SourceFrame {
            func: f.name,
            file,
            line,
        })
    }
}

/// The runtime hides its own unexported functions from tracebacks (GOTRACEBACK=single/all);
/// `runtime.Gosched`, `runtime.GC` and other exported ones stay.
pub fn shown_by_runtime(func: &str) -> bool {
    if !func.contains('.') {
        return false;
    }
    match func.strip_prefix("runtime.") {
        Some(rest) => rest.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
        None => true,
    }
}

/// System goroutines (GC workers, the finalizer, the scavenger...) are started by runtime
/// functions; the runtime leaves them out of its dumps, except the main goroutine.
pub fn is_system_goroutine(start_func: Option<&str>) -> bool {
    match start_func {
        Some(name) => {
            name.starts_with("runtime.")
                && name != "runtime.main"
                && name != "runtime.corostart"
                && name != "runtime.handleAsyncEvent"
        }
        None => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackError {
    /// A running goroutine's registers live in its thread, not in memory.
    Running,
    Unreadable(String),
}

impl std::fmt::Display for StackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StackError::Running => write!(f, "running: its stack is in a CPU's registers"),
            StackError::Unreadable(why) => write!(f, "stack unreadable: {why}"),
        }
    }
}

/// Return addresses of a non-running goroutine, innermost first (runtime addresses).
pub fn unwind(
    mem: &ProcessMemory,
    pclntab: &Pclntab,
    bias: u64,
    g: &RawG,
) -> Result<Vec<u64>, StackError> {
    if g.is_running() {
        return Err(StackError::Running);
    }
    let (pc, sp, bp, use_fp) = if g.is_syscall() {
        match g.syscallbp {
            Some(bp) if bp != 0 => (g.syscallpc, g.syscallsp, bp, true),
            _ => (g.syscallpc, g.syscallsp, 0, false),
        }
    } else {
        (g.sched_pc, g.sched_sp, g.sched_bp, true)
    };
    if pc == 0 || sp < g.stack_lo || sp >= g.stack_hi {
        return Err(StackError::Unreadable(format!(
            "saved sp {sp:#x} outside the stack"
        )));
    }
    let hi = g.stack_hi.min(sp.saturating_add(MAX_STACK_READ));
    let stack = mem
        .read_vec(sp, (hi - sp) as usize)
        .map_err(|e| StackError::Unreadable(e.to_string()))?;
    let word = |addr: u64| -> Option<u64> {
        let off = addr.checked_sub(sp)? as usize;
        stack
            .get(off..off + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let mut pcs = vec![pc];
    if use_fp {
        // [fp] = caller's fp, [fp+8] = return address; the chain ends at runtime.goexit
        // with a zero frame pointer.
        let mut fp = bp;
        while pcs.len() < MAX_FRAMES && fp >= sp && fp < hi && fp % 8 == 0 {
            let (Some(next), Some(ret)) = (word(fp), word(fp + 8)) else {
                break;
            };
            if ret == 0 {
                break;
            }
            pcs.push(ret);
            if next <= fp {
                break;
            }
            fp = next;
        }
    } else {
        // No frame pointer saved: step frames with the SP delta from the pcsp table.
        let mut cur_pc = pc;
        let mut cur_sp = sp;
        while pcs.len() < MAX_FRAMES {
            let link = cur_pc.wrapping_sub(bias);
            let Some(f) = pclntab.func_at(link) else {
                break;
            };
            if f.name == "runtime.goexit" {
                break;
            }
            let at = if link >= f.end { link - 1 } else { link };
            let Some(delta) = pclntab.sp_delta_at(at) else {
                break;
            };
            let Ok(delta) = u64::try_from(delta) else {
                break;
            };
            let ret_slot = cur_sp.saturating_add(delta);
            let Some(ret) = word(ret_slot) else { break };
            if ret == 0 {
                break;
            }
            pcs.push(ret);
            cur_pc = ret;
            cur_sp = ret_slot + 8;
        }
    }
    Ok(pcs)
}

/// The stack as the runtime's traceback prints it: inlined calls expanded, wrappers and the
/// runtime's own unexported frames hidden. Addresses that do not symbolize are dropped.
pub fn symbolize(sym: &Symbolizer<'_>, pcs: &[u64]) -> Vec<SourceFrame> {
    let mut out = Vec::new();
    for &pc in pcs {
        for f in sym.frames_for_return_pc(pc).iter() {
            if f.wrapper || !shown_by_runtime(&f.func) {
                continue;
            }
            out.push(SourceFrame {
                func: f.func.clone(),
                file: f.file.clone(),
                line: f.line,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_frame_filter_matches_the_runtime() {
        assert!(!shown_by_runtime("runtime.gopark"));
        assert!(!shown_by_runtime("runtime.chanrecv1"));
        assert!(shown_by_runtime("runtime.Gosched"));
        assert!(shown_by_runtime("runtime/pprof.writeGoroutine"));
        assert!(shown_by_runtime("sync.runtime_Semacquire"));
        assert!(shown_by_runtime("main.worker"));
        assert!(!shown_by_runtime("noDot"));
    }

    #[test]
    fn system_goroutines() {
        assert!(is_system_goroutine(Some("runtime.bgsweep")));
        assert!(!is_system_goroutine(Some("runtime.main")));
        assert!(!is_system_goroutine(Some("main.worker")));
        assert!(!is_system_goroutine(None));
    }
}
