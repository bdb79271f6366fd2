//! The target's heap as the runtime's own bookkeeping describes it: every in-use span
//! (`mheap_.allspans`, state `mSpanInUse`) with its objects, which of them are allocated, and a
//! mark bit per object for the analysis. Only the spans' headers and allocation bits are kept
//! (two bits per object), never the heap itself.

use anyhow::{bail, Context, Result};
use gobinary::heaplayout::HeapLayout;

use crate::procmem::ProcessMemory;

/// Go's page size (`_PageSize`, 8 KiB in every release and on every architecture).
pub const PAGE_SIZE: u64 = 8192;
/// `mSpanInUse` (`mSpanDead` 0, `mSpanInUse` 1, `mSpanManual` 2: the same in every release).
const SPAN_IN_USE: u8 = 1;
/// More spans than a 1 TiB heap of single pages has: a larger count means a torn read.
const MAX_SPANS: u64 = 1 << 27;
/// Spans' headers read per syscall batch.
const SPAN_BATCH: usize = 4096;

pub struct Span {
    pub base: u64,
    /// One past the last byte of the span.
    pub limit: u64,
    pub elemsize: u64,
    pub nelems: u64,
    /// The span class says its objects hold no pointers: they are never scanned.
    pub noscan: bool,
    /// Bit i: object i is allocated (below the scan free index, or its alloc bit is set).
    allocated: Vec<u64>,
    /// Bit i: object i was reached by the analysis.
    marked: Vec<u64>,
    /// Bit i: object i is marked and not scanned yet.
    grey: Vec<u64>,
    /// The span is on the marker's work list.
    pub queued: bool,
}

/// Where an address lands in the heap: an allocated object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRef {
    pub span: u32,
    pub index: u32,
}

pub struct Heap {
    /// Sorted by base; spans never overlap.
    spans: Vec<Span>,
    /// (span base, `mspan.specials`) of the spans that have any (finalizers, cleanups,
    /// profiling records).
    pub specials: Vec<(u64, u64)>,
    /// Lowest and highest heap addresses: most words are rejected by one comparison.
    lo: u64,
    hi: u64,
    /// The span of each page, per arena (like the runtime's `heapArena.spans`): a word is
    /// found in two array reads instead of a binary search over every span (a million
    /// goroutines' heap has ~100,000 spans, and the scan looks up every word).
    pages: PageIndex,
}

/// Bytes per arena of the page index (the runtime's `heapArenaBytes` on 64-bit Linux).
const ARENA_SHIFT: u32 = 26;
const PAGES_PER_ARENA: u64 = (1 << ARENA_SHIFT) / PAGE_SIZE;

/// Page → span, for the arenas that have spans: 32 KiB per 64 MiB of heap address space.
#[derive(Default)]
struct PageIndex {
    /// Sorted by arena number (address >> ARENA_SHIFT); each entry per page: span index + 1,
    /// or 0.
    arenas: Vec<(u64, Box<[u32]>)>,
}

impl PageIndex {
    /// `spans` sorted by base and disjoint.
    fn new(spans: &[Span]) -> PageIndex {
        let mut arenas: Vec<(u64, Box<[u32]>)> = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            let Ok(id) = u32::try_from(i + 1) else { break };
            let mut page = s.base & !(PAGE_SIZE - 1);
            while page < s.limit {
                let arena = page >> ARENA_SHIFT;
                if arenas.last().is_none_or(|a| a.0 != arena) {
                    arenas.push((arena, vec![0; PAGES_PER_ARENA as usize].into_boxed_slice()));
                }
                if let Some(a) = arenas.last_mut() {
                    a.1[((page / PAGE_SIZE) % PAGES_PER_ARENA) as usize] = id;
                }
                page += PAGE_SIZE;
            }
        }
        PageIndex { arenas }
    }

    /// The index of the span that holds the page of `addr`, if any.
    #[inline]
    fn span_of(&self, addr: u64) -> Option<usize> {
        let arena = addr >> ARENA_SHIFT;
        let a = match self.arenas.as_slice() {
            [only] if only.0 == arena => only,
            all => &all[all.binary_search_by_key(&arena, |a| a.0).ok()?],
        };
        let id = a.1[((addr / PAGE_SIZE) % PAGES_PER_ARENA) as usize];
        (id as usize).checked_sub(1)
    }
}

