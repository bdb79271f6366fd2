//! Reads the runtime's list of all goroutines (`runtime.allgs`) from the target's memory.
//!
//! The target keeps running while we read, so this is a racy snapshot: each `g` is read in one
//! piece and sanity-checked, and callers that act on a goroutine re-read it first.

use gobinary::layout::RuntimeLayout;

use crate::procmem::{MemError, ProcessMemory};

pub const STATUS_WAITING: u32 = 4;
const STATUS_SYSCALL: u32 = 3;
const STATUS_RUNNING: u32 = 2;
const STATUS_DEAD: u32 = 6;
/// Go 1.26+ `_Gdeadextra`: a dead g kept for cgo callbacks. Never used as a status before 1.26.
const STATUS_DEAD_EXTRA: u32 = 11;
/// Go 1.26+ `_Gleaked`: a waiting goroutine the GC proved unreachable.
pub const STATUS_LEAKED: u32 = 10;
const STATUS_SCAN_BIT: u32 = 0x1000;

/// Larger than any release's `runtime.g`: an offset beyond it is not a field.
const MAX_G_BYTES: usize = 4096;
/// More goroutines than any real process has: a larger `allglen` means we read garbage.
const MAX_GOROUTINES: u64 = 50_000_000;

/// One goroutine's header fields, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawG {
    /// Address of the `runtime.g`: stable for the goroutine's life (g structs are reused only
    /// after the goroutine exits, with a new goid).
    pub addr: u64,
    pub goid: u64,
    /// `atomicstatus` with the GC's `_Gscan` bit removed.
    pub status: u32,
    pub wait_reason: u8,
    /// Target `nanotime` the GC first saw this goroutine blocked, 0 if not yet.
    pub waitsince: i64,
    pub tracking_seq: u8,
    pub stack_lo: u64,
    pub stack_hi: u64,
    pub sched_sp: u64,
    pub sched_pc: u64,
    pub sched_bp: u64,
    pub syscallsp: u64,
    pub syscallpc: u64,
    pub syscallbp: Option<u64>,
    pub m: u64,
    pub gopc: u64,
    pub startpc: u64,
    pub parent_goid: Option<u64>,
}

impl RawG {
    pub fn is_waiting(&self) -> bool {
        self.status == STATUS_WAITING || self.status == STATUS_LEAKED
    }

    pub fn is_running(&self) -> bool {
        self.status == STATUS_RUNNING
    }

    pub fn is_syscall(&self) -> bool {
        self.status == STATUS_SYSCALL
    }

    /// Exited (or kept for cgo callbacks): its stack holds nothing live.
    pub fn is_dead(&self) -> bool {
        self.status == STATUS_DEAD || self.status == STATUS_DEAD_EXTRA
    }

    /// Nothing that locates its stack changed: same goroutine, status and saved registers, and
    /// it has not run in between.
    pub fn same_state_as(&self, other: &RawG) -> bool {
        self.goid == other.goid
            && self.status == other.status
            && self.tracking_seq == other.tracking_seq
            && self.sched_sp == other.sched_sp
            && self.sched_pc == other.sched_pc
            && self.sched_bp == other.sched_bp
            && self.syscallsp == other.syscallsp
            && self.syscallpc == other.syscallpc
    }
}

pub struct GoroutineReader<'a> {
    mem: &'a ProcessMemory,
    layout: &'a RuntimeLayout,
    /// Runtime addresses (load bias applied).
    allgs_addr: u64,
    allglen_addr: u64,
    /// Bytes of each g to read: up to the last field we use.
    window: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Mem(#[from] MemError),
    #[error("the goroutine list looks corrupt ({0}); is the Go version detection right?")]
    Corrupt(String),
}

