//! Go version and build settings from the `.go.buildinfo` blob (what `go version -m` prints).
//!
//! CONTRACT (implementation to be filled in):

use crate::elf::ElfFile;
use crate::{GoVersion, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// As written by the toolchain, e.g. `go1.25.5`.
    pub go_version_string: String,
    pub version: GoVersion,
    /// The main module path (`path` line), if the binary records one.
    pub main_path: Option<String>,
    /// `build` lines: `-ldflags`, `CGO_ENABLED`, `GOARCH`, `GOEXPERIMENT`, `-buildmode`, ...
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    pub fn from_elf(_elf: &ElfFile) -> Result<BuildInfo> {
        Err(crate::Error::NotGo("no Go build info (not implemented yet)".into()))
    }

    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}
