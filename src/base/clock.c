// SPDX-License-Identifier: MIT
/* clock: the one clock every figure ferry reports is taken on. */
#include <time.h>

#include "ferry/clock.h"

uint64_t ferry_clock_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}
