//! Addresses of the runtime variables the leak analysis reads: the heap (`runtime.mheap_`) and
//! the semaphore table (`runtime.semtable`).
//!
//! From `.symtab` when present. Stripped binaries have no data symbols, so each is derived from
//! code that names it:
//! - `mheap_`: `runtime.mallocinit` calls `mheap_.init()`; the receiver (first argument
//!   register: `AX` on amd64, `R0` on arm64) is loaded with the variable's address just before
//!   the call to `runtime.(*mheap).init`.
//! - `semtable`: `runtime.semacquire1` indexes it (`semtable.rootFor(addr)`, inlined); it is
//!   the only address in `.bss` the function takes with `LEA` (amd64) or `ADRP`+`ADD` (arm64).
//!
//! Either may be missing; the caller then says the analysis cannot run, rather than guessing.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use crate::elf::{Arch, ElfFile};
use crate::pclntab::Pclntab;
use crate::{Error, Result};

const MAX_FUNC_LEN: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapVars {
    pub mheap: u64,
    /// None when it could not be found (only needed before Go 1.26, where sync waits do not
    /// set `g.waiting`).
    pub semtable: Option<u64>,
}

/// `mheap_` and `semtable`, from `.symtab` or else from code.
pub fn locate(elf: &ElfFile, pclntab: &Pclntab) -> Result<HeapVars> {
    let mheap = match elf.symbol("runtime.mheap_") {
        Some(s) => s.addr,
        None => mheap_from_code(elf, pclntab)?,
    };
    let semtable = match elf.symbol("runtime.semtable") {
        Some(s) => Some(s.addr),
        None => semtable_from_code(elf, pclntab).ok(),
    };
    Ok(HeapVars { mheap, semtable })
}

/// The machine code of the Go function `name` and its entry address (the runtime variables are
/// found in stripped binaries by reading the code of functions that use them).
pub(crate) fn func_code<'a>(
    elf: &'a ElfFile,
    pclntab: &Pclntab,
    name: &str,
) -> Result<(&'a [u8], u64)> {
    let func = pclntab
        .func_by_name(name)
        .ok_or_else(|| Error::NotFound(format!("function {name}")))?;
    let len = func.end.saturating_sub(func.entry);
    if len == 0 || len > MAX_FUNC_LEN {
        return Err(Error::Malformed {
            what: "pclntab",
            why: format!("{name} has implausible size {len}"),
        });
    }
    let code = elf
        .read_vaddr(func.entry, len as usize)
        .ok_or_else(|| Error::Malformed {
            what: "ELF",
            why: format!("code of {name} at {:#x} is not in the file", func.entry),
        })?;
    Ok((code, func.entry))
}

/// `runtime.mheap_` from the code of `runtime.mallocinit` (see the module comment).
pub fn mheap_from_code(elf: &ElfFile, pclntab: &Pclntab) -> Result<u64> {
    let init = pclntab
        .func_by_name("runtime.(*mheap).init")
        .ok_or_else(|| Error::NotFound("function runtime.(*mheap).init".into()))?
        .entry;
    let (code, entry) = func_code(elf, pclntab, "runtime.mallocinit")?;
    let found = match elf.arch() {
        Arch::Aarch64 => first_arg_before_call_arm64(code, entry, init),
        _ => first_arg_before_call_amd64(code, entry, init),
    };
    found.ok_or_else(|| {
        Error::NotFound("runtime.mheap_ (no mheap_.init() call in runtime.mallocinit)".into())
    })
}

/// The RIP-relative address last loaded into `AX` before a `CALL callee`.
fn first_arg_before_call_amd64(code: &[u8], addr: u64, callee: u64) -> Option<u64> {
    let mut ax = None;
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    for instr in &mut decoder {
        if instr.is_invalid() {
            continue;
        }
        if instr.mnemonic() == Mnemonic::Call {
            if instr.op0_kind() == OpKind::NearBranch64 && instr.near_branch64() == callee {
                if let Some(a) = ax {
                    return Some(a);
                }
            }
            ax = None;
            continue;
        }
        if instr.op_count() > 0
            && instr.op0_kind() == OpKind::Register
            && instr.op0_register().full_register() == Register::RAX
        {
            ax = (instr.mnemonic() == Mnemonic::Lea && instr.is_ip_rel_memory_operand())
                .then(|| instr.ip_rel_memory_address());
        }
    }
    None
}

