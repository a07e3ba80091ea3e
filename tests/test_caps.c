// SPDX-License-Identifier: MIT
/* caps: doctor's verdicts agree with what the kernel really does. */
#include "ferry/caps.h"
#include "test.h"

static enum test_result caps_agree_with_uffd(struct test_ctx *ctx)
{
	struct ferry_caps caps;
	uint64_t f;

	CHECK_OK(ctx, ferry_caps_probe(&caps));
	f = caps.uffd->features;
	CHECK(ctx, caps.kernel[0], "no kernel release");
	CHECK_EQ(ctx, caps.cap[FERRY_CAP_POSTCOPY_SHMEM].ok,
		 !caps.uffd->open_err &&
		 (f & FERRY_UFFD_F_MINOR_SHMEM) &&
		 (f & FERRY_UFFD_F_MISSING_SHMEM));
	CHECK_EQ(ctx, caps.cap[FERRY_CAP_DIRTY_TRACKING].ok,
		 !caps.uffd->open_err && (f & FERRY_UFFD_F_WP_ASYNC) &&
		 (f & FERRY_UFFD_F_WP_UNPOPULATED) && caps.uffd->pagemap_scan);
	for (int i = 0; i < FERRY_CAP_COUNT; i++)
		CHECK(ctx, caps.cap[i].ok || caps.cap[i].fix[0],
		      "%s is missing but says nothing to change",
		      ferry_caps_name((enum ferry_cap)i));
	return TEST_PASS;
}

/* THP: after MADV_COLLAPSE the whole guest view is PMD-mapped. */
static enum test_result collapse_gives_pmds(struct test_ctx *ctx)
{
	struct ferry_region *r;
	struct ferry_mem *mem;
	uint64_t pmd;

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing, 8 << 20, &r));
	for (size_t off = 0; off < r->size; off += 4096)
		r->alias[off] = 3;
	for (size_t off = 0; off < r->size; off += 4096)
		CHECK_EQ(ctx, r->guest[off], 3);
	CHECK_OK(ctx, ferry_mem_region_collapse(r));
	CHECK_OK(ctx, ferry_mem_region_pmd_mapped(r, &pmd));
	CHECK_EQ(ctx, pmd, r->size);
	CHECK_EQ(ctx, r->guest[r->size - 4096], 3);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "caps_agree_with_uffd_probe", caps_agree_with_uffd, 0, 0, 0, 0, 0 },
	{ "mem_collapse_gives_pmd_mappings", collapse_gives_pmds,
	  B_THP | B_HUGETLB, 0, 0, 0, 0 },
};

TEST_SUITE(caps, cases)
