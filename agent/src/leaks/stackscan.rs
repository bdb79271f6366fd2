//! Goroutine stacks scanned the way the GC scans them ([`crate::gcframes`]): frame by frame,
//! from the saved `pc`/`sp`, only the words the function's stack maps say hold live pointers
//! at the frame's pc, plus its address-taken stack objects; conservatively (every word) where
//! the maps cannot be used.
//!
//! A stale pointer in a dead slot (a loop's previous iteration, a returned call's temporary)
//! then no longer keeps an object alive, so fewer leaks are missed. The rest of a stack the
//! walk cannot follow is scanned whole from there up, counted as one frame. Running
//! goroutines' stacks are in registers and moving: scanned whole, conservatively, as are
//! stacks larger than [`MAX_PRECISE_STACK`]. Dead goroutines' stacks are not scanned (nor are
//! they by the GC).

use gobinary::pclntab::Pclntab;
use serde::Serialize;

use crate::gcframes::{FrameCache, FrameSink, FrameWalker};
use crate::goroutines::RawG;
use crate::procmem::{MemError, ProcessMemory};
use crate::stack::stack_word;

use super::mark::Marker;

/// Stacks larger than this are scanned whole, in pieces, rather than copied at once for a walk.
pub const MAX_PRECISE_STACK: u64 = 8 << 20;
/// Bytes and stacks read per `process_vm_readv` batch.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_STACKS: usize = 1024;

/// How the frames of the scanned stacks were scanned (for the analysis' record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StackScanStats {
    /// Frames scanned with their function's stack maps.
    pub stack_frames_precise: u64,
    /// Frames scanned conservatively (no usable maps, or the runtime scans them so too); the
    /// rest of a stack the walk could not follow counts as one.
    pub stack_frames_conservative: u64,
    /// Whole stacks scanned conservatively: running goroutines, stacks whose saved state does
    /// not point into them, very large stacks.
    pub stacks_conservative: u64,
}

pub struct StackScanner<'a> {
    walker: FrameWalker<'a>,
    /// By runtime pc: goroutines parked at the same places share their frames' maps.
    frames: FrameCache,
    pub stats: StackScanStats,
}

/// Where a goroutine's stack is scanned from, kept instead of its `g` while an analysis
/// collects a million goroutines (32 bytes): its frames walked from a saved pc and sp, or a
/// range scanned whole (conservatively). A dead goroutine has none.
#[derive(Debug, Clone, Copy)]
pub struct StackRoot {
    walk: Result<Walk, (u64, u64)>,
}

impl StackRoot {
    pub fn of(g: &RawG) -> StackRoot {
        StackRoot {
            walk: if g.is_dead() { Err((0, 0)) } else { walk_of(g) },
        }
    }
}

/// Where a goroutine's frames are to be walked from.
#[derive(Debug, Clone, Copy)]
struct Walk {
    pc: u64,
    sp: u64,
    hi: u64,
}

impl<'a> StackScanner<'a> {
    pub fn new(pclntab: &'a Pclntab, bias: u64) -> Self {
        StackScanner {
            walker: FrameWalker::new(pclntab, bias),
            frames: FrameCache::default(),
            stats: StackScanStats::default(),
        }
    }

