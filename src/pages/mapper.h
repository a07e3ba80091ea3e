/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MAPPER_H
#define FERRY_MAPPER_H

/*
 * The mapper: maps guest memory in bulk while the fault thread serves
 * faults, so the guest soon stops faulting without waiting for a first
 * touch of each page.  One sweep over every region, run by run; the flow
 * says what each run is (a policy), the mapper does it:
 *
 *   MAPPER_CONTINUE  the memfd holds the run: one CONTINUE for all of it
 *                    (post-copy's PRESENT pages, a clone's data pages)
 *   MAPPER_ZERO      holes: zero pages in bulk (a clone's holes; hugetlbfs
 *                    has no zero page, so a policy skips them there)
 *   MAPPER_FINAL     holes left as they are: nothing mapped, nothing
 *                    allocated, waiters woken (post-copy's holes)
 *   MAPPER_SKIP      nothing to do here
 *
 * It runs in the fault service's group, below the fault thread
 * (SYS_BOOST_BULK): the service's stop eventfd stops it between runs and
 * faultsvc_stop() joins it; a failure goes to the service's first-error
 * slot.
 */
#include <stdatomic.h>
#include <stdint.h>

#include "pages/faultsvc.h"
#include "pages/uffdmem.h"

enum mapper_how {
	MAPPER_SKIP,
	MAPPER_CONTINUE,
	MAPPER_ZERO,
	MAPPER_FINAL,
};

struct mapper_policy {
	/*
	 * The run that starts at `page` of `region`: its length (>= 1; it
	 * may run past the region's end) and what to do with it.  On the
	 * mapper thread; whatever claiming the flow does is done here.
	 */
	uint64_t (*next_run)(void *arg, unsigned int region, uint64_t page,
			     enum mapper_how *how);
	/*
	 * Pages of a CONTINUE or FINAL run are final in the guest view:
	 * mapped, mapped already, or holes left to fault (optional).
	 */
	void (*done)(void *arg, unsigned int region, uint64_t page,
		     uint64_t count);
};

struct mapper {
	struct uffdmem *um;			/* set at init */
	const struct mapper_policy *policy;
	void *arg;
	struct faultsvc *svc;			/* set at start */
	int go_fd;			/* eventfd a held start waits on;
					 * -1: none */
	/* Pages of CONTINUE and ZERO runs done, including those found
	 * mapped already or holes; the mapper writes, relaxed. */
	atomic_uint_fast64_t mapped;
};

void mapper_init(struct mapper *m, struct uffdmem *um,
		 const struct mapper_policy *policy, void *arg);

/* Start the sweep on a thread of svc's group (svc started). */
int mapper_start(struct mapper *m, struct faultsvc *svc);

/*
 * The same, but the thread waits for mapper_go() (or the service's stop)
 * before it maps anything: mapping in bulk keeps a CPU in the kernel for
 * a millisecond at a time, which a migration's switchover (READY, COMMIT,
 * the resume) should not wait behind.  The thread exists from here on,
 * so a failure to start it comes before the switchover, not after.
 */
int mapper_start_held(struct mapper *m, struct faultsvc *svc);
void mapper_go(struct mapper *m);

/* Release what a held start made.  A mapper never started is fine. */
void mapper_fini(struct mapper *m);

static inline uint64_t mapper_mapped(const struct mapper *m)
{
	return atomic_load_explicit(&m->mapped, memory_order_relaxed);
}

#endif
