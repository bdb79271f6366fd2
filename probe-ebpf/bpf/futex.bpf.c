// SPDX-License-Identifier: GPL-2.0
/* ctxprobe futex tracepoints: long futex waits of one process.
 *
 * Every futex syscall on the machine runs these programs, and a busy target makes ~1e6 calls/s, so a
 * call does the minimum: a tgid check, and for the target one hash update at a wait's entry and one
 * lookup+delete at its exit. Only waits that lasted long send a ring-buffer event (an event per call
 * would cost ~4x more). Userspace reads the `waiting` map to find waits still in progress.
 */
#include <linux/bpf.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

#include "futex.h"

/* Set by the loader before the programs are verified. */
const volatile __u32 target_tgid = 0;
/* Waits at least this long send an event when they end. */
const volatile __u64 event_threshold_ns = 500000000;
/* Waits at least this long are added to `contention` (shorter ones would cost an update per lock). */
const volatile __u64 contention_floor_ns = 1000000;

/* futex(2) commands (op & FUTEX_CMD_MASK); not taken from linux/futex.h to keep this file
 * independent of the installed uapi headers' age. */
#define CMD_WAIT 0
#define CMD_WAKE 1
#define CMD_REQUEUE 3
#define CMD_CMP_REQUEUE 4
#define CMD_WAKE_OP 5
#define CMD_LOCK_PI 6
#define CMD_UNLOCK_PI 7
#define CMD_WAIT_BITSET 9
#define CMD_WAKE_BITSET 10
#define CMD_WAIT_REQUEUE_PI 11
#define CMD_CMP_REQUEUE_PI 12
#define CMD_LOCK_PI2 13
#define CMD_MASK 0x7f /* drops FUTEX_PRIVATE_FLAG (128) and FUTEX_CLOCK_REALTIME (256) */

/* Tracepoint records, as in /sys/kernel/tracing/events/syscalls/<name>/format. */
struct enter_futex_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 uaddr;
	__u64 op;
	__u64 val;
	__u64 utime;
	__u64 uaddr2;
	__u64 val3;
};

struct enter_futex_wait_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 uaddr;
	__u64 val;
	__u64 mask;
	__u64 flags;
};

struct enter_futex_waitv_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 waiters; /* struct futex_waitv { u64 val; u64 uaddr; u32 flags; u32 reserved; } [] */
	__u64 nr_futexes;
	__u64 flags;
};

struct enter_futex_wake_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 uaddr;
	__u64 mask;
	__u64 nr_wake;
	__u64 flags;
};

struct exit_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct futex_wait_rec);
} waiting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* futex word address */
	__type(value, struct futex_wake_rec);
} last_wake SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* futex word address */
	__type(value, struct futex_contention);
} contention SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} futex_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FCTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} futex_counters SEC(".maps");

static __always_inline void bump(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&futex_counters, &idx);
	if (v)
		*v += 1; /* per-CPU slot: no other writer while this program runs */
}

/* The caller's tid if it belongs to the target, else 0. */
static __always_inline __u32 target_tid(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	if ((__u32)(id >> 32) != target_tgid)
		return 0;
	return (__u32)id;
}

static __always_inline void begin_wait(__u32 tid, __u64 uaddr, __u32 op)
{
	struct futex_wait_rec rec = {
		.uaddr = uaddr,
		.start_ns = bpf_ktime_get_ns(),
		.op = op,
	};
	bump(FCTR_WAITS);
	if (bpf_map_update_elem(&waiting, &tid, &rec, BPF_ANY))
		bump(FCTR_UPDATE_ERRORS);
}

static __always_inline void note_wake(__u32 tid, __u64 uaddr)
{
	struct futex_wake_rec rec = {
		.ns = bpf_ktime_get_ns(),
		.tid = tid,
	};
	bpf_map_update_elem(&last_wake, &uaddr, &rec, BPF_ANY);
}

static __always_inline void add_contention(__u64 uaddr, __u64 dur)
{
	struct futex_contention *c = bpf_map_lookup_elem(&contention, &uaddr);
	if (c) {
		__sync_fetch_and_add(&c->waits, 1);
		__sync_fetch_and_add(&c->total_ns, dur);
		if (dur > c->max_ns)
			c->max_ns = dur; /* racy max: good enough for a summary */
		return;
	}
	struct futex_contention fresh = { .waits = 1, .total_ns = dur, .max_ns = dur };
	bpf_map_update_elem(&contention, &uaddr, &fresh, BPF_NOEXIST);
}

