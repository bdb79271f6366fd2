//! Rust mirrors of the structs and constants in `bpf/ctxprobe.h`.
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

// SAFETY: plain integers, no padding (checked by the layout test), every bit pattern valid.
unsafe impl aya::Pod for ParkRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for WakeEvent {}

/// Indices into the per-CPU `counters` array (`enum ctxprobe_counter`).
pub const CTR_PARK_HITS: u32 = 0;
pub const CTR_WAKE_HITS: u32 = 1;
pub const CTR_READ_ERRORS: u32 = 2;
pub const CTR_UPDATE_ERRORS: u32 = 3;
pub const CTR_LOST_EVENTS: u32 = 4;
pub const CTR_WAKE_MATCHED: u32 = 5;
pub const CTR_MAX: u32 = 8;

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
            ("const.CTR_MAX", CTR_MAX as usize),
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
