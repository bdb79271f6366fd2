//! The uprobes under a cost budget, and checked to be really there.
//!
//! A uprobe hit costs the target ~0.7–1 µs however little the BPF program does, and a busy Go
//! server parks ~100k times a second, so the default ("adaptive") mode keeps the park probe
//! attached only while its measured hit rate fits a budget (a fraction of one CPU). Over
//! budget it detaches and retries later with exponential backoff; meanwhile durations come
//! from snapshots (lower bounds) instead of the probe (exact). "precise" mode keeps the park
//! and wake probes attached whatever they cost; its context cancel probe is under the same
//! budget (a service that cancels a context per request would otherwise pay ~2.6 µs a request).
//!
//! Every tick also checks that each attached probe's breakpoint is still in the target's code:
//! if the kernel took it out, the probe is re-attached and the loss counted, so a probe that
//! stopped firing is never reported as attached.

mod breakpoint;
mod budget;
pub mod hitcost;
mod stall;

use anyhow::{Context, Result};
use probe_ebpf::{CancelRecord, Counters, ParkRecord, ProbeConfig, Probes, WakeEvent};

pub use breakpoint::ProbedInsn;
use budget::{Budget, Decision};
use stall::StallWatch;

use crate::procmem::ProcessMemory;
use crate::report::ProbeStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Snapshots plus the park probe while it fits the --probe-budget.
    Adaptive,
    /// Park and wake probes always attached: exact times, measurable overhead.
    Precise,
    /// Snapshots only: no BPF at all.
    Poll,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Adaptive => "adaptive",
            Mode::Precise => "precise",
            Mode::Poll => "poll",
        }
    }
}

/// What the cancel probe's program adds to the trap (the site's hit cost): measured on amd64,
/// where a first cancel cost ~2.6 µs with the probe (two user reads, a frame-pointer walk of 6
/// PCs, one slot written) and a repeat ~1–1.6 µs (one read), against ~0.9 µs for the trap.
const CANCEL_FIRST_WORK_NS: f64 = 1_700.0;
const CANCEL_REPEAT_WORK_NS: f64 = 400.0;

/// Where each probe sits in the target, to check its breakpoint.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSites {
    pub park: Option<ProbedInsn>,
    pub wake: Option<ProbedInsn>,
    pub cancel: Option<ProbedInsn>,
}

/// What one hit of each probe costs the target, in ns (see [`hitcost`]).
#[derive(Debug, Clone, Copy)]
pub struct HitCosts {
    pub park_ns: f64,
    /// `park_ns` was measured on this machine (else assumed).
    pub park_measured: bool,
    /// The trap alone at the cancel probe's site; the program's work is added per kind of hit.
    pub cancel_trap_ns: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Park,
    Wake,
    Cancel,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Park => "park",
            Which::Wake => "wake",
            Which::Cancel => "context cancel",
        }
    }
}

/// What the cancel probe knows about one context's cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelSeen {
    /// The probe saw it: this record is the context's (its address was not cancelled again
    /// unseen since).
    Seen(CancelRecord),
    /// The probe was attached all along and did not see it: cancelled before ctxprobe
    /// attached, or a later cancellation took its slot.
    NotSeen,
    /// The probe was detached (over budget, or its breakpoint was lost) at some point since it
    /// attached, or is detached now: who cancelled it cannot be known, and a record for its
    /// address may be an earlier context's.
    Unavailable,
}

/// Attach/detach bookkeeping of one probe.
#[derive(Debug, Default)]
struct Track {
    /// Hit counter at the last tick.
    last_hits: u64,
    /// When the probe last stopped being effective (detached, or its breakpoint found gone);
    /// 0: never. Records older than this may be stale.
    last_detach_ns: i64,
    // Accumulated since the last status() call.
    attached_ns: i64,
    hits_while_attached: u64,
}

pub struct ProbeController {
    probes: Probes,
    mem: ProcessMemory,
    sites: ProbeSites,
    mode: Mode,
    costs: HitCosts,
    park_budget: Budget,
    cancel_budget: Budget,
    /// The binary has a cancel probe site and precise mode wants it.
    cancel_wanted: bool,
    last_tick_ns: i64,
    park: Track,
    cancel: Track,
    last_cancel_recorded: u64,
    /// Probes found not firing while attached (and re-attached), cumulative.
    probes_restored: u64,
    park_stall: StallWatch,
    /// Goroutines whose wake-up could not be watched (the watch map was full), cumulative.
    watch_failures: u64,
    interval_start_ns: i64,
}

