// SPDX-License-Identifier: MIT
/* postcopy: the destination's page states, fault service and installs. */
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "pages/postcopy.h"
#include "base/sys.h"

static struct ferry_region *region_of(struct postcopy *pc, unsigned int idx)
{
	return &pc->mem->regions[idx];
}

static size_t total_pages(const struct ferry_mem *mem)
{
	size_t n = 0;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		n += mem->regions[i].nr_pages;
	return n;
}

static int alloc_tables(struct postcopy *pc)
{
	unsigned int n = pc->mem->nr_regions;

	pc->states = calloc(n ? n : 1, sizeof(*pc->states));
	pc->owed = calloc(n ? n : 1, sizeof(*pc->owed));
	pc->requested = calloc(n ? n : 1, sizeof(*pc->requested));
	pc->fault_us = calloc(n ? n : 1, sizeof(*pc->fault_us));
	if (!pc->states || !pc->owed || !pc->requested || !pc->fault_us)
		return -ENOMEM;
	for (unsigned int i = 0; i < n; i++) {
		size_t pages = region_of(pc, i)->nr_pages;

		if (pagestate_init(&pc->states[i], pages))
			return -ENOMEM;
		pc->owed[i] = bitmap_alloc(pages);
		pc->requested[i] = sys_zalloc((bitmap_words(pages) + 1) *
					      sizeof(*pc->requested[i]));
		pc->fault_us[i] = sys_zalloc(pages *
					     sizeof(*pc->fault_us[i]));
		if (!pc->owed[i] || !pc->requested[i] || !pc->fault_us[i])
			return -ENOMEM;
	}
	return 0;
}

int postcopy_create(struct ferry_mem *mem, struct postcopy **out)
{
	struct postcopy *pc = calloc(1, sizeof(*pc));

	if (!pc)
		return ferry_fail(-ENOMEM, "out of memory");
	pc->mem = mem;
	pc->uffd.fd = -1;
	pc->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pc->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pc->zero_page = sys_zalloc_aligned(4096, FERRY_HUGE_PAGE_SIZE);
	atomic_init(&pc->owed_left, 0);
	ferry_hist_init(&pc->fault_latency);
	if (pc->stop_fd < 0 || pc->done_fd < 0 || !pc->zero_page ||
	    alloc_tables(pc)) {
		postcopy_destroy(pc);
		return ferry_fail(-ENOMEM, "post-copy state for %zu pages",
				  total_pages(mem));
	}
	*out = pc;
	return 0;
}

void postcopy_destroy(struct postcopy *pc)
{
	if (!pc)
		return;
	postcopy_finish(pc);
	for (unsigned int i = 0; pc->states && i < pc->mem->nr_regions; i++) {
		pagestate_fini(&pc->states[i]);
		if (pc->owed)
			free(pc->owed[i]);
		if (pc->requested)
			free(pc->requested[i]);
		if (pc->fault_us)
			free(pc->fault_us[i]);
	}
	free(pc->states);
	free(pc->owed);
	free(pc->requested);
	free(pc->fault_us);
	free(pc->zero_page);
	if (pc->stop_fd >= 0)
		close(pc->stop_fd);
	if (pc->done_fd >= 0)
		close(pc->done_fd);
	free(pc);
}

static int check_page(struct postcopy *pc, unsigned int region,
		      uint64_t page)
{
	if (region >= pc->mem->nr_regions ||
	    page >= region_of(pc, region)->nr_pages)
		return ferry_fail(-EINVAL, "page %llu of region %u is outside "
				  "guest memory", (unsigned long long)page,
				  region);
	return 0;
}

/*
 * Write pages' contents without faulting: pwrite into the memfd for shmem;
 * hugetlbfs has no write(), so a copy through the alias there (one fault
 * per 2 MiB page at most).  data NULL: zeroes, one page.
 */
static int write_pages(struct postcopy *pc, struct ferry_region *r,
		       uint64_t first, uint64_t count, const void *data)
{
	size_t off = (size_t)first * r->page_size, done = 0;
	size_t len = (size_t)count * r->page_size;
	const uint8_t *src = data ? data : pc->zero_page;

	if (r->backing == FERRY_BACKING_HUGETLB) {
		memcpy(r->alias + off, src, len);
		return 0;
	}
	while (done < len) {
		ssize_t n = sys_pwrite(r->memfd, src + done, len - done,
				       (off_t)(off + done));

		if (n == -EINTR)
			continue;
		if (n <= 0)
			return ferry_fail(n ? (int)n : -EIO, "writing page %llu "
					  "into the memfd: %s",
					  (unsigned long long)first,
					  strerror(n ? (int)-n : EIO));
		done += (size_t)n;
	}
	return 0;
}

