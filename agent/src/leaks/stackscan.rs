//! Goroutine stacks scanned the way the GC scans them (`runtime/mgcmark.go`: `scanstack`,
//! `scanframeworker`; `runtime/stkframe.go`: `getStackMap`): frame by frame, from the saved
//! `pc`/`sp`, only the words the function's stack maps say hold live pointers at the frame's
//! pc (its locals, and its arguments including register arguments' spill slots), plus its
//! address-taken stack objects.
//!
//! A stale pointer in a dead slot (a loop's previous iteration, a returned call's temporary)
//! then no longer keeps an object alive, so fewer leaks are missed. Where the maps cannot be
//! used the frame is scanned conservatively, every word of it, which can only keep more alive:
//! - a frame whose function, frame size or needed map cannot be found or read;
//! - frames the runtime itself scans conservatively: `runtime.asyncPreempt` and
//!   `runtime.debugCallV2` (they hold the registers of the frame they interrupted) and that
//!   interrupted frame, and a frame that was stopped by a trap (its callee is
//!   `runtime.sigpanic`; the runtime takes another pc for its maps);
//! - reflect's call stubs, whose argument maps the runtime takes from the call they made, and
//!   their callers (whose outgoing area holds the stubs' arguments);
//! - the rest of a stack the walk cannot follow (a return address that is not in a function,
//!   a frame size that leaves the stack, a function that writes SP above the innermost frame):
//!   scanned whole from there up, counted as one frame.
//!
//! Stack objects are scanned whole (their pointer-holding prefix), whether or not a live slot
//! points at them: the runtime scans only those it finds pointers to, so this keeps more
//! alive, never less (it also covers the stack-allocated defer and panic records the runtime
//! reaches from `g._defer` and `g._panic`). Running goroutines' stacks are in registers and
//! moving: scanned whole, conservatively, as are stacks larger than [`MAX_PRECISE_STACK`].
//! Dead goroutines' stacks are not scanned (nor are they by the GC).

use std::collections::HashMap;
use std::rc::Rc;

use gobinary::pclntab::{FrameMaps, Pclntab};
use serde::Serialize;

use crate::frame_layout::FrameLayout;
use crate::goroutines::RawG;
use crate::procmem::{MemError, ProcessMemory};

use super::mark::Marker;

/// Stacks larger than this are scanned whole, in pieces, rather than copied at once for a walk.
pub const MAX_PRECISE_STACK: u64 = 8 << 20;
/// Bytes and stacks read per `process_vm_readv` batch.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_STACKS: usize = 1024;
/// Frame descriptions kept by pc at most.
const MAX_CACHED_FRAMES: usize = 1 << 18;

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

/// What the function at one pc says about its frame.
struct FrameInfo {
    /// None: not in a known function, or no frame size: the walk cannot go on.
    maps: Option<FrameMaps>,
    /// The outermost frame of a stack (`runtime.goexit`).
    top: bool,
    writes_sp: bool,
    /// `runtime.asyncPreempt`, `runtime.debugCallV2`: called by a signal, not by the frame above.
    injected: bool,
    sigpanic: bool,
}

