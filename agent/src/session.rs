//! One inspection of one process: attach, snapshot, report, detach.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gobinary::waitreason::status_name;
use gobinary::GoBinary;

use crate::contexts::memory::{BudgetedMemory, GOROUTINE_READ_BUDGET};
use crate::contexts::{ContextAnalyzer, ContextDiagnosis};
use crate::goroutines::{GoroutineReader, RawG, ReadError};
use crate::groups::Grouper;
use crate::probes::ProbeController;
use crate::procmem::{MemError, ProcessMemory};
use crate::report::{
    CreationSiteCount, Event, GoroutineReport, GoroutineSummary, Reporter, SinceSource,
};
use crate::snapshot_chunks::ChunkedSnapshot;
use crate::stack::{self, Symbolizer};
use crate::target::{monotonic_ns, TargetProcess, TargetState};
use crate::threads::StackFrame;
use crate::tracker::{Park, ParkTracker};

/// Most probe-map look-ups per snapshot (each is a syscall on our side).
const MAX_RECORD_LOOKUPS: usize = 50_000;
/// How many creation sites a summary lists.
const TOP_SITES: usize = 5;

pub struct Settings {
    pub threshold: Duration,
    pub include_system: bool,
}

pub struct Session<'a> {
    pub target: &'a TargetProcess,
    pub bin: &'a GoBinary,
    pub mem: &'a ProcessMemory,
    pub bias: u64,
    pub settings: Settings,
    reader: GoroutineReader<'a>,
    sym: Symbolizer<'a>,
    tracker: ParkTracker,
    pub probes: Option<ProbeController>,
    system_by_startpc: HashMap<u64, bool>,
    last_snapshot: Vec<RawG>,
    pub last_snapshot_ns: i64,
    prev_site_counts: HashMap<u64, u64>,
    /// Context diagnosis (None when the binary lacks what it needs), and its read budget.
    contexts: Option<ContextAnalyzer>,
    context_mem: BudgetedMemory<'a>,
}

/// The runtime's own record of how long `g` has been blocked (its GC stamp), as of `target_now`.
fn runtime_blocked(g: &RawG, target_now: i64) -> Option<(u64, SinceSource)> {
    (g.is_waiting() && g.waitsince > 0 && g.waitsince <= target_now)
        .then(|| ((target_now - g.waitsince) as u64, SinceSource::Runtime))
}

/// Bytes of stack one batch of a dump reads at most (besides its first goroutine).
const BATCH_STACK_BYTES: usize = 8 << 20;

/// Where the batch of goroutines starting at `from` ends: at most one chunk, and at most
/// [`BATCH_STACK_BYTES`] of stacks unless one goroutine alone has more.
fn stack_batch_end(gs: &[RawG], from: usize) -> usize {
    let mut bytes = 0;
    let mut end = from;
    while end < gs.len() {
        bytes += stack::read_len(&gs[end]);
        if bytes > BATCH_STACK_BYTES && end > from {
            break;
        }
        end += 1;
    }
    end
}

/// Why the loop ended.
pub enum End {
    Duration,
    Signal,
    TargetExited,
    /// The target replaced its program: its goroutines and our probes are gone with the image.
    TargetExec,
}

impl End {
    pub fn name(&self) -> &'static str {
        match self {
            End::Duration => "duration",
            End::Signal => "signal",
            End::TargetExited => "target_exited",
            End::TargetExec => "target_exec",
        }
    }
}

