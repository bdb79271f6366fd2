//! The goroutine list read a chunk at a time: a dump of a million goroutines holds the list of
//! `g` addresses (8 bytes each) and one chunk of decoded `g`s, never all of them.
//!
//! Like every read of a running process this is a racy snapshot, and more spread out in time
//! than one read of all `g`s: the addresses are those of the moment the dump starts, each `g`
//! is as it is when its chunk is read (one that exited since is skipped as dead).

use crate::goroutines::{GoroutineReader, RawG, ReadError};

/// Goroutines per chunk: one `process_vm_readv` call's worth of ranges (`IOV_MAX`).
pub const CHUNK: usize = 1024;

/// A chunk's goroutines, each with the extra word when asked for and read.
pub type Chunk = Vec<(RawG, Option<u64>)>;

pub struct ChunkedSnapshot<'r, 'a> {
    reader: &'r GoroutineReader<'a>,
    addrs: Vec<u64>,
    next: usize,
    /// Offset of a further word of each `g` to read along (see [`Self::next_chunk`]).
    extra_word: Option<u64>,
}

impl<'r, 'a> ChunkedSnapshot<'r, 'a> {
    /// Reads the list of `g` addresses (`allgs`); the `g`s themselves come with each chunk.
    /// `extra_word`: the offset of a `g` field RawG does not keep, read in the same pass.
    pub fn start(
        reader: &'r GoroutineReader<'a>,
        extra_word: Option<u64>,
    ) -> Result<Self, ReadError> {
        Ok(ChunkedSnapshot {
            reader,
            addrs: reader.g_addresses()?,
            next: 0,
            extra_word,
        })
    }

    /// The next chunk's live goroutines (dead and implausible ones skipped, so it may be
    /// empty), in `allgs` order, each with the extra word if asked for and read; `None` at the
    /// end.
    pub fn next_chunk(&mut self) -> Option<Result<Chunk, ReadError>> {
        if self.next >= self.addrs.len() {
            return None;
        }
        let end = self.addrs.len().min(self.next + CHUNK);
        let chunk = &self.addrs[self.next..end];
        self.next = end;
        Some(match self.extra_word {
            Some(off) => self.reader.read_gs_with_word(chunk, off),
            None => self
                .reader
                .read_gs(chunk)
                .map(|gs| gs.into_iter().map(|g| (g, None)).collect()),
        })
    }
}