fn le(buf: &[u8], off: u64, width: u64) -> u64 {
    let off = off as usize;
    match width {
        1 => buf.get(off).copied().map_or(0, u64::from),
        2 => buf
            .get(off..off + 2)
            .map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]]))),
        _ => buf.get(off..off + 8).map_or(0, |b| {
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }),
    }
}

impl Span {
    pub fn set_grey(&mut self, i: u32) {
        if let Some(w) = self.grey.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }

    /// The lowest and highest grey object, if any.
    pub fn grey_bounds(&self) -> Option<(u32, u32)> {
        let first = self.grey.iter().position(|&w| w != 0)?;
        let last = self.grey.iter().rposition(|&w| w != 0)?;
        let lo = first as u32 * 64 + self.grey[first].trailing_zeros();
        let hi = last as u32 * 64 + 63 - self.grey[last].leading_zeros();
        Some((lo, hi))
    }

    /// Clears and returns the grey objects in `lo..=hi`.
    pub fn take_grey(&mut self, lo: u32, hi: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for w in (lo / 64)..=(hi / 64) {
            let Some(word) = self.grey.get_mut(w as usize) else {
                break;
            };
            let mut bits = *word;
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let i = w * 64 + b;
                if i >= lo && i <= hi {
                    out.push(i);
                    *word &= !(1 << b);
                }
            }
        }
        out
    }
}