static int write_page(struct postcopy *pc, struct ferry_region *r,
		      uint64_t page, const void *data)
{
	return write_pages(pc, r, page, 1, data);
}

static int check_run(struct postcopy *pc, unsigned int region,
		     uint64_t first, uint64_t count)
{
	int ret = check_page(pc, region, first);

	if (!ret && (count == 0 ||
		     count > region_of(pc, region)->nr_pages - first))
		ret = ferry_fail(-EINVAL, "pages %llu+%llu of region %u are "
				 "outside guest memory",
				 (unsigned long long)first,
				 (unsigned long long)count, region);
	return ret;
}

/* Claim every page of a run before switchover; undo on a busy one. */
static int claim_store_run(struct postcopy *pc, unsigned int region,
			   uint64_t first, uint64_t count,
			   enum page_state *was)
{
	for (uint64_t i = 0; i < count; i++) {
		if (pagestate_claim_writable(&pc->states[region], first + i,
					     &was[i]))
			continue;
		while (i--)
			pagestate_release(&pc->states[region], first + i,
					  was[i]);
		return ferry_fail(-EINVAL, "page %llu is busy or mapped: "
				  "stored after switchover",
				  (unsigned long long)(first + i));
	}
	return 0;
}

/*
 * A zero page punches the page out of the memfd if it had data, so a
 * sparse guest stays sparse.
 */
static int store_zero(struct ferry_region *r,
		      uint64_t first, uint64_t count, const enum page_state *was)
{
	int ret = 0;

	for (uint64_t i = 0; i < count && !ret; i++)
		if (was[i] != PAGE_MISSING)
			ret = ferry_region_punch(r, (size_t)(first + i) *
						 r->page_size, r->page_size);
	return ret;
}

#define STORE_RUN_MAX 512

int postcopy_store(struct postcopy *pc, unsigned int region, uint64_t first,
		   uint64_t count, const void *data)
{
	enum page_state was[STORE_RUN_MAX];
	struct ferry_region *r;
	int ret = check_run(pc, region, first, count);

	if (!ret && count > STORE_RUN_MAX)
		ret = ferry_fail(-EINVAL, "a run of %llu pages: at most %d",
				 (unsigned long long)count, STORE_RUN_MAX);
	if (!ret)
		ret = claim_store_run(pc, region, first, count, was);
	if (ret)
		return ret;
	r = region_of(pc, region);
	ret = data ? write_pages(pc, r, first, count, data) :
		     store_zero(r, first, count, was);
	for (uint64_t i = 0; i < count; i++)
		pagestate_release(&pc->states[region], first + i,
				  ret ? was[i] : PAGE_PRESENT);
	return ret;
}

/*
 * Pages in `owed` are owed by the source.  With `stale`, those already
 * PRESENT become STALE; without, none may be PRESENT, and no page state
 * is looked at: work in proportion to the bitmap's words only.
 */
static int owe(struct postcopy *pc, unsigned int region,
	       const uint64_t *owed, bool stale)
{
	struct pagestate *ps;

	if (region >= pc->mem->nr_regions)
		return ferry_fail(-EINVAL, "no region %u", region);
	ps = &pc->states[region];
	for (size_t w = 0; w < bitmap_words(ps->nr_pages); w++) {
		uint64_t bits = owed[w];

		if (w == bitmap_words(ps->nr_pages) - 1 && ps->nr_pages % 64)
			bits &= (1ULL << (ps->nr_pages % 64)) - 1;
		if (!bits)
			continue;
		atomic_fetch_add(&pc->owed_left, (size_t)__builtin_popcountll(
					 bits & ~pc->owed[region][w]));
		pc->owed[region][w] |= bits;
		while (stale && bits) {
			size_t page = w * 64 + (size_t)__builtin_ctzll(bits);

			bits &= bits - 1;
			if (pagestate_claim(ps, page, PAGE_PRESENT))
				pagestate_release(ps, page, PAGE_STALE);
		}
	}
	return 0;
}

