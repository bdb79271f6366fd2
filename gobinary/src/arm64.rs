//! The few arm64 (A64) instructions ctxprobe reads in Go's code: enough to follow the
//! `ADRP`/`ADD`/`LDR`/`STR`/`LDP`/`STP`/`STLR` addressing of global variables, and to recognise
//! the shapes of a Go function prologue. Pure functions of the instruction words, so they run
//! (and are tested) on any host.
//!
//! Encodings from the Arm Architecture Reference Manual (A64 base instructions); Go's assembler
//! emits them in `cmd/internal/obj/arm64`.

/// Register number 31: `SP` or `ZR` depending on the instruction.
pub const SP: u8 = 31;
/// Go's frame pointer (R29) and link register (R30).
pub const FP: u8 = 29;
pub const LR: u8 = 30;

/// One decoded instruction, only the kinds ctxprobe cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insn {
    /// `ADRP Xd, page`: `page` is the absolute 4 KiB page address.
    Adrp { rd: u8, page: u64 },
    /// `ADD Xd, Xn|SP, #imm` (64-bit, shifted immediate already applied).
    AddImm { rd: u8, rn: u8, imm: u64 },
    /// `SUB Xd, Xn|SP, #imm` (64-bit).
    SubImm { rd: u8, rn: u8, imm: u64 },
    /// `LDR`/`STR` (any size, unsigned scaled offset): `[Xn + offset]`.
    LoadStore {
        load: bool,
        rt: u8,
        rn: u8,
        offset: u64,
    },
    /// `LDP`/`STP` of 64-bit registers: `[Xn + offset]` and `[Xn + offset + 8]`; `writeback`
    /// for the pre/post-indexed forms (which update `Xn`).
    Pair {
        load: bool,
        rt: u8,
        rt2: u8,
        rn: u8,
        offset: i64,
        writeback: bool,
    },
    /// `STR Xt, [Xn, #imm]!` (pre-indexed, 64-bit): Go's `MOVD.W R30, -N(RSP)`.
    StorePreIndex { rt: u8, rn: u8, offset: i64 },
    /// `STLR Wt|Xt, [Xn]`: a release (atomic) store.
    Stlr { rt: u8, rn: u8 },
    /// `BL` / `BLR`: a call (clobbers every register but g).
    Call,
    /// `B.cond`, `CBZ`/`CBNZ`, `TBZ`/`TBNZ`, `B`: a branch, `target` when PC-relative.
    Branch { target: Option<u64> },
    /// `CMP Xn, Xm` (`SUBS XZR, Xn, Xm`, extended or shifted register).
    CmpReg { rn: u8, rm: u8 },
    /// Anything else; `rd` is the low register field, which most instructions write.
    Other { rd: u8 },
}

pub(crate) fn sign_extend(value: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((value << shift) as i64) >> shift
}

