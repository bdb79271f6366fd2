//! Addresses of the runtime variables ctxprobe reads: the list of all goroutines.
//!
//! CONTRACT (implementation to be filled in):

use crate::elf::ElfFile;
use crate::pclntab::Pclntab;
use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeVars {
    /// `runtime.allgs`: a `[]*g` slice header (ptr, len, cap).
    pub allgs: u64,
    /// `runtime.allglen`: `uintptr`, the published length.
    pub allglen: u64,
}

/// From `.symtab` when present; otherwise derived from the code of `runtime.allgadd`.
pub fn locate(_elf: &ElfFile, _pclntab: &Pclntab) -> Result<RuntimeVars> {
    Err(crate::Error::NotFound("runtime.allgs (not implemented yet)".into()))
}
