//! The park probe under a cost budget.
//!
//! A uprobe hit costs the target ~0.7–1 µs however little the BPF program does, and a busy Go
//! server parks ~100k times a second, so the default ("adaptive") mode keeps the park probe
//! attached only while its measured hit rate fits a budget (a fraction of one CPU). Over
//! budget it detaches and retries later with exponential backoff; meanwhile durations come
//! from snapshots (lower bounds) instead of the probe (exact). "precise" mode keeps the park
//! and wake probes attached whatever they cost.

use anyhow::{Context, Result};
use probe_ebpf::{CancelRecord, ParkRecord, ProbeConfig, Probes, WakeEvent};

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

const MIN_BACKOFF_NS: i64 = 5_000_000_000;
const MAX_BACKOFF_NS: i64 = 120_000_000_000;

pub struct ProbeController {
    probes: Probes,
    mode: Mode,
    /// Allowed probe cost, in ns of target CPU per second.
    budget_ns_per_sec: f64,
    hit_cost_ns: f64,
    last_tick_ns: i64,
    last_park_hits: u64,
    retry_at_ns: Option<i64>,
    /// When the park probe was last detached (0: never): records older than this may be stale.
    last_detach_ns: i64,
    backoff_ns: i64,
    // Accumulated since the last status() call.
    interval_start_ns: i64,
    attached_ns: i64,
    hits_while_attached: u64,
}

impl ProbeController {
    /// `hit_cost_ns`: what one park probe hit costs the target (`cargo xtask bench` measures
    /// it: ~0.9 µs where the kernel emulates the probed instruction).
    pub fn start(
        cfg: &ProbeConfig,
        mode: Mode,
        budget_percent: f64,
        hit_cost_ns: f64,
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
            // Optional: without it only the cancelled_* fields of contexts stay null.
            if let Err(e) = probes.attach_cancel() {
                eprintln!("ctxprobe: cannot attach the context cancel probe: {e}");
            }
        }
        Ok(ProbeController {
            probes,
            mode,
            budget_ns_per_sec: budget_percent / 100.0 * 1e9,
            hit_cost_ns,
            last_tick_ns: now,
            last_park_hits: 0,
            retry_at_ns: None,
            last_detach_ns: 0,
            backoff_ns: MIN_BACKOFF_NS,
            interval_start_ns: now,
            attached_ns: 0,
            hits_while_attached: 0,
        })
    }

    /// Called every few hundred ms: measures the park rate and keeps the probe within budget.
    pub fn tick(&mut self, now: i64) -> Result<()> {
        let counters = self.probes.counters()?;
        let hits = counters.park_hits.saturating_sub(self.last_park_hits);
        self.last_park_hits = counters.park_hits;
        let elapsed = (now - self.last_tick_ns).max(1);
        self.last_tick_ns = now;
        if self.probes.park_attached() {
            self.attached_ns += elapsed;
            self.hits_while_attached += hits;
        }
        if self.mode != Mode::Adaptive {
            return Ok(());
        }
        if self.probes.park_attached() {
            let cost_per_sec = hits as f64 * self.hit_cost_ns * 1e9 / elapsed as f64;
            if cost_per_sec > self.budget_ns_per_sec {
                self.probes.detach_park()?;
                self.last_detach_ns = crate::target::monotonic_ns();
                self.retry_at_ns = Some(now + self.backoff_ns);
                self.backoff_ns = (self.backoff_ns * 2).min(MAX_BACKOFF_NS);
            } else if self.retry_at_ns.is_none() {
                // Stayed within budget for a whole tick after a retry: forget the backoff.
                self.backoff_ns = MIN_BACKOFF_NS;
            }
        } else if self.retry_at_ns.is_some_and(|t| now >= t) {
            self.retry_at_ns = None;
            self.probes.attach_park()?;
        }
        Ok(())
    }

    /// True if every park since `ns` (CLOCK_MONOTONIC) went through the attached probe.
    pub fn attached_continuously_since(&self, ns: i64) -> bool {
        self.probes.park_attached() && ns > self.last_detach_ns
    }

    pub fn park_record(&self, g_addr: u64) -> Option<ParkRecord> {
        self.probes.park_record(g_addr)
    }

    /// The first cancellation the cancel probe saw of the `context.cancelCtx` at `addr`
    /// (precise mode only).
    pub fn cancel_record(&self, addr: u64) -> Option<CancelRecord> {
        if !self.probes.cancel_attached() {
            return None;
        }
        self.probes.cancel_record(addr)
    }

    pub fn watch(&mut self, g_addr: u64) {
        if self.mode == Mode::Precise {
            // A full watch map only costs exactness of that one wake-up.
            let _ = self.probes.watch(g_addr);
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
        let status = ProbeStatus {
            mode: self.mode.name(),
            park_probe_attached: self.probes.park_attached(),
            parks_per_sec: if self.attached_ns > 0 {
                self.hits_while_attached as f64 * 1e9 / self.attached_ns as f64
            } else {
                0.0
            },
            attached_fraction: (self.attached_ns as f64 / interval as f64).min(1.0),
        };
        self.interval_start_ns = now;
        self.attached_ns = 0;
        self.hits_while_attached = 0;
        status
    }
}