/// The address last built in `R0` (`ADRP` + `ADD`) before a `BL callee`.
fn first_arg_before_call_arm64(code: &[u8], addr: u64, callee: u64) -> Option<u64> {
    let mut regs: [Option<u64>; 32] = [None; 32];
    for (i, b) in code.chunks_exact(4).enumerate() {
        let pc = addr.wrapping_add(4 * i as u64);
        let word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if word & 0xFC00_0000 == 0x9400_0000 {
            // BL imm26
            let imm = crate::arm64::sign_extend(u64::from(word & 0x03FF_FFFF), 26) * 4;
            if pc.wrapping_add(imm as u64) == callee {
                if let Some(a) = regs[0] {
                    return Some(a);
                }
            }
            regs = [None; 32];
            continue;
        }
        track_arm64(&mut regs, crate::arm64::decode(word, pc));
    }
    None
}

fn track_arm64(regs: &mut [Option<u64>; 32], insn: crate::arm64::Insn) {
    use crate::arm64::Insn;
    match insn {
        Insn::Adrp { rd, page } => regs[usize::from(rd)] = Some(page),
        Insn::AddImm { rd, rn, imm } => {
            regs[usize::from(rd)] = regs[usize::from(rn)].map(|v| v.wrapping_add(imm));
        }
        Insn::LoadStore { load: true, rt, .. } => regs[usize::from(rt)] = None,
        Insn::Pair {
            load,
            rt,
            rt2,
            rn,
            writeback,
            ..
        } => {
            if load {
                regs[usize::from(rt)] = None;
                regs[usize::from(rt2)] = None;
            }
            if writeback {
                regs[usize::from(rn)] = None;
            }
        }
        Insn::Call => *regs = [None; 32],
        Insn::StorePreIndex { rn, .. } => regs[usize::from(rn)] = None,
        Insn::SubImm { rd, .. } | Insn::Other { rd } => regs[usize::from(rd)] = None,
        _ => {}
    }
}

/// `runtime.semtable` from the code of `runtime.semacquire1` (see the module comment).
pub fn semtable_from_code(elf: &ElfFile, pclntab: &Pclntab) -> Result<u64> {
    let bss = elf
        .section(".bss")
        .ok_or_else(|| Error::NotFound("section .bss".into()))?;
    let in_bss = |a: u64| a >= bss.addr && a < bss.addr.saturating_add(bss.size);
    let (code, entry) = func_code(elf, pclntab, "runtime.semacquire1")?;
    let mut found = std::collections::BTreeSet::new();
    match elf.arch() {
        Arch::Aarch64 => {
            let mut regs: [Option<u64>; 32] = [None; 32];
            for (_, insn) in crate::arm64::instructions(code, entry) {
                if let crate::arm64::Insn::AddImm { rd, rn, imm } = insn {
                    if let Some(a) = regs[usize::from(rn)].map(|v| v.wrapping_add(imm)) {
                        if in_bss(a) && rd != crate::arm64::SP {
                            found.insert(a);
                        }
                    }
                }
                track_arm64(&mut regs, insn);
            }
        }
        _ => {
            let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
            for instr in &mut decoder {
                if instr.mnemonic() == Mnemonic::Lea && instr.is_ip_rel_memory_operand() {
                    let a = instr.ip_rel_memory_address();
                    if in_bss(a) {
                        found.insert(a);
                    }
                }
            }
        }
    }
    let mut it = found.into_iter();
    match (it.next(), it.next()) {
        (Some(a), None) => Ok(a),
        (None, _) => Err(Error::NotFound(
            "runtime.semtable (no .bss address taken in runtime.semacquire1)".into(),
        )),
        (Some(_), Some(_)) => Err(Error::NotFound(
            "runtime.semtable (several .bss addresses taken in runtime.semacquire1)".into(),
        )),
    }
}
