// SPDX-License-Identifier: GPL-2.0
/* ctxprobe uprobes on a Go process.
 *
 * park: runtime.gopark, at the `push rbp` after the stack-bound check (so the kernel emulates the
 *       instruction instead of single-stepping it, and the probe is not hit again when morestack re-runs
 *       the prologue). R14 = the parking g (still _Grunning), RCX = waitReason (3rd integer argument).
 * wake: runtime.ready(gp, ...), after its prologue. Runs on g0; RAX = gp.
 * cancel: context.(*cancelCtx).cancel, after its stack check (precise mode only). RAX = c (a
 *       timerCtx's or afterFuncCtx's embedded cancelCtx is at offset 0: same address); RBP is
 *       still the caller's frame pointer and [RSP] the return address into the caller.
 *
 * The target parks ~1e5 times/s, so the park probe does the minimum: two small user reads and one
 * map update. No per-park events and no stack capture; userspace reads the `parks` map on demand and
 * asks for wake events only for the goroutines it put in `watch`.
 */
#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <bpf/bpf_helpers.h>

#include "ctxprobe.h"

/* Go's ABIInternal registers, per architecture (build.rs defines __TARGET_ARCH_*):
 * amd64: g in R14, integer arguments in RAX, RBX, RCX, ...;
 * arm64: g in R28, integer arguments in R0..R15 (a uprobe's context there is user_pt_regs). */
#if defined(__TARGET_ARCH_arm64)
typedef struct user_pt_regs go_regs;
#define GO_G(ctx) ((ctx)->regs[28])
#define GO_ARG1(ctx) ((ctx)->regs[0])
#define GO_ARG3(ctx) ((ctx)->regs[2])
#define GO_SP(ctx) ((ctx)->sp)
#define GO_FP(ctx) ((ctx)->regs[29])
/* arm64 keeps the return address in LR at entry, not on the stack. */
#define GO_RET_ON_STACK 0
#define GO_LR(ctx) ((ctx)->regs[30])
#elif defined(__TARGET_ARCH_x86)
typedef struct pt_regs go_regs;
#define GO_G(ctx) ((ctx)->r14)
#define GO_ARG1(ctx) ((ctx)->rax)
#define GO_ARG3(ctx) ((ctx)->rcx)
#define GO_SP(ctx) ((ctx)->rsp)
#define GO_FP(ctx) ((ctx)->rbp)
#define GO_RET_ON_STACK 1
#define GO_LR(ctx) 0
#else
#error "build.rs defines __TARGET_ARCH_x86 or __TARGET_ARCH_arm64"
#endif

/* Set by the loader before the programs are verified. */
const volatile __u32 target_tgid = 0;
const volatile __u64 g_goid_offset = 0;
const volatile __u64 g_tracking_seq_offset = 0;
const volatile __u64 cancelctx_err_offset = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* overridden by the loader (ProbeConfig::max_parks) */
	__type(key, __u64);         /* address of the runtime.g */
	__type(value, struct park_record);
} parks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64); /* address of a runtime.g userspace wants wake events for */
	__type(value, __u8);
} watch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CANCEL_SLOTS);
	__type(key, __u32); /* cancel_slot(address of the context.cancelCtx) */
	__type(value, struct cancel_record);
} cancels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void bump(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1; /* per-CPU slot: no other writer while this program runs */
}

