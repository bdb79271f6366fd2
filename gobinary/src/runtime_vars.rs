//! Addresses of the runtime variables ctxprobe reads: the list of all goroutines.
//!
//! Stripped binaries have no data symbols, but `runtime.allgadd` (never inlined, in every
//! supported release) appends to `allgs` and then publishes `allgptr` and `allglen` with atomic
//! stores, so its code names all three addresses. Its code is read per architecture: amd64
//! (RIP-relative operands, `XCHG` stores) or arm64 (`ADRP`/`ADD` bases, `STLR` stores).

use std::collections::{BTreeSet, HashMap};

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use crate::elf::{Arch, ElfFile};
use crate::pclntab::Pclntab;
use crate::{Error, Result};

/// `allgadd` is a few hundred bytes; anything far larger is not the function we want.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeVars {
    /// `runtime.allgs`: a `[]*g` slice header (ptr, len, cap).
    pub allgs: u64,
    /// `runtime.allglen`: `uintptr`, the published length.
    pub allglen: u64,
}

/// From `.symtab` when present; otherwise derived from the code of `runtime.allgadd`.
pub fn locate(elf: &ElfFile, pclntab: &Pclntab) -> Result<RuntimeVars> {
    if let Some(vars) = from_symtab(elf) {
        return Ok(vars);
    }
    locate_by_disassembly(elf, pclntab)
}

/// `runtime.allgs` and `runtime.allglen` from `.symtab`, if both are there.
pub fn from_symtab(elf: &ElfFile) -> Option<RuntimeVars> {
    let allgs = elf.symbol("runtime.allgs")?.addr;
    let allglen = elf.symbol("runtime.allglen")?.addr;
    Some(RuntimeVars { allgs, allglen })
}

/// Finds `runtime.allgadd` in the pclntab and derives the addresses from its code (works on
/// stripped binaries; exposed so tests can compare it with `.symtab`).
pub fn locate_by_disassembly(elf: &ElfFile, pclntab: &Pclntab) -> Result<RuntimeVars> {
    let (code, entry) =
        crate::heap_vars::func_code(elf, pclntab, "runtime.allgadd").map_err(|e| match e {
            Error::NotFound(_) => {
                Error::NotFound("function runtime.allgadd (to locate runtime.allgs)".into())
            }
            other => other,
        })?;
    match elf.arch() {
        Arch::Aarch64 => from_allgadd_code_arm64(code, entry),
        _ => from_allgadd_code(code, entry),
    }
}

/// The arm64 counterpart of [`from_allgadd_code`]: `allgs` is the base `B` with `B`, `B+8` and
/// `B+16` all loaded or stored through an `ADRP` page (`LDP` covers two of them); `allglen` is
/// the target of the last `STLR` (after the `allgptr` one).
pub fn from_allgadd_code_arm64(code: &[u8], addr: u64) -> Result<RuntimeVars> {
    let refs = crate::arm64::global_refs(code, addr);
    let referenced: BTreeSet<u64> = refs.referenced.iter().copied().collect();
    let allgs = slice_header(&referenced).ok_or_else(|| {
        Error::NotFound("runtime.allgs (no slice header referenced by runtime.allgadd)".into())
    })?;
    let allglen = refs.release_stores.last().copied().ok_or_else(|| {
        Error::NotFound("runtime.allglen (no atomic store in runtime.allgadd)".into())
    })?;
    Ok(RuntimeVars { allgs, allglen })
}

/// The lowest address `B` with `B`, `B+8` and `B+16` all referenced (a slice header).
fn slice_header(referenced: &BTreeSet<u64>) -> Option<u64> {
    referenced.iter().copied().find(|&b| {
        b.checked_add(8).is_some_and(|a| referenced.contains(&a))
            && b.checked_add(16).is_some_and(|a| referenced.contains(&a))
    })
}

/// Derives the addresses from the amd64 machine code of `runtime.allgadd` loaded at `addr`:
/// `allgs` is the base `B` with `B`, `B+8` and `B+16` all referenced RIP-relative (append
/// touches ptr, len and cap); `allglen` is the target of the last atomic store (`XCHG`), which
/// comes after the `allgptr` store.
pub fn from_allgadd_code(code: &[u8], addr: u64) -> Result<RuntimeVars> {
    let refs = amd64_global_refs(code, addr);
    let referenced: BTreeSet<u64> = refs.referenced.iter().copied().collect();
    let last_xchg_target = refs.atomic_stores.last().copied();
    let allgs = slice_header(&referenced).ok_or_else(|| {
        Error::NotFound("runtime.allgs (no slice header referenced by runtime.allgadd)".into())
    })?;
    let allglen = last_xchg_target.ok_or_else(|| {
        Error::NotFound("runtime.allglen (no atomic store in runtime.allgadd)".into())
    })?;
    Ok(RuntimeVars { allgs, allglen })
}

/// What amd64 code does with global variables: every RIP-relative address it references, and
/// the targets of its atomic stores (`XCHG`, Go's `atomic.Store*`/`StorepNoWB`), in order, with
/// the target either RIP-relative or in a register an `LEA` loaded with a RIP-relative address.
pub(crate) struct Amd64GlobalRefs {
    pub referenced: Vec<u64>,
    pub atomic_stores: Vec<u64>,
}

pub(crate) fn amd64_global_refs(code: &[u8], addr: u64) -> Amd64GlobalRefs {
    let mut refs = Amd64GlobalRefs {
        referenced: Vec::new(),
        atomic_stores: Vec::new(),
    };
    // Registers holding a RIP-relative address loaded by LEA, for `XCHG reg, (reg)`.
    let mut lea: HashMap<Register, u64> = HashMap::new();
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    for instr in &mut decoder {
        if instr.is_invalid() {
            continue;
        }
        let rip_target = instr
            .is_ip_rel_memory_operand()
            .then(|| instr.ip_rel_memory_address());
        if let Some(t) = rip_target {
            refs.referenced.push(t);
        }
        let has_mem = (0..instr.op_count()).any(|i| instr.op_kind(i) == OpKind::Memory);
        if instr.mnemonic() == Mnemonic::Xchg && has_mem {
            let target = rip_target.or_else(|| {
                let base = instr.memory_base();
                (instr.memory_displacement64() == 0 && instr.memory_index() == Register::None)
                    .then(|| lea.get(&base).copied())
                    .flatten()
            });
            if let Some(t) = target {
                refs.atomic_stores.push(t);
            }
        }
        if instr.op_count() > 0 && instr.op0_kind() == OpKind::Register {
            let reg = instr.op0_register().full_register();
            match (instr.mnemonic(), rip_target) {
                (Mnemonic::Lea, Some(t)) => {
                    lea.insert(reg, t);
                }
                (Mnemonic::Cmp | Mnemonic::Test, _) => {}
                _ => {
                    lea.remove(&reg);
                }
            }
        }
    }
    refs
}