    /// Scans the stacks of `roots` into `marker`. Fails only when the target has gone or
    /// cannot be read at all; unreadable stack memory is skipped (it is gone: nothing to keep
    /// alive).
    pub fn scan_roots(
        &mut self,
        mem: &ProcessMemory,
        marker: &mut Marker<'_>,
        roots: &[StackRoot],
    ) -> Result<(), MemError> {
        let mut whole = Vec::new();
        let mut walks = Vec::new();
        for r in roots {
            match r.walk {
                Ok(w) => walks.push(w),
                // A dead goroutine's: nothing.
                Err((lo, hi)) if lo >= hi => {}
                Err(range) => {
                    self.stats.stacks_conservative += 1;
                    whole.push(range);
                }
            }
        }
        marker.scan_ranges(&whole)?;
        let mut start = 0;
        while start < walks.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < walks.len() && end - start < BATCH_STACKS && bytes < BATCH_BYTES {
                bytes += walks[end].hi - walks[end].sp;
                end += 1;
            }
            let batch = &walks[start..end];
            let mut bufs: Vec<Vec<u8>> = batch
                .iter()
                .map(|w| vec![0u8; (w.hi - w.sp) as usize])
                .collect();
            let mut reqs: Vec<(u64, &mut [u8])> = batch
                .iter()
                .zip(bufs.iter_mut())
                .map(|(w, b)| (w.sp, b.as_mut_slice()))
                .collect();
            let ok = mem.read_scattered(&mut reqs)?;
            drop(reqs);
            for ((w, buf), ok) in batch.iter().zip(&bufs).zip(ok) {
                if ok {
                    self.walk(marker, w.pc, w.sp, buf);
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Walks the frames of one stack copy (`stack`, read from the saved `sp` = `base` up to
    /// the stack's top), scanning each.
    fn walk(&mut self, marker: &mut Marker<'_>, pc: u64, base: u64, stack: &[u8]) {
        let hi = base + stack.len() as u64;
        let (frames, rest) = self.walker.walk(&mut self.frames, pc, base, base, stack);
        let counts = self.walker.scan(
            &frames,
            &mut MarkSink {
                marker: &mut *marker,
                base,
                stack,
            },
        );
        self.stats.stack_frames_precise += counts.precise;
        self.stats.stack_frames_conservative += counts.conservative;
        // The rest of the stack, from the frame the walk could not follow.
        if rest < hi {
            scan_piece(marker, base, stack, rest, hi);
            self.stats.stack_frames_conservative += 1;
        }
    }

    /// The values of the live pointer slots (by the stack maps) of the physical frame that
    /// runs `func` (itself or inlined) in the stack of `g`, read now. None when `g`'s stack
    /// cannot be walked to such a frame or its maps are missing.
    pub fn live_pointers_in(
        &mut self,
        mem: &ProcessMemory,
        g: &RawG,
        func: &str,
    ) -> Option<Vec<u64>> {
        let w = walk_of(g).ok()?;
        let stack = mem.read_vec(w.sp, (w.hi - w.sp) as usize).ok()?;
        let (frames, _) = self.walker.walk(&mut self.frames, w.pc, w.sp, w.sp, &stack);
        let f = self.walker.frame_running(&frames, func)?;
        let mut slots = Vec::new();
        if !self.walker.live_slots(f, |a| slots.push(a)) {
            return None;
        }
        Some(
            slots
                .into_iter()
                .filter_map(|a| stack_word(&stack, w.sp, a))
                .collect(),
        )
    }
}

/// Marks what a frame scan says is live, reading the words from the stack copy.
struct MarkSink<'m, 'k, 's> {
    marker: &'m mut Marker<'k>,
    base: u64,
    stack: &'s [u8],
}

impl FrameSink for MarkSink<'_, '_, '_> {
    fn live_word(&mut self, addr: u64) {
        if let Some(w) = stack_word(self.stack, self.base, addr) {
            self.marker.mark_word(w);
        }
    }

    fn object(&mut self, lo: u64, hi: u64) {
        scan_piece(self.marker, self.base, self.stack, lo, hi);
    }

    fn conservative(&mut self, lo: u64, hi: u64) {
        scan_piece(self.marker, self.base, self.stack, lo, hi);
    }
}

/// Where a goroutine's stack is walked from, or the range to scan whole when it cannot be.
fn walk_of(g: &RawG) -> Result<Walk, (u64, u64)> {
    let (lo, hi) = (g.stack_lo, g.stack_hi);
    let inside = |sp: u64| sp >= lo && sp < hi;
    if g.is_running() {
        return Err((lo, hi));
    }
    let (pc, sp) = if g.is_syscall() {
        (g.syscallpc, g.syscallsp)
    } else {
        (g.sched_pc, g.sched_sp)
    };
    if !inside(sp) {
        return Err((lo, hi));
    }
    if pc == 0 || hi - sp > MAX_PRECISE_STACK || !sp.is_multiple_of(8) {
        return Err((sp, hi));
    }
    Ok(Walk { pc, sp, hi })
}

/// Scans `[lo, hi)` of a stack copy that starts at `base`, conservatively (clamped to the copy).
fn scan_piece(marker: &mut Marker<'_>, base: u64, stack: &[u8], lo: u64, hi: u64) {
    let end = base + stack.len() as u64;
    let (lo, hi) = (lo.max(base), hi.min(end));
    if lo >= hi {
        return;
    }
    let (a, b) = ((lo - base) as usize, (hi - base) as usize);
    if let Some(piece) = stack.get(a..b) {
        marker.scan_words(lo, piece);
    }
}
