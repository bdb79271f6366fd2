//! Where a Go function's prologue stack-bound check ends.
//!
//! A uprobe on a Go function's first instruction (the `cmp rsp, [r14+16]` stack check) is
//! single-stepped out of line by the kernel (~10 µs a hit); on the `push rbp` that follows it is
//! emulated (~0.7 µs). At that point the argument registers, R14, RSP and RBP still hold their
//! entry values, and the probe is not hit again when `morestack` re-runs the prologue.
//!
//! Shapes recognised (amd64, `cmd/internal/obj/x86` `stacksplit`):
//! - small frames: `cmp rsp, [r14+0x10]; jbe more`
//! - larger frames: `lea r12, [rsp-N]; cmp r12, [r14+0x10]; jbe more`
//! - huge frames: `mov r12, rsp; sub r12, N; jb more; cmp r12, [r14+0x10]; jbe more`
//!
//! followed by `push rbp` (Go 1.21+). Go ≤ 1.20 sets up the frame with `sub rsp, N` instead
//! (then `mov [rsp+N-8], rbp`); for those the address of that `sub` is returned: it is still the
//! first instruction after the check, with every register at its entry value, but the kernel
//! single-steps it rather than emulating it.

//!
//! arm64 ([`probe_site`]): the probe goes on the stack check's `BLS` itself, a branch the kernel
//! simulates, while the instruction after it (`MOVD.W R30, -N(RSP)`, a pre-indexed store) would
//! be single-stepped out of line. Registers still hold their entry values there; the price is a
//! second hit when `morestack` re-runs the prologue, which rewrites the same park record.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::elf::{Arch, ElfFile};
use crate::pclntab::Func;
use crate::{Error, Result};

/// `g.stackguard0` is the third word of `g` in every Go version.
const STACKGUARD0: u64 = 0x10;
/// The check and the frame setup fit in this many instructions in every shape above.
const MAX_INSNS: usize = 8;
const MAX_BYTES: u64 = 64;

/// Where a uprobe on a Go function goes, per architecture of the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSite {
    /// Link-time address of the probed instruction.
    pub addr: u64,
    /// The kernel simulates the instruction (cheap hit) rather than single-stepping it.
    pub emulated: bool,
}

/// The cheapest place for a uprobe in `func` where its entry registers are intact: amd64, the
/// instruction after the stack check ([`after_stack_check`]); arm64, the check's own branch.
pub fn probe_site(elf: &ElfFile, func: &Func) -> Result<ProbeSite> {
    match elf.arch() {
        Arch::Aarch64 => {
            let not_found =
                |why: &str| Error::NotFound(format!("stack check in {} ({why})", func.name));
            let len = usize::try_from(func.end.saturating_sub(func.entry).min(MAX_BYTES))
                .map_err(|_| not_found("bad size"))?;
            let code = elf
                .read_vaddr(func.entry, len)
                .ok_or_else(|| not_found("code not in the file"))?;
            let addr = crate::arm64::stack_check_branch(code, func.entry, func.end)
                .ok_or_else(|| not_found("no BLS after a load of g.stackguard0"))?;
            let word = elf
                .read_vaddr(addr, 4)
                .and_then(|b| Some(u32::from_le_bytes(b.try_into().ok()?)))
                .ok_or_else(|| not_found("code not in the file"))?;
            Ok(ProbeSite {
                addr,
                emulated: crate::arm64::simulated_by_uprobes(word, addr),
            })
        }
        _ => {
            let addr = after_stack_check(elf, func)?;
            const PUSH_RBP: u8 = 0x55;
            Ok(ProbeSite {
                addr,
                emulated: elf.read_vaddr(addr, 1) == Some(&[PUSH_RBP][..]),
            })
        }
    }
}

/// Link-time address of the `push rbp` that follows the stack-bound check of `func` (Go ≤ 1.20:
/// of the `sub rsp, N` that takes its place). An error for functions without a stack check
/// or without a frame.
pub fn after_stack_check(elf: &ElfFile, func: &Func) -> Result<u64> {
    let not_found = |why: &str| Error::NotFound(format!("stack check in {} ({why})", func.name));
    let len = func.end.saturating_sub(func.entry).min(MAX_BYTES);
    let len = usize::try_from(len).map_err(|_| not_found("bad size"))?;
    let code = elf
        .read_vaddr(func.entry, len)
        .ok_or_else(|| not_found("code not in the file"))?;
    let mut decoder = Decoder::with_ip(64, code, func.entry, DecoderOptions::NONE);
    let mut insns: Vec<Instruction> = Vec::with_capacity(MAX_INSNS);
    while decoder.can_decode() && insns.len() < MAX_INSNS {
        let insn = decoder.decode();
        if insn.is_invalid() {
            break;
        }
        insns.push(insn);
    }
    let check = insns
        .iter()
        .position(is_stackguard_cmp)
        .ok_or_else(|| not_found("no cmp against g.stackguard0"))?;
    let branch = insns
        .get(check + 1)
        .ok_or_else(|| not_found("truncated prologue"))?;
    let to_morestack = matches!(branch.mnemonic(), Mnemonic::Jbe | Mnemonic::Jb)
        && branch.op0_kind() == OpKind::NearBranch64
        && (func.entry..func.end).contains(&branch.near_branch_target());
    if !to_morestack {
        return Err(not_found(
            "stack check is not followed by a branch to morestack",
        ));
    }
    let next = insns
        .get(check + 2)
        .ok_or_else(|| not_found("truncated prologue"))?;
    if !is_frame_setup(next) {
        return Err(not_found("no frame pointer setup after the stack check"));
    }
    Ok(next.ip())
}

/// `cmp reg, [base+0x10]` with `base` holding `g` (R14 in ABIInternal code; any base register
/// is accepted so ABI0 code that loads g from TLS is recognised too).
fn is_stackguard_cmp(i: &Instruction) -> bool {
    i.code() == Code::Cmp_r64_rm64
        && i.op1_kind() == OpKind::Memory
        && i.memory_base() != Register::None
        && i.memory_base() != Register::RIP
        && i.memory_index() == Register::None
        && i.memory_displacement64() == STACKGUARD0
}

/// `push rbp` (Go 1.21+) or `sub rsp, imm` (Go ≤ 1.20 frame allocation).
fn is_frame_setup(i: &Instruction) -> bool {
    match i.code() {
        Code::Push_r64 => i.op0_register() == Register::RBP,
        Code::Sub_rm64_imm8 | Code::Sub_rm64_imm32 => {
            i.op0_kind() == OpKind::Register && i.op0_register() == Register::RSP
        }
        _ => false,
    }
}
