//! Context diagnosis of one goroutine: the `context.Context` values its frames hold, their
//! chains to the root and state, the channels it waits on, and a verdict (issue 8).
//!
//! - [`chain`]: one context link decoded from memory through the runtime's type metadata;
//! - [`itabs`]: `context.Context` itabs the runtime built (`runtime.itabTable`);
//! - [`liveness`]: which stack words are live pointers (the functions' stack maps);
//! - [`waits`]: the channels of `g.waiting`'s sudogs;
//! - [`verdict`]: the verdict, a pure function of the two;
//! - [`memory`]: target reads under a per-snapshot budget;
//! - [`cancels`]: who cancelled a context, from the cancel probe (precise mode);
//! - [`text`]: the text format's lines.

pub mod cancels;
pub mod chain;
pub mod itabs;
pub mod liveness;
pub mod memory;
pub mod text;
pub mod verdict;
pub mod waits;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use gobinary::objlayout::ObjectLayout;
use gobinary::rtype::TypeReader;
use serde::Serialize;

use crate::frame_layout::FrameLayout;
use crate::gcframes::{FrameCache, FrameWalker};
use crate::goroutines::RawG;
use crate::stack::{SourceFrame, Symbolizer, Unwound};
use chain::{Decoder, Iface, Link, Own};
use memory::BudgetedMemory;
pub use verdict::Verdict;

/// Longest parent chain followed (a longer one is corrupt or a cycle).
pub const MAX_CHAIN: usize = 64;
/// Most distinct contexts reported per goroutine.
const MAX_CONTEXTS: usize = 32;
/// Sudogs of one goroutine prefetched at most (the cases of a select; more are read when used).
const PREFETCH_SUDOG_ROUNDS: usize = 4;
/// Most context chains a dump keeps decoded (a few hundred bytes each); the cache starts over
/// when full.
const MAX_CACHED_CHAINS: usize = 50_000;

/// One context a goroutine's frames hold (`contexts[]` in the contract).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldContext {
    /// The function whose frame holds it.
    pub frame: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub cancelled: bool,
    pub err: Option<String>,
    /// RFC 3339 (timerCtx, or the nearest deadline up the chain).
    pub deadline: Option<String>,
    /// Its Done channel is one the goroutine waits on.
    pub done_waited: bool,
    /// Types from this context to its root.
    pub chain: Vec<String>,
    /// How long ago, by which goroutine and where its cancellation happened: precise mode's
    /// cancel probe saw it (null otherwise, e.g. cancelled before ctxprobe attached).
    pub cancelled_ago_ns: Option<u64>,
    pub cancelled_by_goid: Option<u64>,
    pub cancelled_at: Option<SourceFrame>,
    /// Precise mode, for a cancelled context: `probe` (the cancelled_* fields are the cancel
    /// probe's), `not_seen` (the probe was attached throughout and did not see it: cancelled
    /// before ctxprobe attached, or its slot was taken), `unavailable` (the probe was detached,
    /// over budget, at some point since: who cancelled it is not known). Null otherwise.
    pub cancel_attribution: Option<&'static str>,
    #[serde(skip)]
    pub facts: ContextFacts,
}

/// What the verdict needs about a context, beyond what is printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextFacts {
    /// `Done()` is nil: nothing in its chain can cancel it.
    pub never_cancelled: bool,
    /// Its state could not be seen (an opaque wrapper, unreadable memory).
    pub unknown: bool,
    pub deadline_unix_ns: Option<i64>,
    pub done_chan: Option<u64>,
    /// Address of the `cancelCtx` that decides `Err()` (the cancel probe's key).
    pub cancel_ctx: Option<u64>,
}

/// A channel the goroutine waits on (`waits_on[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChanWait {
    pub chan: String,
    pub dir: Option<&'static str>,
    pub elem_type: Option<String>,
    pub cap: u64,
    pub len: u64,
    pub closed: bool,
    pub ctx_done: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContextDiagnosis {
    pub contexts: Vec<HeldContext>,
    pub waits_on: Vec<ChanWait>,
    pub context_verdict: Option<Verdict>,
}

