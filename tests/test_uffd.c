// SPDX-License-Identifier: MIT
/*
 * userfaultfd layer: the minor-fault seed's selftest on every backing, and
 * the interaction rules from its cover letter as this kernel reports them
 * through ferry's wrappers.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "test.h"

/*
 * A fault-handling thread: polls the uffd together with an eventfd that
 * stops it, and hands each page-fault message to `handle`.
 */
struct handler {
	struct ferry_uffd *uffd;
	struct ferry_region *region;
	int stop_fd;
	pthread_t thread;
	int (*handle)(struct handler *h, const struct uffd_msg *msg);
	atomic_ulong minor, missing, wp;	/* written by the handler */
	atomic_int error;			/* first -errno it hit */
};

static void handler_count(struct handler *h, const struct uffd_msg *msg)
{
	switch (ferry_uffd_fault_kind(msg)) {
	case FERRY_FAULT_MINOR:
		atomic_fetch_add(&h->minor, 1);
		break;
	case FERRY_FAULT_MISSING:
		atomic_fetch_add(&h->missing, 1);
		break;
	case FERRY_FAULT_WP:
		atomic_fetch_add(&h->wp, 1);
		break;
	}
}

static int handler_drain(struct handler *h)
{
	struct uffd_msg msgs[16];
	ssize_t n = ferry_uffd_read(h->uffd, msgs, 16);

	if (n == -EAGAIN)
		return 0;
	if (n < 0)
		return (int)n;
	for (ssize_t i = 0; i < n; i++) {
		int ret;

		if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
			return -EPROTO;
		handler_count(h, &msgs[i]);
		ret = h->handle(h, &msgs[i]);
		if (ret)
			return ret;
	}
	return 0;
}

static void *handler_main(void *arg)
{
	struct handler *h = arg;
	struct pollfd pfd[2] = {
		{ .fd = h->uffd->fd, .events = POLLIN },
		{ .fd = h->stop_fd, .events = POLLIN },
	};

	for (;;) {
		if (poll(pfd, 2, -1) < 0 && errno != EINTR) {
			atomic_store(&h->error, -errno);
			break;
		}
		if (pfd[1].revents)
			break;
		if (pfd[0].revents) {
			int ret = handler_drain(h);

			if (ret) {
				atomic_store(&h->error, ret);
				break;
			}
		}
	}
	return NULL;
}

static int handler_start(struct handler *h)
{
	h->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (h->stop_fd < 0)
		return -errno;
	return -pthread_create(&h->thread, NULL, handler_main, h);
}

static void handler_stop(struct handler *h)
{
	uint64_t one = 1;

	if (write(h->stop_fd, &one, sizeof(one)) != sizeof(one))
		abort();
	pthread_join(h->thread, NULL);
	close(h->stop_fd);
}

static uint8_t *fault_page(struct handler *h, const struct uffd_msg *msg)
{
	uintptr_t addr = (uintptr_t)msg->arg.pagefault.address;

	return (uint8_t *)(addr & ~(uintptr_t)(h->region->page_size - 1));
}

/* The seed's handler: flip every byte through the alias, then CONTINUE. */
static int flip_and_continue(struct handler *h, const struct uffd_msg *msg)
{
	struct ferry_region *r = h->region;
	uint8_t *page = fault_page(h, msg);
	uint8_t *alias = r->alias + (page - r->guest);
	ssize_t n;

	if (ferry_uffd_fault_kind(msg) != FERRY_FAULT_MINOR)
		return -EPROTO;
	for (size_t i = 0; i < r->page_size; i++)
		alias[i] = (uint8_t)~alias[i];
	n = ferry_uffd_continue(h->uffd, page, r->page_size, 0);
	if (n == -EEXIST)	/* another thread's fault mapped it first */
		return 0;
	return n == (ssize_t)r->page_size ? 0 : (n < 0 ? (int)n : -EIO);
}

static bool is_hugetlb(const struct test_ctx *ctx)
{
	return ctx->backing == FERRY_BACKING_HUGETLB;
}

static int open_for(struct test_ctx *ctx, struct ferry_uffd *u,
		    uint64_t modes)
{
	return ferry_uffd_open(u, ferry_uffd_features_for(is_hugetlb(ctx),
							  modes), 0, false);
}

static uint8_t pattern(size_t page, size_t i)
{
	return (uint8_t)(page * 31 + i * 7 + 1);
}

