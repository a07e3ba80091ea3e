// SPDX-License-Identifier: MIT
/* stats: latency histograms and the clock. */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "ferry/stats.h"

void ferry_hist_init(struct ferry_hist *h)
{
	for (int i = 0; i < FERRY_HIST_BUCKETS; i++)
		atomic_init(&h->count[i], 0);
	atomic_init(&h->total, 0);
	atomic_init(&h->max, 0);
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
	uint_fast64_t old = atomic_load_explicit(&h->max,
						 memory_order_relaxed);

	atomic_fetch_add_explicit(&h->count[bucket_of(v)], 1,
				  memory_order_relaxed);
	atomic_fetch_add_explicit(&h->total, 1, memory_order_relaxed);
	while (v > old && !atomic_compare_exchange_weak_explicit(&h->max,
			&old, v, memory_order_relaxed, memory_order_relaxed))
		;
}

uint64_t ferry_hist_count(const struct ferry_hist *h)
{
	return atomic_load_explicit(&h->total, memory_order_relaxed);
}

uint64_t ferry_hist_max(const struct ferry_hist *h)
{
	return atomic_load_explicit(&h->max, memory_order_relaxed);
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
	return atomic_load_explicit(&h->count[b], memory_order_relaxed);
}

void ferry_hist_add(struct ferry_hist *dst, const struct ferry_hist *src)
{
	uint64_t max = ferry_hist_max(src);

	for (unsigned int b = 0; b < FERRY_HIST_BUCKETS; b++)
		atomic_fetch_add_explicit(&dst->count[b],
			atomic_load_explicit(&src->count[b],
					     memory_order_relaxed),
			memory_order_relaxed);
	atomic_fetch_add_explicit(&dst->total, ferry_hist_count(src),
				  memory_order_relaxed);
	if (max > ferry_hist_max(dst))
		atomic_store_explicit(&dst->max, max, memory_order_relaxed);
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
		uint64_t n = atomic_load_explicit(&h->count[b],
						  memory_order_relaxed);
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

uint64_t ferry_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}