/*
 * In the downtime: the work is proportional to the stale set (and a scan
 * of its words), never to guest memory.  A MISSING page that is not owed
 * is a hole on the source too; nothing is done for it now: the fault
 * thread and the mapper treat it as final (see is_hole).
 */
int postcopy_switchover(struct postcopy *pc, unsigned int region,
			const uint64_t *stale)
{
	return owe(pc, region, stale, true);
}

int postcopy_owe(struct postcopy *pc, unsigned int region,
		 const uint64_t *owed)
{
	return owe(pc, region, owed, false);
}

/* A never-received page the source does not owe: a hole, final as is. */
static bool is_hole(const struct postcopy *pc, unsigned int region,
		    uint64_t page)
{
	return !bitmap_test(pc->owed[region], page);
}

static void signal_done(struct postcopy *pc)
{
	uint64_t one = 1;

	if (write(pc->done_fd, &one, sizeof(one)) < 0)
		abort();	/* an eventfd write cannot fail here */
}

static void page_mapped(struct postcopy *pc, unsigned int region,
			uint64_t page)
{
	pagestate_release(&pc->states[region], page, PAGE_MAPPED);
}

/*
 * An owed page is in place.  When the last one is, post-copy is done:
 * every page left unmapped is PRESENT (its memfd page is right) or a hole,
 * so the guest may fault on them without ferry.
 */
static void owed_mapped(struct postcopy *pc, unsigned int region,
			uint64_t page)
{
	page_mapped(pc, region, page);
	if (atomic_fetch_sub(&pc->owed_left, 1) == 1)
		signal_done(pc);
}

/*
 * Map one page into the guest view.  A page the memfd holds is
 * CONTINUEd; a hole (a missing fault on a page whose final contents are
 * zero) gets a zero page.  -EEXIST means it is mapped already: fine.
 */
static int map_page(struct postcopy *pc, struct ferry_region *r,
		    uint64_t page, bool hole)
{
	uint8_t *addr = r->guest + (size_t)page * r->page_size;
	ssize_t n;

	if (!hole)
		n = ferry_uffd_continue(&pc->uffd, addr, r->page_size, 0);
	else if (r->backing == FERRY_BACKING_HUGETLB)
		n = ferry_uffd_copy(&pc->uffd, addr, pc->zero_page,
				    r->page_size, 0);
	else
		n = ferry_uffd_zeropage(&pc->uffd, addr, r->page_size, 0);
	if (n == (ssize_t)r->page_size || n == -EEXIST)
		return 0;
	if (n >= 0)
		n = -EIO;
	return ferry_fail((int)n, "mapping page %llu: %s",
			  (unsigned long long)page, strerror((int)-n));
}

static bool was_requested(struct postcopy *pc, unsigned int region,
			  uint64_t page)
{
	return atomic_load_explicit(&pc->requested[region][page / 64],
				    memory_order_acquire) >> (page % 64) & 1;
}

static void record_latency(struct postcopy *pc, unsigned int region,
			   uint64_t page)
{
	uint64_t now_us, t0;

	if (!was_requested(pc, region, page))
		return;
	t0 = atomic_load_explicit(&pc->fault_us[region][page],
				  memory_order_relaxed);
	now_us = (ferry_now_ns() - pc->start_ns) / 1000;
	ferry_hist_record(&pc->fault_latency, (now_us - t0) * 1000);
}

int postcopy_install(struct postcopy *pc, unsigned int region,
		     uint64_t page, const void *data)
{
	struct ferry_region *r;
	enum page_state was;
	bool hole;
	int ret = check_page(pc, region, page);

	if (ret)
		return ret;
	r = region_of(pc, region);
	if (!pagestate_claim_writable(&pc->states[region], page, &was)) {
		atomic_fetch_add_explicit(&pc->dropped, 1,
					  memory_order_relaxed);
		return 0;
	}
	/* Zero data for a never-received page: leave the hole a hole. */
	hole = !data && was == PAGE_MISSING;
	ret = hole ? 0 : write_page(pc, r, page, data);
	if (!ret && (!hole || was_requested(pc, region, page)))
		ret = map_page(pc, r, page, hole);
	if (ret) {
		pagestate_release(&pc->states[region], page, was);
		return ret;
	}
	record_latency(pc, region, page);
	if (was == PAGE_STALE || (was == PAGE_MISSING &&
				  !is_hole(pc, region, page)))
		owed_mapped(pc, region, page);
	else
		page_mapped(pc, region, page);
	if (hole)	/* a vCPU that faulted meanwhile retries, sees MAPPED */
		ferry_uffd_wake(&pc->uffd, r->guest +
				(size_t)page * r->page_size, r->page_size);
	atomic_fetch_add_explicit(&pc->installed, 1, memory_order_relaxed);
	return 1;
}