/*
 * The seed's selftest: fill every page through the alias, register the
 * guest view MINOR, read through the guest view while the handler flips
 * every byte and CONTINUEs; every page reads back flipped, and there were
 * exactly nr_pages minor faults and no missing ones.
 */
static enum test_result seed_minor(struct test_ctx *ctx)
{
	struct handler h = { 0 };
	struct ferry_uffd u;
	struct ferry_region *r;
	struct ferry_mem *mem;
	uint64_t ioctls;

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing,
			test_region_size(ctx->backing, 1024, 16), &r));
	for (size_t p = 0; p < r->nr_pages; p++)
		for (size_t i = 0; i < r->page_size; i++)
			r->alias[p * r->page_size + i] = pattern(p, i);
	CHECK_OK(ctx, open_for(ctx, &u, FERRY_UFFD_MINOR));
	CHECK_OK(ctx, ferry_uffd_register(&u, r->guest, r->size,
					  FERRY_UFFD_MINOR, &ioctls));
	CHECK(ctx, ioctls & (1ULL << _UFFDIO_CONTINUE),
	      "MINOR range without CONTINUE in ioctls %#llx",
	      (unsigned long long)ioctls);
	h.uffd = &u;
	h.region = r;
	h.handle = flip_and_continue;
	CHECK_OK(ctx, handler_start(&h));
	for (size_t p = 0; p < r->nr_pages; p++) {
		const volatile uint8_t *g = r->guest + p * r->page_size;

		for (size_t i = 0; i < r->page_size; i++) {
			uint8_t want = pattern(p, i) ^ 0xff, got = g[i];

			if (got != want) {
				handler_stop(&h);
				FAIL(ctx, "page %zu byte %zu = %#x, want %#x",
				     p, i, got, want);
			}
		}
	}
	handler_stop(&h);
	CHECK_EQ(ctx, atomic_load(&h.error), 0);
	CHECK_EQ(ctx, atomic_load(&h.minor), r->nr_pages);
	CHECK_EQ(ctx, atomic_load(&h.missing), 0);
	ferry_uffd_close(&u);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

/* Missing faults get a COPY of a known pattern; minor ones a CONTINUE. */
static int copy_or_continue(struct handler *h, const struct uffd_msg *msg)
{
	struct ferry_region *r = h->region;
	uint8_t *page = fault_page(h, msg);
	size_t p = (size_t)(page - r->guest) / r->page_size;
	ssize_t n;

	if (ferry_uffd_fault_kind(msg) == FERRY_FAULT_MINOR) {
		n = ferry_uffd_continue(h->uffd, page, r->page_size, 0);
	} else {
		uint8_t *buf = malloc(r->page_size);

		if (!buf)
			return -ENOMEM;
		for (size_t i = 0; i < r->page_size; i++)
			buf[i] = pattern(p, i);
		n = ferry_uffd_copy(h->uffd, page, buf, r->page_size, 0);
		free(buf);
	}
	if (n == -EEXIST)
		return 0;
	return n == (ssize_t)r->page_size ? 0 : (n < 0 ? (int)n : -EIO);
}

/*
 * MISSING and MINOR together: a never-filled page faults as missing, a
 * filled one as minor, and the flags say which.
 */
static enum test_result missing_and_minor(struct test_ctx *ctx)
{
	struct handler h = { 0 };
	struct ferry_uffd u;
	struct ferry_region *r;
	struct ferry_mem *mem;
	size_t filled = 0;

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing,
			test_region_size(ctx->backing, 256, 8), &r));
	for (size_t p = 0; p < r->nr_pages; p += 2, filled++)
		for (size_t i = 0; i < r->page_size; i++)
			r->alias[p * r->page_size + i] = pattern(p, i);
	CHECK_OK(ctx, open_for(ctx, &u, FERRY_UFFD_MISSING | FERRY_UFFD_MINOR));
	CHECK_OK(ctx, ferry_uffd_register(&u, r->guest, r->size,
				FERRY_UFFD_MISSING | FERRY_UFFD_MINOR, NULL));
	h.uffd = &u;
	h.region = r;
	h.handle = copy_or_continue;
	CHECK_OK(ctx, handler_start(&h));
	for (size_t p = 0; p < r->nr_pages; p++) {
		const volatile uint8_t *g = r->guest + p * r->page_size;
		size_t last = r->page_size - 1;

		if (g[0] != pattern(p, 0) || g[last] != pattern(p, last)) {
			handler_stop(&h);
			FAIL(ctx, "page %zu has the wrong contents", p);
		}
	}
	handler_stop(&h);
	CHECK_EQ(ctx, atomic_load(&h.error), 0);
	CHECK_EQ(ctx, atomic_load(&h.minor), filled);
	CHECK_EQ(ctx, atomic_load(&h.missing), r->nr_pages - filled);
	ferry_uffd_close(&u);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

