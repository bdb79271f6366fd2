//! Offsets for reading the runtime objects behind context diagnosis: `g.waiting`, `sudog`,
//! `hchan`, `moduledata.types`, and the runtime type metadata (`_type`/`abi.Type`, `itab`,
//! pointer and struct types).
//!
//! Same sources as [`crate::layout`]: the target's DWARF, else the generated tables
//! (`cargo xtask gen-layouts`). The struct and field names changed when the type metadata moved
//! to `internal/abi` (1.21/1.22), so each offset is looked up under every name it has had.

use crate::elf::ElfFile;
use crate::layout::{read_structs, StructInfo};
use crate::{Error, GoVersion, Result};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectLayout {
    pub g_waiting: u64,
    /// The word holding the `*hchan` (1.26+: the `vu` word of `maybeTraceableChan`).
    pub sudog_c: u64,
    pub sudog_is_select: u64,
    pub sudog_waitlink: u64,
    /// Link in the channel's wait queue (`recvq`/`sendq`).
    pub sudog_next: u64,
    pub hchan_qcount: u64,
    pub hchan_dataqsiz: u64,
    pub hchan_closed: u64,
    pub hchan_elemtype: u64,
    /// `waitq.first` of the receive and send queues.
    pub hchan_recvq: u64,
    pub hchan_sendq: u64,
    pub moduledata_types: u64,
    pub moduledata_etypes: u64,
    /// `sizeof(_type)`: where the kind-specific part of a type starts.
    pub type_size_of: u64,
    pub type_size: u64,
    pub type_tflag: u64,
    pub type_kind: u64,
    pub type_str: u64,
    pub itab_inter: u64,
    pub itab_type: u64,
    /// `itab.fun[0]`: 0 in an itab the runtime cached for a type that does not implement the
    /// interface (a failed `v.(I)`), which no interface value can hold. None in tables
    /// generated before it.
    #[serde(default)]
    pub itab_fun: Option<u64>,
    pub ptrtype_elem: u64,
    pub structtype_fields: u64,
    pub structfield_size_of: u64,
    pub structfield_name: u64,
    pub structfield_typ: u64,
    pub structfield_offset: u64,
    /// Offset of `err` in `context.cancelCtx` (the cancel probe's already-cancelled check).
    /// Not part of [`from_dwarf`] (package context's DWARF is far from the runtime's, and only
    /// precise mode needs it): see [`cancelctx_err`]. None in tables generated before it.
    #[serde(default)]
    pub cancelctx_err: Option<u64>,
}

/// Names a struct has had, newest first.
const TYPE: &[&str] = &["internal/abi.Type", "runtime._type"];
const ITAB: &[&str] = &["internal/abi.ITab", "runtime.itab"];
const PTRTYPE: &[&str] = &["internal/abi.PtrType", "runtime.ptrtype"];
const STRUCTTYPE: &[&str] = &["internal/abi.StructType", "runtime.structtype"];
const STRUCTFIELD: &[&str] = &["internal/abi.StructField", "runtime.structfield"];

