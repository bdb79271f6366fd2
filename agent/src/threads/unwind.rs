//! Walks a blocked thread's user stack from its stack and instruction pointers alone.
//!
//! /proc/PID/task/TID/syscall gives only sp and pc, so each frame's CFA must be computable from
//! sp (true for almost all compiled code) or from a frame pointer that an inner frame's CFI
//! restored. Frames without CFI fall back to the frame-pointer chain (Go code keeps frame pointers).
//!
//! The frame pointer (rbp, x29) is not in /proc/.../syscall and glibc's lock functions do not
//! save it, so when a frame needs it (a frame-pointer function, e.g. code built with -O0) and no
//! inner frame restored it, the frame's base is found by scanning the stack above sp for the first
//! (saved fp, return address) pair whose return address follows a call instruction.
//!
//! arm64 keeps a return address in the link register x30 until a prologue saves it, and x30 is
//! not in /proc either: a blocked function that never saved it (a leaf such as Go's
//! `runtime.futex`) is passed by finding its caller from the caller's own saved return address
//! (see [`leaf_caller`]).

use gimli::UnwindContext;
use gobinary::elf::Arch;

use super::modules::{AddressSpace, CfiRegs, ElfModule, FrameRule, SavedReg};
use crate::frame_layout::FrameLayout;

/// Stacks deeper than this are cut (a corrupt chain could otherwise loop).
pub const MAX_FRAMES: usize = 128;

/// How far above sp to look for a frame-pointer frame when the frame pointer is unknown.
const FP_SCAN_BYTES: usize = 4096;
/// How far above sp to look for the saved return address of a frameless leaf's caller (arm64).
const LEAF_SCAN_WORDS: usize = 64;
/// The most code of the leaf's caller read to find its calls to the leaf.
const MAX_CALLER_BYTES: u64 = 64 << 10;

/// Reads the target's memory.
pub trait ReadWord {
    fn read_word(&self, addr: u64) -> Option<u64>;
    /// Fills `buf` from `addr`; false if any of it is unreadable.
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool;
}

impl ReadWord for crate::procmem::ProcessMemory {
    fn read_word(&self, addr: u64) -> Option<u64> {
        self.read_u64(addr).ok()
    }
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read(addr, buf).is_ok()
    }
}

/// Where a walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackEnd {
    /// At the thread's outermost frame: nothing called the last function (see
    /// [`outermost_by_name`], [`Unwound`]).
    Outermost,
    /// Before it, for this reason: the stack has more frames than were found.
    Cut(String),
}

/// A walked stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwound {
    /// Return addresses, innermost first; the first is the pc itself. Every one is in executable
    /// code of a mapped file (the walk stops before an address that is not).
    pub pcs: Vec<u64>,
    pub end: StackEnd,
}

/// C functions no caller is above: the kernel starts threads in `clone`/`clone3` (glibc, musl),
/// processes in `_start`. glibc marks most of them with an undefined return address in their
/// CFI too, which is checked as well; names catch unwinders' lookups that land in a mark-less
/// part of them.
fn outermost_by_name(name: &str) -> bool {
    matches!(
        name,
        "_start" | "start_thread" | "clone" | "__clone" | "clone3" | "__clone3" | "thread_start"
    )
}

/// What the walk must know about the function a frame is in.
enum FrameKind {
    /// Go's `runtime.asmcgocall`: C runs on the g0 stack, the caller is on the goroutine's.
    AsmCgoCall,
    /// The thread's outermost frame (see [`StackEnd::Outermost`]).
    Outermost,
    /// A Go function that switched stacks (its caller cannot be found from its frame).
    SwitchedStacks(String),
    Other,
}

