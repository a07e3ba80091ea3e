// SPDX-License-Identifier: MIT
/* mem: guest memory regions, each one memfd mapped twice. */
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "base/error.h"
#include "ferry/mem.h"
#include "base/sys.h"
#include "kernel/uapi.h"

static const char *const backing_names[FERRY_BACKING_COUNT] = {
	[FERRY_BACKING_SHMEM] = "shmem",
	[FERRY_BACKING_THP] = "thp",
	[FERRY_BACKING_HUGETLB] = "hugetlb",
};

const char *ferry_mem_backing_name(enum ferry_backing backing)
{
	if ((unsigned int)backing >= FERRY_BACKING_COUNT)
		return "?";
	return backing_names[backing];
}

int ferry_mem_backing_parse(const char *name, enum ferry_backing *out)
{
	for (int b = 0; b < FERRY_BACKING_COUNT; b++) {
		if (strcmp(name, backing_names[b]) == 0) {
			*out = (enum ferry_backing)b;
			return 0;
		}
	}
	return ferry_fail(-EINVAL, "unknown backing '%s' (shmem, thp, hugetlb)",
			  name);
}

size_t ferry_mem_backing_page_size(enum ferry_backing backing)
{
	return backing == FERRY_BACKING_HUGETLB ? FERRY_HUGE_PAGE_SIZE : 4096;
}

/* Alignment of both views: 2 MiB for THP so PMD mappings are possible. */
static size_t backing_align(enum ferry_backing backing)
{
	return backing == FERRY_BACKING_SHMEM ? 4096 : FERRY_HUGE_PAGE_SIZE;
}

int ferry_mem_create(struct ferry_mem **out)
{
	struct ferry_mem *mem = calloc(1, sizeof(*mem));

	if (!mem)
		return ferry_fail(-ENOMEM, "out of memory");
	*out = mem;
	return 0;
}

static void region_unmap(struct ferry_region *r)
{
	if (r->guest)
		sys_munmap(r->guest, r->size);
	if (r->alias && r->alias != r->guest)
		sys_munmap(r->alias, r->size);
	if (r->own_fd && r->memfd >= 0)
		close(r->memfd);
}

void ferry_mem_destroy(struct ferry_mem *mem)
{
	if (!mem)
		return;
	for (unsigned int i = 0; i < mem->nr_regions; i++)
		region_unmap(&mem->regions[i]);
	free(mem->regions);
	free(mem);
}

/*
 * Map fd at an address aligned to `align`: reserve size + align of address
 * space, place the file at the first aligned address inside it, and give
 * back the slack on both sides.
 */
static uint8_t *map_aligned(int fd, size_t size, size_t align, int flags,
			    int *err)
{
	size_t span = size + align;
	uint8_t *base, *start, *p;

	base = sys_mmap(NULL, span, PROT_NONE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, err);
	if (!base)
		return NULL;
	start = (uint8_t *)(((uintptr_t)base + align - 1) & ~(align - 1));
	p = sys_mmap(start, size, PROT_READ | PROT_WRITE, flags | MAP_FIXED,
		     fd, 0, err);
	if (!p) {
		sys_munmap(base, span);
		return NULL;
	}
	if (start > base)
		sys_munmap(base, (size_t)(start - base));
	if (start + size < base + span)
		sys_munmap(start + size, (size_t)(base + span - start - size));
	return p;
}

static int map_failed(struct ferry_region *r, int err)
{
	if (err == -ENOMEM && r->backing == FERRY_BACKING_HUGETLB)
		return ferry_fail(err, "hugetlb pool too small for %zu MiB: "
				  "raise vm.nr_hugepages (e.g. sysctl "
				  "vm.nr_hugepages=%zu) or run ferry as root",
				  r->size >> 20, r->nr_pages);
	return ferry_fail(err, "mmap of a %zu MiB %s region: %s",
			  r->size >> 20, ferry_mem_backing_name(r->backing),
			  strerror(-err));
}

