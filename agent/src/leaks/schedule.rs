//! When streaming `--leaks` analyses: the first at once, then at most every `--leak-interval`,
//! and no more often than [`LEAK_SHARE`] of one core allows given what the last one cost. An
//! analysis that cannot start when due (over budget, the previous one still running, the target
//! stopped) starts as soon as it may; its record says how late and why, and how many whole
//! intervals went without one (`skipped`).

/// Share of one core the analyses may use on average (the streaming scans have a budget of
/// their own, `scan_budget::SCAN_SHARE`).
pub const LEAK_SHARE: f64 = 0.05;

/// Why a due analysis did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The previous analysis is still running.
    Busy,
    /// The target is stopped: nothing in it changes.
    Stopped,
    /// The last analysis cost more than the budget allows this soon.
    Budget,
}

/// An analysis may start now.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// How long after it was due (0: on time).
    pub delayed_ns: i64,
    /// Why it was late (the last reason that held it), when it was.
    pub delay_reason: Option<String>,
    /// Whole intervals that passed without an analysis because of the delay.
    pub skipped: u64,
}

pub struct LeakSchedule {
    interval_ns: i64,
    /// When the next analysis is due.
    due_ns: i64,
    /// The last analysis: when it started and the CPU it cost (once finished).
    last_start_ns: Option<i64>,
    last_cpu_ns: i64,
    /// What held the due analysis back, last.
    held: Option<String>,
}

impl LeakSchedule {
    pub fn new(now_ns: i64, interval_ns: i64) -> LeakSchedule {
        LeakSchedule {
            interval_ns: interval_ns.max(1),
            due_ns: now_ns,
            last_start_ns: None,
            last_cpu_ns: 0,
            held: None,
        }
    }

    /// The earliest the budget lets the next analysis start.
    fn budget_allows_at(&self) -> i64 {
        match self.last_start_ns {
            Some(s) => s.saturating_add((self.last_cpu_ns as f64 / LEAK_SHARE) as i64),
            None => i64::MIN,
        }
    }

    /// Whether an analysis starts now: `busy` (one under way), `stopped` (the target is).
    pub fn poll(&mut self, now_ns: i64, busy: bool, stopped: bool) -> Option<Start> {
        if now_ns < self.due_ns {
            return None;
        }
        let hold = if busy {
            Some(Hold::Busy)
        } else if stopped {
            Some(Hold::Stopped)
        } else if now_ns < self.budget_allows_at() {
            Some(Hold::Budget)
        } else {
            None
        };
        if let Some(hold) = hold {
            self.held = Some(self.reason(hold));
            return None;
        }
        let delayed_ns = now_ns - self.due_ns;
        let start = Start {
            delayed_ns,
            delay_reason: self.held.take(),
            skipped: (delayed_ns / self.interval_ns) as u64,
        };
        self.last_start_ns = Some(now_ns);
        self.due_ns = now_ns.saturating_add(self.interval_ns);
        Some(start)
    }

    /// The analysis that started last finished, having cost `cpu_ns` of CPU.
    pub fn finished(&mut self, cpu_ns: i64) {
        self.last_cpu_ns = cpu_ns.max(0);
    }

    fn reason(&self, hold: Hold) -> String {
        match hold {
            Hold::Busy => "the previous analysis was still running".into(),
            Hold::Stopped => "the target was stopped".into(),
            Hold::Budget => format!(
                "over budget: the last analysis used {:.2} s of CPU, and {}% of one core \
                 allows one every {:.1} s",
                self.last_cpu_ns as f64 / 1e9,
                LEAK_SHARE * 100.0,
                self.last_cpu_ns as f64 / LEAK_SHARE / 1e9
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn the_first_runs_at_once_then_every_interval() {
        let mut s = LeakSchedule::new(0, 10 * S);
        let first = s.poll(0, false, false).expect("first at once");
        assert_eq!((first.delayed_ns, first.skipped), (0, 0));
        s.finished(S / 10); // 0.1 s: 2 s of budget
        assert_eq!(s.poll(5 * S, false, false), None);
        let second = s.poll(10 * S, false, false).expect("on time");
        assert_eq!(second.delay_reason, None);
    }

    #[test]
    fn an_expensive_analysis_stretches_the_interval_and_says_why() {
        let mut s = LeakSchedule::new(0, 10 * S);
        s.poll(0, false, false).expect("first");
        s.finished(3 * S); // 5 % of a core: one every 60 s
        assert_eq!(s.poll(10 * S, false, false), None);
        assert_eq!(s.poll(59 * S, false, false), None);
        let late = s
            .poll(60 * S, false, false)
            .expect("when the budget allows");
        assert_eq!(late.delayed_ns, 50 * S);
        assert_eq!(late.skipped, 5);
        assert!(late.delay_reason.unwrap().starts_with("over budget"));
        // The next one is due an interval later, and held by the budget again.
        assert_eq!(s.poll(70 * S, false, false), None);
    }

    #[test]
    fn busy_and_stopped_hold_it_back() {
        let mut s = LeakSchedule::new(0, 10 * S);
        s.poll(0, false, false).expect("first");
        assert_eq!(s.poll(10 * S, true, false), None);
        assert_eq!(s.poll(11 * S, false, true), None);
        let late = s.poll(12 * S, false, false).expect("now");
        assert_eq!(late.delay_reason.as_deref(), Some("the target was stopped"));
        assert_eq!((late.delayed_ns, late.skipped), (2 * S, 0));
    }
}
