//! ctxprobe's kernel side: uprobes on `runtime.gopark` / `runtime.ready` of one Go process, and
//! futex syscall tracepoints for blocked threads of any process (C eBPF in
//! `bpf/`, built by build.rs with clang-19) and the loader the agent drives.
//!
//! Cost model: every uprobe hit traps into the kernel (~0.7 µs at a `push rbp` site), so the agent
//! attaches the park probe only while the target's park rate fits its budget. The probes record the
//! last park per goroutine in an LRU map and send an event only for goroutines userspace watches.

pub mod abi;
pub mod calibrate;
mod error;
pub mod futex;
mod loader;
mod maps;

pub use abi::{
    CancelRecord, FutexContention, FutexEvent, FutexWaitRec, FutexWakeRec, ParkRecord, WakeEvent,
};
pub use error::ProbeError;
pub use futex::{FutexConfig, FutexCounters, FutexProbes};
pub use loader::{Counters, ProbeConfig, Probes};

/// The compiled eBPF object (ELF, 8-byte aligned as aya's parser requires).
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ctxprobe.bpf.o"));

/// The compiled futex tracepoint programs (bpf/futex.bpf.c).
pub static FUTEX_BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/futex.bpf.o"));