/*
 * A private guest view reserves nothing up front (MAP_NORESERVE): on
 * hugetlbfs a private mapping would otherwise set aside a huge page for
 * every page it might copy, which is the whole point of sharing undone.
 */
static int map_guest(struct ferry_region *r, size_t align, int *err)
{
	int flags = r->private_view ? MAP_PRIVATE | MAP_NORESERVE : MAP_SHARED;

	r->guest = map_aligned(r->memfd, r->size, align, flags, err);
	return r->guest ? 0 : -1;
}

static int region_map(struct ferry_region *r)
{
	size_t align = backing_align(r->backing);
	int err;

	if (map_guest(r, align, &err))
		return map_failed(r, err);
	/* A private view's copies are seen only through the view itself. */
	r->alias = r->private_view ? r->guest :
		   map_aligned(r->memfd, r->size, align, MAP_SHARED, &err);
	if (!r->alias) {
		sys_munmap(r->guest, r->size);
		r->guest = NULL;
		return map_failed(r, err);
	}
	if (r->backing == FERRY_BACKING_THP) {
		/* Asks for huge pages where shmem_enabled allows "advise". */
		sys_madvise(r->guest, r->size, MADV_HUGEPAGE);
		if (r->alias != r->guest)
			sys_madvise(r->alias, r->size, MADV_HUGEPAGE);
	}
	return 0;
}

static int mem_append(struct ferry_mem *mem, struct ferry_region *r,
		      struct ferry_region **out)
{
	struct ferry_region *regions;
	int ret;

	regions = realloc(mem->regions,
			  (mem->nr_regions + 1) * sizeof(*regions));
	if (!regions)
		return ferry_fail(-ENOMEM, "out of memory");
	mem->regions = regions;
	r->nr_pages = r->size / r->page_size;
	r->guest_base = mem->total_size;
	ret = region_map(r);
	if (ret)
		return ret;
	regions[mem->nr_regions] = *r;
	mem->total_size += r->size;
	if (out)
		*out = &regions[mem->nr_regions];
	mem->nr_regions++;
	return 0;
}

static size_t round_up(size_t v, size_t to)
{
	return (v + to - 1) / to * to;
}

int ferry_mem_add_region(struct ferry_mem *mem, enum ferry_backing backing,
			 size_t size, struct ferry_region **out)
{
	struct ferry_region r = { .backing = backing, .own_fd = true };
	unsigned int flags = MFD_CLOEXEC;
	int ret;

	if ((unsigned int)backing >= FERRY_BACKING_COUNT || size == 0)
		return ferry_fail(-EINVAL, "bad region: backing %d, size %zu",
				  backing, size);
	r.page_size = ferry_mem_backing_page_size(backing);
	r.size = round_up(size, backing_align(backing));
	if (backing == FERRY_BACKING_HUGETLB)
		flags |= MFD_HUGETLB | MFD_HUGE_2MB;
	r.memfd = sys_memfd_create("ferry-guest", flags);
	if (r.memfd < 0)
		return ferry_fail(r.memfd, "memfd_create(%s): %s",
				  ferry_mem_backing_name(backing),
				  strerror(-r.memfd));
	ret = sys_ftruncate(r.memfd, (off_t)r.size);
	if (ret) {
		ferry_fail(ret, "sizing a %zu MiB memfd: %s", r.size >> 20,
			   strerror(-ret));
		goto err_close;
	}
	ret = mem_append(mem, &r, out);
	if (ret)
		goto err_close;
	return 0;

err_close:
	close(r.memfd);
	return ret;
}