fn frame_kind(module: &ElfModule, svma: u64) -> FrameKind {
    if let Some(f) = module.go_func(svma) {
        // The runtime's own marks (in stripped binaries too): mstart, goexit, rt0_go are where
        // its traceback ends. mcall switches to g0's stack top, left by mstart, and never returns
        // there: like the runtime, end there.
        if f.name == "runtime.asmcgocall" {
            return FrameKind::AsmCgoCall;
        }
        if f.name.to_ascii_lowercase().contains("sigtramp") {
            // Marked TOPFRAME too, but the code the signal interrupted is below, in the kernel's
            // signal frame, which this walk does not read.
            return FrameKind::SwitchedStacks(format!("{} (a signal handler)", f.name));
        }
        // morestack likewise: it switches to g0's stack to call newstack, which never returns
        // there (the runtime's traceback, too, leaves g0 at morestack).
        if f.is_top_frame() || f.name == "runtime.mcall" || f.name == "runtime.morestack" {
            return FrameKind::Outermost;
        }
        if f.writes_sp() {
            return FrameKind::SwitchedStacks(f.name);
        }
        return FrameKind::Other;
    }
    match module.symbol(svma) {
        Some(s) if matches!(s.name, "runtime.asmcgocall" | "runtime.asmcgocall.abi0") => {
            FrameKind::AsmCgoCall
        }
        Some(s) if outermost_by_name(s.name) => FrameKind::Outermost,
        _ => FrameKind::Other,
    }
}

/// Walks the stack from `sp` and `pc`, innermost first, until the thread's outermost frame, or
/// until a frame that cannot be walked past (then `end` says why). `arch` is the target's.
pub fn unwind(
    space: &mut AddressSpace,
    mem: &dyn ReadWord,
    arch: Arch,
    sp: u64,
    pc: u64,
) -> Unwound {
    let regs = match arch {
        Arch::Aarch64 => CfiRegs::AARCH64,
        _ => CfiRegs::X86_64,
    };
    let layout = FrameLayout::of(arch);
    let mut ctx = UnwindContext::new();
    let mut pcs = vec![pc];
    let (mut sp, mut pc, mut bp): (u64, u64, Option<u64>) = (sp, pc, None);
    let end = loop {
        if pcs.len() >= MAX_FRAMES {
            break StackEnd::Cut(format!("stack cut at {MAX_FRAMES} frames"));
        }
        let innermost = pcs.len() == 1;
        // A return address points after the call; look up the call itself.
        let lookup = if innermost { pc } else { pc.saturating_sub(1) };
        let Some((module, svma)) = space.lookup(lookup) else {
            // Only the innermost pc gets here: return addresses are checked before they are kept.
            break StackEnd::Cut(format!("pc {pc:#x} is not in a mapped executable file"));
        };
        // The caller of a leaf that kept its return address in x30 (arm64), at the same sp.
        let from_link_register = |space: &mut AddressSpace| -> Result<_, StackEnd> {
            if !innermost {
                return Err(StackEnd::Cut(format!(
                    "the return address of {pc:#x} is in a register"
                )));
            }
            match leaf_caller(space, mem, sp, pc) {
                Some(caller_pc) => Ok((caller_pc, sp, bp, false)),
                None => Err(StackEnd::Cut(format!(
                    "cannot find the caller of {pc:#x} (its return address is in x30)"
                ))),
            }
        };
        // `framed`: the caller's frame was found from this frame's size, so it must be above.
        let (next_pc, next_sp, next_bp, framed) = match frame_kind(&module, svma) {
            FrameKind::Outermost => break StackEnd::Outermost,
            FrameKind::SwitchedStacks(name) if !innermost => {
                break StackEnd::Cut(format!("{name} switched stacks"));
            }
            FrameKind::AsmCgoCall if !innermost => {
                // A cgo call: continue on the goroutine stack the call switched away from.
                let step = match arch {
                    Arch::Aarch64 => {
                        let size = module.go_frame_size(svma);
                        goroutine_sp_of_asmcgocall_arm64(mem, sp)
                            .zip(size)
                            .and_then(|(old_sp, size)| go_step(layout, size, mem, old_sp, None))
                    }
                    _ => leave_asmcgocall(space, mem, sp),
                };
                let Some((next_pc, next_sp, next_bp)) = step else {
                    break StackEnd::Cut("cannot find the goroutine stack of a cgo call".into());
                };
                (next_pc, next_sp, next_bp, false)
            }
            // Go code (an innermost stack switcher too: it has not switched yet).
            _ if module.go_func(svma).is_some() => {
                let size = module.go_frame_size(svma);
                if size == Some(0) && regs.link_register {
                    match from_link_register(space) {
                        Ok(step) => step,
                        Err(end) => break end,
                    }
                } else {
                    let step = size.and_then(|size| go_step(layout, size, mem, sp, bp));
                    let Some((next_pc, next_sp, next_bp)) = step else {
                        break StackEnd::Cut(format!(
                            "cannot unwind past {pc:#x} with its frame size"
                        ));
                    };
                    (next_pc, next_sp, next_bp, true)
                }
            }
            _ => {
                let rule = module.frame_rule(svma, &mut ctx, regs);
                match rule.as_ref().map(|r| r.ra) {
                    // The CFI's own mark of an outermost frame (glibc's clone, clone3, _start).
                    Some(SavedReg::Undefined) => break StackEnd::Outermost,
                    Some(SavedReg::InLinkRegister) => match from_link_register(space) {
                        Ok(step) => step,
                        Err(end) => break end,
                    },
                    _ => {
                        let needs_bp = rule.as_ref().is_none_or(|r| r.cfa_reg == regs.fp);
                        if needs_bp && bp.is_none() {
                            bp = guess_frame_pointer(space, mem, arch, sp);
                        }
                        let step = match &rule {
                            Some(rule) => cfi_step(rule, regs, mem, sp, bp),
                            None => fp_step(mem, sp, bp),
                        };
                        let Some((next_pc, next_sp, next_bp)) = step else {
                            let how = if rule.is_some() {
                                "its CFI"
                            } else {
                                "frame pointers"
                            };
                            break StackEnd::Cut(format!("cannot unwind past {pc:#x} with {how}"));
                        };
                        (next_pc, next_sp, next_bp, rule.is_some())
                    }
                }
            }
        };
        if next_pc == 0 {
            // A zero return address is how thread and process entry code ends the chain. Go's
            // threads end at the runtime's top frames instead (above), so a zero read from a Go
            // frame is a stack that changed while it was read (the thread woke), not an end.
            if module.go_func(svma).is_some() {
                break StackEnd::Cut(format!(
                    "return address 0 above {pc:#x} (the stack changed while it was read)"
                ));
            }
            break StackEnd::Outermost;
        }
        // The stack grows down: a caller's frame is above. Go switches to the g0 stack in cgo
        // calls, which only the frame-pointer chain follows, so that case is not checked.
        if framed && next_sp <= sp {
            break StackEnd::Cut(format!(
                "the frame above {pc:#x} is not above it on the stack"
            ));
        }
        // Stale stack memory past the real end holds old return addresses and garbage: a
        // return address must be in executable code.
        if space.lookup(next_pc.saturating_sub(1)).is_none() {
            break StackEnd::Cut(format!(
                "return address {next_pc:#x} is not in executable code"
            ));
        }
        pcs.push(next_pc);
        (sp, pc, bp) = (next_sp, next_pc, next_bp);
    };
    Unwound { pcs, end }
}