static int request_once(struct postcopy *pc, unsigned int region,
			uint64_t page)
{
	uint64_t bit = 1ULL << (page % 64);
	uint32_t now_us = (uint32_t)((ferry_now_ns() - pc->start_ns) / 1000);

	/* The time goes in first, so whoever sees the bit sees the time. */
	if (was_requested(pc, region, page))
		return 0;
	atomic_store_explicit(&pc->fault_us[region][page], now_us,
			      memory_order_relaxed);
	if (atomic_fetch_or_explicit(&pc->requested[region][page / 64], bit,
				     memory_order_acq_rel) & bit)
		return 0;
	atomic_fetch_add_explicit(&pc->requests, 1, memory_order_relaxed);
	return pc->ops->request(pc->ops_arg, region, page);
}

static int handle_fault(struct postcopy *pc, const struct uffd_msg *msg)
{
	void *addr = (void *)(uintptr_t)msg->arg.pagefault.address;
	struct ferry_region *r = ferry_mem_find(pc->mem, addr);
	bool missing = ferry_uffd_fault_kind(msg) == FERRY_FAULT_MISSING;
	unsigned int idx;
	uint64_t page;

	if (!r)
		return ferry_fail(-EFAULT, "fault at %p outside guest memory",
				  addr);
	idx = (unsigned int)(r - pc->mem->regions);
	page = (uint64_t)((uint8_t *)addr - r->guest) / r->page_size;
	atomic_fetch_add_explicit(missing ? &pc->missing_faults :
				  &pc->minor_faults, 1, memory_order_relaxed);
	for (;;) {
		switch (pagestate_get(&pc->states[idx], page)) {
		case PAGE_PRESENT:
			if (!pagestate_claim(&pc->states[idx], page,
					     PAGE_PRESENT))
				continue;
			if (map_page(pc, r, page, missing)) {
				pagestate_release(&pc->states[idx], page,
						  PAGE_PRESENT);
				return -EIO;
			}
			atomic_fetch_add_explicit(&pc->local_maps, 1,
						  memory_order_relaxed);
			page_mapped(pc, idx, page);
			return 0;
		case PAGE_MAPPED:
			return map_page(pc, r, page, missing);
		case PAGE_BUSY:		/* its owner's CONTINUE wakes us */
			return 0;
		case PAGE_MISSING:
			if (!is_hole(pc, idx, page))
				return request_once(pc, idx, page);
			if (!pagestate_claim(&pc->states[idx], page,
					     PAGE_MISSING))
				continue;
			if (map_page(pc, r, page, true)) {
				pagestate_release(&pc->states[idx], page,
						  PAGE_MISSING);
				return -EIO;
			}
			page_mapped(pc, idx, page);
			return 0;
		default:		/* STALE */
			return request_once(pc, idx, page);
		}
	}
}

static int drain_faults(struct postcopy *pc)
{
	struct uffd_msg msgs[64];
	ssize_t n = ferry_uffd_read(&pc->uffd, msgs, 64);

	if (n == -EAGAIN)
		return 0;
	if (n < 0)
		return ferry_fail((int)n, "reading userfaultfd: %s",
				  strerror((int)-n));
	for (ssize_t i = 0; i < n; i++) {
		int ret;

		if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
			continue;
		ret = handle_fault(pc, &msgs[i]);
		if (ret)
			return ret;
	}
	return 0;
}

static void set_error(struct postcopy *pc, int err)
{
	int none = 0;

	atomic_compare_exchange_strong(&pc->error, &none, err);
}

static void *fault_main(void *arg)
{
	struct postcopy *pc = arg;
	struct pollfd pfd[2] = {
		{ .fd = pc->uffd.fd, .events = POLLIN },
		{ .fd = pc->stop_fd, .events = POLLIN },
	};

	sys_thread_boost(SYS_BOOST_URGENT);
	for (;;) {
		int ret = poll(pfd, 2, -1);

		if (ret < 0 && errno == EINTR)
			continue;
		if (ret < 0 || pfd[1].revents)
			break;
		ret = drain_faults(pc);
		if (ret) {
			set_error(pc, ret);
			break;
		}
	}
	return NULL;
}

