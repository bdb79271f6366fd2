//! One inspection of one process: attach, snapshot, report, detach. The `--once` dump is in
//! [`once`].

mod once;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use gobinary::waitreason::status_name;
use gobinary::GoBinary;

use crate::contexts::memory::{BudgetedMemory, GOROUTINE_READ_BUDGET};
use crate::contexts::{ContextAnalyzer, ContextDiagnosis};
use crate::goroutines::{GoroutineReader, RawG, ReadError};
use crate::groups::stream::{GroupLabel, Member, StreamGroups, StreamKey, StreamSettings};
use crate::probes::ProbeController;
use crate::procmem::{MemError, ProcessMemory};
use crate::report::{
    CreationSiteCount, Event, GoroutineReport, GoroutineSummary, Reporter, SinceSource,
};
use crate::stack::{self, Symbolizer};
use crate::target::{monotonic_ns, TargetProcess, TargetState};
use crate::threads::StackFrame;
use crate::tracker::{Changes, Park, ParkTracker};

/// Most probe-map look-ups per snapshot (each is a syscall on our side).
const MAX_RECORD_LOOKUPS: usize = 50_000;
/// How many creation sites a summary lists.
const TOP_SITES: usize = 5;

pub struct Settings {
    pub threshold: Duration,
    pub include_system: bool,
    /// Streaming: `group` records per summary interval.
    pub max_groups: usize,
    /// Streaming: `blocked` records per group.
    pub samples_per_group: u32,
    /// Streaming: a `blocked` record for every goroutine past the threshold.
    pub every_goroutine: bool,
    /// Streaming `--leaks`: records carry the leak analysis' verdicts.
    pub leaks: bool,
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
    /// Streaming: the scan under way, and what the last complete one counted.
    scan: Option<Scan>,
    counts: ScanCounts,
    /// Scans completed so far.
    scans_finished: u64,
    /// At the end of the last scan: parks past the threshold, and the verdicts of the
    /// reported ones (counting a million parks at every summary would cost more).
    past_threshold: u64,
    verdicts: BTreeMap<String, u64>,
    /// Time spent reading the last snapshot (all its steps).
    pub last_snapshot_ns: i64,
    prev_site_counts: HashMap<u64, u64>,
    /// Context diagnosis (None when the binary lacks what it needs), and its read budget.
    contexts: Option<ContextAnalyzer>,
    /// `--leaks`: the verdicts records carry (set before a dump; while streaming, the latest
    /// analysis, numbered `leak_epoch` from 1).
    pub leaks: Option<crate::leaks::LeakAnalysis>,
    leak_epoch: u32,
    /// At the end of the last scan: grouped parks called leaked, when an analysis has said.
    leaked_now: Option<u64>,
    context_mem: BudgetedMemory<'a>,
    /// Streaming: groups of parked goroutines.
    groups: StreamGroups,
}

/// The name of a wait reason, from the binary's table (`wait_reasons`); None for none.
fn reason_name(wait_reasons: &[String], wait_reason: u8) -> Option<String> {
    if wait_reason == 0 {
        return None;
    }
    Some(
        wait_reasons
            .get(wait_reason as usize)
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("waitreason({wait_reason})")),
    )
}

