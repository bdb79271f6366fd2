/* Host program built by build.rs: prints the layout of the shared structs as seen by a C compiler,
 * one "name value" line each, for the Rust layout test (src/abi.rs). */
#include <stddef.h>
#include <stdio.h>

#include "ctxprobe.h"

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
	printf("const.CTR_MAX %d\n", CTR_MAX);
	return 0;
}
