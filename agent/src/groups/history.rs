//! A group's size over time, and the leak-suspect rule.
//!
//! A leak keeps adding goroutines that never leave; a pool warms up and then stays flat; a burst
//! comes and drains. Telling them apart needs the group's recent history, kept as one entry per
//! 10-second bucket (at most a window's worth), not one per snapshot: a million-goroutine process
//! is snapshotted rarely, a small one several times a second, and both get the same rule.
//!
//! The rule: a group is a leak suspect when, over the last [`WINDOW_BUCKETS`] complete buckets
//! (60 s) of a history at least [`MIN_HISTORY_NS`] long,
//! - its size grew in at least [`MIN_GROWING_BUCKETS`] buckets and in at least two thirds of them,
//! - few members left: at most a quarter of those that joined in the window,
//! - and its oldest member is blocked past the threshold (the caller checks that).

use std::collections::VecDeque;

pub const BUCKET_NS: i64 = 10_000_000_000;
/// Buckets looked at: the last minute.
pub const WINDOW_BUCKETS: i64 = 6;
/// Growth seen for less than this is no evidence of a leak.
pub const MIN_HISTORY_NS: i64 = 30_000_000_000;
pub const MIN_GROWING_BUCKETS: usize = 3;

/// The group's totals at the last snapshot that fell in one bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    index: i64,
    at_ns: i64,
    count: u64,
    joined: u64,
    left: u64,
}

/// One group's history.
#[derive(Debug)]
pub struct History {
    /// Bucket 0 starts here (the run's start, shared by all groups so buckets line up).
    origin_ns: i64,
    first_ns: i64,
    /// Totals at the first snapshot: the baseline of the first bucket.
    first: Bucket,
    buckets: VecDeque<Bucket>,
}

impl History {
    pub fn new(origin_ns: i64, now_ns: i64, count: u64, joined: u64, left: u64) -> History {
        let first = Bucket {
            index: Self::index(origin_ns, now_ns),
            at_ns: now_ns,
            count,
            joined,
            left,
        };
        History {
            origin_ns,
            first_ns: now_ns,
            first,
            buckets: VecDeque::from([first]),
        }
    }

    fn index(origin_ns: i64, now_ns: i64) -> i64 {
        (now_ns - origin_ns).max(0) / BUCKET_NS
    }

    /// Records the group's totals (members now, joined and left since the start) at `now_ns`.
    pub fn record(&mut self, now_ns: i64, count: u64, joined: u64, left: u64) {
        let index = Self::index(self.origin_ns, now_ns);
        let b = Bucket {
            index,
            at_ns: now_ns,
            count,
            joined,
            left,
        };
        match self.buckets.back_mut() {
            Some(last) if last.index == index => *last = b,
            _ => self.buckets.push_back(b),
        }
        // One bucket older than the window stays: the baseline of the window's first bucket.
        while self
            .buckets
            .front()
            .is_some_and(|f| f.index < index - WINDOW_BUCKETS - 1)
        {
            if let Some(dropped) = self.buckets.pop_front() {
                self.first = dropped;
            }
        }
    }

    /// Complete buckets of the window, each with the one before it (or the first snapshot).
    fn window(&self, now_ns: i64) -> Vec<(Bucket, Bucket)> {
        let current = Self::index(self.origin_ns, now_ns);
        let mut pairs = Vec::new();
        let mut before = self.first;
        for &b in &self.buckets {
            if b.index >= current {
                break;
            }
            if b.index >= current - WINDOW_BUCKETS && b.at_ns > self.first_ns {
                pairs.push((before, b));
            }
            before = b;
        }
        pairs
    }