/// The runtime's own record of how long `g` has been blocked (its GC stamp), as of `target_now`.
fn runtime_blocked(g: &RawG, target_now: i64) -> Option<(u64, SinceSource)> {
    (g.is_waiting() && g.waitsince > 0 && g.waitsince <= target_now)
        .then(|| ((target_now - g.waitsince) as u64, SinceSource::Runtime))
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
        let groups = StreamGroups::new(
            StreamSettings {
                threshold_ns: settings.threshold.as_nanos() as u64,
                max_groups: settings.max_groups,
                samples_per_group: settings.samples_per_group,
                leaks: settings.leaks,
            },
            monotonic_ns(),
        );
        let leaks = settings.leaks.then(crate::leaks::LeakAnalysis::empty);
        Session {
            groups,
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
            scan: None,
            counts: ScanCounts::default(),
            scans_finished: 0,
            past_threshold: 0,
            verdicts: BTreeMap::new(),
            last_snapshot_ns: 0,
            prev_site_counts: HashMap::new(),
            contexts: ContextAnalyzer::new(bin, bias),
            leaks,
            leak_epoch: 0,
            leaked_now: None,
            context_mem: BudgetedMemory::new(mem, GOROUTINE_READ_BUDGET),
        }
    }

    /// The goroutines the runtime would count (`runtime.NumGoroutine`), read in chunks so a
    /// million of them are never held at once; proves the list is readable before anything is
    /// attached. `Ok(None)` when the target has gone.
    pub fn count_at_attach(&mut self) -> Result<Option<u64>> {
        let mem_error = |e: ReadError| match e {
            ReadError::Mem(m) => anyhow::Error::new(m),
            other => anyhow::Error::new(other),
        };
        let addrs = match self.reader.g_addresses() {
            Ok(a) => a,
            Err(ReadError::Mem(MemError::Gone)) => return Ok(None),
            Err(e) => return Err(mem_error(e)),
        };
        // Half the list on another thread: the reads are most of the work, and a million
        // goroutines take a while.
        let (first, second) = addrs.split_at(addrs.len() / 2);
        let (reader, pclntab, bias) = (&self.reader, &self.bin.pclntab, self.bias);
        let (mine, other) = std::thread::scope(|scope| {
            let other = std::thread::Builder::new()
                .name("count".into())
                .spawn_scoped(scope, || count_user(reader, second, pclntab, bias));
            let mine = count_user(reader, first, pclntab, bias);
            let other = match other {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(ReadError::Corrupt("the counting thread panicked".into()))
                }),
                // No thread to spare: this one does it all.
                Err(_) => count_user(reader, second, pclntab, bias),
            };
            (mine, other)
        });
        let mut n = 0;
        for counted in [mine, other] {
            match counted {
                Ok((count, system)) => {
                    n += count;
                    self.system_by_startpc.extend(system);
                }
                Err(ReadError::Mem(MemError::Gone)) => return Ok(None),
                Err(e) => return Err(mem_error(e)),
            }
        }
        Ok(Some(n))
    }

    fn is_system(&mut self, g: &RawG) -> bool {
        self.is_system_start(g.startpc)
    }

    fn is_system_start(&mut self, startpc: u64) -> bool {
        if let Some(&s) = self.system_by_startpc.get(&startpc) {
            return s;
        }
        let s = stack::is_system_start(&self.bin.pclntab, self.bias, startpc);
        self.system_by_startpc.insert(startpc, s);
        s
    }

    fn wait_reason_name(&self, g: &RawG) -> Option<String> {
        if !g.is_waiting() {
            return None;
        }
        self.reason_name(g.wait_reason)
    }

    fn reason_name(&self, wait_reason: u8) -> Option<String> {
        reason_name(&self.bin.wait_reasons, wait_reason)
    }

    /// A full report of one goroutine: stack read now, symbolized.
    fn describe(&mut self, g: &RawG, blocked: Option<(u64, SinceSource)>) -> GoroutineReport {
        let unwound = stack::unwind_with_stack(self.mem, &self.bin.pclntab, self.bias, g);
        self.describe_unwound(g, blocked, unwound)
    }

    /// A full report of one goroutine from its stack as read.
    fn describe_unwound(
        &mut self,
        g: &RawG,
        blocked: Option<(u64, SinceSource)>,
        unwound: Result<stack::Unwound, stack::StackError>,
    ) -> GoroutineReport {
        let wait_reason = self.wait_reason_name(g);
        let (stack, stack_error, contexts) = match unwound {
            Ok(unwound) => {
                let mut contexts = match self.contexts.as_mut() {
                    Some(a) => a.diagnose(
                        &self.context_mem,
                        &self.sym,
                        g,
                        wait_reason.as_deref(),
                        &unwound,
                    ),
                    None => ContextDiagnosis::default(),
                };
                // Precise mode: who cancelled its contexts, from the cancel probe's records.
                if let Some(p) = &self.probes {
                    let lookup = |addr| p.cancel_seen(addr);
                    crate::contexts::cancels::attribute(
                        &mut contexts,
                        &lookup,
                        &self.sym,
                        monotonic_ns(),
                    );
                }
                (
                    stack::symbolize_shared(&self.sym, &unwound.pcs),
                    None,
                    contexts,
                )
            }
            Err(e) => (
                Vec::new().into(),
                Some(e.to_string()),
                ContextDiagnosis::default(),
            ),
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
            created_by: self.sym.shared_creation_site(g.gopc),
            parent_goid: g.parent_goid.filter(|&p| p != 0),
            system,
            contexts,
            leaked: self.leaks.as_ref().map(|a| a.verdict_for(g)),
        }
    }

    /// The target was stopped for `ns` and runs again (see [`ParkTracker::exclude_pause`]).
    pub fn exclude_pause(&mut self, ns: i64) {
        self.tracker.exclude_pause(ns);
    }

    /// One step of the streaming scan: starts a scan if none is under way, then reads one
    /// chunk of goroutines, tracks their parks, groups them and reports what crossed the
    /// threshold or ended. [`Step::Done`] after the scan's last chunk.
    pub fn poll_step(&mut self, out: &mut Reporter) -> Result<Step> {
        let started = monotonic_ns();
        if self.scan.is_none() {
            let addrs = match self.reader.g_addresses() {
                Ok(a) => a,
                Err(ReadError::Mem(MemError::Gone)) => return Ok(Step::Gone),
                Err(_) if !self.target.is_alive() => return Ok(Step::Gone),
                Err(e) => return Err(e).context("cannot read the goroutine list"),
            };
            self.tracker.begin_scan(started);
            if let Some(a) = self.contexts.as_mut() {
                a.new_snapshot();
            }
            self.scan = Some(Scan {
                addrs,
                next: 0,
                counts: ScanCounts::default(),
                busy_ns: 0,
            });
        }
        let more = match self.scan_chunk(out) {
            Ok(more) => more,
            Err(e) => {
                self.scan = None;
                if !self.target.is_alive() {
                    return Ok(Step::Gone);
                }
                return Err(e);
            }
        };
        if let Some(scan) = &mut self.scan {
            scan.busy_ns += monotonic_ns() - started;
        }
        if more {
            return Ok(Step::More);
        }
        self.finish_scan(out)?;
        Ok(Step::Done)
    }

    /// Reads the scan's next chunk; false when it was the last.
    fn scan_chunk(&mut self, out: &mut Reporter) -> Result<bool> {
        let Some(scan) = &mut self.scan else {
            return Ok(false);
        };
        let base = scan.next;
        let end = base.saturating_add(SCAN_CHUNK).min(scan.addrs.len());
        let chunk = scan.addrs.get(base..end).unwrap_or_default().to_vec();
        scan.next = end;
        let more = end < scan.addrs.len();
        let gs = self
            .reader
            .read_gs(&chunk)
            .context("cannot read the goroutine list")?;
        // One clock reading for both clocks: time spent between two readings would count
        // towards the `blocked` record's duration but not the `unblocked` one's.
        let now = monotonic_ns();
        let target_now = now + self.target.monotonic_offset_ns;
        let mut changes = Changes::default();
        self.tracker
            .observe_chunk(base, &chunk, &gs, now, &mut changes);
        self.count(&gs);
        self.end_parks(out, std::mem::take(&mut changes.ended), now, target_now)?;
        self.time_new_parks_by_probe(&changes.new_parks);
        self.group_parks(&changes.parked, &gs);
        self.report_past_threshold(out, &changes.parked, &gs, now, target_now)?;
        Ok(more)
    }

    /// After the last chunk: parks the scan did not see again have ended; groups are
    /// updated and the records they owe go out.
    fn finish_scan(&mut self, out: &mut Reporter) -> Result<()> {
        let mut changes = Changes::default();
        self.tracker.end_scan(&mut changes);
        let now = monotonic_ns();
        let target_now = now + self.target.monotonic_offset_ns;
        self.end_parks(out, changes.ended, now, target_now)?;
        self.update_groups(now, target_now);
        self.past_threshold = self.tracker.past_threshold_count();
        self.verdicts = self.tracker.flagged_verdicts();
        if let Some(scan) = self.scan.take() {
            self.scans_finished += 1;
            self.counts = scan.counts;
            self.last_snapshot_ns = scan.busy_ns;
        }
        // Stacks read across an exec are the new program's: its groups are not reported.
        if self.target.state() == TargetState::Execed {
            return Ok(());
        }
        for record in self.groups.due_now(now) {
            out.emit(&Event::Group(record))?;
        }
        Ok(())
    }

    /// Counts one chunk's goroutines for the summary.
    fn count(&mut self, gs: &[RawG]) {
        let system: Vec<bool> = gs.iter().map(|g| self.is_system(g)).collect();
        let include_system = self.settings.include_system;
        let Some(scan) = &mut self.scan else {
            return;
        };
        let c = &mut scan.counts;
        for (g, system) in gs.iter().zip(system) {
            if g.m != 0 {
                c.on_threads.push((g.goid, g.addr, g.m));
            }
            if system {
                c.system += 1;
                if !include_system {
                    continue;
                }
            } else {
                c.user += 1;
            }
            *c.by_status.entry(g.status).or_default() += 1;
            if g.is_waiting() && g.wait_reason != 0 {
                *c.by_reason.entry(g.wait_reason).or_default() += 1;
            }
            *c.sites.entry(g.gopc).or_default() += 1;
        }
    }

    /// Parks that ended: they leave their group; reported ones get `unblocked`.
    fn end_parks(
        &mut self,
        out: &mut Reporter,
        ended: Vec<Park>,
        now: i64,
        target_now: i64,
    ) -> Result<()> {
        for park in ended {
            if let Some(group) = park.group {
                self.groups.left(group);
            }
            if park.flagged {
                self.report_unblocked(out, &park, now, target_now)?;
            }
        }
        Ok(())
    }

    /// Parks of this chunk (`parked`: positions and indices in `gs`) newly past the
    /// threshold: a `blocked` record for the first `--samples-per-group` of each group (every
    /// one with `--every-goroutine`); the others are counted in their group.
    fn report_past_threshold(
        &mut self,
        out: &mut Reporter,
        parked: &[(usize, usize)],
        gs: &[RawG],
        now: i64,
        target_now: i64,
    ) -> Result<()> {
        let threshold = self.settings.threshold.as_nanos() as u64;
        let mut candidates: Vec<(u64, usize, usize)> = parked
            .iter()
            .filter_map(|&(pos, gi)| {
                let p = self.tracker.get(pos)?;
                (!p.flagged
                    && !p.counted
                    && !p.ignored
                    && p.group.is_some()
                    && p.confirmed()
                    && p.blocked(now, target_now).0 >= threshold)
                    .then_some((p.goid, pos, gi))
            })
            .collect();
        // Oldest goroutines first, so a report reads in creation order.
        candidates.sort_unstable();
        let mut reports = Vec::new();
        for (_, pos, gi) in candidates {
            let (Some(park), Some(g)) = (self.tracker.get_mut(pos), gs.get(gi)) else {
                continue;
            };
            let Some(group) = park.group else { continue };
            if !self.settings.every_goroutine && !self.groups.may_sample(group) {
                // In its group's count; the group's samples speak for it.
                park.counted = true;
                continue;
            }
            let unwound = stack::unwind_with_stack(self.mem, &self.bin.pclntab, self.bias, g);
            if let Ok(u) = &unwound {
                if park.restart_if_stack_moved(u.fingerprint(), g, now) {
                    continue;
                }
            }
            let blocked = park.blocked(now, target_now);
            let report = self.describe_unwound(g, Some(blocked), unwound);
            // The goroutine may have woken while we read its stack: then the stack is not
            // this park's and the next scan will tell.
            let still = match (self.reader.reread(g.addr), self.tracker.get(pos)) {
                (Some(again), Some(park)) => park.still(&again),
                _ => false,
            };
            if !still {
                continue;
            }
            self.tracker.flag(pos, report.contexts.context_verdict);
            self.groups.sampled(group, &report.contexts);
            if let Some(probes) = &mut self.probes {
                probes.watch(g.addr);
            }
            reports.push(report);
        }
        // Stacks read across an exec are the new program's: send nothing read here.
        if reports.is_empty() || self.target.state() == TargetState::Execed {
            return Ok(());
        }
        for report in reports {
            out.emit(&Event::Blocked {
                g: report,
                threshold_ns: threshold,
            })?;
        }
        Ok(())
    }

    /// Parks that started since the last snapshot and that the park probe saw begin get its
    /// exact timestamp.
    fn time_new_parks_by_probe(&mut self, new_parks: &[usize]) {
        let Some(probes) = &mut self.probes else {
            return;
        };
        for &pos in new_parks.iter().take(MAX_RECORD_LOOKUPS) {
            let Some(park) = self.tracker.get_mut(pos) else {
                continue;
            };
            // Evidence for the probe's stall watch: this park began after the snapshot before.
            if let Some(nb) = park.not_before_ns {
                probes.saw_new_park(nb);
            }
            // Only a park that began while the probe was attached can have its record (the
            // first scan's parks may be arbitrarily old): spare the map look-up (a syscall)
            // for the rest, a million of them in the first scan of a large process.
            if !park
                .not_before_ns
                .is_some_and(|nb| probes.attached_continuously_since(nb))
            {
                continue;
            }
            if let Some(rec) = probes.park_record(park.addr) {
                // The record is this park's if it is the same goroutine, it has left
                // `_Grunning` exactly once since (trackingSeq moves on that transition), and
                // the probe has been attached ever since (else a later park went unseen
                // and trackingSeq may just have wrapped around).
                if rec.goid == park.goid
                    && rec.seq.wrapping_add(1) == park.tracking_seq
                    && rec.reason == park.wait_reason
                    && rec.wake_ns == 0
                    && probes.attached_continuously_since(rec.park_ns as i64)
                {
                    park.exact_park_ns = Some(rec.park_ns as i64);
                }
            }
        }
    }

    /// Puts each park that a second snapshot saw (or the probe timed) into its group: its stack
    /// is read once, here, from the `g` just read. Runtime-internal goroutines are set aside
    /// unless asked for.
    fn group_parks(&mut self, parked: &[(usize, usize)], gs: &[RawG]) {
        for &(pos, gi) in parked {
            let due = self.tracker.get(pos).is_some_and(|p| {
                p.group.is_none() && !p.ignored && (p.sightings >= 2 || p.exact_park_ns.is_some())
            });
            let Some(g) = gs.get(gi).filter(|_| due) else {
                continue;
            };
            if !self.settings.include_system && self.is_system(g) {
                if let Some(p) = self.tracker.get_mut(pos) {
                    p.ignored = true;
                }
                continue;
            }
            // A stack that cannot be read now is tried again at the next scan.
            let Ok(unwound) = stack::unwind_with_stack(self.mem, &self.bin.pclntab, self.bias, g)
            else {
                continue;
            };
            let print = unwound.fingerprint();
            let key = StreamKey {
                status: g.status,
                wait_reason: g.wait_reason,
                pcs: unwound.pcs,
                gopc: g.gopc,
            };
            let id = match self.groups.find(&key) {
                Some(id) => id,
                None => {
                    let label = GroupLabel {
                        state: status_name(g.status),
                        wait_reason: self.wait_reason_name(g),
                        stack: stack::symbolize(&self.sym, &key.pcs),
                        created_by: self.sym.creation_site(g.gopc),
                    };
                    self.groups.create(key, label)
                }
            };
            self.groups.joined(id);
            if let Some(p) = self.tracker.get_mut(pos) {
                p.group = Some(id);
                p.stack_print = print;
            }
        }
    }

    fn update_groups(&mut self, now: i64, target_now: i64) {
        self.look_up_leak_verdicts();
        let leaked = Cell::new(0);
        let members = group_members(self.tracker.parks(), Some((now, target_now)), &leaked);
        self.groups.update(now, members);
        self.leaked_now = (self.leak_epoch > 0).then_some(leaked.get());
    }

    /// Streaming `--leaks`: a leak analysis finished. Its verdicts apply to the parks it saw,
    /// now: groups count them (their records and the summary say so from the next summary,
    /// without waiting for a scan, which a large process paces to tens of seconds), and
    /// `blocked` records carry them from now on.
    pub fn install_leaks(&mut self, analysis: crate::leaks::LeakAnalysis) {
        self.leaks = Some(analysis);
        self.leak_epoch = self.leak_epoch.wrapping_add(1).max(1);
        self.look_up_leak_verdicts();
        let leaked = Cell::new(0);
        let members = group_members(self.tracker.parks(), None, &leaked);
        self.groups.update_leaks(members);
        self.leaked_now = Some(leaked.get());
    }

    /// Each park's verdict, looked up once per analysis by its position in `allgs` (a million
    /// parks cost a million array reads, once per analysis): only a park the analysis saw
    /// has one.
    fn look_up_leak_verdicts(&mut self) {
        let epoch = self.leak_epoch;
        let Some(analysis) = self.leaks.as_ref().filter(|_| epoch > 0) else {
            return;
        };
        for (pos, p) in self.tracker.parks_mut_by_position() {
            if p.leak_epoch == epoch {
                continue;
            }
            p.leak_epoch = epoch;
            let key = crate::leaks::ParkKey {
                goid: p.goid,
                status: crate::goroutines::STATUS_WAITING,
                wait_reason: p.wait_reason,
                tracking_seq: p.tracking_seq,
            };
            p.leaked = analysis.table.for_park(pos, &key);
        }
    }

    /// `group` records owed at a summary (see [`StreamGroups::due_at_summary`]); returns how
    /// many were held back by `--max-groups`.
    pub fn emit_due_groups(&mut self, out: &mut Reporter) -> Result<u64> {
        let (records, omitted) = self.groups.due_at_summary(monotonic_ns());
        for record in records {
            out.emit(&Event::Group(record))?;
        }
        Ok(omitted)
    }

    fn report_unblocked(
        &mut self,
        out: &mut Reporter,
        park: &Park,
        now: i64,
        target_now: i64,
    ) -> Result<()> {
        if let Some(probes) = &mut self.probes {
            probes.unwatch(park.addr);
        }
        // It woke somewhere between the last snapshot that saw it parked and now: report the
        // part we know it was blocked for.
        let seen_ago = now - park.last_seen_ns;
        let (blocked_ns, _) = park.blocked(park.last_seen_ns, target_now - seen_ago);
        out.emit(&Event::Unblocked {
            goid: park.goid,
            wait_reason: self.reason_name(park.wait_reason),
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
            let Some(park) = self.tracker.take_flagged(ev.g) else {
                continue;
            };
            if let Some(group) = park.group {
                self.groups.left(group);
            }
            if park.goid != ev.goid {
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
                goid: park.goid,
                wait_reason: self.reason_name(park.wait_reason),
                blocked_ns,
                exact,
            })?;
        }
        Ok(())
    }

    /// The goroutine half of a summary, from the last complete scan; `groups_omitted` from
    /// [`Self::emit_due_groups`].
    pub fn summary(&mut self, groups_omitted: u64) -> GoroutineSummary {
        let c = &self.counts;
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        for (&status, &n) in &c.by_status {
            *by_state.entry(status_name(status)).or_default() += n;
        }
        let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
        for (&reason, &n) in &c.by_reason {
            if let Some(name) = self.reason_name(reason) {
                *by_reason.entry(name).or_default() += n;
            }
        }
        let mut top: Vec<(u64, u64)> = c.sites.iter().map(|(&pc, &n)| (pc, n)).collect();
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
        self.prev_site_counts = self.counts.sites.clone();
        let (user, system) = (self.counts.user, self.counts.system);
        let now = monotonic_ns();
        let probe = self.probes.as_mut().map(|p| p.status(now));
        GoroutineSummary {
            goroutines: if self.settings.include_system {
                user + system
            } else {
                user
            },
            by_state,
            by_wait_reason: by_reason,
            blocked: self.past_threshold,
            context_verdicts: self.verdicts.clone(),
            groups: self.groups.past_threshold(),
            groups_omitted,
            leak_suspects: self.groups.leak_suspects(),
            leaked: self.settings.leaks.then_some(self.leaked_now),
            leaked_groups: self
                .settings
                .leaks
                .then(|| self.leaked_now.map(|_| self.groups.leaked_groups())),
            system_goroutines: system,
            top_creation_sites: top_sites,
            probe,
            snapshot_ms: self.last_snapshot_ns as f64 / 1e6,
        }
    }
}

