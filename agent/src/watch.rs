//! The streaming loop: snapshots, probe budget, thread waits, summaries, until the duration
//! ends, a signal arrives or the target exits.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::Args;
use crate::leaks::stream::LeakStream;
use crate::report::{Event, Reporter};
use crate::scan_budget::ScanBudget;
use crate::session::{End, Session, Step};
use crate::target::{monotonic_ns, TargetProcess, TargetState};
use crate::threads::{self, ThreadEvent, ThreadMonitor};

/// How long the last records may take to reach a slow consumer after the end.
const FINISH_TIMEOUT: Duration = Duration::from_millis(500);

fn default_poll_interval(threshold: Duration) -> Duration {
    (threshold / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// The loop's event loop and its SIGTERM/SIGINT handlers, installed before `attach` goes out:
/// a signal sent as soon as `attach` is read must end the stream with `detach`, not kill
/// ctxprobe with the default action.
pub struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .enable_io()
            .build()
            .context("cannot start the event loop")?;
        let (term, int) = {
            let _in_runtime = rt.enter();
            (
                signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            )
        };
        Ok(Signals { rt, term, int })
    }
}

/// What the streaming loop drives: the goroutine session (Go programs) and the thread monitor.
pub struct Watch<'s, 'a> {
    session: Option<&'s mut Session<'a>>,
    threads: Option<ThreadMonitor>,
    /// Threads with a `thread_blocked` out and no `thread_unblocked` yet.
    reported_threads: HashSet<u32>,
    /// The last `error` record sent, so a persistent failure is not repeated every poll.
    last_error: Option<String>,
    /// Futex call count and when, at the previous summary.
    futex_calls_at: Option<(u64, i64)>,
    started_ns: i64,
    /// Since when (our clock) the target has been stopped, while it is.
    stopped_since: Option<i64>,
    /// Streaming `--leaks`.
    leaks: Option<LeakStream>,
}

impl<'s, 'a> Watch<'s, 'a> {
    pub fn new(session: Option<&'s mut Session<'a>>, threads: Option<ThreadMonitor>) -> Self {
        Watch {
            session,
            threads,
            reported_threads: HashSet::new(),
            last_error: None,
            futex_calls_at: None,
            started_ns: monotonic_ns(),
            stopped_since: None,
            leaks: None,
        }
    }

    pub fn with_leaks(mut self, leaks: Option<LeakStream>) -> Self {
        self.leaks = leaks;
        self
    }

    /// Streaming `--leaks`: a finished analysis' record, and the next one started when due
    /// (never waits for the analysis thread).
    fn tick_leaks(&mut self, target: &TargetProcess, out: &mut Reporter) -> Result<()> {
        let (Some(leaks), Some(session)) = (&mut self.leaks, &mut self.session) else {
            return Ok(());
        };
        let stopped = self.stopped_since.is_some();
        if let Some(record) = leaks.tick(monotonic_ns(), stopped, session) {
            // An analysis that ran across an exec read the new program: say nothing of it (the
            // stream ends at the next check).
            if target.state() != TargetState::Execed {
                out.emit(&record)?;
            }
        }
        Ok(())
    }

    /// Streams until the end, detaches every probe, then says so.
    pub fn run(
        mut self,
        args: &Args,
        target: &TargetProcess,
        out: &mut Reporter,
        mut signals: Signals,
    ) -> Result<()> {
        let end = match self.stream(args, target, out, &mut signals) {
            Ok(end) => end,
            Err(e) => {
                // What was queued before the failure still goes out (within the timeout).
                let _ = out.finish(FINISH_TIMEOUT);
                return Err(e);
            }
        };
        let lost = self.lost_events();
        if let Some(session) = self.session.take() {
            session.probes = None;
        }
        self.threads = None;
        out.emit(&Event::Detach {
            reason: end.name(),
            lost_events: lost,
            dropped_records: out.dropped(),
        })?;
        // A consumer that stopped reading must not keep us (or a SIGTERM) waiting.
        if let Err(e) = out.finish(FINISH_TIMEOUT) {
            eprintln!("ctxprobe: {e}");
        }
        Ok(())
    }

    fn lost_events(&self) -> u64 {
        let goroutine_lost = self
            .session
            .as_ref()
            .and_then(|s| s.probes.as_ref())
            .map(|p| p.lost_events());
        goroutine_lost.unwrap_or(0) + self.threads.as_ref().map(|t| t.lost_events()).unwrap_or(0)
    }

