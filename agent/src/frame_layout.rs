//! Where a Go frame keeps its frame pointer and return address, per architecture (chosen from
//! the target's ELF machine, never from the architecture ctxprobe was built for).
//!
//! Both keep the frame-pointer chain as `[fp]` = caller's fp, `[fp+8]` = return address. They
//! differ in where that pair sits relative to the frame (`cmd/internal/obj/*/obj*.go`, and the
//! runtime's `traceback.go`):
//! - amd64: the return address is pushed by `CALL` at the top of the frame, the saved fp just
//!   below it; `fp` is inside the frame, above `sp`.
//! - arm64: the prologue stores the link register at the new `sp` (`MOVD.W R30, -N(RSP)`) and
//!   the caller's fp just *below* it (`MOVD R29, -8(RSP)`; `SUB $8, RSP, R29`), so a
//!   goroutine's saved `bp` is `sp - 8`: the walk must read one word below the saved `sp`.
//!   Without frame pointers (pcsp tables), the return address is at `[sp]`, not at the frame's
//!   top.

use gobinary::elf::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLayout {
    Amd64,
    Arm64,
}

/// A frame's fp that its walk did not establish ([`FrameLayout::frame_fps`]).
pub const UNKNOWN_FP: u64 = u64::MAX;

impl FrameLayout {
    pub fn of(arch: Arch) -> FrameLayout {
        match arch {
            Arch::Aarch64 => FrameLayout::Arm64,
            _ => FrameLayout::Amd64,
        }
    }

    /// The lowest stack address an unwind starting at `sp` reads (arm64: the innermost frame's
    /// saved fp, one word below `sp`), not below the stack's bottom `stack_lo`.
    pub fn read_base(self, sp: u64, stack_lo: u64) -> u64 {
        match self {
            FrameLayout::Amd64 => sp,
            FrameLayout::Arm64 => sp.saturating_sub(8).max(stack_lo).min(sp),
        }
    }

    /// For a frame at `sp` whose pcsp table value is `frame_size`: where its return address is
    /// stored and its caller's `sp`. None on overflow.
    pub fn sp_delta_step(self, sp: u64, frame_size: u64) -> Option<(u64, u64)> {
        match self {
            // runtime: frame.fp = sp + spdelta + PtrSize; return address at fp - PtrSize.
            FrameLayout::Amd64 => {
                let ret_slot = sp.checked_add(frame_size)?;
                Some((ret_slot, ret_slot.checked_add(8)?))
            }
            // runtime (usesLR): frame.fp = sp + spdelta; the saved LR is at sp.
            FrameLayout::Arm64 => Some((sp, sp.checked_add(frame_size)?)),
        }
    }

    /// Each frame's `fp` (its caller's sp, as the runtime's traceback names it), from where
    /// the return addresses were found: `slots[k]` holds the return address into frame `k + 1`.
    /// amd64: just above frame k's return address. arm64: frame k saved its LR at its own sp,
    /// so its fp is where frame k + 1 saved its own; the last frame that saved one (below the
    /// outermost, `runtime.goexit`, which saves none) gets [`UNKNOWN_FP`]: it reaches up to
    /// the stack's top.
    pub fn frame_fps(self, slots: &[u64]) -> Vec<u64> {
        match self {
            FrameLayout::Amd64 => slots.iter().map(|s| s.saturating_add(8)).collect(),
            FrameLayout::Arm64 => slots
                .iter()
                .skip(1)
                .copied()
                .chain(slots.last().map(|_| UNKNOWN_FP))
                .collect(),
        }
    }

    /// A frame's `varp` (top of its locals) and `argp` (its arguments) from its `sp` and `fp`
    /// (its caller's `sp`), as the runtime's unwinder derives them with frame pointers on:
    /// amd64 saves rbp just below the return address, just below fp; arm64's callers saved
    /// theirs in the top word of this frame, just below fp (their sp, where this frame saved
    /// its LR). A frame with no room for it (amd64's frameless functions) has none.
    pub fn frame_pointers(self, sp: u64, fp: u64) -> (u64, u64) {
        let mut varp = match self {
            FrameLayout::Amd64 => fp.saturating_sub(8),
            FrameLayout::Arm64 => fp,
        };
        if varp > sp {
            varp -= 8;
        }
        (varp, self.argp(fp).unwrap_or(u64::MAX))
    }

    /// Where a frame's arguments start (`frame.argp`): at fp on amd64, above the caller's saved
    /// LR on arm64.
    pub fn argp(self, fp: u64) -> Option<u64> {
        match self {
            FrameLayout::Amd64 => Some(fp),
            FrameLayout::Arm64 => fp.checked_add(8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm64_reads_the_saved_fp_below_sp() {
        let l = FrameLayout::of(Arch::Aarch64);
        assert_eq!(l.read_base(0x1000, 0x800), 0xff8);
        assert_eq!(l.read_base(0x1000, 0x1000), 0x1000);
        assert_eq!(l.read_base(4, 0), 0);
        assert_eq!(
            FrameLayout::of(Arch::X86_64).read_base(0x1000, 0x800),
            0x1000
        );
    }

    #[test]
    fn frame_boundaries_as_the_runtime_names_them() {
        // amd64: return addresses at 0x1020 and 0x1058; fp just above each.
        let amd64 = FrameLayout::Amd64;
        assert_eq!(amd64.frame_fps(&[0x1020, 0x1058]), vec![0x1028, 0x1060]);
        assert_eq!(amd64.argp(0x1028), Some(0x1028));
        // arm64: frame k's LR at its own sp; its fp is the next frame's sp.
        let arm64 = FrameLayout::Arm64;
        assert_eq!(
            arm64.frame_fps(&[0x1000, 0x1030, 0x1080]),
            vec![0x1030, 0x1080, UNKNOWN_FP]
        );
        assert_eq!(arm64.frame_fps(&[]), Vec::<u64>::new());
        assert_eq!(arm64.argp(0x1030), Some(0x1038));
        assert_eq!(arm64.argp(UNKNOWN_FP), None);
    }

    #[test]
    fn frame_pointers_like_the_runtime() {
        // amd64, a 0x28-byte frame at 0x1000: return address at 0x1028, fp 0x1030, saved bp
        // at 0x1020 (varp), arguments from 0x1030.
        let amd64 = FrameLayout::Amd64;
        assert_eq!(amd64.frame_pointers(0x1000, 0x1030), (0x1020, 0x1030));
        // A frameless function: nothing between sp and its return address.
        assert_eq!(amd64.frame_pointers(0x1000, 0x1008), (0x1000, 0x1008));
        // arm64: LR at sp, caller's sp is fp; locals below the saved fp slot (the top word),
        // arguments above the caller's saved LR.
        let arm64 = FrameLayout::Arm64;
        assert_eq!(arm64.frame_pointers(0x1000, 0x1030), (0x1028, 0x1038));
        assert_eq!(
            arm64.frame_pointers(0x1000, arm64.sp_delta_step(0x1000, 0x30).unwrap().1),
            (0x1028, 0x1038)
        );
    }

    #[test]
    fn sp_delta_steps() {
        assert_eq!(
            FrameLayout::Amd64.sp_delta_step(0x1000, 0x20),
            Some((0x1020, 0x1028))
        );
        assert_eq!(
            FrameLayout::Arm64.sp_delta_step(0x1000, 0x20),
            Some((0x1000, 0x1020))
        );
        assert_eq!(FrameLayout::Amd64.sp_delta_step(u64::MAX, 1), None);
    }
}
