//! The Go function table (`.gopclntab`): function lookup by address and by name, and
//! symbolization of a PC into logical frames, with inlined calls expanded like the runtime's
//! own traceback does. Present in stripped binaries, so this is the one symbolizer ctxprobe uses.
//!
//! Supported formats: pcHeader magic `0xfffffff0` (Go 1.18/1.19) and `0xfffffff1` (Go 1.20+).
//! The layout is described in `src/runtime/symtab.go` and `src/internal/abi/symtab.go` of each
//! toolchain; the inline-tree walk mirrors `runtime.inlineUnwinder` (1.21+) and the equivalent
//! loop in `gentraceback` (1.19), which are the same algorithm.
//!
//! Everything read from the file is copied into owned buffers and every offset is
//! bounds-checked; loops are capped by the size of the data they walk.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::elf::ElfFile;
use crate::{Error, GoVersion, Result};

/// One logical frame, as the runtime's traceback prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Frame {
    /// Fully qualified Go function name (`main.(*server).handle`, `sync.(*Mutex).Lock`).
    pub func: String,
    pub file: String,
    pub line: u32,
    /// The runtime elides frames of compiler-generated wrappers (funcID wrapper) in tracebacks.
    pub wrapper: bool,
    /// True for frames that come from the inline tree (not a physical call frame).
    pub inlined: bool,
}

/// A physical function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Func {
    pub name: String,
    /// Link-time address of the first instruction.
    pub entry: u64,
    /// One past the last instruction.
    pub end: u64,
    /// Raw `abi.FuncID` (0 = normal).
    pub func_id: u8,
    /// An ABI0/ABIInternal wrapper or other compiler-generated wrapper (funcID wrapper).
    pub wrapper: bool,
    /// Raw `abi.FuncFlag` bits (see [`Func::is_top_frame`] and [`Func::writes_sp`]).
    pub flag: u8,
    /// `_func.args`: bytes of arguments above its return address (incl. register-arg spill
    /// slots); negative for variadic assembly functions.
    pub args: i32,
}

/// `abi.FuncFlagTopFrame` and `abi.FuncFlagSPWrite`: the same bits in every supported release
/// (`funcFlag_TOPFRAME`, `funcFlag_SPWRITE` in Go 1.19's runtime/symtab.go).
const FUNC_FLAG_TOP_FRAME: u8 = 1;
const FUNC_FLAG_SP_WRITE: u8 = 2;

impl Func {
    /// The runtime marks the outermost function of a stack (`runtime.mstart`, `runtime.goexit`,
    /// `runtime.rt0_go`, the signal trampoline): nothing called it.
    pub fn is_top_frame(&self) -> bool {
        self.flag & FUNC_FLAG_TOP_FRAME != 0
    }

    /// The function writes SP (switches stacks: `runtime.mcall`, `runtime.systemstack`,
    /// `runtime.asmcgocall`, ...): its caller cannot be found from its frame size.
    pub fn writes_sp(&self) -> bool {
        self.flag & FUNC_FLAG_SP_WRITE != 0
    }
}

const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
const HEADER_LEN: usize = 72;
/// `abi.PCDATA_InlTreeIndex` and `abi.FUNCDATA_InlTree` (unchanged since Go 1.12).
const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u32 = 3;
/// `abi.PCDATA_StackMapIndex`, `abi.FUNCDATA_ArgsPointerMaps`, `abi.FUNCDATA_LocalsPointerMaps`
/// (unchanged since Go 1.12).
const PCDATA_STACK_MAP_INDEX: u32 = 1;
const FUNCDATA_ARGS_POINTER_MAPS: u32 = 0;
const FUNCDATA_LOCALS_POINTER_MAPS: u32 = 1;
/// Larger stack maps than this many words are malformed.
const MAX_STACK_MAP_BITS: i32 = 1 << 20;

/// `abi.FUNCDATA_StackObjects` (unchanged since Go 1.12) and `abi.ArgsSizeUnknown`.
const FUNCDATA_STACK_OBJECTS: u32 = 2;
const ARGS_SIZE_UNKNOWN: i32 = i32::MIN;
/// Bytes of one `runtime.stackObjectRecord`; more records than this in one frame are malformed.
const STACK_OBJECT_RECORD: usize = 16;
const MAX_STACK_OBJECTS: u64 = 1 << 16;

/// One bitmap of a stack map: bit i says whether word i holds a live pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackBits {
    pub words: u32,
    pub bits: Vec<u8>,
}

impl StackBits {
    pub fn live(&self, i: u64) -> bool {
        i < u64::from(self.words)
            && usize::try_from(i / 8)
                .ok()
                .and_then(|b| self.bits.get(b))
                .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
    }
}

/// An address-taken stack variable that may hold pointers (`runtime.stackObjectRecord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackObject {
    /// Negative: from the frame's `varp` (locals); else from its `argp` (arguments).
    pub off: i32,
    pub size: u32,
    /// The leading bytes that may hold pointers (`ptrdata`).
    pub ptr_bytes: u32,
}

