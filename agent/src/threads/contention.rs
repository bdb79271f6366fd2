//! The most contended futex words: long waits that ended plus those in progress, per word.

use std::collections::HashMap;

use super::ContendedFutex;

#[derive(Default)]
pub struct Tally {
    by_addr: HashMap<u64, ContendedFutex>,
}

impl Tally {
    fn entry(&mut self, addr: u64) -> &mut ContendedFutex {
        self.by_addr.entry(addr).or_insert(ContendedFutex {
            futex_addr: addr,
            waiters: 0,
            blocked_now: 0,
            total_wait_ns: 0,
            max_wait_ns: 0,
        })
    }

    /// `waits` ended waits on `addr` that lasted `total_ns` in all, the longest `max_ns`.
    pub fn ended(&mut self, addr: u64, waits: u64, total_ns: u64, max_ns: u64) {
        let e = self.entry(addr);
        e.waiters += waits;
        e.total_wait_ns = e.total_wait_ns.saturating_add(total_ns);
        e.max_wait_ns = e.max_wait_ns.max(max_ns);
    }

    /// A wait on `addr` in progress for `dur_ns` so far.
    pub fn waiting(&mut self, addr: u64, dur_ns: u64) {
        let e = self.entry(addr);
        e.waiters += 1;
        e.blocked_now += 1;
        e.total_wait_ns = e.total_wait_ns.saturating_add(dur_ns);
        e.max_wait_ns = e.max_wait_ns.max(dur_ns);
    }

    /// The `n` words with the most total wait time.
    pub fn top(self, n: usize) -> Vec<ContendedFutex> {
        let mut all: Vec<ContendedFutex> = self.by_addr.into_values().collect();
        all.sort_by(|a, b| {
            b.total_wait_ns
                .cmp(&a.total_wait_ns)
                .then(a.futex_addr.cmp(&b.futex_addr))
        });
        all.truncate(n);
        all
    }
}