impl<'a> Session<'a> {
    pub fn new(
        target: &'a TargetProcess,
        bin: &'a GoBinary,
        mem: &'a ProcessMemory,
        bias: u64,
        settings: Settings,
    ) -> Session<'a> {
        let reader = GoroutineReader::new(
            mem,
            &bin.layout,
            bin.vars.allgs.wrapping_add(bias),
            bin.vars.allglen.wrapping_add(bias),
        );
        Session {
            target,
            bin,
            mem,
            bias,
            settings,
            reader,
            sym: Symbolizer::new(&bin.pclntab, bias),
            tracker: ParkTracker::default(),
            probes: None,
            system_by_startpc: HashMap::new(),
            last_snapshot: Vec::new(),
            last_snapshot_ns: 0,
            prev_site_counts: HashMap::new(),
            contexts: ContextAnalyzer::new(bin, bias),
            context_mem: BudgetedMemory::new(mem, GOROUTINE_READ_BUDGET),
        }
    }

    /// Reads the goroutine list; `Ok(None)` when the target has gone.
    pub fn snapshot(&mut self) -> Result<Option<Vec<RawG>>> {
        let start = monotonic_ns();
        match self.reader.read_all() {
            Ok(gs) => {
                self.last_snapshot_ns = monotonic_ns() - start;
                Ok(Some(gs))
            }
            Err(ReadError::Mem(MemError::Gone)) => Ok(None),
            Err(e) if !self.target.is_alive() => {
                let _ = e;
                Ok(None)
            }
            Err(e) => Err(e).context("cannot read the goroutine list"),
        }
    }

    fn is_system(&mut self, g: &RawG) -> bool {
        self.is_system_start(g.startpc)
    }

    fn is_system_start(&mut self, startpc: u64) -> bool {
        if let Some(&s) = self.system_by_startpc.get(&startpc) {
            return s;
        }
        let name = self.sym.func_name(startpc);
        let s = stack::is_system_goroutine(name.as_deref());
        self.system_by_startpc.insert(startpc, s);
        s
    }

    fn wait_reason_name(&self, g: &RawG) -> Option<String> {
        if !g.is_waiting() || g.wait_reason == 0 {
            return None;
        }
        Some(
            self.bin
                .wait_reasons
                .get(g.wait_reason as usize)
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| format!("waitreason({})", g.wait_reason)),
        )
    }

    /// A full report of one goroutine: stack read now, symbolized.
    fn describe(&mut self, g: &RawG, blocked: Option<(u64, SinceSource)>) -> GoroutineReport {
        self.describe_with(g, blocked, true)
    }

    /// [`Self::describe`], with or without the context diagnosis.
    fn describe_with(
        &mut self,
        g: &RawG,
        blocked: Option<(u64, SinceSource)>,
        with_contexts: bool,
    ) -> GoroutineReport {
        let unwound = stack::unwind_with_stack(self.mem, &self.bin.pclntab, self.bias, g);
        self.describe_unwound(g, blocked, unwound, with_contexts)
    }

    /// A full report of one goroutine from its stack as read.
    fn describe_unwound(
        &mut self,
        g: &RawG,
        blocked: Option<(u64, SinceSource)>,
        unwound: Result<stack::Unwound, stack::StackError>,
        with_contexts: bool,
    ) -> GoroutineReport {
        let wait_reason = self.wait_reason_name(g);
        let (stack, stack_error, contexts) = match unwound {
            Ok(unwound) => {
                let analyzer = self.contexts.as_mut().filter(|_| with_contexts);
                let contexts = match analyzer {
                    Some(a) => a.diagnose(
                        &self.context_mem,
                        &self.sym,
                        g,
                        wait_reason.as_deref(),
                        &unwound,
                    ),
                    None => ContextDiagnosis::default(),
                };
                (stack::symbolize(&self.sym, &unwound.pcs), None, contexts)
            }
            Err(e) => (Vec::new(), Some(e.to_string()), ContextDiagnosis::default()),
        };
        let system = self.is_system(g);
        GoroutineReport {
            goid: g.goid,
            state: status_name(g.status),
            wait_reason,
            blocked_ns: blocked.map(|b| b.0),
            since_exact: blocked.is_some_and(|b| b.1 == SinceSource::Probe),
            since_source: blocked.map(|b| b.1).unwrap_or(SinceSource::Unknown),
            stack,
            stack_error,
            created_by: self.sym.creation_site(g.gopc),
            parent_goid: g.parent_goid.filter(|&p| p != 0),
            system,
            contexts,
        }
    }

    /// `--once`: every goroutine, one record each.
    pub fn dump_all(&mut self, out: &mut Reporter) -> Result<u64> {
        self.for_each_described(true, |report, _| out.emit_owned(Event::Goroutine(report)))
    }

    /// `--once --grouped`: every goroutine, one record per group, largest first.
    pub fn dump_grouped(&mut self, out: &mut Reporter) -> Result<u64> {
        let mut grouper = Grouper::default();
        // Group records carry no contexts: their diagnosis would be thrown away.
        self.for_each_described(false, |report, g| {
            grouper.add(report, g.stack_hi.saturating_sub(g.stack_lo));
            Ok(())
        })?;
        let records = grouper.into_records();
        let n = records.len() as u64;
        for r in records {
            out.emit_owned(Event::Group(r))?;
        }
        Ok(n)
    }

    /// One snapshot, each goroutine described (stack read and checked against its state) and
    /// handed to `each` in `allgs` order; returns how many. The list is read a chunk at a time
    /// and each chunk is handed on before the next is read, so memory stays bounded however
    /// many goroutines there are.
    fn for_each_described(
        &mut self,
        with_contexts: bool,
        each: impl FnMut(GoroutineReport, &RawG) -> std::io::Result<()>,
    ) -> Result<u64> {
        if let Some(a) = self.contexts.as_mut() {
            a.set_dump_cache(true);
        }
        let described = self.describe_chunks(with_contexts, each);
        if let Some(a) = self.contexts.as_mut() {
            a.set_dump_cache(false);
        }
        self.context_mem.clear_prefetched();
        described
    }

    fn describe_chunks(
        &mut self,
        with_contexts: bool,
        mut each: impl FnMut(GoroutineReport, &RawG) -> std::io::Result<()>,
    ) -> Result<u64> {
        let start = monotonic_ns();
        let reader = self.own_reader();
        // g.waiting comes with each g: the wait diagnosis then needs no read of the g again.
        let waiting_offset = self
            .contexts
            .as_ref()
            .filter(|_| with_contexts)
            .map(|a| a.g_waiting_offset());
        let mut chunks =
            ChunkedSnapshot::start(&reader, waiting_offset).map_err(|e| self.read_failure(e, 0))?;
        let target_now = self.target.monotonic_now_ns();
        let mut n = 0;
        while let Some(chunk) = chunks.next_chunk() {
            let mut chunk = chunk.map_err(|e| self.read_failure(e, n))?;
            if !self.settings.include_system {
                chunk.retain(|(g, _)| !self.is_system(g));
            }
            let (gs, waiting): (Vec<RawG>, Vec<Option<u64>>) = chunk.into_iter().unzip();
            let mut from = 0;
            while from < gs.len() {
                let to = stack_batch_end(&gs, from);
                let batch = &gs[from..to];
                let reports =
                    self.describe_batch(batch, &waiting[from..to], target_now, with_contexts)?;
                // A target that dies or execs mid-dump makes every later read fail (or read
                // another program): stop at the first sign rather than print empty stacks.
                // A batch is at most CHUNK goroutines, so this also checks every CHUNK.
                self.check_target(n)?;
                for (report, g) in reports.into_iter().zip(batch) {
                    each(report, g)?;
                    n += 1;
                }
                from = to;
            }
        }
        self.last_snapshot_ns = monotonic_ns() - start;
        Ok(n)
    }

    /// Fails if the target exited or replaced its program; `n` goroutines were read so far.
    fn check_target(&self, n: u64) -> Result<()> {
        match self.target.state() {
            TargetState::Exited => {
                bail!("the target process exited during the dump ({n} goroutines read)")
            }
            TargetState::Execed => bail!(
                "the target process replaced its program (exec) during the dump \
                 ({n} goroutines read)"
            ),
            TargetState::Running | TargetState::Stopped => Ok(()),
        }
    }

    /// The error for a failed read of the goroutine list, `n` goroutines into a dump.
    fn read_failure(&self, e: ReadError, n: u64) -> anyhow::Error {
        if matches!(e, ReadError::Mem(MemError::Gone)) || !self.target.is_alive() {
            return match self.check_target(n) {
                Err(gone) => gone,
                Ok(()) => anyhow::anyhow!("the target process exited"),
            };
        }
        anyhow::Error::new(e).context("cannot read the goroutine list")
    }

    /// Reports for a batch of goroutines whose stacks belong to the states reported: their
    /// stacks, waits and `g`s are each read in a few syscalls. The target keeps running while
    /// we read, so each `g` is re-read after its stack and described again (once) if it moved.
    fn describe_batch(
        &mut self,
        gs: &[RawG],
        waiting: &[Option<u64>],
        target_now: i64,
        with_contexts: bool,
    ) -> Result<Vec<GoroutineReport>> {
        let gone = |e: MemError| match e {
            MemError::Gone => anyhow::anyhow!("the target process exited during the dump"),
            e => anyhow::Error::new(e).context("cannot read goroutine stacks"),
        };
        let stacks = stack::unwind_many(self.mem, &self.bin.pclntab, self.bias, gs).map_err(
            |e| match self.check_target(0) {
                Err(dead) => dead,
                Ok(()) => gone(e),
            },
        )?;
        if let Some(a) = self.contexts.as_ref().filter(|_| with_contexts) {
            a.prefetch_waits(&self.context_mem, gs, waiting);
        }
        let mut reports = Vec::with_capacity(gs.len());
        for (g, unwound) in gs.iter().zip(stacks) {
            let blocked = runtime_blocked(g, target_now);
            reports.push(self.describe_unwound(g, blocked, unwound, with_contexts));
        }
        self.context_mem.clear_prefetched();
        let addrs: Vec<u64> = gs.iter().map(|g| g.addr).collect();
        let again = match self.reader.reread_many(&addrs) {
            Ok(again) => again,
            // Checked by the caller: the reports say what could be read.
            Err(_) => return Ok(reports),
        };
        for ((g, again), report) in gs.iter().zip(again).zip(reports.iter_mut()) {
            if g.is_running() {
                continue; // no stack was read
            }
            if let Some(again) = again.filter(|a| !a.same_state_as(g)) {
                *report = self.describe_again(&again, target_now, with_contexts);
            }
        }
        Ok(reports)
    }

    /// The second and last look at a goroutine that moved while its stack was read.
    fn describe_again(
        &mut self,
        g: &RawG,
        target_now: i64,
        with_contexts: bool,
    ) -> GoroutineReport {
        let mut report = self.describe_with(g, runtime_blocked(g, target_now), with_contexts);
        if g.is_running() {
            return report;
        }
        match self.reader.reread(g.addr) {
            Some(again) if !again.same_state_as(g) => {
                report.stack.clear();
                report.contexts = ContextDiagnosis::default();
                report.stack_error =
                    Some("the goroutine kept running while its stack was read".into());
                report
            }
            _ => report,
        }
    }

    /// Counts the non-system goroutines now, reading the list a chunk at a time; `Ok(None)`
    /// when the target has gone.
    pub fn count_user_goroutines(&mut self) -> Result<Option<u64>> {
        let start = monotonic_ns();
        let reader = self.own_reader();
        let mut chunks = match ChunkedSnapshot::start(&reader, None) {
            Ok(c) => c,
            Err(e) => return self.count_failure(e),
        };
        let mut n = 0;
        while let Some(chunk) = chunks.next_chunk() {
            match chunk {
                Ok(gs) => n += gs.iter().filter(|(g, _)| !self.is_system(g)).count() as u64,
                Err(e) => return self.count_failure(e),
            }
        }
        self.last_snapshot_ns = monotonic_ns() - start;
        Ok(Some(n))
    }

    /// A goroutine reader of its own, for chunks read while `self` is borrowed mutably.
    fn own_reader(&self) -> GoroutineReader<'a> {
        let bin = self.bin;
        GoroutineReader::new(
            self.mem,
            &bin.layout,
            bin.vars.allgs.wrapping_add(self.bias),
            bin.vars.allglen.wrapping_add(self.bias),
        )
    }

    fn count_failure(&self, e: ReadError) -> Result<Option<u64>> {
        match e {
            ReadError::Mem(MemError::Gone) => Ok(None),
            _ if !self.target.is_alive() => Ok(None),
            e => Err(e).context("cannot read the goroutine list"),
        }
    }

    /// The target was stopped for `ns` and runs again (see [`ParkTracker::exclude_pause`]).
    pub fn exclude_pause(&mut self, ns: i64) {
        self.tracker.exclude_pause(ns);
    }

    /// One streaming step: snapshot, track parks, report what crossed the threshold or ended.
    /// `Ok(false)` when the target has gone.
    pub fn poll(&mut self, out: &mut Reporter) -> Result<bool> {
        let Some(gs) = self.snapshot()? else {
            return Ok(false);
        };
        // One clock reading for both clocks: time spent between two readings (observe() below)
        // would count towards the `blocked` record's duration but not the `unblocked` one's.
        let now = monotonic_ns();
        let target_now = now + self.target.monotonic_offset_ns;
        let changes = self.tracker.observe(&gs, now);

        for park in changes.ended_flagged {
            self.report_unblocked(out, &park, now, target_now)?;
        }
        if let Some(probes) = &self.probes {
            for &addr in changes.new_parks.iter().take(MAX_RECORD_LOOKUPS) {
                let Some(park) = self.tracker.get_mut(addr) else {
                    continue;
                };
                if let Some(rec) = probes.park_record(addr) {
                    // The record is this park's if it is the same goroutine, it has left
                    // `_Grunning` exactly once since (trackingSeq moves on that transition), and
                    // the probe has been attached ever since (else a later park went unseen
                    // and trackingSeq may just have wrapped around).
                    if rec.goid == park.g.goid
                        && rec.seq.wrapping_add(1) == park.g.tracking_seq
                        && rec.reason == park.g.wait_reason
                        && rec.wake_ns == 0
                        && probes.attached_continuously_since(rec.park_ns as i64)
                    {
                        park.exact_park_ns = Some(rec.park_ns as i64);
                    }
                }
            }
        }

        let threshold = self.settings.threshold.as_nanos() as u64;
        let mut candidates: Vec<(u64, u64)> = self
            .tracker
            .parks()
            .filter(|p| {
                !p.flagged
                    && !p.ignored
                    && p.confirmed()
                    && p.blocked(now, target_now).0 >= threshold
            })
            .map(|p| (p.g.goid, p.g.addr))
            .collect();
        // Oldest goroutines first, so a report reads in creation order.
        candidates.sort_unstable();
        for (_, addr) in candidates {
            let Some(park) = self.tracker.get_mut(addr) else {
                continue;
            };
            let g = park.g.clone();
            let blocked = park.blocked(now, target_now);
            if !self.settings.include_system && self.is_system(&g) {
                if let Some(p) = self.tracker.get_mut(addr) {
                    // Remember the decision so it is not revisited every snapshot.
                    p.ignored = true;
                }
                continue;
            }
            let report = self.describe(&g, Some(blocked));
            // The goroutine may have woken while we read its stack: then the stack is not
            // this park's and the next snapshot will tell.
            match self.reader.reread(addr) {
                Some(again) if again.same_park_as(&g) && again.is_waiting() => {}
                _ => continue,
            }
            if let Some(p) = self.tracker.get_mut(addr) {
                p.flagged = true;
            }
            if let Some(probes) = &mut self.probes {
                probes.watch(addr);
            }
            out.emit(&Event::Blocked {
                g: report,
                threshold_ns: threshold,
            })?;
        }
        self.last_snapshot = gs;
        Ok(true)
    }

    fn report_unblocked(
        &mut self,
        out: &mut Reporter,
        park: &Park,
        now: i64,
        target_now: i64,
    ) -> Result<()> {
        if let Some(probes) = &mut self.probes {
            probes.unwatch(park.g.addr);
        }
        if !self.settings.include_system && self.is_system(&park.g) {
            return Ok(());
        }
        // It woke somewhere between the last snapshot that saw it parked and now: report the
        // part we know it was blocked for.
        let seen_ago = now - park.last_seen_ns;
        let (blocked_ns, _) = park.blocked(park.last_seen_ns, target_now - seen_ago);
        out.emit(&Event::Unblocked {
            goid: park.g.goid,
            wait_reason: self.wait_reason_name(&park.g),
            blocked_ns,
            exact: false,
        })?;
        Ok(())
    }

    /// Exact wake-ups from the wake probe (precise mode).
    pub fn drain_wake_events(&mut self, out: &mut Reporter) -> Result<()> {
        let Some(probes) = &mut self.probes else {
            return Ok(());
        };
        let events = probes.take_wake_events();
        for ev in events {
            let Some(park) = self.tracker.remove(ev.g) else {
                continue;
            };
            if !park.flagged || park.g.goid != ev.goid {
                continue;
            }
            if let Some(p) = &mut self.probes {
                p.unwatch(ev.g);
            }
            let start = park.exact_park_ns.unwrap_or(ev.park_ns as i64);
            let exact = park.exact_park_ns.is_some();
            let blocked_ns = if exact {
                (ev.wake_ns as i64 - start).max(0) as u64
            } else {
                let target_offset = self.target.monotonic_offset_ns;
                park.blocked(ev.wake_ns as i64, ev.wake_ns as i64 + target_offset)
                    .0
            };
            out.emit(&Event::Unblocked {
                goid: park.g.goid,
                wait_reason: self.wait_reason_name(&park.g),
                blocked_ns,
                exact,
            })?;
        }
        Ok(())
    }

    pub fn summary(&mut self) -> GoroutineSummary {
        let gs = std::mem::take(&mut self.last_snapshot);
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
        let mut sites: HashMap<u64, u64> = HashMap::new();
        let mut user = 0;
        let mut system = 0;
        for g in &gs {
            if self.is_system(g) {
                system += 1;
                if !self.settings.include_system {
                    continue;
                }
            } else {
                user += 1;
            }
            *by_state.entry(status_name(g.status)).or_default() += 1;
            if let Some(r) = self.wait_reason_name(g) {
                *by_reason.entry(r).or_default() += 1;
            }
            *sites.entry(g.gopc).or_default() += 1;
        }
        let mut top: Vec<(u64, u64)> = sites.iter().map(|(&pc, &n)| (pc, n)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut top_sites = Vec::new();
        for (pc, n) in top {
            if top_sites.len() == TOP_SITES {
                break;
            }
            let Some(site) = self.sym.creation_site(pc) else {
                continue;
            };
            let before = self.prev_site_counts.get(&pc).copied().unwrap_or(0);
            top_sites.push(CreationSiteCount {
                site,
                goroutines: n,
                delta: n as i64 - before as i64,
            });
        }
        self.prev_site_counts = sites;
        let now = monotonic_ns();
        let probe = self.probes.as_mut().map(|p| p.status(now));
        self.last_snapshot = gs;
        GoroutineSummary {
            goroutines: if self.settings.include_system {
                user + system
            } else {
                user
            },
            by_state,
            by_wait_reason: by_reason,
            blocked: self.tracker.flagged_count(),
            system_goroutines: system,
            top_creation_sites: top_sites,
            probe,
            snapshot_ms: self.last_snapshot_ns as f64 / 1e6,
        }
    }
}

