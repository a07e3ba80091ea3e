/* SPDX-License-Identifier: MIT */
#ifndef FERRY_PAGESTATE_H
#define FERRY_PAGESTATE_H

/*
 * The destination's per-page state, one atomic byte per guest page (at the
 * region's page size).  Every transition out of MISSING, PRESENT or STALE
 * goes through BUSY by compare-and-swap, so exactly one thread writes a
 * page's contents at a time, and nobody writes a MAPPED page ever again.
 *
 *   MISSING --data--> BUSY --> PRESENT          (before switchover)
 *   PRESENT --dirtied on the source--> STALE    (stale bitmap at switchover)
 *   PRESENT --fault--> BUSY --CONTINUE--> MAPPED
 *   MISSING/STALE --fresh data--> BUSY --write, CONTINUE--> MAPPED
 *   MAPPED: the guest owns the page; data arriving for it is dropped.
 *
 * The map is also what a reconnecting source resumes from: every page not
 * MAPPED or PRESENT is still owed.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum page_state {
	PAGE_MISSING = 0,	/* never received */
	PAGE_PRESENT,		/* received, current */
	PAGE_STALE,		/* received, since dirtied on the source */
	PAGE_BUSY,		/* being written or mapped by one thread */
	PAGE_MAPPED,		/* in the guest view; the guest owns it */
};

struct pagestate {
	_Atomic uint8_t *state;
	size_t nr_pages;
};

int pagestate_init(struct pagestate *ps, size_t nr_pages);
void pagestate_fini(struct pagestate *ps);

static inline enum page_state pagestate_get(const struct pagestate *ps,
					    size_t page)
{
	return (enum page_state)atomic_load_explicit(&ps->state[page],
						     memory_order_acquire);
}

/* from -> BUSY; true if this thread now owns the page. */
static inline bool pagestate_claim(struct pagestate *ps, size_t page,
				   enum page_state from)
{
	uint8_t expect = (uint8_t)from;

	return atomic_compare_exchange_strong_explicit(&ps->state[page],
			&expect, PAGE_BUSY, memory_order_acq_rel,
			memory_order_acquire);
}

/*
 * Claim a page whose contents may still be written (MISSING, PRESENT or
 * STALE); *was gets the state it had.  False when it is BUSY or MAPPED.
 */
static inline bool pagestate_claim_writable(struct pagestate *ps,
					    size_t page, enum page_state *was)
{
	for (;;) {
		enum page_state s = pagestate_get(ps, page);

		if (s == PAGE_BUSY || s == PAGE_MAPPED)
			return false;
		if (pagestate_claim(ps, page, s)) {
			*was = s;
			return true;
		}
	}
}

/* BUSY -> to, publishing what the owner wrote. */
static inline void pagestate_release(struct pagestate *ps, size_t page,
				     enum page_state to)
{
	atomic_store_explicit(&ps->state[page], (uint8_t)to,
			      memory_order_release);
}

/* How many pages are in state s (a scan; for reports and tests). */
size_t pagestate_count(const struct pagestate *ps, enum page_state s);

#endif
