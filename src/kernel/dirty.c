// SPDX-License-Identifier: MIT
/* dirty: written-page tracking with async write-protect and PAGEMAP_SCAN. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "ferry/dirty.h"
#include "ferry/uffd.h"
#include "base/sys.h"
#include "kernel/uapi.h"

#define SCAN_VEC_LEN 1024

struct ferry_dirty {
	struct ferry_mem *mem;
	const struct ferry_dirty_log *log;	/* the VM's, or NULL */
	struct ferry_uffd uffd;
	int pagemap_fd;
	struct page_region vec[SCAN_VEC_LEN];
};

#define DIRTY_FEATURES (FERRY_UFFD_F_PAGEFAULT_FLAG_WP | \
			FERRY_UFFD_F_WP_ASYNC | FERRY_UFFD_F_WP_UNPOPULATED | \
			FERRY_UFFD_F_WP_HUGETLBFS_SHMEM)

static int arm_region(struct ferry_dirty *d, struct ferry_region *r)
{
	int ret = ferry_uffd_register(&d->uffd, r->guest, r->size,
				      FERRY_UFFD_WP, NULL);

	if (ret)
		return ret;
	ret = ferry_uffd_writeprotect(&d->uffd, r->guest, r->size, true, 0);
	if (ret)
		return ferry_fail(ret, "write-protecting %zu MiB: %s",
				  r->size >> 20, strerror(-ret));
	return 0;
}

void ferry_dirty_set_log(struct ferry_mem *mem,
			 const struct ferry_dirty_log *log)
{
	mem->dirty_log = log;
}

/* The VM's own log: it reads it, and answers for what it cannot see. */
static int log_start(struct ferry_dirty *d)
{
	int ret = d->log->start(d->log->arg, d->mem);

	if (ret)
		return ferry_fail_ctx(ret, "the VM's dirty log");
	return 0;
}

int ferry_dirty_start(struct ferry_mem *mem, struct ferry_dirty **out)
{
	struct ferry_dirty *d = calloc(1, sizeof(*d));
	int ret;

	if (!d)
		return ferry_fail(-ENOMEM, "out of memory");
	d->mem = mem;
	d->pagemap_fd = -1;
	d->log = mem->dirty_log;
	if (d->log) {
		ret = log_start(d);
		if (ret)
			goto err_free;
		*out = d;
		return 0;
	}
	ret = ferry_uffd_open(&d->uffd, DIRTY_FEATURES, 0, false);
	if (ret)
		goto err_free;
	if (!ferry_uffd_probe()->pagemap_scan) {
		ret = ferry_fail(-EOPNOTSUPP, "the PAGEMAP_SCAN ioctl is "
				 "missing (Linux 6.7)");
		goto err_close_uffd;
	}
	d->pagemap_fd = sys_open("/proc/self/pagemap", O_RDONLY);
	if (d->pagemap_fd < 0) {
		ret = ferry_fail(d->pagemap_fd, "opening /proc/self/pagemap: "
				 "%s", strerror(-d->pagemap_fd));
		goto err_close_uffd;
	}
	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		ret = arm_region(d, &mem->regions[i]);
		if (ret)
			goto err_close_pagemap;
	}
	*out = d;
	return 0;

err_close_pagemap:
	close(d->pagemap_fd);
err_close_uffd:
	ferry_uffd_close(&d->uffd);	/* closing unregisters everything */
err_free:
	free(d);
	return ferry_fail_ctx(ret, "dirty tracking");
}

/*
 * One PAGEMAP_SCAN call from `start`; returns regions found or -errno.
 * `protect`: write-protect what it finds again, in the same walk.
 */
static int scan_once(struct ferry_dirty *d, uint64_t start, uint64_t end,
		     bool protect, uint64_t *walk_end)
{
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.flags = PM_SCAN_CHECK_WPASYNC |
			 (protect ? PM_SCAN_WP_MATCHING : 0),
		.start = start,
		.end = end,
		.vec = (uintptr_t)d->vec,
		.vec_len = SCAN_VEC_LEN,
		.category_mask = PAGE_IS_WRITTEN,
		.return_mask = PAGE_IS_WRITTEN,
	};
	int ret = sys_ioctl(d->pagemap_fd, PAGEMAP_SCAN, &arg);

	*walk_end = arg.walk_end;
	return ret;
}

static size_t mark_found(const struct ferry_region *r,
			 const struct page_region *v, int n, uint64_t *bitmap)
{
	uint64_t base = (uintptr_t)r->guest;
	size_t newly = 0;

	for (int i = 0; i < n; i++) {
		size_t first = (size_t)(v[i].start - base) / r->page_size;
		size_t last = (size_t)(v[i].end - base - 1) / r->page_size;

		newly += bitmap_set_range(bitmap, first, last - first + 1);
	}
	return newly;
}

