//! `--once`: one snapshot of every goroutine, each described (stack read, symbolized, its
//! contexts diagnosed) and handed on as it is read, so a million goroutines are never held at
//! once.
//!
//! The dump is a pipeline over the machine's cores: a reader thread reads the goroutine list a
//! chunk at a time, the stacks of each batch and what their context diagnosis will read of
//! their waits (most of the dump's system time), while this thread describes the batch before
//! (symbols, contexts, the re-read that checks each stack) and the writer thread
//! ([`crate::dump_writer`]) formats the records before that.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use anyhow::{bail, Result};

use super::{reason_name, runtime_blocked, Session};
use crate::contexts::memory::{BudgetedMemory, Prefetched, GOROUTINE_READ_BUDGET};
use crate::contexts::{ContextDiagnosis, WaitPrefetcher};
use crate::goroutines::{GoroutineReader, RawG, ReadError};
use crate::groups::Grouper;
use crate::procmem::{MemError, ProcessMemory};
use crate::report::{Event, GoroutineReport, Reporter};
use crate::snapshot_chunks::ChunkedSnapshot;
use crate::stack::{self, StackError, Unwound};
use crate::target::{monotonic_ns, TargetState};

/// Bytes of stack one batch of a dump reads at most (besides its first goroutine).
const BATCH_STACK_BYTES: usize = 8 << 20;
/// Batches read ahead of the one being described: enough to keep both threads busy, few
/// enough to bound memory (each at most [`BATCH_STACK_BYTES`] of stacks).
const BATCHES_AHEAD: usize = 2;

/// Where the batch of goroutines starting at `from` ends: at most one chunk, and at most
/// [`BATCH_STACK_BYTES`] of stacks unless one goroutine alone has more.
fn stack_batch_end(gs: &[RawG], from: usize, pclntab: &gobinary::pclntab::Pclntab) -> usize {
    let mut bytes = 0;
    let mut end = from;
    while end < gs.len() {
        bytes += stack::read_len(&gs[end], pclntab);
        if bytes > BATCH_STACK_BYTES && end > from {
            break;
        }
        end += 1;
    }
    end
}

/// Goroutines whose stacks the reader thread has read and unwound.
struct ReadBatch {
    gs: Vec<RawG>,
    stacks: Vec<Result<Unwound, StackError>>,
    /// What the context diagnosis will read of their waits, read ahead.
    waits: Prefetched,
}

/// What the reader thread hands over: a batch, or why it stopped.
enum Read {
    Batch(ReadBatch),
    /// The goroutine list could not be read, `n` goroutines into the dump.
    ListFailed(ReadError),
    /// The stacks of a batch could not be read at all.
    StacksFailed(MemError),
}

/// What the reader thread needs of the session (all shareable between threads).
struct StackReader<'a> {
    mem: &'a ProcessMemory,
    pclntab: &'a gobinary::pclntab::Pclntab,
    bias: u64,
    include_system: bool,
    /// System goroutines by start function, as [`Session::is_system`] decides.
    system_by_startpc: HashMap<u64, bool>,
    /// With context diagnosis: its wait reads ahead, and the names of wait reasons.
    waits: Option<WaitPrefetcher>,
    wait_reasons: &'a [String],
}

impl StackReader<'_> {
    fn is_system(&mut self, g: &RawG) -> bool {
        let (pclntab, bias) = (self.pclntab, self.bias);
        *self
            .system_by_startpc
            .entry(g.startpc)
            .or_insert_with(|| stack::is_system_start(pclntab, bias, g.startpc))
    }

    /// Reads ahead what diagnosing the contexts of `gs` will read of their waits.
    fn prefetch_waits(&self, gs: &[RawG], waiting: &[Option<u64>]) -> Prefetched {
        let Some(waits) = &self.waits else {
            return Prefetched::default();
        };
        let mem = BudgetedMemory::new(self.mem, GOROUTINE_READ_BUDGET);
        // Most goroutines of a big dump wait on a channel or two: g.waiting, sudogs, channels.
        mem.reserve_prefetched(gs.len() * 4);
        let reason = |g: &RawG| {
            g.is_waiting()
                .then(|| reason_name(self.wait_reasons, g.wait_reason))
                .flatten()
        };
        waits.prefetch_waits(&mem, gs, waiting, &reason);
        mem.take_prefetched()
    }

    /// Reads every chunk of `chunks` and the stacks of its goroutines, batch by batch, into
    /// `tx`; stops at the first failure (sent too) or when the receiver has gone.
    fn run(mut self, mut chunks: ChunkedSnapshot<'_, '_>, tx: SyncSender<Read>) {
        while let Some(chunk) = chunks.next_chunk() {
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Read::ListFailed(e));
                    return;
                }
            };
            if !self.include_system {
                chunk.retain(|(g, _)| !self.is_system(g));
            }
            let (mut gs, mut waiting): (Vec<RawG>, Vec<Option<u64>>) = chunk.into_iter().unzip();
            while !gs.is_empty() {
                let end = stack_batch_end(&gs, 0, self.pclntab);
                let rest_gs = gs.split_off(end);
                let rest_waiting = waiting.split_off(end);
                let read = match stack::unwind_many(self.mem, self.pclntab, self.bias, &gs) {
                    Ok(stacks) => Read::Batch(ReadBatch {
                        waits: self.prefetch_waits(&gs, &waiting),
                        gs,
                        stacks,
                    }),
                    Err(e) => Read::StacksFailed(e),
                };
                let failed = !matches!(read, Read::Batch(_));
                if tx.send(read).is_err() || failed {
                    return;
                }
                gs = rest_gs;
                waiting = rest_waiting;
            }
        }
    }
}

