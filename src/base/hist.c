// SPDX-License-Identifier: MIT
/* hist: latency histograms. */
#include <stdint.h>
#include <string.h>

#include "ferry/hist.h"

void ferry_hist_init(struct ferry_hist *h)
{
	memset(h, 0, sizeof(*h));
}

/*
 * The counters are plain uint64_t in the public struct (a C++ or C99
 * program can include it); every access here is a relaxed atomic.
 */
static uint64_t load(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void add(uint64_t *p, uint64_t v)
{
	__atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

/*
 * Values below 8 get a bucket each; above, the octave (position of the top
 * bit) picks 8 buckets and the next three bits pick one of them.
 */
static unsigned int bucket_of(uint64_t v)
{
	unsigned int top;

	if (v < FERRY_HIST_SUB)
		return (unsigned int)v;
	top = 63u - (unsigned int)__builtin_clzll(v);
	return (top - 2) * FERRY_HIST_SUB +
	       (unsigned int)((v >> (top - 3)) & (FERRY_HIST_SUB - 1));
}

/* The smallest value that lands in bucket b. */
static uint64_t bucket_low(unsigned int b)
{
	unsigned int top = b / FERRY_HIST_SUB + 2;

	if (b < FERRY_HIST_SUB)
		return b;
	return (1ULL << top) | ((uint64_t)(b % FERRY_HIST_SUB) << (top - 3));
}

/*
 * The bucket after b's smallest value; UINT64_MAX past the last bucket
 * that values reach (the top octave's last, 495: buckets above it stay
 * empty).
 */
#define LAST_BUCKET	((63u - 2u) * FERRY_HIST_SUB + FERRY_HIST_SUB - 1u)

static uint64_t bucket_high(unsigned int b)
{
	return b < LAST_BUCKET ? bucket_low(b + 1) : UINT64_MAX;
}

void ferry_hist_record(struct ferry_hist *h, uint64_t v)
{
	uint64_t old = load(&h->max);

	add(&h->count[bucket_of(v)], 1);
	add(&h->total, 1);
	while (v > old && !__atomic_compare_exchange_n(&h->max, &old, v, 1,
			__ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

uint64_t ferry_hist_count(const struct ferry_hist *h)
{
	return load(&h->total);
}

uint64_t ferry_hist_max(const struct ferry_hist *h)
{
	return load(&h->max);
}

uint64_t ferry_hist_bucket(const struct ferry_hist *h, unsigned int b,
			   uint64_t *low, uint64_t *high)
{
	if (b > LAST_BUCKET) {
		*low = *high = UINT64_MAX;
		return 0;
	}
	*low = bucket_low(b);
	*high = bucket_high(b);
	return load(&h->count[b]);
}

void ferry_hist_add(struct ferry_hist *dst, const struct ferry_hist *src)
{
	uint64_t max = ferry_hist_max(src);

	for (unsigned int b = 0; b < FERRY_HIST_BUCKETS; b++)
		add(&dst->count[b], load(&src->count[b]));
	add(&dst->total, ferry_hist_count(src));
	if (max > ferry_hist_max(dst))
		__atomic_store_n(&dst->max, max, __ATOMIC_RELAXED);
}

uint64_t ferry_hist_percentile(const struct ferry_hist *h, double pct)
{
	uint64_t total = ferry_hist_count(h), seen = 0, rank;

	if (!total)
		return 0;
	rank = (uint64_t)((double)total * pct / 100.0 + 0.5);
	if (rank < 1)
		rank = 1;
	for (unsigned int b = 0; b < FERRY_HIST_BUCKETS; b++) {
		uint64_t n = load(&h->count[b]);
		uint64_t low, high;

		if (seen + n < rank) {
			seen += n;
			continue;
		}
		/* Interpolate inside the bucket, capped by the true max. */
		low = bucket_low(b);
		high = bucket_high(b);
		low += (high - low) * (rank - seen) / (n + 1);
		return low < ferry_hist_max(h) ? low : ferry_hist_max(h);
	}
	return ferry_hist_max(h);
}
