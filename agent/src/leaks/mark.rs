//! Conservative marking: every aligned word of a scanned range that points into an allocated
//! object (interior pointers included) marks that object, and marked objects of spans that may
//! hold pointers are scanned in turn. A work stack of object references and the heap's mark
//! bits are all it keeps; objects are read from the target in batches (one `process_vm_readv`
//! for many objects) and dropped once scanned.
//!
//! Conservative means a word that merely looks like a pointer (an integer, a dead stack slot)
//! keeps an object alive: the analysis can miss a leak, never invent one.

use crate::procmem::{MemError, ProcessMemory};

use super::heap::{Heap, ObjectRef};

/// Objects read per syscall batch, and the bytes read at most per piece of a large object.
const BATCH_OBJECTS: usize = 512;
const PIECE: u64 = 64 * 1024;

pub struct Marker<'a> {
    mem: &'a ProcessMemory,
    pub heap: Heap,
    work: Vec<ObjectRef>,
    /// Sorted, disjoint byte ranges whose words are not followed: the runtime's own references
    /// from waiting goroutines' sudogs to what they wait on (Go hides them the same way).
    hidden: Vec<(u64, u64)>,
    /// Bytes and objects scanned (for the record of the analysis).
    pub scanned_bytes: u64,
    pub marked_objects: u64,
}

