// SPDX-License-Identifier: MIT
/*
 * save_live: a live save's write protection and its fault thread, which
 * saves the page of each held write (and the pages after it) so that the
 * writer runs on.  The fault thread is the fault service's
 * (pages/faultsvc.h), with the save's handler and the plan eventfd as
 * the flow's own fd.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/thread.h"
#include "ferry/clock.h"
#include "snapshot/save_int.h"

/* ---- the fault thread (live) -------------------------------------------- */

/*
 * A guest writing one page is likely to write the next ones soon (a
 * sequential writer would otherwise wait once per page): the pages just
 * after it are claimed along with it, up to SAVE_NEAR, so one copy, one
 * un-protect and one write of the file serve them all.
 */
static uint64_t claim_after(struct saver *sv, const struct snap_extent *e,
			    uint64_t page)
{
	size_t ps = sv->vm->mem->regions[e->region].page_size;
	uint64_t end = (uint64_t)e->first_page + e->count, n = 0;

	while (n + 1 < SAVE_NEAR / ps && page + 1 + n < end &&
	       saver_claim(sv, e->region, page + 1 + n))
		n++;
	return n;
}

/* The page after a run saved for a held write: where the sweep goes. */
static void post_hint(struct saver *sv, unsigned int region, uint64_t page)
{
	uint64_t gen = atomic_load_explicit(&sv->hint_gen,
					    memory_order_relaxed);

	atomic_store_explicit(&sv->hint[gen % SAVE_HINTS],
			      (uint64_t)region << 48 | page,
			      memory_order_relaxed);
	atomic_store_explicit(&sv->hint_gen, gen + 1, memory_order_release);
}

/*
 * A write held on a page someone else claimed.  While the sweep still
 * copies it (SAVING), the writer sleeps until the sweep's un-protect
 * wakes it: noted, so that the sweep counts its hold (waking it now
 * would only have it fault again at once).  If the run is done (or the
 * note cannot be taken back from a sweep that has just finished), the
 * writer was woken or never slept: wake it, which is harmless.
 */
static int held_elsewhere(struct saver *sv, unsigned int region,
			  uint64_t page, uint64_t t0)
{
	uint64_t key = saver_held_key(region, page), free_key;
	struct held_slot *w = NULL;

	for (size_t i = 0; i < SAVE_WAITING && !w; i++) {
		if (atomic_load_explicit(&sv->waiting[i].key,
					 memory_order_relaxed) == 0)
			w = &sv->waiting[i];
	}
	if (w) {
		w->t0 = t0;
		atomic_store(&w->key, key);
	}
	if (atomic_load(&sv->state[region][page]) == SAVE_SAVING)
		return 0;
	free_key = key;
	if (w && atomic_compare_exchange_strong(&w->key, &free_key, 0))
		saver_count_hold(sv, &sv->held, ferry_clock_now_ns() - t0);
	return ferry_uffd_wake(&sv->um.uffd, uffdmem_addr(&sv->um, region,
							  page),
			       sv->vm->mem->regions[region].page_size);
}

/* One held write; t0: when the fault thread read it. */
static int handle_wp(struct saver *sv, const struct uffd_msg *msg, uint64_t t0)
{
	uint64_t page, n;
	struct snap_extent *e;
	unsigned int idx;
	size_t ps;
	int ret = uffdmem_locate(&sv->um, msg, &idx, &page);

	if (ret)
		return ret;
	if (ferry_uffd_fault_kind(msg) != FERRY_FAULT_WP)
		return ferry_fail(-EPROTO, "unexpected fault on page %llu of "
				  "region %u", (unsigned long long)page, idx);
	ps = sv->vm->mem->regions[idx].page_size;
	e = snap_plan_find(&sv->plan, idx, page);
	/* Not ours to save: nothing was there at the pause. */
	if (!e)
		return ferry_uffd_writeprotect(&sv->um.uffd,
					       uffdmem_addr(&sv->um, idx, page),
					       ps, false, 0);
	if (!saver_claim(sv, idx, page))
		return held_elsewhere(sv, idx, page, t0);
	n = 1 + claim_after(sv, e, page);
	post_hint(sv, idx, page + n);
	ret = saver_capture(sv, idx, page, n, sv->fault_buf);
	saver_count_hold(sv, &sv->held, ferry_clock_now_ns() - t0);
	atomic_fetch_add_explicit(&sv->saved_on_fault, n,
				  memory_order_relaxed);
	return saver_store(sv, e, page, n, sv->fault_buf, ret);
}