/* Does the fd's file system match the backing the caller claims? */
static int check_fd_kind(int fd, enum ferry_backing backing, size_t size)
{
	struct statfs sfs;
	struct stat st;
	bool huge;

	if (fstatfs(fd, &sfs) || fstat(fd, &st))
		return ferry_fail(-errno, "fd %d: %s", fd, strerror(errno));
	huge = sfs.f_type == HUGETLBFS_MAGIC;
	if (!huge && sfs.f_type != TMPFS_MAGIC)
		return ferry_fail(-EINVAL, "fd %d is not shmem or hugetlbfs",
				  fd);
	if (huge != (backing == FERRY_BACKING_HUGETLB))
		return ferry_fail(-EINVAL, "fd %d is %s, not %s", fd,
				  huge ? "hugetlbfs" : "shmem",
				  ferry_mem_backing_name(backing));
	if (huge && (size_t)sfs.f_bsize != FERRY_HUGE_PAGE_SIZE)
		return ferry_fail(-EINVAL, "fd %d has %ld KiB huge pages; "
				  "ferry uses 2 MiB", fd, (long)sfs.f_bsize >> 10);
	if ((size_t)st.st_size < size)
		return ferry_fail(-EINVAL, "fd %d holds %lld bytes, less than "
				  "the %zu asked for", fd,
				  (long long)st.st_size, size);
	return 0;
}

static int add_fd_region(struct ferry_mem *mem, int memfd,
			 enum ferry_backing backing, size_t size,
			 bool private_view, struct ferry_region **out)
{
	struct ferry_region r = { .backing = backing, .own_fd = true,
				  .private_view = private_view };
	int ret;

	if ((unsigned int)backing >= FERRY_BACKING_COUNT || size == 0)
		return ferry_fail(-EINVAL, "bad region: backing %d, size %zu",
				  backing, size);
	r.page_size = ferry_mem_backing_page_size(backing);
	if (size % backing_align(backing))
		return ferry_fail(-EINVAL, "region size %zu is not a multiple "
				  "of %zu", size, backing_align(backing));
	r.size = size;
	ret = check_fd_kind(memfd, backing, size);
	if (ret)
		return ret;
	r.memfd = sys_ret(fcntl(memfd, F_DUPFD_CLOEXEC, 0));
	if (r.memfd < 0)
		return ferry_fail(r.memfd, "dup fd %d: %s", memfd,
				  strerror(-r.memfd));
	ret = mem_append(mem, &r, out);
	if (ret)
		close(r.memfd);
	return ret;
}

int ferry_mem_add_region_fd(struct ferry_mem *mem, int memfd,
			    enum ferry_backing backing, size_t size,
			    struct ferry_region **out)
{
	return add_fd_region(mem, memfd, backing, size, false, out);
}

int ferry_mem_add_region_private(struct ferry_mem *mem, int memfd,
				 enum ferry_backing backing, size_t size,
				 struct ferry_region **out)
{
	return add_fd_region(mem, memfd, backing, size, true, out);
}

static bool in_range(const uint8_t *base, size_t size, const void *addr)
{
	const uint8_t *p = addr;

	return base && p >= base && p < base + size;
}

struct ferry_region *ferry_mem_find(const struct ferry_mem *mem,
				    const void *addr)
{
	for (unsigned int i = 0; i < mem->nr_regions; i++)
		if (in_range(mem->regions[i].guest, mem->regions[i].size, addr))
			return &mem->regions[i];
	return NULL;
}

struct ferry_region *ferry_mem_find_alias(const struct ferry_mem *mem,
					  const void *addr)
{
	for (unsigned int i = 0; i < mem->nr_regions; i++)
		if (in_range(mem->regions[i].alias, mem->regions[i].size, addr))
			return &mem->regions[i];
	return NULL;
}

struct ferry_region *ferry_mem_find_gpa(const struct ferry_mem *mem,
					uint64_t gpa)
{
	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		struct ferry_region *r = &mem->regions[i];

		if (gpa >= r->guest_base && gpa - r->guest_base < r->size)
			return r;
	}
	return NULL;
}

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
			    (off_t)off, (off_t)len);
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
	off_t data, hole = 0;
	size_t n = 0;
	int ret;

	while ((ret = sys_next_data(r->memfd, hole, (off_t)r->size, &data,
				    &hole)) > 0)
		n += set_bits(bitmap, (size_t)data / r->page_size,
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
