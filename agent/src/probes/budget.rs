//! Keeping one probe within its share of the target's CPU: what its hits cost over the last
//! tick against the budget; over budget it detaches and retries later with exponential backoff.

/// First retry after a detach (or a failed attach), doubling up to [`MAX_BACKOFF_NS`].
pub const MIN_BACKOFF_NS: i64 = 5_000_000_000;
pub const MAX_BACKOFF_NS: i64 = 120_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Stay,
    Detach,
    Attach,
}

#[derive(Debug)]
pub struct Budget {
    /// Allowed cost, in ns of target CPU per second.
    ns_per_sec: f64,
    retry_at_ns: Option<i64>,
    backoff_ns: i64,
}

impl Budget {
    pub fn new(ns_per_sec: f64) -> Budget {
        Budget {
            ns_per_sec,
            retry_at_ns: None,
            backoff_ns: MIN_BACKOFF_NS,
        }
    }

    /// `cost_ns`: what the probe's hits cost the target over the last `elapsed_ns` (0 while
    /// detached).
    pub fn decide(&mut self, attached: bool, cost_ns: f64, elapsed_ns: i64, now: i64) -> Decision {
        if attached {
            if cost_ns * 1e9 / elapsed_ns.max(1) as f64 > self.ns_per_sec {
                self.schedule_retry(now);
                return Decision::Detach;
            }
            // Stayed within budget for a whole tick after a retry: forget the backoff.
            self.backoff_ns = MIN_BACKOFF_NS;
            Decision::Stay
        } else if self.retry_at_ns.is_some_and(|t| now >= t) {
            self.retry_at_ns = None;
            Decision::Attach
        } else {
            Decision::Stay
        }
    }

    /// An attach failed, or the probe has to come off for another reason: try again later.
    pub fn schedule_retry(&mut self, now: i64) {
        self.retry_at_ns = Some(now + self.backoff_ns);
        self.backoff_ns = (self.backoff_ns * 2).min(MAX_BACKOFF_NS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn over_budget_detaches_and_retries_with_backoff() {
        let mut b = Budget::new(5_000_000.0); // 0.5 % of a core
        assert_eq!(b.decide(true, 100_000.0, S / 40, 0), Decision::Stay);
        // 1 ms of cost in 25 ms: 4 % of a core.
        assert_eq!(b.decide(true, 1_000_000.0, S / 40, 0), Decision::Detach);
        assert_eq!(b.decide(false, 0.0, S / 40, 4 * S), Decision::Stay);
        assert_eq!(b.decide(false, 0.0, S / 40, 5 * S), Decision::Attach);
        assert_eq!(b.decide(true, 1_000_000.0, S / 40, 5 * S), Decision::Detach);
        // The second backoff is twice the first.
        assert_eq!(b.decide(false, 0.0, S / 40, 14 * S), Decision::Stay);
        assert_eq!(b.decide(false, 0.0, S / 40, 15 * S), Decision::Attach);
        // Within budget for a tick: the backoff starts over.
        assert_eq!(b.decide(true, 0.0, S / 40, 15 * S), Decision::Stay);
        assert_eq!(
            b.decide(true, 1_000_000.0, S / 40, 16 * S),
            Decision::Detach
        );
        assert_eq!(b.decide(false, 0.0, S / 40, 21 * S), Decision::Attach);
    }

    #[test]
    fn backoff_is_capped() {
        let mut b = Budget::new(1.0);
        for _ in 0..20 {
            b.schedule_retry(0);
        }
        assert_eq!(b.decide(false, 0.0, 1, MAX_BACKOFF_NS - 1), Decision::Stay);
        assert_eq!(b.decide(false, 0.0, 1, MAX_BACKOFF_NS), Decision::Attach);
    }
}