struct registered {
	struct ferry_mem *mem;
	struct ferry_region *r;
	struct ferry_uffd u;
	uint64_t ioctls;
};

static int setup_registered(struct test_ctx *ctx, struct registered *s,
			    uint64_t modes, size_t pages)
{
	size_t size = pages * ferry_mem_backing_page_size(ctx->backing);
	int ret = ferry_mem_create(&s->mem);

	if (!ret)
		ret = ferry_mem_add_region(s->mem, ctx->backing, size, &s->r);
	if (!ret)
		ret = open_for(ctx, &s->u, modes);
	if (!ret)
		ret = ferry_uffd_register(&s->u, s->r->guest, s->r->size,
					  modes, &s->ioctls);
	return ret;
}

static void teardown_registered(struct registered *s)
{
	ferry_uffd_close(&s->u);
	ferry_mem_destroy(s->mem);
}

/*
 * CONTINUE where the file has no page.  The seed: -EINVAL on shmem and
 * -EFAULT on hugetlb; kernels since 5.19 report -EFAULT for both, which is
 * what ferry passes on, unchanged.
 */
static enum test_result continue_no_page(struct test_ctx *ctx)
{
	struct registered s;
	ssize_t n;

	CHECK_OK(ctx, setup_registered(ctx, &s, FERRY_UFFD_MINOR, 4));
	n = ferry_uffd_continue(&s.u, s.r->guest, s.r->page_size, 0);
	CHECK_EQ(ctx, n, -EFAULT);
	teardown_registered(&s);
	return TEST_PASS;
}

/* COPY over a page the file already holds: -EEXIST, never "done". */
static enum test_result copy_over_existing(struct test_ctx *ctx)
{
	struct registered s;
	uint8_t *buf;
	ssize_t n;

	CHECK_OK(ctx, setup_registered(ctx, &s, FERRY_UFFD_MINOR |
					      FERRY_UFFD_MISSING, 4));
	buf = calloc(1, s.r->page_size);
	CHECK(ctx, buf, "out of memory");
	s.r->alias[0] = 0x5a;
	n = ferry_uffd_copy(&s.u, s.r->guest, buf, s.r->page_size, 0);
	CHECK_EQ(ctx, n, -EEXIST);
	CHECK_EQ(ctx, s.r->alias[0], 0x5a);
	free(buf);
	teardown_registered(&s);
	return TEST_PASS;
}

/*
 * A range whose third page exists: COPY installs the first two and returns
 * their count (the kernel says -EAGAIN with a partial count); the call for
 * the rest reports -EEXIST.
 */
static enum test_result copy_partial(struct test_ctx *ctx)
{
	struct registered s;
	size_t ps;
	uint8_t *buf;
	ssize_t n;

	CHECK_OK(ctx, setup_registered(ctx, &s, FERRY_UFFD_MISSING, 4));
	ps = s.r->page_size;
	buf = malloc(4 * ps);
	CHECK(ctx, buf, "out of memory");
	memset(buf, 0x11, 4 * ps);
	s.r->alias[2 * ps] = 0x22;
	n = ferry_uffd_copy(&s.u, s.r->guest, buf, 4 * ps, 0);
	CHECK_EQ(ctx, n, 2 * ps);
	CHECK_EQ(ctx, s.r->guest[ps], 0x11);
	n = ferry_uffd_copy(&s.u, s.r->guest + n, buf, 2 * ps, 0);
	CHECK_EQ(ctx, n, -EEXIST);
	CHECK_EQ(ctx, s.r->guest[2 * ps], 0x22);
	free(buf);
	teardown_registered(&s);
	return TEST_PASS;
}

/* hugetlb has no ZEROPAGE: not offered at registration, -EINVAL if tried. */
static enum test_result zeropage_hugetlb(struct test_ctx *ctx)
{
	struct registered s;
	ssize_t n;

