//! Go version and build settings from the `.go.buildinfo` blob (what `go version -m` prints).
//!
//! Format (Go's `src/debug/buildinfo/buildinfo.go`): a 16-byte aligned 32-byte header
//! `"\xff Go buildinf:"`, ptrSize, flags, then either (flags & 2, Go 1.18+) the version and the
//! modinfo as uvarint-length-prefixed strings right after the header, or (older toolchains)
//! two pointers to string headers at offsets 16 and 16+ptrSize.

use crate::elf::ElfFile;
use crate::{Error, GoVersion, Result};

const MAGIC: &[u8] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_BIG_ENDIAN: u8 = 0x1;
const FLAG_INLINE: u8 = 0x2;
/// Strings longer than this are treated as corruption (real modinfo is a few KiB).
const MAX_STRING: u64 = 1 << 24;

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
    pub fn from_elf(elf: &ElfFile) -> Result<BuildInfo> {
        let blob = find_blob(elf).ok_or_else(|| {
            Error::NotGo("no Go build info (no .go.buildinfo section or signature)".into())
        })?;
        let (version_string, modinfo) = read_strings(elf, blob)?;
        let version = GoVersion::parse(&version_string).ok_or_else(|| Error::Malformed {
            what: "Go build info",
            why: format!("unrecognised Go version string {version_string:?}"),
        })?;
        let (main_path, settings) = parse_modinfo(&modinfo);
        Ok(BuildInfo {
            go_version_string: version_string,
            version,
            main_path,
            settings,
        })
    }

    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The bytes from the header to the end of the section/segment that holds it.
fn find_blob(elf: &ElfFile) -> Option<&[u8]> {
    if let Some(data) = elf.section_data(".go.buildinfo") {
        if data.starts_with(MAGIC) {
            return Some(data);
        }
    }
    // No section headers (or a renamed section): scan the loaded segments like debug/buildinfo
    // does. The header is 16-byte aligned in virtual address space.
    for seg in elf.segments() {
        let start = usize::try_from(seg.file_offset).ok()?;
        let len = usize::try_from(seg.filesz).ok()?;
        let Some(bytes) = elf.data().get(start..start.saturating_add(len)) else {
            continue;
        };
        let skew = ((16 - (seg.vaddr % 16)) % 16) as usize;
        let mut pos = skew;
        while pos + HEADER_LEN <= bytes.len() {
            let found = bytes
                .get(pos..)?
                .windows(MAGIC.len())
                .position(|w| w == MAGIC);
            let Some(rel) = found else { break };
            let at = pos + rel;
            if (at - skew).is_multiple_of(16) && at + HEADER_LEN <= bytes.len() {
                return bytes.get(at..);
            }
            pos = at + 1;
        }
    }
    None
}

/// The Go version string and the raw modinfo.
fn read_strings(elf: &ElfFile, blob: &[u8]) -> Result<(String, String)> {
    let malformed = |why: &str| Error::Malformed {
        what: "Go build info",
        why: why.to_string(),
    };
    let ptr_size = *blob.get(14).ok_or_else(|| malformed("truncated header"))?;
    let flags = *blob.get(15).ok_or_else(|| malformed("truncated header"))?;
    if flags & FLAG_INLINE != 0 {
        let mut rest = blob
            .get(HEADER_LEN..)
            .ok_or_else(|| malformed("truncated header"))?;
        let version = read_varint_bytes(&mut rest).ok_or_else(|| malformed("bad version"))?;
        let modinfo = read_varint_bytes(&mut rest).unwrap_or_default();
        return Ok((lossy(version), strip_modinfo_sentinels(modinfo)));
    }
    // Pre-1.18: pointers to Go string headers.
    if flags & FLAG_BIG_ENDIAN != 0 || ptr_size != 8 {
        return Err(malformed(
            "pointer-format build info for a non-amd64 target",
        ));
    }
    let ptr_at = |off: usize| -> Option<u64> {
        Some(u64::from_le_bytes(blob.get(off..off + 8)?.try_into().ok()?))
    };
    let version_hdr = ptr_at(16).ok_or_else(|| malformed("truncated header"))?;
    let modinfo_hdr = ptr_at(24).ok_or_else(|| malformed("truncated header"))?;
    let version =
        read_string_header(elf, version_hdr).ok_or_else(|| malformed("bad version pointer"))?;
    let modinfo = read_string_header(elf, modinfo_hdr).unwrap_or_default();
    Ok((lossy(version), strip_modinfo_sentinels(modinfo)))
}

