// SPDX-License-Identifier: MIT
/* Guest memory: two views of one memfd, lookups, teardown. */
#include <stdlib.h>
#include <unistd.h>

#include "test.h"

static enum test_result two_views(struct test_ctx *ctx)
{
	struct ferry_region *r;
	struct ferry_mem *mem;
	size_t size = test_region_size(ctx->backing, 64, 4);

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing, size, &r));
	CHECK_EQ(ctx, r->size, size);
	CHECK_EQ(ctx, r->page_size, ferry_backing_page_size(ctx->backing));
	CHECK(ctx, (uintptr_t)r->guest % r->page_size == 0, "guest unaligned");
	for (size_t off = 0; off < size; off += r->page_size)
		r->alias[off] = (uint8_t)(off / r->page_size + 1);
	for (size_t off = 0; off < size; off += r->page_size)
		CHECK_EQ(ctx, r->guest[off], (uint8_t)(off / r->page_size + 1));
	CHECK(ctx, ferry_mem_find(mem, r->guest + size - 1) == r, "find end");
	CHECK(ctx, ferry_mem_find(mem, r->guest + size) == NULL, "find past");
	CHECK(ctx, ferry_mem_find_alias(mem, r->alias) == r, "find alias");
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "mem_two_views", two_views, B_ALL, 0, 0, 0, 0 },
};

TEST_SUITE(mem, cases)
