/* SPDX-License-Identifier: MIT */
#ifndef FERRY_DIRTY_H
#define FERRY_DIRTY_H

#include <stdint.h>
#include <sys/types.h>

#include "ferry/mem.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Dirty tracking on the source: userfaultfd write-protect in async mode
 * (WP_ASYNC: the kernel clears the protection itself on a write, no fault
 * reaches userspace, the guest never waits) with WP_UNPOPULATED (holes are
 * protected too, so a first write to one is seen) and WP_HUGETLBFS_SHMEM;
 * and PAGEMAP_SCAN, which collects the written pages and re-protects them in
 * one call.  No per-write userspace work on the guest's path.
 *
 * Kernels without these (before 6.7) get -EOPNOTSUPP naming what is
 * missing: migrate post-copy only there.
 */
struct ferry_dirty;

/* Arm tracking on every region's guest view: everything protected. */
int ferry_dirty_start(struct ferry_mem *mem, struct ferry_dirty **out);

/*
 * Collect the pages of region `idx` written since the last collect (or
 * start), set their bits in `bitmap` (one bit per region page, at the
 * region's page size), and protect them again, atomically per page.
 * Returns how many bits were newly set, or -errno.
 */
ssize_t ferry_dirty_collect(struct ferry_dirty *dirty, unsigned int idx,
			    uint64_t *bitmap);

/*
 * The last collect, with nothing left to write (the vCPUs paused): the
 * same pages as ferry_dirty_collect(), but none is protected again, so
 * they stay written (a later collect reports them again) and a write to
 * one of them later is not told from the one found now.  It reads the
 * page tables without writing them: the switchover's collect costs about
 * a millisecond per GiB instead of tens.  Returns how many bits were
 * newly set, or -errno.
 */
ssize_t ferry_dirty_collect_final(struct ferry_dirty *dirty, unsigned int idx,
				  uint64_t *bitmap);

/*
 * What ferry_dirty_collect_final() of every region is expected to cost,
 * in ns, for a downtime estimate: a read-only walk of them all timed when
 * tracking started (when nothing was written yet), twice over, since one
 * that finds written pages costs up to twice as much.
 */
uint64_t ferry_dirty_final_cost_ns(const struct ferry_dirty *dirty);

/* Unregister and free.  NULL is fine. */
void ferry_dirty_stop(struct ferry_dirty *dirty);

#ifdef __cplusplus
}
#endif

#endif