static bool stop_requested(struct postcopy *pc)
{
	struct pollfd pfd = { .fd = pc->stop_fd, .events = POLLIN };

	return poll(&pfd, 1, 0) > 0;
}

/* Claim a run of PRESENT pages from `page`; returns its length. */
static size_t claim_run(struct pagestate *ps, size_t page, size_t max)
{
	size_t n = 0;

	while (n < max && page + n < ps->nr_pages &&
	       pagestate_claim(ps, page + n, PAGE_PRESENT))
		n++;
	return n;
}

/*
 * Holes (MISSING, not owed) from `page` become MAPPED with nothing mapped
 * and nothing allocated: a sparse guest stays sparse.  A vCPU that faulted
 * on one meanwhile saw it MISSING and got a zero page, or saw it BUSY and
 * waits for the wake below; either way it retries and finds it final.
 */
static size_t map_holes(struct postcopy *pc, unsigned int idx, size_t page)
{
	struct pagestate *ps = &pc->states[idx];
	struct ferry_region *r = region_of(pc, idx);
	size_t n = 0;

	while (page + n < ps->nr_pages && is_hole(pc, idx, page + n) &&
	       pagestate_claim(ps, page + n, PAGE_MISSING)) {
		page_mapped(pc, idx, page + n);
		n++;
	}
	if (n)
		ferry_uffd_wake(&pc->uffd, r->guest + page * r->page_size,
				n * r->page_size);
	return n;
}

/*
 * CONTINUE a claimed run.  A page the memfd does not hold (a zero page,
 * kept a hole) stops the kernel with -EFAULT: it is final as it is, so it
 * becomes MAPPED unmapped, and a later touch gets a zero page.
 */
static int map_run(struct postcopy *pc, unsigned int idx, size_t page,
		   size_t count)
{
	struct ferry_region *r = region_of(pc, idx);
	size_t done = 0;

	while (done < count) {
		uint8_t *addr = r->guest + (page + done) * r->page_size;
		ssize_t n = ferry_uffd_continue(&pc->uffd, addr,
				(count - done) * r->page_size, 0);
		size_t pages = n > 0 ? (size_t)n / r->page_size : 0;

		if (n < 0 && n != -EFAULT && n != -EEXIST)
			return ferry_fail((int)n, "bulk CONTINUE: %s",
					  strerror((int)-n));
		if (n < 0)	/* this page: a hole, or mapped already */
			pages = 1;
		for (size_t i = 0; i < pages; i++)
			page_mapped(pc, idx, page + done + i);
		/*
		 * A vCPU that faulted on the hole while we held it BUSY was
		 * left asleep for us to wake (the fault thread saw BUSY and
		 * did nothing); CONTINUE failed there, so it woke no one.
		 * Woken, it faults again and gets a zero page.
		 */
		if (n < 0)
			ferry_uffd_wake(&pc->uffd, addr, r->page_size);
		atomic_fetch_add_explicit(&pc->bulk_mapped, pages,
					  memory_order_relaxed);
		done += pages;
	}
	return 0;
}

#define MAPPER_RUN 512

static void *mapper_main(void *arg)
{
	struct postcopy *pc = arg;

	sys_thread_boost(SYS_BOOST_BULK);
	for (unsigned int idx = 0; idx < pc->mem->nr_regions; idx++) {
		struct pagestate *ps = &pc->states[idx];

		for (size_t page = 0; page < ps->nr_pages; page++) {
			size_t n;
			int ret;

			/*
			 * An owed page is neither PRESENT nor a hole: nothing
			 * for the mapper.  Skip 64 at a time (owed is
			 * read-only once started), so a restore owing a
			 * whole guest does not cost a sweep of it.
			 */
			if (page % 64 == 0 && pc->owed[idx][page / 64] == ~0ULL) {
				page += 63;
				continue;
			}
			n = claim_run(ps, page, MAPPER_RUN);
			if (!n) {
				n = map_holes(pc, idx, page);
				page += n ? n - 1 : 0;
				continue;
			}
			ret = map_run(pc, idx, page, n);
			if (ret) {
				set_error(pc, ret);
				return NULL;
			}
			page += n - 1;
			if (stop_requested(pc))
				return NULL;
		}
	}
	return NULL;
}

