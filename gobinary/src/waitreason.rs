//! The runtime's own wait-reason strings (`runtime.waitReasonStrings`), read from the binary so
//! that renumberings between Go releases never matter; generated per-version tables are only a
//! fallback.
//!
//! CONTRACT (implementation to be filled in):

use crate::elf::ElfFile;
use crate::GoVersion;

/// `runtime.waitReasonStrings`, indexed by `g.waitreason`: from `.symtab` if present, else by a
/// signature scan (entry 0 is "", entry 1 is "GC assist marking" in every version).
pub fn from_binary(_elf: &ElfFile) -> Option<Vec<String>> {
    None
}

/// Generated fallback table for a Go minor version.
pub fn from_table(_version: GoVersion) -> Option<Vec<String>> {
    None
}

/// Status name as the runtime prints it (`gStatusStrings`), `_Gscan` bit stripped.
/// Unknown values are named `status(N)`.
pub fn status_name(status: u32) -> String {
    match status & !0x1000 {
        0 => "idle".into(),
        1 => "runnable".into(),
        2 => "running".into(),
        3 => "syscall".into(),
        4 => "waiting".into(),
        5 => "moribund".into(),
        6 => "dead".into(),
        7 => "enqueue".into(),
        8 => "copystack".into(),
        9 => "preempted".into(),
        10 => "leaked".into(),
        11 => "waiting for cgo callback".into(),
        n => format!("status({n})"),
    }
}
