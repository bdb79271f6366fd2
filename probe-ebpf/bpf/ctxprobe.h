/* Structs and constants shared by the eBPF programs and the Rust loader.
 *
 * This header is the single source of truth: the Rust mirrors in src/abi.rs are checked against it by
 * a layout test (build.rs compiles bpf/layout.c with the host compiler and the test compares its output
 * with Rust's size_of/offset_of). Keep every struct free of implicit padding.
 */
#ifndef CTXPROBE_H
#define CTXPROBE_H

#include <linux/types.h>

/* Value of the `parks` map, keyed by the address of the runtime.g (u64). */
struct park_record {
	__u64 goid;
	__u64 park_ns; /* bpf_ktime_get_ns() at gopark: CLOCK_MONOTONIC, same clock as Go's nanotime */
	__u64 wake_ns; /* 0 until runtime.ready(gp) is seen for this park */
	__u8 reason;   /* gopark's waitReason (version-specific numbering) */
	__u8 seq;      /* g.trackingSeq at gopark entry; the runtime bumps it once the park completes */
	__u8 pad[6];
};

/* Ring-buffer event: a goroutine userspace put in the `watch` map was made runnable again. */
struct wake_event {
	__u64 g;
	__u64 goid;
	__u64 park_ns; /* 0 if the park was not seen (park probe detached, or record evicted) */
	__u64 wake_ns;
	__u8 reason;
	__u8 seq;
	__u8 pad[6];
};

/* Caller PCs kept per cancellation: [0] is the return address into cancel's caller. */
#define CANCEL_PCS 6

/* Slots of the `cancels` array (a power of two). */
#define CANCEL_SLOTS 16384

/* Element of the `cancels` array: a direct-mapped cache of first cancellations, slot
 * cancel_slot(c) for the context.cancelCtx at c; a later cancel of another context hashing to the
 * same slot replaces it (no LRU map: its insert and eviction cost ~1.3 µs a hit). */
struct cancel_record {
	__u64 ctx;  /* address of the context.cancelCtx; 0 in an unused slot */
	__u64 ns;   /* bpf_ktime_get_ns() at the cancel: CLOCK_MONOTONIC */
	__u64 goid; /* the cancelling goroutine */
	__u64 pcs[CANCEL_PCS]; /* return addresses, innermost first; 0 past the end of the walk */
};

/* Fibonacci hashing of a heap address (16-byte granules) to a slot; src/abi.rs mirrors it. */
#define CANCEL_HASH_MUL 0x9E3779B97F4A7C15ULL
#define CANCEL_SLOT_BITS 14

/* Indices into the per-CPU `counters` array. */
enum ctxprobe_counter {
	CTR_PARK_HITS = 0,     /* gopark probe fired for the target */
	CTR_WAKE_HITS = 1,     /* ready probe fired for the target */
	CTR_READ_ERRORS = 2,   /* bpf_probe_read_user of a g field failed */
	CTR_UPDATE_ERRORS = 3, /* `parks` map update failed */
	CTR_LOST_EVENTS = 4,   /* ring buffer full: wake event dropped */
	CTR_WAKE_MATCHED = 5,  /* ready(gp) found a park record for gp */
	CTR_CANCEL_HITS = 6,   /* cancel probe fired for the target (first cancels and repeats) */
	CTR_CANCEL_RECORDED = 7, /* a first cancellation was recorded in `cancels` */
	CTR_MAX = 8,
};

#endif
