// SPDX-License-Identifier: MIT
/* postcopy: the destination's page states, fault service and installs. */
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/io.h"
#include "base/sys.h"
#include "base/thread.h"
#include "ferry/clock.h"
#include "pages/postcopy.h"

static const struct faultsvc_ops fault_ops;
static const struct mapper_policy map_policy;

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
	int ret;

	if (!pc)
		return ferry_fail(-ENOMEM, "out of memory");
	pc->mem = mem;
	pc->done_fd = evfd_open();
	atomic_init(&pc->owed_left, 0);
	ferry_hist_init(&pc->fault_latency);
	mapper_init(&pc->mapper, &pc->um, &map_policy, pc);
	/* Each keeps its own errno: EMFILE is not ENOMEM. */
	ret = pc->done_fd < 0 ? ferry_fail(pc->done_fd, "eventfd: %s",
					   strerror(-pc->done_fd)) : 0;
	if (!ret)
		ret = uffdmem_init(&pc->um, mem);
	if (!ret)
		ret = faultsvc_create(&fault_ops, pc, &pc->svc);
	if (!ret && alloc_tables(pc))
		ret = ferry_fail(-ENOMEM, "post-copy state for %zu pages",
				 total_pages(mem));
	if (ret) {
		postcopy_destroy(pc);
		return ret;
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
	faultsvc_destroy(pc->svc);
	mapper_fini(&pc->mapper);
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
static int write_pages(struct ferry_region *r, uint64_t first,
		       uint64_t count, const void *data)
{
	size_t off = (size_t)first * r->page_size;
	size_t len = (size_t)count * r->page_size;
	const void *src = data ? data : uffdmem_zeroes();
	int ret;

	if (r->backing == FERRY_BACKING_HUGETLB) {
		memcpy(r->alias + off, src, len);
		return 0;
	}
	ret = io_pwrite_full(r->memfd, src, len, (off_t)(r->offset + off));
	if (ret)
		return ferry_fail(ret, "writing page %llu into the memfd: %s",
				  (unsigned long long)first, strerror(-ret));
	return 0;
}

static int write_page(struct ferry_region *r, uint64_t page,
		      const void *data)
{
	return write_pages(r, page, 1, data);
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
			ret = ferry_mem_region_punch(r, (size_t)(first + i) *
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
	ret = data ? write_pages(r, first, count, data) :
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
		evfd_signal(pc->done_fd);
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
	now_us = (ferry_clock_now_ns() - pc->start_ns) / 1000;
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
	ret = hole ? 0 : write_page(r, page, data);
	if (!ret && (!hole || was_requested(pc, region, page)))
		ret = uffdmem_map_page(&pc->um, region, page, hole);
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
		ferry_uffd_wake(&pc->um.uffd, uffdmem_addr(&pc->um, region,
							   page),
				r->page_size);
	atomic_fetch_add_explicit(&pc->installed, 1, memory_order_relaxed);
	return 1;
}

/*
 * Ask for a page: once (a fault), or again (its copy failed its check, or
 * a new session must hear the request the old one lost).
 */
static int request_page(struct postcopy *pc, unsigned int region,
			uint64_t page, bool again)
{
	uint64_t bit = 1ULL << (page % 64);
	uint32_t now_us = (uint32_t)((ferry_clock_now_ns() - pc->start_ns) / 1000);
	bool first;

	/* The time goes in first, so whoever sees the bit sees the time. */
	if (!again && was_requested(pc, region, page))
		return 0;
	if (!was_requested(pc, region, page))
		atomic_store_explicit(&pc->fault_us[region][page], now_us,
				      memory_order_relaxed);
	first = !(atomic_fetch_or_explicit(&pc->requested[region][page / 64],
					   bit, memory_order_acq_rel) & bit);
	if (!first && !again)
		return 0;
	if (first)
		atomic_fetch_add_explicit(&pc->requests, 1,
					  memory_order_relaxed);
	return pc->ops->request(pc->ops_arg, region, page);
}

static int request_once(struct postcopy *pc, unsigned int region,
			uint64_t page)
{
	return request_page(pc, region, page, false);
}

/* Claim a page in state `from` and map it; false if it changed first. */
static bool map_claimed(struct postcopy *pc, unsigned int idx, uint64_t page,
			enum page_state from, bool hole, int *ret)
{
	if (!pagestate_claim(&pc->states[idx], page, from))
		return false;
	*ret = uffdmem_map_page(&pc->um, idx, page, hole);
	pagestate_release(&pc->states[idx], page, *ret ? from : PAGE_MAPPED);
	return true;
}

/*
 * Failing closed (postcopy_release): whatever the memfd holds, so the
 * vCPU that waits can finish its access and park.
 */
static int release_page(struct postcopy *pc, unsigned int idx, uint64_t page,
			bool missing)
{
	int ret = 0;

	for (;;) {
		enum page_state st = pagestate_get(&pc->states[idx], page);

		if (st == PAGE_BUSY)	/* its owner's CONTINUE wakes it */
			return 0;
		if (st == PAGE_MAPPED)	/* as handle_fault() does */
			return uffdmem_map_page(&pc->um, idx, page, missing);
		if (map_claimed(pc, idx, page, st, st == PAGE_MISSING, &ret))
			return ret;
	}
}

/* A page fault, on the fault thread (faultsvc_ops). */
static int handle_fault(void *arg, const struct uffd_msg *msg)
{
	struct postcopy *pc = arg;
	bool missing = ferry_uffd_fault_kind(msg) == FERRY_FAULT_MISSING;
	unsigned int idx;
	uint64_t page;
	int ret = uffdmem_locate(&pc->um, msg, &idx, &page);

	if (ret)
		return ret;
	atomic_fetch_add_explicit(missing ? &pc->missing_faults :
				  &pc->minor_faults, 1, memory_order_relaxed);
	if (atomic_load(&pc->releasing))
		return release_page(pc, idx, page, missing);
	for (;;) {
		switch (pagestate_get(&pc->states[idx], page)) {
		case PAGE_PRESENT:
			if (!map_claimed(pc, idx, page, PAGE_PRESENT, missing,
					 &ret))
				continue;
			if (!ret)
				atomic_fetch_add_explicit(&pc->local_maps, 1,
							  memory_order_relaxed);
			return ret;
		case PAGE_MAPPED:
			return uffdmem_map_page(&pc->um, idx, page, missing);
		case PAGE_BUSY:		/* its owner's CONTINUE wakes us */
			return 0;
		case PAGE_MISSING:
			if (!is_hole(pc, idx, page))
				return request_once(pc, idx, page);
			if (!map_claimed(pc, idx, page, PAGE_MISSING, true,
					 &ret))
				continue;
			return ret;
		default:		/* STALE */
			return request_once(pc, idx, page);
		}
	}
}

static const struct faultsvc_ops fault_ops = { .fault = handle_fault };

/* ---- the mapper's policy ------------------------------------------------ */

#define MAPPER_RUN 512

/* Claim a run of pages in state `from` from `page`; returns its length. */
static uint64_t claim_run(struct postcopy *pc, unsigned int idx,
			  uint64_t page, enum page_state from)
{
	struct pagestate *ps = &pc->states[idx];
	uint64_t n = 0;

	while (n < MAPPER_RUN && page + n < ps->nr_pages &&
	       (from != PAGE_MISSING || is_hole(pc, idx, page + n)) &&
	       pagestate_claim(ps, page + n, from))
		n++;
	return n;
}

/*
 * PRESENT pages are CONTINUEd in runs.  Holes (MISSING, not owed) become
 * MAPPED with nothing mapped and nothing allocated: a sparse guest stays
 * sparse.  A vCPU that faulted on one meanwhile saw it MISSING and got a
 * zero page, or saw it BUSY and waits for the mapper's wake; either way
 * it retries and finds it final.
 */
static uint64_t next_run(void *arg, unsigned int idx, uint64_t page,
			 enum mapper_how *how)
{
	struct postcopy *pc = arg;
	uint64_t n;

	/*
	 * An owed page is neither PRESENT nor a hole: nothing for the
	 * mapper.  Skip 64 at a time (owed is read-only once started), so
	 * a restore owing a whole guest does not cost a sweep of it.
	 */
	if (page % 64 == 0 && pc->owed[idx][page / 64] == ~0ULL) {
		*how = MAPPER_SKIP;
		return 64;
	}
	n = claim_run(pc, idx, page, PAGE_PRESENT);
	*how = MAPPER_CONTINUE;
	if (!n) {
		n = claim_run(pc, idx, page, PAGE_MISSING);
		*how = MAPPER_FINAL;
	}
	if (!n)
		*how = MAPPER_SKIP;
	return n ? n : 1;
}

/* The mapper's pages, claimed BUSY by next_run, are the guest's now. */
static void run_mapped(void *arg, unsigned int idx, uint64_t page,
		       uint64_t count)
{
	struct postcopy *pc = arg;

	for (uint64_t i = 0; i < count; i++)
		page_mapped(pc, idx, page + i);
}

static const struct mapper_policy map_policy = {
	.next_run = next_run,
	.done = run_mapped,
};

/* ---- starting and finishing --------------------------------------------- */

#define POSTCOPY_MODES	(FERRY_UFFD_MISSING | FERRY_UFFD_MINOR)

static void unprepare(struct postcopy *pc)
{
	faultsvc_stop(pc->svc);
	uffdmem_close(&pc->um);
	pc->prepared = false;
}

int postcopy_prepare(struct postcopy *pc, const struct postcopy_ops *ops,
		     void *arg)
{
	int ret;

	if (pc->started || pc->prepared)
		return ferry_fail(-EBUSY, "post-copy already prepared");
	pc->ops = ops;
	pc->ops_arg = arg;
	ret = uffdmem_open_only(&pc->um, POSTCOPY_MODES,
				UFFDMEM_KERNEL_FAULTS);
	if (!ret)
		ret = faultsvc_start(pc->svc, &pc->um.uffd, -1);
	if (!ret)
		ret = mapper_start_held(&pc->mapper, pc->svc);
	pc->prepared = true;
	if (ret)
		unprepare(pc);
	return ret ? ferry_fail_ctx(ret, "post-copy") : 0;
}

int postcopy_start_held(struct postcopy *pc, const struct postcopy_ops *ops,
			void *arg)
{
	int ret = pc->prepared ? 0 : postcopy_prepare(pc, ops, arg);

	if (ret)
		return ret;
	pc->start_ns = ferry_clock_now_ns();
	ret = uffdmem_register(&pc->um, POSTCOPY_MODES);
	if (ret) {
		unprepare(pc);
		return ferry_fail_ctx(ret, "post-copy");
	}
	pc->prepared = false;
	pc->started = true;
	if (atomic_load(&pc->owed_left) == 0)
		evfd_signal(pc->done_fd);
	return 0;
}

int postcopy_start(struct postcopy *pc, const struct postcopy_ops *ops,
		   void *arg)
{
	int ret = postcopy_start_held(pc, ops, arg);

	if (!ret)
		postcopy_map_go(pc);
	return ret;
}

void postcopy_map_go(struct postcopy *pc)
{
	mapper_go(&pc->mapper);
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
	return faultsvc_error(pc->svc);
}

int postcopy_finish(struct postcopy *pc)
{
	int ret = 0;

	if (pc->prepared)	/* never started: nothing registered */
		unprepare(pc);
	if (!pc->started)
		return 0;
	faultsvc_stop(pc->svc);
	uffdmem_close(&pc->um);
	pc->started = false;
	/*
	 * Huge mappings back, best effort: a page the guest keeps busy stays
	 * 4 KiB-mapped (khugepaged may take it later); the guest is whole
	 * either way, and the PMD-mapped share is reported.
	 */
	for (unsigned int i = 0; i < pc->mem->nr_regions; i++) {
		int err = ferry_mem_region_collapse(region_of(pc, i));

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
	s->bulk_mapped = mapper_mapped(&pc->mapper);
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

/* ---- across sessions ---------------------------------------------------- */

bool postcopy_needs(const struct postcopy *pc, unsigned int region,
		    uint64_t page)
{
	enum page_state st = pagestate_get(&pc->states[region], page);

	return st == PAGE_STALE || (st == PAGE_MISSING &&
				    !is_hole(pc, region, page));
}

int postcopy_request(struct postcopy *pc, unsigned int region, uint64_t page)
{
	int ret = check_page(pc, region, page);

	if (ret || !postcopy_needs(pc, region, page))
		return ret;
	return request_page(pc, region, page, true);
}

int postcopy_rerequest(struct postcopy *pc)
{
	int ret = 0;

	for (unsigned int i = 0; i < pc->mem->nr_regions && !ret; i++) {
		size_t words = bitmap_words(region_of(pc, i)->nr_pages);

		for (size_t w = 0; w < words && !ret; w++) {
			uint64_t bits = atomic_load(&pc->requested[i][w]);

			while (bits && !ret) {
				uint64_t page = w * 64 + (uint64_t)
						__builtin_ctzll(bits);

				bits &= bits - 1;
				if (postcopy_needs(pc, i, page))
					ret = pc->ops->request(pc->ops_arg, i,
							       page);
			}
		}
	}
	return ret;
}

uint64_t postcopy_owed_map(const struct postcopy *pc, unsigned int region,
			   uint64_t *out)
{
	const struct pagestate *ps = &pc->states[region];
	uint64_t n = 0;

	memset(out, 0, bitmap_words(ps->nr_pages) * 8);
	/* Only owed pages can still be needed: a scan of the owed set. */
	for (size_t w = 0; w < bitmap_words(ps->nr_pages); w++) {
		uint64_t bits = pc->owed[region][w];

		while (bits) {
			uint64_t page = w * 64 +
					(uint64_t)__builtin_ctzll(bits);

			bits &= bits - 1;
			if (page < ps->nr_pages &&
			    postcopy_needs(pc, region, page)) {
				out[w] |= 1ULL << (page % 64);
				n++;
			}
		}
	}
	return n;
}

/*
 * Every page a vCPU may wait on now gets what the memfd holds; and from
 * now on every fault does.  Pages claimed here are not owed_mapped: the
 * migration is over, nothing counts them.
 */
void postcopy_release(struct postcopy *pc)
{
	atomic_store(&pc->releasing, true);
	if (!pc->started)
		return;
	for (unsigned int i = 0; i < pc->mem->nr_regions; i++) {
		size_t words = bitmap_words(region_of(pc, i)->nr_pages);

		for (size_t w = 0; w < words; w++) {
			uint64_t bits = atomic_load(&pc->requested[i][w]);

			while (bits) {
				uint64_t page = w * 64 + (uint64_t)
						__builtin_ctzll(bits);

				bits &= bits - 1;
				if (postcopy_needs(pc, i, page))
					release_page(pc, i, page, false);
			}
		}
	}
}
