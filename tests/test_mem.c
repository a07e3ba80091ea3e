// SPDX-License-Identifier: MIT
/* Guest memory: two views of one memfd, lookups, teardown. */
#include <stdlib.h>
#include <fcntl.h>
#include <sys/mman.h>
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
	CHECK_EQ(ctx, r->page_size, ferry_mem_backing_page_size(ctx->backing));
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

/* Populated pages are found without reading (or allocating) holes. */
static enum test_result populated_pages(struct test_ctx *ctx)
{
	struct ferry_region *r;
	struct ferry_mem *mem;
	uint64_t *map;
	size_t want = 0;

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing,
			test_region_size(ctx->backing, 300, 12), &r));
	map = calloc((r->nr_pages + 63) / 64, 8);
	CHECK(ctx, map, "out of memory");
	CHECK_EQ(ctx, ferry_mem_region_populated(r, map), 0);
	for (size_t p = 0; p < r->nr_pages; p++)
		if (p % 5 == 1 || p == r->nr_pages - 1) {
			r->guest[p * r->page_size + 1] = 1;
			want++;
		}
	CHECK_EQ(ctx, ferry_mem_region_populated(r, map), want);
	for (size_t p = 0; p < r->nr_pages; p++)
		CHECK_EQ(ctx, map[p / 64] >> (p % 64) & 1,
			 p % 5 == 1 || p == r->nr_pages - 1);
	/* Asking did not populate anything. */
	memset(map, 0, (r->nr_pages + 63) / 64 * 8);
	CHECK_EQ(ctx, ferry_mem_region_populated(r, map), want);
	free(map);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

/* A VMM's own memfd: checked for its kind and size, then used as is. */
static enum test_result own_memfd(struct test_ctx *ctx)
{
	struct ferry_region *r;
	struct ferry_mem *mem;
	int fd = memfd_create("vmm-ram", MFD_CLOEXEC);

	CHECK(ctx, fd >= 0, "memfd_create: %s", strerror(errno));
	CHECK_EQ(ctx, ftruncate(fd, 4 << 20), 0);
	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_EQ(ctx, ferry_mem_add_region_fd(mem, fd, FERRY_BACKING_HUGETLB,
					      4 << 20, &r), -EINVAL);
	CHECK_EQ(ctx, ferry_mem_add_region_fd(mem, fd, FERRY_BACKING_SHMEM,
					      8 << 20, &r), -EINVAL);
	CHECK_OK(ctx, ferry_mem_add_region_fd(mem, fd, FERRY_BACKING_SHMEM,
					      4 << 20, &r));
	CHECK_EQ(ctx, pwrite(fd, "x", 1, 4096), 1);
	CHECK_EQ(ctx, r->guest[4096], 'x');
	ferry_mem_destroy(mem);
	CHECK_EQ(ctx, fcntl(fd, F_GETFD) >= 0, 1);	/* still ours */
	close(fd);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "mem_two_views", two_views, B_ALL, 0, 0, 0, 0 },
	{ "mem_populated_without_reading", populated_pages, B_ALL, 0, 0, 0, 0 },
	{ "mem_own_memfd", own_memfd, 0, 0, 0, 0, 0 },
};

TEST_SUITE(mem, cases)
