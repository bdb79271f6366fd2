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
pub mod stackscan;
pub mod waits;

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use gobinary::GoBinary;
use serde::Serialize;

use crate::goroutines::{GoroutineReader, RawG, STATUS_LEAKED, STATUS_WAITING};
use crate::procmem::ProcessMemory;
use crate::stack::{self, Symbolizer};

use condwait::{CondFinder, SudogFields};
use heap::Heap;
use mark::Marker;
use stackscan::{StackRoot, StackScanStats, StackScanner};
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

/// The verdict on one goroutine.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// true: leaked; false: blocked on a channel, select or sync object some goroutine that can
    /// run may still reach; None: not analysed (not blocked on one of those, or its wait could
    /// not be resolved).
    pub leaked: Option<bool>,
    /// The park the verdict is about: a record of the same goroutine in another park gets no
    /// verdict.
    pub key: ParkKey,
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
    /// By goroutine id.
    pub verdicts: HashMap<u64, Verdict>,
    pub stats: LeakStats,
}

impl LeakAnalysis {
    /// The verdict for a goroutine as read now: only if it is still in the analysed park.
    pub fn verdict_for(&self, g: &RawG) -> Option<bool> {
        let v = self.verdicts.get(&g.goid)?;
        if v.key != ParkKey::of(g) {
            return None;
        }
        v.leaked
    }
}

/// One goroutine as one pass saw it.
struct Seen {
    key: ParkKey,
    class: WaitClass,
    /// Some: analysed; the value says leaked.
    leaked: Option<bool>,
}

