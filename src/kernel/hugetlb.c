// SPDX-License-Identifier: MIT
/* hugetlb: make sure the 2 MiB pool holds enough free pages, and undo it. */
#include <stdio.h>
#include <string.h>

#include "base/error.h"
#include "ferry/hugetlb.h"
#include "ferry/mem.h"
#include "base/sys.h"

#define POOL "/sys/kernel/mm/hugepages/hugepages-2048kB/"

int ferry_hugetlb_pool(long *total, long *free_pages)
{
	long nr, free_nr, resv;
	int ret;

	ret = sys_read_long(POOL "nr_hugepages", &nr);
	if (!ret)
		ret = sys_read_long(POOL "free_hugepages", &free_nr);
	if (!ret)
		ret = sys_read_long(POOL "resv_hugepages", &resv);
	if (ret)
		return ferry_fail(ret, "reading the 2 MiB hugetlb pool (" POOL
				  "): %s", strerror(-ret));
	*total = nr;
	*free_pages = free_nr - resv;	/* reserved pages are spoken for */
	return 0;
}

static int set_pool(long nr)
{
	char text[32];

	snprintf(text, sizeof(text), "%ld", nr);
	return sys_write_file(POOL "nr_hugepages", text);
}

int ferry_hugetlb_reserve(size_t nr_pages, struct ferry_hugetlb_resv *resv)
{
	long total, avail, want, got;
	int ret;

	resv->saved_nr_hugepages = -1;
	resv->reserved = 0;
	ret = ferry_hugetlb_pool(&total, &avail);
	if (ret)
		return ret;
	if (avail >= (long)nr_pages)
		return 0;
	want = total + (long)nr_pages - avail;
	ret = set_pool(want);
	if (ret)
		return ferry_fail(ret, "cannot grow the hugetlb pool to %ld "
				  "pages (%s): set it as root with "
				  "'sysctl vm.nr_hugepages=%ld'", want,
				  strerror(-ret), want);
	resv->saved_nr_hugepages = total;
	ret = ferry_hugetlb_pool(&got, &avail);
	if (ret || avail < (long)nr_pages) {
		ferry_hugetlb_restore(resv);
		return ferry_fail(-ENOMEM, "the kernel gave only %ld of %zu "
				  "free huge pages (memory too fragmented?): "
				  "set 'sysctl vm.nr_hugepages=%ld' early "
				  "after boot", ret ? 0 : avail, nr_pages,
				  want);
	}
	resv->reserved = got - total;
	return 0;
}

int ferry_hugetlb_restore(struct ferry_hugetlb_resv *resv)
{
	int ret;

	if (resv->saved_nr_hugepages < 0)
		return 0;
	ret = set_pool(resv->saved_nr_hugepages);
	if (ret)
		return ferry_fail(ret, "restoring vm.nr_hugepages to %ld: %s",
				  resv->saved_nr_hugepages, strerror(-ret));
	resv->saved_nr_hugepages = -1;
	resv->reserved = 0;
	return 0;
}
