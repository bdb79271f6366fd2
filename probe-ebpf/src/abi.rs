//! Rust mirrors of the structs and constants in `bpf/ctxprobe.h` and `bpf/futex.h`.
//!
//! The header is the source of truth; the test at the bottom compares these definitions with the
//! layout a C compiler gives the header (dumped by build.rs into `layout.txt`).

/// Value of the `parks` map (key: address of the `runtime.g`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParkRecord {
    pub goid: u64,
    /// CLOCK_MONOTONIC ns at `runtime.gopark` (the clock of Go's `nanotime`).
    pub park_ns: u64,
    /// CLOCK_MONOTONIC ns at `runtime.ready(gp)` after that park; 0 while still parked (or the wake
    /// probe is not attached).
    pub wake_ns: u64,
    /// gopark's waitReason, in the target's Go-version numbering.
    pub reason: u8,
    /// `g.trackingSeq` at gopark entry; the runtime increments it when the park completes, so a
    /// record describes the current park iff the live `g.trackingSeq == seq.wrapping_add(1)`.
    pub seq: u8,
    pub pad: [u8; 6],
}

/// Ring-buffer event: a watched goroutine was made runnable by `runtime.ready`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WakeEvent {
    /// Address of the `runtime.g`.
    pub g: u64,
    pub goid: u64,
    /// 0 if the park was not seen (park probe detached, or the record was evicted).
    pub park_ns: u64,
    pub wake_ns: u64,
    pub reason: u8,
    pub seq: u8,
    pub pad: [u8; 6],
}

/// Caller PCs kept per cancellation (`CANCEL_PCS`).
pub const CANCEL_PCS: usize = 6;

/// Slots of the `cancels` array (`CANCEL_SLOTS`).
pub const CANCEL_SLOTS: u32 = 16384;
pub const CANCEL_SLOT_BITS: u32 = 14;
pub const CANCEL_HASH_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// The `cancels` slot of the `context.cancelCtx` at `ctx` (the BPF program's hash).
pub fn cancel_slot(ctx: u64) -> u32 {
    ((ctx >> 4).wrapping_mul(CANCEL_HASH_MUL) >> (64 - CANCEL_SLOT_BITS)) as u32
}

/// Element of the `cancels` array: the last first-cancellation seen of a context hashing to
/// that slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CancelRecord {
    /// Address of the `context.cancelCtx`; 0 in an unused slot.
    pub ctx: u64,
    /// CLOCK_MONOTONIC ns at `context.(*cancelCtx).cancel`.
    pub ns: u64,
    /// The cancelling goroutine.
    pub goid: u64,
    /// Return addresses from cancel's caller outwards; 0 past the end of the frame-pointer walk.
    pub pcs: [u64; CANCEL_PCS],
}

// SAFETY: plain integers, no padding (checked by the layout test), every bit pattern valid.
unsafe impl aya::Pod for ParkRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for CancelRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for WakeEvent {}

/// Indices into the per-CPU `counters` array (`enum ctxprobe_counter`).
pub const CTR_PARK_HITS: u32 = 0;
pub const CTR_WAKE_HITS: u32 = 1;
pub const CTR_READ_ERRORS: u32 = 2;
pub const CTR_UPDATE_ERRORS: u32 = 3;
pub const CTR_LOST_EVENTS: u32 = 4;
pub const CTR_WAKE_MATCHED: u32 = 5;
pub const CTR_CANCEL_HITS: u32 = 6;
pub const CTR_CANCEL_RECORDED: u32 = 7;
pub const CTR_MAX: u32 = 8;

/// Value of the futex `waiting` map (key: tid): a futex wait in progress.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FutexWaitRec {
    /// Futex word (for futex_waitv: the first one).
    pub uaddr: u64,
    /// CLOCK_MONOTONIC ns at syscall entry.
    pub start_ns: u64,
    /// futex(2) op as passed, or one of the `FUTEX_OP_SYS_*` pseudo ops.
    pub op: u32,
    pub pad: u32,
}

/// Value of the LRU `last_wake` map (key: futex word address).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FutexWakeRec {
    pub ns: u64,
    pub tid: u32,
    pub pad: u32,
}

