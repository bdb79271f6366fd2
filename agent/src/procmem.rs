//! Reads another process's memory without stopping it.
//!
//! `process_vm_readv` reads many scattered ranges in one syscall (up to `IOV_MAX` of them), which
//! is what walking a million goroutines needs; everything read is a racy snapshot of memory the
//! target keeps changing, so callers validate what they get.

use std::io;

/// Largest number of iovecs one `process_vm_readv` call takes (`IOV_MAX` on Linux).
const MAX_IOVECS: usize = 1024;
/// [`ProcessMemory::read_many`] reads two ranges as one when at most this many bytes lie
/// between them...
const MERGE_GAP: u64 = 512;
/// ...and the merged range stays this short.
const MAX_MERGED: u64 = 64 * 1024;

thread_local! {
    /// [`ProcessMemory::read_many`]'s span buffer, kept between calls.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest scratch buffer kept between calls.
const MAX_SCRATCH: usize = 4 << 20;

/// This thread's scratch buffer while in use, given back when dropped.
struct Scratch(Vec<u8>);

impl Scratch {
    /// The buffer, at least `len` bytes long (not zeroed: whatever the last call left).
    fn take(len: usize) -> Scratch {
        let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        if buf.len() < len {
            buf.resize(len, 0);
        }
        Scratch(buf)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.len() <= MAX_SCRATCH {
            let buf = std::mem::take(&mut self.0);
            SCRATCH.with(|s| *s.borrow_mut() = buf);
        }
    }
}

/// Ranges of [`ProcessMemory::read_many`] read as one: `members` indexes its address order.
struct Span {
    start: u64,
    end: u64,
    members: std::ops::Range<usize>,
}

/// Merges the ranges `[addrs[i], addrs[i] + len)`, taken in address `order`, into spans.
fn merge_ranges(addrs: &[u64], order: &[usize], len: usize) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let start = addrs[i];
        // A range past the end of the address space is read (and fails) on its own.
        let end = start.checked_add(len as u64);
        if let (Some(end), Some(last)) = (end, spans.last_mut()) {
            if start <= last.end.saturating_add(MERGE_GAP)
                && end.max(last.end) - last.start <= MAX_MERGED
            {
                last.end = last.end.max(end);
                last.members.end = k + 1;
                continue;
            }
        }
        spans.push(Span {
            start,
            end: end
                .unwrap_or(u64::MAX)
                .max(start.saturating_add(len as u64)),
            members: k..k + 1,
        });
    }
    spans
}

pub struct ProcessMemory {
    pid: libc::pid_t,
}

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("the target process has exited")]
    Gone,
    /// Callers that report it before attaching explain why (crate::denied).
    #[error("not permitted to read the target's memory")]
    Permission,
    #[error("cannot read target memory at {addr:#x} ({len} bytes): {source}")]
    Fault {
        addr: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
}

impl ProcessMemory {
    pub fn new(pid: u32) -> ProcessMemory {
        ProcessMemory {
            pid: pid as libc::pid_t,
        }
    }

