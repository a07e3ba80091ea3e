// SPDX-License-Identifier: MIT
/*
 * postcopy: the destination's page machinery against a source simulated
 * in this process.  Requests go through a pipe to a "source" thread that
 * answers them; a pusher installs everything owed in the background; vCPU
 * threads read every page through the guest view.  Every page must read
 * back its final contents, faults of both kinds must have been served,
 * and data arriving for a MAPPED page must never overwrite the guest.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/bitmap.h"
#include "pages/postcopy.h"
#include "test.h"

enum kind { K_DATA, K_ZERO, K_NONE };	/* what the source sent before */

struct sim {
	struct postcopy *pc;
	struct ferry_region *r;
	size_t nr;
	uint8_t *final;		/* the source's final memory */
	uint64_t *stale;	/* written after it was sent */
	enum kind *sent;
	int req_pipe[2];
	atomic_int error;
	atomic_bool first_touch_done;	/* vCPU 0 faulted on pages 0 and 4 */
};

static uint8_t byte_of(size_t page, unsigned int version)
{
	return (uint8_t)(page * 13 + version * 101 + 1);
}

static int sim_request(void *arg, unsigned int region, uint64_t page)
{
	struct sim *s = arg;
	uint64_t msg[2] = { region, page };

	return write(s->req_pipe[1], msg, sizeof(msg)) == sizeof(msg) ?
	       0 : -EPIPE;
}

static const struct postcopy_ops sim_ops = { .request = sim_request };

/* The source's final memory holds this page as all zeroes. */
static bool final_is_zero(struct sim *s, size_t p)
{
	return s->final[p * s->r->page_size] == 0;
}

static int install_final(struct sim *s, size_t p)
{
	const void *data = final_is_zero(s, p) ? NULL :
			   s->final + p * s->r->page_size;

	return postcopy_install(s->pc, 0, p, data);
}

/* The source's urgent channel: answer each request. */
static void *source_main(void *arg)
{
	struct sim *s = arg;
	uint64_t msg[2];

	while (read(s->req_pipe[0], msg, sizeof(msg)) == sizeof(msg)) {
		int ret = install_final(s, (size_t)msg[1]);

		if (ret < 0) {
			atomic_store(&s->error, ret);
			break;
		}
	}
	return NULL;
}

/* The source's background push: every owed page, from the far end. */
static void *pusher_main(void *arg)
{
	struct sim *s = arg;

	/* Leave page 0 (stale) and 4 (never sent) to demand faults. */
	while (!atomic_load(&s->first_touch_done))
		usleep(100);
	for (size_t i = 0; i < s->nr; i++) {
		size_t p = s->nr - 1 - i;

		if (!bitmap_test(s->stale, p))
			continue;
		if (i % 8 == 0)
			usleep(50);	/* let the vCPUs fault first */
		if (install_final(s, p) < 0) {
			atomic_store(&s->error, -EIO);
			break;
		}
	}
	return NULL;
}

struct vcpu {
	struct sim *sim;
	pthread_t thread;
	unsigned int seed;
	size_t bad_page;	/* nr when all good */
};

static bool page_ok(struct sim *s, size_t p)
{
	const volatile uint8_t *g = s->r->guest + p * s->r->page_size;
	size_t last = s->r->page_size - 1;
	uint8_t want = s->final[p * s->r->page_size];

	return g[0] == want && g[last] == want;
}

static void *vcpu_main(void *arg)
{
	struct vcpu *v = arg;
	struct sim *s = v->sim;

	v->bad_page = s->nr;
	if (v->seed == 7) {	/* vCPU 0: a minor and a missing fault first */
		if (!page_ok(s, 0) || !page_ok(s, 4)) {
			v->bad_page = page_ok(s, 0) ? 4 : 0;
			atomic_store(&s->first_touch_done, true);
			return NULL;
		}
		atomic_store(&s->first_touch_done, true);
	}
	for (size_t i = 0; i < s->nr; i++) {
		size_t p = (size_t)rand_r(&v->seed) % s->nr;

		if (!page_ok(s, p)) {
			v->bad_page = p;
			break;
		}
	}
	return NULL;
}

/*
 * What the source sent before switchover (data, a zero page, or nothing
 * yet), and what it holds now: every third page was written since (some
 * of those to zeroes), and pages never sent are data or zero.
 */