/// arm64: the caller of the innermost function, which has not saved its return address (x30).
/// Nothing is pushed by a call on arm64, so the leaf runs on its caller's frame, whose prologue
/// saved the caller's own return address (into the caller's caller) somewhere above `sp`. A
/// stack word `w` is that address when the instruction before `w` is `BL caller` and `caller`
/// calls the leaf. The leaf's return address is then just after that call (the first, if the
/// caller calls the leaf from several places: the frame's function is right, its line may not
/// be).
fn leaf_caller(space: &mut AddressSpace, mem: &dyn ReadWord, sp: u64, pc: u64) -> Option<u64> {
    let (leaf, _) = function_range(space, pc)?;
    let mut buf = vec![0u8; LEAF_SCAN_WORDS * 8];
    let len = [buf.len(), 256, 64]
        .into_iter()
        .find(|&len| mem.read_bytes(sp, &mut buf[..len]))?;
    for word in buf[..len].chunks_exact(8) {
        let ra = u64::from_le_bytes(word.try_into().ok()?);
        if ra < 4 || ra % 4 != 0 || space.lookup(ra - 4).is_none() {
            continue;
        }
        let Some(caller) = read_insn(mem, ra - 4).and_then(|insn| bl_target(ra - 4, insn)) else {
            continue;
        };
        match function_range(space, caller) {
            Some((start, end)) if start == caller => {
                if let Some(site) = first_call_to(mem, start, end, leaf) {
                    return Some(site + 4);
                }
            }
            _ => {}
        }
    }
    None
}