    /// Fills `buf` from `addr`; a partial read is an error.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` points into `buf`, which outlives the call; the kernel checks `remote`.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(self.classify(addr, buf.len(), io::Error::last_os_error()));
        }
        if n as usize != buf.len() {
            return Err(MemError::Fault {
                addr,
                len: buf.len(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "short read"),
            });
        }
        Ok(())
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemError> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    /// Reads `len` bytes at each address into consecutive slots of the returned buffer.
    /// A range that cannot be read leaves its slot zeroed and is reported `false` in the mask,
    /// so one freed or unmapped object does not lose the whole batch.
    ///
    /// Ranges close to each other are read as one: the kernel pins every page of every range
    /// it copies, so nine `g`s on one page cost nine page look-ups read apart and one read
    /// together (the bytes between them are copied and ignored).
    pub fn read_many(&self, addrs: &[u64], len: usize) -> Result<(Vec<u8>, Vec<bool>), MemError> {
        let total = addrs.len().checked_mul(len).ok_or(MemError::Fault {
            addr: 0,
            len: usize::MAX,
            source: io::Error::new(io::ErrorKind::InvalidInput, "batch too large"),
        })?;
        let mut out = vec![0u8; total];
        let mut ok = vec![false; addrs.len()];
        if len == 0 {
            ok.fill(true);
            return Ok((out, ok));
        }
        let mut order: Vec<usize> = (0..addrs.len()).collect();
        order.sort_unstable_by_key(|&i| addrs[i]);
        let spans = merge_ranges(addrs, &order, len);
        // All spans in one buffer, this thread's scratch buffer: no allocation and no zeroing
        // per call (read_scattered zeroes what it cannot read).
        let span_len = |s: &Span| (s.end - s.start) as usize;
        let total_spans: usize = spans.iter().map(span_len).sum();
        let mut flat = Scratch::take(total_spans);
        let mut reqs: Vec<(u64, &mut [u8])> = Vec::with_capacity(spans.len());
        let mut rest = &mut flat.0[..total_spans];
        for s in &spans {
            let (buf, after) = std::mem::take(&mut rest).split_at_mut(span_len(s));
            reqs.push((s.start, buf));
            rest = after;
        }
        let span_ok = self.read_scattered(&mut reqs)?;
        drop(reqs);
        let mut bufs = Vec::with_capacity(spans.len());
        let mut rest = &flat.0[..total_spans];
        for s in &spans {
            let (buf, after) = rest.split_at(span_len(s));
            bufs.push(buf);
            rest = after;
        }
        for ((span, buf), span_ok) in spans.iter().zip(bufs).zip(span_ok) {
            let members = &order[span.members.clone()];
            for &i in members {
                let slot = &mut out[i * len..(i + 1) * len];
                let off = (addrs[i] - span.start) as usize;
                let copy = buf.get(off..off.saturating_add(len));
                if let (true, Some(copy)) = (span_ok, copy) {
                    slot.copy_from_slice(copy);
                    ok[i] = true;
                } else if members.len() > 1 {
                    // One of them is unreadable (or the memory between them): each decides
                    // for itself.
                    match self.read(addrs[i], slot) {
                        Ok(()) => ok[i] = true,
                        Err(MemError::Gone) => return Err(MemError::Gone),
                        Err(MemError::Permission) => return Err(MemError::Permission),
                        Err(_) => slot.fill(0),
                    }
                }
            }
        }
        Ok((out, ok))
    }

    /// Fills each buffer from its address, up to `IOV_MAX` ranges per syscall. A range that
    /// cannot be read is zeroed and `false` in the returned mask; only the target's exit or a
    /// permission error fails the whole call.
    pub fn read_scattered(&self, reqs: &mut [(u64, &mut [u8])]) -> Result<Vec<bool>, MemError> {
        let mut ok = vec![false; reqs.len()];
        let mut start = 0;
        let total = reqs.len();
        while start < total {
            let batch = &mut reqs[start..total.min(start + MAX_IOVECS)];
            let locals: Vec<libc::iovec> = batch
                .iter_mut()
                .map(|(_, buf)| libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                })
                .collect();
            let remotes: Vec<libc::iovec> = batch
                .iter()
                .map(|(addr, buf)| libc::iovec {
                    iov_base: *addr as *mut libc::c_void,
                    iov_len: buf.len(),
                })
                .collect();
            // SAFETY: every local iovec points into a buffer of `reqs`, alive for the call.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid,
                    locals.as_ptr(),
                    locals.len() as libc::c_ulong,
                    remotes.as_ptr(),
                    remotes.len() as libc::c_ulong,
                    0,
                )
            };
            let mut left = if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ESRCH) => return Err(MemError::Gone),
                    Some(libc::EPERM) => return Err(MemError::Permission),
                    _ => 0,
                }
            } else {
                n as usize
            };
            // Whole ranges that arrived, in order.
            let mut done = 0;
            for (_, buf) in batch.iter() {
                if buf.len() > left {
                    break;
                }
                left -= buf.len();
                done += 1;
            }
            ok[start..start + done].fill(true);
            if done == batch.len() {
                start += done;
                continue;
            }
            // process_vm_readv stops at the first range that faults: that one alone decides
            // (one syscall), then the batch resumes after it.
            let (addr, buf) = &mut batch[done];
            match self.read(*addr, buf) {
                Ok(()) => ok[start + done] = true,
                Err(MemError::Gone) => return Err(MemError::Gone),
                Err(MemError::Permission) => return Err(MemError::Permission),
                Err(_) => buf.fill(0),
            }
            start += done + 1;
        }
        Ok(ok)
    }

    fn classify(&self, addr: u64, len: usize, err: io::Error) -> MemError {
        match err.raw_os_error() {
            Some(libc::ESRCH) => MemError::Gone,
            Some(libc::EPERM) => MemError::Permission,
            _ => MemError::Fault {
                addr,
                len,
                source: err,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merged reads give each range its own bytes, in the caller's order, and an unreadable
    /// range among readable ones fails alone.
    #[test]
    fn read_many_merges_near_ranges_and_isolates_failures() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let base = data.as_ptr() as u64;
        let mem = ProcessMemory::new(std::process::id());
        let offsets = [4000u64, 0, 16, 24, 9000, 30, 16, 19_990];
        let mut addrs: Vec<u64> = offsets.iter().map(|o| base + o).collect();
        addrs.push(8); // unmapped in every process
        addrs.push(base + 100);
        let len = 10;
        let (buf, ok) = mem.read_many(&addrs, len).unwrap();
        for (i, &addr) in addrs.iter().enumerate() {
            let slot = &buf[i * len..(i + 1) * len];
            if addr == 8 {
                assert!(!ok[i]);
                assert!(slot.iter().all(|&b| b == 0));
            } else {
                assert!(ok[i], "range {i}");
                let off = (addr - base) as usize;
                assert_eq!(slot, &data[off..off + len], "range {i}");
            }
        }
        let (_, ok) = mem.read_many(&[u64::MAX - 4], 16).unwrap();
        assert_eq!(ok, vec![false]);
    }
}