/*
 * Writes that came before the plan: kept, with the time each was read,
 * so that their hold counts the wait for the plan too.
 */
static int keep(struct saver *sv, const struct uffd_msg *msg)
{
	if (sv->nr_early == sv->early_cap) {
		size_t cap = sv->early_cap ? sv->early_cap * 2 : 64;
		struct early_write *e = realloc(sv->early, cap * sizeof(*e));

		if (!e)
			return ferry_fail(-ENOMEM, "out of memory");
		sv->early = e;
		sv->early_cap = cap;
	}
	sv->early[sv->nr_early++] = (struct early_write){ .msg = *msg,
		.t0 = ferry_clock_now_ns() };
	return 0;
}

/*
 * A write held before the plan, on a page that existed before the pause
 * (sv->populated, found then: a page that exists stays): its run is
 * copied out into the early pool and un-protected now, to be stored
 * once the plan says where.  1 when served, 0 when it must wait for the
 * plan (a page not known to exist, or the pool is used up), or -errno.
 */
static int capture_early(struct saver *sv, const struct uffd_msg *msg,
			 uint64_t t0)
{
	struct early_run *run = &sv->early_runs[sv->nr_early_runs];
	const struct ferry_region *r;
	uint64_t page, n = 1;
	unsigned int idx;
	int ret = uffdmem_locate(&sv->um, msg, &idx, &page);

	if (ret || ferry_uffd_fault_kind(msg) != FERRY_FAULT_WP ||
	    sv->nr_early_runs == SAVE_EARLY_RUNS ||
	    sv->vm->mem->regions[idx].page_size > SAVE_NEAR ||
	    !bitmap_test(sv->populated[idx], page))
		return 0;		/* handle_wp sorts it out later */
	r = &sv->vm->mem->regions[idx];
	if (!saver_claim(sv, idx, page)) {	/* in an early run: woken */
		ret = ferry_uffd_wake(&sv->um.uffd,
				      uffdmem_addr(&sv->um, idx, page),
				      r->page_size);
		return ret ? ret : 1;
	}
	while (n < SAVE_NEAR / r->page_size && page + n < r->nr_pages &&
	       bitmap_test(sv->populated[idx], page + n) &&
	       saver_claim(sv, idx, page + n))
		n++;
	*run = (struct early_run){ .region = idx, .first = page, .count = n,
		.buf = sv->early_pool + sv->nr_early_runs * SAVE_NEAR };
	ret = saver_capture(sv, idx, page, n, run->buf);
	if (ret)
		return ret;
	sv->nr_early_runs++;
	saver_count_hold(sv, &sv->held, ferry_clock_now_ns() - t0);
	atomic_fetch_add_explicit(&sv->saved_on_fault, n,
				  memory_order_relaxed);
	post_hint(sv, idx, page + n);
	return 1;
}

/* The early runs, stored where the plan puts them, extent by extent. */
static int store_early(struct saver *sv)
{
	int ret = 0;

	for (size_t i = 0; i < sv->nr_early_runs && !ret; i++) {
		struct early_run *run = &sv->early_runs[i];
		size_t ps = sv->vm->mem->regions[run->region].page_size;

		for (uint64_t at = 0; at < run->count && !ret;) {
			uint64_t page = run->first + at, n;
			struct snap_extent *e = snap_plan_find(&sv->plan,
							run->region, page);

			if (!e)
				return ferry_fail(-EIO, "page %llu of region "
						  "%u existed before the pause "
						  "and not after it",
						  (unsigned long long)page,
						  run->region);
			n = e->first_page + e->count - page;
			n = n < run->count - at ? n : run->count - at;
			ret = saver_store(sv, e, page, n, run->buf + at * ps,
					  0);
			at += n;
		}
	}
	sv->nr_early_runs = 0;
	return ret;
}

