//! Reads what ctxprobe needs from a Go executable, without running it.
//!
//! Everything here parses untrusted bytes (a binary somebody else built, possibly truncated or
//! hostile): every function returns `Result`/`Option` and must never panic, whatever the input.
//!
//! Addresses in this crate are *link-time virtual addresses* as written in the ELF file. The
//! caller adds the load bias of a running (PIE) process.
//!
//! Modules, one job each:
//! - [`elf`]: the ELF container (sections, segments, symbols, reads by virtual address).
//! - [`buildinfo`]: Go version and build settings from `.go.buildinfo`.
//! - [`pclntab`]: function table, symbolization with inlined frames, function lookup by name.
//! - [`layout`]: runtime struct field offsets (from the binary's DWARF, else generated tables).
//! - [`objlayout`]: offsets of sudog, hchan, moduledata and runtime type metadata.
//! - [`rtype`]: runtime type metadata (names, kinds, struct fields) and context itabs, read
//!   through a [`rtype::Memory`].
//! - [`waitreason`]: the runtime's own wait-reason strings and status names.
//! - [`heaplayout`], [`heap_vars`]: heap spans and the semaphore table (leak analysis).
//! - [`runtime_vars`]: addresses of runtime variables (`allgs`, `allglen`) even when stripped.
//! - [`itab_table`]: where `runtime.itabTable` (itabs built at run time) is, even when stripped.
//! - [`prologue`]: where a Go function's prologue ends (for cheap, emulated uprobes).
//! - [`arm64`]: the few arm64 instructions read in Go code (global addressing, prologues).
//! - [`gobinary`]: [`GoBinary`], the facade the agent uses.

pub mod arm64;
pub mod buildinfo;
pub mod elf;
pub mod gobinary;
pub mod heap_vars;
pub mod heaplayout;
pub mod itab_table;
pub mod layout;
pub mod objlayout;
pub mod pclntab;
pub mod prologue;
pub mod rtype;
pub mod runtime_vars;
pub mod waitreason;

pub use gobinary::GoBinary;

/// Everything that can go wrong reading a Go binary. Messages are one line, for users.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not an ELF executable: {0}")]
    NotElf(String),
    #[error("not a Go program: {0}")]
    NotGo(String),
    #[error("unsupported architecture {0} (ctxprobe supports x86_64 and aarch64)")]
    UnsupportedArch(String),
    #[error("unsupported Go version {version}: {why}")]
    UnsupportedGoVersion { version: String, why: String },
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("{0} not found in the binary")]
    NotFound(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A Go release as `major.minor.patch` (`go1.25.5` → 1, 25, 5). Pre-releases (`go1.26rc1`)
/// carry patch 0.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    /// Parses `go1.25.5`, `go1.21`, `go1.26rc1`, `go1.22.10 X:boringcrypto`, `devel go1.27-abc…`.
    pub fn parse(s: &str) -> Option<GoVersion> {
        let s = s.trim();
        let start = s.find("go1.")?;
        let rest = &s[start + 2..];
        let mut nums = [0u32; 3];
        let mut idx = 0;
        let mut cur: Option<u32> = None;
        for ch in rest.chars() {
            if let Some(d) = ch.to_digit(10) {
                cur = Some(cur.unwrap_or(0).checked_mul(10)?.checked_add(d)?);
            } else if ch == '.' && idx < 2 {
                nums[idx] = cur?;
                idx += 1;
                cur = None;
            } else {
                break;
            }
        }
        if let Some(c) = cur {
            nums[idx] = c;
        } else if idx < 2 {
            return None;
        }
        Some(GoVersion {
            major: nums[0],
            minor: nums[1],
            patch: nums[2],
        })
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::GoVersion;

    #[test]
    fn parses_versions() {
        let v = |s| GoVersion::parse(s);
        assert_eq!(
            v("go1.25.5"),
            Some(GoVersion {
                major: 1,
                minor: 25,
                patch: 5
            })
        );
        assert_eq!(
            v("go1.21"),
            Some(GoVersion {
                major: 1,
                minor: 21,
                patch: 0
            })
        );
        assert_eq!(
            v("go1.26rc1"),
            Some(GoVersion {
                major: 1,
                minor: 26,
                patch: 0
            })
        );
        assert_eq!(
            v("go1.22.10 X:boringcrypto"),
            Some(GoVersion {
                major: 1,
                minor: 22,
                patch: 10
            })
        );
        assert_eq!(
            v("devel go1.27-abcdef"),
            Some(GoVersion {
                major: 1,
                minor: 27,
                patch: 0
            })
        );
        assert_eq!(v("nonsense"), None);
        assert_eq!(v("go1."), None);
        assert_eq!(v("go1.99999999999999999999"), None);
    }
}
