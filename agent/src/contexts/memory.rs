//! Target memory for context diagnosis, with a read budget: a corrupt or hostile process cannot
//! make the diagnosis of one goroutine read without bound.

use std::cell::Cell;

use gobinary::rtype::Memory;

use crate::procmem::ProcessMemory;

/// Bytes the diagnosis of one goroutine may read (its stack was read by the unwinder already;
/// this covers contexts, type metadata, sudogs and channels: about 1 KiB in practice).
pub const GOROUTINE_READ_BUDGET: u64 = 256 * 1024;

pub struct BudgetedMemory<'a> {
    mem: &'a ProcessMemory,
    left: Cell<u64>,
}

impl<'a> BudgetedMemory<'a> {
    pub fn new(mem: &'a ProcessMemory, budget: u64) -> Self {
        BudgetedMemory {
            mem,
            left: Cell::new(budget),
        }
    }

    /// Gives the budget back (before each goroutine).
    pub fn refill(&self, budget: u64) {
        self.left.set(budget);
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
        self.mem.read_vec(addr, len).ok()
    }
}