/// Reads what the diagnosis of a batch of goroutines will need of their waits, ahead of it.
pub struct WaitPrefetcher {
    layout: ObjectLayout,
}

impl WaitPrefetcher {
    /// Reads in a few syscalls what diagnosing these goroutines will read of their waits (the
    /// sudogs of a select's list, their channels' heads); [`ContextAnalyzer::diagnose`] then
    /// finds them in `mem` until [`BudgetedMemory::clear_prefetched`]. `waiting[i]` is
    /// `gs[i]`'s `g.waiting`, read with the `g` (a `g` whose state then stayed the same has it
    /// still). `reason` names a goroutine's wait reason.
    pub fn prefetch_waits(
        &self,
        mem: &BudgetedMemory<'_>,
        gs: &[RawG],
        waiting: &[Option<u64>],
        reason: &dyn Fn(&RawG) -> Option<String>,
    ) {
        let lay = &self.layout;
        let (Some(sudog_len), Some(head_len)) =
            (waits::sudog_read_len(lay), waits::chan_head_len(lay))
        else {
            return;
        };
        let mut sudogs = Vec::with_capacity(gs.len());
        for (g, w) in gs.iter().zip(waiting) {
            let (Some(w), Some(at)) = (w, g.addr.checked_add(lay.g_waiting)) else {
                continue;
            };
            if g.is_waiting() && waits::parks_on_channels(reason(g).as_deref()) {
                mem.insert_prefetched(at, w.to_le_bytes().to_vec());
                sudogs.push(*w);
            }
        }
        let mut chans = Vec::new();
        // A select's sudogs are a list (`waitlink`): one round per case, for the usual few.
        for _ in 0..PREFETCH_SUDOG_ROUNDS {
            sudogs.retain(|&a| a != 0);
            sudogs.sort_unstable();
            sudogs.dedup();
            if sudogs.is_empty() {
                break;
            }
            let read = mem.prefetch(&sudogs, sudog_len);
            chans.extend(read.iter().filter_map(|(_, b)| waits::sudog_chan(lay, b)));
            sudogs = read
                .iter()
                .filter_map(|(a, b)| waits::sudog_next(lay, b).filter(|n| n != a))
                .collect();
        }
        chans.retain(|&c| c != 0);
        chans.sort_unstable();
        chans.dedup();
        mem.prefetch(&chans, head_len);
    }
}

/// Diagnoses goroutines of one target; keeps per-type caches across snapshots.
pub struct ContextAnalyzer {
    layout: ObjectLayout,
    /// Runtime address of `runtime.firstmoduledata`.
    moduledata: u64,
    /// `[types, etypes)`, read from the module data once.
    types_range: Option<(u64, u64)>,
    decoder: Decoder,
    /// Itabs built at run time, from the runtime's table (refreshed per snapshot or dump).
    runtime_itabs: itabs::RuntimeItabs,
    /// The table could not be read: said once on stderr.
    itab_problem_said: bool,
    /// Frame sizes and stack maps by pc, for the liveness of stack words.
    frames: FrameCache,
    /// During a one-off dump only: context chains decoded, by the context value. Goroutines
    /// of one request or one leak share their contexts, and a dump is a racy snapshot anyway
    /// (a context cancelled while the dump runs may show either way), so each chain is read
    /// once per dump. Streaming never caches: a cancellation must show at the next look.
    dump_chains: Option<HashMap<Iface, Rc<[Link]>>>,
}

impl ContextAnalyzer {
    /// None when the binary's object offsets or module data are unknown.
    pub fn new(bin: &gobinary::GoBinary, bias: u64) -> Option<Self> {
        let layout = bin.objects.clone()?;
        let moduledata = bin.pclntab.moduledata_addr()?.checked_add(bias)?;
        Some(ContextAnalyzer {
            layout,
            moduledata,
            types_range: None,
            decoder: Decoder::new(),
            runtime_itabs: itabs::RuntimeItabs::new(
                bin.itab_table
                    .clone()
                    .map(|a| a.wrapping_add(bias))
                    .map_err(|e| format!("cannot locate it: {e}")),
            ),
            itab_problem_said: false,
            frames: FrameCache::default(),
            dump_chains: None,
        })
    }

