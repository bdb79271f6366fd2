//! Which goroutines have stayed parked, since when, and which have crossed the threshold.
//!
//! Works from successive snapshots of the goroutine list: a goroutine seen waiting in two
//! snapshots with the same `trackingSeq` (and the same saved SP/PC and GC stamp) did not run in
//! between; its stack's bytes, the same when it is reported as when it was grouped, say so
//! again (`trackingSeq` has 8 bits and wraps).
//! Where the park probe saw the park, its timestamp makes the duration exact.

use std::collections::{BTreeMap, HashMap};

use crate::contexts::Verdict;
use crate::groups::verdicts::verdict_name;

use crate::goroutines::RawG;
use crate::groups::stream::GroupId;
use crate::report::SinceSource;

/// One ongoing park of one goroutine. Kept small: a million parked goroutines means a million
/// of these; the rest of the `g` is read again when a park is grouped or reported.
#[derive(Debug, Clone)]
pub struct Park {
    /// Address of the `runtime.g`.
    pub addr: u64,
    pub goid: u64,
    /// Where it parked, and `trackingSeq` (moves on every transition out of running): the same
    /// values in a later scan mean it did not run in between.
    pub sched_sp: u64,
    pub sched_pc: u64,
    pub tracking_seq: u8,
    pub wait_reason: u8,
    /// `g.stack.hi - g.stack.lo`.
    pub stack_bytes: u32,
    /// Our CLOCK_MONOTONIC at the first snapshot that saw this park.
    pub first_seen_ns: i64,
    /// The snapshot before that, which did not see this park: the park began after it.
    /// `None` when the first snapshot saw it (the park may be arbitrarily old).
    pub not_before_ns: Option<i64>,
    /// ... and at the latest one.
    pub last_seen_ns: i64,
    /// Snapshots that saw this park.
    pub sightings: u16,
    /// CLOCK_MONOTONIC of the park itself, when the park probe saw it.
    pub exact_park_ns: Option<i64>,
    /// The runtime's GC stamp (`g.waitsince`, target clock), once it has one.
    pub waitsince: i64,
    /// Time the target spent stopped during this park, not counted as blocked.
    pub paused_ns: i64,
    /// Reported as blocked, and the context verdict the report had.
    pub flagged: bool,
    pub verdict: Option<Verdict>,
    /// A hash of its stack's bytes when it was grouped (0: not read yet). A goroutine that
    /// ran in between has other bytes there (a loop's counter, the value it received, a
    /// `time.Now`) even when `trackingSeq` came round to the same value.
    pub stack_print: u64,
    /// Decided not to report (a runtime-internal goroutine): not looked at again.
    pub ignored: bool,
    /// Its group, once a second snapshot saw the park (see `groups::stream`).
    pub group: Option<GroupId>,
    /// Past the threshold and counted in its group without a `blocked` record of its own.
    pub counted: bool,
    /// The last scan that saw it.
    pub seen_in_scan: u32,
    /// `--leaks`: the verdict on this park of the leak analysis numbered `leak_epoch` (0:
    /// none looked up yet); looked up once per analysis (see `Session::update_groups`).
    pub leaked: Option<bool>,
    pub leak_epoch: u32,
}

/// Snapshots that must agree before a park without a probe timestamp is reported. A busy
/// goroutine caught parked in two snapshots looks the same as a long park when its
/// `trackingSeq` (a uint8) happened to wrap around to the same value: 1 chance in 256 per pair,
/// so three sightings make a false report vanishingly rare.
pub const MIN_SIGHTINGS: u16 = 3;

impl Park {
    fn new(g: &RawG, now: i64, not_before_ns: Option<i64>, scan: u32) -> Park {
        Park {
            addr: g.addr,
            goid: g.goid,
            sched_sp: g.sched_sp,
            sched_pc: g.sched_pc,
            tracking_seq: g.tracking_seq,
            wait_reason: g.wait_reason,
            stack_bytes: u32::try_from(g.stack_hi.saturating_sub(g.stack_lo)).unwrap_or(u32::MAX),
            first_seen_ns: now,
            not_before_ns,
            last_seen_ns: now,
            sightings: 1,
            exact_park_ns: None,
            waitsince: g.waitsince,
            paused_ns: 0,
            stack_print: 0,
            flagged: false,
            verdict: None,
            ignored: false,
            group: None,
            counted: false,
            seen_in_scan: scan,
            leaked: None,
            leak_epoch: 0,
        }
    }