/// The runtime addresses [start, end) of the function containing `addr` (Go's function table,
/// else the symbol table; None if neither knows its extent).
fn function_range(space: &mut AddressSpace, addr: u64) -> Option<(u64, u64)> {
    let (module, svma) = space.lookup(addr)?;
    let bias = addr.wrapping_sub(svma);
    if let Some(f) = module.go_func(svma) {
        return Some((f.entry.wrapping_add(bias), f.end.wrapping_add(bias)));
    }
    let sym = module.symbol(svma)?;
    if sym.size == 0 {
        return None;
    }
    let start = addr.checked_sub(sym.offset)?;
    Some((start, start.checked_add(sym.size)?))
}

/// The address of the first `BL target` in [start, end).
fn first_call_to(mem: &dyn ReadWord, start: u64, end: u64, target: u64) -> Option<u64> {
    let len = usize::try_from(end.checked_sub(start)?.min(MAX_CALLER_BYTES)).ok()?;
    let mut code = vec![0u8; len];
    if !mem.read_bytes(start, &mut code) {
        return None;
    }
    code.chunks_exact(4).enumerate().find_map(|(i, insn)| {
        let at = start + 4 * i as u64;
        let insn = u32::from_le_bytes(insn.try_into().ok()?);
        (bl_target(at, insn) == Some(target)).then_some(at)
    })
}

fn read_insn(mem: &dyn ReadWord, at: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    mem.read_bytes(at, &mut b).then(|| u32::from_le_bytes(b))
}

/// The target of an arm64 `BL imm26` at `at`.
fn bl_target(at: u64, insn: u32) -> Option<u64> {
    if insn & 0xfc00_0000 != 0x9400_0000 {
        return None;
    }
    // imm26, sign-extended, in instructions.
    let offset = (((insn & 0x03ff_ffff) << 6) as i32 >> 6) as i64 * 4;
    at.checked_add_signed(offset)
}

/// Go's runtime.asmcgocall calls C on the g0 stack with, at the callee's CFA, [sp] = the goroutine
/// stack depth (stack.hi - old sp) and [sp+8] = the g (or [sp] = old sp itself and g = 0 when it
/// was already on g0). At old sp is asmcgocall's return address, or (Go versions whose assembler
/// gives it a frame pointer) the saved rbp and then the return address.
/// Returns (caller pc, caller sp, caller rbp).
fn leave_asmcgocall(
    space: &mut AddressSpace,
    mem: &dyn ReadWord,
    sp: u64,
) -> Option<(u64, u64, Option<u64>)> {
    const G_STACK_HI: u64 = 8; // g.stack.hi: stable in every Go release with cgo on amd64
    let first = mem.read_word(sp)?;
    let g = mem.read_word(sp.checked_add(8)?)?;
    let old_sp = if g == 0 {
        first
    } else {
        mem.read_word(g.checked_add(G_STACK_HI)?)?
            .checked_sub(first)?
    };
    let word = mem.read_word(old_sp)?;
    if space.lookup(word).is_some() {
        return Some((word, old_sp.checked_add(8)?, None));
    }
    let ra = mem.read_word(old_sp.checked_add(8)?)?;
    Some((ra, old_sp.checked_add(16)?, Some(word)))
}

/// arm64's runtime.asmcgocall keeps, at the sp it calls C with, [sp] = the g and [sp+8] = the
/// goroutine stack depth (stack.hi - its own sp), or [sp] = 0 and [sp+8] = its sp itself when
/// it was already on g0 (the reverse of amd64's order). Returns asmcgocall's sp on the stack it
/// was called on, where its frame (saved LR at sp) leads to its caller.
fn goroutine_sp_of_asmcgocall_arm64(mem: &dyn ReadWord, sp: u64) -> Option<u64> {
    const G_STACK_HI: u64 = 8; // g.stack.hi: g begins with stack{lo, hi} in every release
    let g = mem.read_word(sp)?;
    let second = mem.read_word(sp.checked_add(8)?)?;
    if g == 0 {
        return Some(second);
    }
    mem.read_word(g.checked_add(G_STACK_HI)?)?
        .checked_sub(second)
}

