//! The ELF files mapped into the target (executable and shared libraries): their load segments
//! (to turn a runtime address into the file's own address, whatever the PIE/ASLR bias), their
//! call-frame information, symbols and DWARF line tables. Parsed once per file and cached.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindSection,
};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use gobinary::buildinfo::BuildInfo;
use gobinary::elf::ElfFile;
use gobinary::pclntab::{Func, Pclntab};

use crate::procmaps::{self, Mapping};

/// How to recover one register of the caller, from the CFI row of a pc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedReg {
    /// Saved on the stack at CFA + offset.
    AtCfaOffset(i64),
    /// Not changed by this frame.
    Same,
    /// Undefined: for the return address, the outermost frame.
    Undefined,
    /// arm64's return address while it is still in the link register x30 (no rule for it in the
    /// row: a leaf, or code before its prologue saved it).
    InLinkRegister,
    /// A rule this unwinder does not evaluate (expressions, other registers).
    Unknown,
}

/// The part of a CFI row the unwinder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRule {
    /// CFA = register (DWARF number, see [`CfiRegs`]) + offset.
    pub cfa_reg: u16,
    pub cfa_offset: i64,
    pub ra: SavedReg,
    /// The frame-pointer register (rbp, x29).
    pub fp: SavedReg,
}

/// An architecture's DWARF register numbers for the unwinder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CfiRegs {
    pub sp: u16,
    pub fp: u16,
    /// The return address column (x86_64: the pseudo-register 16; arm64: x30).
    pub ra: u16,
    /// The return address is in a register until a prologue saves it (arm64), so a row without
    /// a rule for it means "still in the register", not "undefined".
    pub link_register: bool,
}

impl CfiRegs {
    pub const X86_64: CfiRegs = CfiRegs {
        sp: 7,
        fp: 6,
        ra: 16,
        link_register: false,
    };
    pub const AARCH64: CfiRegs = CfiRegs {
        sp: 31,
        fp: 29,
        ra: 30,
        link_register: true,
    };
}

#[derive(Debug, Clone)]
struct Symbol {
    addr: u64,
    size: u64,
    name: String,
}

/// A symbol containing an address, with the offset of the address in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolHit<'a> {
    pub name: &'a str,
    pub offset: u64,
    /// The symbol's size; 0 when the symbol table does not say.
    pub size: u64,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct SectionAddrs {
    eh_frame: u64,
    eh_frame_hdr: u64,
    text: u64,
    got: u64,
}

/// One ELF file's unwind and symbol data (owned, so it outlives the file buffer).
pub struct ElfModule {
    /// File name, for the `library` field of frames.
    pub name: String,
    segments: Vec<Segment>,
    eh_frame: Vec<u8>,
    eh_frame_hdr: Vec<u8>,
    debug_frame: Vec<u8>,
    addrs: SectionAddrs,
    symbols: Vec<Symbol>,
    /// DWARF lines and inlined functions; None without debug info or if it does not load.
    pub dwarf: Option<addr2line::Loader>,
    /// A Go executable's (or Go shared library's) function table: names in stripped binaries,
    /// and the runtime's own marks of outermost and stack-switching functions.
    go: Option<Pclntab>,
}

impl std::fmt::Debug for ElfModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElfModule")
            .field("name", &self.name)
            .field("symbols", &self.symbols.len())
            .field("dwarf", &self.dwarf.is_some())
            .finish_non_exhaustive()
    }
}

