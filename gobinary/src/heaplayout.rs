//! Offsets for reading the Go heap's own bookkeeping (`mheap_.allspans`, `mspan`) and the
//! semaphore table (`semtable`, `semaRoot`, `sudog`): what the leak analysis needs to tell which
//! heap objects exist and which sync object a blocked goroutine waits on.
//!
//! Same sources as [`crate::layout`]: the target's DWARF, else the generated tables
//! (`cargo xtask gen-layouts`). Field widths that changed between releases (`mspan.nelems` and
//! `freeindex` went from `uintptr` to `uint16` in 1.22) are derived from the layout itself, and
//! the `sudog` words that hold what a goroutine waits on (`c`, `elem`: one pointer up to 1.25,
//! a two-word `maybeTraceablePtr` from 1.26) are given as a range of bytes.

use crate::elf::ElfFile;
use crate::layout::{read_structs, StructInfo};
use crate::{Error, GoVersion, Result};

/// Entries of `runtime.semtable` (`semTabSize`, the same in every supported release).
pub const SEMTAB_SIZE: u64 = 251;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeapLayout {
    /// `mheap.allspans`: a `[]*mspan` slice header (every span ever created, any state).
    pub mheap_allspans: u64,
    pub mspan_start_addr: u64,
    pub mspan_npages: u64,
    pub mspan_freeindex: u64,
    pub mspan_nelems: u64,
    /// Bytes of `nelems`, `freeindex` and `freeIndexForScan`: 8 (`uintptr`) or 2 (`uint16`).
    pub mspan_index_width: u64,
    /// `freeIndexForScan` (1.20+): slots below it are allocated as far as a scan is concerned.
    pub mspan_free_index_for_scan: Option<u64>,
    pub mspan_alloc_bits: u64,
    pub mspan_spanclass: u64,
    pub mspan_state: u64,
    pub mspan_elemsize: u64,
    /// `mspan.specials` (finalizers, cleanups: roots of the GC).
    pub mspan_specials: u64,
    /// Bytes of an `mspan` to read: enough to cover every field above.
    pub mspan_read_size: u64,
    pub sudog_g: u64,
    /// `sudog.elem`: start and byte length (8, or 16 for a `maybeTraceablePtr`).
    pub sudog_elem: u64,
    pub sudog_elem_len: u64,
    /// `sudog.elem`'s address word (the `vu` of a `maybeTraceablePtr`, else `elem` itself).
    pub sudog_elem_addr: u64,
    /// `sudog.c`: start and byte length (the address word is `ObjectLayout::sudog_c`).
    pub sudog_c_start: u64,
    pub sudog_c_len: u64,
    /// Treap children in a `semaRoot` (`prev`/`next`) and the same-address list (`waitlink`).
    pub sudog_prev: u64,
    pub sudog_size: u64,
    pub semaroot_treap: u64,
    /// Bytes per `semtable` entry (a `semaRoot` padded to a cache line); from the symbol's size.
    pub semtable_entry_size: Option<u64>,
    /// `special.next`, `special.offset`, `special.kind`: the list of a span's specials.
    pub special_next: u64,
    pub special_offset: u64,
    pub special_kind: u64,
    pub special_size: u64,
    /// `moduledata.data`, `.edata`, `.bss`, `.ebss` and the pointer masks the runtime builds
    /// for them at start-up (`gcdatamask`, `gcbssmask`: `bitvector{n int32, bytedata *uint8}`,
    /// one bit per word): what the GC scans of the globals, and only that.
    #[serde(default)]
    pub moduledata_data: Option<u64>,
    #[serde(default)]
    pub moduledata_edata: Option<u64>,
    #[serde(default)]
    pub moduledata_bss: Option<u64>,
    #[serde(default)]
    pub moduledata_ebss: Option<u64>,
    #[serde(default)]
    pub moduledata_gcdatamask: Option<u64>,
    #[serde(default)]
    pub moduledata_gcbssmask: Option<u64>,
    #[serde(default)]
    pub bitvector_bytedata: Option<u64>,
}