static int sim_precopy(struct sim *s)
{
	size_t ps = s->r->page_size;
	int ret = 0;

	for (size_t p = 0; p < s->nr && !ret; p++) {
		uint8_t *page = s->final + p * ps;

		s->sent[p] = p % 5 == 4 ? K_NONE : p % 11 == 2 ? K_ZERO : K_DATA;
		memset(page, s->sent[p] == K_ZERO ? 0 : byte_of(p, 0), ps);
		if (s->sent[p] == K_DATA)
			ret = postcopy_store(s->pc, 0, p, 1, page);
		else if (s->sent[p] == K_ZERO)
			ret = postcopy_store(s->pc, 0, p, 1, NULL);
		if (p % 3 == 0 || s->sent[p] == K_NONE)
			memset(page, p % 7 == 3 ? 0 : byte_of(p, 1), ps);
		/* Dirtied since sent, or never sent but no longer a hole. */
		if ((p % 3 == 0 && s->sent[p] != K_NONE) ||
		    (s->sent[p] == K_NONE && page[0]))
			bitmap_set(s->stale, p);
	}
	return ret;
}

/*
 * `prepared`: as a migration does, the threads exist while the pages are
 * stored (postcopy_prepare), and the mapper starts with the vCPUs.
 */
static enum test_result serves_all(struct test_ctx *ctx, bool prepared)
{
	struct sim s = { 0 };
	struct vcpu v[2];
	struct postcopy_stats st;
	pthread_t source, pusher;
	struct ferry_mem *mem;
	struct pollfd pfd;
	uint64_t pmd;

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing,
			test_region_size(ctx->backing, 4096, 32), &s.r));
	s.nr = s.r->nr_pages;
	s.final = malloc(s.r->size);
	s.stale = bitmap_alloc(s.nr);
	s.sent = calloc(s.nr, sizeof(*s.sent));
	CHECK(ctx, s.final && s.stale && s.sent, "out of memory");
	CHECK_EQ(ctx, pipe(s.req_pipe), 0);
	CHECK_OK(ctx, postcopy_create(mem, &s.pc));
	if (prepared)
		CHECK_OK(ctx, postcopy_prepare(s.pc, &sim_ops, &s));
	CHECK_OK(ctx, sim_precopy(&s));
	CHECK_OK(ctx, postcopy_switchover(s.pc, 0, s.stale));
	CHECK_OK(ctx, prepared ? postcopy_start_held(s.pc, &sim_ops, &s) :
			 postcopy_start(s.pc, &sim_ops, &s));
	pthread_create(&source, NULL, source_main, &s);
	for (int i = 0; i < 2; i++) {
		v[i] = (struct vcpu){ .sim = &s, .seed = 7u + (unsigned)i };
		pthread_create(&v[i].thread, NULL, vcpu_main, &v[i]);
	}
	if (prepared)
		postcopy_map_go(s.pc);
	pthread_create(&pusher, NULL, pusher_main, &s);
	for (int i = 0; i < 2; i++)
		pthread_join(v[i].thread, NULL);
	pthread_join(pusher, NULL);
	pfd = (struct pollfd){ .fd = postcopy_done_fd(s.pc), .events = POLLIN };
	CHECK_EQ(ctx, poll(&pfd, 1, 20000), 1);
	for (int i = 0; i < 2; i++)
		CHECK(ctx, v[i].bad_page == s.nr, "vCPU %d read page %zu "
		      "wrong", i, v[i].bad_page);
	for (size_t p = 0; p < s.nr; p++)
		CHECK(ctx, page_ok(&s, p), "page %zu wrong after post-copy", p);
	CHECK_EQ(ctx, postcopy_error(s.pc), 0);
	CHECK_EQ(ctx, atomic_load(&s.error), 0);

	/* The guest owns mapped pages: late data is dropped. */
	s.r->guest[0] = 0xee;
	CHECK_EQ(ctx, postcopy_install(s.pc, 0, 0, s.final), 0);
	CHECK_EQ(ctx, s.r->guest[0], 0xee);

	postcopy_get_stats(s.pc, &st);
	CHECK(ctx, st.minor_faults > 0, "no minor faults served");
	CHECK(ctx, st.missing_faults > 0, "no missing faults served");
	CHECK(ctx, st.dropped >= 1, "duplicate not counted as dropped");
	CHECK_EQ(ctx, postcopy_owed(s.pc, 0), 0);
	CHECK_OK(ctx, postcopy_finish(s.pc));
	if (ctx->backing == FERRY_BACKING_THP) {
		CHECK_OK(ctx, ferry_mem_region_pmd_mapped(s.r, &pmd));
		CHECK(ctx, pmd * 100 >= s.r->size * 95, "only %llu of %zu "
		      "bytes PMD-mapped after post-copy",
		      (unsigned long long)pmd, s.r->size);
	}
	close(s.req_pipe[1]);
	pthread_join(source, NULL);
	close(s.req_pipe[0]);
	postcopy_destroy(s.pc);
	free(s.final);
	free(s.stale);
	free(s.sent);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