static __always_inline int is_target(void)
{
	return (__u32)(bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

SEC("uprobe")
int park(go_regs *ctx)
{
	if (!is_target())
		return 0;
	bump(CTR_PARK_HITS);

	__u64 g = GO_G(ctx);
	struct park_record rec = {};
	if (bpf_probe_read_user(&rec.goid, sizeof(rec.goid), (void *)(g + g_goid_offset)) ||
	    bpf_probe_read_user(&rec.seq, sizeof(rec.seq), (void *)(g + g_tracking_seq_offset))) {
		bump(CTR_READ_ERRORS);
		return 0;
	}
	rec.park_ns = bpf_ktime_get_ns();
	rec.reason = GO_ARG3(ctx) & 0xff; /* sub-word argument: upper bits are undefined */
	if (bpf_map_update_elem(&parks, &g, &rec, BPF_ANY))
		bump(CTR_UPDATE_ERRORS);
	return 0;
}

SEC("uprobe")
int wake(go_regs *ctx)
{
	if (!is_target())
		return 0;
	bump(CTR_WAKE_HITS);

	__u64 now = bpf_ktime_get_ns();
	__u64 gp = GO_ARG1(ctx);
	struct park_record *rec = bpf_map_lookup_elem(&parks, &gp);
	if (rec) {
		rec->wake_ns = now;
		bump(CTR_WAKE_MATCHED);
	}

	if (!bpf_map_lookup_elem(&watch, &gp))
		return 0;

	struct wake_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		bump(CTR_LOST_EVENTS);
		return 0;
	}
	ev->g = gp;
	ev->wake_ns = now;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	if (rec) {
		ev->goid = rec->goid;
		ev->park_ns = rec->park_ns;
		ev->reason = rec->reason;
		ev->seq = rec->seq;
	} else {
		/* No park seen: still report the goid so userspace can tell who woke. */
		ev->park_ns = 0;
		ev->reason = 0;
		ev->seq = 0;
		if (bpf_probe_read_user(&ev->goid, sizeof(ev->goid), (void *)(gp + g_goid_offset))) {
			ev->goid = 0;
			bump(CTR_READ_ERRORS);
		}
	}
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

SEC("uprobe")
int cancel(go_regs *ctx)
{
	if (!is_target())
		return 0;
	bump(CTR_CANCEL_HITS);

	__u64 c = GO_ARG1(ctx);
	/* cancel() on a cancelled context returns early (a deferred cancel after a timeout): keep the
	 * first cancellation. err's first word (itab, or atomic.Value's type) is non-zero once set.
	 * Read without c.mu: a racing first cancel is recorded by whichever probe hit wins. */
	__u64 err_word = 0;
	if (bpf_probe_read_user(&err_word, sizeof(err_word), (void *)(c + cancelctx_err_offset))) {
		bump(CTR_READ_ERRORS);
		return 0;
	}
	if (err_word != 0)
		return 0;

	struct cancel_record rec = {};
	rec.ctx = c;
	rec.ns = bpf_ktime_get_ns();
	if (bpf_probe_read_user(&rec.goid, sizeof(rec.goid), (void *)(GO_G(ctx) + g_goid_offset))) {
		bump(CTR_READ_ERRORS);
		return 0;
	}
	/* Caller PCs by frame pointers: the probe sits before cancel's own frame is set up, so the
	 * first is the return address at [SP] (LR on arm64) and the frame pointer register is the
	 * caller's; each frame then holds [saved FP, return address]. */
	__u64 fp = GO_FP(ctx);
	if (GO_RET_ON_STACK) {
		if (bpf_probe_read_user(&rec.pcs[0], sizeof(__u64), (void *)GO_SP(ctx)))
			rec.pcs[0] = 0;
	} else {
		rec.pcs[0] = GO_LR(ctx);
	}
#pragma unroll
	for (int i = 1; i < CANCEL_PCS; i++) {
		__u64 frame[2];
		if (fp == 0 || bpf_probe_read_user(frame, sizeof(frame), (void *)fp))
			break;
		rec.pcs[i] = frame[1];
		if (frame[0] <= fp) /* frames grow toward higher addresses: stop on a loop */
			break;
		fp = frame[0];
	}
	__u32 slot = (__u32)(((c >> 4) * CANCEL_HASH_MUL) >> (64 - CANCEL_SLOT_BITS));
	struct cancel_record *dst = bpf_map_lookup_elem(&cancels, &slot);
	if (!dst) {
		bump(CTR_UPDATE_ERRORS);
		return 0;
	}
	/* Plain stores: two CPUs writing one slot at once can mix records (userspace checks ctx,
	 * the rest of a mixed record may belong to the other context; rare and only mis-attributes). */
	__builtin_memcpy(dst, &rec, sizeof(rec));
	bump(CTR_CANCEL_RECORDED);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