/// The first stack slot at or above `sp` that looks like a frame-pointer frame's base: the saved
/// caller fp (0 or above the slot) followed by a return address just after a call instruction.
fn guess_frame_pointer(
    space: &mut AddressSpace,
    mem: &dyn ReadWord,
    arch: Arch,
    sp: u64,
) -> Option<u64> {
    let mut buf = vec![0u8; FP_SCAN_BYTES];
    // The stack may end (top of the mapping) within the window: retry with less.
    let len = [FP_SCAN_BYTES, 1024, 256]
        .into_iter()
        .find(|&len| mem.read_bytes(sp, &mut buf[..len]))?;
    let words: Vec<u64> = buf[..len]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    for (i, pair) in words.windows(2).enumerate() {
        let slot = sp + 8 * i as u64;
        let (saved_bp, ra) = (pair[0], pair[1]);
        if (saved_bp == 0 || saved_bp > slot)
            && space.lookup(ra).is_some()
            && follows_call(mem, arch, ra)
        {
            return Some(slot);
        }
    }
    None
}

/// Whether the instruction before `ra` is a call.
fn follows_call(mem: &dyn ReadWord, arch: Arch, ra: u64) -> bool {
    match arch {
        Arch::Aarch64 => ra >= 4 && read_insn(mem, ra - 4).is_some_and(is_arm64_call),
        _ => follows_x86_call(mem, ra),
    }
}

/// `BL imm26`, `BLR Xn`, and the pointer-authenticating `BLRAA`/`BLRAB` family.
fn is_arm64_call(insn: u32) -> bool {
    insn & 0xfc00_0000 == 0x9400_0000
        || insn & 0xffff_fc1f == 0xd63f_0000
        || insn & 0xfeff_f800 == 0xd63f_0800
}

/// Whether the bytes before `ra` end with a call: `e8 rel32`, or `ff /2` with a 2, 3, 4, 6 or 7
/// byte encoding (register, disp8, SIB+disp8, disp32, SIB+disp32).
fn follows_x86_call(mem: &dyn ReadWord, ra: u64) -> bool {
    let mut b = [0u8; 8];
    if ra < 8 || !mem.read_bytes(ra - 8, &mut b) {
        return false;
    }
    let is_ff2 = |at: usize| b[at] == 0xff && (b[at + 1] >> 3) & 7 == 2;
    b[3] == 0xe8 || is_ff2(6) || is_ff2(5) || is_ff2(4) || is_ff2(2) || is_ff2(1)
}

/// One frame up in Go code, from the function's frame size at the pc (`.gopclntab`'s pcsp table,
/// which stripped binaries keep; Go's own CFI is made from it). Where the return address and the
/// caller's saved frame pointer are depends on the architecture ([`FrameLayout`]): amd64, right
/// above the frame and below that; arm64, at sp and just below it.
fn go_step(
    layout: FrameLayout,
    frame_size: i64,
    mem: &dyn ReadWord,
    sp: u64,
    bp: Option<u64>,
) -> Option<(u64, u64, Option<u64>)> {
    let size = u64::try_from(frame_size).ok()?;
    let (ra_at, next_sp) = layout.sp_delta_step(sp, size)?;
    let ra = mem.read_word(ra_at)?;
    let next_bp = match layout {
        FrameLayout::Amd64 if size >= 8 => mem.read_word(ra_at - 8),
        FrameLayout::Arm64 if size > 0 => mem.read_word(sp.checked_sub(8)?),
        _ => bp,
    };
    Some((ra, next_sp, next_bp))
}

/// One frame up by CFI: (caller pc, caller sp, caller fp).
fn cfi_step(
    rule: &FrameRule,
    regs: CfiRegs,
    mem: &dyn ReadWord,
    sp: u64,
    bp: Option<u64>,
) -> Option<(u64, u64, Option<u64>)> {
    let base = if rule.cfa_reg == regs.sp {
        sp
    } else if rule.cfa_reg == regs.fp {
        bp?
    } else {
        return None;
    };
    let cfa = base.checked_add_signed(rule.cfa_offset)?;
    let ra = match rule.ra {
        SavedReg::AtCfaOffset(off) => mem.read_word(cfa.checked_add_signed(off)?)?,
        _ => return None,
    };
    let next_bp = match rule.fp {
        SavedReg::AtCfaOffset(off) => cfa.checked_add_signed(off).and_then(|a| mem.read_word(a)),
        SavedReg::Same => bp,
        SavedReg::Undefined | SavedReg::Unknown | SavedReg::InLinkRegister => None,
    };
    Some((ra, cfa, next_bp))
}

