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

/*
 * The second tracker: a VM's own dirty log (KVM's dirty log, or its dirty
 * ring), which the VM reads; ferry never includes a VM's headers.  Set on
 * the memory, ferry_dirty_start() uses it instead of write-protect, and
 * the VM answers for what its log cannot see (the VMM's and the kernel's
 * writes through the user mapping): collect must report those too.
 */
struct ferry_dirty_log {
	/* Start logging every region: from now on, written pages count. */
	int (*start)(void *arg, struct ferry_mem *mem);
	/*
	 * As ferry_dirty_collect_range (protect) and ferry_dirty_peek (not):
	 * set the bits (at the region's page size) of region idx's pages in
	 * [first, first + count) written since start or since they were
	 * last collected with protect; with protect, re-arm those pages;
	 * return how many bits were newly set.
	 */
	ssize_t (*collect)(void *arg, unsigned int idx, uint64_t first,
			   uint64_t count, bool protect, uint64_t *bitmap);
	void (*stop)(void *arg);
	void *arg;
};

/*
 * Track this memory's writes with `log` (the caller's; it must outlive
 * every tracker started on mem), or with write-protect again (NULL).
 */
void ferry_dirty_set_log(struct ferry_mem *mem,
			 const struct ferry_dirty_log *log);

#ifdef __cplusplus
}
#endif

#endif