    /// Starts (`true`) or ends a one-off dump: context chains are cached while it lasts.
    pub fn set_dump_cache(&mut self, on: bool) {
        self.dump_chains = on.then(HashMap::new);
        if on {
            self.runtime_itabs.mark_due();
        }
    }

    /// A snapshot starts: the next diagnosis looks for itabs the runtime built meanwhile.
    pub fn new_snapshot(&mut self) {
        self.runtime_itabs.mark_due();
    }

    /// Offset of `g.waiting`, for [`Self::prefetch_waits`]'s caller to read with each `g`.
    pub fn g_waiting_offset(&self) -> u64 {
        self.layout.g_waiting
    }

    /// What reads ahead of [`Self::diagnose`] for a batch of goroutines (see
    /// [`WaitPrefetcher::prefetch_waits`]); it can work on another thread.
    pub fn wait_prefetcher(&self) -> WaitPrefetcher {
        WaitPrefetcher {
            layout: self.layout.clone(),
        }
    }

    /// Contexts on `g`'s stack, what it waits on, and the verdict.
    pub fn diagnose(
        &mut self,
        mem: &BudgetedMemory<'_>,
        sym: &Symbolizer<'_>,
        g: &RawG,
        wait_reason: Option<&str>,
        unwound: &Unwound,
    ) -> ContextDiagnosis {
        mem.refill(memory::GOROUTINE_READ_BUDGET);
        // A copy, so the reader does not borrow self (the decoder's caches are updated).
        let layout = self.layout.clone();
        if self.types_range.is_none() {
            // Static: read once.
            self.types_range =
                TypeReader::new(mem, &layout, self.moduledata).map(|t| (t.types, t.etypes));
        }
        let Some((lo, hi)) = self.types_range else {
            return ContextDiagnosis::default();
        };
        let types = TypeReader {
            mem,
            layout: &layout,
            types: lo,
            etypes: hi,
        };
        if self.runtime_itabs.is_due() {
            self.refresh_runtime_itabs(&types);
            mem.refill(memory::GOROUTINE_READ_BUDGET);
        }
        let raw_waits = if g.is_waiting() {
            let decoder = &mut self.decoder;
            let mut name = |t: u64| decoder.type_name(&types, t);
            waits::channel_waits(&types, &layout, g.addr, wait_reason, &mut name)
        } else {
            Vec::new()
        };
        let waited: HashSet<u64> = raw_waits.iter().map(|w| w.chan).collect();
        let mut contexts = Vec::new();
        for (value, frame) in self.scan(&types, sym, unwound) {
            if contexts.len() >= MAX_CONTEXTS {
                break;
            }
            if let Some(held) = self.describe(&types, value, frame, &waited) {
                contexts.push(held);
            }
        }
        let done: HashSet<u64> = contexts.iter().filter_map(|c| c.facts.done_chan).collect();
        let waits_on: Vec<ChanWait> = raw_waits
            .into_iter()
            .map(|w| ChanWait {
                chan: format!("{:#x}", w.chan),
                dir: w.dir,
                elem_type: w.elem_type,
                cap: w.cap,
                len: w.len,
                closed: w.closed,
                ctx_done: done.contains(&w.chan),
            })
            .collect();
        let context_verdict = verdict::verdict(g.is_waiting(), wait_reason, &contexts, &waits_on);
        ContextDiagnosis {
            contexts,
            waits_on,
            context_verdict,
        }
    }