static __always_inline int end_wait(__s64 ret)
{
	__u32 tid = target_tid();
	if (!tid)
		return 0;
	struct futex_wait_rec *rec = bpf_map_lookup_elem(&waiting, &tid);
	if (!rec)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 uaddr = rec->uaddr;
	__u64 start = rec->start_ns;
	__u32 op = rec->op;
	bpf_map_delete_elem(&waiting, &tid);

	__u64 dur = now > start ? now - start : 0;
	if (dur < contention_floor_ns)
		return 0;
	add_contention(uaddr, dur);
	if (dur < event_threshold_ns)
		return 0;

	__u32 waker = 0;
	struct futex_wake_rec *w = bpf_map_lookup_elem(&last_wake, &uaddr);
	if (w && w->ns >= start && w->tid != tid && ret >= 0)
		waker = w->tid;

	struct futex_event *ev = bpf_ringbuf_reserve(&futex_events, sizeof(*ev), 0);
	if (!ev) {
		bump(FCTR_LOST_EVENTS);
		return 0;
	}
	ev->uaddr = uaddr;
	ev->start_ns = start;
	ev->end_ns = now;
	ev->ret = ret;
	ev->tid = tid;
	ev->op = op;
	ev->woken_by_tid = waker;
	ev->pad = 0;
	bpf_ringbuf_submit(ev, 0);
	bump(FCTR_EVENTS);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_futex")
int futex_enter(struct enter_futex_args *ctx)
{
	__u32 tid = target_tid();
	if (!tid)
		return 0;
	bump(FCTR_CALLS);
	__u32 op = (__u32)ctx->op;
	switch (op & CMD_MASK) {
	case CMD_WAIT:
	case CMD_WAIT_BITSET:
	case CMD_LOCK_PI:
	case CMD_LOCK_PI2:
	case CMD_WAIT_REQUEUE_PI:
		begin_wait(tid, ctx->uaddr, op);
		break;
	case CMD_WAKE_OP:
		/* wakes waiters on both words */
		bump(FCTR_WAKES);
		note_wake(tid, ctx->uaddr);
		note_wake(tid, ctx->uaddr2);
		break;
	case CMD_WAKE:
	case CMD_WAKE_BITSET:
	case CMD_UNLOCK_PI:
	case CMD_REQUEUE:
	case CMD_CMP_REQUEUE:
	case CMD_CMP_REQUEUE_PI:
		bump(FCTR_WAKES);
		note_wake(tid, ctx->uaddr);
		break;
	default:
		break;
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex")
int futex_exit(struct exit_args *ctx)
{
	return end_wait(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_futex_wait")
int futex_wait_enter(struct enter_futex_wait_args *ctx)
{
	__u32 tid = target_tid();
	if (!tid)
		return 0;
	bump(FCTR_CALLS);
	begin_wait(tid, ctx->uaddr, FUTEX_OP_SYS_WAIT | (__u32)(ctx->flags & 0xffff));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex_wait")
int futex_wait_exit(struct exit_args *ctx)
{
	return end_wait(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_futex_waitv")
int futex_waitv_enter(struct enter_futex_waitv_args *ctx)
{
	__u32 tid = target_tid();
	if (!tid)
		return 0;
	bump(FCTR_CALLS);
	__u64 uaddr = 0;
	/* futex_waitv[0].uaddr; 0 if unreadable (the wait is still timed) */
	bpf_probe_read_user(&uaddr, sizeof(uaddr), (void *)(ctx->waiters + 8));
	begin_wait(tid, uaddr, FUTEX_OP_SYS_WAITV | (__u32)(ctx->flags & 0xffff));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex_waitv")
int futex_waitv_exit(struct exit_args *ctx)
{
	return end_wait(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_futex_wake")
int futex_wake_enter(struct enter_futex_wake_args *ctx)
{
	__u32 tid = target_tid();
	if (!tid)
		return 0;
	bump(FCTR_CALLS);
	bump(FCTR_WAKES);
	note_wake(tid, ctx->uaddr);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
