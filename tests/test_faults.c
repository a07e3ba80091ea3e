// SPDX-License-Identifier: MIT
/*
 * Fault accounting (seed 000) and the ways ferry installs pages into shared
 * memory: how many page faults each costs.
 */
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/hugetlb.h"
#include "ferry/pagefaults.h"
#include "test.h"

/*
 * Seed 000: the first write to a shared page is one fault, not two.  Before
 * it, the dirty-throttling path returned VM_FAULT_RETRY and every first
 * write faulted twice (the second counted as major, FAULT_FLAG_TRIED).
 */
static enum test_result one_fault_per_first_write(struct test_ctx *ctx)
{
	struct ferry_pagefaults f;
	struct ferry_region *r;
	struct ferry_mem *mem;
	double per_page;

	if (fault_counts_meaningless())
		SKIP(ctx, "%s", fault_counts_meaningless());
	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing, 64 << 20, &r));
	CHECK_OK(ctx, ferry_pagefaults_start(&f, FERRY_PAGEFAULTS_THREAD));
	for (size_t off = 0; off < r->size; off += r->page_size)
		r->guest[off] = 1;
	CHECK_OK(ctx, ferry_pagefaults_stop(&f));
	per_page = ferry_pagefaults_per_page(&f, r->nr_pages);
	CHECK(ctx, per_page >= 0.95 && per_page <= 1.05,
	      "%.3f faults per first write (minor %llu, major %llu, pages "
	      "%zu), want 1", per_page, (unsigned long long)f.minor,
	      (unsigned long long)f.major, r->nr_pages);
	CHECK_EQ(ctx, f.major, 0);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

/* pwrite into the memfd: the receive path's way, < 0.01 faults a page. */
static enum test_result pwrite_install(struct test_ctx *ctx)
{
	size_t chunk = 1 << 20;
	struct ferry_pagefaults f;
	struct ferry_region *r;
	struct ferry_mem *mem;
	uint8_t *buf;
	double per_page;

	if (fault_counts_meaningless())
		SKIP(ctx, "%s", fault_counts_meaningless());
	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing, 128 << 20, &r));
	buf = malloc(chunk);
	CHECK(ctx, buf, "out of memory");
	memset(buf, 0xa5, chunk);
	CHECK_OK(ctx, ferry_pagefaults_start(&f, FERRY_PAGEFAULTS_THREAD));
	for (size_t off = 0; off < r->size; off += chunk)
		if (pwrite(r->memfd, buf, chunk, (off_t)off) != (ssize_t)chunk)
			FAIL(ctx, "pwrite at %zu: %s", off, strerror(errno));
	CHECK_OK(ctx, ferry_pagefaults_stop(&f));
	per_page = ferry_pagefaults_per_page(&f, r->nr_pages);
	CHECK(ctx, per_page < 0.01, "%.4f faults per installed page "
	      "(%llu faults, %zu pages)", per_page,
	      (unsigned long long)(f.minor + f.major), r->nr_pages);
	CHECK_EQ(ctx, r->guest[r->size - 1], 0xa5);
	free(buf);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

/* The counters move: touching anonymous memory is counted, per thread. */
static enum test_result counters_move(struct test_ctx *ctx)
{
	size_t len = 4 << 20;
	struct ferry_pagefaults f;
	uint8_t *p;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ctx, p != MAP_FAILED, "mmap: %s", strerror(errno));
	madvise(p, len, MADV_NOHUGEPAGE);
	CHECK_OK(ctx, ferry_pagefaults_start(&f, FERRY_PAGEFAULTS_PROCESS));
	for (size_t off = 0; off < len; off += 4096)
		p[off] = 1;
	CHECK_OK(ctx, ferry_pagefaults_stop(&f));
	CHECK(ctx, f.minor >= len / 4096, "only %llu minor faults for %zu "
	      "pages", (unsigned long long)f.minor, len / 4096);
	CHECK(ctx, f.vmstat_pgfault >= len / 4096, "vmstat pgfault moved "
	      "%llu", (unsigned long long)f.vmstat_pgfault);
	munmap(p, len);
	return TEST_PASS;
}

/*
 * The hugetlb pool helper puts the pool back exactly as it found it, and
 * changes nothing when enough pages are already free.
 */
static enum test_result hugetlb_pool_restored(struct test_ctx *ctx)
{
	struct ferry_hugetlb_resv resv, inner;
	long total0, free0, total, free_now;
	struct ferry_region *r;
	struct ferry_mem *mem;

	CHECK_OK(ctx, ferry_hugetlb_pool(&total0, &free0));
	CHECK_OK(ctx, ferry_hugetlb_reserve(free0 + 8, &resv));
	CHECK_OK(ctx, ferry_hugetlb_pool(&total, &free_now));
	CHECK(ctx, free_now >= free0 + 8, "pool has %ld free, want %ld",
	      free_now, free0 + 8);
	CHECK_OK(ctx, ferry_hugetlb_reserve(4, &inner));
	CHECK_EQ(ctx, inner.saved_nr_hugepages, -1);
	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, FERRY_BACKING_HUGETLB,
					   4 * FERRY_HUGE_PAGE_SIZE, &r));
	memset(r->guest, 1, r->size);
	ferry_mem_destroy(mem);
	CHECK_OK(ctx, ferry_hugetlb_restore(&inner));
	CHECK_OK(ctx, ferry_hugetlb_restore(&resv));
	CHECK_OK(ctx, ferry_hugetlb_pool(&total, &free_now));
	CHECK_EQ(ctx, total, total0);
	CHECK_EQ(ctx, free_now, free0);
	return TEST_PASS;
}

/* A region bigger than the pool: -ENOMEM naming the sysctl to set. */
static enum test_result hugetlb_too_small(struct test_ctx *ctx)
{
	struct ferry_region *r;
	struct ferry_mem *mem;
	long total, free_now;
	int ret;

	CHECK_OK(ctx, ferry_hugetlb_pool(&total, &free_now));
	CHECK_OK(ctx, ferry_mem_create(&mem));
	ret = ferry_mem_add_region(mem, FERRY_BACKING_HUGETLB,
			(size_t)(free_now + 4) * FERRY_HUGE_PAGE_SIZE, &r);
	CHECK_EQ(ctx, ret, -ENOMEM);
	CHECK(ctx, strstr(ferry_error_msg(), "vm.nr_hugepages"),
	      "reason does not name the sysctl: %s", ferry_error_msg());
	CHECK_EQ(ctx, mem->nr_regions, 0);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "faults_one_per_first_shared_write", one_fault_per_first_write,
	  B_SHMEM | B_HUGETLB, 0, 0, 0, 0 },
	{ "faults_pwrite_install_below_0.01", pwrite_install,
	  B_SHMEM | B_THP, 0, 0, 0, 0 },
	{ "faults_counters_move", counters_move, 0, 0, 0, 0, 0 },
	{ "hugetlb_pool_restored_exactly", hugetlb_pool_restored, 0, 0,
	  NEED_ROOT, 0, 0 },
	{ "hugetlb_pool_too_small_names_sysctl", hugetlb_too_small, 0, 0, 0,
	  0, 0 },
};

TEST_SUITE(faults, cases)
