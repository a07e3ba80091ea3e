// SPDX-License-Identifier: MIT
/*
 * save_sweep: claiming pages and saving claimed runs, and the sweep.
 *
 * Each page to save has a state (save_int.h): whoever takes it from
 * UNSAVED to SAVING by compare-and-swap, the sweep or the fault thread,
 * copies it out, un-protects it (live) and stores it, so each page is
 * copied out exactly once and before the guest can change it.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "ferry/clock.h"
#include "snapshot/save_int.h"

static void mark(struct saver *sv, unsigned int region, uint64_t first,
		 uint64_t count, enum save_state to)
{
	for (uint64_t p = first; p < first + count; p++)
		atomic_store_explicit(&sv->state[region][p], (uint8_t)to,
				      memory_order_release);
}

uint64_t saver_held_key(unsigned int region, uint64_t page)
{
	return (uint64_t)(region + 1) << 48 | page;
}

void saver_count_hold(struct saver *sv, struct ferry_hist *hist,
		      uint64_t held_ns)
{
	ferry_hist_record(hist, held_ns);
	atomic_fetch_add_explicit(&sv->held_writes, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&sv->held_total_ns, held_ns,
				  memory_order_relaxed);
}

/*
 * The sweep has un-protected [first, first + count) of a region (which
 * woke whoever was held there): the holds of the writes noted waiting on
 * those pages end now.
 */
static void release_waiting(struct saver *sv, unsigned int region,
			    uint64_t first, uint64_t count)
{
	uint64_t lo = saver_held_key(region, first), now = 0;

	/* The pages' COPIED before the notes (save_live.c, held_elsewhere). */
	atomic_thread_fence(memory_order_seq_cst);
	for (size_t i = 0; i < SAVE_WAITING; i++) {
		struct held_slot *w = &sv->waiting[i];
		uint64_t key = atomic_load(&w->key);

		if (key < lo || key >= lo + count ||
		    !atomic_compare_exchange_strong(&w->key, &key, 0))
			continue;
		if (!now)
			now = ferry_clock_now_ns();
		saver_count_hold(sv, &sv->held_sweep, now - w->t0);
	}
}

int saver_capture(struct saver *sv, unsigned int region, uint64_t first,
		  uint64_t count, uint8_t *buf)
{
	struct ferry_region *r = &sv->vm->mem->regions[region];
	int ret = saver_copy_out(r, first, count, buf);

	if (!ret && sv->live)
		ret = ferry_uffd_writeprotect(&sv->um.uffd,
					      uffdmem_addr(&sv->um, region,
							   first),
					      count * r->page_size, false, 0);
	if (!ret && sv->live)
		mark(sv, region, first, count, SAVE_COPIED);
	return ret;
}

int saver_store(struct saver *sv, struct snap_extent *e, uint64_t first,
		uint64_t count, const uint8_t *buf, int ret)
{
	if (!ret)
		ret = saver_store_run(sv, e, first, count, buf);
	mark(sv, e->region, first, count, ret ? SAVE_UNSAVED : SAVE_SAVED);
	return ret;
}

bool saver_claim(struct saver *sv, unsigned int region, uint64_t page)
{
	uint8_t want = SAVE_UNSAVED;

	return atomic_compare_exchange_strong_explicit(
		&sv->state[region][page], &want, SAVE_SAVING,
		memory_order_acq_rel, memory_order_acquire);
}

/* ---- the sweep ---------------------------------------------------------- */

/*
 * The sweep saves every planned page, extent by extent, in runs of up to
 * SAVE_CHUNK.  Live, it goes first where the guest writes: each run the
 * fault thread saves for a held write leaves a hint (the page after it),
 * and the sweep saves from there on, up to SAVE_AHEAD, in runs of
 * SAVE_RUN between which it looks for new hints.  A guest that writes on
 * in order (a sequential writer, a copy, a log) then finds its next pages
 * saved instead of being held once per run the fault thread claims; the
 * short runs keep the wait short for a write that catches up with the
 * sweep.
 */
struct sweep_pos {
	struct snap_extent *e;
	uint64_t page;
	uint64_t left;		/* pages it may still save from here */
};

