//! Leak verdicts by reachability, as Go 1.27's goroutine leak profile defines them
//! (`runtime/mgc.go`: `findMaybeRunnableGoroutines`, `isMaybeRunnable`,
//! `setSyncObjectsUntraceable`), computed from outside on any supported release:
//!
//! 1. Roots: the module's `.data` and `.bss`, and the stacks of every goroutine that may run
//!    (running, runnable, in a syscall, or waiting on anything but a channel, `select` or sync
//!    primitive, such as sleep or I/O).
//! 2. Mark (conservatively, see [`mark`]) what the roots reach, never following the runtime's
//!    own references from a waiting goroutine's sudogs to what it waits on.
//! 3. To a fixed point: a blocked goroutine whose waited-on object got marked may be woken by
//!    someone who can run: its stack becomes a root too.
//! 4. The goroutines left are leaked: nothing that can run can reach what they wait on.
//!
//! The heap moves while it is read, so the analysis runs twice and a goroutine is called leaked
//! only when both runs say so and it stayed in the same park (same goid, status, wait reason,
//! `trackingSeq`) across both.

pub mod condwait;
pub mod heap;
pub mod mark;
pub mod schedule;
pub mod stackscan;
pub mod stream;
pub mod table;
pub mod waits;
pub mod worker;

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use gobinary::GoBinary;
use serde::Serialize;

use crate::goroutines::{GoroutineReader, RawG, STATUS_LEAKED, STATUS_WAITING};
use crate::procmem::MemError;
use crate::procmem::ProcessMemory;
use crate::stack::{self, Symbolizer};

use condwait::{CondFinder, SudogFields};
use heap::Heap;
use mark::Marker;
use stackscan::{StackRoot, StackScanStats, StackScanner};
use table::{Entry, Said, VerdictTable};
use waits::{WaitClass, WaitTargets};

/// The identity of a park: a goroutine that still has it did not run in between. Not its saved
/// `sp` (a GC cycle may shrink, so move, a parked goroutine's stack) nor `waitsince` (a GC
/// cycle stamps it once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkKey {
    pub goid: u64,
    pub status: u32,
    pub wait_reason: u8,
    pub tracking_seq: u8,
}

impl ParkKey {
    pub fn of(g: &RawG) -> ParkKey {
        ParkKey {
            goid: g.goid,
            // Go 1.27's own leak cycles flip leaked goroutines between _Gwaiting and _Gleaked:
            // the same park either way.
            status: if g.status == STATUS_LEAKED {
                STATUS_WAITING
            } else {
                g.status
            },
            wait_reason: g.wait_reason,
            tracking_seq: g.tracking_seq,
        }
    }
}

/// What the analysis did, for its record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeakStats {
    /// Goroutines blocked on a channel, select or sync object (analysed).
    pub analysed: u64,
    /// Said by the record's own `leaked` (null when the analysis could not run).
    #[serde(skip)]
    pub leaked: u64,
    /// Analysed goroutines whose wait could not be resolved (counted as able to run).
    pub unresolved: u64,
    /// Called leaked by one pass only, or not in the same park in both: not leaked.
    pub unstable: u64,
    pub passes: u32,
    /// Globals scanned with the runtime's pointer masks (else whole, conservatively).
    pub precise_globals: bool,
    pub heap_spans: u64,
    pub heap_objects: u64,
    pub heap_bytes: u64,
    /// Objects reached and bytes scanned (second pass).
    pub marked_objects: u64,
    pub scanned_bytes: u64,
    /// How goroutine stacks were scanned (second pass; see [`stackscan`]).
    #[serde(flatten)]
    pub stacks: StackScanStats,
    pub wall_ms: f64,
}

pub struct LeakAnalysis {
    pub table: VerdictTable,
    pub stats: LeakStats,
}

impl LeakAnalysis {
    /// No verdicts (yet): every record says `leaked: null`.
    pub fn empty() -> LeakAnalysis {
        LeakAnalysis {
            table: VerdictTable::default(),
            stats: LeakStats::default(),
        }
    }

    /// The verdict for a goroutine as read now: only if it is still in the analysed park.
    pub fn verdict_for(&self, g: &RawG) -> Option<bool> {
        self.table.for_goroutine(g)
    }
}

