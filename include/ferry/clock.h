/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CLOCK_H
#define FERRY_CLOCK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * CLOCK_MONOTONIC in nanoseconds: every time and duration ferry reports
 * (stats, progress, histograms) is taken on it.
 */
uint64_t ferry_clock_now_ns(void);

#ifdef __cplusplus
}
#endif

#endif
