/* SPDX-License-Identifier: MIT */
#ifndef FERRY_HUGETLB_H
#define FERRY_HUGETLB_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * hugetlb pool (2 MiB pages).
 *
 * Two ways to make room, both put back by ferry_hugetlb_restore():
 *
 * ferry_hugetlb_reserve() makes sure at least `nr_pages` free pages are
 * in the pool, raising vm.nr_hugepages if it must (as root), and
 * remembers what it changed.  The pages it adds stay in the pool until
 * restore: a process killed with SIGKILL leaves them there.
 *
 * ferry_hugetlb_surplus() lets the kernel lend the missing pages as
 * surplus ones (vm.nr_overcommit_hugepages) instead: they are allocated
 * when memory is mapped, and given back to the kernel when that memory
 * goes, whatever becomes of the process.  Map the memory, then call
 * ferry_hugetlb_settle(): the sysctl goes back at once, and the pages
 * mapped stay lent.  Between the two, a SIGKILL leaves only the sysctl
 * raised, never pages in the pool.
 *
 * Both grow the pool by at most max_grow pages (< 0: as far as the
 * kernel gives).  When the pool cannot grow, -ENOMEM or -EPERM with a
 * reason that names the sysctl to set.
 */
struct ferry_hugetlb_resv {
	long saved_nr_hugepages;	/* -1: nothing changed */
	long reserved;			/* pages this reservation added */
	long saved_overcommit;		/* nr_overcommit_hugepages before */
	bool overcommit_raised;		/* saved_overcommit is to be put back */
};

/* Pages in the pool, and free ones not yet reserved by a mapping. */
int ferry_hugetlb_pool(long *total, long *free_pages);

/*
 * How many huge pages a new mapping could have now: free ones, surplus
 * the kernel may still lend (overcommit), and, as root, what the pool
 * may grow by (max_grow pages; < 0: MemAvailable's worth).
 */
int ferry_hugetlb_room(long max_grow, long *pages);

int ferry_hugetlb_reserve(size_t nr_pages, struct ferry_hugetlb_resv *resv);
int ferry_hugetlb_reserve_max(size_t nr_pages, long max_grow,
			      struct ferry_hugetlb_resv *resv);
int ferry_hugetlb_surplus(size_t nr_pages, long max_grow,
			  struct ferry_hugetlb_resv *resv);
int ferry_hugetlb_settle(struct ferry_hugetlb_resv *resv);
int ferry_hugetlb_restore(struct ferry_hugetlb_resv *resv);

#ifdef __cplusplus
}
#endif

#endif