/// Decodes the instruction `word` found at address `pc`.
pub fn decode(word: u32, pc: u64) -> Insn {
    let w = u64::from(word);
    let rd = (word & 31) as u8;
    let rn = ((word >> 5) & 31) as u8;
    if word & 0x9F00_0000 == 0x9000_0000 {
        let imm = ((w >> 5) & 0x7_FFFF) << 2 | ((w >> 29) & 3);
        let page = (pc & !0xFFF).wrapping_add((sign_extend(imm, 21) << 12) as u64);
        return Insn::Adrp { rd, page };
    }
    // ADD/SUB (immediate), 64-bit, not setting flags: sf=1 op S=0 100010 sh imm12 Rn Rd.
    if word & 0xBF80_0000 == 0x9100_0000 {
        let mut imm = (w >> 10) & 0xFFF;
        if (word >> 22) & 1 == 1 {
            imm <<= 12;
        }
        return if word & 0x4000_0000 == 0 {
            Insn::AddImm { rd, rn, imm }
        } else {
            Insn::SubImm { rd, rn, imm }
        };
    }
    // LDR/STR (unsigned immediate), general registers: size 111 0 01 opc imm12 Rn Rt.
    if word & 0x3F00_0000 == 0x3900_0000 {
        let size = word >> 30;
        let opc = (word >> 22) & 3;
        let offset = ((w >> 10) & 0xFFF) << size;
        return Insn::LoadStore {
            load: opc != 0,
            rt: rd,
            rn,
            offset,
        };
    }
    // STR Xt, [Xn, #simm9]! (pre-index, 64-bit).
    if word & 0xFFE0_0C00 == 0xF800_0C00 {
        return Insn::StorePreIndex {
            rt: rd,
            rn,
            offset: sign_extend((w >> 12) & 0x1FF, 9),
        };
    }
    // LDP/STP, 64-bit: 10 101 0 0xx L imm7 Rt2 Rn Rt (post-index 01, signed offset 10, pre 11).
    if word & 0xFE00_0000 == 0xA800_0000 {
        let mode = (word >> 23) & 3;
        if mode != 0 {
            return Insn::Pair {
                load: (word >> 22) & 1 == 1,
                rt: rd,
                rt2: ((word >> 10) & 31) as u8,
                rn,
                offset: sign_extend((w >> 15) & 0x7F, 7) * 8,
                writeback: mode != 2,
            };
        }
    }
    // STLR Wt/Xt, [Xn]: 1x 001000 1 0 0 11111 1 11111 Rn Rt.
    if word & 0xBFFF_FC00 == 0x889F_FC00 {
        return Insn::Stlr { rt: rd, rn };
    }
    if word & 0xFC00_0000 == 0x9400_0000 || word & 0xFFFF_FC1F == 0xD63F_0000 {
        return Insn::Call;
    }
    if word & 0xFC00_0000 == 0x1400_0000 {
        let off = sign_extend(w & 0x3FF_FFFF, 26) * 4;
        return Insn::Branch {
            target: Some(pc.wrapping_add(off as u64)),
        };
    }
    // B.cond, CBZ/CBNZ: imm19 at bits 5..23.
    if word & 0xFF00_0010 == 0x5400_0000 || word & 0x7E00_0000 == 0x3400_0000 {
        let off = sign_extend((w >> 5) & 0x7_FFFF, 19) * 4;
        return Insn::Branch {
            target: Some(pc.wrapping_add(off as u64)),
        };
    }
    // TBZ/TBNZ: imm14 at bits 5..18.
    if word & 0x7E00_0000 == 0x3600_0000 {
        let off = sign_extend((w >> 5) & 0x3FFF, 14) * 4;
        return Insn::Branch {
            target: Some(pc.wrapping_add(off as u64)),
        };
    }
    // CMP Xn, Xm: SUBS XZR, Xn, Xm with a shifted (0xEB000000) or extended (0xEB200000) register.
    if rd == 31 && (word & 0xFF20_0000 == 0xEB00_0000 || word & 0xFFE0_0000 == 0xEB20_0000) {
        return Insn::CmpReg {
            rn,
            rm: ((word >> 16) & 31) as u8,
        };
    }
    Insn::Other { rd }
}

/// The instructions of `code` (loaded at `addr`) with their addresses; a trailing partial word
/// is ignored.
pub fn instructions(code: &[u8], addr: u64) -> impl Iterator<Item = (u64, Insn)> + '_ {
    code.chunks_exact(4).enumerate().map(move |(i, b)| {
        let pc = addr.wrapping_add(4 * i as u64);
        let word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        (pc, decode(word, pc))
    })
}

/// Addresses of global variables touched by `code`, in order, and the targets of its release
/// stores: follows registers set by `ADRP` (+ `ADD`) into loads and stores, the way Go's
/// linker addresses data on arm64. Registers are forgotten when overwritten or across calls.
pub struct GlobalRefs {
    /// Every address loaded from or stored to (both words of an `LDP`/`STP`).
    pub referenced: Vec<u64>,
    /// Addresses stored to with `STLR` (Go's atomic stores), in order.
    pub release_stores: Vec<u64>,
}