/// Runs the analysis twice and combines the passes.
pub fn analyse(mem: &ProcessMemory, bin: &GoBinary, bias: u64) -> Result<LeakAnalysis> {
    let start = std::time::Instant::now();
    let first = one_pass(mem, bin, bias).context("leak analysis")?;
    let (second, mut stats) = one_pass(mem, bin, bias).context("leak analysis")?;
    let first: HashMap<u64, Seen> = first.0;
    let mut verdicts = HashMap::new();
    for (goid, now) in second {
        let before = first.get(&goid);
        let leaked = match (now.leaked, before) {
            (None, _) => None,
            (Some(true), Some(b)) if b.key == now.key && b.leaked == Some(true) => Some(true),
            (Some(true), _) => {
                stats.unstable += 1;
                Some(false)
            }
            (Some(false), Some(b)) if b.leaked == Some(true) => {
                stats.unstable += 1;
                Some(false)
            }
            (Some(_), _) => Some(false),
        };
        if now.class != WaitClass::MayRun {
            stats.analysed += 1;
        }
        if leaked == Some(true) {
            stats.leaked += 1;
        }
        verdicts.insert(
            goid,
            Verdict {
                leaked,
                key: now.key,
            },
        );
    }
    stats.passes = 2;
    stats.wall_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(LeakAnalysis { verdicts, stats })
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

fn one_pass(
    mem: &ProcessMemory,
    bin: &GoBinary,
    bias: u64,
) -> Result<(HashMap<u64, Seen>, LeakStats)> {
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

    // Goroutines, with g.waiting.
    let reader = GoroutineReader::new(
        mem,
        &bin.layout,
        bin.vars.allgs.wrapping_add(bias),
        bin.vars.allglen.wrapping_add(bias),
    );
    let addrs = reader.g_addresses()?;
    let mut gs = Vec::with_capacity(addrs.len());
    for chunk in addrs.chunks(4096) {
        gs.extend(reader.read_gs_with_word(chunk, objects.g_waiting)?);
    }

    // Classes; `semacquire` needs the stack to tell a Mutex from an fd lock.
    let reason = |g: &RawG| -> &str {
        if !g.is_waiting() {
            return "";
        }
        bin.wait_reasons
            .get(usize::from(g.wait_reason))
            .map_or("", String::as_str)
    };
    let sym = Symbolizer::new(&bin.pclntab, bias);
    let semacquire: Vec<RawG> = gs
        .iter()
        .filter(|(g, _)| reason(g) == "semacquire")
        .map(|(g, _)| g.clone())
        .collect();
    let mut sema_stacks: HashMap<u64, Vec<String>> = HashMap::new();
    if !semacquire.is_empty() {
        let unwound = stack::unwind_many(mem, &bin.pclntab, bias, &semacquire)?;
        for (g, u) in semacquire.iter().zip(unwound) {
            if let Ok(u) = u {
                let names = stack::symbolize(&sym, &u.pcs)
                    .into_iter()
                    .map(|f| f.func)
                    .collect();
                sema_stacks.insert(g.addr, names);
            }
        }
    }
    let classes: Vec<WaitClass> = gs
        .iter()
        .map(|(g, _)| {
            waits::classify(reason(g), || {
                sema_stacks.get(&g.addr).cloned().unwrap_or_default()
            })
        })
        .collect();

    // What each blocked goroutine waits on. Before 1.26 sync waits leave g.waiting unset: the
    // semaphore table says.
    let needs_semtable = gs
        .iter()
        .zip(&classes)
        .any(|((_, w), c)| *c == WaitClass::Sync && w.unwrap_or(0) == 0);
    let semtable = match (needs_semtable, vars.semtable) {
        (true, Some(addr)) => Some(
            waits::semtable_waiters(mem, heap_layout, objects, addr.wrapping_add(bias))
                .context("cannot read runtime.semtable")?,
        ),
        _ => None,
    };
    let mut targets: Vec<Option<WaitTargets>> = Vec::with_capacity(gs.len());
    let mut hidden = Vec::new();
    // The first sudog of every g.waiting list, read many per syscall (most lists have one).
    let first_of = |from: usize| -> Result<HashMap<u64, Vec<u8>>> {
        let addrs: Vec<u64> = gs[from..(from + SUDOG_BATCH).min(gs.len())]
            .iter()
            .zip(&classes[from..])
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
    };
    let mut firsts = HashMap::new();
    let mut stack_scanner = StackScanner::new(&bin.pclntab, bias);
    let mut conds = CondFinder::new(
        mem,
        SudogFields {
            g: heap_layout.sudog_g,
            next: objects.sudog_next,
        },
    );
    for (i, ((g, waiting), class)) in gs.iter().zip(&classes).enumerate() {
        if i % SUDOG_BATCH == 0 {
            firsts = first_of(i)?;
        }
        let waiting = waiting.unwrap_or(0);
        let first = firsts.remove(&waiting);
        let t = match class {
            WaitClass::Chan if waiting != 0 => Some(waits::chan_targets(
                mem,
                heap_layout,
                objects,
                waiting,
                first,
            )),
            WaitClass::Sync if waiting != 0 => Some(waits::sync_targets_from_waiting(
                mem,
                heap_layout,
                objects,
                waiting,
                first,
            )),
            WaitClass::Sync => semtable
                .as_ref()
                .and_then(|t| t.get(&g.addr))
                .map(|&(s, elem)| WaitTargets {
                    objects: vec![elem],
                    hidden: vec![(
                        s + heap_layout.sudog_elem,
                        s + heap_layout.sudog_elem + heap_layout.sudog_elem_len,
                    )],
                })
                .or_else(|| conds.targets(&mut stack_scanner, g, reason(g))),
            WaitClass::Never => Some(WaitTargets::default()),
            _ => None,
        };
        if let Some(t) = &t {
            hidden.extend_from_slice(&t.hidden);
        }
        targets.push(t);
    }

    // The heap, then the roots.
    let heap = Heap::read(mem, heap_layout, vars.mheap.wrapping_add(bias))?;
    let (heap_spans, heap_objects, heap_bytes) = heap.totals();
    let mut g_addrs = addrs.clone();
    g_addrs.sort_unstable();
    let mut marker = Marker::new(mem, heap, hidden, g_addrs, g_stack_words(&bin.layout));
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
    // Blocked goroutines not yet known to be able to run (index into gs).
    let mut pending: Vec<usize> = Vec::new();
    let mut stacks = Vec::new();
    for (i, ((g, _), t)) in gs.iter().zip(&targets).enumerate() {
        let blocked = match t {
            Some(t) => classes[i] == WaitClass::Never || !t.objects.is_empty(),
            None => false,
        };
        if blocked {
            pending.push(i);
        } else {
            stacks.extend(StackRoot::of(g));
        }
    }
    stack_scanner.scan(mem, &mut marker, &stacks)?;
    marker.drain()?;
    // To a fixed point: a goroutine whose waited-on object is reachable may be woken.
    loop {
        let mut woke = Vec::new();
        pending.retain(|&i| {
            let t = targets[i].as_ref();
            let may_run = t.is_some_and(|t| {
                t.objects
                    .iter()
                    .any(|&o| marker.is_marked_or_not_in_heap(o))
            });
            if may_run {
                woke.push(i);
            }
            !may_run
        });
        if woke.is_empty() {
            break;
        }
        let stacks: Vec<StackRoot> = woke
            .iter()
            .filter_map(|&i| StackRoot::of(&gs[i].0))
            .collect();
        stack_scanner.scan(mem, &mut marker, &stacks)?;
        marker.drain()?;
    }

    let mut seen = HashMap::with_capacity(gs.len());
    let mut stats = LeakStats {
        heap_spans,
        heap_objects,
        heap_bytes,
        precise_globals: precise,
        marked_objects: marker.marked_objects,
        scanned_bytes: marker.scanned_bytes,
        stacks: stack_scanner.stats,
        ..LeakStats::default()
    };
    let mut left = vec![false; gs.len()];
    for &i in &pending {
        left[i] = true;
    }
    for (i, ((g, _), t)) in gs.iter().zip(&targets).enumerate() {
        let class = classes[i];
        let leaked = match (class, t) {
            (WaitClass::MayRun, _) => None,
            (_, None) => {
                stats.unresolved += 1;
                None
            }
            (WaitClass::Chan | WaitClass::Sync, Some(t)) if t.objects.is_empty() => {
                stats.unresolved += 1;
                None
            }
            // Go leaves the main goroutine in `select {}` out of its profile (a server's
            // main often ends that way), though it counts as leaked during the analysis.
            (WaitClass::Never, Some(_)) if g.goid == 1 && reason(g) == "select (no cases)" => {
                Some(false)
            }
            (_, Some(_)) => Some(left[i]),
        };
        seen.insert(
            g.goid,
            Seen {
                key: ParkKey::of(g),
                class,
                leaked,
            },
        );
    }
    Ok((seen, stats))
}