/// The goroutines at `addrs` that are alive and not the runtime's own, read a chunk at a time,
/// with what was learnt of start functions (system or not, as [`Session::is_system`] says).
fn count_user(
    reader: &GoroutineReader<'_>,
    addrs: &[u64],
    pclntab: &gobinary::pclntab::Pclntab,
    bias: u64,
) -> Result<(u64, HashMap<u64, bool>), ReadError> {
    let mut system: HashMap<u64, bool> = HashMap::new();
    let mut n = 0;
    for chunk in addrs.chunks(SCAN_CHUNK) {
        for g in reader.read_gs(chunk)? {
            let is_system = *system
                .entry(g.startpc)
                .or_insert_with(|| stack::is_system_start(pclntab, bias, g.startpc));
            n += u64::from(!is_system);
        }
    }
    Ok((n, system))
}

/// Goroutines read per step of a streaming scan: a step takes a few milliseconds, so the
/// loop's probe control, summaries and signals never wait long, however many goroutines.
const SCAN_CHUNK: usize = 4096;

/// What a scan counted, for the summary (a million goroutines are counted, not kept).
#[derive(Default)]
struct ScanCounts {
    by_status: BTreeMap<u32, u64>,
    by_reason: BTreeMap<u8, u64>,
    /// Goroutines per creation site (`gopc`).
    sites: HashMap<u64, u64>,
    user: u64,
    system: u64,
    /// Goroutines on an OS thread (running, in a syscall): goid and `g.m`.
    /// (goid, g, g.m) of goroutines on a thread (running, in a syscall).
    on_threads: Vec<(u64, u64, u64)>,
}

