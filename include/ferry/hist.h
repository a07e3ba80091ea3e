/* SPDX-License-Identifier: MIT */
#ifndef FERRY_HIST_H
#define FERRY_HIST_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Latency histogram: log2 buckets, each split into 8 linear sub-buckets,
 * so a percentile is within ~9% of the true value over the whole range of
 * a uint64 nanosecond count.  Recording is a few relaxed atomic adds; any
 * thread may record, any thread may read.  The fields are the library's:
 * read a histogram through the calls below, never directly.
 */
#define FERRY_HIST_SUB		8
#define FERRY_HIST_BUCKETS	(64 * FERRY_HIST_SUB)

struct ferry_hist {
	uint64_t count[FERRY_HIST_BUCKETS];
	uint64_t total;
	uint64_t max;
};

void ferry_hist_init(struct ferry_hist *h);
void ferry_hist_record(struct ferry_hist *h, uint64_t value);

/* The value below which `pct` percent (0..100) of samples fall; 0 if none. */
uint64_t ferry_hist_percentile(const struct ferry_hist *h, double pct);

uint64_t ferry_hist_count(const struct ferry_hist *h);
uint64_t ferry_hist_max(const struct ferry_hist *h);

/*
 * Bucket b (0 .. FERRY_HIST_BUCKETS-1): its sample count, and the values
 * it holds, [*low, *high) (the last bucket values reach ends at
 * UINT64_MAX and holds it too; the unused ones above it are empty, with
 * both bounds UINT64_MAX).  For printing the whole distribution.
 */
uint64_t ferry_hist_bucket(const struct ferry_hist *h, unsigned int b,
			   uint64_t *low, uint64_t *high);

/* Add src's samples to dst (neither may be recorded into meanwhile). */
void ferry_hist_add(struct ferry_hist *dst, const struct ferry_hist *src);

#ifdef __cplusplus
}
#endif

#endif