impl ProbeController {
    pub fn start(
        cfg: &ProbeConfig,
        sites: ProbeSites,
        mode: Mode,
        budget_percent: f64,
        costs: HitCosts,
        now: i64,
    ) -> Result<Self> {
        let mut probes = Probes::load(cfg).map_err(anyhow::Error::from)?;
        probes
            .attach_park()
            .context("cannot attach the park probe")?;
        if mode == Mode::Precise {
            probes
                .attach_wake()
                .context("cannot attach the wake probe")?;
        }
        // Attached by begin(), when the loop that keeps it within budget is about to run.
        let cancel_wanted = mode == Mode::Precise && cfg.cancel_file_offset.is_some();
        let budget_ns_per_sec = budget_percent / 100.0 * 1e9;
        Ok(ProbeController {
            probes,
            mem: ProcessMemory::new(cfg.pid),
            sites,
            mode,
            costs,
            park_budget: Budget::new(budget_ns_per_sec),
            cancel_budget: Budget::new(budget_ns_per_sec),
            cancel_wanted,
            last_tick_ns: now,
            park: Track::default(),
            cancel: Track::default(),
            last_cancel_recorded: 0,
            probes_restored: 0,
            park_stall: StallWatch::new(now),
            watch_failures: 0,
            interval_start_ns: now,
        })
    }

    /// The streaming loop starts: attaches the budgeted cancel probe (precise mode), whose
    /// first ticks come right after (attached earlier, during ctxprobe's own setup, it would
    /// cost the target unchecked).
    pub fn begin(&mut self, now: i64) {
        if self.cancel_wanted {
            // Optional: without it the cancelled_* fields of contexts stay null.
            if let Err(e) = self.probes.attach_cancel() {
                eprintln!("ctxprobe: cannot attach the context cancel probe (will retry): {e}");
                self.cancel_budget.schedule_retry(now);
                // Cancellations until it is in are not "not seen while attached".
                self.cancel.last_detach_ns = now;
            }
        }
        self.last_tick_ns = now;
    }

    /// Called every 25 ms: checks that the attached probes are really there, measures their hit
    /// rates and keeps the budgeted ones within budget. Returns what the user should be told
    /// (a lost breakpoint, a failed re-attach).
    pub fn tick(&mut self, now: i64) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let counters = self.probes.counters()?;
        let elapsed = (now - self.last_tick_ns).max(1);
        self.last_tick_ns = now;

        let park_hits = counters.park_hits.saturating_sub(self.park.last_hits);
        self.park.last_hits = counters.park_hits;
        if self.probes.park_attached() {
            self.park.attached_ns += elapsed;
            self.park.hits_while_attached += park_hits;
        }
        let (cancel_hits, cancel_firsts) = self.cancel_hits(&counters);
        if self.probes.cancel_attached() {
            self.cancel.attached_ns += elapsed;
            self.cancel.hits_while_attached += cancel_hits;
        }

        for which in [Which::Park, Which::Wake, Which::Cancel] {
            self.verify_breakpoint(which, now, &mut notes);
        }
        self.watch_park_hits(park_hits, now, &mut notes);