/// A streaming scan under way.
struct Scan {
    addrs: Vec<u64>,
    /// Index in `addrs` of the next chunk.
    next: usize,
    counts: ScanCounts,
    /// Time spent in its steps so far.
    busy_ns: i64,
}

/// What a [`Session::poll_step`] did.
pub enum Step {
    /// The scan goes on: call again.
    More,
    /// The scan is complete.
    Done,
    /// The target has gone.
    Gone,
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

    /// The goroutine each OS thread is running: running and syscall goroutines of the last
    /// snapshot have `g.m`, `m.procid` is the thread id, and `m.curg` says whether the
    /// goroutine is still the one on it.
    pub fn goid_on_thread(&self, tid: u32) -> Option<u64> {
        let layout = &self.bin.layout;
        self.counts.on_threads.iter().find_map(|&(goid, g, m)| {
            let procid = self.mem.read_u64(m.wrapping_add(layout.m_procid)).ok()?;
            let curg = self.mem.read_u64(m.wrapping_add(layout.m_curg)).ok()?;
            (procid == tid as u64 && curg == g).then_some(goid)
        })
    }

    /// A scan of the goroutine list has completed: which goroutine each thread runs is known
    /// (see [`Session::goid_on_thread`]).
    pub fn has_scanned(&self) -> bool {
        self.scans_finished > 0
    }
}

/// The grouped parks as group members, counting the leaked ones into `leaked` as they are
/// consumed (a million parks are streamed into the groups, not collected). `times` (now, the
/// target's now) gives blocked times and stack sizes; without it (a leak analysis' verdicts
/// only) they are zero.
fn group_members<'a>(
    parks: impl Iterator<Item = &'a Park> + 'a,
    times: Option<(i64, i64)>,
    leaked: &'a Cell<u64>,
) -> impl Iterator<Item = Member> + 'a {
    parks.filter_map(move |p| {
        let group = p.group?;
        leaked.set(leaked.get() + u64::from(p.leaked == Some(true)));
        let (stack_bytes, blocked_ns) = times.map_or((0, 0), |(now, target_now)| {
            (u64::from(p.stack_bytes), p.blocked(now, target_now).0)
        });
        Some(Member {
            group,
            goid: p.goid,
            stack_bytes,
            blocked_ns,
            sampled: p.flagged,
            leaked: p.leaked,
        })
    })
}
