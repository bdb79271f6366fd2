/* Structs and constants shared by futex.bpf.c and the Rust loader (src/futex.rs, mirrors in src/abi.rs,
 * checked by the layout test like ctxprobe.h). Keep every struct free of implicit padding.
 */
#ifndef CTXPROBE_FUTEX_H
#define CTXPROBE_FUTEX_H

#include <linux/types.h>

/* `op` values for waits/wakes made with the futex2 syscalls (futex_wait, futex_waitv, futex_wake),
 * which have no futex(2) op: the syscall in the high bits, its FUTEX2_* flags in the low 16 bits. */
enum futex_pseudo_op {
	FUTEX_OP_SYS_WAIT = 0x10000,
	FUTEX_OP_SYS_WAITV = 0x20000,
	FUTEX_OP_SYS_WAKE = 0x30000,
};

/* Value of the `waiting` map, keyed by thread id (u32): a futex wait in progress. */
struct futex_wait_rec {
	__u64 uaddr;    /* futex word (for futex_waitv: the first one) */
	__u64 start_ns; /* bpf_ktime_get_ns() at syscall entry (CLOCK_MONOTONIC) */
	__u32 op;       /* futex(2) op as passed, or a futex_pseudo_op */
	__u32 pad;
};

/* Value of the LRU `last_wake` map, keyed by futex word address (u64). */
struct futex_wake_rec {
	__u64 ns;
	__u32 tid;
	__u32 pad;
};

/* Ring-buffer event: a wait of at least `event_threshold_ns` ended. */
struct futex_event {
	__u64 uaddr;
	__u64 start_ns;
	__u64 end_ns;
	__s64 ret;          /* syscall return value (0, or -ETIMEDOUT, -EINTR, -EAGAIN, ...) */
	__u32 tid;
	__u32 op;
	__u32 woken_by_tid; /* 0 if unknown (no wake on uaddr seen since the wait began) */
	__u32 pad;
};

/* Value of the LRU `contention` map, keyed by futex word address: waits longer than
 * `contention_floor_ns` that ended, summed. */
struct futex_contention {
	__u64 waits;
	__u64 total_ns;
	__u64 max_ns;
};

/* Indices into the per-CPU `futex_counters` array. */
enum futex_counter {
	FCTR_CALLS = 0,         /* futex syscalls entered by the target */
	FCTR_WAITS = 1,         /* of which wait-type */
	FCTR_WAKES = 2,         /* of which wake-type */
	FCTR_EVENTS = 3,        /* long-wait events sent */
	FCTR_LOST_EVENTS = 4,   /* ring buffer full: long-wait event dropped */
	FCTR_UPDATE_ERRORS = 5, /* `waiting` map full or update failed */
	FCTR_MAX = 8,
};

#endif
