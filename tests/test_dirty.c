// SPDX-License-Identifier: MIT
/* dirty: exactly the written pages come back, and are protected again. */
#include <stdlib.h>

#include "base/bitmap.h"
#include "ferry/dirty.h"
#include "test.h"

static ssize_t collect(struct ferry_dirty *d, uint64_t *map, size_t bits)
{
	memset(map, 0, bitmap_words(bits) * 8);
	return ferry_dirty_collect(d, 0, map);
}

static enum test_result written_pages_exactly(struct test_ctx *ctx)
{
	struct ferry_dirty *d;
	struct ferry_region *r;
	struct ferry_mem *mem;
	uint64_t *map;
	size_t n;

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing,
			test_region_size(ctx->backing, 1024, 16), &r));
	n = r->nr_pages;
	/* Half the pages exist before tracking starts, half are holes. */
	for (size_t p = 0; p < n; p += 2)
		r->alias[p * r->page_size] = 1;
	map = bitmap_alloc(n);
	CHECK(ctx, map, "out of memory");
	CHECK_OK(ctx, ferry_dirty_start(mem, &d));
	CHECK_EQ(ctx, collect(d, map, n), 0);
	/* Reads (of pages and of holes) are not writes. */
	for (size_t p = 0; p < n; p++)
		(void)*(volatile uint8_t *)(r->guest + p * r->page_size);
	CHECK_EQ(ctx, collect(d, map, n), 0);
	/* Write every third page: existing ones and holes alike. */
	for (size_t p = 0; p < n; p += 3)
		r->guest[p * r->page_size + 17] = 2;
	CHECK_EQ(ctx, collect(d, map, n), (n + 2) / 3);
	for (size_t p = 0; p < n; p++)
		CHECK_EQ(ctx, bitmap_test(map, p), p % 3 == 0);
	/* Collected pages are protected again: nothing new until written. */
	CHECK_EQ(ctx, collect(d, map, n), 0);
	r->guest[(n - 1) * r->page_size] = 3;
	CHECK_EQ(ctx, collect(d, map, n), 1);
	CHECK(ctx, bitmap_test(map, n - 1), "last page not reported");
	/* Writes through the alias are ferry's own: never reported. */
	r->alias[r->page_size] = 4;
	CHECK_EQ(ctx, collect(d, map, n), 0);
	/* The guest's next write to it is, like a write into a hole far
	 * from any page that exists. */
	r->guest[r->page_size + 5] = 5;
	r->guest[5 * r->page_size] = 6;	/* odd, not a third */
	CHECK_EQ(ctx, collect(d, map, n), 2);
	CHECK(ctx, bitmap_test(map, 1) && bitmap_test(map, 5),
	      "writes after the alias's, or into a lone hole, not reported");
	ferry_dirty_stop(d);
	free(map);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

static ssize_t peek(struct ferry_dirty *d, unsigned int idx, uint64_t *map,
		    size_t bits)
{
	memset(map, 0, bitmap_words(bits) * 8);
	return ferry_dirty_peek(d, idx, map);
}

/* Pages [0, count) of region idx, or all of it (count 0). */
static ssize_t collect_some(struct ferry_dirty *d, unsigned int idx,
			    uint64_t *map, size_t bits, size_t count)
{
	memset(map, 0, bitmap_words(bits) * 8);
	return count ? ferry_dirty_collect_range(d, idx, 0, count, map) :
		       ferry_dirty_collect(d, idx, map);
}

/*
 * Region 0 is mostly holes (on shmem its data extents are looked up),
 * region 1 mostly data (walked whole): each one's written pages, and only
 * those, whichever way it is walked; a peek protects none of them again,
 * a collect over half the region only that half's.
 */
static enum test_result peek_region(struct test_ctx *ctx, struct ferry_dirty *d,
				    struct ferry_region *r, unsigned int idx,
				    size_t step)
{
	size_t n = r->nr_pages, written = 0, first_half = 0;
	uint64_t *map = bitmap_alloc(n);

	CHECK(ctx, map, "out of memory");
	for (size_t p = 0; p < n; p += step, written++)
		r->guest[p * r->page_size + 9] = 7;
	/* The last page: a hole in region 0, far from any data. */
	r->guest[(n - 1) * r->page_size] = 8;
	written += (n - 1) % step != 0;
	for (size_t p = 0; p < n / 2; p += step)
		first_half++;
	CHECK_EQ(ctx, peek(d, idx, map, n), (ssize_t)written);
	for (size_t p = 0; p < n; p++)
		CHECK_EQ(ctx, bitmap_test(map, p),
			 p % step == 0 || p == n - 1);
	/* Nothing was protected again: the same pages, again. */
	CHECK_EQ(ctx, peek(d, idx, map, n), (ssize_t)written);
	CHECK_EQ(ctx, collect_some(d, idx, map, n, n / 2),
		 (ssize_t)first_half);
	CHECK_EQ(ctx, collect_some(d, idx, map, n, n / 2), 0);
	CHECK_EQ(ctx, peek(d, idx, map, n), (ssize_t)(written - first_half));
	CHECK_EQ(ctx, collect_some(d, idx, map, n, 0),
		 (ssize_t)(written - first_half));
	CHECK_EQ(ctx, peek(d, idx, map, n), 0);
	free(map);
	return TEST_PASS;
}

static enum test_result peek_protects_nothing(struct test_ctx *ctx)
{
	struct ferry_region *sparse, *dense;
	struct ferry_dirty *d;
	struct ferry_mem *mem;
	enum test_result res;

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing,
			test_region_size(ctx->backing, 4096, 32), NULL));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing,
			test_region_size(ctx->backing, 256, 8), NULL));
	sparse = &mem->regions[0];
	dense = &mem->regions[1];
	/* 4 pages of data in region 0, all of region 1. */
	for (size_t p = 0; p < 4; p++)
		sparse->alias[p * sparse->page_size] = 1;
	memset(dense->alias, 1, dense->size);
	CHECK_OK(ctx, ferry_dirty_start(mem, &d));
	res = peek_region(ctx, d, sparse, 0, 1024);
	if (res == TEST_PASS)
		res = peek_region(ctx, d, dense, 1, 5);
	ferry_dirty_stop(d);
	ferry_mem_destroy(mem);
	return res;
}

static const struct test_case cases[] = {
	{ "dirty_reports_written_pages_exactly", written_pages_exactly, B_ALL,
	  FERRY_UFFD_F_WP_ASYNC | FERRY_UFFD_F_WP_UNPOPULATED,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 0, 0 },
	{ "dirty_peek_protects_nothing", peek_protects_nothing, B_ALL,
	  FERRY_UFFD_F_WP_ASYNC | FERRY_UFFD_F_WP_UNPOPULATED,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 0, 0 },
};

TEST_SUITE(dirty, cases)
