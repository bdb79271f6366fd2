//! The Go function table (`.gopclntab`): function lookup by address and by name, and
//! symbolization of a PC into logical frames, with inlined calls expanded like the runtime's
//! own traceback does. Present in stripped binaries, so this is the one symbolizer ctxprobe uses.
//!
//! CONTRACT (the agent codes against this; implementation to be filled in):

use crate::elf::ElfFile;
use crate::{GoVersion, Result};

/// One logical frame, as the runtime's traceback prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Frame {
    /// Fully qualified Go function name (`main.(*server).handle`, `sync.(*Mutex).Lock`).
    pub func: String,
    pub file: String,
    pub line: u32,
    /// The runtime elides frames of compiler-generated wrappers (funcID wrapper) in tracebacks.
    pub wrapper: bool,
    /// True for frames that come from the inline tree (not a physical call frame).
    pub inlined: bool,
}

/// A physical function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Func {
    pub name: String,
    /// Link-time address of the first instruction.
    pub entry: u64,
    /// One past the last instruction.
    pub end: u64,
    /// Raw `abi.FuncID` (0 = normal).
    pub func_id: u8,
    /// An ABI0/ABIInternal wrapper or other compiler-generated wrapper (funcID wrapper).
    pub wrapper: bool,
}

pub struct Pclntab {}

impl Pclntab {
    /// Finds and parses the pclntab (section `.gopclntab`, `.data.rel.ro.gopclntab`, or a magic
    /// scan when section headers are missing).
    pub fn from_elf(_elf: &ElfFile, _version: GoVersion) -> Result<Pclntab> {
        Err(crate::Error::NotFound("pclntab (not implemented yet)".into()))
    }

    /// The function containing `pc`.
    pub fn func_at(&self, _pc: u64) -> Option<Func> {
        None
    }

    /// A function by its Go name; where an ABI wrapper shares the name, the real body.
    pub fn func_by_name(&self, _name: &str) -> Option<Func> {
        None
    }

    /// Logical frames at `pc`, innermost first: inlined calls expanded into their own frames,
    /// the physical function last. Callers pass `return_address - 1` for return addresses.
    /// Empty when `pc` is in no known function.
    pub fn frames_at(&self, _pc: u64) -> Vec<Frame> {
        Vec::new()
    }

    /// File and line of `pc` within its physical function (the innermost source position).
    pub fn line_at(&self, _pc: u64) -> Option<(String, u32)> {
        None
    }

    /// Frame size at `pc` from the pcsp table (for unwinding without frame pointers).
    pub fn sp_delta_at(&self, _pc: u64) -> Option<i64> {
        None
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