/// Runs the analysis twice and combines the passes, position by position in `allgs` (a
/// goroutine keeps its `g`, so its position, for its whole life).
pub fn analyse(mem: &ProcessMemory, bin: &GoBinary, bias: u64) -> Result<LeakAnalysis> {
    let start = std::time::Instant::now();
    let (first, _) = one_pass(mem, bin, bias).context("leak analysis")?;
    let (mut second, mut stats) = one_pass(mem, bin, bias).context("leak analysis")?;
    for (i, now) in second.iter_mut().enumerate() {
        let before = first.get(i).filter(|b| b.goid == now.goid);
        match (now.said, before) {
            (Said::Leaked, Some(b)) if b.said == Said::Leaked && b.same_park_as(now) => {}
            (Said::Leaked, _) => {
                stats.unstable += 1;
                now.said = Said::NotLeaked;
            }
            (Said::NotLeaked, Some(b)) if b.said == Said::Leaked => stats.unstable += 1,
            _ => {}
        }
        if now.said != Said::NotAnalysed {
            stats.analysed += 1;
        }
        if now.said == Said::Leaked {
            stats.leaked += 1;
        }
    }
    drop(first);
    stats.passes = 2;
    stats.wall_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(LeakAnalysis {
        table: VerdictTable::new(second),
        stats,
    })
}

/// Goroutines whose first sudogs are read together.
const SUDOG_BATCH: usize = 4096;

/// Bytes read of each span special (the generic header plus any kind's own fields).
const SPECIAL_READ_BYTES: u64 = 64;

/// More bytes of globals than any real module has: a larger range is a bad read.
const MAX_GLOBALS: u64 = 1 << 30;

/// The module's data and bss with the runtime's own pointer masks (`gcdatamask`,
/// `gcbssmask`, built at start-up from the binary's GC programs): the words Go's GC scans,
/// read from the target's `runtime.firstmoduledata`. None if any of it cannot be read: the
/// caller then scans the sections whole (conservative).
fn precise_globals(
    mem: &ProcessMemory,
    bin: &GoBinary,
    bias: u64,
) -> Option<Vec<(u64, u64, Vec<u8>)>> {
    let h = bin.heap.as_ref()?;
    let md = bin.pclntab.moduledata_addr()?.wrapping_add(bias);
    let word = |off: Option<u64>| mem.read_u64(md.wrapping_add(off?)).ok();
    let mut out = Vec::new();
    for (start, end, mask) in [
        (
            h.moduledata_data,
            h.moduledata_edata,
            h.moduledata_gcdatamask,
        ),
        (h.moduledata_bss, h.moduledata_ebss, h.moduledata_gcbssmask),
    ] {
        let (lo, hi) = (word(start)?, word(end)?);
        if hi < lo || hi - lo > MAX_GLOBALS {
            return None;
        }
        let mask_at = md.wrapping_add(mask?);
        let nbits = mem.read_u64(mask_at).ok()? & 0xffff_ffff;
        let bytes = mem
            .read_u64(mask_at.wrapping_add(h.bitvector_bytedata?))
            .ok()?;
        // The mask covers the whole range (one bit per word) or the runtime has not built it.
        if nbits < (hi - lo) / 8 || bytes == 0 {
            return None;
        }
        let mask = mem.read_vec(bytes, nbits.div_ceil(8) as usize).ok()?;
        out.push((lo, hi, mask));
    }
    Some(out)
}

/// The executable's loaded image (every `PT_LOAD` segment), at its load bias.
fn image_range(bin: &GoBinary, bias: u64) -> (u64, u64) {
    let segs = bin.elf.segments();
    let lo = segs.iter().map(|s| s.vaddr).min().unwrap_or(0);
    let hi = segs.iter().map(|s| s.vaddr + s.memsz).max().unwrap_or(0);
    (lo.wrapping_add(bias), hi.wrapping_add(bias))
}

/// Byte ranges of the module's data and bss sections (Go's `moduledata.data..edata`,
/// `bss..ebss`), for a whole, conservative scan.
fn data_roots(bin: &GoBinary, bias: u64) -> Vec<(u64, u64)> {
    [".data", ".bss"]
        .iter()
        .filter_map(|name| bin.elf.section(name))
        .map(|s| {
            (
                s.addr.wrapping_add(bias),
                s.addr.wrapping_add(bias) + s.size,
            )
        })
        .collect()
}

/// `g.stackguard0` follows `g.stack` in every release (see `gobinary::arm64`), then
/// `stackguard1`.
const STACKGUARDS_LEN: u64 = 16;