	CHECK_OK(ctx, setup_registered(ctx, &s, FERRY_UFFD_MISSING, 2));
	CHECK(ctx, !(s.ioctls & (1ULL << _UFFDIO_ZEROPAGE)),
	      "hugetlb range offers ZEROPAGE: ioctls %#llx",
	      (unsigned long long)s.ioctls);
	n = ferry_uffd_zeropage(&s.u, s.r->guest, s.r->page_size, 0);
	CHECK_EQ(ctx, n, -EINVAL);
	teardown_registered(&s);
	return TEST_PASS;
}

/* ZEROPAGE where the file has a page (a minor fault's page): -EEXIST. */
static enum test_result zeropage_over_existing(struct test_ctx *ctx)
{
	struct registered s;

	CHECK_OK(ctx, setup_registered(ctx, &s, FERRY_UFFD_MINOR |
					      FERRY_UFFD_MISSING, 4));
	s.r->alias[0] = 0x77;
	CHECK_EQ(ctx, ferry_uffd_zeropage(&s.u, s.r->guest, 4096, 0),
		 -EEXIST);
	CHECK_EQ(ctx, s.r->alias[0], 0x77);
	teardown_registered(&s);
	return TEST_PASS;
}

/* MINOR on private anonymous memory: refused at registration. */
static enum test_result minor_on_anon(struct test_ctx *ctx)
{
	size_t len = 16 * 4096;
	struct ferry_uffd u;
	void *p;
	int ret;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ctx, p != MAP_FAILED, "mmap: %s", strerror(errno));
	CHECK_OK(ctx, ferry_uffd_open(&u, FERRY_UFFD_F_MINOR_SHMEM, 0, false));
	ret = ferry_uffd_register(&u, p, len, FERRY_UFFD_MINOR, NULL);
	CHECK_EQ(ctx, ret, -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "MINOR"),
	      "reason does not name the mode: %s", ferry_error_msg());
	/* MISSING on the same memory is fine: the refusal is about MINOR. */
	CHECK_OK(ctx, ferry_uffd_register(&u, p, len, FERRY_UFFD_MISSING,
					  NULL));
	ferry_uffd_close(&u);
	munmap(p, len);
	return TEST_PASS;
}

/* CONTINUE is offered only on MINOR ranges (the seed's v1 fix). */
static enum test_result continue_only_minor(struct test_ctx *ctx)
{
	struct registered s;

	CHECK_OK(ctx, setup_registered(ctx, &s, FERRY_UFFD_MISSING, 2));
	CHECK(ctx, !(s.ioctls & (1ULL << _UFFDIO_CONTINUE)),
	      "MISSING-only range offers CONTINUE: %#llx",
	      (unsigned long long)s.ioctls);
	CHECK(ctx, s.ioctls & (1ULL << _UFFDIO_COPY), "no COPY offered");
	teardown_registered(&s);
	return TEST_PASS;
}

/* A feature the kernel lacks is refused by name. */
static enum test_result open_names_missing(struct test_ctx *ctx)
{
	struct ferry_uffd u;
	uint64_t unknown = 1ULL << 62;
	int ret = ferry_uffd_open(&u, unknown, 0, false);

	CHECK_EQ(ctx, ret, -EOPNOTSUPP);
	CHECK(ctx, strstr(ferry_error_msg(), "lacks"), "reason: %s",
	      ferry_error_msg());
	CHECK_EQ(ctx, u.fd, -1);
	CHECK(ctx, strcmp(ferry_uffd_feature_name(FERRY_UFFD_F_WP_ASYNC),
			  "WP_ASYNC") == 0, "feature name table");
	return TEST_PASS;
}

/* Many messages per read: fault from several threads, read them at once. */
struct toucher {
	volatile uint8_t *addr;
	pthread_t thread;
};

static void *touch_main(void *arg)
{
	struct toucher *t = arg;

	(void)t->addr[0];
	return NULL;
}

static enum test_result read_many(struct test_ctx *ctx)
{
	struct toucher t[4];
	struct uffd_msg msgs[8];
	struct registered s;
	ssize_t got = 0, n;
	uint8_t *buf;

