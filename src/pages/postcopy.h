/* SPDX-License-Identifier: MIT */
#ifndef FERRY_POSTCOPY_H
#define FERRY_POSTCOPY_H

/*
 * The destination's page machinery, shared by post-copy migration and lazy
 * restore.
 *
 * Before switchover, received pages are stored into the memfd with pwrite
 * (no page faults) and become PRESENT.  At switchover the stale bitmap
 * turns the pages written since into STALE.  Then postcopy_start()
 * registers every guest view MISSING|MINOR and starts two threads, the
 * fault service's (faultsvc.h) with post-copy's handler and policy:
 *
 *   fault thread   polls the uffd with an eventfd that stops it; a fault on
 *                  a PRESENT page is served on the spot (CONTINUE); on a
 *                  MISSING or STALE page it asks the page source once
 *                  (ops->request) and leaves the vCPU asleep in the kernel
 *   mapper thread  CONTINUEs every PRESENT page in bulk, so the guest stops
 *                  faulting on them without waiting for a first touch
 *
 * Whoever first holds fresh data for a page (a reply to a request, or the
 * source's background push) calls postcopy_install(), which writes it
 * through the memfd, CONTINUEs (waking the vCPU) and marks it MAPPED.
 * Data for a MAPPED page is dropped.  When the last page the source owed
 * is in place the done eventfd fires: every other page is final in the
 * memfd (PRESENT) or a hole, so postcopy_finish() stops the threads,
 * unregisters (the guest then faults on what is left as on any mapping)
 * and collapses THP regions.
 *
 *   vCPU        fault thread        receiver            source
 *    |--fault-->|                     |                   |
 *    | (asleep) |--request----------------------------->  |
 *    |          |                     |<----page data-----|
 *    |          |                     | pwrite, CONTINUE  |
 *    |<-------------------wake--------|  state=MAPPED     |
 */
#include <stdatomic.h>

#include "ferry/mem.h"
#include "ferry/hist.h"
#include "ferry/uffd.h"
#include "pages/faultsvc.h"
#include "pages/mapper.h"
#include "pages/pagestate.h"
#include "pages/uffdmem.h"

struct postcopy_ops {
	/*
	 * Ask the source for one page.  Called on the fault thread, at most
	 * once per page; must not block for long.  0 or -errno (which stops
	 * fault service and is reported by postcopy_error()).
	 */
	int (*request)(void *arg, unsigned int region, uint64_t page);
};

struct postcopy_stats {
	uint64_t minor_faults;		/* fault messages, by kind */
	uint64_t missing_faults;
	uint64_t requests;		/* pages asked of the source */
	uint64_t local_maps;		/* faults served from PRESENT pages */
	uint64_t bulk_mapped;		/* pages the mapper CONTINUEd */
	uint64_t installed;		/* pages installed from fresh data */
	uint64_t dropped;		/* data for pages already MAPPED/BUSY */
};

struct postcopy {
	struct ferry_mem *mem;
	struct pagestate *states;	/* one per region */
	uint64_t **owed;		/* per region: the stale bitmap, what
					 * the source still owes; written at
					 * switchover, read-only after */
	_Atomic uint64_t **requested;	/* bitmaps, one per region: the
					 * fault thread sets, any reads */
	_Atomic uint32_t **fault_us;	/* request time, us since start;
					 * fault thread writes, relaxed */
	struct uffdmem um;		/* the guest views, registered
					 * MISSING|MINOR while started */
	struct faultsvc *svc;		/* the fault thread, the mapper */
	struct mapper mapper;		/* maps PRESENT pages in bulk */
	const struct postcopy_ops *ops;
	void *ops_arg;

	atomic_bool releasing;		/* failing closed: see release */
	int done_fd;			/* eventfd: nothing owed any more */
	bool prepared;			/* the threads wait, nothing is
					 * registered; the caller's thread
					 * only */
	bool started;			/* the caller's thread only */
	uint64_t start_ns;

	atomic_size_t owed_left;	/* owed pages not yet in place; set
					 * at switchover, then any thread */
	/* Counters: written by the thread named in postcopy_stats, relaxed
	 * (bulk_mapped is the mapper's own count). */
	atomic_uint_fast64_t minor_faults, missing_faults, requests,
			     local_maps, installed, dropped;
	struct ferry_hist fault_latency;	/* ns, request to mapped */
};

int postcopy_create(struct ferry_mem *mem, struct postcopy **out);
void postcopy_destroy(struct postcopy *pc);