    /// Whether the growth rule holds at `now_ns` (see the module comment); when it does, the
    /// start of the first growing bucket of the window (our clock), for `leak_since`.
    pub fn growth_suspect(&self, now_ns: i64) -> Option<i64> {
        if now_ns - self.first_ns < MIN_HISTORY_NS {
            return None;
        }
        let window = self.window(now_ns);
        let growing: Vec<&(Bucket, Bucket)> =
            window.iter().filter(|(a, b)| b.count > a.count).collect();
        if growing.len() < MIN_GROWING_BUCKETS || growing.len() * 3 < window.len() * 2 {
            return None;
        }
        let (start, end) = (window.first()?.0, window.last()?.1);
        let joined = end.joined.saturating_sub(start.joined);
        let left = end.left.saturating_sub(start.left);
        if left * 4 > joined {
            return None;
        }
        let (first_growing, _) = growing.first()?;
        Some(first_growing.at_ns)
    }

    /// Net members per minute over the window (or since the first snapshot, if younger).
    pub fn growth_per_min(&self, now_ns: i64, count: u64) -> f64 {
        let current = Self::index(self.origin_ns, now_ns);
        let base = self
            .buckets
            .iter()
            .find(|b| b.index >= current - WINDOW_BUCKETS && b.at_ns < now_ns)
            .copied()
            .unwrap_or(self.first);
        let base = if base.at_ns >= now_ns {
            self.first
        } else {
            base
        };
        let elapsed = now_ns - base.at_ns;
        if elapsed < 1_000_000_000 {
            return 0.0;
        }
        (count as f64 - base.count as f64) * 60e9 / elapsed as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    /// Feeds one snapshot per `every` seconds for `secs` seconds, sizes from `size(t)`, joins
    /// and leaves from `flow(t)`; returns when the rule first held.
    fn run(
        secs: i64,
        every: i64,
        size: impl Fn(i64) -> u64,
        flow: impl Fn(i64) -> (u64, u64),
    ) -> Option<i64> {
        let mut h = History::new(0, 0, size(0), flow(0).0, flow(0).1);
        let mut t = every;
        while t <= secs {
            let (j, l) = flow(t);
            h.record(t * S, size(t), j, l);
            if h.growth_suspect(t * S).is_some() {
                return Some(t);
            }
            t += every;
        }
        None
    }

    #[test]
    fn a_steady_leak_is_a_suspect_after_the_minimum_history() {
        let leak = |t: i64| 100 + 3 * t as u64;
        let t = run(120, 1, leak, |t| (3 * t as u64, 0)).expect("suspect");
        assert!((30..=41).contains(&t), "suspect at {t}s");
    }

    #[test]
    fn a_slow_leak_seen_by_rare_snapshots_is_a_suspect() {
        // One snapshot every 20 s (a very large process): buckets have gaps.
        let t = run(200, 20, |t| 1000 + t as u64, |t| (t as u64, 0)).expect("suspect");
        assert!(t <= 100, "suspect at {t}s");
    }

    #[test]
    fn a_stable_pool_a_plateau_and_a_drained_burst_are_not() {
        assert_eq!(run(300, 1, |_| 20, |t| (t as u64, t as u64)), None);
        let warm = |t: i64| (t.min(15) * 2) as u64;
        assert_eq!(run(300, 1, warm, |t| (warm(t), 0)), None);
        let burst = |t: i64| if (5..25).contains(&t) { 400 } else { 0 };
        let flow = |t: i64| match t {
            ..5 => (0, 0),
            5..25 => (400, 0),
            _ => (400, 400),
        };
        assert_eq!(run(300, 1, burst, flow), None);
    }

    #[test]
    fn churn_that_grows_slowly_but_mostly_leaves_is_not() {
        // +1 net per second, but 100 join and 99 leave each second: a busy pool, not a leak.
        let t = run(
            300,
            1,
            |t| 1000 + t as u64,
            |t| (100 * t as u64, 99 * t as u64),
        );
        assert_eq!(t, None);
    }

    #[test]
    fn growth_per_minute() {
        let mut h = History::new(0, 0, 0, 0, 0);
        for t in 1..=90 {
            h.record(t * S, 2 * t as u64, 2 * t as u64, 0);
        }
        let g = h.growth_per_min(90 * S, 180);
        assert!((g - 120.0).abs() < 1.0, "{g}");
        assert_eq!(History::new(0, 0, 5, 0, 0).growth_per_min(0, 5), 0.0);
    }
}