fn read_uvarint(buf: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f).checked_shl(7 * i)?;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn read_varint_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = read_uvarint(buf)?;
    if len > MAX_STRING {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    let bytes = buf.get(..len)?;
    *buf = buf.get(len..)?;
    Some(bytes)
}

fn read_string_header(elf: &ElfFile, addr: u64) -> Option<&[u8]> {
    let ptr = elf.read_u64(addr)?;
    let len = elf.read_u64(addr.checked_add(8)?)?;
    if len > MAX_STRING {
        return None;
    }
    elf.read_vaddr(ptr, usize::try_from(len).ok()?)
}

/// The linker wraps modinfo in 16-byte binary sentinels (`cmd/go/internal/modload`), so
/// they must be cut before the bytes are decoded as text.
fn strip_modinfo_sentinels(b: &[u8]) -> String {
    if b.len() >= 33 && b.get(b.len() - 17) == Some(&b'\n') {
        if let Some(inner) = b.get(16..b.len() - 16) {
            return lossy(inner);
        }
    }
    lossy(b)
}

/// `path`, and `build` key=value lines (values may be Go-quoted).
fn parse_modinfo(modinfo: &str) -> (Option<String>, Vec<(String, String)>) {
    let mut main_path = None;
    let mut settings = Vec::new();
    for line in modinfo.lines() {
        let Some((kind, rest)) = line.split_once('\t') else {
            continue;
        };
        match kind {
            "path" => main_path = Some(rest.to_string()),
            "build" => {
                if let Some((key, value)) = split_setting(rest) {
                    settings.push((key, value));
                }
            }
            _ => {}
        }
    }
    (main_path, settings)
}

fn split_setting(s: &str) -> Option<(String, String)> {
    let (key, rest) = if s.starts_with('"') {
        let (key, used) = unquote(s)?;
        (key, s.get(used..)?.strip_prefix('=')?)
    } else {
        let (k, v) = s.split_once('=')?;
        (k.to_string(), v)
    };
    let value = if rest.starts_with('"') {
        unquote(rest)?.0
    } else {
        rest.to_string()
    };
    Some((key, value))
}

/// A Go double-quoted string at the start of `s`: the value and the bytes consumed. Handles the
/// escapes `strconv.Quote` emits for build settings (`\"`, `\\`, `\n`, `\t`, `\xNN`).
fn unquote(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'x' => {
                    let hi = chars.next()?.1.to_digit(16)?;
                    let lo = chars.next()?.1.to_digit(16)?;
                    out.push(char::from((hi * 16 + lo) as u8));
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modinfo_lines() {
        let m = "path\texample.com/x\nmod\texample.com/x\t(devel)\t\nbuild\t-ldflags=\"-s -w\"\n\
                 build\tCGO_ENABLED=0\nbuild\t\"we ird\"=\"a\\\"b\"\n";
        let (path, settings) = parse_modinfo(m);
        assert_eq!(path.as_deref(), Some("example.com/x"));
        assert_eq!(
            settings,
            vec![
                ("-ldflags".to_string(), "-s -w".to_string()),
                ("CGO_ENABLED".to_string(), "0".to_string()),
                ("we ird".to_string(), "a\"b".to_string()),
            ]
        );
    }

    #[test]
    fn uvarint_never_panics() {
        let mut b: &[u8] = &[0xff; 20];
        assert_eq!(read_uvarint(&mut b), None);
        let mut b: &[u8] = &[0x80, 0x01];
        assert_eq!(read_uvarint(&mut b), Some(128));
    }
}
