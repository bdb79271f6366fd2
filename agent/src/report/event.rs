//! The event model: what each record says, independent of the output format. The JSON lines
//! contract (version 1, see README) is these types serialized; fields are only ever added.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::groups::GroupRecord;
use crate::stack::SourceFrame;
use crate::threads::{ContendedFutex, ThreadBlocked, ThreadUnblocked};

/// How a blocked duration was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinceSource {
    /// The park was seen by the uprobe on `runtime.gopark`: exact.
    Probe,
    /// From the runtime's own `g.waitsince`, stamped by a GC stack scan: accurate to about one
    /// GC cycle (the runtime's own "N minutes" comes from it).
    Runtime,
    /// Since ctxprobe first saw the goroutine parked: a strict lower bound.
    Observed,
    /// Nothing known (a single snapshot with no GC stamp yet).
    Unknown,
}

/// One goroutine, as `goroutine` (from `--once`) and `blocked` records carry it.
#[derive(Debug, Clone, Serialize)]
pub struct GoroutineReport {
    pub goid: u64,
    pub state: String,
    pub wait_reason: Option<String>,
    pub blocked_ns: Option<u64>,
    pub since_exact: bool,
    pub since_source: SinceSource,
    /// Shared with the goroutines of the same stack (see [`crate::stack::symbolize_shared`]).
    pub stack: Arc<[SourceFrame]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_error: Option<String>,
    pub created_by: Option<Arc<SourceFrame>>,
    pub parent_goid: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
    /// `contexts`, `waits_on`, `context_verdict` (context diagnosis).
    #[serde(flatten)]
    pub contexts: crate::contexts::ContextDiagnosis,
    /// `--leaks`: Some(verdict) (leaked, not leaked, or null: not analysed); absent without.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaked: Option<Option<bool>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreationSiteCount {
    #[serde(flatten)]
    pub site: SourceFrame,
    pub goroutines: u64,
    /// Change since the previous summary.
    pub delta: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub mode: &'static str,
    /// Is the park probe attached right now.
    pub park_probe_attached: bool,
    /// Park probe hits per second over the last interval while attached.
    pub parks_per_sec: f64,
    /// Fraction of the interval the park probe was attached.
    pub attached_fraction: f64,
    /// Precise mode's context cancel probe (null when there is none: other modes, or a binary
    /// that never cancels a context): attached now, hits per second while attached, and the
    /// fraction of the interval it was attached (it is detached while over the budget).
    pub cancel_probe_attached: Option<bool>,
    pub cancels_per_sec: Option<f64>,
    pub cancel_attached_fraction: Option<f64>,
    /// Probes found not firing while attached (their breakpoint gone from the target's code,
    /// or no park hits while the snapshots saw goroutines park), and re-attached; cumulative.
    pub probes_restored: u64,
    /// Park records the kernel side failed to store (map full or out of memory); cumulative.
    pub map_update_errors: u64,
    /// Reads of the target's memory the kernel side failed (those hits recorded nothing);
    /// cumulative.
    pub probe_read_errors: u64,
    /// Precise mode: reported goroutines whose wake-up could not be watched (the kernel's
    /// watch map of 1,024 was full), so their `unblocked` time comes from snapshots;
    /// cumulative.
    pub unwatched_wakeups: u64,
    /// What the budget charges per park-probe hit, and whether that was measured on this
    /// machine when the probes started ("measured") or taken from ctxprobe's table ("assumed").
    pub park_hit_ns: u64,
    pub park_hit_cost: &'static str,
}

/// The goroutine half of a `summary`.
#[derive(Debug, Clone, Serialize)]
pub struct GoroutineSummary {
    pub goroutines: u64,
    pub by_state: BTreeMap<String, u64>,
    pub by_wait_reason: BTreeMap<String, u64>,
    /// Goroutines parked past the threshold now (with a `blocked` record or counted in their
    /// group).
    pub blocked: u64,
    /// Groups with members past the threshold now.
    pub groups: u64,
    /// `group` records held back in this interval by `--max-groups`.
    pub groups_omitted: u64,
    /// Groups that are leak suspects now.
    pub leak_suspects: u64,
    /// Streaming `--leaks`: grouped goroutines called leaked now, and groups with such
    /// members (null until the first analysis; absent without `--leaks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaked: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaked_groups: Option<Option<u64>>,
    /// Context verdicts of the goroutines with a `blocked` record out now.
    pub context_verdicts: BTreeMap<String, u64>,
    pub system_goroutines: u64,
    pub top_creation_sites: Vec<CreationSiteCount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeStatus>,
    pub snapshot_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Attach {
        exe: String,
        /// Null for a process that is not a Go program: then only threads are watched.
        go_version: Option<String>,
        arch: String,
        goroutines: Option<u64>,
        threads_only: bool,
        mode: &'static str,
        threshold_ns: u64,
        layout_source: String,
    },
    Goroutine(GoroutineReport),
    Group(GroupRecord),
    Blocked {
        #[serde(flatten)]
        g: GoroutineReport,
        threshold_ns: u64,
    },
    Unblocked {
        goid: u64,
        wait_reason: Option<String>,
        blocked_ns: u64,
        /// True when both ends of the wait were seen by probes.
        exact: bool,
    },
    Summary {
        /// Absent for a process that is not a Go program (thread mode only).
        #[serde(flatten)]
        goroutines: Option<GoroutineSummary>,
        lost_events: u64,
        /// Records dropped because the output consumer did not keep up (cumulative).
        dropped_records: u64,
        /// The most contended futex words (absent when thread monitoring is off).
        #[serde(skip_serializing_if = "Option::is_none")]
        contended_futexes: Option<Vec<ContendedFutex>>,
        /// Futex calls of the target per second since the last summary (each costs a
        /// tracepoint hit).
        #[serde(skip_serializing_if = "Option::is_none")]
        futex_calls_per_sec: Option<f64>,
    },
    ThreadBlocked(ThreadBlocked),
    ThreadUnblocked(ThreadUnblocked),
    /// The target is stopped (SIGSTOP, a debugger, a tracer): nothing in it runs, and
    /// ctxprobe takes no snapshots until it resumes.
    TargetStopped {},
    /// The target runs again after `stopped_ns` (not counted as blocked time).
    TargetResumed {
        stopped_ns: u64,
    },
    Detach {
        reason: &'static str,
        lost_events: u64,
        /// Records dropped because the output consumer did not keep up.
        dropped_records: u64,
    },
    Error {
        message: String,
    },
    /// `--once --leaks`: what the leak analysis found and cost (after the dump).
    LeakAnalysis {
        /// Goroutines called leaked (null when the analysis could not run).
        leaked: Option<u64>,
        #[serde(flatten)]
        stats: crate::leaks::LeakStats,
        /// Why the analysis could not run, or null.
        error: Option<String>,
        /// Streaming: which analysis, what is new, what it cost and whether it was late.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        run: Option<crate::leaks::stream::LeakRun>,
    },
}
