//! How often the goroutine list may be scanned: a share of one core, with a credit that lets
//! the first scans after attach run back to back.
//!
//! Reading a million goroutines takes a second or more of our CPU. Scanning at the poll
//! interval would cost a core; scanning rarely from the start would delay the first reports
//! (a park is grouped at its second sighting). So scans spend a credit that refills at
//! [`SCAN_SHARE`] of wall time, capped at [`CREDIT_CAP_NS`], which is also the credit at attach.

/// Share of one core that scans may use on average.
pub const SCAN_SHARE: f64 = 0.05;
/// Most credit (and the credit at attach): enough for two scans of a million goroutines.
pub const CREDIT_CAP_NS: i64 = 3_000_000_000;

pub struct ScanBudget {
    credit_ns: i64,
    refilled_at_ns: i64,
}

impl ScanBudget {
    pub fn new(now_ns: i64) -> ScanBudget {
        ScanBudget {
            credit_ns: CREDIT_CAP_NS,
            refilled_at_ns: now_ns,
        }
    }

    fn refill(&mut self, now_ns: i64) {
        let elapsed = (now_ns - self.refilled_at_ns).max(0);
        self.credit_ns = (self.credit_ns + (elapsed as f64 * SCAN_SHARE) as i64).min(CREDIT_CAP_NS);
        self.refilled_at_ns = now_ns;
    }

    /// A scan step took `ns`.
    pub fn spend(&mut self, now_ns: i64, ns: i64) {
        self.refill(now_ns);
        self.credit_ns -= ns.max(0);
    }

    /// How long after `now_ns` the next scan may start, given the poll interval: at once
    /// (after `interval_ns`) while there is credit, else when the debt is paid back.
    pub fn wait_before_next_ns(&mut self, now_ns: i64, interval_ns: i64) -> i64 {
        self.refill(now_ns);
        if self.credit_ns >= 0 {
            return interval_ns;
        }
        let payback = (-self.credit_ns) as f64 / SCAN_SHARE;
        interval_ns.max(payback as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn small_scans_run_at_the_poll_interval() {
        let mut b = ScanBudget::new(0);
        let mut t = 0;
        for _ in 0..1000 {
            b.spend(t, S / 100); // 10 ms per 500 ms: 2%
            t += S / 2;
            assert_eq!(b.wait_before_next_ns(t, S / 2), S / 2);
        }
    }

    #[test]
    fn large_scans_run_back_to_back_first_then_at_the_share() {
        let mut b = ScanBudget::new(0);
        let scan = 1_400_000_000; // a million goroutines
        let mut t = 0;
        let mut starts = Vec::new();
        for _ in 0..12 {
            starts.push(t);
            t += scan;
            b.spend(t, scan);
            t += b.wait_before_next_ns(t, S);
        }
        // Two scans within the first 4 s...
        assert!(starts[1] <= 3 * S, "{starts:?}");
        // ... and on average no more than the share over ten minutes.
        let busy = scan as f64 * starts.len() as f64;
        assert!(busy / (t as f64) <= SCAN_SHARE * 1.3, "{}", busy / t as f64);
    }
}