/// The GC's view of one frame at one pc (the runtime's `getStackMap` plus the frame size).
/// A `None` map is one the frame would need but that could not be found or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameMaps {
    /// The pcsp table's value: bytes between the frame's `sp` and its return address (amd64).
    pub sp_delta: u64,
    /// Live locals: word i is at `varp - 8 * words + 8 * i`.
    pub locals: Option<StackBits>,
    /// Live arguments (incl. register arguments' spill slots): word i at `argp + 8 * i`.
    pub args: Option<StackBits>,
    /// `_func.args`; None for reflect's stubs, whose size the runtime learns elsewhere.
    pub args_bytes: Option<u64>,
    pub objects: Option<Vec<StackObject>>,
}

/// Deeper inline chains than this are malformed (the compiler's own budget is far lower).
const MAX_INLINE_DEPTH: usize = 256;
/// moduledata offsets stable in every supported version (reference §1.5).
const MODULEDATA_FUNCNAMETAB: u64 = 8;
const MODULEDATA_TEXT: u64 = 176;

/// How function names are turned into the names the runtime prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrintNames {
    /// Go ≤ 1.20: the linker already wrote `[...]`; names are printed as stored.
    Raw,
    /// Go 1.21–1.26: `funcNameForPrint` replaces the outermost `[…]` with `[...]`.
    Shape,
    /// Go 1.27+: like `Shape`, also for generic methods of generic types (two bracket groups).
    ShapeMethods,
}

/// What differs between the pclntab versions we support.
#[derive(Debug, Clone, Copy)]
struct Format {
    /// Offset of `funcID` in `_func` (the fields after it follow in order).
    func_id_off: usize,
    /// Size of one `inlinedCall`.
    inl_size: usize,
    /// Offsets of `funcID`, `nameOff` and `parentPc` inside an `inlinedCall`.
    inl_func_id: usize,
    inl_name_off: usize,
    inl_parent_pc: usize,
    /// Offset of `gofunc` in `runtime.moduledata`.
    moduledata_gofunc: u64,
    print_names: PrintNames,
}

impl Format {
    fn for_version(magic: u32, v: GoVersion) -> Format {
        let minor = if v.major == 1 { v.minor } else { u32::MAX };
        let print_names = match minor {
            0..=20 => PrintNames::Raw,
            21..=26 => PrintNames::Shape,
            _ => PrintNames::ShapeMethods,
        };
        let moduledata_gofunc = match minor {
            0..=19 => 304,
            20..=26 => 320,
            _ => 344,
        };
        if magic == MAGIC_GO118 {
            // inlinedCall{parent i16, funcID u8, _ u8, file i32, line i32, func_ i32, parentPc i32}
            Format {
                func_id_off: 36,
                inl_size: 20,
                inl_func_id: 2,
                inl_name_off: 12,
                inl_parent_pc: 16,
                moduledata_gofunc,
                print_names,
            }
        } else {
            // inlinedCall{funcID u8, _ [3]u8, nameOff i32, parentPc i32, startLine i32}
            Format {
                func_id_off: 40,
                inl_size: 16,
                inl_func_id: 0,
                inl_name_off: 4,
                inl_parent_pc: 8,
                moduledata_gofunc,
                print_names,
            }
        }
    }
}

/// `abi.FuncIDWrapper`: always the last FuncID, renumbered as IDs were added.
fn wrapper_func_id(v: GoVersion, max_seen: u8) -> u8 {
    match (v.major, v.minor) {
        (1, 0..=21) => 21,
        (1, 22..=24) => 22,
        (1, 25..=27) => 23,
        // Unknown future version: the wrapper ID is the largest one, and every Go binary has
        // wrappers (ABI wrappers of runtime functions at least).
        _ => max_seen,
    }
}

/// A byte range `[start, end)` inside `Pclntab::data`.
#[derive(Debug, Clone, Copy)]
struct Range {
    start: usize,
    end: usize,
}

/// The parsed table. Owns copies of the bytes it needs.
pub struct Pclntab {
    /// The pclntab from its pcHeader to the end of the section (or segment).
    data: Vec<u8>,
    format: Format,
    wrapper_id: u8,
    text_start: u64,
    funcnametab: Range,
    cutab: Range,
    filetab: Range,
    pctab: Range,
    /// `pclntable`: functab followed by the `_func` records; funcOffs are relative to it.
    pclntable: Range,
    /// `(entryOff, funcOff)` for `nfunc + 1` entries (the last one marks the end of text).
    functab: Vec<(u32, u32)>,
    /// Bytes from `moduledata.gofunc` on (inline trees live there), if found.
    gofunc: Vec<u8>,
    names: OnceLock<HashMap<Box<str>, u32>>,
    /// Link-time address of `runtime.firstmoduledata`, if found.
    moduledata: Option<u64>,
    /// The binary's architecture (frame layouts differ; the pc quantum below follows it).
    arch: crate::elf::Arch,
    /// `pcHeader.minLC`, the instruction size quantum pc deltas are counted in (1 on amd64,
    /// 4 on arm64).
    pc_quantum: u8,
    /// Whether the runtime fixes saved frame pointers when it copies a goroutine's stack:
    /// always on amd64, on arm64 only from Go 1.21 (`adjustframe` in runtime/stack.go).
    frame_pointers_follow_copies: bool,
}

fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

fn malformed(why: impl Into<String>) -> Error {
    Error::Malformed {
        what: "pclntab",
        why: why.into(),
    }
}