    fn poll_threads(&mut self, target: &TargetProcess, out: &mut Reporter) -> Result<()> {
        let Some(threads) = &mut self.threads else {
            return Ok(());
        };
        let events = match threads.poll() {
            Ok(ev) => ev,
            Err(e) => {
                out.emit(&Event::Error {
                    message: format!("threads: {e:#}"),
                })?;
                return Ok(());
            }
        };
        // Stacks read after an exec are the new program's: what was read is trusted only if the
        // program is still the one we attached to now that the reads are done.
        if target.state() == TargetState::Execed {
            return Ok(());
        }
        for ev in events {
            match ev {
                ThreadEvent::Blocked(mut b) => {
                    if let Some(session) = &self.session {
                        session.name_go_frames(&mut b.stack);
                        b.goid = session.goid_on_thread(b.tid);
                        // In a Go program, threads idle in the scheduler sleep on futexes all
                        // the time: only threads holding a goroutine, or in non-Go code, matter
                        // (--include-system shows them too).
                        let idle = (b.goid.is_none() && threads::is_go_runtime_idle(&b.stack))
                            || threads::is_signal_loop_wait(&b.stack);
                        if idle && !session.settings.include_system {
                            continue;
                        }
                    }
                    self.reported_threads.insert(b.tid);
                    out.emit(&Event::ThreadBlocked(b))?;
                }
                ThreadEvent::Unblocked(u) => {
                    if self.reported_threads.remove(&u.tid) {
                        out.emit(&Event::ThreadUnblocked(u))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn summary(&mut self, out: &mut Reporter) -> Result<()> {
        let lost = self.lost_events();
        let goroutines = match self.session.as_mut() {
            Some(s) => {
                let omitted = s.emit_due_groups(out)?;
                Some(s.summary(omitted))
            }
            None => None,
        };
        let contended_futexes = self.threads.as_ref().map(|t| t.top_contended(5));
        let futex_calls_per_sec = self.threads.as_ref().and_then(|t| t.counters()).map(|c| {
            let calls = c.calls;
            let now = monotonic_ns();
            let (prev_calls, prev_ns) = self
                .futex_calls_at
                .replace((calls, now))
                .unwrap_or((0, self.started_ns));
            let secs = (now - prev_ns) as f64 / 1e9;
            if secs > 0.0 {
                calls.saturating_sub(prev_calls) as f64 / secs
            } else {
                0.0
            }
        });
        out.emit(&Event::Summary {
            goroutines,
            lost_events: lost,
            dropped_records: out.dropped(),
            contended_futexes,
            futex_calls_per_sec,
        })?;
        Ok(())
    }

    /// Notices the target exiting, exec'ing, stopping and resuming; `Some` ends the stream.
    fn check_target(&mut self, target: &TargetProcess, out: &mut Reporter) -> Result<Option<End>> {
        match target.state() {
            TargetState::Exited => {
                // Waits that ended as it exited are still in the ring buffer.
                self.poll_threads(target, out)?;
                Ok(Some(End::TargetExited))
            }
            // Nothing more is read: the memory is another program's now.
            TargetState::Execed => Ok(Some(End::TargetExec)),
            TargetState::Stopped => {
                if self.stopped_since.is_none() {
                    self.stopped_since = Some(monotonic_ns());
                    out.emit(&Event::TargetStopped {})?;
                }
                Ok(None)
            }
            TargetState::Running => {
                if let Some(since) = self.stopped_since.take() {
                    let stopped_ns = (monotonic_ns() - since).max(0);
                    if let Some(session) = &mut self.session {
                        session.exclude_pause(stopped_ns);
                    }
                    out.emit(&Event::TargetResumed {
                        stopped_ns: stopped_ns as u64,
                    })?;
                }
                Ok(None)
            }
        }
    }

    fn stream(
        &mut self,
        args: &Args,
        target: &TargetProcess,
        out: &mut Reporter,
        signals: &mut Signals,
    ) -> Result<End> {
        let Signals { rt, term, int } = signals;
        rt.block_on(async {
            let (sigterm, sigint) = (term, int);
            let base_poll =
                args.poll_interval.unwrap_or_else(|| default_poll_interval(args.threshold));
            let mut summary = tokio::time::interval(args.summary_interval);
            summary.tick().await; // the first tick is immediate; the first summary comes later
            // Often enough that a burst of parks costs at most ~25 ms of probing before the park
            // probe is detached (each tick is one counters read).
            let mut control = tokio::time::interval(Duration::from_millis(25));
            let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
            let mut next_poll = tokio::time::Instant::now();
            // Goroutine scans run in steps (see Session::poll_step), paced by the budget.
            let mut next_scan = tokio::time::Instant::now();
            let mut scanning = false;
            let mut budget = ScanBudget::new(monotonic_ns());
            let has_session = self.session.is_some();
            let has_threads = self.threads.is_some();
            loop {
                let until_deadline = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                let may_step = scanning && self.stopped_since.is_none();
                tokio::select! {
                    _ = sigterm.recv() => return Ok(End::Signal),
                    _ = sigint.recv() => return Ok(End::Signal),
                    _ = until_deadline => return Ok(End::Duration),
                    _ = tokio::time::sleep_until(next_poll), if has_threads => {
                        next_poll = tokio::time::Instant::now() + base_poll;
                        if let Some(end) = self.check_target(target, out)? {
                            return Ok(end);
                        }
                        // Until a scan has said which goroutine each thread runs, a thread
                        // holding a goroutine would look like an idle runtime thread.
                        let threads_known = self.session.as_ref().is_none_or(|s| s.has_scanned());
                        if self.stopped_since.is_none() && threads_known {
                            self.poll_threads(target, out)?;
                        }
                    }
                    _ = tokio::time::sleep_until(next_scan), if has_session && !scanning => {
                        if let Some(end) = self.check_target(target, out)? {
                            return Ok(end);
                        }
                        if self.stopped_since.is_some() {
                            // A stopped target changes nothing; scans would only age its
                            // goroutines' parks.
                            next_scan = tokio::time::Instant::now() + base_poll;
                        } else {
                            scanning = true;
                        }
                    }
                    // Yielding first lets the runtime turn (its timers and signals) between
                    // two steps; an always-ready branch would starve them for a whole scan.
                    _ = tokio::task::yield_now(), if may_step => {
                        let Some(session) = &mut self.session else {
                            scanning = false;
                            continue;
                        };
                        let started = monotonic_ns();
                        let step = session.poll_step(out);
                        let now = monotonic_ns();
                        budget.spend(now, now - started);
                        match step {
                            Ok(Step::More) => continue,
                            Ok(Step::Done) => {}
                            // Reads fail in an exec too (the old image is torn down): what
                            // the target is now decides, and a read that failed while it
                            // exec'd says nothing (the stream ends as an exec).
                            Ok(Step::Gone) | Err(_)
                                if target.state() == TargetState::Execed =>
                            {
                                return Ok(End::TargetExec);
                            }
                            Ok(Step::Gone) if target.state() == TargetState::Exited => {
                                self.poll_threads(target, out)?;
                                return Ok(End::TargetExited);
                            }
                            // Gone but not exited: still changing (an exec under way); the
                            // next look at the target tells.
                            Ok(Step::Gone) => {}
                            // A racy read of a live process can fail now and then: say so
                            // (once per kind of failure) and try again at the next scan.
                            Err(e) => {
                                let message = format!("{e:#}");
                                if self.last_error.as_ref() != Some(&message) {
                                    out.emit(&Event::Error { message: message.clone() })?;
                                    self.last_error = Some(message);
                                }
                            }
                        }
                        scanning = false;
                        let wait = budget.wait_before_next_ns(now, base_poll.as_nanos() as i64);
                        next_scan = tokio::time::Instant::now()
                            + Duration::from_nanos(wait.max(0) as u64);
                    }
                    _ = control.tick() => {
                        // The target first: after an exec the probed addresses hold another
                        // program's code, which the probe check must not act on.
                        let end = self.check_target(target, out)?;
                        if let Some(session) = &mut self.session {
                            if let Some(p) = session.probes.as_mut().filter(|_| end.is_none()) {
                                match p.tick(monotonic_ns()) {
                                    Ok(notes) => {
                                        for message in notes {
                                            out.emit(&Event::Error { message })?;
                                        }
                                    }
                                    Err(e) => {
                                        out.emit(&Event::Error { message: format!("probe control: {e:#}") })?;
                                    }
                                }
                            }
                            session.drain_wake_events(out)?;
                        }
                        if let Some(end) = end {
                            return Ok(end);
                        }
                        self.tick_leaks(target, out)?;
                    }
                    _ = summary.tick() => self.summary(out)?,
                }
            }
        })
    }
}