        if self.mode == Mode::Adaptive {
            let cost = park_hits as f64 * self.costs.park_ns;
            let attached = self.probes.park_attached();
            let decision = self.park_budget.decide(attached, cost, elapsed, now);
            self.apply(Which::Park, decision, now, &mut notes)?;
        } else if !self.probes.park_attached() {
            // Precise mode never detaches it for cost: only a failed re-attach leaves it off.
            let decision = self.park_budget.decide(false, 0.0, elapsed, now);
            self.apply(Which::Park, decision, now, &mut notes)?;
        }
        if self.cancel_wanted {
            let repeats = cancel_hits.saturating_sub(cancel_firsts);
            let cost = cancel_firsts as f64 * (self.costs.cancel_trap_ns + CANCEL_FIRST_WORK_NS)
                + repeats as f64 * (self.costs.cancel_trap_ns + CANCEL_REPEAT_WORK_NS);
            let attached = self.probes.cancel_attached();
            let decision = self.cancel_budget.decide(attached, cost, elapsed, now);
            self.apply(Which::Cancel, decision, now, &mut notes)?;
        }
        Ok(notes)
    }

    /// Cancel probe hits and first cancellations since the last tick.
    fn cancel_hits(&mut self, c: &Counters) -> (u64, u64) {
        let hits = c.cancel_hits.saturating_sub(self.cancel.last_hits);
        let firsts = c.cancel_recorded.saturating_sub(self.last_cancel_recorded);
        self.cancel.last_hits = c.cancel_hits;
        self.last_cancel_recorded = c.cancel_recorded;
        (hits, firsts)
    }

    fn apply(
        &mut self,
        which: Which,
        decision: Decision,
        now: i64,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        match decision {
            Decision::Stay => {}
            Decision::Detach => {
                self.detach(which)?;
                self.track(which).last_detach_ns = now;
            }
            Decision::Attach => {
                if let Err(e) = self.attach(which) {
                    notes.push(format!(
                        "cannot attach the {} probe (will retry): {e}",
                        which.name()
                    ));
                    self.budget(which).schedule_retry(now);
                }
            }
        }
        Ok(())
    }

    /// A probe whose link we hold but whose breakpoint is gone from the target's code fires no
    /// more: put it back.
    fn verify_breakpoint(&mut self, which: Which, now: i64, notes: &mut Vec<String>) {
        let (attached, site) = match which {
            Which::Park => (self.probes.park_attached(), self.sites.park),
            Which::Wake => (self.probes.wake_attached(), self.sites.wake),
            Which::Cancel => (self.probes.cancel_attached(), self.sites.cancel),
        };
        let Some(site) = site.filter(|_| attached) else {
            return;
        };
        // Unreadable (the target is exiting): the session notices that on its own.
        if site.breakpoint_present(&self.mem) == Some(false) {
            self.restore(
                which,
                "its breakpoint was gone from the target's code",
                now,
                notes,
            );
        }
    }

    /// The park probe's counter stood still while the snapshots saw goroutines park.
    fn watch_park_hits(&mut self, park_hits: u64, now: i64, notes: &mut Vec<String>) {
        let attached = self.probes.park_attached();
        if let Some(why) = self.park_stall.tick(park_hits, attached, now) {
            self.restore(Which::Park, &why, now, notes);
        }
    }

    /// A snapshot saw a park that began after `not_before_ns` (the stall watch's evidence).
    pub fn saw_new_park(&mut self, not_before_ns: i64) {
        self.park_stall
            .saw_park(not_before_ns, self.park.last_detach_ns);
    }

    /// Re-attaches a probe found not firing while attached, counts it and says so.
    fn restore(&mut self, which: Which, why: &str, now: i64, notes: &mut Vec<String>) {
        self.probes_restored += 1;
        if which != Which::Wake {
            self.track(which).last_detach_ns = now;
        }
        if which == Which::Park {
            self.park_stall.reset(now);
        }
        // The link is stale: drop it, then attach anew (a new registration puts the breakpoint
        // back into the target).
        let restored = self.detach(which).and_then(|()| self.attach(which));
        let outcome = match restored {
            Ok(()) => "re-attached".to_string(),
            Err(e) if which == Which::Wake => format!("re-attach failed: {e:#}"),
            Err(e) => {
                self.budget(which).schedule_retry(now);
                format!("re-attach failed, will retry: {e:#}")
            }
        };
        notes.push(format!(
            "the {} probe had stopped firing while attached ({why}; {} such losses so far): \
             {outcome}",
            which.name(),
            self.probes_restored
        ));
    }

    fn attach(&mut self, which: Which) -> Result<()> {
        match which {
            Which::Park => self.probes.attach_park()?,
            Which::Wake => self.probes.attach_wake()?,
            Which::Cancel => {
                self.probes.attach_cancel()?;
            }
        }
        Ok(())
    }

    fn detach(&mut self, which: Which) -> Result<()> {
        match which {
            Which::Park => self.probes.detach_park()?,
            Which::Wake => self.probes.detach_wake()?,
            Which::Cancel => self.probes.detach_cancel()?,
        }
        Ok(())
    }

    fn track(&mut self, which: Which) -> &mut Track {
        match which {
            Which::Cancel => &mut self.cancel,
            Which::Park | Which::Wake => &mut self.park,
        }
    }

    fn budget(&mut self, which: Which) -> &mut Budget {
        match which {
            Which::Cancel => &mut self.cancel_budget,
            Which::Park | Which::Wake => &mut self.park_budget,
        }
    }

    /// True if every park since `ns` (CLOCK_MONOTONIC) went through the attached probe.
    pub fn attached_continuously_since(&self, ns: i64) -> bool {
        self.probes.park_attached() && ns > self.park.last_detach_ns
    }

    pub fn park_record(&self, g_addr: u64) -> Option<ParkRecord> {
        self.probes.park_record(g_addr)
    }

    /// What the cancel probe knows of the cancellation of the `context.cancelCtx` at `addr`;
    /// None outside precise mode (nothing is claimed there).
    pub fn cancel_seen(&self, addr: u64) -> Option<CancelSeen> {
        if self.mode != Mode::Precise {
            return None;
        }
        if !self.cancel_wanted || !self.probes.cancel_attached() {
            return Some(CancelSeen::Unavailable);
        }
        let since = self.cancel.last_detach_ns;
        Some(match self.probes.cancel_record(addr) {
            // Attached ever since the record: any later cancellation of this address (a new
            // context allocated where a collected one was) would have replaced it.
            Some(rec) if rec.ns as i64 > since => CancelSeen::Seen(rec),
            Some(_) => CancelSeen::Unavailable,
            None if since == 0 => CancelSeen::NotSeen,
            None => CancelSeen::Unavailable,
        })
    }

    pub fn watch(&mut self, g_addr: u64) {
        // A full watch map only costs exactness of that one wake-up; counted, not hidden.
        if self.mode == Mode::Precise && self.probes.watch(g_addr).is_err() {
            self.watch_failures += 1;
        }
    }

    pub fn unwatch(&mut self, g_addr: u64) {
        if self.mode == Mode::Precise {
            self.probes.unwatch(g_addr);
        }
    }

    pub fn take_wake_events(&mut self) -> Vec<WakeEvent> {
        self.probes.take_wake_events()
    }

    pub fn lost_events(&self) -> u64 {
        self.probes.counters().map(|c| c.lost_events).unwrap_or(0)
    }

    /// Status over the interval since the previous call.
    pub fn status(&mut self, now: i64) -> ProbeStatus {
        let interval = (now - self.interval_start_ns).max(1);
        let rate = |t: &Track| {
            if t.attached_ns > 0 {
                t.hits_while_attached as f64 * 1e9 / t.attached_ns as f64
            } else {
                0.0
            }
        };
        let fraction = |t: &Track| (t.attached_ns as f64 / interval as f64).min(1.0);
        let counters = self.probes.counters().unwrap_or_default();
        let status = ProbeStatus {
            mode: self.mode.name(),
            // Checked again here: a probe whose breakpoint went since the last tick is not
            // attached in any sense that matters.
            park_probe_attached: self.probes.park_attached()
                && self
                    .sites
                    .park
                    .and_then(|site| site.breakpoint_present(&self.mem))
                    != Some(false),
            parks_per_sec: rate(&self.park),
            attached_fraction: fraction(&self.park),
            cancel_probe_attached: self.cancel_wanted.then(|| self.probes.cancel_attached()),
            cancels_per_sec: self.cancel_wanted.then(|| rate(&self.cancel)),
            cancel_attached_fraction: self.cancel_wanted.then(|| fraction(&self.cancel)),
            probes_restored: self.probes_restored,
            map_update_errors: counters.update_errors,
            probe_read_errors: counters.read_errors,
            unwatched_wakeups: self.watch_failures,
            park_hit_ns: self.costs.park_ns.round() as u64,
            park_hit_cost: if self.costs.park_measured {
                "measured"
            } else {
                "assumed"
            },
        };
        self.interval_start_ns = now;
        for t in [&mut self.park, &mut self.cancel] {
            t.attached_ns = 0;
            t.hits_while_attached = 0;
        }
        status
    }
}