impl<'a> Marker<'a> {
    pub fn new(mem: &'a ProcessMemory, heap: Heap, mut hidden: Vec<(u64, u64)>) -> Marker<'a> {
        hidden.sort_unstable();
        Marker {
            mem,
            heap,
            work: Vec::new(),
            hidden,
            scanned_bytes: 0,
            marked_objects: 0,
        }
    }

    /// Marks what the words of `buf` (read from `addr`) point to.
    fn scan_words(&mut self, addr: u64, buf: &[u8]) {
        self.scanned_bytes += buf.len() as u64;
        // Hidden ranges from the first that ends after `addr`, in order.
        let mut hidden = self.hidden.partition_point(|h| h.1 <= addr);
        let skip = addr.wrapping_neg() & 7; // first aligned word
        for (i, w) in buf
            .get(skip as usize..)
            .unwrap_or(&[])
            .chunks_exact(8)
            .enumerate()
        {
            let at = addr + skip + 8 * i as u64;
            while self.hidden.get(hidden).is_some_and(|h| h.1 <= at) {
                hidden += 1;
            }
            if self.hidden.get(hidden).is_some_and(|h| h.0 <= at) {
                continue;
            }
            let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            if let Some(r) = self.heap.find(word) {
                self.shade(r);
            }
        }
    }

    /// Marks an object and queues it for scanning if it may hold pointers.
    pub fn shade(&mut self, r: ObjectRef) {
        if self.heap.mark(r) {
            self.marked_objects += 1;
            if !self.heap.span(r).noscan {
                self.work.push(r);
            }
        }
    }

    /// Scans a range of target memory that is not a heap object (a stack, data, bss), in
    /// pieces. An unreadable piece is skipped (its memory is gone: nothing to keep alive).
    pub fn scan_range(&mut self, lo: u64, hi: u64) -> Result<(), MemError> {
        let mut at = lo;
        let mut buf = Vec::new();
        while at < hi {
            let n = (hi - at).min(PIECE);
            buf.resize(n as usize, 0);
            match self.mem.read(at, &mut buf) {
                Ok(()) => {
                    let b = std::mem::take(&mut buf);
                    self.scan_words(at, &b);
                    buf = b;
                }
                Err(MemError::Gone) => return Err(MemError::Gone),
                Err(MemError::Permission) => return Err(MemError::Permission),
                Err(MemError::Fault { .. }) => {}
            }
            at += n;
        }
        Ok(())
    }

    /// Scans the words of `[lo, hi)` whose bit is set in `mask` (bit i: the word at
    /// `lo + 8 * i`, as the runtime's pointer masks of globals say). Fails only when the target
    /// has gone.
    pub fn scan_masked(&mut self, lo: u64, hi: u64, mask: &[u8]) -> Result<(), MemError> {
        let len = hi.saturating_sub(lo) as usize;
        let mut buf = vec![0u8; len];
        match self.mem.read(lo, &mut buf) {
            Ok(()) => {}
            Err(MemError::Fault { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.scanned_bytes += len as u64;
        for (i, w) in buf.chunks_exact(8).enumerate() {
            let live = mask.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
            if !live {
                continue;
            }
            let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            if let Some(r) = self.heap.find(word) {
                self.shade(r);
            }
        }
        Ok(())
    }

    /// The GC's roots in spans' specials: a finalizer's function and what its object reaches,
    /// a cleanup's function and argument. The kinds are numbered differently in each release,
    /// so every special is treated alike, conservatively: the words of the record (`bytes` from
    /// its start, which covers the kind-specific part) are scanned and its object is marked
    /// (Go marks only what the object reaches: more is kept alive here, never less).
    pub fn scan_specials(
        &mut self,
        next_off: u64,
        offset_off: u64,
        offset_width: u64,
        bytes: u64,
    ) -> Result<(), MemError> {
        /// More specials on one span than it has bytes: a torn list.
        const MAX_PER_SPAN: usize = 1 << 16;
        let specials = std::mem::take(&mut self.heap.specials);
        let mut buf = vec![0u8; bytes as usize];
        for &(base, first) in &specials {
            let mut at = first;
            let mut n = 0;
            while at != 0 && n < MAX_PER_SPAN {
                match self.mem.read(at, &mut buf) {
                    Ok(()) => {}
                    Err(MemError::Fault { .. }) => break,
                    Err(e) => return Err(e),
                }
                let b = std::mem::take(&mut buf);
                self.scan_words(at, &b);
                let word = |off: u64| {
                    let o = off as usize;
                    b.get(o..o + 8).map_or(0, |w| {
                        u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
                    })
                };
                let offset = match offset_width {
                    2 => word(offset_off) & 0xffff,
                    4 => word(offset_off) & 0xffff_ffff,
                    _ => word(offset_off),
                };
                if let Some(r) = self.heap.find(base + offset) {
                    self.shade(r);
                }
                at = word(next_off);
                buf = b;
                n += 1;
            }
        }
        self.heap.specials = specials;
        Ok(())
    }

    /// Scans queued objects until none is left.
    pub fn drain(&mut self) -> Result<(), MemError> {
        while !self.work.is_empty() {
            // Small objects in batches; a large one on its own, in pieces.
            let mut small: Vec<(u64, u64)> = Vec::new();
            let mut bytes = 0;
            while let Some(r) = self.work.pop() {
                let (addr, size) = self.heap.object(r);
                if size > PIECE {
                    self.scan_range(addr, addr + size)?;
                    continue;
                }
                small.push((addr, size));
                bytes += size;
                if small.len() >= BATCH_OBJECTS || bytes >= 4 * PIECE {
                    break;
                }
            }
            if small.is_empty() {
                continue;
            }
            let mut bufs: Vec<Vec<u8>> = small.iter().map(|o| vec![0u8; o.1 as usize]).collect();
            let mut reqs: Vec<(u64, &mut [u8])> = small
                .iter()
                .zip(bufs.iter_mut())
                .map(|(o, b)| (o.0, b.as_mut_slice()))
                .collect();
            let ok = self.mem.read_scattered(&mut reqs)?;
            for ((o, b), ok) in small.iter().zip(&bufs).zip(ok) {
                if ok {
                    self.scan_words(o.0, b);
                }
            }
        }
        Ok(())
    }

    /// Is the object at `addr` marked, or not a heap object at all (a global, a stack slot:
    /// then it counts as reachable, as in Go's `isMarkedOrNotInHeap`)?
    pub fn is_marked_or_not_in_heap(&self, addr: u64) -> bool {
        match self.heap.find(addr) {
            Some(r) => self.heap.is_marked(r),
            None => true,
        }
    }
}