impl<'a> Session<'a> {
    /// `--once`: every goroutine, one record each.
    pub fn dump_all(&mut self, out: &mut Reporter) -> Result<u64> {
        self.for_each_described(|report, _| out.emit_owned(Event::Goroutine(report)))
    }

    /// `--once --grouped`: every goroutine, one record per group, largest first.
    pub fn dump_grouped(&mut self, out: &mut Reporter) -> Result<u64> {
        let mut grouper = Grouper::default();
        self.for_each_described(|report, g| {
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
    /// and each chunk is handed on before more than a few are read, so memory stays bounded
    /// however many goroutines there are.
    fn for_each_described(
        &mut self,
        each: impl FnMut(GoroutineReport, &RawG) -> std::io::Result<()>,
    ) -> Result<u64> {
        if let Some(a) = self.contexts.as_mut() {
            a.set_dump_cache(true);
        }
        let described = self.describe_chunks(each);
        if let Some(a) = self.contexts.as_mut() {
            a.set_dump_cache(false);
        }
        self.context_mem.clear_prefetched();
        described
    }

    fn describe_chunks(
        &mut self,
        each: impl FnMut(GoroutineReport, &RawG) -> std::io::Result<()>,
    ) -> Result<u64> {
        let start = monotonic_ns();
        let reader = self.own_reader();
        // g.waiting comes with each g: the wait diagnosis then needs no read of the g again.
        let waiting_offset = self.contexts.as_ref().map(|a| a.g_waiting_offset());
        let chunks =
            ChunkedSnapshot::start(&reader, waiting_offset).map_err(|e| self.read_failure(e, 0))?;
        let target_now = self.target.monotonic_now_ns();
        let bin = self.bin;
        let stack_reader = StackReader {
            mem: self.mem,
            pclntab: &bin.pclntab,
            bias: self.bias,
            include_system: self.settings.include_system,
            system_by_startpc: self.system_by_startpc.clone(),
            waits: self.contexts.as_ref().map(|a| a.wait_prefetcher()),
            wait_reasons: &bin.wait_reasons,
        };
        let described = std::thread::scope(|scope| {
            let (tx, rx) = sync_channel(BATCHES_AHEAD);
            std::thread::Builder::new()
                .name("dump-reader".into())
                .spawn_scoped(scope, move || stack_reader.run(chunks, tx))?;
            // Returning drops `rx`: a reader still at work then stops at its next batch.
            self.describe_read(rx, target_now, each)
        });
        self.last_snapshot_ns = monotonic_ns() - start;
        described
    }

    /// Describes the batches the reader thread sends, in order, handing each report to
    /// `each`; returns how many.
    fn describe_read(
        &mut self,
        batches: Receiver<Read>,
        target_now: i64,
        mut each: impl FnMut(GoroutineReport, &RawG) -> std::io::Result<()>,
    ) -> Result<u64> {
        let mut n = 0;
        for read in batches {
            let batch = match read {
                Read::Batch(b) => b,
                Read::ListFailed(e) => return Err(self.read_failure(e, n)),
                Read::StacksFailed(e) => {
                    self.check_target(n)?;
                    return Err(match e {
                        MemError::Gone => {
                            anyhow::anyhow!("the target process exited during the dump")
                        }
                        e => anyhow::Error::new(e).context("cannot read goroutine stacks"),
                    });
                }
            };
            let ReadBatch { gs, stacks, waits } = batch;
            self.context_mem.set_prefetched(waits);
            let reports = self.describe_batch(&gs, stacks, target_now);
            // A target that dies or execs mid-dump makes every later read fail (or read
            // another program): stop at the first sign rather than print empty stacks. The
            // batch's stacks were read before this check, the rest of it just now.
            self.check_target(n)?;
            for (report, g) in reports.into_iter().zip(&gs) {
                each(report, g)?;
                n += 1;
            }
        }
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

    /// Reports for a batch of goroutines whose stacks (and waits, in `self.context_mem`) were
    /// read. The target keeps running while we read, so each `g` is re-read after its stack
    /// and described again (once) if it moved.
    fn describe_batch(
        &mut self,
        gs: &[RawG],
        stacks: Vec<Result<Unwound, StackError>>,
        target_now: i64,
    ) -> Vec<GoroutineReport> {
        let mut reports = Vec::with_capacity(gs.len());
        for (g, unwound) in gs.iter().zip(stacks) {
            let blocked = runtime_blocked(g, target_now);
            reports.push(self.describe_unwound(g, blocked, unwound));
        }
        self.context_mem.clear_prefetched();
        let addrs: Vec<u64> = gs.iter().map(|g| g.addr).collect();
        let again = match self.reader.reread_many(&addrs) {
            Ok(again) => again,
            // Checked by the caller: the reports say what could be read.
            Err(_) => return reports,
        };
        for ((g, again), report) in gs.iter().zip(again).zip(reports.iter_mut()) {
            if g.is_running() {
                continue; // no stack was read
            }
            if let Some(again) = again.filter(|a| !a.same_state_as(g)) {
                *report = self.describe_again(&again, target_now);
            }
        }
        reports
    }

    /// The second and last look at a goroutine that moved while its stack was read.
    fn describe_again(&mut self, g: &RawG, target_now: i64) -> GoroutineReport {
        let mut report = self.describe(g, runtime_blocked(g, target_now));
        if g.is_running() {
            return report;
        }
        match self.reader.reread(g.addr) {
            Some(again) if !again.same_state_as(g) => {
                report.stack = Vec::new().into();
                report.contexts = ContextDiagnosis::default();
                report.stack_error =
                    Some("the goroutine kept running while its stack was read".into());
                report
            }
            _ => report,
        }
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
}