/*
 * Before switchover: store `count` received pages from `first` (data:
 * count pages back to back; NULL: zero pages) with one write, and mark
 * them PRESENT.  A zero page punches the page out of the memfd, so a
 * sparse guest stays sparse.  At most 512 pages a call.
 */
int postcopy_store(struct postcopy *pc, unsigned int region, uint64_t first,
		   uint64_t count, const void *data);

/*
 * At switchover, with the source's stale bitmap (pages written since they
 * were last sent, or never sent but written): a PRESENT page in it becomes
 * STALE; a MISSING page in it stays MISSING (owed); a MISSING page not in
 * it was never sent because it is a hole on the source, so it is final as
 * it is (a hole here too).  Work in proportion to the stale set.
 */
int postcopy_switchover(struct postcopy *pc, unsigned int region,
			const uint64_t *stale);

/*
 * Before start, instead of switchover, for pages nothing was stored into
 * (a restore owes every page its file holds): they are owed and stay
 * MISSING.  No page state is looked at, so a whole guest's worth costs a
 * scan of the bitmap's words, not a step per page.
 */
int postcopy_owe(struct postcopy *pc, unsigned int region,
		 const uint64_t *owed);

/* Register the guest views and start the fault and mapper threads. */
int postcopy_start(struct postcopy *pc, const struct postcopy_ops *ops,
		   void *arg);

/*
 * Ahead of a start, maybe long before: the descriptor (nothing registered
 * yet), the fault thread and the mapper (held) exist, so a start costs
 * only the registration.  Starting a thread takes 0.1-0.7 ms on a busy
 * host of this kind, which a migration's switchover would otherwise pay
 * in its downtime.  postcopy_finish() (or destroy) undoes it.
 */
int postcopy_prepare(struct postcopy *pc, const struct postcopy_ops *ops,
		     void *arg);

/*
 * A start with the mapper held until postcopy_map_go(): its bulk
 * CONTINUEs would compete for the CPUs with a migration's switchover
 * (READY, COMMIT, the resume), and nothing runs on the guest's memory
 * before the resume anyway.  Prepared or not.
 */
int postcopy_start_held(struct postcopy *pc, const struct postcopy_ops *ops,
			void *arg);
void postcopy_map_go(struct postcopy *pc);

/*
 * Fresh data for a page after switchover (data NULL: zero).  Returns 1 if
 * installed, 0 if dropped (already MAPPED, or being written), -errno.
 * Any thread.
 */
int postcopy_install(struct postcopy *pc, unsigned int region,
		     uint64_t page, const void *data);

/* The eventfd that becomes readable when nothing is owed any more. */
int postcopy_done_fd(const struct postcopy *pc);
bool postcopy_done(const struct postcopy *pc);

/*
 * Stop the threads, unregister, collapse THP regions (a prepared post-copy
 * that never started: stop its threads, close).  Idempotent.
 */
int postcopy_finish(struct postcopy *pc);

/*
 * The first error fault service hit (the fault thread or the mapper), or
 * 0; its reason is recorded again on the calling thread.
 */
int postcopy_error(const struct postcopy *pc);

void postcopy_get_stats(const struct postcopy *pc, struct postcopy_stats *s);

/* Pages still owed by the source (MISSING or STALE) in a region. */
size_t postcopy_owed(const struct postcopy *pc, unsigned int region);

/* ---- across sessions: recovery, bad copies, failing closed ------------ */

/* Is the page still to come (owed and not in place)?  Any thread. */
bool postcopy_needs(const struct postcopy *pc, unsigned int region,
		    uint64_t page);

/*
 * Ask for a page now, whether or not it was asked for before (its copy
 * failed its check), if it is still needed.  0 or the request's error.
 */
int postcopy_request(struct postcopy *pc, unsigned int region,
		     uint64_t page);

/*
 * Ask again for every page asked for and not yet in place: a new session
 * never heard the requests the old one lost.
 */
int postcopy_rerequest(struct postcopy *pc);

/*
 * What a region still needs, as a bitmap (out: the region's bitmap_words,
 * overwritten); returns the count.  A scan of the owed set.
 */
uint64_t postcopy_owed_map(const struct postcopy *pc, unsigned int region,
			   uint64_t *out);

/*
 * Failing closed, with the vCPUs asked to pause: serve every fault, those
 * waiting now and any to come, with whatever the memfd holds (a hole, an
 * older copy), so each vCPU can finish the one access it was in and park.
 * Only for a VM that is then discarded: it never runs again.
 */
void postcopy_release(struct postcopy *pc);

#endif
