//! [`GoBinary`]: everything the agent needs from one executable, read once.
//!
//! CONTRACT (implementation to be filled in).

use std::path::Path;

use crate::buildinfo::BuildInfo;
use crate::elf::ElfFile;
use crate::layout::{LayoutSource, RuntimeLayout};
use crate::pclntab::Pclntab;
use crate::runtime_vars::RuntimeVars;
use crate::Result;

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
}

impl GoBinary {
    pub fn open(path: &Path, _opts: &OpenOptions) -> Result<GoBinary> {
        let _elf = ElfFile::open(path)?;
        Err(crate::Error::NotGo("not implemented yet".into()))
    }
}