/// Reads the offsets from the binary's DWARF.
pub fn from_dwarf(elf: &ElfFile) -> Result<ObjectLayout> {
    let mut wanted = vec![
        "runtime.g",
        "runtime.sudog",
        "runtime.hchan",
        "runtime.moduledata",
        "runtime.maybeTraceablePtr",
    ];
    for names in [TYPE, ITAB, PTRTYPE, STRUCTTYPE, STRUCTFIELD] {
        wanted.extend_from_slice(names);
    }
    let structs = read_structs(elf, &wanted)?;
    let one_of = |names: &[&str]| -> Result<&StructInfo> {
        names
            .iter()
            .find_map(|n| structs.get(*n))
            .ok_or_else(|| Error::NotFound(format!("DWARF type {}", names.join(" or "))))
    };
    // A field under any of the names it has had.
    let field = |s: &StructInfo, names: &[&str]| -> Result<u64> {
        names
            .iter()
            .find_map(|n| s.fields.get(*n).copied())
            .ok_or_else(|| {
                Error::NotFound(format!("field {}.{} in DWARF", s.name, names.join("|")))
            })
    };
    let g = one_of(&["runtime.g"])?;
    let sudog = one_of(&["runtime.sudog"])?;
    let hchan = one_of(&["runtime.hchan"])?;
    let md = one_of(&["runtime.moduledata"])?;
    let (typ, itab, ptr) = (one_of(TYPE)?, one_of(ITAB)?, one_of(PTRTYPE)?);
    let (st, sf) = (one_of(STRUCTTYPE)?, one_of(STRUCTFIELD)?);
    // 1.26+: `c` is a two-word maybeTraceableChan whose `vu` word is the source of truth.
    let chan_word = match structs.get("runtime.maybeTraceablePtr") {
        Some(m) => field(m, &["vu"])?,
        None => 0,
    };
    let add = |a: u64, b: u64| {
        a.checked_add(b).ok_or_else(|| Error::Malformed {
            what: "DWARF",
            why: "offset overflow in runtime.sudog".into(),
        })
    };
    Ok(ObjectLayout {
        g_waiting: field(g, &["waiting"])?,
        sudog_c: add(field(sudog, &["c"])?, chan_word)?,
        sudog_is_select: field(sudog, &["isSelect"])?,
        sudog_waitlink: field(sudog, &["waitlink"])?,
        sudog_next: field(sudog, &["next"])?,
        hchan_qcount: field(hchan, &["qcount"])?,
        hchan_dataqsiz: field(hchan, &["dataqsiz"])?,
        hchan_closed: field(hchan, &["closed"])?,
        hchan_elemtype: field(hchan, &["elemtype"])?,
        hchan_recvq: field(hchan, &["recvq"])?,
        hchan_sendq: field(hchan, &["sendq"])?,
        moduledata_types: field(md, &["types"])?,
        moduledata_etypes: field(md, &["etypes"])?,
        type_size_of: typ.size,
        type_size: field(typ, &["Size_", "size"])?,
        type_tflag: field(typ, &["TFlag", "tflag"])?,
        type_kind: field(typ, &["Kind_", "kind"])?,
        type_str: field(typ, &["Str", "str"])?,
        itab_inter: field(itab, &["Inter", "inter"])?,
        itab_type: field(itab, &["Type", "_type"])?,
        itab_fun: Some(field(itab, &["Fun", "fun"])?),
        ptrtype_elem: field(ptr, &["Elem", "elem"])?,
        structtype_fields: field(st, &["Fields", "fields"])?,
        structfield_size_of: sf.size,
        structfield_name: field(sf, &["Name", "name"])?,
        structfield_typ: field(sf, &["Typ", "typ"])?,
        structfield_offset: field(sf, &["Offset", "offset"])?,
        cancelctx_err: None,
    })
}

/// Offset of `err` in `context.cancelCtx` from the binary's DWARF (an `error` up to 1.24, an
/// `atomic.Value` from 1.25: either way its first word is non-zero once the context is
/// cancelled). NotFound when the binary has no DWARF or does not use package context.
pub fn cancelctx_err_from_dwarf(elf: &ElfFile) -> Result<u64> {
    let structs = read_structs(elf, &["context.cancelCtx"])?;
    structs
        .get("context.cancelCtx")
        .and_then(|s| s.fields.get("err").copied())
        .ok_or_else(|| Error::NotFound("context.cancelCtx.err in DWARF".into()))
}

/// `cancelCtx.err`'s offset: DWARF if present, else the generated table for this release (or
/// the nearest older one when `allow_nearest`).
pub fn cancelctx_err(elf: &ElfFile, version: GoVersion, allow_nearest: bool) -> Option<u64> {
    if elf.section(".debug_info").is_some() {
        if let Ok(off) = cancelctx_err_from_dwarf(elf) {
            return Some(off);
        }
    }
    let table = match crate::layout::table_for(version) {
        Some(t) => Some(t),
        None if allow_nearest => crate::layout::nearest_lower(version).map(|(_, t)| t),
        None => None,
    };
    table.and_then(|t| t.objects.as_ref()?.cancelctx_err)
}

/// DWARF if present, else the generated table for this minor release (or the nearest older one
/// when `allow_nearest`). None: context diagnosis is unavailable for this binary.
pub fn for_binary(elf: &ElfFile, version: GoVersion, allow_nearest: bool) -> Option<ObjectLayout> {
    if elf.section(".debug_info").is_some() {
        if let Ok(l) = from_dwarf(elf) {
            return Some(l);
        }
    }
    if let Some(t) = crate::layout::table_for_arch(elf.arch(), version) {
        return t.objects.clone();
    }
    if allow_nearest {
        return crate::layout::nearest_lower_for(elf.arch(), version)
            .and_then(|(_, t)| t.objects.clone());
    }
    None
}
