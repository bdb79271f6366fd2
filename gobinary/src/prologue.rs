//! Where a Go function's prologue stack-bound check ends.
//!
//! A uprobe on a Go function's first instruction (the `cmp rsp, [r14+16]` stack check) is
//! single-stepped out of line by the kernel (~10 µs a hit); on the `push rbp` that follows it is
//! emulated (~0.7 µs). At that point the argument registers, R14, RSP and RBP still hold their
//! entry values, and the probe is not hit again when `morestack` re-runs the prologue.
//!
//! CONTRACT (implementation to be filled in):

use crate::elf::ElfFile;
use crate::pclntab::Func;
use crate::Result;

/// Link-time address of the `push rbp` that follows the stack-bound check of `func`.
pub fn after_stack_check(_elf: &ElfFile, func: &Func) -> Result<u64> {
    Err(crate::Error::NotFound(format!("prologue of {} (not implemented yet)", func.name)))
}