pub struct StackScanner<'a> {
    pclntab: &'a Pclntab,
    bias: u64,
    layout: FrameLayout,
    /// By runtime pc: goroutines parked at the same places share their frames' maps.
    frames: HashMap<u64, Rc<FrameInfo>>,
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
            pclntab,
            bias,
            layout: FrameLayout::of(pclntab.arch()),
            frames: HashMap::new(),
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

    fn info(&mut self, pc: u64) -> Rc<FrameInfo> {
        if let Some(i) = self.frames.get(&pc) {
            return i.clone();
        }
        let link = pc.wrapping_sub(self.bias);
        let info = match self.pclntab.func_at(link) {
            Some(f) => FrameInfo {
                maps: self.pclntab.frame_maps(link),
                top: f.is_top_frame(),
                writes_sp: f.writes_sp(),
                injected: matches!(
                    f.name.as_str(),
                    "runtime.asyncPreempt" | "runtime.debugCallV2"
                ),
                sigpanic: f.name == "runtime.sigpanic",
            },
            None => FrameInfo {
                maps: None,
                top: false,
                writes_sp: false,
                injected: false,
                sigpanic: false,
            },
        };
        let info = Rc::new(info);
        // A program has far fewer return addresses; garbage walked as a stack could have more.
        if self.frames.len() >= MAX_CACHED_FRAMES {
            self.frames.clear();
        }
        self.frames.insert(pc, info.clone());
        info
    }

    /// The frames of one stack copy (`stack`, read from `base` = the saved `sp` up to the
    /// stack's top), innermost first, from the saved `pc`, and where the part of the stack the
    /// walk could not follow starts (the copy's end when it reached the outermost frame).
    fn frames(&mut self, pc: u64, base: u64, stack: &[u8]) -> (Vec<Walked>, u64) {
        let hi = base + stack.len() as u64;
        let (mut pc, mut sp) = (pc, base);
        let mut out = Vec::new();
        // Every frame moves sp up by at least a word, so this bounds the walk.
        for _ in 0..=stack.len() / 8 {
            let info = self.info(pc);
            let Some(maps) = info.maps.as_ref() else {
                break;
            };
            if info.top {
                return (out, hi);
            }
            if info.writes_sp && !out.is_empty() {
                break;
            }
            let Some((ret_slot, fp)) = self.layout.sp_delta_step(sp, maps.sp_delta) else {
                break;
            };
            if fp > hi || fp <= sp {
                break;
            }
            let (varp, argp) = frame_pointers(self.layout, sp, fp);
            out.push(Walked {
                pc,
                sp,
                varp,
                argp,
                info: info.clone(),
            });
            sp = fp;
            match stack_word(stack, base, ret_slot) {
                Some(ret) if ret != 0 => pc = ret,
                _ => break,
            }
        }
        (out, sp)
    }

    /// Walks the frames of one stack copy (see [`Self::frames`]), scanning each.
    fn walk(&mut self, marker: &mut Marker<'_>, pc: u64, base: u64, stack: &[u8]) {
        let hi = base + stack.len() as u64;
        let (frames, rest) = self.frames(pc, base, stack);
        // The frame below was injected by a signal (asyncPreempt): this one stopped anywhere.
        let mut interrupted = false;
        let mut after_sigpanic = false;
        for f in &frames {
            let Some(maps) = f.info.maps.as_ref() else {
                continue;
            };
            let precise = !(interrupted || f.info.injected || after_sigpanic)
                && self.scan_precise(marker, maps, f, base, stack);
            if precise {
                self.stats.stack_frames_precise += 1;
            } else {
                // Like the runtime's conservative frames: the whole frame (with its outgoing
                // arguments) and its own arguments; on arm64 an injected call's frame also
                // has the small frame the signal handler pushed (its saved LR) above it.
                let top =
                    if self.layout == FrameLayout::Arm64 && (f.info.injected || f.info.sigpanic) {
                        f.varp.saturating_add(16)
                    } else {
                        f.varp
                    };
                scan_piece(marker, base, stack, f.sp, top);
                let args = maps.args_bytes.unwrap_or(0);
                scan_piece(marker, base, stack, f.argp, f.argp.saturating_add(args));
                self.stats.stack_frames_conservative += 1;
            }
            // A frame whose argument size is unknown (reflect's call stubs) may have arguments
            // anywhere in its caller's outgoing area: the caller is scanned whole.
            interrupted = f.info.injected || maps.args_bytes.is_none();
            after_sigpanic = f.info.sigpanic;
        }
        // The rest of the stack, from the frame the walk could not follow.
        if rest < hi {
            scan_piece(marker, base, stack, rest, hi);
            self.stats.stack_frames_conservative += 1;
        }
    }

    /// Calls `each` with the address of every stack word the frame's maps say holds a live
    /// pointer (locals, then arguments); false (and no call) when a map it needs is missing.
    fn live_slots(&self, maps: &FrameMaps, f: &Walked, mut each: impl FnMut(u64)) -> bool {
        // `getStackMap`: locals only when the frame has more than its minimal size.
        let min_frame = match self.layout {
            FrameLayout::Amd64 => 0,
            FrameLayout::Arm64 => 16,
        };
        let locals = if f.varp.saturating_sub(f.sp) > min_frame {
            match &maps.locals {
                Some(l) => Some(l),
                None => return false,
            }
        } else {
            None
        };
        let Some(args) = &maps.args else {
            return false;
        };
        if let Some(l) = locals {
            let from = f.varp.wrapping_sub(8 * u64::from(l.words));
            for i in (0..u64::from(l.words)).filter(|&i| l.live(i)) {
                each(from.wrapping_add(8 * i));
            }
        }
        for i in (0..u64::from(args.words)).filter(|&i| args.live(i)) {
            each(f.argp.wrapping_add(8 * i));
        }
        true
    }

    /// Scans a frame by its maps; false (nothing scanned) when a map it needs is missing.
    fn scan_precise(
        &self,
        marker: &mut Marker<'_>,
        maps: &FrameMaps,
        f: &Walked,
        base: u64,
        stack: &[u8],
    ) -> bool {
        let Some(objects) = &maps.objects else {
            return false;
        };
        let all_found = self.live_slots(maps, f, |a| {
            if let Some(w) = stack_word(stack, base, a) {
                marker.mark_word(w);
            }
        });
        if !all_found {
            return false;
        }
        for o in objects {
            let at = if o.off < 0 {
                f.varp.wrapping_sub(u64::from(o.off.unsigned_abs()))
            } else {
                f.argp.wrapping_add(o.off as u64)
            };
            scan_piece(
                marker,
                base,
                stack,
                at,
                at.saturating_add(u64::from(o.ptr_bytes)),
            );
        }
        true
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
        let (frames, _) = self.frames(w.pc, w.sp, &stack);
        let f = frames.iter().find(|f| {
            self.pclntab
                .frames_at(f.pc.wrapping_sub(self.bias).wrapping_sub(1))
                .iter()
                .any(|l| l.func == func)
        })?;
        let maps = f.info.maps.as_ref()?;
        let mut slots = Vec::new();
        if !self.live_slots(maps, f, |a| slots.push(a)) {
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

/// One frame of a walked stack.
struct Walked {
    pc: u64,
    sp: u64,
    varp: u64,
    argp: u64,
    info: Rc<FrameInfo>,
}

/// The frame's `varp` (top of its locals) and `argp` (its arguments) from its `sp` and `fp`
/// (its caller's `sp`), as the runtime's unwinder derives them with frame pointers on.
fn frame_pointers(layout: FrameLayout, sp: u64, fp: u64) -> (u64, u64) {
    let (mut varp, argp) = match layout {
        // The return address is pushed just below fp, the saved frame pointer below it.
        FrameLayout::Amd64 => (fp.saturating_sub(8), fp),
        // The caller's saved LR is at fp (its sp).
        FrameLayout::Arm64 => (fp, fp.saturating_add(8)),
    };
    if varp > sp {
        varp -= 8;
    }
    (varp, argp)
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

/// The word at `addr` of a stack copy that starts at `base`.
fn stack_word(stack: &[u8], base: u64, addr: u64) -> Option<u64> {
    let off = usize::try_from(addr.checked_sub(base)?).ok()?;
    let bytes = stack.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_pointers_like_the_runtime() {
        // amd64, a 0x28-byte frame at 0x1000: return address at 0x1028, fp 0x1030, saved bp
        // at 0x1020 (varp), arguments from 0x1030.
        assert_eq!(
            frame_pointers(FrameLayout::Amd64, 0x1000, 0x1030),
            (0x1020, 0x1030)
        );
        // A frameless function: nothing between sp and its return address.
        assert_eq!(
            frame_pointers(FrameLayout::Amd64, 0x1000, 0x1008),
            (0x1000, 0x1008)
        );
        // arm64: LR at sp, caller's sp is fp; locals below the saved fp slot.
        assert_eq!(
            frame_pointers(FrameLayout::Arm64, 0x1000, 0x1030),
            (0x1028, 0x1038)
        );
    }

    /// The Go toolchain's own `go` command (a Go 1.27 binary), if installed.
    fn go_binary() -> Option<Pclntab> {
        let wrapper =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/go1.27/bin/go");
        let out = std::process::Command::new(wrapper)
            .args(["env", "GOROOT"])
            .output()
            .ok()?;
        let root = String::from_utf8(out.stdout).ok()?;
        let elf =
            gobinary::elf::ElfFile::open(&std::path::Path::new(root.trim()).join("bin/go")).ok()?;
        let v = gobinary::GoVersion {
            major: 1,
            minor: 27,
            patch: 0,
        };
        Pclntab::from_elf(&elf, v).ok()
    }

    fn put(stack: &mut [u8], base: u64, addr: u64, v: u64) {
        let off = (addr - base) as usize;
        stack[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A stack made of real functions' frames is walked frame by frame to `runtime.goexit`,
    /// each frame where its frame size says.
    #[test]
    fn walks_frames_by_their_sizes() {
        let Some(tab) = go_binary() else {
            eprintln!("skipping: .tools/go1.27 missing");
            return;
        };
        let mut sc = StackScanner::new(&tab, 0);
        let at = |name: &str| {
            let f = tab.func_by_name(name).expect(name);
            // A pc inside the body, past the prologue: the frame is allocated there.
            (f.entry..f.end)
                .find(|&pc| tab.frame_maps(pc).is_some_and(|m| m.sp_delta > 8))
                .expect(name)
        };
        let (pc0, pc1) = (at("runtime.gopark"), at("runtime.chanrecv"));
        let goexit = tab.func_by_name("runtime.goexit").expect("goexit").entry + 1;
        let (d0, d1) = (
            tab.frame_maps(pc0).unwrap().sp_delta,
            tab.frame_maps(pc1).unwrap().sp_delta,
        );
        let base = 0x10000u64;
        let mut stack = vec![0u8; (d0 + d1 + 64) as usize];
        put(&mut stack, base, base + d0, pc1);
        let sp1 = base + d0 + 8;
        put(&mut stack, base, sp1 + d1, goexit);
        let (frames, rest) = sc.frames(pc0, base, &stack);
        let got: Vec<(u64, u64)> = frames.iter().map(|f| (f.pc, f.sp)).collect();
        assert_eq!(got, vec![(pc0, base), (pc1, sp1)]);
        assert_eq!(rest, base + stack.len() as u64, "walk reached goexit");
        // amd64: the saved frame pointer just below the return address is not a local.
        assert_eq!(frames[0].varp, base + d0 - 8);
        assert_eq!(frames[0].argp, base + d0 + 8);
        // A return address that is in no function stops the walk there: the rest is
        // scanned whole.
        put(&mut stack, base, base + d0, 0x10);
        let (frames, rest) = sc.frames(pc0, base, &stack);
        assert_eq!(frames.len(), 1);
        assert_eq!(rest, base + d0 + 8);
    }

    /// Stack memory is untrusted: random stacks and pcs must never panic or loop.
    #[test]
    fn walks_survive_garbage() {
        let Some(tab) = go_binary() else {
            eprintln!("skipping: .tools/go1.27 missing");
            return;
        };
        let funcs: Vec<_> = tab.funcs().collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut sc = StackScanner::new(&tab, 0);
        for round in 0..3000 {
            let len = (next() % 8192) as usize & !7;
            let base = next() & !7 & 0xffff_ffff_ffff;
            let pc_like = |a: u64, b: u64| {
                let f = &funcs[(a as usize) % funcs.len()];
                f.entry + b % (f.end - f.entry).max(1)
            };
            let pc = if round % 4 == 0 {
                next()
            } else {
                pc_like(next(), next())
            };
            // Half the words of some stacks are real code addresses.
            let mut stack = Vec::with_capacity(len);
            for _ in 0..len / 8 {
                let w = if round % 2 == 0 && next() % 2 == 0 {
                    pc_like(next(), next())
                } else {
                    next()
                };
                stack.extend_from_slice(&w.to_le_bytes());
            }
            let (frames, rest) = sc.frames(pc, base, &stack);
            assert!(frames.len() <= len / 8 + 1);
            assert!(rest >= base && rest <= base + len as u64);
        }
    }

    #[test]
    fn pieces_stay_inside_the_copy() {
        assert_eq!(stack_word(&[1, 0, 0, 0, 0, 0, 0, 0], 0x10, 0x10), Some(1));
        assert_eq!(stack_word(&[1, 0, 0, 0, 0, 0, 0, 0], 0x10, 0x11), None);
        assert_eq!(stack_word(&[1, 0, 0, 0, 0, 0, 0, 0], 0x10, 0x8), None);
        assert_eq!(stack_word(&[], 0x10, u64::MAX), None);
    }
}
