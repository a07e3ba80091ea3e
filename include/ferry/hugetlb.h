/* SPDX-License-Identifier: MIT */
#ifndef FERRY_HUGETLB_H
#define FERRY_HUGETLB_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * hugetlb pool.  ferry_hugetlb_reserve() makes sure at least `nr_pages`
 * free 2 MiB pages are in the pool, raising vm.nr_hugepages if it must (as
 * root), and remembers what it changed; ferry_hugetlb_restore() puts the
 * pool back exactly as it found it.  When the pool cannot grow, -ENOMEM or
 * -EPERM with a reason that names the sysctl to set.
 */
struct ferry_hugetlb_resv {
	long saved_nr_hugepages;	/* -1: nothing changed */
	long reserved;			/* pages this reservation added */
};

int ferry_hugetlb_pool(long *total, long *free_pages);
int ferry_hugetlb_reserve(size_t nr_pages, struct ferry_hugetlb_resv *resv);
int ferry_hugetlb_restore(struct ferry_hugetlb_resv *resv);

#ifdef __cplusplus
}
#endif

#endif
