//! Stacks of goroutines that are not running, read from the target's memory, and symbolized
//! from the binary's `.gopclntab` the way the runtime's own traceback prints them.
//!
//! A parked goroutine's stack does not change while it stays parked, so one read of its stack
//! memory plus the scheduler state saved in its `g` is enough: frame pointers from
//! `g.sched.bp` (always on for amd64 since before Go 1.19), or for goroutines in a syscall
//! `g.syscallbp` (Go 1.23+) or the pclntab SP-delta table (older releases, whose `save()`
//! does not record a frame pointer). Where frames keep the pointer and return address depends
//! on the target's architecture ([`crate::frame_layout`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use gobinary::pclntab::{Frame, Pclntab};
use serde::Serialize;

use crate::frame_layout::FrameLayout;
use crate::fxhash::FxHashMap;
use crate::goroutines::RawG;
use crate::procmem::{MemError, ProcessMemory};

/// The runtime prints at most 100 frames of a goroutine; so do we.
const MAX_FRAMES: usize = 100;
/// Return addresses a walk makes room for up front (it grows past them as needed).
const TYPICAL_FRAMES: usize = 16;
/// Stack bytes read per goroutine at most; deeper frames are reported as elided.
const MAX_STACK_READ: u64 = 512 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
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
    /// Whole symbolized stacks by their return addresses: most goroutines of a big process
    /// share their stack with thousands of others.
    stacks: RefCell<StackNames>,
    /// Creation sites by `gopc`.
    sites: RefCell<HashMap<u64, Option<Arc<SourceFrame>>>>,
}

/// Symbolized stacks by their return addresses. Shared (`Arc`): a dump hands the same stack
/// to a million records, and its writer thread renders each distinct one once.
type StackNames = FxHashMap<Box<[u64]>, Arc<[SourceFrame]>>;

/// Most whole stacks or creation sites cached (about 2 KiB each); the cache starts over when
/// full, so a process with millions of distinct stacks costs time, not memory.
const MAX_CACHED: usize = 20_000;

impl<'a> Symbolizer<'a> {
    pub fn new(pclntab: &'a Pclntab, bias: u64) -> Self {
        Symbolizer {
            pclntab,
            bias,
            cache: RefCell::new(HashMap::new()),
            stacks: RefCell::new(FxHashMap::default()),
            sites: RefCell::new(HashMap::new()),
        }
    }

