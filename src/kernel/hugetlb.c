// SPDX-License-Identifier: MIT
/*
 * hugetlb: room in the 2 MiB pool, by growing it (nr_hugepages) or by
 * letting the kernel lend surplus pages (nr_overcommit_hugepages), and
 * putting back what was changed.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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

static int read_pool(const char *name, long *value)
{
	char path[128];
	int ret;

	snprintf(path, sizeof(path), POOL "%s", name);
	ret = sys_read_long(path, value);
	return ret ? ferry_fail(ret, "reading %s: %s", path,
				strerror(-ret)) : 0;
}

/* MemAvailable in huge pages: what growing the pool could take at most. */
static long mem_available_pages(void)
{
	char line[128];
	unsigned long long kb = 0;
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return (long)(kb / (FERRY_HUGE_PAGE_SIZE >> 10));
}

int ferry_hugetlb_room(long max_grow, long *pages)
{
	long total, avail, over, surplus, grow = 0;
	int ret = ferry_hugetlb_pool(&total, &avail);

	if (!ret)
		ret = read_pool("nr_overcommit_hugepages", &over);
	if (!ret)
		ret = read_pool("surplus_hugepages", &surplus);
	if (ret)
		return ret;
	if (!geteuid())
		grow = max_grow >= 0 ? max_grow : mem_available_pages();
	*pages = avail + (over > surplus ? over - surplus : 0) + grow;
	return 0;
}

static int grow_limit(long want, long max_grow)
{
	if (max_grow < 0 || want <= max_grow)
		return 0;
	return ferry_fail(-ENOMEM, "%ld more huge pages are needed; the pool "
			  "may grow by %ld here (raise the limit, or set "
			  "'sysctl vm.nr_hugepages' yourself)", want,
			  max_grow);
}

int ferry_hugetlb_reserve(size_t nr_pages, struct ferry_hugetlb_resv *resv)
{
	return ferry_hugetlb_reserve_max(nr_pages, -1, resv);
}

int ferry_hugetlb_reserve_max(size_t nr_pages, long max_grow,
			      struct ferry_hugetlb_resv *resv)
{
	long total, avail, want, got;
	int ret;

	*resv = (struct ferry_hugetlb_resv){ .saved_nr_hugepages = -1 };
	ret = ferry_hugetlb_pool(&total, &avail);
	if (ret)
		return ret;
	if (avail >= (long)nr_pages)
		return 0;
	ret = grow_limit((long)nr_pages - avail, max_grow);
	if (ret)
		return ret;
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

static int set_overcommit(long nr)
{
	char text[32];

	snprintf(text, sizeof(text), "%ld", nr);
	return sys_write_file(POOL "nr_overcommit_hugepages", text);
}

int ferry_hugetlb_surplus(size_t nr_pages, long max_grow,
			  struct ferry_hugetlb_resv *resv)
{
	long total, avail, over, surplus, lend, need;
	int ret;

	*resv = (struct ferry_hugetlb_resv){ .saved_nr_hugepages = -1 };
	ret = ferry_hugetlb_pool(&total, &avail);
	if (!ret)
		ret = read_pool("nr_overcommit_hugepages", &over);
	if (!ret)
		ret = read_pool("surplus_hugepages", &surplus);
	if (ret)
		return ret;
	lend = over > surplus ? over - surplus : 0;
	need = (long)nr_pages - avail - lend;
	if (need <= 0)
		return 0;
	ret = grow_limit(need, max_grow);
	if (!ret && (ret = set_overcommit(over + need)))
		ret = ferry_fail(ret, "cannot let the kernel lend %ld surplus "
				 "huge pages (%s): set 'sysctl "
				 "vm.nr_overcommit_hugepages=%ld' or "
				 "vm.nr_hugepages as root", need,
				 strerror(-ret), over + need);
	if (ret)
		return ret;
	resv->saved_overcommit = over;
	resv->overcommit_raised = true;
	resv->reserved = need;
	return 0;
}

int ferry_hugetlb_settle(struct ferry_hugetlb_resv *resv)
{
	int ret;

	if (!resv->overcommit_raised)
		return 0;
	ret = set_overcommit(resv->saved_overcommit);
	if (ret)
		return ferry_fail(ret, "restoring vm.nr_overcommit_hugepages "
				  "to %ld: %s", resv->saved_overcommit,
				  strerror(-ret));
	resv->overcommit_raised = false;
	return 0;
}

int ferry_hugetlb_restore(struct ferry_hugetlb_resv *resv)
{
	int ret = ferry_hugetlb_settle(resv);

	if (ret || resv->saved_nr_hugepages < 0)
		return ret;
	ret = set_pool(resv->saved_nr_hugepages);
	if (ret)
		return ferry_fail(ret, "restoring vm.nr_hugepages to %ld: %s",
				  resv->saved_nr_hugepages, strerror(-ret));
	resv->saved_nr_hugepages = -1;
	resv->reserved = 0;
	return 0;
}