/*
 * Held writes are read from the moment the vCPUs resume.  Before the
 * plan, those on pages known to exist are served at once (capture_early);
 * the rest once the plan says which pages are to be saved and where.
 */
static int on_fault(void *arg, const struct uffd_msg *msg)
{
	struct saver *sv = arg;
	uint64_t t0 = ferry_clock_now_ns();
	int ret;

	if (sv->planned)
		return handle_wp(sv, msg, t0);
	ret = capture_early(sv, msg, t0);
	return ret ? (ret < 0 ? ret : 0) : keep(sv, msg);
}

/* The plan eventfd fired (the service checks it before the uffd). */
static int plan_ready(void *arg)
{
	struct saver *sv = arg;
	int ret = 0;

	evfd_drain(sv->plan_fd);
	if (sv->planned)
		return 0;
	sv->planned = true;
	ret = store_early(sv);
	for (size_t i = 0; i < sv->nr_early && !ret; i++)
		ret = handle_wp(sv, &sv->early[i].msg, sv->early[i].t0);
	sv->nr_early = 0;
	return ret;
}

static const struct faultsvc_ops fault_ops = {
	.fault = on_fault,
	.ready = plan_ready,
};

/* ---- arming and disarming write protection ------------------------------ */

/*
 * All of guest memory is protected, holes too, so that from here on no
 * page can come into being without a write the fault thread sees: which
 * pages exist can then be found after the vCPUs resume, and is still what
 * existed at the pause.  A write to a hole, later, is simply let through.
 */
int saver_arm(struct saver *sv)
{
	struct ferry_mem *mem = sv->vm->mem;
	int ret = uffdmem_open(&sv->um, FERRY_UFFD_WP, UFFDMEM_KERNEL_FAULTS);

	if (ret)
		return ferry_fail_ctx(ret, "live snapshot");
	for (unsigned int i = 0; i < mem->nr_regions && !ret; i++)
		ret = ferry_uffd_writeprotect(&sv->um.uffd,
					      mem->regions[i].guest,
					      mem->regions[i].size, true, 0);
	return ret;
}

/* The service and the plan's eventfd, made before the vCPUs pause. */
int saver_make_service(struct saver *sv)
{
	int ret = uffdmem_init(&sv->um, sv->vm->mem);

	if (!ret)
		ret = faultsvc_create(&fault_ops, sv, &sv->svc);
	if (ret)
		return ret;
	sv->plan_fd = evfd_open();
	if (sv->plan_fd < 0)
		return ferry_fail(sv->plan_fd, "eventfd: %s",
				  strerror(-sv->plan_fd));
	return 0;
}

int saver_start_service(struct saver *sv)
{
	return faultsvc_start(sv->svc, &sv->um.uffd, sv->plan_fd);
}

/* The fault thread's failure, with its reason, once it has stopped. */
int saver_stop_service(struct saver *sv)
{
	if (!sv->svc)
		return 0;
	faultsvc_stop(sv->svc);
	return faultsvc_error(sv->svc);
}

/*
 * Unregistering drops every protection left (a failed save leaves some)
 * and wakes any write still held.  Then THP gets its huge mappings back:
 * protecting split them.
 */
void saver_disarm(struct saver *sv)
{
	struct ferry_mem *mem = sv->vm->mem;

	uffdmem_close(&sv->um);
	for (unsigned int i = 0; i < mem->nr_regions; i++)
		if (!mem->regions[i].private_view)
			ferry_mem_region_collapse(&mem->regions[i]);
}