/// The words of every `g` (dead ones too) that hold stack addresses: `stack.lo`/`hi`, the
/// stack guards, the saved `sp`/`bp` and `syscallsp`. They are `uintptr`s the GC never follows,
/// and `stack.hi` (one past the stack's end) is often the first object of the next span: read
/// as a pointer it would keep an unrelated object, and what it reaches, alive.
fn g_stack_words(l: &gobinary::layout::RuntimeLayout) -> Vec<(u64, u64)> {
    let mut fields = vec![
        (l.g_stack_lo, 8),
        (l.g_stack_hi, 8 + STACKGUARDS_LEN),
        (l.g_sched_sp, 8),
        (l.g_sched_bp, 8),
        (l.g_syscallsp, 8),
    ];
    if let Some(bp) = l.g_syscallbp {
        fields.push((bp, 8));
    }
    fields
        .into_iter()
        .map(|(off, len)| (off, off + len))
        .collect()
}

/// A goroutine blocked on a channel, select or sync object, while a pass decides on it: 32
/// bytes, so a million of them stay small.
struct Blocked {
    pos: u32,
    /// What it waits on: `objects[first..first + count]` of the pass.
    first: u32,
    count: u32,
    /// The main goroutine in `select {}`: Go leaves it out of its profile (a server's main
    /// often ends that way), though it counts as leaked during the analysis.
    main_select: bool,
    stack: StackRoot,
}

/// One pass's per-goroutine state, appended chunk by chunk (no per-goroutine allocation).
struct PassState<'a> {
    /// By position in `allgs`.
    entries: Vec<Entry>,
    blocked: Vec<Blocked>,
    objects: Vec<u64>,
    hidden: Vec<(u64, u64)>,
    /// Stacks of goroutines that may run: roots.
    roots: Vec<StackRoot>,
    unresolved: u64,
    /// `runtime.semtable`'s waiters, read at the first sync wait that needs them (before Go
    /// 1.26 sync waits leave `g.waiting` unset).
    semtable: Option<HashMap<u64, (u64, u64)>>,
    /// Stack walks with the functions' stack maps, and `sync.Cond` waits found from them.
    scanner: StackScanner<'a>,
    conds: CondFinder<'a>,
}