/// Where the pclntab is and what bytes back it.
struct Located<'a> {
    addr: u64,
    bytes: &'a [u8],
}

fn locate(elf: &ElfFile) -> Result<Located<'_>> {
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let (Some(sec), Some(bytes)) = (elf.section(name), elf.section_data(name)) {
            if bytes.len() >= HEADER_LEN {
                return Ok(Located {
                    addr: sec.addr,
                    bytes,
                });
            }
        }
    }
    // No section headers: scan the loaded segments for a plausible pcHeader. The table runs at
    // most to the end of its segment.
    for seg in elf.segments() {
        let Some(seg_bytes) = segment_bytes(elf, seg.file_offset, seg.filesz) else {
            continue;
        };
        let mut off = 0usize;
        while let Some(rest) = seg_bytes.get(off..) {
            if rest.len() < HEADER_LEN {
                break;
            }
            if header_plausible(rest) {
                return Ok(Located {
                    addr: seg.vaddr.saturating_add(off as u64),
                    bytes: rest,
                });
            }
            // pcHeader is pointer-aligned.
            off += 8;
        }
    }
    Err(Error::NotFound(
        "pclntab (no .gopclntab section and no pcHeader magic)".into(),
    ))
}

fn segment_bytes(elf: &ElfFile, file_offset: u64, filesz: u64) -> Option<&[u8]> {
    let start = usize::try_from(file_offset).ok()?;
    let end = start.checked_add(usize::try_from(filesz).ok()?)?;
    elf.data().get(start..end)
}

/// `magic, 0, 0, minLC 1|2|4, ptrSize 8` and offsets that fit (what `debug/gosym` checks, plus
/// bounds so a stray magic in code or data is not taken).
fn header_plausible(b: &[u8]) -> bool {
    let Some(magic) = rd_u32(b, 0) else {
        return false;
    };
    if magic != MAGIC_GO118 && magic != MAGIC_GO120 {
        return false;
    }
    if b.get(4..8)
        .is_none_or(|h| h[0] != 0 || h[1] != 0 || !matches!(h[2], 1 | 2 | 4) || h[3] != 8)
    {
        return false;
    }
    let len = b.len() as u64;
    let nfunc = rd_u64(b, 8).unwrap_or(u64::MAX);
    (4..9).all(|i| rd_u64(b, 8 * i).is_some_and(|o| o >= HEADER_LEN as u64 && o < len))
        && nfunc > 0
        && nfunc < len / 8
}

/// `runtime.firstmoduledata`: the `.go.module` section (1.26+), else the word in a data
/// section that points at the pclntab and whose funcnametab pointer agrees.
fn find_moduledata(elf: &ElfFile, pcln_addr: u64, funcname_off: u64) -> Option<u64> {
    if let Some(sec) = elf.section(".go.module") {
        if elf.read_u64(sec.addr) == Some(pcln_addr) {
            return Some(sec.addr);
        }
    }
    let want_names = pcln_addr.checked_add(funcname_off)?;
    let check = |addr: u64| {
        elf.read_u64(addr) == Some(pcln_addr)
            && elf.read_u64(addr + MODULEDATA_FUNCNAMETAB) == Some(want_names)
    };
    let mut regions: Vec<(u64, &[u8])> = Vec::new();
    for name in [".noptrdata", ".data"] {
        if let (Some(sec), Some(bytes)) = (elf.section(name), elf.section_data(name)) {
            regions.push((sec.addr, bytes));
        }
    }
    if regions.is_empty() {
        for seg in elf.segments() {
            if let Some(bytes) = segment_bytes(elf, seg.file_offset, seg.filesz) {
                regions.push((seg.vaddr, bytes));
            }
        }
    }
    let needle = pcln_addr.to_le_bytes();
    for (base, bytes) in regions {
        // Data sections are 32-aligned in Go binaries, so word alignment is relative to base.
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            if chunk == needle {
                let addr = base.saturating_add(8 * i as u64);
                if check(addr) {
                    return Some(addr);
                }
            }
        }
    }
    None
}