static enum test_result postcopy_serves_all(struct test_ctx *ctx)
{
	return serves_all(ctx, false);
}

static enum test_result postcopy_prepared_serves_all(struct test_ctx *ctx)
{
	return serves_all(ctx, true);
}

/*
 * Prepared for a post-copy that never comes (the switchover was in
 * pre-copy): finishing stops the threads and leaves the guest view as it
 * was, its pages read straight from the memfd, no fault asking anything.
 */
static enum test_result postcopy_prepared_unused(struct test_ctx *ctx)
{
	struct ferry_region *r;
	struct ferry_mem *mem;
	struct postcopy *pc;
	struct postcopy_stats st;
	uint8_t page[4096];
	struct sim s = { 0 };

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, FERRY_BACKING_SHMEM, 16 * 4096,
					   &r));
	CHECK_OK(ctx, postcopy_create(mem, &pc));
	CHECK_OK(ctx, postcopy_prepare(pc, &sim_ops, &s));
	CHECK_EQ(ctx, postcopy_prepare(pc, &sim_ops, &s), -EBUSY);
	for (size_t p = 0; p < 8; p++) {
		memset(page, (int)p + 1, sizeof(page));
		CHECK_OK(ctx, postcopy_store(pc, 0, p, 1, page));
	}
	/* Nothing is registered yet: the guest view faults to no one. */
	for (size_t p = 0; p < 16; p++)
		CHECK_EQ(ctx, r->guest[p * 4096 + 7], p < 8 ? p + 1 : 0);
	postcopy_get_stats(pc, &st);
	CHECK_EQ(ctx, st.minor_faults + st.missing_faults, 0);
	CHECK_OK(ctx, postcopy_finish(pc));
	CHECK(ctx, !postcopy_done(pc), "never started, yet done");
	CHECK_EQ(ctx, r->guest[15 * 4096 + 9], 0);
	postcopy_destroy(pc);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

/* Bad page numbers are refused, never written. */
static enum test_result postcopy_refuses_bad_pages(struct test_ctx *ctx)
{
	struct ferry_mem *mem;
	struct ferry_region *r;
	struct postcopy *pc;
	uint8_t page[4096] = { 1 };

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, FERRY_BACKING_SHMEM, 1 << 20,
					   &r));
	CHECK_OK(ctx, postcopy_create(mem, &pc));
	CHECK_EQ(ctx, postcopy_store(pc, 0, r->nr_pages, 1, page), -EINVAL);
	CHECK_EQ(ctx, postcopy_store(pc, 0, r->nr_pages - 1, 2, page),
		 -EINVAL);
	CHECK_EQ(ctx, postcopy_store(pc, 1, 0, 1, page), -EINVAL);
	CHECK_EQ(ctx, postcopy_install(pc, 0, UINT64_MAX, page), -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "outside guest memory"),
	      "reason: %s", ferry_error_msg());
	postcopy_destroy(pc);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

/* ---- across sessions ---------------------------------------------------- */

/* Requests are only counted: no source answers them. */
struct counted {
	atomic_uint asked[64];
};

static int count_request(void *arg, unsigned int region, uint64_t page)
{
	struct counted *c = arg;

	(void)region;
	if (page < 64)
		atomic_fetch_add(&c->asked[page], 1);
	return 0;
}

static const struct postcopy_ops count_ops = { .request = count_request };

struct toucher {
	const volatile uint8_t *p;
	uint8_t seen;
	pthread_t thread;
};

static void *touch_main(void *arg)
{
	struct toucher *t = arg;

	t->seen = *t->p;	/* waits in the kernel while the page is owed */
	return NULL;
}

/* Until `page` was asked for n times (the fault read and handled). */
static bool asked(struct counted *c, size_t page, unsigned int n)
{
	for (int i = 0; i < 2000 && atomic_load(&c->asked[page]) < n; i++)
		usleep(1000);
	return atomic_load(&c->asked[page]) >= n;
}