fn one_pass(mem: &ProcessMemory, bin: &GoBinary, bias: u64) -> Result<(Vec<Entry>, LeakStats)> {
    let heap_layout = bin.heap.as_ref().ok_or_else(|| {
        anyhow!("no heap layout for this Go release (no DWARF and no generated table)")
    })?;
    let objects = bin
        .objects
        .as_ref()
        .ok_or_else(|| anyhow!("no sudog layout for this Go release"))?;
    let vars = bin
        .heap_vars
        .as_ref()
        .map_err(|e| anyhow!("cannot locate the heap in the binary: {e}"))?;

    // Goroutines, with g.waiting, a chunk at a time: only their compact state is kept.
    let reader = GoroutineReader::new(
        mem,
        &bin.layout,
        bin.vars.allgs.wrapping_add(bias),
        bin.vars.allglen.wrapping_add(bias),
    );
    let mut addrs = reader.g_addresses()?;
    let mut st = PassState {
        entries: vec![Entry::default(); addrs.len()],
        blocked: Vec::new(),
        objects: Vec::new(),
        hidden: Vec::new(),
        roots: Vec::new(),
        unresolved: 0,
        semtable: None,
        scanner: StackScanner::new(&bin.pclntab, bias),
        conds: CondFinder::new(
            mem,
            SudogFields {
                g: heap_layout.sudog_g,
                next: objects.sudog_next,
            },
        ),
    };
    let sym = Symbolizer::new(&bin.pclntab, bias);
    for (c, chunk) in addrs.chunks(SUDOG_BATCH).enumerate() {
        let gs = reader.read_gs_with_word(chunk, objects.g_waiting)?;
        // Dead goroutines are left out of `gs`: find each one's position again.
        let mut k = 0;
        let mut positions = Vec::with_capacity(gs.len());
        for (g, _) in &gs {
            while chunk.get(k).is_some_and(|&a| a != g.addr) {
                k += 1;
            }
            positions.push(c * SUDOG_BATCH + k);
            k += 1;
        }
        let classes = classify_chunk(mem, bin, bias, &sym, &gs)?;
        let mut firsts = first_sudogs(mem, heap_layout, &gs, &classes)?;
        for (((g, waiting), class), pos) in gs.iter().zip(classes).zip(positions) {
            take_goroutine(
                mem,
                bin,
                bias,
                &mut st,
                g,
                waiting.unwrap_or(0),
                class,
                pos,
                &mut firsts,
            )?;
        }
    }

    // The heap, then the roots.
    let heap = Heap::read(mem, heap_layout, vars.mheap.wrapping_add(bias))?;
    let (heap_spans, heap_objects, heap_bytes) = heap.totals();
    addrs.sort_unstable();
    let PassState {
        mut entries,
        blocked,
        objects: waited,
        hidden,
        roots,
        unresolved,
        semtable: _,
        mut scanner,
        conds: _,
    } = st;
    let mut marker = Marker::new(mem, heap, hidden, addrs, g_stack_words(&bin.layout));
    let globals = precise_globals(mem, bin, bias);
    let precise = globals.is_some();
    match globals {
        Some(globals) => {
            for (lo, hi, mask) in globals {
                marker.scan_masked(lo, hi, &mask)?;
            }
        }
        None => {
            for (lo, hi) in data_roots(bin, bias) {
                marker.scan_range(lo, hi)?;
            }
        }
    }
    // A special record is 16 to 48 bytes in every release; 64 covers any kind's fields.
    marker.scan_specials(
        heap_layout.special_next,
        heap_layout.special_offset,
        // `special.offset` is a uint16 up to 1.25 and a uintptr after; `kind` follows it.
        heap_layout
            .special_kind
            .saturating_sub(heap_layout.special_offset),
        heap_layout.special_size,
        SPECIAL_READ_BYTES.max(heap_layout.special_size),
        image_range(bin, bias),
    )?;
    scanner.scan_roots(mem, &mut marker, &roots)?;
    drop(roots);
    marker.drain()?;
    // To a fixed point: a goroutine whose waited-on object is reachable may be woken. Blocked
    // goroutines not yet known to be able to run, by index into `blocked`:
    let mut pending: Vec<u32> = (0..blocked.len())
        .filter_map(|i| u32::try_from(i).ok())
        .collect();
    loop {
        let mut woke = Vec::new();
        pending.retain(|&b| {
            let b = &blocked[b as usize];
            let (lo, n) = (b.first as usize, b.count as usize);
            let may_run = waited
                .get(lo..lo + n)
                .unwrap_or_default()
                .iter()
                .any(|&o| marker.is_marked_or_not_in_heap(o));
            if may_run {
                woke.push(b.stack);
            }
            !may_run
        });
        if woke.is_empty() {
            break;
        }
        scanner.scan_roots(mem, &mut marker, &woke)?;
        marker.drain()?;
    }
    for &b in &pending {
        let b = &blocked[b as usize];
        if let Some(e) = entries.get_mut(b.pos as usize).filter(|_| !b.main_select) {
            e.said = Said::Leaked;
        }
    }
    let stats = LeakStats {
        heap_spans,
        heap_objects,
        heap_bytes,
        precise_globals: precise,
        marked_objects: marker.marked_objects,
        scanned_bytes: marker.scanned_bytes,
        stacks: scanner.stats,
        unresolved,
        ..LeakStats::default()
    };
    Ok((entries, stats))
}

/// The wait class of each goroutine of a chunk; `semacquire` needs the stack to tell a Mutex
/// from an fd lock.
fn classify_chunk(
    mem: &ProcessMemory,
    bin: &GoBinary,
    bias: u64,
    sym: &Symbolizer<'_>,
    gs: &[(RawG, Option<u64>)],
) -> Result<Vec<WaitClass>> {
    let semacquire: Vec<RawG> = gs
        .iter()
        .filter(|(g, _)| reason(bin, g) == "semacquire")
        .map(|(g, _)| g.clone())
        .collect();
    let mut sema_stacks: HashMap<u64, Vec<String>> = HashMap::new();
    if !semacquire.is_empty() {
        let unwound = stack::unwind_many(mem, &bin.pclntab, bias, &semacquire)?;
        for (g, u) in semacquire.iter().zip(unwound) {
            if let Ok(u) = u {
                let names = stack::symbolize(sym, &u.pcs)
                    .into_iter()
                    .map(|f| f.func)
                    .collect();
                sema_stacks.insert(g.addr, names);
            }
        }
    }
    Ok(gs
        .iter()
        .map(|(g, _)| {
            waits::classify(reason(bin, g), || {
                sema_stacks.get(&g.addr).cloned().unwrap_or_default()
            })
        })
        .collect())
}