impl Session<'_> {
    /// Names the frames of a native (thread) stack that are Go code in the target executable,
    /// from `.gopclntab`: stripped Go binaries have no `.symtab` or DWARF for the native
    /// symbolizer to use.
    pub fn name_go_frames(&self, stack: &mut [StackFrame]) {
        let exe_name = std::path::Path::new(&self.target.exe_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        for (i, frame) in stack.iter_mut().enumerate() {
            if frame.func.is_some() || frame.library != exe_name {
                continue;
            }
            let link = frame.addr.wrapping_sub(self.bias);
            // Return addresses point after the call; the innermost frame's pc does not.
            let at = if i == 0 { link } else { link.wrapping_sub(1) };
            let Some(func) = self.bin.pclntab.func_at(at) else {
                continue;
            };
            frame.offset = Some(link.wrapping_sub(func.entry));
            frame.func = Some(func.name);
            if frame.file.is_none() {
                if let Some((file, line)) = self.bin.pclntab.line_at(at) {
                    frame.file = Some(file);
                    frame.line = Some(line);
                }
            }
        }
    }

    /// The goroutine each OS thread is running, from the last snapshot: running and syscall
    /// goroutines have `g.m`, and `m.procid` is the thread id.
    pub fn goid_on_thread(&self, tid: u32) -> Option<u64> {
        self.last_snapshot
            .iter()
            .filter(|g| g.m != 0)
            .find_map(|g| {
                let procid = self
                    .mem
                    .read_u64(g.m.wrapping_add(self.bin.layout.m_procid))
                    .ok()?;
                (procid == tid as u64).then_some(g.goid)
            })
    }
}
