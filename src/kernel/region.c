// SPDX-License-Identifier: MIT
/*
 * region: what ferry does to one region's pages: drop them from the guest
 * view, punch them out of the file, find which exist, collapse THP.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/mem.h"
#include "kernel/uapi.h"

static int check_span(struct ferry_region *r, size_t off, size_t len)
{
	if (off % r->page_size || len % r->page_size || off > r->size ||
	    len > r->size - off)
		return ferry_fail(-EINVAL, "range %zu+%zu is not whole pages "
				  "of a %zu-byte region", off, len, r->size);
	return 0;
}

int ferry_mem_region_zap(struct ferry_region *r, size_t off, size_t len)
{
	int ret = check_span(r, off, len);

	if (ret)
		return ret;
	ret = sys_madvise(r->guest + off, len, MADV_DONTNEED);
	if (ret)
		return ferry_fail(ret, "MADV_DONTNEED: %s", strerror(-ret));
	return 0;
}

int ferry_mem_region_punch(struct ferry_region *r, size_t off, size_t len)
{
	int ret = check_span(r, off, len);

	if (ret)
		return ret;
	if (r->private_view)
		return ferry_fail(-EINVAL, "punching a hole in a private view "
				  "would punch the file it shares");
	ret = sys_fallocate(r->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			    (off_t)(r->offset + off), (off_t)len);
	if (ret)
		return ferry_fail(ret, "punching a hole: %s", strerror(-ret));
	return 0;
}

/*
 * Collapse one 2 MiB range.  -EAGAIN is the kernel finding a page busy
 * (a vCPU writing it, a racing fault): a moment later it usually works.
 */
static int collapse_range(uint8_t *addr)
{
	int ret = -EAGAIN;

	for (int tries = 0; tries < 20 && ret == -EAGAIN; tries++) {
		ret = sys_madvise(addr, FERRY_HUGE_PAGE_SIZE, MADV_COLLAPSE);
		if (ret == -EAGAIN)
			usleep(1000);
	}
	return ret;
}

int ferry_mem_region_collapse(struct ferry_region *r)
{
	size_t busy = 0, refused = 0;
	int last = 0;

	if (r->backing != FERRY_BACKING_THP)
		return 0;
	for (size_t off = 0; off < r->size; off += FERRY_HUGE_PAGE_SIZE) {
		int ret = collapse_range(r->guest + off);

		if (ret == -EAGAIN)
			busy++;
		else if (ret)
			refused++;
		if (ret)
			last = ret;
	}
	if (busy + refused == r->size / FERRY_HUGE_PAGE_SIZE &&
	    last == -EINVAL)
		return ferry_fail(-EOPNOTSUPP, "MADV_COLLAPSE refused every "
				  "huge page (Linux 6.1 brought it for shmem)");
	if (busy || refused)
		return ferry_fail(-EAGAIN, "%zu of %zu huge pages were not "
				  "collapsed (%zu busy, %zu refused: %s)",
				  busy + refused,
				  r->size / FERRY_HUGE_PAGE_SIZE, busy, refused,
				  strerror(-last));
	return 0;
}

/* The value of a "Key:   123 kB" line of one smaps entry, in bytes. */
static uint64_t smaps_field(const char *entry, const char *key)
{
	const char *line = strstr(entry, key);

	if (!line)
		return 0;
	return strtoull(line + strlen(key), NULL, 10) << 10;
}

/* Find the smaps entry for the VMA starting at addr; copy it out. */
static int smaps_entry(const void *addr, char *out, size_t len)
{
	char head[32], *buf, *at, *end;
	size_t cap = 8 << 20;
	ssize_t n;

	buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	n = sys_read_file("/proc/self/smaps", buf, cap);
	if (n < 0) {
		free(buf);
		return (int)n;
	}
	snprintf(head, sizeof(head), "%lx-", (unsigned long)(uintptr_t)addr);
	at = strstr(buf, head);
	while (at && at != buf && at[-1] != '\n')
		at = strstr(at + 1, head);
	if (!at) {
		free(buf);
		return -ENOENT;
	}
	end = strstr(at + 1, "VmFlags:");
	n = end ? end - at : (ssize_t)strlen(at);
	if ((size_t)n >= len)
		n = (ssize_t)len - 1;
	memcpy(out, at, (size_t)n);
	out[n] = '\0';
	free(buf);
	return 0;
}

int ferry_mem_region_pmd_mapped(const struct ferry_region *r, uint64_t *bytes)
{
	char entry[4096];
	int ret = smaps_entry(r->guest, entry, sizeof(entry));

	if (ret)
		return ferry_fail(ret, "reading /proc/self/smaps: %s",
				  strerror(-ret));
	if (r->backing == FERRY_BACKING_HUGETLB)
		*bytes = smaps_field(entry, "Shared_Hugetlb:") +
			 smaps_field(entry, "Private_Hugetlb:");
	else
		*bytes = smaps_field(entry, "ShmemPmdMapped:");
	return 0;
}

static size_t set_bits(uint64_t *bitmap, size_t first, size_t count)
{
	for (size_t p = first; p < first + count; p++)
		bitmap[p / 64] |= 1ULL << (p % 64);
	return count;
}

static ssize_t populated_seek(const struct ferry_region *r, uint64_t *bitmap)
{
	off_t base = (off_t)r->offset, data, hole = base;
	size_t n = 0;
	int ret;

	while ((ret = sys_next_data(r->memfd, hole, base + (off_t)r->size,
				    &data, &hole)) > 0)
		n += set_bits(bitmap, (size_t)(data - base) / r->page_size,
			      (size_t)(hole - data + (off_t)r->page_size - 1) /
			      r->page_size);
	if (ret < 0)
		return ferry_fail(ret, "SEEK_DATA/SEEK_HOLE: %s",
				  strerror(-ret));
	return (ssize_t)n;
}

/* hugetlbfs: mincore reports one byte per 4 KiB of the mapping. */
static ssize_t populated_mincore(const struct ferry_region *r,
				 uint64_t *bitmap)
{
	size_t per_page = r->page_size / 4096, chunk = 64, n = 0;
	unsigned char vec[64 * 512];

	for (size_t p = 0; p < r->nr_pages; p += chunk) {
		size_t count = r->nr_pages - p < chunk ? r->nr_pages - p : chunk;
		size_t len = count * r->page_size;

		for (int view = 0; view < 2; view++) {
			uint8_t *base = view ? r->alias : r->guest;

			if (mincore(base + p * r->page_size, len, vec))
				return ferry_fail(-errno, "mincore: %s",
						  strerror(errno));
			for (size_t i = 0; i < count; i++)
				if ((vec[i * per_page] & 1) &&
				    !(bitmap[(p + i) / 64] >> ((p + i) % 64) & 1))
					n += set_bits(bitmap, p + i, 1);
		}
	}
	return (ssize_t)n;
}

ssize_t ferry_mem_region_populated(const struct ferry_region *r,
			       uint64_t *bitmap)
{
	/*
	 * A private view's own copies are not in the file: mincore sees
	 * them, and the file's pages behind the view as well.
	 */
	if (r->backing == FERRY_BACKING_HUGETLB || r->private_view)
		return populated_mincore(r, bitmap);
	return populated_seek(r, bitmap);
}