/*
 * What a new session needs from the page machinery: what is still owed
 * (a faulting vCPU's page included, a page in place not), the requests
 * the lost session never answered asked again, a page asked for on the
 * destination's own account; and, failing closed, a vCPU blocked on an
 * owed page let go.
 */
static enum test_result postcopy_across_sessions(struct test_ctx *ctx)
{
	uint64_t stale = 0xff0f0ULL, owed = 0, map[1];	/* 4-7, 12-19 */
	struct counted c = { 0 };
	struct toucher t[2];
	struct ferry_region *r;
	struct ferry_mem *mem;
	struct postcopy *pc;
	uint8_t page[4096];

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, FERRY_BACKING_SHMEM, 64 * 4096,
					   &r));
	CHECK_OK(ctx, postcopy_create(mem, &pc));
	/* Pages 0-31 came but 16-19; 4-7, 12-15 since dirtied. */
	for (size_t p = 0; p < 32; p++) {
		memset(page, (int)p + 1, sizeof(page));
		if (p < 16 || p > 19)
			CHECK_OK(ctx, postcopy_store(pc, 0, p, 1, page));
	}
	CHECK_OK(ctx, postcopy_switchover(pc, 0, &stale));
	CHECK_OK(ctx, postcopy_start(pc, &count_ops, &c));
	t[0] = (struct toucher){ .p = r->guest + 5 * 4096 };	/* stale */
	pthread_create(&t[0].thread, NULL, touch_main, &t[0]);
	CHECK(ctx, asked(&c, 5, 1), "the fault on page 5 asked nothing");
	CHECK_EQ(ctx, postcopy_owed_map(pc, 0, map), 12);
	CHECK(ctx, map[0] == stale, "owed %#llx, want %#llx",
	      (unsigned long long)map[0], (unsigned long long)stale);
	/* The new session: what was asked and not answered, again. */
	CHECK_OK(ctx, postcopy_rerequest(pc));
	CHECK(ctx, asked(&c, 5, 2), "page 5 not asked again");
	CHECK_EQ(ctx, atomic_load(&c.asked[6]), 0);
	/* Asked on our own account (its copy failed): owed pages only. */
	CHECK_OK(ctx, postcopy_request(pc, 0, 17));
	CHECK_OK(ctx, postcopy_request(pc, 0, 2));	/* PRESENT: not owed */
	CHECK_EQ(ctx, atomic_load(&c.asked[17]), 1);
	CHECK_EQ(ctx, atomic_load(&c.asked[2]), 0);
	/* Page 5 comes: the vCPU reads it, it is owed no more. */
	memset(page, 0x55, sizeof(page));
	CHECK_EQ(ctx, postcopy_install(pc, 0, 5, page), 1);
	pthread_join(t[0].thread, NULL);
	CHECK_EQ(ctx, t[0].seen, 0x55);
	CHECK_EQ(ctx, postcopy_owed_map(pc, 0, map), 11);
	owed = stale & ~(1ULL << 5);
	CHECK_EQ(ctx, map[0], owed);
	/* Failing closed: a vCPU on an owed page gets what the memfd has. */
	t[1] = (struct toucher){ .p = r->guest + 13 * 4096 };
	pthread_create(&t[1].thread, NULL, touch_main, &t[1]);
	CHECK(ctx, asked(&c, 13, 1), "the fault on page 13 asked nothing");
	postcopy_release(pc);
	pthread_join(t[1].thread, NULL);
	CHECK_EQ(ctx, t[1].seen, 14);		/* the copy before switchover */
	CHECK_OK(ctx, postcopy_finish(pc));
	postcopy_destroy(pc);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "postcopy_serves_minor_and_missing", postcopy_serves_all, B_ALL, 0,
	  NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
	{ "postcopy_prepared_serves_all", postcopy_prepared_serves_all, B_ALL,
	  0, NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
	{ "postcopy_prepared_unused", postcopy_prepared_unused, B_SHMEM, 0,
	  NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
	{ "postcopy_refuses_bad_pages", postcopy_refuses_bad_pages, 0, 0, 0,
	  0, 0 },
	{ "postcopy_across_sessions", postcopy_across_sessions, B_SHMEM, 0,
	  NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 30 },
};

TEST_SUITE(postcopy, cases)
