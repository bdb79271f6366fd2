//! Target memory for context diagnosis, with a read budget: a corrupt or hostile process cannot
//! make the diagnosis of one goroutine read without bound. A dump can prefetch the reads it
//! knows many goroutines will make (their sudogs and channels), a batch at a time.

use std::cell::{Cell, RefCell};

use bytes::Bytes;
use gobinary::rtype::Memory;

use crate::fxhash::FxHashMap;
use crate::procmem::ProcessMemory;

/// Bytes the diagnosis of one goroutine may read (its stack was read by the unwinder already;
/// this covers contexts, type metadata, sudogs and channels: about 1 KiB in practice).
pub const GOROUTINE_READ_BUDGET: u64 = 256 * 1024;

pub struct BudgetedMemory<'a> {
    mem: &'a ProcessMemory,
    left: Cell<u64>,
    /// Reads done ahead for a batch of goroutines.
    prefetched: RefCell<Prefetched>,
}

/// Reads done ahead, by (address, length).
pub type Prefetched = FxHashMap<(u64, usize), Bytes>;

impl<'a> BudgetedMemory<'a> {
    pub fn new(mem: &'a ProcessMemory, budget: u64) -> Self {
        BudgetedMemory {
            mem,
            left: Cell::new(budget),
            prefetched: RefCell::new(FxHashMap::default()),
        }
    }

    /// Gives the budget back (before each goroutine).
    pub fn refill(&self, budget: u64) {
        self.left.set(budget);
    }

    /// Reads `len` bytes at each address in a few syscalls and serves later reads of exactly
    /// those ranges from the copy; returns what was read. Unreadable ranges are left to the
    /// later read (which fails as it would have).
    pub fn prefetch(&self, addrs: &[u64], len: usize) -> Vec<(u64, Bytes)> {
        let Ok((buf, ok)) = self.mem.read_many(addrs, len) else {
            return Vec::new();
        };
        // Each range a slice of the one buffer read: no allocation per range.
        let buf = Bytes::from(buf);
        let mut out = Vec::with_capacity(addrs.len());
        let mut map = self.prefetched.borrow_mut();
        for (i, &addr) in addrs.iter().enumerate() {
            if ok[i] {
                let bytes = buf.slice(i * len..(i + 1) * len);
                map.insert((addr, len), bytes.clone());
                out.push((addr, bytes));
            }
        }
        out
    }

    /// Serves later reads of `bytes.len()` bytes at `addr` from `bytes` (read elsewhere, in
    /// a batch).
    pub fn insert_prefetched(&self, addr: u64, bytes: Vec<u8>) {
        self.prefetched
            .borrow_mut()
            .insert((addr, bytes.len()), bytes.into());
    }

    /// Makes room for `n` more prefetched ranges.
    pub fn reserve_prefetched(&self, n: usize) {
        self.prefetched.borrow_mut().reserve(n);
    }

    /// What was prefetched, handed over (to the [`BudgetedMemory`] of another thread).
    pub fn take_prefetched(&self) -> Prefetched {
        std::mem::take(&mut *self.prefetched.borrow_mut())
    }

    /// Serves later reads from `prefetched` (taken from another [`BudgetedMemory`]) instead
    /// of what was prefetched here.
    pub fn set_prefetched(&self, prefetched: Prefetched) {
        *self.prefetched.borrow_mut() = prefetched;
    }

    /// Forgets what was prefetched: the next reads go to the target again.
    pub fn clear_prefetched(&self) {
        self.prefetched.borrow_mut().clear();
    }
}

impl Memory for BudgetedMemory<'_> {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let want = len as u64;
        let left = self.left.get();
        if want > left {
            self.left.set(0);
            return None;
        }
        self.left.set(left - want);
        if let Some(bytes) = self.prefetched.borrow().get(&(addr, len)) {
            return Some(bytes.to_vec());
        }
        self.mem.read_vec(addr, len).ok()
    }
}