impl<'a> GoroutineReader<'a> {
    pub fn new(
        mem: &'a ProcessMemory,
        layout: &'a RuntimeLayout,
        allgs_addr: u64,
        allglen_addr: u64,
    ) -> Self {
        let l = layout;
        let last = [
            l.g_stack_hi,
            l.g_m,
            l.g_sched_sp,
            l.g_sched_pc,
            l.g_sched_bp,
            l.g_syscallsp,
            l.g_syscallpc,
            l.g_syscallbp.unwrap_or(0),
            l.g_atomicstatus,
            l.g_goid,
            l.g_waitsince,
            l.g_waitreason,
            l.g_tracking_seq,
            l.g_gopc,
            l.g_startpc,
            l.g_parent_goid.unwrap_or(0),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        GoroutineReader {
            mem,
            layout,
            allgs_addr,
            allglen_addr,
            window: last as usize + 8,
        }
    }

    /// Addresses of every `g` the runtime has ever allocated (dead ones included).
    pub fn g_addresses(&self) -> Result<Vec<u64>, ReadError> {
        // allglen is published after the backing array: read it first (as atomicAllG does).
        let allglen = self.mem.read_u64(self.allglen_addr)?;
        let header = self.mem.read_vec(self.allgs_addr, 24)?;
        let ptr = le_u64(&header, 0);
        let len = le_u64(&header, 8);
        let cap = le_u64(&header, 16);
        if len > cap || cap > MAX_GOROUTINES || allglen > MAX_GOROUTINES {
            return Err(ReadError::Corrupt(format!(
                "allgs len {len} cap {cap} allglen {allglen}"
            )));
        }
        let n = allglen.min(len) as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        if ptr == 0 {
            return Err(ReadError::Corrupt("allgs has a nil array".into()));
        }
        let raw = self.mem.read_vec(ptr, n * 8)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| le_u64(c, 0))
            .filter(|&a| a != 0)
            .collect())
    }

    /// [`Self::read_gs`], with the word at `extra` in each `g` (a field RawG does not keep) read
    /// in the same pass; `None` when the layout puts it beyond any plausible `g`.
    pub fn read_gs_with_word(
        &self,
        addrs: &[u64],
        extra: u64,
    ) -> Result<Vec<(RawG, Option<u64>)>, ReadError> {
        let extra_end = usize::try_from(extra)
            .ok()
            .and_then(|o| o.checked_add(8))
            .filter(|&end| end <= MAX_G_BYTES);
        let window = self.window.max(extra_end.unwrap_or(0));
        let (buf, ok) = self.mem.read_many(addrs, window)?;
        let mut out = Vec::with_capacity(addrs.len());
        for (i, &addr) in addrs.iter().enumerate() {
            if !ok[i] {
                continue;
            }
            let g = &buf[i * window..(i + 1) * window];
            if let Some(raw) = self.decode(addr, g) {
                let word = extra_end.map(|_| le_u64(g, extra as usize));
                out.push((raw, word));
            }
        }
        Ok(out)
    }

    /// Reads the given g addresses; unreadable or implausible ones are skipped.
    pub fn read_gs(&self, addrs: &[u64]) -> Result<Vec<RawG>, ReadError> {
        let (buf, ok) = self.mem.read_many(addrs, self.window)?;
        let mut out = Vec::with_capacity(addrs.len());
        for (i, &addr) in addrs.iter().enumerate() {
            if !ok[i] {
                continue;
            }
            let g = &buf[i * self.window..(i + 1) * self.window];
            if let Some(raw) = self.decode(addr, g) {
                out.push(raw);
            }
        }
        Ok(out)
    }

    /// Re-reads many goroutines in a few syscalls: `None` for one that is unreadable, dead or
    /// implausible now.
    pub fn reread_many(&self, addrs: &[u64]) -> Result<Vec<Option<RawG>>, ReadError> {
        let (buf, ok) = self.mem.read_many(addrs, self.window)?;
        Ok(addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let g = &buf[i * self.window..(i + 1) * self.window];
                ok[i].then(|| self.decode(addr, g)).flatten()
            })
            .collect())
    }

    /// Re-reads one goroutine (to confirm it did not change while we read its stack).
    pub fn reread(&self, addr: u64) -> Option<RawG> {
        let buf = self.mem.read_vec(addr, self.window).ok()?;
        self.decode(addr, &buf)
    }

    fn decode(&self, addr: u64, g: &[u8]) -> Option<RawG> {
        let l = self.layout;
        let status = le_u32(g, l.g_atomicstatus as usize) & !STATUS_SCAN_BIT;
        if status == STATUS_DEAD || status == STATUS_DEAD_EXTRA || status == 0 {
            return None;
        }
        let raw = RawG {
            addr,
            goid: le_u64(g, l.g_goid as usize),
            status,
            wait_reason: *g.get(l.g_waitreason as usize)?,
            waitsince: le_u64(g, l.g_waitsince as usize) as i64,
            tracking_seq: *g.get(l.g_tracking_seq as usize)?,
            stack_lo: le_u64(g, l.g_stack_lo as usize),
            stack_hi: le_u64(g, l.g_stack_hi as usize),
            sched_sp: le_u64(g, l.g_sched_sp as usize),
            sched_pc: le_u64(g, l.g_sched_pc as usize),
            sched_bp: le_u64(g, l.g_sched_bp as usize),
            syscallsp: le_u64(g, l.g_syscallsp as usize),
            syscallpc: le_u64(g, l.g_syscallpc as usize),
            syscallbp: l.g_syscallbp.map(|o| le_u64(g, o as usize)),
            m: le_u64(g, l.g_m as usize),
            gopc: le_u64(g, l.g_gopc as usize),
            startpc: le_u64(g, l.g_startpc as usize),
            parent_goid: l.g_parent_goid.map(|o| le_u64(g, o as usize)),
        };
        // A g whose stack bounds are nonsense is garbage (or being torn down): skip it.
        if raw.goid == 0 || raw.stack_lo >= raw.stack_hi {
            return None;
        }
        Some(raw)
    }
}