/// Ring-buffer event: a futex wait of at least the loader's threshold ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FutexEvent {
    pub uaddr: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Syscall return value (0, or a negative errno such as -ETIMEDOUT).
    pub ret: i64,
    pub tid: u32,
    pub op: u32,
    /// 0 if unknown.
    pub woken_by_tid: u32,
    pub pad: u32,
}

/// Value of the LRU `contention` map (key: futex word address).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FutexContention {
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

// SAFETY: plain integers, no padding (checked by the layout test), every bit pattern valid.
unsafe impl aya::Pod for FutexWaitRec {}
// SAFETY: as above.
unsafe impl aya::Pod for FutexWakeRec {}
// SAFETY: as above.
unsafe impl aya::Pod for FutexEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for FutexContention {}

/// Pseudo ops for the futex2 syscalls (`enum futex_pseudo_op`); FUTEX2_* flags in the low 16 bits.
pub const FUTEX_OP_SYS_WAIT: u32 = 0x10000;
pub const FUTEX_OP_SYS_WAITV: u32 = 0x20000;
pub const FUTEX_OP_SYS_WAKE: u32 = 0x30000;

/// Indices into the per-CPU `futex_counters` array (`enum futex_counter`).
pub const FCTR_CALLS: u32 = 0;
pub const FCTR_WAITS: u32 = 1;
pub const FCTR_WAKES: u32 = 2;
pub const FCTR_EVENTS: u32 = 3;
pub const FCTR_LOST_EVENTS: u32 = 4;
pub const FCTR_UPDATE_ERRORS: u32 = 5;
pub const FCTR_MAX: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    const LAYOUT: &str = include_str!(concat!(env!("OUT_DIR"), "/layout.txt"));

    fn c_layout() -> HashMap<&'static str, usize> {
        LAYOUT
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k, v.parse().expect("layout.txt values are numbers")))
            .collect()
    }

    #[test]
    fn rust_mirrors_match_c_header() {
        let c = c_layout();
        let rust: Vec<(&str, usize)> = vec![
            ("sizeof.park_record", size_of::<ParkRecord>()),
            ("offsetof.park_record.goid", offset_of!(ParkRecord, goid)),
            (
                "offsetof.park_record.park_ns",
                offset_of!(ParkRecord, park_ns),
            ),
            (
                "offsetof.park_record.wake_ns",
                offset_of!(ParkRecord, wake_ns),
            ),
            (
                "offsetof.park_record.reason",
                offset_of!(ParkRecord, reason),
            ),
            ("offsetof.park_record.seq", offset_of!(ParkRecord, seq)),
            ("offsetof.park_record.pad", offset_of!(ParkRecord, pad)),
            ("sizeof.wake_event", size_of::<WakeEvent>()),
            ("offsetof.wake_event.g", offset_of!(WakeEvent, g)),
            ("offsetof.wake_event.goid", offset_of!(WakeEvent, goid)),
            (
                "offsetof.wake_event.park_ns",
                offset_of!(WakeEvent, park_ns),
            ),
            (
                "offsetof.wake_event.wake_ns",
                offset_of!(WakeEvent, wake_ns),
            ),
            ("offsetof.wake_event.reason", offset_of!(WakeEvent, reason)),
            ("offsetof.wake_event.seq", offset_of!(WakeEvent, seq)),
            ("offsetof.wake_event.pad", offset_of!(WakeEvent, pad)),
            ("const.CTR_PARK_HITS", CTR_PARK_HITS as usize),
            ("const.CTR_WAKE_HITS", CTR_WAKE_HITS as usize),
            ("const.CTR_READ_ERRORS", CTR_READ_ERRORS as usize),
            ("const.CTR_UPDATE_ERRORS", CTR_UPDATE_ERRORS as usize),
            ("const.CTR_LOST_EVENTS", CTR_LOST_EVENTS as usize),
            ("const.CTR_WAKE_MATCHED", CTR_WAKE_MATCHED as usize),
            ("const.CTR_CANCEL_HITS", CTR_CANCEL_HITS as usize),
            ("const.CTR_CANCEL_RECORDED", CTR_CANCEL_RECORDED as usize),
            ("const.CTR_MAX", CTR_MAX as usize),
            ("const.CANCEL_PCS", CANCEL_PCS),
            ("const.CANCEL_SLOTS", CANCEL_SLOTS as usize),
            ("const.CANCEL_SLOT_BITS", CANCEL_SLOT_BITS as usize),
            (
                "const.CANCEL_HASH_MUL_LO32",
                (CANCEL_HASH_MUL & 0xffff_ffff) as usize,
            ),
            (
                "const.CANCEL_HASH_MUL_HI32",
                (CANCEL_HASH_MUL >> 32) as usize,
            ),
            ("sizeof.cancel_record", size_of::<CancelRecord>()),
            ("offsetof.cancel_record.ctx", offset_of!(CancelRecord, ctx)),
            ("offsetof.cancel_record.ns", offset_of!(CancelRecord, ns)),
            (
                "offsetof.cancel_record.goid",
                offset_of!(CancelRecord, goid),
            ),
            ("offsetof.cancel_record.pcs", offset_of!(CancelRecord, pcs)),
            ("sizeof.futex_wait_rec", size_of::<FutexWaitRec>()),
            (
                "offsetof.futex_wait_rec.uaddr",
                offset_of!(FutexWaitRec, uaddr),
            ),
            (
                "offsetof.futex_wait_rec.start_ns",
                offset_of!(FutexWaitRec, start_ns),
            ),
            ("offsetof.futex_wait_rec.op", offset_of!(FutexWaitRec, op)),
            ("offsetof.futex_wait_rec.pad", offset_of!(FutexWaitRec, pad)),
            ("sizeof.futex_wake_rec", size_of::<FutexWakeRec>()),
            ("offsetof.futex_wake_rec.ns", offset_of!(FutexWakeRec, ns)),
            ("offsetof.futex_wake_rec.tid", offset_of!(FutexWakeRec, tid)),
            ("offsetof.futex_wake_rec.pad", offset_of!(FutexWakeRec, pad)),
            ("sizeof.futex_event", size_of::<FutexEvent>()),
            ("offsetof.futex_event.uaddr", offset_of!(FutexEvent, uaddr)),
            (
                "offsetof.futex_event.start_ns",
                offset_of!(FutexEvent, start_ns),
            ),
            (
                "offsetof.futex_event.end_ns",
                offset_of!(FutexEvent, end_ns),
            ),
            ("offsetof.futex_event.ret", offset_of!(FutexEvent, ret)),
            ("offsetof.futex_event.tid", offset_of!(FutexEvent, tid)),
            ("offsetof.futex_event.op", offset_of!(FutexEvent, op)),
            (
                "offsetof.futex_event.woken_by_tid",
                offset_of!(FutexEvent, woken_by_tid),
            ),
            ("offsetof.futex_event.pad", offset_of!(FutexEvent, pad)),
            ("sizeof.futex_contention", size_of::<FutexContention>()),
            (
                "offsetof.futex_contention.waits",
                offset_of!(FutexContention, waits),
            ),
            (
                "offsetof.futex_contention.total_ns",
                offset_of!(FutexContention, total_ns),
            ),
            (
                "offsetof.futex_contention.max_ns",
                offset_of!(FutexContention, max_ns),
            ),
            ("const.FUTEX_OP_SYS_WAIT", FUTEX_OP_SYS_WAIT as usize),
            ("const.FUTEX_OP_SYS_WAITV", FUTEX_OP_SYS_WAITV as usize),
            ("const.FUTEX_OP_SYS_WAKE", FUTEX_OP_SYS_WAKE as usize),
            ("const.FCTR_CALLS", FCTR_CALLS as usize),
            ("const.FCTR_WAITS", FCTR_WAITS as usize),
            ("const.FCTR_WAKES", FCTR_WAKES as usize),
            ("const.FCTR_EVENTS", FCTR_EVENTS as usize),
            ("const.FCTR_LOST_EVENTS", FCTR_LOST_EVENTS as usize),
            ("const.FCTR_UPDATE_ERRORS", FCTR_UPDATE_ERRORS as usize),
            ("const.FCTR_MAX", FCTR_MAX as usize),
        ];
        for (name, value) in &rust {
            assert_eq!(c.get(name), Some(value), "{name}: C header vs Rust mirror");
        }
        assert_eq!(
            c.len(),
            rust.len(),
            "layout.c prints entries the Rust test does not check"
        );
    }
}