    /// `g` is still in this park: same goroutine, parked at the same place for the same
    /// reason, and it has not run in between.
    pub fn still(&self, g: &RawG) -> bool {
        g.is_waiting()
            && g.addr == self.addr
            && g.goid == self.goid
            && g.tracking_seq == self.tracking_seq
            && g.wait_reason == self.wait_reason
            && g.sched_sp == self.sched_sp
            && g.sched_pc == self.sched_pc
            // The runtime clears the GC stamp whenever the goroutine runs.
            && (self.waitsince == 0 || g.waitsince == self.waitsince)
    }

    /// Its stack, read again before it is reported, hashes to `print`: if that is not what
    /// it was when grouped, the goroutine ran in between (and came back to the same place
    /// with `trackingSeq` wrapped round), so this park begins again now: it has to be seen
    /// for long enough once more. Returns whether it began again.
    pub fn restart_if_stack_moved(&mut self, print: u64, g: &RawG, now: i64) -> bool {
        if self.stack_print == 0 || print == self.stack_print {
            return false;
        }
        // It parked again after it was grouped, so after it was first seen.
        self.not_before_ns = Some(self.first_seen_ns);
        self.first_seen_ns = now;
        self.last_seen_ns = now;
        self.sightings = 1;
        self.exact_park_ns = None;
        self.waitsince = g.waitsince;
        self.paused_ns = 0;
        self.stack_print = print;
        true
    }

    /// Its end matters to someone: it was reported, or it is counted in a group.
    fn worth_ending(&self) -> bool {
        self.flagged || self.group.is_some()
    }

    /// Seen often enough (or timed by the probe) to be reported.
    pub fn confirmed(&self) -> bool {
        self.exact_park_ns.is_some() || self.sightings >= MIN_SIGHTINGS
    }

    /// How long it has been parked at `now` (ours) / `target_now` (the target's clock).
    pub fn blocked(&self, now: i64, target_now: i64) -> (u64, SinceSource) {
        if let Some(p) = self.exact_park_ns {
            return (now.saturating_sub(p).max(0) as u64, SinceSource::Probe);
        }
        let observed = now.saturating_sub(self.first_seen_ns).max(0) as u64;
        let mut runtime = if self.waitsince > 0 && self.waitsince <= target_now {
            (target_now - self.waitsince)
                .saturating_sub(self.paused_ns)
                .max(0) as u64
        } else {
            0
        };
        // The GC stamp is the start of the first GC cycle that found the goroutine parked
        // (`markroot` sets `waitsince = work.tstart`), so it can predate the park by up to a
        // cycle: a goroutine created during a mark phase gets a stamp from before it existed.
        // One older than a snapshot that did not see the park is certainly such a stamp (the
        // stop time is added back: the stamp's clock ran on through a stop, `not_before_ns`
        // was moved past it); a younger one is still never allowed to claim more than that
        // snapshot allows.
        if let Some(nb) = self.not_before_ns {
            let nb_target = nb.saturating_add(target_now.saturating_sub(now));
            if self.waitsince.saturating_add(self.paused_ns) < nb_target {
                runtime = 0;
            }
            runtime = runtime.min(now.saturating_sub(nb).max(0) as u64);
        }
        if runtime > observed {
            (runtime, SinceSource::Runtime)
        } else {
            (observed, SinceSource::Observed)
        }
    }
}

/// What one chunk (or the end) of a scan changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Positions (in `allgs`) of parks that started, as far as we can tell, with this chunk.
    pub new_parks: Vec<usize>,
    /// Positions of goroutines parked now, and their index in the chunk's goroutines.
    pub parked: Vec<(usize, usize)>,
    /// Parks that ended since the previous scan and had been flagged or grouped.
    pub ended: Vec<Park>,
}