    /// Adds the `context.Context` itabs the runtime built since the last look (its own read
    /// budget, apart from the goroutine's).
    fn refresh_runtime_itabs(&mut self, types: &TypeReader<'_, BudgetedMemory<'_>>) {
        types.mem.refill(itabs::REFRESH_READ_BUDGET);
        let found = self.runtime_itabs.refresh(types);
        for (itab, typ) in found.added {
            self.decoder.add_runtime_itab(itab, typ);
        }
        if let Some(why) = found.problem {
            if !std::mem::replace(&mut self.itab_problem_said, true) {
                eprintln!(
                    "ctxprobe: contexts held through itabs built at run time may be missed: \
                     runtime.itabTable: {why}"
                );
            }
        }
    }

    /// Distinct (itab, data) pairs of `context.Context` on the stack with the function whose
    /// frame holds each, innermost first.
    fn scan(
        &mut self,
        types: &TypeReader<'_, BudgetedMemory<'_>>,
        sym: &Symbolizer<'_>,
        u: &Unwound,
    ) -> Vec<(Iface, String)> {
        // The stack's words, read in place (a dump scans a million stacks).
        let stack: &[u8] = &u.stack;
        let word = |i: usize| {
            stack
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let nwords = stack.len() / 8;
        // Candidate (itab, data) pairs first: most stacks hold none, and then their frames
        // and stack maps need not be looked at. Every copy of a pair is one: a dead copy lower
        // on the stack must not hide a live one above it.
        let mut candidates = Vec::new();
        for i in 0..nwords.saturating_sub(1) {
            let (itab, data) = (word(i), word(i + 1));
            // A context never has a nil data word (even Background points at zerobase).
            if data == 0 || self.decoder.context_type(types, itab).is_none() {
                continue;
            }
            candidates.push((i, itab, data));
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        let layout = sym.layout();
        let (pclntab, bias) = sym.pclntab();
        let fps = layout.frame_fps(&u.return_slots(pclntab, bias));
        // Liveness from the GC's own walk (pcsp frame sizes), whatever walk found `u.pcs`.
        let live = liveness::FrameLiveness::new(
            &FrameWalker::new(pclntab, bias),
            &mut self.frames,
            (u.pcs.first().copied().unwrap_or(0), u.sp()),
            u.base,
            stack,
        );
        let func_of = |pc: u64| {
            sym.func_name(pc.wrapping_sub(1))
                .unwrap_or_else(|| "?".to_string())
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, itab, data) in candidates {
            let addr = u.base + 8 * i as u64;
            // Stack maps mark only an interface's data word (its itab is never in the heap).
            if live.is_live(addr + 8) == Some(false) || !seen.insert((itab, data)) {
                continue;
            }
            let frame = frame_of(addr, layout, &u.pcs, &fps, sym, &func_of);
            out.push(((itab, data), frame));
        }
        out
    }

    fn describe(
        &mut self,
        types: &TypeReader<'_, BudgetedMemory<'_>>,
        value: Iface,
        frame: String,
        waited: &HashSet<u64>,
    ) -> Option<HeldContext> {
        let links = self.chain(types, value);
        // Each link's data word: a cancelCtx's address (timerCtx and afterFuncCtx embed theirs
        // at offset 0), the key of the cancel probe's records.
        let datas: Vec<u64> = std::iter::once(value.1)
            .chain(links.iter().filter_map(|l| l.parent.map(|p| p.1)))
            .collect();
        // A chain must end at a root or at a type with no parent field: a cancelCtx or value
        // context always has a parent. Anything else is a stale or mismatched pair of stack
        // words (a dead slot, an itab next to an unrelated word), not a context.
        let complete = links.len() >= MAX_CHAIN
            || links
                .last()
                .is_some_and(|l| l.parent.is_none() && matches!(l.own, Own::Root | Own::Opaque));
        if !complete {
            return None;
        }
        let first = links.first()?;
        let type_name = first.type_name.clone();
        // Done()/Err() come from the first link that is not a pass-through; Deadline() from
        // the first timerCtx before a root or WithoutCancel.
        let mut facts = ContextFacts::default();
        let mut err = None;
        let mut resolved = false;
        for (link, &data) in links.iter().zip(&datas) {
            match &link.own {
                Own::Delegate => continue,
                Own::Root | Own::Detach => facts.never_cancelled = true,
                Own::Opaque => facts.unknown = true,
                Own::Cancel { err: e, done, .. } => {
                    err = e.clone();
                    facts.done_chan = *done;
                    facts.cancel_ctx = Some(data);
                }
            }
            resolved = true;
            break;
        }
        if !resolved {
            // The chain ended (too long, unreadable) before anything decided.
            facts.unknown = true;
        }
        for link in links.iter() {
            match &link.own {
                Own::Cancel {
                    deadline: Some(d), ..
                } => {
                    facts.deadline_unix_ns = Some(*d);
                    break;
                }
                Own::Root | Own::Detach | Own::Opaque => break,
                _ => {}
            }
        }
        let deadline = facts.deadline_unix_ns.map(rfc3339);
        Some(HeldContext {
            frame,
            type_name,
            cancelled: err.is_some(),
            err,
            deadline,
            done_waited: facts.done_chan.is_some_and(|c| waited.contains(&c)),
            chain: links.iter().map(|l| l.type_name.clone()).collect(),
            cancelled_ago_ns: None,
            cancelled_by_goid: None,
            cancelled_at: None,
            cancel_attribution: None,
            facts,
        })
    }
}

impl ContextAnalyzer {
    /// The links from `value` to its root (cached during a dump).
    fn chain(&mut self, types: &TypeReader<'_, BudgetedMemory<'_>>, value: Iface) -> Rc<[Link]> {
        if let Some(links) = self.dump_chains.as_ref().and_then(|c| c.get(&value)) {
            return links.clone();
        }
        let mut links = Vec::new();
        let mut at = Some(value);
        let mut visited = HashSet::new();
        while let Some((itab, data)) = at {
            if links.len() >= MAX_CHAIN || !visited.insert((itab, data)) {
                break;
            }
            let Some(typ) = self.decoder.context_type(types, itab) else {
                break;
            };
            let Some(link) = self.decoder.link(types, typ, data) else {
                break;
            };
            at = link.parent;
            links.push(link);
        }
        let links: Rc<[Link]> = links.into();
        if let Some(cache) = &mut self.dump_chains {
            if cache.len() >= MAX_CACHED_CHAINS {
                cache.clear();
            }
            cache.insert(value, links.clone());
        }
        links
    }
}

/// The function a stack word belongs to, as Go's traceback attributes arguments: the words
/// from a callee's argp, up to its argument size, are the callee's spilled arguments although
/// they lie in its caller's frame; the rest of a frame is its own. `fps[k]` is frame k's fp
/// ([`FrameLayout::frame_fps`]).
fn frame_of(
    addr: u64,
    layout: FrameLayout,
    pcs: &[u64],
    fps: &[u64],
    sym: &Symbolizer<'_>,
    func_of: &dyn Fn(u64) -> String,
) -> String {
    // The innermost frame whose fp is above addr.
    let k = fps.iter().position(|&fp| addr < fp);
    let Some(k) = k else {
        return pcs.last().map(|&pc| func_of(pc)).unwrap_or_default();
    };
    if k > 0 {
        let callee_pc = pcs[k - 1];
        let args = sym.func_args(callee_pc.wrapping_sub(1)).unwrap_or(0);
        if let Some(argp) = layout.argp(fps[k - 1]) {
            if addr >= argp && addr < argp.saturating_add(args) {
                return func_of(callee_pc);
            }
        }
    }
    pcs.get(k).map(|&pc| func_of(pc)).unwrap_or_default()
}

/// RFC 3339 of a Unix-nanosecond instant (what humantime prints, UTC).
fn rfc3339(unix_ns: i64) -> String {
    let t = if unix_ns >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_ns as u64)
    } else {
        std::time::UNIX_EPOCH
    };
    humantime::format_rfc3339_nanos(t).to_string()
}
