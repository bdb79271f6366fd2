//! Is the park probe firing? Every park goes through `runtime.gopark`, so a hit counter that
//! stands still while the snapshots see goroutines park after it last moved means the probe is
//! not firing, whatever the kernel's reason (its breakpoint check covers only one of them).

/// Parks seen after the counter last moved before the probe is declared stalled: a goroutine
/// the runtime suspends for a GC stack scan also shows as waiting, without gopark.
const MIN_PARKS: u32 = 8;
/// How long the counter must have stood still.
const MIN_STILL_NS: i64 = 1_000_000_000;

#[derive(Debug)]
pub struct StallWatch {
    /// When the hit counter last moved (or the probe was (re)attached or detached).
    moved_ns: i64,
    /// Parks the snapshots saw begin after that.
    parks_since: u32,
}

impl StallWatch {
    pub fn new(now: i64) -> StallWatch {
        StallWatch {
            moved_ns: now,
            parks_since: 0,
        }
    }

    /// Starts over (the probe was attached anew, or is detached).
    pub fn reset(&mut self, now: i64) {
        self.moved_ns = now;
        self.parks_since = 0;
    }

    /// A snapshot saw a park that began after `not_before_ns`; `detached_ns`: when the probe
    /// last stopped being effective (parks before that prove nothing).
    pub fn saw_park(&mut self, not_before_ns: i64, detached_ns: i64) {
        if not_before_ns > self.moved_ns && not_before_ns > detached_ns {
            self.parks_since = self.parks_since.saturating_add(1);
        }
    }

    /// Each tick: `hits` since the last one. Returns why the probe is stalled, if it is.
    pub fn tick(&mut self, hits: u64, attached: bool, now: i64) -> Option<String> {
        if hits > 0 || !attached {
            self.reset(now);
            return None;
        }
        let still = now - self.moved_ns;
        (self.parks_since >= MIN_PARKS && still >= MIN_STILL_NS).then(|| {
            format!(
                "it counted no hit for {:.1}s while the snapshots saw {} parks begin",
                still as f64 / 1e9,
                self.parks_since
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn still_counter_with_parks_after_it_is_a_stall() {
        let mut w = StallWatch::new(0);
        assert_eq!(w.tick(5, true, 25 * MS), None);
        // Counter stands still from 25 ms; parks begin after 100 ms.
        for _ in 0..MIN_PARKS {
            w.saw_park(100 * MS, 0);
        }
        assert_eq!(w.tick(0, true, 500 * MS), None, "not still for long enough");
        let why = w.tick(0, true, 1100 * MS).expect("a stall");
        assert!(
            why.contains("no hit for 1.1s") && why.contains("8 parks"),
            "{why}"
        );
    }

    #[test]
    fn hits_or_detaching_start_over() {
        let mut w = StallWatch::new(0);
        for _ in 0..MIN_PARKS {
            w.saw_park(100 * MS, 0);
        }
        assert_eq!(w.tick(1, true, 2000 * MS), None);
        assert_eq!(
            w.tick(0, true, 4000 * MS),
            None,
            "no park after the counter moved"
        );
        for _ in 0..MIN_PARKS {
            w.saw_park(2100 * MS, 0);
        }
        assert_eq!(w.tick(0, false, 4100 * MS), None, "detached");
        assert_eq!(w.tick(0, true, 6000 * MS), None, "parks before the detach");
    }

    #[test]
    fn few_parks_or_parks_before_a_detach_prove_nothing() {
        let mut w = StallWatch::new(0);
        for _ in 0..MIN_PARKS - 1 {
            w.saw_park(100 * MS, 0);
        }
        w.saw_park(100 * MS, 200 * MS); // began before the probe's last detach
        assert_eq!(w.tick(0, true, 5000 * MS), None);
        w.saw_park(300 * MS, 200 * MS);
        assert!(w.tick(0, true, 5025 * MS).is_some());
    }
}
