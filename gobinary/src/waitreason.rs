//! The runtime's own wait-reason strings (`runtime.waitReasonStrings`), read from the binary so
//! that renumberings between Go releases never matter; generated per-version tables are only a
//! fallback.

use std::cell::OnceCell;
use std::collections::HashMap;

use crate::elf::ElfFile;
use crate::GoVersion;

/// Entry 1 of `waitReasonStrings` in every Go version: the anchor of the signature scan.
const ANCHOR: &[u8] = b"GC assist marking";
/// More entries than any Go release has (47 in 1.27); bounds hostile input.
const MAX_ENTRIES: usize = 256;
/// Longest wait reason is ~30 bytes.
const MAX_LEN: u64 = 64;
const R_X86_64_RELATIVE: u64 = 8;

/// `runtime.waitReasonStrings`, indexed by `g.waitreason`: from `.symtab` if present, else by a
/// signature scan (entry 0 is "", entry 1 is "GC assist marking" in every version).
pub fn from_binary(elf: &ElfFile) -> Option<Vec<String>> {
    let relocs = Relocs::new();
    if let Some(sym) = elf.symbol("runtime.waitReasonStrings") {
        let n = usize::try_from(sym.size / 16).ok()?.min(MAX_ENTRIES);
        if let Some(table) = read_table(elf, &relocs, sym.addr, Some(n)) {
            return Some(table);
        }
    }
    scan(elf, &relocs)
}

/// Generated fallback table for a Go minor version.
pub fn from_table(version: GoVersion) -> Option<Vec<String>> {
    crate::layout::table_for(version).map(|t| t.wait_reasons.clone())
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

/// Reads `[N]string` at `addr`. With `count` all entries must be valid; without, reads while
/// entries look like wait reasons. Entry 0 must be "" and entry 1 "GC assist marking".
fn read_table(
    elf: &ElfFile,
    relocs: &Relocs,
    addr: u64,
    count: Option<usize>,
) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..count.unwrap_or(MAX_ENTRIES) {
        let entry = addr.checked_add(16u64.checked_mul(i as u64)?)?;
        match read_string(elf, relocs, entry, i == 0) {
            Some(s) => out.push(s),
            None if count.is_none() => break,
            None => return None,
        }
    }
    let valid = out.first().is_some_and(|s| s.is_empty())
        && out.get(1).is_some_and(|s| s.as_bytes() == ANCHOR);
    valid.then_some(out)
}

/// A Go string header at `addr` that looks like a wait reason (printable ASCII, short).
fn read_string(elf: &ElfFile, relocs: &Relocs, addr: u64, allow_empty: bool) -> Option<String> {
    let ptr = relocs.read_ptr(elf, addr)?;
    let len = elf.read_u64(addr.checked_add(8)?)?;
    if len == 0 {
        return (allow_empty && ptr == 0).then(String::new);
    }
    if len >= MAX_LEN {
        return None;
    }
    let bytes = elf.read_vaddr(ptr, usize::try_from(len).ok()?)?;
    if !bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Finds the table in a stripped binary: the address `A` of "GC assist marking", then a
/// 16-byte aligned `[ptr 0, len 0, ptr A, len 17]` in the file-backed data.
fn scan(elf: &ElfFile, relocs: &Relocs) -> Option<Vec<String>> {
    let anchors = anchor_addresses(elf);
    if anchors.is_empty() {
        return None;
    }
    let anchor_len = (ANCHOR.len() as u64).to_le_bytes();
    for seg in elf.segments() {
        let start = usize::try_from(seg.file_offset).ok()?;
        let len = usize::try_from(seg.filesz).ok()?;
        let Some(bytes) = elf.data().get(start..start.saturating_add(len)) else {
            continue;
        };
        let skew = ((16 - (seg.vaddr % 16)) % 16) as usize;
        let mut pos = skew;
        while let Some(window) = bytes.get(pos..pos.saturating_add(32)) {
            let here = pos;
            pos += 16;
            if window.get(..16).is_none_or(|w| w.iter().any(|&b| b != 0))
                || window.get(24..32) != Some(&anchor_len[..])
            {
                continue;
            }
            let vaddr = seg.vaddr.checked_add(here as u64)?;
            let Some(ptr) = relocs.read_ptr(elf, vaddr + 16) else {
                continue;
            };
            if !anchors.contains(&ptr) {
                continue;
            }
            if let Some(table) = read_table(elf, relocs, vaddr, None) {
                return Some(table);
            }
        }
    }
    None
}

/// Link-time addresses of every "GC assist marking" in the loaded file.
fn anchor_addresses(elf: &ElfFile) -> Vec<u64> {
    let mut out = Vec::new();
    for seg in elf.segments() {
        let (Ok(start), Ok(len)) = (
            usize::try_from(seg.file_offset),
            usize::try_from(seg.filesz),
        ) else {
            continue;
        };
        let Some(bytes) = elf.data().get(start..start.saturating_add(len)) else {
            continue;
        };
        let mut pos = 0;
        while let Some(rest) = bytes.get(pos..) {
            let Some(rel) = rest.windows(ANCHOR.len()).position(|w| w == ANCHOR) else {
                break;
            };
            if let Some(a) = seg.vaddr.checked_add((pos + rel) as u64) {
                out.push(a);
            }
            pos += rel + 1;
            if out.len() > 64 {
                return out;
            }
        }
    }
    out
}

/// `R_X86_64_RELATIVE` addends by target address. Linkers may leave a pointer slot zero in the
/// file of a PIE and put the link-time value only in the relocation's addend. Built on first
/// need: the Go linkers seen so far write the value into the file as well.
pub(crate) struct Relocs {
    addends: OnceCell<HashMap<u64, u64>>,
}

impl Relocs {
    pub(crate) fn new() -> Relocs {
        Relocs {
            addends: OnceCell::new(),
        }
    }

    fn load(elf: &ElfFile) -> HashMap<u64, u64> {
        let mut addends = HashMap::new();
        if !elf.is_pie() {
            return addends;
        }
        for section in elf.sections() {
            if !section.name.starts_with(".rela") {
                continue;
            }
            let Some(data) = elf.section_data(&section.name) else {
                continue;
            };
            for rel in data.chunks_exact(24) {
                let word = |i: usize| {
                    rel.get(i * 8..i * 8 + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_le_bytes)
                        .unwrap_or(0)
                };
                if word(1) & 0xffff_ffff == R_X86_64_RELATIVE {
                    addends.insert(word(0), word(2));
                }
            }
        }
        addends
    }

    /// The pointer stored at `addr`, or its relocation addend when the file holds 0.
    pub(crate) fn read_ptr(&self, elf: &ElfFile, addr: u64) -> Option<u64> {
        let stored = elf.read_u64(addr)?;
        if stored != 0 {
            return Some(stored);
        }
        let addends = self.addends.get_or_init(|| Relocs::load(elf));
        Some(addends.get(&addr).copied().unwrap_or(0))
    }
}