/// One frame up by the frame-pointer chain: [fp] = caller's fp, [fp+8] = return address (a frame
/// record on arm64 too).
fn fp_step(mem: &dyn ReadWord, sp: u64, bp: Option<u64>) -> Option<(u64, u64, Option<u64>)> {
    let bp = bp?;
    if bp == 0 || bp % 8 != 0 || bp < sp.saturating_sub(1 << 20) {
        return None;
    }
    let ra = mem.read_word(bp.checked_add(8)?)?;
    let caller_bp = mem.read_word(bp)?;
    Some((ra, bp + 16, Some(caller_bp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Words(HashMap<u64, u64>);
    impl ReadWord for Words {
        fn read_word(&self, addr: u64) -> Option<u64> {
            self.0.get(&addr).copied()
        }
        fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
            for (i, chunk) in buf.chunks_mut(8).enumerate() {
                let Some(w) = self.read_word(addr + 8 * i as u64) else {
                    return false;
                };
                chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
            }
            true
        }
    }

    #[test]
    fn cfi_step_reads_return_address_and_saved_rbp() {
        let x86 = CfiRegs::X86_64;
        let rule = FrameRule {
            cfa_reg: x86.sp,
            cfa_offset: 32,
            ra: SavedReg::AtCfaOffset(-8),
            fp: SavedReg::AtCfaOffset(-16),
        };
        let mem = Words(HashMap::from([(0x1018, 0x4000_1234), (0x1010, 0x2000)]));
        assert_eq!(
            cfi_step(&rule, x86, &mem, 0x1000, None),
            Some((0x4000_1234, 0x1020, Some(0x2000)))
        );
        let by_rbp = FrameRule {
            cfa_reg: x86.fp,
            ..rule
        };
        assert_eq!(
            cfi_step(&by_rbp, x86, &mem, 0x1000, None),
            None,
            "rbp unknown"
        );
        // arm64 (glibc's `stp x29, x30, [sp, #-32]!`): CFA = sp + 32, x29 at CFA-32, x30 at -24.
        let arm = CfiRegs::AARCH64;
        let rule = FrameRule {
            cfa_reg: arm.sp,
            cfa_offset: 32,
            ra: SavedReg::AtCfaOffset(-24),
            fp: SavedReg::AtCfaOffset(-32),
        };
        let mem = Words(HashMap::from([(0x1008, 0x4000_1234), (0x1000, 0x2000)]));
        assert_eq!(
            cfi_step(&rule, arm, &mem, 0x1000, None),
            Some((0x4000_1234, 0x1020, Some(0x2000)))
        );
    }

    #[test]
    fn go_step_uses_the_frame_size() {
        // A 0x20-byte frame: return address at sp+0x20, saved rbp below it.
        let amd64 = FrameLayout::Amd64;
        let mem = Words(HashMap::from([(0x1020, 0x40_1234), (0x1018, 0x2000)]));
        assert_eq!(
            go_step(amd64, 0x20, &mem, 0x1000, None),
            Some((0x40_1234, 0x1028, Some(0x2000)))
        );
        // A leaf without a frame (runtime.futex): return address at sp, rbp unchanged.
        let mem = Words(HashMap::from([(0x1000, 0x40_5678)]));
        assert_eq!(
            go_step(amd64, 0, &mem, 0x1000, Some(0x3000)),
            Some((0x40_5678, 0x1008, Some(0x3000)))
        );
        assert_eq!(
            go_step(amd64, -8, &mem, 0x1000, None),
            None,
            "negative size"
        );
        assert_eq!(go_step(amd64, 0x40, &mem, 0x1000, None), None, "unreadable");
        // arm64: the saved LR at sp, the caller's fp just below sp, the caller's sp above.
        let mem = Words(HashMap::from([(0x1000, 0x40_1234), (0xff8, 0x2000)]));
        assert_eq!(
            go_step(FrameLayout::Arm64, 0x20, &mem, 0x1000, None),
            Some((0x40_1234, 0x1020, Some(0x2000)))
        );
    }

    #[test]
    fn arm64_asmcgocall_leads_back_to_the_goroutine_stack() {
        // On g0: [sp] = g, [sp+8] = stack.hi - goroutine sp; g.stack.hi at g+8.
        let mem = Words(HashMap::from([
            (0x7000, 0xc000_1000),
            (0x7008, 0x300),
            (0xc000_1008, 0xc008_0000),
        ]));
        assert_eq!(
            goroutine_sp_of_asmcgocall_arm64(&mem, 0x7000),
            Some(0xc007_fd00)
        );
        // Already on g0 (no g): [sp+8] is the old sp itself.
        let mem = Words(HashMap::from([(0x7000, 0), (0x7008, 0x6f00)]));
        assert_eq!(goroutine_sp_of_asmcgocall_arm64(&mem, 0x7000), Some(0x6f00));
        // A depth beyond stack.hi is not a stack.
        let mem = Words(HashMap::from([
            (0x7000, 0xc000_1000),
            (0x7008, 0xd000_0000),
            (0xc000_1008, 0xc008_0000),
        ]));
        assert_eq!(goroutine_sp_of_asmcgocall_arm64(&mem, 0x7000), None);
    }

    #[test]
    fn thread_entry_functions_are_outermost() {
        for name in ["clone", "clone3", "__clone3", "start_thread", "_start"] {
            assert!(outermost_by_name(name), "{name}");
        }
        for name in [
            "pthread_mutex_lock",
            "crosscall1",
            "main",
            "__libc_start_main",
        ] {
            assert!(!outermost_by_name(name), "{name}");
        }
    }

    #[test]
    fn fp_step_follows_chain_and_rejects_garbage() {
        let mem = Words(HashMap::from([(0x2008, 0x40_0000), (0x2000, 0x3000)]));
        assert_eq!(
            fp_step(&mem, 0x1000, Some(0x2000)),
            Some((0x40_0000, 0x2010, Some(0x3000)))
        );
        assert_eq!(fp_step(&mem, 0x1000, Some(0x2001)), None);
        assert_eq!(fp_step(&mem, 0x1000, None), None);
    }

    #[test]
    fn recognises_call_sites() {
        // e8 rel32 ending at ra = 0x5008; call *%rax (ff d0) ending at 0x6008; plain data at 0x7008.
        let code = |bytes: [u8; 8]| u64::from_le_bytes(bytes);
        let mem = Words(HashMap::from([
            (0x5000, code([0x90, 0x90, 0x90, 0xe8, 1, 2, 3, 4])),
            (
                0x6000,
                code([0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0xff, 0xd0]),
            ),
            (0x7000, code([0x90; 8])),
        ]));
        assert!(follows_call(&mem, Arch::X86_64, 0x5008));
        assert!(follows_call(&mem, Arch::X86_64, 0x6008));
        assert!(!follows_call(&mem, Arch::X86_64, 0x7008));
        assert!(!follows_call(&mem, Arch::X86_64, 0x9008), "unreadable");
    }

    #[test]
    fn recognises_arm64_calls_and_their_targets() {
        // From a Debian aarch64 glibc: `bl 45af50` at 0x4138fc, `blr x12`, `ret`, `svc #0`.
        assert_eq!(bl_target(0x4138fc, 0x9401_1d95), Some(0x45af50));
        // Backwards: `bl 40e8e0` at 0x413940.
        assert_eq!(bl_target(0x413940, 0x97ff_ebe8), Some(0x40e8e0));
        assert!(is_arm64_call(0x9401_1d95));
        assert!(is_arm64_call(0xd63f_0180), "blr x12");
        assert!(!is_arm64_call(0xd65f_03c0), "ret");
        assert!(!is_arm64_call(0xd400_0001), "svc #0");
        assert_eq!(bl_target(0x1000, 0xd65f_03c0), None);
    }
}
