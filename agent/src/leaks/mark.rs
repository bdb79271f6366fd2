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

/// Spans and bytes read per syscall batch, and the bytes read at most per piece of a large
/// object or range.
const BATCH_SPANS: usize = 1024;
const BATCH_BYTES: u64 = 4 << 20;
const PIECE: u64 = 64 * 1024;
/// Spans up to this size are read whole.
const WHOLE_SPAN: u64 = 128 * 1024;

pub struct Marker<'a> {
    mem: &'a ProcessMemory,
    pub heap: Heap,
    /// Spans with grey (marked, not yet scanned) objects.
    work: Vec<u32>,
    /// Sorted, disjoint byte ranges whose words are not followed: the runtime's own references
    /// from waiting goroutines' sudogs to what they wait on (Go hides them the same way).
    hidden: Vec<(u64, u64)>,
    /// Addresses of the goroutines' `g` objects (sorted) and the ranges of a `g` never
    /// followed (relative to the `g`).
    gs: Vec<u64>,
    g_words: Vec<(u64, u64)>,
    /// Bytes and objects scanned (for the record of the analysis).
    pub scanned_bytes: u64,
    pub marked_objects: u64,
}

impl<'a> Marker<'a> {
    /// `hidden`: byte ranges never followed; `gs` (sorted) and `g_words` (byte ranges relative
    /// to a `g`): words of every `g` object never followed.
    pub fn new(
        mem: &'a ProcessMemory,
        heap: Heap,
        mut hidden: Vec<(u64, u64)>,
        gs: Vec<u64>,
        g_words: Vec<(u64, u64)>,
    ) -> Marker<'a> {
        hidden.sort_unstable();
        Marker {
            mem,
            heap,
            work: Vec::new(),
            hidden,
            gs,
            g_words,
            scanned_bytes: 0,
            marked_objects: 0,
        }
    }

    /// Marks the object one word known to hold a live pointer points to (a stack slot the
    /// function's stack map says is live).
    pub fn mark_word(&mut self, word: u64) {
        self.scanned_bytes += 8;
        if let Some(r) = self.heap.find(word) {
            self.shade(r);
        }
    }

    /// Marks what the words of `buf` (read from `addr`) point to.
    pub fn scan_words(&mut self, addr: u64, buf: &[u8]) {
        self.scanned_bytes += buf.len() as u64;
        // Hidden ranges from the first that ends after `addr`, in order.
        let mut hidden = self.hidden.partition_point(|h| h.1 <= addr);
        let is_g = self.gs.binary_search(&addr).is_ok();
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
            if is_g
                && self
                    .g_words
                    .iter()
                    .any(|&(lo, hi)| (lo..hi).contains(&(at - addr)))
            {
                continue;
            }
            let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            if let Some(r) = self.heap.find(word) {
                self.shade(r);
            }
        }
    }

    /// Marks an object and queues it (its span) for scanning if it may hold pointers.
    pub fn shade(&mut self, r: ObjectRef) {
        if self.heap.mark(r) {
            self.marked_objects += 1;
            let span = self.heap.span_mut(r.span);
            if !span.noscan {
                span.set_grey(r.index);
                if !span.queued {
                    span.queued = true;
                    self.work.push(r.span);
                }
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
    /// so they are told apart by what they hold: the words of every record (`bytes` from its
    /// start, which covers the kind-specific part) are scanned, and its object is marked when
    /// a word after the `header` bytes points into the heap or the executable's image (a
    /// finalizer's or cleanup's function: Go marks what that object reaches; marking the object
    /// itself keeps more alive, never less). A profiling record only points to the runtime's
    /// off-heap buckets: its (sampled) object is not kept alive.
    pub fn scan_specials(
        &mut self,
        next_off: u64,
        offset_off: u64,
        offset_width: u64,
        header: u64,
        bytes: u64,
        image: (u64, u64),
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
                let holds_code_or_heap = (header..bytes).step_by(8).any(|o| {
                    let w = word(o);
                    (image.0..image.1).contains(&w) || self.heap.find(w).is_some()
                });
                if holds_code_or_heap {
                    if let Some(r) = self.heap.find(base + offset) {
                        self.shade(r);
                    }
                }
                at = word(next_off);
                buf = b;
                n += 1;
            }
        }
        self.heap.specials = specials;
        Ok(())
    }

    /// [`Self::scan_range`] for many ranges (stacks), small ones read many per syscall.
    pub fn scan_ranges(&mut self, ranges: &[(u64, u64)]) -> Result<(), MemError> {
        type Ranges = Vec<(u64, u64)>;
        let (small, large): (Ranges, Ranges) = ranges
            .iter()
            .copied()
            .filter(|r| r.0 < r.1)
            .partition(|r| r.1 - r.0 <= PIECE);
        for (lo, hi) in large {
            self.scan_range(lo, hi)?;
        }
        let mut start = 0;
        while start < small.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < small.len() && end - start < BATCH_SPANS && bytes < BATCH_BYTES {
                bytes += small[end].1 - small[end].0;
                end += 1;
            }
            let batch = &small[start..end];
            let mut bufs: Vec<Vec<u8>> = batch
                .iter()
                .map(|r| vec![0u8; (r.1 - r.0) as usize])
                .collect();
            let mut reqs: Vec<(u64, &mut [u8])> = batch
                .iter()
                .zip(bufs.iter_mut())
                .map(|(r, b)| (r.0, b.as_mut_slice()))
                .collect();
            let ok = self.mem.read_scattered(&mut reqs)?;
            for ((r, b), ok) in batch.iter().zip(&bufs).zip(ok) {
                if ok {
                    self.scan_words(r.0, b);
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Scans grey objects until none is left. Work is by span: the stretch of a span from its
    /// first to its last grey object is read once (many spans per `process_vm_readv`), and
    /// objects it greys in that stretch (a linked list's next node) are scanned from the same
    /// copy. Objects larger than a piece are read on their own, in pieces.
    pub fn drain(&mut self) -> Result<(), MemError> {
        while !self.work.is_empty() {
            // (span, first grey, last grey, address, length)
            let mut batch: Vec<(u32, u32, u32, u64, u64)> = Vec::new();
            let mut bytes = 0;
            while let Some(si) = self.work.pop() {
                let span = self.heap.span_mut(si);
                span.queued = false;
                let Some((lo, hi)) = span.grey_bounds() else {
                    continue;
                };
                let (base, es) = (span.base, span.elemsize);
                if es > PIECE {
                    for i in span.take_grey(lo, hi) {
                        let addr = base + u64::from(i) * es;
                        self.scan_range(addr, addr + es)?;
                    }
                    continue;
                }
                // A small span is read whole: what its grey objects grey in it (a linked list's
                // next node) is then scanned from the same copy.
                let (lo, hi) = if span.nelems * es <= WHOLE_SPAN {
                    (0, (span.nelems - 1) as u32)
                } else {
                    (lo, hi)
                };
                let addr = base + u64::from(lo) * es;
                let len = u64::from(hi - lo + 1) * es;
                batch.push((si, lo, hi, addr, len));
                bytes += len;
                if batch.len() >= BATCH_SPANS || bytes >= BATCH_BYTES {
                    break;
                }
            }
            if batch.is_empty() {
                continue;
            }
            let mut bufs: Vec<Vec<u8>> = batch.iter().map(|b| vec![0u8; b.4 as usize]).collect();
            let mut reqs: Vec<(u64, &mut [u8])> = batch
                .iter()
                .zip(bufs.iter_mut())
                .map(|(b, buf)| (b.3, buf.as_mut_slice()))
                .collect();
            let ok = self.mem.read_scattered(&mut reqs)?;
            for (&(si, lo, hi, addr, _), (buf, ok)) in batch.iter().zip(bufs.iter().zip(ok)) {
                let es = self.heap.span_at(si).elemsize;
                loop {
                    let grey = self.heap.span_mut(si).take_grey(lo, hi);
                    if grey.is_empty() {
                        break;
                    }
                    if !ok {
                        continue; // unreadable: nothing to keep alive
                    }
                    for i in grey {
                        let from = (u64::from(i - lo) * es) as usize;
                        self.scan_words(addr + from as u64, &buf[from..from + es as usize]);
                    }
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