impl ElfModule {
    pub fn open(path: &Path, name: String) -> anyhow::Result<ElfModule> {
        let data = std::fs::read(path)?;
        let file = object::File::parse(&*data)?;
        let segments = file
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                Segment {
                    offset,
                    vaddr: s.address(),
                    filesz,
                }
            })
            .collect();
        let section = |name: &str| -> (Vec<u8>, u64) {
            file.section_by_name(name)
                .and_then(|s| Some((s.uncompressed_data().ok()?.into_owned(), s.address())))
                .unwrap_or_default()
        };
        let (eh_frame, eh_frame_addr) = section(".eh_frame");
        let (eh_frame_hdr, eh_frame_hdr_addr) = section(".eh_frame_hdr");
        let (debug_frame, _) = section(".debug_frame");
        let addrs = SectionAddrs {
            eh_frame: eh_frame_addr,
            eh_frame_hdr: eh_frame_hdr_addr,
            text: file.section_by_name(".text").map_or(0, |s| s.address()),
            got: file.section_by_name(".got").map_or(0, |s| s.address()),
        };
        let symbols = collect_symbols(&file);
        let is_go = file.section_by_name(".go.buildinfo").is_some();
        let has_dwarf = file.section_by_name(".debug_info").is_some()
            || file.section_by_name(".gnu_debuglink").is_some();
        // The loader maps the file again and follows .gnu_debuglink to separate debug files.
        let dwarf = if has_dwarf {
            addr2line::Loader::new(path).ok()
        } else {
            None
        };
        let go = if is_go { go_functions(data) } else { None };
        Ok(ElfModule {
            name,
            segments,
            eh_frame,
            eh_frame_hdr,
            debug_frame,
            addrs,
            symbols,
            dwarf,
            go,
        })
    }

    /// The Go function containing `svma`, for Go binaries.
    pub fn go_func(&self, svma: u64) -> Option<Func> {
        self.go.as_ref()?.func_at(svma)
    }

    /// The size of a Go function's frame at `svma` (its pcsp table), for Go binaries.
    pub fn go_frame_size(&self, svma: u64) -> Option<i64> {
        self.go.as_ref()?.sp_delta_at(svma)
    }

    /// The file's own (link-time) address of a byte at `file_offset`.
    fn svma_of_offset(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| file_offset >= s.offset && file_offset - s.offset < s.filesz)
            .map(|s| file_offset - s.offset + s.vaddr)
    }

    /// The symbol containing `svma` (symbols with no size match up to the next symbol).
    pub fn symbol(&self, svma: u64) -> Option<SymbolHit<'_>> {
        let idx = self
            .symbols
            .partition_point(|s| s.addr <= svma)
            .checked_sub(1)?;
        let sym = self.symbols.get(idx)?;
        let offset = svma - sym.addr;
        if sym.size != 0 && offset >= sym.size {
            return None;
        }
        Some(SymbolHit {
            name: &sym.name,
            offset,
            size: sym.size,
        })
    }

    /// The CFI row for `svma`, from .eh_frame (through .eh_frame_hdr's sorted table when present),
    /// else .debug_frame (Go's own functions have only that).
    pub fn frame_rule(
        &self,
        svma: u64,
        ctx: &mut UnwindContext<usize>,
        regs: CfiRegs,
    ) -> Option<FrameRule> {
        self.eh_frame_rule(svma, ctx, regs)
            .or_else(|| self.debug_frame_rule(svma, ctx, regs))
    }

    fn eh_frame_rule(
        &self,
        svma: u64,
        ctx: &mut UnwindContext<usize>,
        regs: CfiRegs,
    ) -> Option<FrameRule> {
        if self.eh_frame.is_empty() {
            return None;
        }
        let eh = EhFrame::new(&self.eh_frame, LittleEndian);
        let bases = BaseAddresses::default()
            .set_eh_frame(self.addrs.eh_frame)
            .set_eh_frame_hdr(self.addrs.eh_frame_hdr)
            .set_text(self.addrs.text)
            .set_got(self.addrs.got);
        let table = if self.eh_frame_hdr.is_empty() {
            None
        } else {
            EhFrameHdr::new(&self.eh_frame_hdr, LittleEndian)
                .parse(&bases, 8)
                .ok()
        };
        let row = match table.as_ref().and_then(|t| t.table()) {
            Some(t) => t
                .unwind_info_for_address(&eh, &bases, ctx, svma, EhFrame::cie_from_offset)
                .ok()?,
            None => eh
                .unwind_info_for_address(&bases, ctx, svma, EhFrame::cie_from_offset)
                .ok()?,
        };
        to_rule(row, regs)
    }

    fn debug_frame_rule(
        &self,
        svma: u64,
        ctx: &mut UnwindContext<usize>,
        regs: CfiRegs,
    ) -> Option<FrameRule> {
        if self.debug_frame.is_empty() {
            return None;
        }
        let mut df = DebugFrame::new(&self.debug_frame, LittleEndian);
        df.set_address_size(8);
        let row = df
            .unwind_info_for_address(
                &BaseAddresses::default(),
                ctx,
                svma,
                DebugFrame::cie_from_offset,
            )
            .ok()?;
        to_rule(row, regs)
    }
}

/// The function table of a Go binary; None if it does not parse (then its Go frames are named and
/// unwound like any other code, from its symbols and CFI).
fn go_functions(data: Vec<u8>) -> Option<Pclntab> {
    let elf = ElfFile::parse(data).ok()?;
    let version = BuildInfo::from_elf(&elf).ok()?.version;
    Pclntab::from_elf(&elf, version).ok()
}

