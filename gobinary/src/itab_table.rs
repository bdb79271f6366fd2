//! Where `runtime.itabTable` is: the runtime's hash table of itabs (`itabTableType{size,
//! count, entries[size]}` behind a pointer, the same in every supported release). Itabs the
//! linker could not build (a conversion from `any` or another interface type to an interface,
//! a type assertion to one) are built at run time by `runtime.getitab` and live only there.
//!
//! From `.symtab` when present. Stripped binaries have no data symbols: `runtime.itabAdd`
//! (never inlined, in every supported release) publishes a grown table with
//! `atomicstorep(&itabTable, t2)`, the only atomic store in its code (`XCHG` on amd64, `STLR`
//! on arm64), so its target is the variable.

use crate::elf::{Arch, ElfFile};
use crate::pclntab::Pclntab;
use crate::{Error, Result};

/// The address of `runtime.itabTable` (a `*itabTableType`), from `.symtab` or else from code.
pub fn locate(elf: &ElfFile, pclntab: &Pclntab) -> Result<u64> {
    match elf.symbol("runtime.itabTable") {
        Some(s) => Ok(s.addr),
        None => from_code(elf, pclntab),
    }
}

/// `runtime.itabTable` from the code of `runtime.itabAdd` (see the module comment).
pub fn from_code(elf: &ElfFile, pclntab: &Pclntab) -> Result<u64> {
    let (code, entry) = crate::heap_vars::func_code(elf, pclntab, "runtime.itabAdd")?;
    let mut stores = match elf.arch() {
        Arch::Aarch64 => crate::arm64::global_refs(code, entry).release_stores,
        _ => crate::runtime_vars::amd64_global_refs(code, entry).atomic_stores,
    };
    stores.sort_unstable();
    stores.dedup();
    match stores.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::NotFound(
            "runtime.itabTable (no atomic store in runtime.itabAdd)".into(),
        )),
        _ => Err(Error::NotFound(
            "runtime.itabTable (several atomic store targets in runtime.itabAdd)".into(),
        )),
    }
}