/// The runtime's name of a waiting goroutine's wait reason ("" when it is not waiting).
fn reason<'b>(bin: &'b GoBinary, g: &RawG) -> &'b str {
    if !g.is_waiting() {
        return "";
    }
    bin.wait_reasons
        .get(usize::from(g.wait_reason))
        .map_or("", String::as_str)
}

/// The first sudog of every `g.waiting` list of a chunk, read many per syscall (most lists
/// have one).
fn first_sudogs(
    mem: &ProcessMemory,
    heap_layout: &gobinary::heaplayout::HeapLayout,
    gs: &[(RawG, Option<u64>)],
    classes: &[WaitClass],
) -> Result<HashMap<u64, Vec<u8>>, MemError> {
    let addrs: Vec<u64> = gs
        .iter()
        .zip(classes)
        .filter(|(_, c)| matches!(c, WaitClass::Chan | WaitClass::Sync))
        .filter_map(|((_, w), _)| w.filter(|&w| w != 0))
        .collect();
    let size = heap_layout.sudog_size as usize;
    let (buf, ok) = mem.read_many(&addrs, size)?;
    Ok(addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| ok[*i])
        .map(|(i, &a)| (a, buf[i * size..(i + 1) * size].to_vec()))
        .collect())
}

/// Takes in one goroutine of a pass: what it waits on (if it is blocked on a channel, select or
/// sync object), or its stack as a root (if it may run).
#[allow(clippy::too_many_arguments)]
fn take_goroutine(
    mem: &ProcessMemory,
    bin: &GoBinary,
    bias: u64,
    st: &mut PassState<'_>,
    g: &RawG,
    waiting: u64,
    class: WaitClass,
    pos: usize,
    firsts: &mut HashMap<u64, Vec<u8>>,
) -> Result<()> {
    let (Some(h), Some(o)) = (bin.heap.as_ref(), bin.objects.as_ref()) else {
        return Ok(());
    };
    let mut first = || firsts.remove(&waiting);
    if class == WaitClass::Sync && waiting == 0 && st.semtable.is_none() {
        if let Ok(Some(addr)) = bin.heap_vars.as_ref().map(|v| v.semtable) {
            st.semtable = Some(
                waits::semtable_waiters(mem, h, o, addr.wrapping_add(bias))
                    .context("cannot read runtime.semtable")?,
            );
        }
    }
    let t = match class {
        WaitClass::Chan if waiting != 0 => Some(waits::chan_targets(mem, h, o, waiting, first())),
        WaitClass::Sync if waiting != 0 => Some(waits::sync_targets_from_waiting(
            mem,
            h,
            o,
            waiting,
            first(),
        )),
        WaitClass::Sync => st
            .semtable
            .as_ref()
            .and_then(|t| t.get(&g.addr))
            .map(|&(s, elem)| WaitTargets {
                objects: vec![elem],
                hidden: vec![(s + h.sudog_elem, s + h.sudog_elem + h.sudog_elem_len)],
            })
            .or_else(|| st.conds.targets(&mut st.scanner, g, reason(bin, g))),
        WaitClass::Never => Some(WaitTargets::default()),
        WaitClass::MayRun | WaitClass::Chan => None,
    };
    if let Some(t) = &t {
        st.hidden.extend_from_slice(&t.hidden);
    }
    let said = match (class, &t) {
        (WaitClass::MayRun, _) => Said::NotAnalysed,
        (WaitClass::Never, _) => Said::NotLeaked,
        (_, Some(t)) if !t.objects.is_empty() => Said::NotLeaked,
        // Counted as able to run.
        _ => Said::Unresolved,
    };
    if let Some(e) = st.entries.get_mut(pos) {
        *e = Entry::of(g, said);
    }
    match (said, t) {
        (Said::NotLeaked, Some(t)) => {
            let (Ok(pos), Ok(first), Ok(count)) = (
                u32::try_from(pos),
                u32::try_from(st.objects.len()),
                u32::try_from(t.objects.len()),
            ) else {
                bail!("more goroutines or waited-on objects than a pass can hold");
            };
            st.objects.extend_from_slice(&t.objects);
            st.blocked.push(Blocked {
                pos,
                first,
                count,
                main_select: class == WaitClass::Never
                    && g.goid == 1
                    && reason(bin, g) == "select (no cases)",
                stack: StackRoot::of(g),
            });
        }
        (Said::Unresolved, _) => {
            st.unresolved += 1;
            st.roots.push(StackRoot::of(g));
        }
        _ => st.roots.push(StackRoot::of(g)),
    }
    Ok(())
}