	CHECK_OK(ctx, setup_registered(ctx, &s, FERRY_UFFD_MISSING, 4));
	for (int i = 0; i < 4; i++) {
		t[i].addr = s.r->guest + (size_t)i * s.r->page_size;
		CHECK_EQ(ctx, pthread_create(&t[i].thread, NULL, touch_main,
					     &t[i]), 0);
	}
	for (int tries = 0; got < 4 && tries < 2000; tries++) {
		struct pollfd pfd = { .fd = s.u.fd, .events = POLLIN };

		poll(&pfd, 1, 10);
		usleep(2000);	/* let the other faults queue up */
		n = ferry_uffd_read(&s.u, msgs + got, 8 - (size_t)got);
		if (n > 0)
			got += n;
		else
			CHECK_EQ(ctx, n, -EAGAIN);
	}
	CHECK_EQ(ctx, got, 4);
	buf = calloc(4, s.r->page_size);
	CHECK(ctx, buf, "out of memory");
	CHECK_EQ(ctx, ferry_uffd_copy(&s.u, s.r->guest, buf,
				      4 * s.r->page_size, 0),
		 4 * s.r->page_size);
	free(buf);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i].thread, NULL);
	CHECK_EQ(ctx, ferry_uffd_read(&s.u, msgs, 8), -EAGAIN);
	teardown_registered(&s);
	return TEST_PASS;
}

/* DONTWAKE leaves the thread asleep until an explicit WAKE. */
static enum test_result dontwake_then_wake(struct test_ctx *ctx)
{
	struct registered s;
	struct uffd_msg msg;
	struct toucher t;
	struct pollfd pfd;
	uint8_t *buf;

	CHECK_OK(ctx, setup_registered(ctx, &s, FERRY_UFFD_MISSING, 1));
	buf = calloc(1, s.r->page_size);
	CHECK(ctx, buf, "out of memory");
	buf[0] = 9;
	t.addr = s.r->guest;
	CHECK_EQ(ctx, pthread_create(&t.thread, NULL, touch_main, &t), 0);
	pfd = (struct pollfd){ .fd = s.u.fd, .events = POLLIN };
	CHECK_EQ(ctx, poll(&pfd, 1, 5000), 1);
	CHECK_EQ(ctx, ferry_uffd_read(&s.u, &msg, 1), 1);
	CHECK_EQ(ctx, ferry_uffd_copy(&s.u, s.r->guest, buf, s.r->page_size,
				      FERRY_UFFD_DONTWAKE), s.r->page_size);
	CHECK_OK(ctx, ferry_uffd_wake(&s.u, s.r->guest, s.r->page_size));
	pthread_join(t.thread, NULL);
	CHECK_EQ(ctx, s.r->alias[0], 9);
	free(buf);
	teardown_registered(&s);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "uffd_seed_minor_selftest", seed_minor, B_ALL, 0,
	  NEED_UFFD_MINOR, 0, 0 },
	{ "uffd_missing_and_minor", missing_and_minor, B_ALL, 0,
	  NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
	{ "uffd_continue_without_page", continue_no_page, B_ALL, 0,
	  NEED_UFFD_MINOR, 0, 0 },
	{ "uffd_copy_over_existing_eexist", copy_over_existing, B_ALL, 0,
	  NEED_UFFD_MINOR | NEED_UFFD_MISSING, 0, 0 },
	{ "uffd_copy_partial_count", copy_partial, B_ALL, 0,
	  NEED_UFFD_MISSING, 0, 0 },
	{ "uffd_zeropage_hugetlb_einval", zeropage_hugetlb, B_HUGETLB, 0,
	  NEED_UFFD_MISSING, 0, 0 },
	{ "uffd_zeropage_over_existing", zeropage_over_existing,
	  B_SHMEM | B_THP, 0, NEED_UFFD_MINOR | NEED_UFFD_MISSING, 0, 0 },
	{ "uffd_minor_on_private_anon_refused", minor_on_anon, 0,
	  FERRY_UFFD_F_MINOR_SHMEM, 0, 0, 0 },
	{ "uffd_continue_only_on_minor", continue_only_minor, B_ALL, 0,
	  NEED_UFFD_MISSING, 0, 0 },
	{ "uffd_open_names_missing_feature", open_names_missing, 0,
	  FERRY_UFFD_F_MISSING_SHMEM, 0, 0, 0 },
	{ "uffd_read_many_messages", read_many, B_SHMEM | B_HUGETLB, 0,
	  NEED_UFFD_MISSING, 0, 0 },
	{ "uffd_dontwake_then_wake", dontwake_then_wake, B_SHMEM | B_HUGETLB,
	  0, NEED_UFFD_MISSING, 0, 0 },
};

TEST_SUITE(uffd, cases)