pub fn global_refs(code: &[u8], addr: u64) -> GlobalRefs {
    let mut regs: [Option<u64>; 32] = [None; 32];
    let mut refs = GlobalRefs {
        referenced: Vec::new(),
        release_stores: Vec::new(),
    };
    for (_, insn) in instructions(code, addr) {
        match insn {
            Insn::Adrp { rd, page } => regs[usize::from(rd)] = Some(page),
            Insn::AddImm { rd, rn, imm } => {
                regs[usize::from(rd)] = regs[usize::from(rn)].map(|v| v.wrapping_add(imm));
            }
            Insn::LoadStore {
                load,
                rt,
                rn,
                offset,
            } => {
                if let Some(base) = regs[usize::from(rn)] {
                    refs.referenced.push(base.wrapping_add(offset));
                }
                if load {
                    regs[usize::from(rt)] = None;
                }
            }
            Insn::Pair {
                load,
                rt,
                rt2,
                rn,
                offset,
                writeback,
            } => {
                if let Some(base) = regs[usize::from(rn)] {
                    let a = base.wrapping_add(offset as u64);
                    refs.referenced.push(a);
                    refs.referenced.push(a.wrapping_add(8));
                }
                if load {
                    regs[usize::from(rt)] = None;
                    regs[usize::from(rt2)] = None;
                }
                if writeback {
                    regs[usize::from(rn)] = None;
                }
            }
            Insn::Stlr { rn, .. } => {
                if let Some(target) = regs[usize::from(rn)] {
                    refs.release_stores.push(target);
                }
            }
            Insn::Call => regs = [None; 32],
            Insn::StorePreIndex { rn, .. } => regs[usize::from(rn)] = None,
            Insn::SubImm { rd, .. } | Insn::Other { rd } => regs[usize::from(rd)] = None,
            Insn::Branch { .. } | Insn::CmpReg { .. } => {}
        }
    }
    refs
}

/// `g.stackguard0` is the third word of `g` in every Go version.
const STACKGUARD0: u64 = 0x10;
/// Go's `g` register on arm64 (ABIInternal).
const G: u8 = 28;
/// Condition code LS (unsigned lower or same) of `B.cond`.
const COND_LS: u32 = 0x9;

