//! The ELF container: sections, load segments, symbols, and reads by link-time virtual address.
//!
//! A thin layer over the `object` crate that copies out what the rest of the crate needs, so
//! later stages never touch raw ELF structures and never index past the file's end.

use std::borrow::Cow;
use std::path::Path;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// Link-time virtual address (0 for sections not loaded).
    pub addr: u64,
    pub size: u64,
    /// Where the section's bytes are in the file, if it has any (`.bss` has none).
    pub file_range: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub file_offset: u64,
    pub filesz: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
    Other,
}

impl Arch {
    /// From an ELF header's `e_machine`.
    pub fn from_machine(e_machine: u16) -> Arch {
        match e_machine {
            62 => Arch::X86_64,
            183 => Arch::Aarch64,
            _ => Arch::Other,
        }
    }

    /// The architecture of the ELF file at `path` (its header only); None if it is not an ELF
    /// file or cannot be read.
    pub fn of_file(path: &Path) -> Option<Arch> {
        use std::io::Read;
        let mut header = [0u8; 20];
        std::fs::File::open(path)
            .ok()?
            .read_exact(&mut header)
            .ok()?;
        if header[..4] != *b"\x7fELF" || header[5] != 1 {
            return None; // not ELF, or not little-endian
        }
        Some(Arch::from_machine(u16::from_le_bytes([
            header[18], header[19],
        ])))
    }

    /// The architecture ctxprobe itself runs on (and so the kernel's).
    pub fn host() -> Arch {
        match std::env::consts::ARCH {
            "x86_64" => Arch::X86_64,
            "aarch64" => Arch::Aarch64,
            _ => Arch::Other,
        }
    }
}

pub struct ElfFile {
    data: Vec<u8>,
    arch: Arch,
    arch_name: String,
    is_pie: bool,
    sections: Vec<Section>,
    segments: Vec<Segment>,
    symbols: std::collections::HashMap<String, Symbol>,
}

impl ElfFile {
    pub fn open(path: &Path) -> Result<ElfFile> {
        let data = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        ElfFile::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<ElfFile> {
        let file = object::File::parse(&*data).map_err(|e| Error::NotElf(e.to_string()))?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(Error::NotElf(format!("{:?} file", file.format())));
        }
        let (arch, arch_name) = match file.architecture() {
            object::Architecture::X86_64 => (Arch::X86_64, "x86_64".to_string()),
            object::Architecture::Aarch64 => (Arch::Aarch64, "aarch64".to_string()),
            other => (Arch::Other, format!("{other:?}").to_lowercase()),
        };
        let is_pie = matches!(file.kind(), object::ObjectKind::Dynamic);
        let sections = file
            .sections()
            .filter_map(|s| {
                let name = s.name().ok()?.to_string();
                Some(Section {
                    name,
                    addr: s.address(),
                    size: s.size(),
                    file_range: s.file_range(),
                })
            })
            .collect();
        let segments = file
            .segments()
            .map(|s| {
                let (file_offset, filesz) = s.file_range();
                Segment {
                    vaddr: s.address(),
                    memsz: s.size(),
                    file_offset,
                    filesz,
                }
            })
            .collect();
        let mut symbols = std::collections::HashMap::new();
        for sym in file.symbols() {
            if let Ok(name) = sym.name() {
                if !name.is_empty() {
                    symbols.entry(name.to_string()).or_insert(Symbol {
                        addr: sym.address(),
                        size: sym.size(),
                    });
                }
            }
        }
        drop(file);
        Ok(ElfFile {
            data,
            arch,
            arch_name,
            is_pie,
            sections,
            segments,
            symbols,
        })
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// `x86_64`, `aarch64`, or what the ELF header says.
    pub fn arch_name(&self) -> &str {
        &self.arch_name
    }

    /// True for `ET_DYN` executables (PIE): the process adds a load bias to every address.
    pub fn is_pie(&self) -> bool {
        self.is_pie
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The section's bytes as stored in the file (compressed DWARF stays compressed; see
    /// [`ElfFile::section_data_decompressed`]).
    pub fn section_data(&self, name: &str) -> Option<&[u8]> {
        let (off, len) = self.section(name)?.file_range?;
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.data.get(start..end)
    }

    /// Section contents with ELF/zlib compression undone (Go compresses `.debug_*`).
    pub fn section_data_decompressed(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        let file = object::File::parse(&*self.data).ok()?;
        let section = file.section_by_name(name)?;
        match section.uncompressed_data().ok()? {
            Cow::Borrowed(b) => {
                // Re-borrow from self.data so the lifetime is ours, not the parser's.
                let (off, _) = section.file_range()?;
                let start = usize::try_from(off).ok()?;
                self.data
                    .get(start..start.checked_add(b.len())?)
                    .map(Cow::Borrowed)
            }
            Cow::Owned(v) => Some(Cow::Owned(v)),
        }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Lowest `PT_LOAD` virtual address, rounded down to a page: the base the load bias is
    /// measured from.
    pub fn first_load_vaddr(&self) -> Option<u64> {
        self.segments.iter().map(|s| s.vaddr & !0xfff).min()
    }

    /// A `.symtab` symbol's address and size (absent in stripped binaries).
    pub fn symbol(&self, name: &str) -> Option<Symbol> {
        self.symbols.get(name).copied()
    }

    pub fn has_symbols(&self) -> bool {
        !self.symbols.is_empty()
    }

    /// Bytes at a link-time virtual address, if they are backed by the file.
    pub fn read_vaddr(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let seg = self.segments.iter().find(|s| {
            addr >= s.vaddr
                && addr
                    .checked_add(len as u64)
                    .is_some_and(|e| e <= s.vaddr + s.filesz)
        })?;
        let start = usize::try_from(seg.file_offset.checked_add(addr - seg.vaddr)?).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }

    /// File offset of a link-time virtual address (what a uprobe is attached at).
    pub fn vaddr_to_file_offset(&self, addr: u64) -> Option<u64> {
        let seg = self
            .segments
            .iter()
            .find(|s| addr >= s.vaddr && addr < s.vaddr.saturating_add(s.filesz))?;
        seg.file_offset.checked_add(addr - seg.vaddr)
    }

    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let b = self.read_vaddr(addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::ElfFile;

    #[test]
    fn rejects_garbage_without_panicking() {
        for len in 0..256 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            assert!(ElfFile::parse(data).is_err());
        }
        let mut elfish = b"\x7fELF\x02\x01\x01\x00".to_vec();
        elfish.resize(64, 0xff);
        let _ = ElfFile::parse(elfish);
    }
}