    /// The target's frame layout.
    pub fn layout(&self) -> FrameLayout {
        FrameLayout::of(self.pclntab.arch())
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

    /// The binary's pclntab and its load bias (runtime address = link address + bias).
    pub fn pclntab(&self) -> (&'a Pclntab, u64) {
        (self.pclntab, self.bias)
    }

    /// Bytes of arguments (incl. spilled register arguments) of the function at `pc`.
    pub fn func_args(&self, pc: u64) -> Option<u64> {
        let f = self.pclntab.func_at(pc.wrapping_sub(self.bias))?;
        u64::try_from(f.args).ok()
    }

    pub fn func_name(&self, pc: u64) -> Option<String> {
        self.pclntab
            .func_at(pc.wrapping_sub(self.bias))
            .map(|f| f.name)
    }

    /// The `go` statement at `gopc`, as the runtime's "created by" line shows it: the physical
    /// function's name and the source position of the call.
    pub fn creation_site(&self, gopc: u64) -> Option<SourceFrame> {
        self.shared_creation_site(gopc).map(|s| (*s).clone())
    }

    /// [`Self::creation_site`], shared with every goroutine started there.
    pub fn shared_creation_site(&self, gopc: u64) -> Option<Arc<SourceFrame>> {
        if let Some(site) = self.sites.borrow().get(&gopc) {
            return site.clone();
        }
        let site = self.find_creation_site(gopc).map(Arc::new);
        let mut sites = self.sites.borrow_mut();
        if sites.len() >= MAX_CACHED {
            sites.clear();
        }
        sites.insert(gopc, site.clone());
        site
    }

    fn find_creation_site(&self, gopc: u64) -> Option<SourceFrame> {
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

/// [`is_system_goroutine`] for the goroutine started at `startpc` (a runtime address).
pub fn is_system_start(pclntab: &Pclntab, bias: u64, startpc: u64) -> bool {
    let name = pclntab.func_at(startpc.wrapping_sub(bias)).map(|f| f.name);
    is_system_goroutine(name.as_deref())
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

/// A goroutine's unwound stack with the memory it was read from, for analyses that look at
/// the words of its frames (contexts held).
pub struct Unwound {
    /// Return addresses, innermost first (the first is the saved pc).
    pub pcs: Vec<u64>,
    /// The stack copy, from `base` up (a slice of its batch's buffer, see [`unwind_many`]).
    pub stack: Bytes,
    /// Where the copy starts: the saved `sp`, or on arm64 one word below it (the innermost
    /// frame's saved fp, [`FrameLayout::read_base`]).
    pub base: u64,
    /// How the walk started, to find again where it read each return address.
    from: WalkFrom,
}

impl Unwound {
    /// A hash of the stack's bytes (never 0): a goroutine parked all along has the same bytes
    /// at every read; one that ran in between almost never does. FxHash: fast (a million stacks
    /// are grouped at once); only a target crafting its own stack bytes could collide it.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::Hasher;
        let mut h = crate::fxhash::FxHasher::default();
        h.write(&self.stack);
        h.finish().max(1)
    }
}

/// The saved registers an unwind started from and how it walked (a few words: a dump keeps a
/// million [`Unwound`]s in flight, so where each return address was read is not kept but found
/// again, by the same walk, when asked).
#[derive(Debug, Clone, Copy)]
struct WalkFrom {
    pc: u64,
    sp: u64,
    bp: u64,
    use_fp: bool,
    layout: FrameLayout,
}

impl Unwound {
    /// The saved `sp`: the innermost frame's.
    pub fn sp(&self) -> u64 {
        self.from.sp
    }

    /// Where the walk read each return address: `slots[i]` holds `pcs[i + 1]` (the same walk
    /// again, over the same copy; a stale copy of a return address elsewhere in a frame is
    /// never taken for it). `pclntab` and `bias` as for the unwind.
    pub fn return_slots(&self, pclntab: &Pclntab, bias: u64) -> Vec<u64> {
        let mut slots = Vec::with_capacity(self.pcs.len().saturating_sub(1));
        let w = self.from;
        if w.use_fp {
            walk_frame_pointers(&self.stack, self.base, w.pc, w.bp, |s| slots.push(s));
        } else {
            walk_sp_deltas(
                w.layout,
                &self.stack,
                self.base,
                (w.sp, w.pc),
                |pc| frame_size(pclntab, bias, pc),
                |s| slots.push(s),
            );
        }
        slots
    }
}

/// Where a non-running goroutine's stack is and how to walk it.
struct StackPlan {
    pc: u64,
    sp: u64,
    bp: u64,
    use_fp: bool,
    layout: FrameLayout,
    /// Where the read starts (at or just below `sp`, see [`FrameLayout::read_base`]) and how
    /// many bytes it reads.
    base: u64,
    len: usize,
}

fn plan(g: &RawG, pclntab: &Pclntab) -> Result<StackPlan, StackError> {
    let layout = FrameLayout::of(pclntab.arch());
    if g.is_running() {
        return Err(StackError::Running);
    }
    let (pc, sp, bp, use_fp) = if g.is_syscall() {
        match g.syscallbp {
            Some(bp) if bp != 0 => (g.syscallpc, g.syscallsp, bp, true),
            _ => (g.syscallpc, g.syscallsp, 0, false),
        }
    } else {
        let use_fp = pclntab.frame_pointers_follow_copies();
        (g.sched_pc, g.sched_sp, g.sched_bp, use_fp)
    };
    if pc == 0 || sp < g.stack_lo || sp >= g.stack_hi {
        return Err(StackError::Unreadable(format!(
            "saved sp {sp:#x} outside the stack"
        )));
    }
    let base = layout.read_base(sp, g.stack_lo);
    let hi = g.stack_hi.min(sp.saturating_add(MAX_STACK_READ));
    let len = usize::try_from(hi - base)
        .map_err(|_| StackError::Unreadable(format!("stack at {sp:#x} too large")))?;
    Ok(StackPlan {
        pc,
        sp,
        bp,
        use_fp,
        layout,
        base,
        len,
    })
}

/// Bytes [`unwind_many`] reads for `g` (0 when it reads nothing).
pub fn read_len(g: &RawG, pclntab: &Pclntab) -> usize {
    plan(g, pclntab).map_or(0, |p| p.len)
}

/// Return addresses of a non-running goroutine, innermost first (runtime addresses), with the
/// stack copy they were read from.
pub fn unwind_with_stack(
    mem: &ProcessMemory,
    pclntab: &Pclntab,
    bias: u64,
    g: &RawG,
) -> Result<Unwound, StackError> {
    let plan = plan(g, pclntab)?;
    let stack = mem
        .read_vec(plan.base, plan.len)
        .map_err(|e| StackError::Unreadable(e.to_string()))?;
    Ok(unwind_copy(pclntab, bias, &plan, stack.into()))
}

/// [`unwind_with_stack`] for many goroutines, their stacks read in a few syscalls (many ranges
/// per `process_vm_readv`). Fails only when the target has gone or cannot be read at all;
/// the caller bounds the bytes (see [`read_len`]).
pub fn unwind_many(
    mem: &ProcessMemory,
    pclntab: &Pclntab,
    bias: u64,
    gs: &[RawG],
) -> Result<Vec<Result<Unwound, StackError>>, MemError> {
    let plans: Vec<Result<StackPlan, StackError>> = gs.iter().map(|g| plan(g, pclntab)).collect();
    // One buffer for the whole batch, each stack a slice of it: one allocation, not one per
    // goroutine (a dump reads a million stacks).
    let total = plans.iter().flatten().map(|p| p.len).sum();
    let mut buf = vec![0u8; total];
    let mut reqs: Vec<(u64, &mut [u8])> = Vec::with_capacity(gs.len());
    let mut which = Vec::with_capacity(gs.len());
    let mut rest = buf.as_mut_slice();
    for (i, p) in plans.iter().enumerate() {
        if let Ok(p) = p {
            let (stack, after) = std::mem::take(&mut rest).split_at_mut(p.len);
            reqs.push((p.base, stack));
            which.push(i);
            rest = after;
        }
    }
    let ok = mem.read_scattered(&mut reqs)?;
    drop(reqs);
    let mut read = vec![false; gs.len()];
    for (&i, ok) in which.iter().zip(ok) {
        read[i] = ok;
    }
    let buf = Bytes::from(buf);
    let mut at = 0;
    Ok(plans
        .into_iter()
        .zip(read)
        .map(|(p, read)| {
            let p = p?;
            let stack = buf.slice(at..at + p.len);
            at += p.len;
            if !read {
                return Err(StackError::Unreadable(format!(
                    "cannot read target memory at {:#x} ({} bytes)",
                    p.base, p.len
                )));
            }
            Ok(unwind_copy(pclntab, bias, &p, stack))
        })
        .collect())
}

fn unwind_copy(pclntab: &Pclntab, bias: u64, plan: &StackPlan, stack: Bytes) -> Unwound {
    let (pc, sp, base) = (plan.pc, plan.sp, plan.base);
    let pcs = if plan.use_fp {
        walk_frame_pointers(&stack, base, pc, plan.bp, |_| {})
    } else {
        walk_sp_deltas(
            plan.layout,
            &stack,
            base,
            (sp, pc),
            |pc| frame_size(pclntab, bias, pc),
            |_| {},
        )
    };
    Unwound {
        pcs,
        stack,
        base,
        from: WalkFrom {
            pc,
            sp,
            bp: plan.bp,
            use_fp: plan.use_fp,
            layout: plan.layout,
        },
    }
}

/// The pcsp table's value for the frame at runtime `pc`; None at `runtime.goexit` (the bottom
/// of the stack) or outside every function.
fn frame_size(pclntab: &Pclntab, bias: u64, pc: u64) -> Option<u64> {
    let link = pc.wrapping_sub(bias);
    let f = pclntab.func_at(link)?;
    if f.name == "runtime.goexit" {
        return None;
    }
    let at = if link >= f.end { link - 1 } else { link };
    u64::try_from(pclntab.sp_delta_at(at)?).ok()
}

/// The word at `addr` of a stack copy that starts at `base`; None outside the copy.
pub fn stack_word(stack: &[u8], base: u64, addr: u64) -> Option<u64> {
    let off = usize::try_from(addr.checked_sub(base)?).ok()?;
    let bytes = stack.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Return addresses by the frame-pointer chain: `[fp]` = caller's fp, `[fp+8]` = return
/// address; the chain ends at runtime.goexit with a zero frame pointer. `stack` is a copy of
/// the target's stack from `sp` up. `read_at` is told where each return address was read.
fn walk_frame_pointers(
    stack: &[u8],
    sp: u64,
    pc: u64,
    bp: u64,
    mut read_at: impl FnMut(u64),
) -> Vec<u64> {
    let hi = sp.saturating_add(stack.len() as u64);
    // Room for a typical stack at once: a dump unwinds a million of them.
    let mut pcs = Vec::with_capacity(TYPICAL_FRAMES);
    pcs.push(pc);
    let mut fp = bp;
    while pcs.len() < MAX_FRAMES && fp >= sp && fp < hi && fp.is_multiple_of(8) {
        let slot = fp.saturating_add(8);
        let (Some(next), Some(ret)) = (stack_word(stack, sp, fp), stack_word(stack, sp, slot))
        else {
            break;
        };
        if ret == 0 {
            break;
        }
        pcs.push(ret);
        read_at(slot);
        if next <= fp {
            break;
        }
        fp = next;
    }
    pcs
}

/// Return addresses by SP deltas (no frame pointer saved), from the frame at `start` = (sp,
/// pc) in a stack copy that starts at `base`: `frame_size(pc)` is the pcsp table's value,
/// `None` to stop (unknown function, or the bottom of the stack). `read_at` is told where
/// each return address was read.
fn walk_sp_deltas(
    layout: FrameLayout,
    stack: &[u8],
    base: u64,
    start: (u64, u64),
    frame_size: impl Fn(u64) -> Option<u64>,
    mut read_at: impl FnMut(u64),
) -> Vec<u64> {
    let (mut cur_sp, mut cur_pc) = start;
    // Room for a typical stack at once: a dump unwinds a million of them.
    let mut pcs = Vec::with_capacity(TYPICAL_FRAMES);
    pcs.push(cur_pc);
    while pcs.len() < MAX_FRAMES {
        let Some(delta) = frame_size(cur_pc) else {
            break;
        };
        let Some((ret_slot, caller_sp)) = layout.sp_delta_step(cur_sp, delta) else {
            break;
        };
        let Some(ret) = stack_word(stack, base, ret_slot) else {
            break;
        };
        // A frameless function (arm64, delta 0) never saved its return address: stop.
        if ret == 0 || caller_sp <= cur_sp {
            break;
        }
        pcs.push(ret);
        read_at(ret_slot);
        cur_pc = ret;
        cur_sp = caller_sp;
    }
    pcs
}

/// The stack as the runtime's traceback prints it: inlined calls expanded, wrappers and the
/// runtime's own unexported frames hidden. Addresses that do not symbolize are dropped.
pub fn symbolize(sym: &Symbolizer<'_>, pcs: &[u64]) -> Vec<SourceFrame> {
    symbolize_shared(sym, pcs).to_vec()
}

/// [`symbolize`], shared with every goroutine whose stack has the same return addresses.
pub fn symbolize_shared(sym: &Symbolizer<'_>, pcs: &[u64]) -> Arc<[SourceFrame]> {
    if let Some(frames) = sym.stacks.borrow().get(pcs) {
        return frames.clone();
    }
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
    let out: Arc<[SourceFrame]> = out.into();
    let mut stacks = sym.stacks.borrow_mut();
    if stacks.len() >= MAX_CACHED {
        stacks.clear();
    }
    stacks.insert(pcs.into(), out.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_layout::UNKNOWN_FP;

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

    /// Target memory is untrusted: random stacks and registers must never panic or loop.
    #[test]
    fn walks_survive_garbage() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let len = (next() % 4096) as usize;
            let sp = next() & !7;
            let mut stack: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Some rounds get a plausible chain, so the walk goes deep before hitting garbage.
            if round % 2 == 0 && len >= 64 {
                for slot in (0..len - 16).step_by(16) {
                    let fp = sp.wrapping_add(slot as u64 + 16);
                    stack[slot..slot + 8].copy_from_slice(&fp.to_le_bytes());
                }
            }
            let bp = if round % 3 == 0 { sp } else { next() };
            let pcs = walk_frame_pointers(&stack, sp, next(), bp, |_| {});
            assert!(pcs.len() <= MAX_FRAMES);
            let delta = next() % 64;
            for layout in [FrameLayout::Amd64, FrameLayout::Arm64] {
                let pcs = walk_sp_deltas(layout, &stack, sp, (sp, next()), |_| Some(delta), |_| {});
                assert!(pcs.len() <= MAX_FRAMES);
            }
        }
    }

    #[test]
    fn walks_a_frame_pointer_chain() {
        let sp = 0x1000u64;
        let mut stack = vec![0u8; 64];
        // frame at 0x1010: caller fp 0x1020, return 0xaaa; frame at 0x1020: fp 0, return 0xbbb
        stack[16..24].copy_from_slice(&0x1020u64.to_le_bytes());
        stack[24..32].copy_from_slice(&0xaaau64.to_le_bytes());
        stack[32..40].copy_from_slice(&0u64.to_le_bytes());
        stack[40..48].copy_from_slice(&0xbbbu64.to_le_bytes());
        // A stale copy of the first return address lower in the innermost frame.
        stack[8..16].copy_from_slice(&0xaaau64.to_le_bytes());
        let mut slots = Vec::new();
        assert_eq!(
            walk_frame_pointers(&stack, sp, 0x999, 0x1010, |s| slots.push(s)),
            vec![0x999, 0xaaa, 0xbbb]
        );
        // Where the walk read them, not where the value first occurs.
        assert_eq!(slots, vec![0x1018, 0x1028]);
        assert_eq!(FrameLayout::Amd64.frame_fps(&slots), vec![0x1020, 0x1030]);
    }

    /// arm64: a parked goroutine's `bp` is one word below its `sp` (the prologue stores the
    /// caller's fp below the frame and the link register at `sp`); the walk reads from there.
    #[test]
    fn walks_an_arm64_frame_pointer_chain() {
        let layout = FrameLayout::Arm64;
        let (lo, sp) = (0x0f00u64, 0x1000u64);
        let base = layout.read_base(sp, lo);
        let mut stack = vec![0u8; 0x40];
        let mut put = |addr: u64, v: u64| {
            let off = (addr - base) as usize;
            stack[off..off + 8].copy_from_slice(&v.to_le_bytes());
        };
        // gopark's frame at sp 0x1000 (bp 0xff8): saved fp 0x1018, saved LR 0xaaa at 0x1000.
        put(0x0ff8, 0x1018);
        put(0x1000, 0xaaa);
        // Its caller's frame at sp 0x1020 (fp 0x1018): saved fp 0, LR 0xbbb (goexit).
        put(0x1018, 0);
        put(0x1020, 0xbbb);
        // A stale copy of the second return address inside gopark's frame.
        put(0x1010, 0xbbb);
        let mut slots = Vec::new();
        assert_eq!(
            walk_frame_pointers(&stack, base, 0x999, sp - 8, |s| slots.push(s)),
            vec![0x999, 0xaaa, 0xbbb]
        );
        assert_eq!(slots, vec![0x1000, 0x1020]);
        // The same stack by pcsp deltas: 0x20 bytes per frame, LR at each frame's sp.
        let mut by_deltas = Vec::new();
        let pcs = walk_sp_deltas(
            layout,
            &stack,
            base,
            (sp, 0x999),
            |pc| (pc != 0xbbb).then_some(0x20),
            |s| by_deltas.push(s),
        );
        assert_eq!(pcs, vec![0x999, 0xaaa, 0xbbb]);
        assert_eq!(by_deltas, slots);
        // gopark's frame ends where its caller's LR is; the caller's reaches the stack's top.
        assert_eq!(layout.frame_fps(&slots), vec![0x1020, UNKNOWN_FP]);
    }

    #[test]
    fn words_stay_inside_the_copy() {
        assert_eq!(stack_word(&[1, 0, 0, 0, 0, 0, 0, 0], 0x10, 0x10), Some(1));
        assert_eq!(stack_word(&[1, 0, 0, 0, 0, 0, 0, 0], 0x10, 0x11), None);
        assert_eq!(stack_word(&[1, 0, 0, 0, 0, 0, 0, 0], 0x10, 0x8), None);
        assert_eq!(stack_word(&[], 0x10, u64::MAX), None);
    }

    #[test]
    fn system_goroutines() {
        assert!(is_system_goroutine(Some("runtime.bgsweep")));
        assert!(!is_system_goroutine(Some("runtime.main")));
        assert!(!is_system_goroutine(Some("main.worker")));
        assert!(!is_system_goroutine(None));
    }
}