/// Parks across scans of the goroutine list, by position in `allgs` (which only ever grows:
/// the runtime reuses a dead `g` for a new goroutine but never removes one from the list). A
/// scan may be read in chunks spread over time (a million goroutines are not read in one go):
/// [`ParkTracker::begin_scan`], [`ParkTracker::observe_chunk`] per chunk, then
/// [`ParkTracker::end_scan`].
#[derive(Default)]
pub struct ParkTracker {
    slots: Vec<Option<Park>>,
    /// Flagged parks by g address, for the wake probe's events.
    flagged: HashMap<u64, usize>,
    /// Scans begun so far; a park seen by the current one carries its number.
    scan: u32,
    /// When the current and the previous scan began (our clock).
    scan_started_ns: Option<i64>,
    prev_scan_started_ns: Option<i64>,
}

impl ParkTracker {
    /// All of one snapshot at once, in `allgs` order.
    #[cfg(test)]
    pub fn observe(&mut self, gs: &[RawG], now: i64) -> Changes {
        let mut changes = Changes::default();
        let addrs: Vec<u64> = gs.iter().map(|g| g.addr).collect();
        self.begin_scan(now);
        self.observe_chunk(0, &addrs, gs, now, &mut changes);
        self.end_scan(&mut changes);
        changes
    }

    pub fn begin_scan(&mut self, now: i64) {
        self.scan = self.scan.wrapping_add(1);
        self.prev_scan_started_ns = self.scan_started_ns.replace(now);
    }

    /// One chunk of the current scan: `addrs` are `allgs[base..]`, `gs` those of them that
    /// could be read (in the same order), at `now`.
    pub fn observe_chunk(
        &mut self,
        base: usize,
        addrs: &[u64],
        gs: &[RawG],
        now: i64,
        changes: &mut Changes,
    ) {
        let end = base + addrs.len();
        if self.slots.len() < end {
            // Exactly what is needed: allgs grows by a goroutine at a time, and a doubling
            // Vec would hold up to twice the slots of a million-goroutine process.
            self.slots.reserve_exact(end - self.slots.len());
            self.slots.resize_with(end, || None);
        }
        let mut next_g = gs.iter().enumerate().peekable();
        for (i, &addr) in addrs.iter().enumerate() {
            let pos = base + i;
            let Some((gi, g)) = next_g.next_if(|(_, g)| g.addr == addr) else {
                continue; // unreadable now: if it stays unseen, end_scan ends its park
            };
            let slot = &mut self.slots[pos];
            if let Some(park) = slot.as_mut().filter(|p| p.still(g)) {
                park.last_seen_ns = now;
                park.sightings = park.sightings.saturating_add(1);
                park.seen_in_scan = self.scan;
                if g.waitsince != 0 {
                    park.waitsince = g.waitsince;
                }
                changes.parked.push((pos, gi));
                continue;
            }
            // It ran since it was last seen parked, or it exited and its g was reused.
            if let Some(old) = slot.take() {
                if old.flagged {
                    self.flagged.remove(&old.addr);
                }
                if old.worth_ending() {
                    changes.ended.push(old);
                }
            }
            if g.is_waiting() {
                // The previous scan saw this g before this park began, and it began after
                // that scan started.
                *slot = Some(Park::new(g, now, self.prev_scan_started_ns, self.scan));
                changes.new_parks.push(pos);
                changes.parked.push((pos, gi));
            }
        }
    }

