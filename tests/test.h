/* SPDX-License-Identifier: MIT */
#ifndef FERRY_TEST_H
#define FERRY_TEST_H

/*
 * The test runner.  Each tests/test_<module>.c holds a table of cases and
 * registers it with TEST_SUITE(); the runner crosses each case with the
 * memory backings it declares, probes the kernel once, skips a case with
 * its reason when a feature is missing, and runs each (case, backing) in a
 * forked child with a time limit.
 *
 * A case returns TEST_PASS, or fails/skips through the macros below, which
 * record a reason (with file:line for failures) and return.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/mem.h"
#include "ferry/uffd.h"

enum test_result { TEST_PASS = 0, TEST_FAIL = 1, TEST_SKIP = 2 };

/* Backing masks for .backings; 0 means "not about memory": run once. */
#define B_SHMEM		(1U << FERRY_BACKING_SHMEM)
#define B_THP		(1U << FERRY_BACKING_THP)
#define B_HUGETLB	(1U << FERRY_BACKING_HUGETLB)
#define B_ALL		(B_SHMEM | B_THP | B_HUGETLB)

/* Other needs, checked by the runner before forking. */
#define NEED_ROOT	(1U << 0)
#define NEED_NETNS	(1U << 1)	/* ip netns, veth, tc netem */
#define NEED_PAGEMAP_SCAN (1U << 2)
/* userfaultfd modes on this case's backing (features differ per backing). */
#define NEED_UFFD_MISSING (1U << 3)
#define NEED_UFFD_MINOR	(1U << 4)
#define NEED_UFFD_WP	(1U << 5)

struct test_ctx {
	enum ferry_backing backing;	/* meaningful when the case has backings */
	const char *name;
	char reason[512];
};

struct test_case {
	const char *name;
	enum test_result (*fn)(struct test_ctx *ctx);
	unsigned int backings;		/* B_* mask, 0: once, no backing */
	uint64_t uffd_features;		/* FERRY_UFFD_F_* the case needs */
	unsigned int needs;		/* NEED_* */
	unsigned int hugetlb_pages;	/* pool pages for [hugetlb]; 0 -> 64 */
	unsigned int timeout_s;		/* 0 -> 60 */
};

void test_register_suite(const char *suite, const struct test_case *cases,
			 unsigned int nr);

#define TEST_SUITE(suite, table)					\
	__attribute__((constructor)) static void register_##suite(void)	\
	{								\
		test_register_suite(#suite, table,			\
				    sizeof(table) / sizeof(table[0]));	\
	}

enum test_result test_fail_at(struct test_ctx *ctx, const char *file,
			      int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
enum test_result test_skip(struct test_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define FAIL(ctx, ...) return test_fail_at(ctx, __FILE__, __LINE__, __VA_ARGS__)
#define SKIP(ctx, ...) return test_skip(ctx, __VA_ARGS__)

/* CHECK(ctx, cond, "what went wrong %d", x) */
#define CHECK(ctx, cond, ...)						\
	do {								\
		if (!(cond))						\
			FAIL(ctx, __VA_ARGS__);				\
	} while (0)

/* A ferry call that must return 0 (or >= 0); fails with its errmsg. */
#define CHECK_OK(ctx, call)						\
	do {								\
		long long _r = (long long)(call);			\
		if (_r < 0)						\
			FAIL(ctx, "%s = %lld (%s): %s", #call, _r,	\
			     strerror((int)-_r), ferry_error_msg());	\
	} while (0)

/* A ferry call that must return exactly `want`. */
#define CHECK_EQ(ctx, got, want)					\
	do {								\
		long long _g = (long long)(got), _w = (long long)(want); \
		if (_g != _w)						\
			FAIL(ctx, "%s = %lld, want %lld", #got, _g, _w); \
	} while (0)

/*
 * Under AddressSanitizer every first touch of a page also touches its
 * shadow, so page-fault counts say nothing about ferry: cases that count
 * faults skip there, with this reason.
 */
static inline const char *fault_counts_meaningless(void)
{
#if defined(__SANITIZE_ADDRESS__)
	return "AddressSanitizer's shadow memory takes page faults of its own";
#else
	return NULL;
#endif
}

/* The ferry tool beside the test runner (build/ferry): 0, or -1. */
int test_ferry_binary(char *path, size_t len);

/* Region size suited to a backing: some 4 KiB pages, or a few huge pages. */
size_t test_region_size(enum ferry_backing backing, size_t pages_4k,
			size_t pages_2m);

#endif