impl Pclntab {
    /// Finds and parses the pclntab (section `.gopclntab`, `.data.rel.ro.gopclntab`, or a magic
    /// scan when section headers are missing).
    pub fn from_elf(elf: &ElfFile, version: GoVersion) -> Result<Pclntab> {
        let loc = locate(elf)?;
        let data = loc.bytes.to_vec();
        let magic = rd_u32(&data, 0).ok_or_else(|| malformed("truncated header"))?;
        if magic != MAGIC_GO118 && magic != MAGIC_GO120 {
            return Err(Error::UnsupportedGoVersion {
                version: version.to_string(),
                why: format!("pclntab magic {magic:#x} (supported: 0xfffffff0, 0xfffffff1)"),
            });
        }
        let min_lc = data.get(6).copied().unwrap_or(0);
        let ptr_size = data.get(7).copied().unwrap_or(0);
        if !matches!(min_lc, 1 | 4) || ptr_size != 8 {
            return Err(malformed(format!(
                "pcHeader minLC={min_lc} ptrSize={ptr_size} (expected 1 (amd64) or 4 (arm64), 8)"
            )));
        }
        let hdr = |i: usize| rd_u64(&data, 8 * i).ok_or_else(|| malformed("truncated header"));
        let nfunc = hdr(1)?;
        let text_start_hdr = hdr(3)?;
        let offs = [hdr(4)?, hdr(5)?, hdr(6)?, hdr(7)?, hdr(8)?];
        let len = data.len();
        let mut starts = [0usize; 5];
        for (s, o) in starts.iter_mut().zip(offs) {
            *s = usize::try_from(o)
                .ok()
                .filter(|&o| (HEADER_LEN..=len).contains(&o))
                .ok_or_else(|| malformed(format!("table offset {o:#x} outside {len:#x} bytes")))?;
        }
        // Each table ends where the next one starts (that is how the linker lays them out);
        // tolerate other orders by running to the end of the data.
        let range = |i: usize| {
            let start = starts[i];
            let end = starts
                .get(i + 1)
                .copied()
                .filter(|&e| e >= start)
                .unwrap_or(len);
            Range { start, end }
        };
        let (funcnametab, cutab, filetab, pctab) = (range(0), range(1), range(2), range(3));
        let pclntable = Range {
            start: starts[4],
            end: len,
        };

        let functab_len = usize::try_from(nfunc)
            .ok()
            .and_then(|n| n.checked_add(1)?.checked_mul(8))
            .filter(|&l| nfunc > 0 && l <= pclntable.end - pclntable.start)
            .ok_or_else(|| malformed(format!("nfunc {nfunc} does not fit the table")))?;
        let ft = &data[pclntable.start..pclntable.start + functab_len];
        let functab: Vec<(u32, u32)> = ft
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();

        let moduledata = find_moduledata(elf, loc.addr, offs[0]);
        let text_start = if text_start_hdr != 0 {
            text_start_hdr
        } else if let Some(t) = moduledata.and_then(|m| elf.read_u64(m + MODULEDATA_TEXT)) {
            t
        } else if let Some(sec) = elf.section(".text") {
            sec.addr
        } else {
            return Err(malformed(
                "pcHeader.textStart is 0 and neither moduledata nor .text found",
            ));
        };

        let format = Format::for_version(magic, version);
        let mut tab = Pclntab {
            data,
            format,
            wrapper_id: 0,
            text_start,
            funcnametab,
            cutab,
            filetab,
            pctab,
            pclntable,
            functab,
            gofunc: Vec::new(),
            names: OnceLock::new(),
            moduledata,
            arch: elf.arch(),
            pc_quantum: min_lc,
            frame_pointers_follow_copies: elf.arch() != crate::elf::Arch::Aarch64
                || version.major > 1
                || version.minor >= 21,
        };
        // moduledata.gofunc at this version's offset first; the other known offsets and the
        // symbol in case the version is new or wrong. Take the first whose inline trees make
        // sense, so a wrong guess cannot produce invented frames.
        let mut candidates: Vec<u64> = Vec::new();
        if let Some(m) = moduledata {
            for off in [format.moduledata_gofunc, 304, 320, 344] {
                candidates.extend(elf.read_u64(m + off));
            }
        }
        for name in ["go:func.*", "go.func.*"] {
            candidates.extend(elf.symbol(name).map(|s| s.addr));
        }
        for addr in candidates {
            let bytes = gofunc_bytes(elf, addr, loc.addr);
            if bytes.is_empty() {
                continue;
            }
            tab.gofunc = bytes;
            if tab.inline_trees_plausible() {
                break;
            }
            tab.gofunc = Vec::new();
        }
        let max_seen = (0..tab.len())
            .filter_map(|i| tab.raw_func_id(i))
            .max()
            .unwrap_or(0);
        tab.wrapper_id = wrapper_func_id(version, max_seen);
        Ok(tab)
    }

    /// The function containing `pc`.
    pub fn func_at(&self, pc: u64) -> Option<Func> {
        self.func(self.index_at(pc)?)
    }

    /// A function by its Go name; where an ABI wrapper shares the name, the real body.
    pub fn func_by_name(&self, name: &str) -> Option<Func> {
        let idx = *self
            .names
            .get_or_init(|| self.build_name_index())
            .get(name)?;
        self.func(idx as usize)
    }

    /// Logical frames at `pc`, innermost first: inlined calls expanded into their own frames,
    /// the physical function last. Callers pass `return_address - 1` for return addresses.
    /// Empty when `pc` is in no known function.
    pub fn frames_at(&self, pc: u64) -> Vec<Frame> {
        let Some(idx) = self.index_at(pc) else {
            return Vec::new();
        };
        let Some(f) = self.raw_func(idx) else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        let mut pc = pc;
        if let Some(tree) = self.inline_tree(&f) {
            for _ in 0..MAX_INLINE_DEPTH {
                let ix = self.pcdata_value(&f, PCDATA_INL_TREE_INDEX, pc);
                let Some(call) = usize::try_from(ix)
                    .ok()
                    .and_then(|ix| self.inlined_call(tree, ix))
                else {
                    break;
                };
                let (file, line) = self.file_line(&f, pc);
                frames.push(Frame {
                    func: self.print_name(self.name_at(call.name_off)),
                    file,
                    line,
                    wrapper: call.func_id == self.wrapper_id,
                    inlined: true,
                });
                // parentPc is an offset from the physical entry; the runtime adds it as uintptr.
                pc = f.entry.wrapping_add(call.parent_pc as i64 as u64);
            }
        }
        let (file, line) = self.file_line(&f, pc);
        frames.push(Frame {
            func: self.print_name(self.name_at(f.name_off)),
            file,
            line,
            wrapper: f.func_id == self.wrapper_id,
            inlined: false,
        });
        frames
    }

