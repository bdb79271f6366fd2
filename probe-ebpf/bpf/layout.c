/* Host program built by build.rs: prints the layout of the shared structs as seen by a C compiler,
 * one "name value" line each, for the Rust layout test (src/abi.rs). */
#include <stddef.h>
#include <stdio.h>

#include "ctxprobe.h"
#include "futex.h"

#define SIZE(t) printf("sizeof.%s %zu\n", #t, sizeof(struct t))
#define OFF(t, f) printf("offsetof.%s.%s %zu\n", #t, #f, offsetof(struct t, f))

int main(void)
{
	SIZE(park_record);
	OFF(park_record, goid);
	OFF(park_record, park_ns);
	OFF(park_record, wake_ns);
	OFF(park_record, reason);
	OFF(park_record, seq);
	OFF(park_record, pad);
	SIZE(wake_event);
	OFF(wake_event, g);
	OFF(wake_event, goid);
	OFF(wake_event, park_ns);
	OFF(wake_event, wake_ns);
	OFF(wake_event, reason);
	OFF(wake_event, seq);
	OFF(wake_event, pad);
	printf("const.CTR_PARK_HITS %d\n", CTR_PARK_HITS);
	printf("const.CTR_WAKE_HITS %d\n", CTR_WAKE_HITS);
	printf("const.CTR_READ_ERRORS %d\n", CTR_READ_ERRORS);
	printf("const.CTR_UPDATE_ERRORS %d\n", CTR_UPDATE_ERRORS);
	printf("const.CTR_LOST_EVENTS %d\n", CTR_LOST_EVENTS);
	printf("const.CTR_WAKE_MATCHED %d\n", CTR_WAKE_MATCHED);
	printf("const.CTR_CANCEL_HITS %d\n", CTR_CANCEL_HITS);
	printf("const.CTR_CANCEL_RECORDED %d\n", CTR_CANCEL_RECORDED);
	printf("const.CTR_MAX %d\n", CTR_MAX);
	printf("const.CANCEL_PCS %d\n", CANCEL_PCS);
	printf("const.CANCEL_SLOTS %d\n", CANCEL_SLOTS);
	printf("const.CANCEL_SLOT_BITS %d\n", CANCEL_SLOT_BITS);
	printf("const.CANCEL_HASH_MUL_LO32 %llu\n", CANCEL_HASH_MUL & 0xffffffffULL);
	printf("const.CANCEL_HASH_MUL_HI32 %llu\n", CANCEL_HASH_MUL >> 32);
	SIZE(cancel_record);
	OFF(cancel_record, ctx);
	OFF(cancel_record, ns);
	OFF(cancel_record, goid);
	OFF(cancel_record, pcs);
	SIZE(futex_wait_rec);
	OFF(futex_wait_rec, uaddr);
	OFF(futex_wait_rec, start_ns);
	OFF(futex_wait_rec, op);
	OFF(futex_wait_rec, pad);
	SIZE(futex_wake_rec);
	OFF(futex_wake_rec, ns);
	OFF(futex_wake_rec, tid);
	OFF(futex_wake_rec, pad);
	SIZE(futex_event);
	OFF(futex_event, uaddr);
	OFF(futex_event, start_ns);
	OFF(futex_event, end_ns);
	OFF(futex_event, ret);
	OFF(futex_event, tid);
	OFF(futex_event, op);
	OFF(futex_event, woken_by_tid);
	OFF(futex_event, pad);
	SIZE(futex_contention);
	OFF(futex_contention, waits);
	OFF(futex_contention, total_ns);
	OFF(futex_contention, max_ns);
	printf("const.FUTEX_OP_SYS_WAIT %d\n", FUTEX_OP_SYS_WAIT);
	printf("const.FUTEX_OP_SYS_WAITV %d\n", FUTEX_OP_SYS_WAITV);
	printf("const.FUTEX_OP_SYS_WAKE %d\n", FUTEX_OP_SYS_WAKE);
	printf("const.FCTR_CALLS %d\n", FCTR_CALLS);
	printf("const.FCTR_WAITS %d\n", FCTR_WAITS);
	printf("const.FCTR_WAKES %d\n", FCTR_WAKES);
	printf("const.FCTR_EVENTS %d\n", FCTR_EVENTS);
	printf("const.FCTR_LOST_EVENTS %d\n", FCTR_LOST_EVENTS);
	printf("const.FCTR_UPDATE_ERRORS %d\n", FCTR_UPDATE_ERRORS);
	printf("const.FCTR_MAX %d\n", FCTR_MAX);
	return 0;
}