/// Little-endian u64 at `off`, 0 if out of range (the window always covers our fields; this
/// only guards against a layout that does not).
fn le_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> RuntimeLayout {
        // Go 1.25's offsets; any plausible layout does for these tests.
        RuntimeLayout {
            g_size: 440,
            g_stack_lo: 0,
            g_stack_hi: 8,
            g_m: 48,
            g_sched_sp: 56,
            g_sched_pc: 64,
            g_sched_bp: 96,
            g_syscallsp: 104,
            g_syscallpc: 112,
            g_syscallbp: Some(120),
            g_atomicstatus: 144,
            g_goid: 152,
            g_waitsince: 168,
            g_waitreason: 176,
            g_tracking_seq: 191,
            g_gopc: 280,
            g_startpc: 296,
            g_parent_goid: Some(272),
            g_lockedm: 208,
            g_labels: 344,
            m_procid: 64,
            m_curg: 184,
        }
    }

    /// A `g` read from the target is untrusted: garbage and short windows must decode to
    /// `None` or a value, never a panic.
    #[test]
    fn decoding_garbage_never_panics() {
        let mem = ProcessMemory::new(std::process::id());
        let layout = layout();
        let reader = GoroutineReader::new(&mem, &layout, 0, 0);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in (0..reader.window + 16).chain(std::iter::repeat_n(reader.window, 3000)) {
            let g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = reader.decode(0x1000, &g);
        }
    }

    #[test]
    fn reading_our_own_unmapped_addresses_fails_cleanly() {
        let mem = ProcessMemory::new(std::process::id());
        let layout = layout();
        // allgs at address 8: unmapped in every process.
        let reader = GoroutineReader::new(&mem, &layout, 8, 16);
        assert!(reader.g_addresses().is_err());
        let (buf, ok) = mem.read_many(&[8, 16], 32).unwrap();
        assert_eq!(buf.len(), 64);
        assert_eq!(ok, vec![false, false]);
    }
}
