// SPDX-License-Identifier: MIT
/* stats: percentiles within the histogram's resolution. */
#include "ferry/hist.h"
#include "test.h"

static enum test_result hist_percentiles(struct test_ctx *ctx)
{
	static struct ferry_hist h;

	ferry_hist_init(&h);
	CHECK_EQ(ctx, ferry_hist_percentile(&h, 50), 0);
	for (uint64_t v = 1; v <= 100000; v++)
		ferry_hist_record(&h, v * 1000);	/* 1 us .. 100 ms */
	CHECK_EQ(ctx, ferry_hist_count(&h), 100000);
	CHECK_EQ(ctx, ferry_hist_max(&h), 100000000);
	for (int pct = 1; pct < 100; pct += 7) {
		double want = pct * 1000.0 * 1000.0;
		double got = (double)ferry_hist_percentile(&h, pct);

		CHECK(ctx, got > want * 0.88 && got < want * 1.12,
		      "p%d = %.0f, want about %.0f", pct, got, want);
	}
	CHECK_EQ(ctx, ferry_hist_percentile(&h, 100), 100000000);
	ferry_hist_init(&h);
	for (uint64_t v = 0; v < 8; v++)
		ferry_hist_record(&h, v);
	CHECK_EQ(ctx, ferry_hist_percentile(&h, 100), 7);
	return TEST_PASS;
}

/*
 * The buckets tile the values without gap or overlap, each sample lands in
 * the bucket that holds it, and adding one histogram to another adds
 * counts, total and max.
 */
static enum test_result hist_buckets_and_add(struct test_ctx *ctx)
{
	static struct ferry_hist a, b;
	static const uint64_t vals[] = { 0, 7, 8, 9, 1000, 123456789,
					 UINT64_MAX };
	uint64_t low, high, prev_high = 0, sum = 0;

	ferry_hist_init(&a);
	ferry_hist_init(&b);
	for (unsigned int i = 0; i < sizeof(vals) / sizeof(vals[0]); i++)
		ferry_hist_record(&a, vals[i]);
	for (unsigned int i = 0; i < FERRY_HIST_BUCKETS; i++) {
		uint64_t n = ferry_hist_bucket(&a, i, &low, &high);

		if (prev_high == UINT64_MAX) {	/* past the last one used */
			CHECK_EQ(ctx, n, 0);
			CHECK_EQ(ctx, low, UINT64_MAX);
			continue;
		}
		CHECK_EQ(ctx, low, prev_high);
		CHECK(ctx, high > low,
		      "bucket %u is [%llu, %llu)", i,
		      (unsigned long long)low, (unsigned long long)high);
		for (unsigned int j = 0; j < sizeof(vals) / sizeof(vals[0]);
		     j++)
			if (vals[j] >= low && (vals[j] < high ||
			    (high == UINT64_MAX && vals[j] == UINT64_MAX)))
				n--;
		CHECK_EQ(ctx, n, 0);
		prev_high = high;
		sum += ferry_hist_bucket(&a, i, &low, &high);
	}
	CHECK_EQ(ctx, sum, 7);
	CHECK_EQ(ctx, ferry_hist_bucket(&a, FERRY_HIST_BUCKETS, &low, &high),
		 0);
	ferry_hist_record(&b, 1000);
	ferry_hist_add(&b, &a);
	CHECK_EQ(ctx, ferry_hist_count(&b), 8);
	CHECK_EQ(ctx, ferry_hist_max(&b), UINT64_MAX);
	CHECK_EQ(ctx, ferry_hist_percentile(&b, 50), 9);	/* 4th of 8 */
	CHECK(ctx, ferry_hist_percentile(&b, 75) >= 960 &&
	      ferry_hist_percentile(&b, 75) < 1024,	/* 6th: 1000's bucket */
	      "p75 = %llu", (unsigned long long)ferry_hist_percentile(&b, 75));
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "stats_histogram_percentiles", hist_percentiles, 0, 0, 0, 0, 0 },
	{ "stats_histogram_buckets_and_add", hist_buckets_and_add,
	  0, 0, 0, 0, 0 },
};

TEST_SUITE(stats, cases)
