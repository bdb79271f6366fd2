//! Streaming `--leaks` as the loop drives it: asks the [`worker`](super::worker) for an analysis
//! when the [`schedule`](super::schedule) says one may start, and when one finishes, installs
//! its verdicts in the session and returns its `leak_analysis` record.

use anyhow::Result;
use gobinary::GoBinary;
use serde::Serialize;

use super::schedule::{LeakSchedule, Start};
use super::worker::LeakWorker;
use crate::report::Event;
use crate::session::Session;

/// What a streaming `leak_analysis` record adds to the `--once` one.
#[derive(Debug, Clone, Serialize)]
pub struct LeakRun {
    /// 1 for the first analysis of the stream, then 2, 3...
    pub analysis: u64,
    /// Goroutines this analysis calls leaked that the previous one did not (in the same park).
    pub newly_leaked: u64,
    /// CPU the analysis used (its thread's).
    pub cpu_ms: f64,
    /// How long after it was due it started, and why it was late (null when on time).
    pub delayed_ms: f64,
    pub delay_reason: Option<String>,
    /// Whole `--leak-interval`s that went without an analysis so far (cumulative).
    pub skipped: u64,
    pub interval_ns: u64,
}

pub struct LeakStream {
    worker: LeakWorker,
    schedule: LeakSchedule,
    interval_ns: i64,
    /// The analysis under way: how it started.
    running: Option<Start>,
    analyses: u64,
    skipped: u64,
}

impl LeakStream {
    pub fn start(
        pid: u32,
        bin: &'static GoBinary,
        bias: u64,
        interval_ns: i64,
        now_ns: i64,
    ) -> Result<LeakStream> {
        Ok(LeakStream {
            worker: LeakWorker::spawn(pid, bin, bias)?,
            schedule: LeakSchedule::new(now_ns, interval_ns),
            interval_ns,
            running: None,
            analyses: 0,
            skipped: 0,
        })
    }

    /// Never waits: collects a finished analysis (its record is returned, its verdicts go
    /// into `session`) and starts the next when due. `stopped`: the target is stopped.
    pub fn tick(&mut self, now_ns: i64, stopped: bool, session: &mut Session<'_>) -> Option<Event> {
        let record = self.worker.poll().map(|finished| {
            self.schedule.finished(finished.cpu_ns);
            let start = self.running.take();
            self.analyses += 1;
            let mut run = LeakRun {
                analysis: self.analyses,
                newly_leaked: 0,
                cpu_ms: finished.cpu_ns as f64 / 1e6,
                delayed_ms: start.as_ref().map_or(0.0, |s| s.delayed_ns as f64 / 1e6),
                delay_reason: start.and_then(|s| s.delay_reason),
                skipped: self.skipped,
                interval_ns: self.interval_ns as u64,
            };
            match finished.result {
                Ok(analysis) => {
                    let before = session.leaks.as_ref().map(|a| &a.table);
                    run.newly_leaked = analysis.table.newly_leaked(before);
                    let record = Event::LeakAnalysis {
                        leaked: Some(analysis.stats.leaked),
                        stats: analysis.stats.clone(),
                        error: None,
                        run: Some(run),
                    };
                    session.install_leaks(analysis);
                    record
                }
                // The previous verdicts stand (each for its own park only).
                Err(e) => Event::LeakAnalysis {
                    leaked: None,
                    stats: Default::default(),
                    error: Some(e),
                    run: Some(run),
                },
            }
        });
        if let Some(start) = self.schedule.poll(now_ns, self.worker.busy(), stopped) {
            if self.worker.start() {
                self.skipped += start.skipped;
                self.running = Some(start);
            }
        }
        record
    }
}