    /// File and line of `pc` within its physical function (the innermost source position).
    pub fn line_at(&self, pc: u64) -> Option<(String, u32)> {
        let f = self.raw_func(self.index_at(pc)?)?;
        let (file, line) = self.file_line(&f, pc);
        (line != 0).then_some((file, line))
    }

    /// Frame size at `pc` from the pcsp table (for unwinding without frame pointers).
    pub fn sp_delta_at(&self, pc: u64) -> Option<i64> {
        let f = self.raw_func(self.index_at(pc)?)?;
        let v = self.pc_value(&f, f.pcsp, pc)?;
        Some(i64::from(v))
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.functab.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Link-time address of `runtime.firstmoduledata` (found from the pclntab's address, so
    /// stripped binaries have it too).
    pub fn moduledata_addr(&self) -> Option<u64> {
        self.moduledata
    }

    /// Whether a parked goroutine's saved frame-pointer chain can be trusted: Go before 1.21
    /// on arm64 leaves the saved frame pointers pointing into the old stack when it copies
    /// one (growth, or the GC shrinking a parked goroutine's stack).
    pub fn frame_pointers_follow_copies(&self) -> bool {
        self.frame_pointers_follow_copies
    }

    /// The architecture of the binary this table came from.
    pub fn arch(&self) -> crate::elf::Arch {
        self.arch
    }

    /// Link-time address where text starts (the base of every entry offset).
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// Every function, in address order (physical functions only).
    pub fn funcs(&self) -> impl Iterator<Item = Func> + '_ {
        (0..self.len()).filter_map(|i| self.func(i))
    }
}

/// The gofunc region, bounded by the end of its segment and, when the pclntab follows it in
/// the same segment, by the pclntab (no need to copy the table twice).
fn gofunc_bytes(elf: &ElfFile, addr: u64, pcln_addr: u64) -> Vec<u8> {
    let Some(seg) = elf
        .segments()
        .iter()
        .find(|s| addr >= s.vaddr && addr < s.vaddr.saturating_add(s.filesz))
    else {
        return Vec::new();
    };
    let mut end = seg.vaddr.saturating_add(seg.filesz);
    if pcln_addr > addr && pcln_addr < end {
        end = pcln_addr;
    }
    let len = usize::try_from(end - addr).unwrap_or(0);
    elf.read_vaddr(addr, len)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// The fields of `_func` we use.
#[derive(Debug, Clone, Copy)]
struct RawFunc {
    /// Offset of the record in `data`.
    off: usize,
    entry: u64,
    end: u64,
    name_off: u32,
    args: i32,
    pcsp: u32,
    pcfile: u32,
    pcln: u32,
    npcdata: u32,
    cu_offset: u32,
    func_id: u8,
    flag: u8,
    nfuncdata: u8,
}

struct InlinedCall {
    func_id: u8,
    name_off: u32,
    parent_pc: i32,
}

impl Pclntab {
    fn index_at(&self, pc: u64) -> Option<usize> {
        let off = pc.checked_sub(self.text_start)?;
        let off = u32::try_from(off).ok()?;
        let n = self.len();
        // Last entry whose start is <= off; the sentinel entry bounds the final function.
        let i = self.functab[..n]
            .partition_point(|&(e, _)| e <= off)
            .checked_sub(1)?;
        let end = self.functab.get(i + 1)?.0;
        (off < end).then_some(i)
    }

    fn raw_func(&self, idx: usize) -> Option<RawFunc> {
        let &(entry_off, func_off) = self.functab.get(idx)?;
        let end_off = self.functab.get(idx + 1)?.0;
        let off = self
            .pclntable
            .start
            .checked_add(usize::try_from(func_off).ok()?)?;
        let d = &self.data;
        let fid = self.format.func_id_off;
        Some(RawFunc {
            off,
            entry: self.text_start.checked_add(u64::from(entry_off))?,
            end: self
                .text_start
                .checked_add(u64::from(end_off.max(entry_off)))?,
            name_off: rd_u32(d, off + 4)?,
            args: rd_u32(d, off + 8)? as i32,
            pcsp: rd_u32(d, off + 16)?,
            pcfile: rd_u32(d, off + 20)?,
            pcln: rd_u32(d, off + 24)?,
            npcdata: rd_u32(d, off + 28)?,
            cu_offset: rd_u32(d, off + 32)?,
            func_id: *d.get(off + fid)?,
            flag: *d.get(off + fid + 1)?,
            nfuncdata: *d.get(off + fid + 3)?,
        })
    }

    fn raw_func_id(&self, idx: usize) -> Option<u8> {
        let func_off = usize::try_from(self.functab.get(idx)?.1).ok()?;
        let off = self.pclntable.start.checked_add(func_off)?;
        self.data
            .get(off.checked_add(self.format.func_id_off)?)
            .copied()
    }

    fn func(&self, idx: usize) -> Option<Func> {
        let f = self.raw_func(idx)?;
        Some(Func {
            name: self.name_at(f.name_off).to_string(),
            entry: f.entry,
            end: f.end,
            func_id: f.func_id,
            wrapper: f.func_id == self.wrapper_id,
            flag: f.flag,
            args: f.args,
        })
    }

    fn build_name_index(&self) -> HashMap<Box<str>, u32> {
        let mut map: HashMap<Box<str>, u32> = HashMap::with_capacity(self.len());
        for idx in 0..self.len() {
            let Some(f) = self.raw_func(idx) else {
                continue;
            };
            let name = self.name_at(f.name_off);
            if name.is_empty() {
                continue;
            }
            let Ok(idx32) = u32::try_from(idx) else { break };
            match map.get_mut(name) {
                None => {
                    map.insert(name.into(), idx32);
                }
                Some(cur) => {
                    if let Some(old) = self.raw_func(*cur as usize) {
                        if self.prefer(&f, &old) {
                            *cur = idx32;
                        }
                    }
                }
            }
        }
        map
    }

    /// Between two functions of the same name: the non-wrapper, else the larger body.
    fn prefer(&self, new: &RawFunc, old: &RawFunc) -> bool {
        let (nw, ow) = (
            new.func_id == self.wrapper_id,
            old.func_id == self.wrapper_id,
        );
        if nw != ow {
            return !nw;
        }
        new.end - new.entry > old.end - old.entry
    }

    /// NUL-terminated string in funcnametab (empty if out of range or not UTF-8).
    fn name_at(&self, off: u32) -> &str {
        self.cstr(self.funcnametab, off as usize)
    }

    fn cstr(&self, table: Range, off: usize) -> &str {
        let Some(start) = table.start.checked_add(off).filter(|&s| s < table.end) else {
            return "";
        };
        let bytes = &self.data[start..table.end];
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).unwrap_or("")
    }

    fn print_name(&self, name: &str) -> String {
        match self.format.print_names {
            PrintNames::Raw => name.to_string(),
            PrintNames::Shape => func_name_for_print(name, false),
            PrintNames::ShapeMethods => func_name_for_print(name, true),
        }
    }

    /// `funcline1`: file and line at `pc`, `("?", 0)` when unknown, like the runtime.
    fn file_line(&self, f: &RawFunc, pc: u64) -> (String, u32) {
        let file = self.file_at(f, pc);
        let line = self
            .pc_value(f, f.pcln, pc)
            .and_then(|l| u32::try_from(l).ok());
        match (file, line) {
            (Some(file), Some(line)) => (file.to_string(), line),
            _ => ("?".to_string(), 0),
        }
    }

    fn file_at(&self, f: &RawFunc, pc: u64) -> Option<&str> {
        let fileno = u32::try_from(self.pc_value(f, f.pcfile, pc)?).ok()?;
        let idx = u64::from(f.cu_offset).checked_add(u64::from(fileno))?;
        let pos = self
            .cutab
            .start
            .checked_add(usize::try_from(idx.checked_mul(4)?).ok()?)?;
        if pos.checked_add(4)? > self.cutab.end {
            return None;
        }
        let file_off = rd_u32(&self.data, pos)?;
        if file_off == u32::MAX {
            return None;
        }
        let s = self.cstr(self.filetab, file_off as usize);
        (!s.is_empty()).then_some(s)
    }

    /// `pcdatavalue`: value of pcdata table `table` at `pc`, -1 when absent.
    fn pcdata_value(&self, f: &RawFunc, table: u32, pc: u64) -> i32 {
        if table >= f.npcdata {
            return -1;
        }
        let pos = f.off + self.format.func_id_off + 4 + 4 * table as usize;
        match rd_u32(&self.data, pos) {
            Some(off) => self.pc_value(f, off, pc).unwrap_or(-1),
            None => -1,
        }
    }

    /// `pcvalue`: decodes the pc-value table at `pctab + off` up to `target`.
    fn pc_value(&self, f: &RawFunc, off: u32, target: u64) -> Option<i32> {
        if off == 0 {
            return None;
        }
        let start = self.pctab.start.checked_add(off as usize)?;
        let mut p = self.data.get(start..self.pctab.end)?;
        let mut pc = f.entry;
        let mut val: i32 = -1;
        // Each step consumes at least two bytes, so this ends with the table.
        loop {
            // Like the runtime: a zero first byte ends the table, except while still at entry.
            if p.first() == Some(&0) && pc != f.entry {
                return None;
            }
            let uvdelta = read_uvarint(&mut p)?;
            let delta = ((uvdelta >> 1) as i32) ^ -((uvdelta & 1) as i32);
            val = val.wrapping_add(delta);
            let pcdelta = read_uvarint(&mut p)?;
            pc = pc.checked_add(u64::from(pcdelta).checked_mul(u64::from(self.pc_quantum))?)?;
            if target < pc {
                return Some(val);
            }
        }
    }

    fn inline_tree(&self, f: &RawFunc) -> Option<usize> {
        if (f.nfuncdata as u32) <= FUNCDATA_INL_TREE {
            return None;
        }
        let npcdata = usize::try_from(f.npcdata).ok()?;
        let pos = f
            .off
            .checked_add(self.format.func_id_off + 4)?
            .checked_add(npcdata.checked_mul(4)?)?
            .checked_add(4 * FUNCDATA_INL_TREE as usize)?;
        let off = rd_u32(&self.data, pos)?;
        (off != u32::MAX).then_some(off as usize)
    }

    /// Checks the first entry of the inline trees of a sample of functions: the name must be a
    /// string in funcnametab and the parent PC inside the function.
    fn inline_trees_plausible(&self) -> bool {
        let mut seen = 0;
        for idx in 0..self.len() {
            let Some(f) = self.raw_func(idx) else {
                continue;
            };
            let Some(tree) = self.inline_tree(&f) else {
                continue;
            };
            let Some(call) = self.inlined_call(tree, 0) else {
                return false;
            };
            let in_func = u64::try_from(call.parent_pc).is_ok_and(|p| p < f.end - f.entry);
            // A name starts right after the previous one's NUL.
            let name_start = (call.name_off as usize)
                .checked_sub(1)
                .is_none_or(|p| self.data.get(self.funcnametab.start + p) == Some(&0));
            if !in_func || !name_start || self.name_at(call.name_off).is_empty() {
                return false;
            }
            seen += 1;
            if seen == 64 {
                break;
            }
        }
        seen > 0
    }

    /// Offset into `gofunc` of funcdata `i`, if present.
    fn funcdata(&self, f: &RawFunc, i: u32) -> Option<usize> {
        if u32::from(f.nfuncdata) <= i {
            return None;
        }
        let npcdata = usize::try_from(f.npcdata).ok()?;
        let pos = f
            .off
            .checked_add(self.format.func_id_off + 4)?
            .checked_add(npcdata.checked_mul(4)?)?
            .checked_add(4 * i as usize)?;
        let off = rd_u32(&self.data, pos)?;
        (off != u32::MAX).then_some(off as usize)
    }

    /// Bitmap `index` of the `runtime.stackmap` at `gofunc + off`: `{n, nbit int32, bytedata}`.
    fn stack_map(&self, off: usize, index: i32) -> Option<(u32, Vec<u8>)> {
        let head = self.gofunc.get(off..off.checked_add(8)?)?;
        let n = rd_u32(head, 0)? as i32;
        let nbit = rd_u32(head, 4)? as i32;
        if n <= 0 || !(0..=MAX_STACK_MAP_BITS).contains(&nbit) || index < 0 || index >= n {
            return None;
        }
        let bytes = usize::try_from(nbit).ok()?.div_ceil(8);
        let start = off
            .checked_add(8)?
            .checked_add(bytes.checked_mul(usize::try_from(index).ok()?)?)?;
        let data = self.gofunc.get(start..start.checked_add(bytes)?)?;
        Some((nbit as u32, data.to_vec()))
    }

    /// What the GC needs to scan the frame of the function at `pc` precisely, as the runtime's
    /// `getStackMap` finds it: `pc` is the frame's link-time pc (a return address, or the saved
    /// pc of a parked goroutine, also a return address). The frame size comes from the pcsp
    /// table at `pc` itself and the stack map index from the instruction before it (the call),
    /// except at the function's entry. None when `pc` is in no function or has no frame size.
    pub fn frame_maps(&self, pc: u64) -> Option<FrameMaps> {
        let f = self.raw_func(self.index_at(pc)?)?;
        let sp_delta = u64::try_from(self.pc_value(&f, f.pcsp, pc)?).ok()?;
        let index = if pc == f.entry {
            -1
        } else {
            self.pcdata_value(&f, PCDATA_STACK_MAP_INDEX, pc - 1)
        };
        // No index: the runtime assumes a prologue and takes map 0.
        let index = if index == -1 { 0 } else { index };
        let locals = self
            .funcdata(&f, FUNCDATA_LOCALS_POINTER_MAPS)
            .and_then(|off| self.stack_map_bits(off, index));
        let (args_bytes, args) = if f.args == ARGS_SIZE_UNKNOWN {
            // Reflect's call stubs: their argument maps come from the calls they made. Unknown.
            (None, None)
        } else {
            let bytes = u64::try_from(f.args).unwrap_or(0);
            let args = if bytes < 8 {
                Some(StackBits::default())
            } else {
                self.funcdata(&f, FUNCDATA_ARGS_POINTER_MAPS)
                    .and_then(|off| self.stack_map_bits(off, index))
            };
            (Some(bytes), args)
        };
        let objects = match self.funcdata(&f, FUNCDATA_STACK_OBJECTS) {
            None => Some(Vec::new()),
            Some(off) => self.stack_objects(off),
        };
        Some(FrameMaps {
            sp_delta,
            locals,
            args,
            args_bytes,
            objects,
        })
    }

    /// Bitmap `index` of the `runtime.stackmap` at `gofunc + off`, as `getStackMap` takes it:
    /// a map without bits is empty at every index. None when malformed or out of range.
    fn stack_map_bits(&self, off: usize, index: i32) -> Option<StackBits> {
        let head = self.gofunc.get(off..off.checked_add(8)?)?;
        let n = rd_u32(head, 0)? as i32;
        let nbit = rd_u32(head, 4)? as i32;
        if n <= 0 || !(0..=MAX_STACK_MAP_BITS).contains(&nbit) {
            return None;
        }
        if nbit == 0 {
            return Some(StackBits::default());
        }
        let (words, bits) = self.stack_map(off, index)?;
        Some(StackBits { words, bits })
    }

    /// The `runtime.stackObjectRecord`s at `gofunc + off`: a word count, then
    /// `{off int32, size int32, ptrdata int32, gcdataoff uint32}` each (the same in every
    /// supported release; a negative ptrdata, before 1.24, means a GC program: its absolute value
    /// is still the bytes that may hold pointers).
    fn stack_objects(&self, off: usize) -> Option<Vec<StackObject>> {
        let n = rd_u64(&self.gofunc, off)?;
        if n > MAX_STACK_OBJECTS {
            return None;
        }
        let n = usize::try_from(n).ok()?;
        let start = off.checked_add(8)?;
        let recs = self
            .gofunc
            .get(start..start.checked_add(n.checked_mul(STACK_OBJECT_RECORD)?)?)?;
        recs.chunks_exact(STACK_OBJECT_RECORD)
            .map(|r| {
                let size = rd_u32(r, 4)? as i32;
                let ptr_bytes = (rd_u32(r, 8)? as i32).unsigned_abs();
                let size = u32::try_from(size).ok()?;
                Some(StackObject {
                    off: rd_u32(r, 0)? as i32,
                    size,
                    ptr_bytes: ptr_bytes.min(size),
                })
            })
            .collect()
    }

    fn inlined_call(&self, tree: usize, ix: usize) -> Option<InlinedCall> {
        let fm = &self.format;
        let base = tree.checked_add(ix.checked_mul(fm.inl_size)?)?;
        let rec = self.gofunc.get(base..base.checked_add(fm.inl_size)?)?;
        Some(InlinedCall {
            func_id: *rec.get(fm.inl_func_id)?,
            name_off: rd_u32(rec, fm.inl_name_off)?,
            parent_pc: rd_u32(rec, fm.inl_parent_pc)? as i32,
        })
    }
}

/// Go's varint: 7 bits a byte, little-endian groups, at most 5 bytes for a u32.
fn read_uvarint(p: &mut &[u8]) -> Option<u32> {
    let mut v: u32 = 0;
    let mut shift = 0u32;
    loop {
        let (&b, rest) = p.split_first()?;
        *p = rest;
        v |= u32::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift >= 35 {
            return None;
        }
    }
}

/// `runtime.funcNameForPrint`: shape type arguments are printed as `[...]`.
/// `methods` enables the Go 1.27 handling of generic methods of generic types.
fn func_name_for_print(name: &str, methods: bool) -> String {
    let Some(i) = name.find('[') else {
        return name.to_string();
    };
    let Some(j) = name.rfind(']') else {
        return name.to_string();
    };
    if j <= i {
        return name.to_string();
    }
    let interior = &name[i + 1..j];
    if !methods || !interior.contains('[') {
        return format!("{}[...]{}", &name[..i], &name[j + 1..]);
    }
    let (mut depth, mut rbr, mut lbr) = (1i32, None, None);
    for (k, c) in interior.char_indices() {
        if c == '[' {
            depth += 1;
            if depth != 1 {
                continue;
            }
            lbr = Some(k);
            break;
        }
        if c == ']' {
            depth -= 1;
            if depth < 0 {
                break;
            }
            if depth == 0 {
                rbr = Some(k);
            }
        }
    }
    if depth == 1 {
        match (rbr, lbr) {
            (Some(r), Some(l)) if l > r => {
                return format!(
                    "{}[...]{}[...]{}",
                    &name[..i],
                    &interior[r + 1..l],
                    &name[j + 1..]
                );
            }
            (None, None) => return format!("{}[...]{}", &name[..i], &name[j + 1..]),
            _ => {}
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::{func_name_for_print, read_uvarint};

    #[test]
    fn print_names_like_the_runtime() {
        let p = |n| func_name_for_print(n, true);
        assert_eq!(p("main.main"), "main.main");
        assert_eq!(p("main.F[go.shape.int]"), "main.F[...]");
        assert_eq!(p("main.(*B[go.shape.string]).get"), "main.(*B[...]).get");
        assert_eq!(
            p("main.F[go.shape.struct { a [2]int }].func1"),
            "main.F[...].func1"
        );
        assert_eq!(
            p("main.G[go.shape.int].M[go.shape.string]"),
            "main.G[...].M[...]"
        );
        assert_eq!(func_name_for_print("main.G[a].M[b]", false), "main.G[...]");
        assert_eq!(p("x]y[z"), "x]y[z");
        assert_eq!(p("a[b]]c["), "a[...]c[");
        assert_eq!(p("a[x]]y[z]"), "a[x]]y[z]");
    }

    #[test]
    fn varints() {
        let mut p: &[u8] = &[0x96, 0x01, 0x05];
        assert_eq!(read_uvarint(&mut p), Some(150));
        assert_eq!(read_uvarint(&mut p), Some(5));
        assert_eq!(read_uvarint(&mut p), None);
        let mut p: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read_uvarint(&mut p), None);
    }
}