/* Walk [start, end) of the guest view, marking what was written. */
static ssize_t collect_range(struct ferry_dirty *d, struct ferry_region *r,
			     uint64_t start, uint64_t end, bool protect,
			     uint64_t *bitmap)
{
	uint64_t walk_end;
	size_t newly = 0;
	int n;

	while (start < end) {
		n = scan_once(d, start, end, protect, &walk_end);
		if (n < 0)
			return ferry_fail(n, "PAGEMAP_SCAN: %s", strerror(-n));
		newly += mark_found(r, d->vec, n, bitmap);
		if (walk_end <= start)	/* no progress: never spin */
			return ferry_fail(-EIO, "PAGEMAP_SCAN made no "
					  "progress at %#llx",
					  (unsigned long long)start);
		start = walk_end;
	}
	return (ssize_t)newly;
}

/*
 * Looking a shmem file's data extents up costs about 45 ns per 4 KiB page
 * of data on this kind of host (SEEK_HOLE steps through the page cache
 * page by page), a PAGEMAP_SCAN walk about 3 ns per page of the range it
 * covers, holes included (they hold write-protect markers).  So the
 * extents are worth looking up only for a region that is mostly holes:
 * less data than this share of its size.
 */
#define SEEK_DATA_SHARE	16

/*
 * A page written through a shared shmem view exists in the memfd, so on a
 * sparse shmem region only the memfd's data extents (SEEK_DATA /
 * SEEK_HOLE) need a walk: the cost follows the memory the guest uses, not
 * its size.  A write into a hole after its extent was looked up stays
 * marked and is found by the next collect (the last one runs with the
 * vCPUs paused).  hugetlbfs has no SEEK_DATA (and 512 times fewer entries
 * to walk); a private view's writes land in anonymous memory, not in the
 * memfd; a region that is mostly data walks faster whole (the memfd's
 * blocks say how much data it holds at most: other regions may share it).
 */
static bool walk_whole(const struct ferry_region *r)
{
	struct stat st;

	if (r->backing == FERRY_BACKING_HUGETLB || r->private_view ||
	    fstat(r->memfd, &st))
		return true;
	return (uint64_t)st.st_blocks * 512 * SEEK_DATA_SHARE >= r->size;
}

static ssize_t collect(struct ferry_dirty *d, unsigned int idx, bool protect,
		       uint64_t *bitmap)
{
	struct ferry_region *r;
	off_t data, hole = 0;
	ssize_t n, newly = 0;
	int ret;

	if (idx >= d->mem->nr_regions)
		return ferry_fail(-EINVAL, "no region %u", idx);
	r = &d->mem->regions[idx];
	if (d->log)
		return d->log->collect(d->log->arg, idx, 0, r->nr_pages,
				       protect, bitmap);
	if (walk_whole(r))
		return collect_range(d, r, (uintptr_t)r->guest,
				     (uintptr_t)r->guest + r->size, protect,
				     bitmap);
	hole = (off_t)r->offset;
	while ((ret = sys_next_data(r->memfd, hole,
				    (off_t)(r->offset + r->size), &data,
				    &hole)) > 0) {
		uintptr_t view = (uintptr_t)r->guest - r->offset;

		n = collect_range(d, r, view + (uint64_t)data,
				  view + (uint64_t)hole, protect, bitmap);
		if (n < 0)
			return n;
		newly += n;
	}
	if (ret < 0)
		return ferry_fail(ret, "SEEK_DATA/SEEK_HOLE: %s",
				  strerror(-ret));
	return newly;
}

ssize_t ferry_dirty_collect_range(struct ferry_dirty *d, unsigned int idx,
				  uint64_t first, uint64_t count,
				  uint64_t *bitmap)
{
	struct ferry_region *r;
	uintptr_t start;

	if (idx >= d->mem->nr_regions)
		return ferry_fail(-EINVAL, "no region %u", idx);
	r = &d->mem->regions[idx];
	if (first > r->nr_pages || count > r->nr_pages - first)
		return ferry_fail(-EINVAL, "pages %llu+%llu are outside region "
				  "%u", (unsigned long long)first,
				  (unsigned long long)count, idx);
	if (d->log)
		return d->log->collect(d->log->arg, idx, first, count, true,
				       bitmap);
	start = (uintptr_t)r->guest + first * r->page_size;
	return collect_range(d, r, start, start + count * r->page_size, true,
			     bitmap);
}

ssize_t ferry_dirty_collect(struct ferry_dirty *d, unsigned int idx,
			    uint64_t *bitmap)
{
	return collect(d, idx, true, bitmap);
}

/*
 * Re-protecting is most of a collect's cost: a write to every entry the
 * walk finds written, and a TLB flush for each page table it changed,
 * which while the vCPUs run on another CPU is an interrupt there and a
 * wait for it (20-40 ms of CPU for 1 GiB here, with a few hundred pages
 * written by two threads).  A walk that only reads flushes nothing.
 */
ssize_t ferry_dirty_peek(struct ferry_dirty *d, unsigned int idx,
			 uint64_t *bitmap)
{
	return collect(d, idx, false, bitmap);
}

void ferry_dirty_stop(struct ferry_dirty *d)
{
	if (!d)
		return;
	if (d->log) {
		d->log->stop(d->log->arg);
		free(d);
		return;
	}
	for (unsigned int i = 0; i < d->mem->nr_regions; i++) {
		struct ferry_region *r = &d->mem->regions[i];

		ferry_uffd_unregister(&d->uffd, r->guest, r->size);
	}
	close(d->pagemap_fd);
	ferry_uffd_close(&d->uffd);
	free(d);
}