static uint64_t features_needed(const struct ferry_mem *mem)
{
	uint64_t f = 0, modes = FERRY_UFFD_MISSING | FERRY_UFFD_MINOR;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		f |= ferry_uffd_features_for(
			mem->regions[i].backing == FERRY_BACKING_HUGETLB, modes);
	return f;
}

static int register_all(struct postcopy *pc)
{
	int ret = ferry_uffd_open(&pc->uffd, features_needed(pc->mem), 0,
				  false);

	for (unsigned int i = 0; !ret && i < pc->mem->nr_regions; i++) {
		struct ferry_region *r = region_of(pc, i);

		ret = ferry_uffd_register(&pc->uffd, r->guest, r->size,
					  FERRY_UFFD_MISSING | FERRY_UFFD_MINOR,
					  NULL);
	}
	if (ret)
		ferry_uffd_close(&pc->uffd);
	return ret;
}

int postcopy_start(struct postcopy *pc, const struct postcopy_ops *ops,
		   void *arg)
{
	int ret;

	if (pc->started)
		return ferry_fail(-EBUSY, "post-copy already started");
	pc->ops = ops;
	pc->ops_arg = arg;
	pc->start_ns = ferry_now_ns();
	ret = register_all(pc);
	if (ret)
		return ferry_fail_ctx(ret, "post-copy");
	ret = -pthread_create(&pc->fault_thread, NULL, fault_main, pc);
	if (ret)
		goto err_close_uffd;
	ret = -pthread_create(&pc->mapper_thread, NULL, mapper_main, pc);
	if (ret)
		goto err_stop_fault;
	pc->started = true;
	if (atomic_load(&pc->owed_left) == 0)
		signal_done(pc);
	return 0;

err_stop_fault:
	{
		uint64_t one = 1;

		if (write(pc->stop_fd, &one, sizeof(one)) < 0)
			abort();
		pthread_join(pc->fault_thread, NULL);
	}
err_close_uffd:
	ferry_uffd_close(&pc->uffd);
	return ferry_fail(ret, "starting post-copy threads: %s",
			  strerror(-ret));
}

int postcopy_done_fd(const struct postcopy *pc)
{
	return pc->done_fd;
}

bool postcopy_done(const struct postcopy *pc)
{
	return pc->started && atomic_load(&pc->owed_left) == 0;
}

int postcopy_error(const struct postcopy *pc)
{
	return atomic_load(&pc->error);
}

int postcopy_finish(struct postcopy *pc)
{
	uint64_t one = 1;
	int ret = 0;

	if (!pc->started)
		return 0;
	if (write(pc->stop_fd, &one, sizeof(one)) < 0)
		abort();
	pthread_join(pc->fault_thread, NULL);
	pthread_join(pc->mapper_thread, NULL);
	for (unsigned int i = 0; i < pc->mem->nr_regions; i++) {
		struct ferry_region *r = region_of(pc, i);

		ferry_uffd_unregister(&pc->uffd, r->guest, r->size);
	}
	ferry_uffd_close(&pc->uffd);
	pc->started = false;
	/*
	 * Huge mappings back, best effort: a page the guest keeps busy stays
	 * 4 KiB-mapped (khugepaged may take it later); the guest is whole
	 * either way, and the PMD-mapped share is reported.
	 */
	for (unsigned int i = 0; i < pc->mem->nr_regions; i++) {
		int err = ferry_region_collapse(region_of(pc, i));

		if (err && err != -EAGAIN && err != -EOPNOTSUPP && !ret)
			ret = err;
	}
	return ret;
}

void postcopy_get_stats(const struct postcopy *pc, struct postcopy_stats *s)
{
	s->minor_faults = atomic_load(&pc->minor_faults);
	s->missing_faults = atomic_load(&pc->missing_faults);
	s->requests = atomic_load(&pc->requests);
	s->local_maps = atomic_load(&pc->local_maps);
	s->bulk_mapped = atomic_load(&pc->bulk_mapped);
	s->installed = atomic_load(&pc->installed);
	s->dropped = atomic_load(&pc->dropped);
}

size_t postcopy_owed(const struct postcopy *pc, unsigned int region)
{
	const struct pagestate *ps = &pc->states[region];

	size_t owed = pagestate_count(ps, PAGE_STALE);

	for (size_t p = 0; p < ps->nr_pages; p++)
		owed += pagestate_get(ps, p) == PAGE_MISSING &&
			!is_hole(pc, region, p);
	return owed;
}