fn to_rule(row: &gimli::UnwindTableRow<usize>, regs: CfiRegs) -> Option<FrameRule> {
    let CfaRule::RegisterAndOffset { register, offset } = row.cfa() else {
        return None;
    };
    let saved = |rule: RegisterRule<usize>| match rule {
        RegisterRule::Offset(n) => SavedReg::AtCfaOffset(n),
        RegisterRule::SameValue => SavedReg::Same,
        RegisterRule::Undefined => SavedReg::Undefined,
        _ => SavedReg::Unknown,
    };
    let fp = match row.register(Register(regs.fp)) {
        // A callee-saved register without a rule keeps its value (x86_64 and AArch64 psABIs).
        RegisterRule::Undefined => SavedReg::Same,
        other => saved(other),
    };
    // gimli cannot tell an explicit DW_CFA_undefined from no rule: on arm64 no rule is far more
    // common (every leaf), and outermost frames are also known by name.
    let ra = match row.register(Register(regs.ra)) {
        RegisterRule::Undefined | RegisterRule::SameValue if regs.link_register => {
            SavedReg::InLinkRegister
        }
        other => saved(other),
    };
    Some(FrameRule {
        cfa_reg: register.0,
        cfa_offset: *offset,
        ra,
        fp,
    })
}

/// Function symbols from .symtab and .dynsym, sorted by address, one name per address (global
/// names and fewer leading underscores preferred: `pthread_mutex_lock` over `___pthread_mutex_lock`).
fn collect_symbols(file: &object::File<'_>) -> Vec<Symbol> {
    let mut syms: Vec<(Symbol, bool)> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            if name.is_empty() {
                return None;
            }
            Some((
                Symbol {
                    addr: s.address(),
                    size: s.size(),
                    name: name.to_string(),
                },
                s.is_global(),
            ))
        })
        .collect();
    let rank = |(s, global): &(Symbol, bool)| {
        let underscores = s.name.len() - s.name.trim_start_matches('_').len();
        (s.addr, !*global, underscores, s.name.len())
    };
    syms.sort_by_key(|a| rank(a));
    syms.dedup_by_key(|(s, _)| s.addr);
    syms.into_iter().map(|(s, _)| s).collect()
}

/// A mapping of an ELF module into the target.
#[derive(Debug, Clone)]
struct Mapped {
    start: u64,
    end: u64,
    offset: u64,
    module: Arc<ElfModule>,
}

/// The target's executable mappings with their modules; rebuilt from /proc/PID/maps when an
/// address falls outside all of them (a library loaded since).
#[derive(Debug, Default)]
pub struct AddressSpace {
    pid: u32,
    mapped: Vec<Mapped>,
    /// Parsed modules by path (or failure, not retried).
    cache: HashMap<String, Option<Arc<ElfModule>>>,
    refreshed: bool,
}

impl AddressSpace {
    pub fn new(pid: u32) -> AddressSpace {
        AddressSpace {
            pid,
            ..AddressSpace::default()
        }
    }

    /// Re-reads /proc/PID/maps (at most once per `begin_batch`).
    fn refresh(&mut self) {
        if self.refreshed {
            return;
        }
        self.refreshed = true;
        let Ok(maps) = procmaps::mappings(self.pid) else {
            return;
        };
        let mut mapped = Vec::new();
        for m in maps.iter().filter(|m| m.executable) {
            let Some(path) = &m.path else { continue };
            if let Some(module) = self.module(m, path) {
                mapped.push(Mapped {
                    start: m.start,
                    end: m.end,
                    offset: m.offset,
                    module,
                });
            }
        }
        self.mapped = mapped;
    }

    fn module(&mut self, m: &Mapping, path: &str) -> Option<Arc<ElfModule>> {
        if let Some(cached) = self.cache.get(path) {
            return cached.clone();
        }
        let name = Path::new(path)
            .file_name()
            .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned());
        let module = m
            .open_paths(self.pid)
            .iter()
            .find_map(|p| ElfModule::open(p, name.clone()).ok())
            .map(Arc::new);
        self.cache.insert(path.to_string(), module.clone());
        module
    }

    /// Allows one more re-read of /proc/PID/maps (call once per stack walk).
    pub fn begin_batch(&mut self) {
        self.refreshed = false;
    }

    /// The module mapped at `addr` and the file's own address for it.
    pub fn lookup(&mut self, addr: u64) -> Option<(Arc<ElfModule>, u64)> {
        if let Some(hit) = self.find(addr) {
            return Some(hit);
        }
        self.refresh();
        self.find(addr)
    }

    fn find(&self, addr: u64) -> Option<(Arc<ElfModule>, u64)> {
        let m = self
            .mapped
            .iter()
            .find(|m| addr >= m.start && addr < m.end)?;
        let svma = m.module.svma_of_offset(addr - m.start + m.offset)?;
        Some((m.module.clone(), svma))
    }
}