/* Claim and save up to `max` pages from p->page on, and move past them. */
static int sweep_run(struct saver *sv, struct sweep_pos *p, uint64_t max)
{
	uint64_t end = (uint64_t)p->e->first_page + p->e->count, n = 0;
	int ret = 0;

	if (max > p->left)
		max = p->left;
	while (n < max && p->page + n < end &&
	       saver_claim(sv, p->e->region, p->page + n))
		n++;
	if (n) {
		ret = saver_capture(sv, p->e->region, p->page, n,
				    sv->sweep_buf);
		if (!ret && sv->live)
			release_waiting(sv, p->e->region, p->page, n);
		ret = saver_store(sv, p->e, p->page, n, sv->sweep_buf, ret);
	}
	n = n ? n : 1;		/* a page someone else took */
	p->page += n;
	p->left = p->page < end && p->left > n ? p->left - n : 0;
	return ret;
}

/* A hint, checked: the planned page it names, or false. */
static bool hint_pos(struct saver *sv, uint64_t hint, struct sweep_pos *p)
{
	const struct ferry_mem *mem = sv->vm->mem;
	unsigned int region = (unsigned int)(hint >> 48);
	uint64_t page = hint & ((1ULL << 48) - 1);

	if (region >= mem->nr_regions ||
	    page >= mem->regions[region].nr_pages)
		return false;
	p->e = snap_plan_find(&sv->plan, region, page);
	p->page = page;
	p->left = SAVE_AHEAD / mem->regions[region].page_size;
	return p->e != NULL;
}

/*
 * The hints posted since the sweep last looked (*seen): each one takes
 * the place of the writer it follows on (a position just behind it in
 * the same extent), or of the one with the least left to do.
 */
static void take_hints(struct saver *sv, struct sweep_pos *near,
		       uint64_t *seen)
{
	uint64_t gen = atomic_load_explicit(&sv->hint_gen,
					    memory_order_acquire);

	if (gen - *seen > SAVE_HINTS)
		*seen = gen - SAVE_HINTS;
	for (; *seen < gen; (*seen)++) {
		struct sweep_pos p;
		size_t slot = 0;

		if (!hint_pos(sv, atomic_load_explicit(
				&sv->hint[*seen % SAVE_HINTS],
				memory_order_relaxed), &p))
			continue;
		for (size_t i = 0; i < SAVE_HINTS; i++) {
			if (near[i].left && near[i].e == p.e &&
			    near[i].page <= p.page) {
				slot = i;
				break;
			}
			if (near[i].left < near[slot].left)
				slot = i;
		}
		near[slot] = p;
	}
}

/* One run ahead of each writer followed; false when there is none. */
static bool sweep_near(struct saver *sv, struct sweep_pos *near,
		       uint64_t *seen, int *ret)
{
	bool any = false;

	take_hints(sv, near, seen);
	for (size_t i = 0; i < SAVE_HINTS && !*ret; i++) {
		size_t ps;

		if (!near[i].left)
			continue;
		ps = sv->vm->mem->regions[near[i].e->region].page_size;
		*ret = sweep_run(sv, &near[i],
				 ps < SAVE_RUN ? SAVE_RUN / ps : 1);
		any = true;
	}
	return any;
}

static int sweep_extent(struct saver *sv, struct snap_extent *e,
			struct sweep_pos *near, uint64_t *seen)
{
	size_t ps = sv->vm->mem->regions[e->region].page_size;
	struct sweep_pos p = { .e = e, .page = e->first_page,
			       .left = UINT64_MAX };
	int ret = 0;

	while (p.left && !ret && !(ret = save_check_cancel(sv->h)))
		if (!sv->live || !sweep_near(sv, near, seen, &ret))
			ret = sweep_run(sv, &p, SAVE_CHUNK / ps);
	return ret;
}

int saver_sweep(struct saver *sv)
{
	struct sweep_pos near[SAVE_HINTS] = { { .left = 0 } };
	uint64_t seen = 0;
	int ret = 0;

	for (size_t i = 0; i < sv->plan.nr_extents && !ret; i++)
		ret = sweep_extent(sv, &sv->plan.extents[i], near, &seen);
	return ret;
}