/// The address of the `BLS` to `morestack` that ends the stack-bound check of a Go function
/// whose first instructions are `code` (at `entry`; the function ends at `end`), if it has one
/// (`cmd/internal/obj/arm64` `stacksplit`):
/// - small frames: `MOVD 16(g), R16; CMP R16, RSP; BLS more`
/// - larger frames: `MOVD 16(g), R16; SUB $N, RSP, R17; CMP R16, R17; BLS more`
/// - huge frames: `... SUBS $N, RSP, R17; BLO more; CMP R16, R17; BLS more`
pub fn stack_check_branch(code: &[u8], entry: u64, end: u64) -> Option<u64> {
    let mut loaded_guard = false;
    for (pc, insn) in instructions(code, entry).take(8) {
        match insn {
            Insn::LoadStore {
                load: true,
                rn: G,
                offset: STACKGUARD0,
                ..
            } => loaded_guard = true,
            Insn::Branch { target: Some(t) } if loaded_guard => {
                let word = code.get((pc - entry) as usize..)?.get(..4)?;
                let word = u32::from_le_bytes(word.try_into().ok()?);
                let is_bls = word & 0xFF00_0010 == 0x5400_0000 && word & 0xF == COND_LS;
                if is_bls && (entry..end).contains(&t) {
                    return Some(pc);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether the kernel simulates `word` when a uprobe sits on it, instead of single-stepping a
/// copy out of line (`arch/arm64/kernel/probes/decode-insn.c`: branches, `ADR`/`ADRP`, literal
/// loads; everything else is stepped).
pub fn simulated_by_uprobes(word: u32, pc: u64) -> bool {
    matches!(
        decode(word, pc),
        Insn::Branch { .. } | Insn::Call | Insn::Adrp { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words and addresses from `go tool objdump` of Go 1.27's arm64 `runtime.allgadd`.
    #[test]
    fn decodes_go_addressing() {
        assert_eq!(
            decode(0xf000183b, 0x5cd40),
            Insn::Adrp {
                rd: 27,
                page: 0x5c000 + 3174400
            }
        );
        assert_eq!(
            decode(0x912f437b, 0),
            Insn::AddImm {
                rd: 27,
                rn: 27,
                imm: 3024
            }
        );
        assert_eq!(
            decode(0xf945f362, 0),
            Insn::LoadStore {
                load: true,
                rt: 2,
                rn: 27,
                offset: 3040
            }
        );
        assert_eq!(
            decode(0xa9400760, 0),
            Insn::Pair {
                load: true,
                rt: 0,
                rt2: 1,
                rn: 27,
                offset: 0,
                writeback: false
            }
        );
        assert_eq!(decode(0xc89ffc41, 0), Insn::Stlr { rt: 1, rn: 2 });
        assert_eq!(decode(0x97ff3375, 0), Insn::Call);
        // Prologue: MOVD 16(R28), R16; CMP R16, RSP; BLS; MOVD.W R30, -96(RSP); MOVD R29, -8(RSP);
        // SUB $8, RSP, R29.
        assert_eq!(
            decode(0xf9400b90, 0),
            Insn::LoadStore {
                load: true,
                rt: 16,
                rn: 28,
                offset: 16
            }
        );
        assert_eq!(decode(0xeb3063ff, 0), Insn::CmpReg { rn: 31, rm: 16 });
        assert_eq!(
            decode(0x54000b09, 0x5cd08),
            Insn::Branch {
                target: Some(0x5cd08 + 88 * 4)
            }
        );
        assert_eq!(
            decode(0xf81a0ffe, 0),
            Insn::StorePreIndex {
                rt: 30,
                rn: 31,
                offset: -96
            }
        );
        assert_eq!(
            decode(0xf81f83fd, 0),
            Insn::Other { rd: 29 } // STUR R29, [SP, #-8]: a store, its rd field is Rt
        );
        assert_eq!(
            decode(0xd10023fd, 0),
            Insn::SubImm {
                rd: 29,
                rn: 31,
                imm: 8
            }
        );
        assert_eq!(
            decode(0xa97ffbfd, 0),
            Insn::Pair {
                load: true,
                rt: 29,
                rt2: 30,
                rn: 31,
                offset: -8,
                writeback: false
            }
        );
    }

    /// gopark's prologue, Go 1.27 arm64 (`MOVD 16(R28), R16; CMP R16, RSP; BLS 52(PC);
    /// MOVD.W R30, -32(RSP); ...`).
    #[test]
    fn finds_the_stack_check_branch() {
        let words: [u32; 6] = [
            0xf9400b90, 0xeb3063ff, 0x54000689, 0xf81e0ffe, 0xf81f83fd, 0xd10023fd,
        ];
        let code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(
            stack_check_branch(&code, 0x92050, 0x92050 + 0x200),
            Some(0x92058)
        );
        // The branch must stay inside the function (to its morestack call).
        assert_eq!(stack_check_branch(&code, 0x92050, 0x92060), None);
        // No load of g.stackguard0 first: not a Go prologue.
        assert_eq!(stack_check_branch(&code[4..], 0x92054, 0x92250), None);
        assert!(simulated_by_uprobes(0x54000689, 0x92058));
        assert!(!simulated_by_uprobes(0xf81e0ffe, 0x9205c));
    }

    #[test]
    fn decoding_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut code = Vec::new();
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            code.extend_from_slice(&(x as u32).to_le_bytes());
        }
        let refs = global_refs(&code, u64::MAX - 1000);
        assert!(refs.referenced.len() < code.len());
    }
}