fn bit(bits: &[u64], i: u64) -> bool {
    bits.get((i / 64) as usize)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

impl Heap {
    /// Reads every in-use span of the heap at `mheap` (the address of `runtime.mheap_`).
    pub fn read(mem: &ProcessMemory, l: &HeapLayout, mheap: u64) -> Result<Heap> {
        let header = mem
            .read_vec(mheap + l.mheap_allspans, 16)
            .context("cannot read mheap_.allspans")?;
        let (ptr, len) = (le(&header, 0, 8), le(&header, 8, 8));
        if len > MAX_SPANS || (len > 0 && ptr == 0) {
            bail!("implausible mheap_.allspans (len {len})");
        }
        // The runtime may grow (and free) the array while we read it: read it once, whole.
        let raw = mem
            .read_vec(ptr, len as usize * 8)
            .context("cannot read the array of mheap_.allspans")?;
        let span_addrs: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| le(c, 0, 8))
            .filter(|&a| a != 0)
            .collect();
        let size = l.mspan_read_size as usize;
        let mut spans = Vec::new();
        let mut span_specials = Vec::new();
        for batch in span_addrs.chunks(SPAN_BATCH) {
            let (buf, ok) = mem.read_many(batch, size)?;
            let mut pending = Vec::new();
            for (i, ok) in ok.iter().enumerate() {
                if !ok {
                    continue;
                }
                let s = &buf[i * size..(i + 1) * size];
                if le(s, l.mspan_state, 1) as u8 != SPAN_IN_USE {
                    continue;
                }
                let base = le(s, l.mspan_start_addr, 8);
                let npages = le(s, l.mspan_npages, 8);
                let elemsize = le(s, l.mspan_elemsize, 8);
                let nelems = le(s, l.mspan_nelems, l.mspan_index_width);
                let free = match l.mspan_free_index_for_scan {
                    Some(o) => le(s, o, l.mspan_index_width),
                    None => le(s, l.mspan_freeindex, l.mspan_index_width),
                };
                let bytes = npages.saturating_mul(PAGE_SIZE);
                // A span read mid-update (or garbage): skip it rather than trust it.
                if base == 0
                    || elemsize == 0
                    || nelems == 0
                    || npages == 0
                    || nelems.saturating_mul(elemsize) > bytes
                    || base.checked_add(bytes).is_none()
                {
                    continue;
                }
                let alloc_bits = le(s, l.mspan_alloc_bits, 8);
                let specials = le(s, l.mspan_specials, 8);
                if specials != 0 {
                    span_specials.push((base, specials));
                }
                pending.push((
                    base,
                    bytes,
                    elemsize,
                    nelems,
                    free.min(nelems),
                    alloc_bits,
                    { le(s, l.mspan_spanclass, 1) & 1 == 1 },
                ));
            }
            // The allocation bits of the whole batch in one go.
            let mut bufs: Vec<Vec<u8>> = pending
                .iter()
                .map(|p| vec![0u8; p.3.div_ceil(8) as usize])
                .collect();
            let mut reqs: Vec<(u64, &mut [u8])> = pending
                .iter()
                .zip(bufs.iter_mut())
                .map(|(p, b)| (p.5, b.as_mut_slice()))
                .collect();
            let read = mem.read_scattered(&mut reqs)?;
            for ((p, bits), ok) in pending.iter().zip(bufs).zip(read) {
                let &(base, bytes, elemsize, nelems, free, _, noscan) = p;
                let mut allocated = vec![0u64; nelems.div_ceil(64) as usize];
                for i in 0..nelems {
                    // Unreadable alloc bits: every object counts as allocated (more is
                    // reachable, never less).
                    let set = !ok || i < free || bits[(i / 8) as usize] & (1 << (i % 8)) != 0;
                    if set {
                        allocated[(i / 64) as usize] |= 1 << (i % 64);
                    }
                }
                spans.push(Span {
                    base,
                    limit: base + bytes,
                    elemsize,
                    nelems,
                    noscan,
                    marked: vec![0; allocated.len()],
                    grey: vec![0; allocated.len()],
                    queued: false,
                    allocated,
                });
            }
        }
        spans.sort_by_key(|s| s.base);
        // Overlapping spans mean one of them was read torn: drop the later one.
        let mut kept: Vec<Span> = Vec::with_capacity(spans.len());
        for s in spans {
            if kept.last().is_some_and(|k| s.base < k.limit) {
                continue;
            }
            kept.push(s);
        }
        Ok(Heap::new(kept, span_specials))
    }

    /// `spans` sorted by base and disjoint.
    fn new(spans: Vec<Span>, specials: Vec<(u64, u64)>) -> Heap {
        let lo = spans.first().map_or(0, |s| s.base);
        let hi = spans.last().map_or(0, |s| s.limit);
        let pages = PageIndex::new(&spans);
        Heap {
            spans,
            specials,
            lo,
            hi,
            pages,
        }
    }

    /// The allocated object containing `addr` (interior pointers included), if any.
    #[inline]
    pub fn find(&self, addr: u64) -> Option<ObjectRef> {
        if addr < self.lo || addr >= self.hi {
            return None;
        }
        let i = self.pages.span_of(addr)?;
        let s = self.spans.get(i)?;
        if addr < s.base || addr >= s.limit {
            return None;
        }
        let index = (addr - s.base) / s.elemsize;
        if index >= s.nelems || !bit(&s.allocated, index) {
            return None;
        }
        Some(ObjectRef {
            span: i as u32,
            index: index as u32,
        })
    }

    pub fn span(&self, r: ObjectRef) -> &Span {
        &self.spans[r.span as usize]
    }

    pub fn is_marked(&self, r: ObjectRef) -> bool {
        bit(&self.span(r).marked, u64::from(r.index))
    }

    /// Marks the object; false if it was marked already.
    pub fn mark(&mut self, r: ObjectRef) -> bool {
        let s = &mut self.spans[r.span as usize];
        let (w, b) = ((r.index / 64) as usize, r.index % 64);
        let Some(word) = s.marked.get_mut(w) else {
            return false;
        };
        if *word & (1 << b) != 0 {
            return false;
        }
        *word |= 1 << b;
        true
    }

    pub fn span_mut(&mut self, i: u32) -> &mut Span {
        &mut self.spans[i as usize]
    }

    pub fn span_at(&self, i: u32) -> &Span {
        &self.spans[i as usize]
    }

    /// Spans, allocated objects and their bytes (for the record of the analysis).
    pub fn totals(&self) -> (u64, u64, u64) {
        let mut objects = 0;
        let mut bytes = 0;
        for s in &self.spans {
            let n: u64 = s.allocated.iter().map(|w| u64::from(w.count_ones())).sum();
            objects += n;
            bytes += n * s.elemsize;
        }
        (self.spans.len() as u64, objects, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(base: u64, elemsize: u64, nelems: u64, allocated: &[u64]) -> Span {
        let words = nelems.div_ceil(64) as usize;
        let mut bits = vec![0u64; words];
        for &i in allocated {
            bits[(i / 64) as usize] |= 1 << (i % 64);
        }
        Span {
            base,
            limit: base + PAGE_SIZE,
            elemsize,
            nelems,
            noscan: false,
            allocated: bits,
            marked: vec![0; words],
            grey: vec![0; words],
            queued: false,
        }
    }

    #[test]
    fn find_takes_interior_pointers_of_allocated_objects_only() {
        let heap = Heap::new(vec![span(0x10000, 48, 170, &[0, 1, 100])], Vec::new());
        assert_eq!(heap.find(0x10000), Some(ObjectRef { span: 0, index: 0 }));
        assert_eq!(
            heap.find(0x10000 + 48 + 47),
            Some(ObjectRef { span: 0, index: 1 })
        );
        assert_eq!(heap.find(0x10000 + 2 * 48), None, "a free slot");
        assert_eq!(heap.find(0x10000 + 170 * 48), None, "past the last object");
        assert_eq!(heap.find(0xffff), None);
        assert_eq!(heap.find(0x10000 + PAGE_SIZE), None);
    }

    #[test]
    fn find_looks_pages_up_across_arenas() {
        let arena = 1u64 << ARENA_SHIFT;
        // Spans in two arenas far apart, one of them two pages long and not page-aligned at
        // its end; a gap between them.
        let a = 0xc000_000000u64;
        let b = a + 5 * arena + 3 * PAGE_SIZE;
        let mut two_pages = span(a + PAGE_SIZE, 1024, 12, &[11]);
        two_pages.limit = two_pages.base + 12 * 1024;
        let heap = Heap::new(
            vec![span(a, 8192, 1, &[0]), two_pages, span(b, 16, 512, &[511])],
            Vec::new(),
        );
        assert_eq!(heap.find(a + 100), Some(ObjectRef { span: 0, index: 0 }));
        assert_eq!(
            heap.find(a + PAGE_SIZE + 11 * 1024 + 5),
            Some(ObjectRef { span: 1, index: 11 })
        );
        assert_eq!(
            heap.find(a + PAGE_SIZE + 12 * 1024),
            None,
            "past the span's limit"
        );
        assert_eq!(heap.find(a + 3 * PAGE_SIZE), None, "a page of no span");
        assert_eq!(heap.find(a + 2 * arena), None, "an arena of no span");
        assert_eq!(
            heap.find(b + 511 * 16),
            Some(ObjectRef {
                span: 2,
                index: 511
            })
        );
    }

    #[test]
    fn grey_objects_are_taken_once_within_bounds() {
        let mut s = span(0, 16, 200, &[]);
        assert_eq!(s.grey_bounds(), None);
        for i in [3, 64, 130, 199] {
            s.set_grey(i);
        }
        assert_eq!(s.grey_bounds(), Some((3, 199)));
        assert_eq!(s.take_grey(0, 100), vec![3, 64]);
        assert_eq!(s.grey_bounds(), Some((130, 199)));
        assert_eq!(s.take_grey(0, 199), vec![130, 199]);
        assert_eq!(s.take_grey(0, 199), Vec::<u32>::new());
    }

    #[test]
    fn marking_is_once() {
        let mut heap = Heap::new(vec![span(0x10000, 48, 170, &[5])], Vec::new());
        let r = heap.find(0x10000 + 5 * 48 + 8).expect("object 5");
        assert!(!heap.is_marked(r));
        assert!(heap.mark(r));
        assert!(!heap.mark(r));
        assert!(heap.is_marked(r));
    }
}