/// Reads the offsets from the binary's DWARF (and `semtable`'s entry size from `.symtab`).
pub fn from_dwarf(elf: &ElfFile) -> Result<HeapLayout> {
    let wanted = [
        "runtime.mheap",
        "runtime.mspan",
        "runtime.sudog",
        "runtime.semaRoot",
        "runtime.special",
        "runtime.maybeTraceablePtr",
        "runtime.moduledata",
        "runtime.bitvector",
    ];
    let structs = read_structs(elf, &wanted)?;
    let get = |name: &str| {
        structs
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("DWARF type {name}")))
    };
    let field = |s: &StructInfo, name: &str| -> Result<u64> {
        s.fields
            .get(name)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("field {}.{name} in DWARF", s.name)))
    };
    let (mheap, span, sudog) = (
        get("runtime.mheap")?,
        get("runtime.mspan")?,
        get("runtime.sudog")?,
    );
    let (root, special) = (get("runtime.semaRoot")?, get("runtime.special")?);
    // 1.26+: c and elem are two words (vp, vu); vu is the address.
    let (ptr_len, vu) = match structs.get("runtime.maybeTraceablePtr") {
        Some(m) => (m.size, field(m, "vu")?),
        None => (8, 0),
    };
    let freeindex = field(span, "freeindex")?;
    let nelems = field(span, "nelems")?;
    let index_width = match nelems.checked_sub(freeindex) {
        Some(w @ (2 | 8)) => w,
        _ => {
            return Err(Error::Malformed {
                what: "DWARF",
                why: format!("mspan.freeindex at {freeindex} and nelems at {nelems}"),
            })
        }
    };
    let elem = field(sudog, "elem")?;
    let semtable_entry_size = elf
        .symbol("runtime.semtable")
        .map(|s| s.size / SEMTAB_SIZE)
        .filter(|&n| n >= root.size);
    let mut layout = HeapLayout {
        mheap_allspans: field(mheap, "allspans")?,
        mspan_start_addr: field(span, "startAddr")?,
        mspan_npages: field(span, "npages")?,
        mspan_freeindex: freeindex,
        mspan_nelems: nelems,
        mspan_index_width: index_width,
        mspan_free_index_for_scan: field(span, "freeIndexForScan").ok(),
        mspan_alloc_bits: field(span, "allocBits")?,
        mspan_spanclass: field(span, "spanclass")?,
        mspan_state: field(span, "state")?,
        mspan_elemsize: field(span, "elemsize")?,
        mspan_specials: field(span, "specials")?,
        mspan_read_size: 0,
        sudog_g: field(sudog, "g")?,
        sudog_elem: elem,
        sudog_elem_len: ptr_len,
        sudog_elem_addr: elem + vu,
        sudog_c_start: field(sudog, "c")?,
        sudog_c_len: ptr_len,
        sudog_prev: field(sudog, "prev")?,
        sudog_size: sudog.size,
        semaroot_treap: field(root, "treap")?,
        semtable_entry_size,
        special_next: field(special, "next")?,
        special_offset: field(special, "offset")?,
        special_kind: field(special, "kind")?,
        special_size: special.size,
        moduledata_data: None,
        moduledata_edata: None,
        moduledata_bss: None,
        moduledata_ebss: None,
        moduledata_gcdatamask: None,
        moduledata_gcbssmask: None,
        bitvector_bytedata: None,
    };
    let (md, bv) = (get("runtime.moduledata")?, get("runtime.bitvector")?);
    layout.moduledata_data = Some(field(md, "data")?);
    layout.moduledata_edata = Some(field(md, "edata")?);
    layout.moduledata_bss = Some(field(md, "bss")?);
    layout.moduledata_ebss = Some(field(md, "ebss")?);
    layout.moduledata_gcdatamask = Some(field(md, "gcdatamask")?);
    layout.moduledata_gcbssmask = Some(field(md, "gcbssmask")?);
    layout.bitvector_bytedata = Some(field(bv, "bytedata")?);
    layout.mspan_read_size = layout.span_fields_end();
    Ok(layout)
}

impl HeapLayout {
    /// One past the last byte of the `mspan` fields read.
    fn span_fields_end(&self) -> u64 {
        let w = self.mspan_index_width;
        [
            self.mspan_start_addr + 8,
            self.mspan_npages + 8,
            self.mspan_freeindex + w,
            self.mspan_nelems + w,
            self.mspan_free_index_for_scan.map_or(0, |o| o + w),
            self.mspan_alloc_bits + 8,
            self.mspan_spanclass + 1,
            self.mspan_state + 1,
            self.mspan_elemsize + 8,
            self.mspan_specials + 8,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// DWARF if present, else the generated table for this minor release (or the nearest older one
/// when `allow_nearest`). None: the leak analysis is unavailable for this binary.
pub fn for_binary(elf: &ElfFile, version: GoVersion, allow_nearest: bool) -> Option<HeapLayout> {
    let table = crate::layout::table_for_arch(elf.arch(), version).and_then(|t| t.heap.clone());
    if elf.section(".debug_info").is_some() {
        if let Ok(mut l) = from_dwarf(elf) {
            // A binary with DWARF but no .symtab: the entry size is the same per release.
            if l.semtable_entry_size.is_none() {
                l.semtable_entry_size = table.as_ref().and_then(|t| t.semtable_entry_size);
            }
            return Some(l);
        }
    }
    if table.is_some() {
        return table;
    }
    if allow_nearest {
        return crate::layout::nearest_lower_for(elf.arch(), version)
            .and_then(|(_, t)| t.heap.clone());
    }
    None
}
