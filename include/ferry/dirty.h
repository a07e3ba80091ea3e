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

/* The same over pages [first, first + count) of region `idx` only. */
ssize_t ferry_dirty_collect_range(struct ferry_dirty *dirty, unsigned int idx,
				  uint64_t first, uint64_t count,
				  uint64_t *bitmap);

/*
 * The same pages as ferry_dirty_collect(), but none is protected again:
 * they stay written, and the next collect (or peek) reports them again
 * with whatever was written since.  It reads the page tables without
 * writing them, which costs about a millisecond per GiB even while the
 * vCPUs write (a collect costs tens to hundreds then): enough to decide
 * whether another round is worth its collect, and all a last collect
 * with the vCPUs paused needs.  Returns how many bits were newly set, or
 * -errno.
 */
ssize_t ferry_dirty_peek(struct ferry_dirty *dirty, unsigned int idx,
			 uint64_t *bitmap);

/* Unregister and free.  NULL is fine. */
void ferry_dirty_stop(struct ferry_dirty *dirty);

#ifdef __cplusplus
}
#endif

#endif