    /// Parks the scan did not see again have ended (their g was unreadable or left the list).
    pub fn end_scan(&mut self, changes: &mut Changes) {
        let scan = self.scan;
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|p| p.seen_in_scan != scan) {
                if let Some(old) = slot.take() {
                    if old.flagged {
                        self.flagged.remove(&old.addr);
                    }
                    if old.worth_ending() {
                        changes.ended.push(old);
                    }
                }
            }
        }
    }

    pub fn get(&self, pos: usize) -> Option<&Park> {
        self.slots.get(pos)?.as_ref()
    }

    pub fn get_mut(&mut self, pos: usize) -> Option<&mut Park> {
        self.slots.get_mut(pos)?.as_mut()
    }

    /// Marks the park at `pos` reported, with the report's context verdict.
    pub fn flag(&mut self, pos: usize, verdict: Option<Verdict>) {
        if let Some(p) = self.get_mut(pos) {
            p.flagged = true;
            p.verdict = verdict;
            let addr = p.addr;
            self.flagged.insert(addr, pos);
        }
    }

    /// Removes and returns the flagged park of the g at `addr` (its wake-up was seen).
    pub fn take_flagged(&mut self, addr: u64) -> Option<Park> {
        let pos = self.flagged.remove(&addr)?;
        self.slots.get_mut(pos)?.take()
    }

    pub fn parks(&self) -> impl Iterator<Item = &Park> {
        self.slots.iter().flatten()
    }

    /// Every park with its position in `allgs`.
    pub fn parks_mut_by_position(&mut self) -> impl Iterator<Item = (usize, &mut Park)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(pos, slot)| Some((pos, slot.as_mut()?)))
    }

    /// The target was stopped (SIGSTOP, a debugger) for `ns`: nothing in it could run, so that
    /// time is no evidence that a goroutine is stuck. Parks not yet reported are timed as if
    /// the stop had not happened; a goroutine that was merely caught parked as the target
    /// stopped must not cross the threshold on the stop alone.
    pub fn exclude_pause(&mut self, ns: i64) {
        for park in self.slots.iter_mut().flatten().filter(|p| !p.flagged) {
            park.first_seen_ns = park.first_seen_ns.saturating_add(ns);
            park.last_seen_ns = park.last_seen_ns.saturating_add(ns);
            park.not_before_ns = park.not_before_ns.map(|t| t.saturating_add(ns));
            park.exact_park_ns = park.exact_park_ns.map(|t| t.saturating_add(ns));
            // The GC stamp is in the target's clock, which ran on through the stop.
            park.paused_ns = park.paused_ns.saturating_add(ns);
        }
        for t in [&mut self.scan_started_ns, &mut self.prev_scan_started_ns]
            .into_iter()
            .flatten()
        {
            *t = t.saturating_add(ns);
        }
    }

    /// Context verdicts of the parks reported now (`context_verdict` → goroutines).
    pub fn flagged_verdicts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for v in self.parks().filter(|p| p.flagged).filter_map(|p| p.verdict) {
            *counts.entry(verdict_name(v).to_string()).or_default() += 1;
        }
        counts
    }

    /// Parks past the threshold: reported, or counted in their group.
    pub fn past_threshold_count(&self) -> u64 {
        self.parks().filter(|p| p.flagged || p.counted).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(addr: u64, goid: u64, status: u32, seq: u8) -> RawG {
        RawG {
            addr,
            goid,
            status,
            wait_reason: 14,
            waitsince: 0,
            tracking_seq: seq,
            stack_lo: 0x1000,
            stack_hi: 0x2000,
            sched_sp: 0x1800,
            sched_pc: 0x401000,
            sched_bp: 0x1900,
            syscallsp: 0,
            syscallpc: 0,
            syscallbp: None,
            m: 0,
            gopc: 0,
            startpc: 0,
            parent_goid: None,
        }
    }

    #[test]
    fn a_goroutine_that_ran_in_between_starts_a_new_park() {
        let mut t = ParkTracker::default();
        let c = t.observe(&[g(1, 7, 4, 3)], 100);
        assert_eq!(c.new_parks, vec![0]);
        t.flag(0, None);
        let c = t.observe(&[g(1, 7, 4, 3)], 200);
        assert!(c.new_parks.is_empty() && c.ended.is_empty());
        // Ran once and parked again at the same place: trackingSeq moved on.
        let c = t.observe(&[g(1, 7, 4, 4)], 300);
        assert_eq!(c.new_parks, vec![0]);
        assert_eq!(c.ended.len(), 1);
        assert_eq!(c.ended[0].first_seen_ns, 100);
        // Not waiting any more: the (unflagged) park just ends.
        let c = t.observe(&[g(1, 7, 1, 5)], 400);
        assert!(c.new_parks.is_empty() && c.ended.is_empty());
    }

    #[test]
    fn a_goroutine_that_ran_round_to_the_same_tracking_seq_is_caught_by_its_stack_or_stamp() {
        let mut t = ParkTracker::default();
        t.observe(&[g(1, 7, 4, 3)], 100);
        t.observe(&[g(1, 7, 4, 3)], 200);
        let p = t.get_mut(0).unwrap();
        p.stack_print = 0xaaaa;
        // Same stack: the same park.
        assert!(!p.restart_if_stack_moved(0xaaaa, &g(1, 7, 4, 3), 300));
        assert_eq!((p.first_seen_ns, p.sightings), (100, 2));
        // Other bytes: it ran; seen from now on, and not reported before seen enough again.
        assert!(p.restart_if_stack_moved(0xbbbb, &g(1, 7, 4, 3), 300));
        assert_eq!(
            (p.first_seen_ns, p.sightings, p.not_before_ns),
            (300, 1, Some(100))
        );
        assert!(!p.confirmed());
        // A GC stamp that changed means it ran (the runtime clears it on every run).
        let mut stamped = g(1, 7, 4, 3);
        stamped.waitsince = 50;
        let c = t.observe(&[stamped.clone()], 400);
        assert!(c.new_parks.is_empty());
        stamped.waitsince = 0;
        let c = t.observe(&[stamped], 500);
        assert_eq!(c.new_parks, vec![0]);
    }

    #[test]
    fn a_stopped_target_does_not_age_unreported_parks() {
        let mut t = ParkTracker::default();
        t.observe(&[g(1, 7, 4, 3), g(2, 8, 4, 3)], 1_000);
        t.flag(1, None);
        // Stopped for 10 µs, then seen again at 12 µs, with a GC stamp from 0.5 µs.
        t.exclude_pause(10_000);
        let mut stamped = g(1, 7, 4, 3);
        stamped.waitsince = 500;
        t.observe(&[stamped, g(2, 8, 4, 3)], 12_000);
        let mut p1 = t.get(0).unwrap().clone();
        // The GC stamp's clock ran on through the stop: 11.5 µs less the 10 µs stopped.
        assert_eq!(p1.blocked(12_000, 12_000), (1_500, SinceSource::Runtime));
        p1.waitsince = 0;
        assert_eq!(p1.blocked(12_000, 12_000), (1_000, SinceSource::Observed));
        let p2 = t.get(1).unwrap().clone();
        assert_eq!(p2.blocked(12_000, 12_000), (11_000, SinceSource::Observed));
    }

    #[test]
    fn durations_prefer_exact_then_the_larger_lower_bound() {
        let mut p = Park::new(&g(1, 7, 4, 3), 1_000, None, 0);
        assert_eq!(p.blocked(5_000, 50_000), (4_000, SinceSource::Observed));
        p.waitsince = 40_000;
        assert_eq!(p.blocked(5_000, 50_000), (10_000, SinceSource::Runtime));
        // A stamp older than a snapshot that did not see the park is a GC cycle's start.
        p.not_before_ns = Some(-2_000);
        assert_eq!(p.blocked(5_000, 50_000), (4_000, SinceSource::Observed));
        // A younger one stands, within what that snapshot allows.
        p.not_before_ns = Some(-6_000);
        assert_eq!(p.blocked(5_000, 50_000), (10_000, SinceSource::Runtime));
        p.waitsince = 38_000;
        p.not_before_ns = Some(-8_000);
        assert_eq!(p.blocked(5_000, 50_000), (12_000, SinceSource::Runtime));
        p.not_before_ns = None;
        p.waitsince = 60_000; // from the future: ignored
        assert_eq!(p.blocked(5_000, 50_000), (4_000, SinceSource::Observed));
        p.exact_park_ns = Some(500);
        assert_eq!(p.blocked(5_000, 50_000), (4_500, SinceSource::Probe));
    }
}
