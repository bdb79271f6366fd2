//! [`GoBinary`]: everything the agent needs from one executable, read once.

use std::path::Path;

use crate::buildinfo::BuildInfo;
use crate::elf::{Arch, ElfFile};
use crate::layout::{LayoutSource, RuntimeLayout};
use crate::objlayout::{self, ObjectLayout};
use crate::pclntab::Pclntab;
use crate::runtime_vars::RuntimeVars;
use crate::{layout, runtime_vars, waitreason, Error, Result};

#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Use the nearest known layout table for a Go version newer than the tables.
    pub allow_nearest_layout: bool,
}

pub struct GoBinary {
    pub elf: ElfFile,
    pub build_info: BuildInfo,
    pub pclntab: Pclntab,
    pub layout: RuntimeLayout,
    pub layout_source: LayoutSource,
    /// Indexed by `g.waitreason`.
    pub wait_reasons: Vec<String>,
    pub vars: RuntimeVars,
    /// Offsets for context diagnosis; None when neither DWARF nor a table has them.
    pub objects: Option<ObjectLayout>,
    /// Heap and semaphore-table offsets (None: no DWARF and no table for this release).
    pub heap: Option<crate::heaplayout::HeapLayout>,
    /// `runtime.mheap_` and `runtime.semtable`, or why they could not be found.
    pub heap_vars: std::result::Result<crate::heap_vars::HeapVars, String>,
    /// `runtime.itabTable` (itabs built at run time), or why it could not be found.
    pub itab_table: std::result::Result<u64, String>,
}

impl GoBinary {
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<GoBinary> {
        let elf = ElfFile::open(path)?;
        GoBinary::from_elf(elf, opts)
    }

    /// Same as [`GoBinary::open`] for an already parsed file.
    pub fn from_elf(elf: ElfFile, opts: &OpenOptions) -> Result<GoBinary> {
        if !matches!(elf.arch(), Arch::X86_64 | Arch::Aarch64) {
            return Err(Error::UnsupportedArch(elf.arch_name().to_string()));
        }
        let build_info = BuildInfo::from_elf(&elf)?;
        let version = build_info.version;
        layout::check_supported(version)?;
        let pclntab = Pclntab::from_elf(&elf, version)?;
        let (layout, layout_source) = layout::for_binary(&elf, version, opts.allow_nearest_layout)?;
        let wait_reasons = waitreason::from_binary(&elf)
            .or_else(|| waitreason::from_table(version))
            .or_else(|| {
                if !opts.allow_nearest_layout {
                    return None;
                }
                layout::nearest_lower(version).map(|(_, t)| t.wait_reasons.clone())
            })
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "runtime.waitReasonStrings (no symbol, no signature match, no table for {})",
                    build_info.go_version_string
                ))
            })?;
        let vars = runtime_vars::locate(&elf, &pclntab)?;
        let objects = objlayout::for_binary(&elf, version, opts.allow_nearest_layout);
        let heap = crate::heaplayout::for_binary(&elf, version, opts.allow_nearest_layout);
        let heap_vars = crate::heap_vars::locate(&elf, &pclntab).map_err(|e| e.to_string());
        let itab_table = crate::itab_table::locate(&elf, &pclntab).map_err(|e| e.to_string());
        Ok(GoBinary {
            elf,
            build_info,
            pclntab,
            layout,
            layout_source,
            wait_reasons,
            vars,
            objects,
            heap,
            heap_vars,
            itab_table,
        })
    }
}
