// SPDX-License-Identifier: MIT
/* stats: percentiles within the histogram's resolution. */
#include "ferry/stats.h"
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

static const struct test_case cases[] = {
	{ "stats_histogram_percentiles", hist_percentiles, 0, 0, 0, 0, 0 },
};

TEST_SUITE(stats, cases)
