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
#include "kernel/vma.h"
#include "ferry/uffd.h"

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
	mem->vmm_uffd = -1;
	*out = mem;
	return 0;
}

static void region_unmap(struct ferry_region *r)
{
	if (r->guest && r->own_guest)
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
	if (mem->vmm_uffd >= 0)
		close(mem->vmm_uffd);
	free(mem->regions);
	free(mem);
}

/*
 * Map fd at an address aligned to `align`: reserve size + align of address
 * space, place the file at the first aligned address inside it, and give
 * back the slack on both sides.
 */
static uint8_t *map_aligned(int fd, off_t offset, size_t size, size_t align,
			    int flags, int *err)
{
	size_t span = size + align;
	uint8_t *base, *start, *p;

	base = sys_mmap(NULL, span, PROT_NONE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, err);
	if (!base)
		return NULL;
	start = (uint8_t *)(((uintptr_t)base + align - 1) & ~(align - 1));
	p = sys_mmap(start, size, PROT_READ | PROT_WRITE, flags | MAP_FIXED,
		     fd, offset, err);
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

	r->guest = map_aligned(r->memfd, (off_t)r->offset, r->size, align,
			       flags, err);
	r->own_guest = r->guest != NULL;
	return r->guest ? 0 : -1;
}

/*
 * The guest view, unless the VMM brought its own, then the alias.  THP
 * views ask for huge pages (where shmem_enabled allows "advise"); the
 * VMM's own mapping is the VMM's to advise.
 */
static int region_map(struct ferry_region *r)
{
	size_t align = backing_align(r->backing);
	int err;

	if (!r->guest && map_guest(r, align, &err))
		return map_failed(r, err);
	/* A private view's copies are seen only through the view itself. */
	r->alias = r->private_view ? r->guest :
		   map_aligned(r->memfd, (off_t)r->offset, r->size, align,
			       MAP_SHARED, &err);
	if (!r->alias) {
		if (r->own_guest)
			sys_munmap(r->guest, r->size);
		r->guest = NULL;
		return map_failed(r, err);
	}
	if (r->backing == FERRY_BACKING_THP) {
		if (r->own_guest)
			sys_madvise(r->guest, r->size, MADV_HUGEPAGE);
		if (r->alias != r->guest)
			sys_madvise(r->alias, r->size, MADV_HUGEPAGE);
	}
	return 0;
}

/* The end of the highest region: where the next running-total one goes. */
static uint64_t mem_end(const struct ferry_mem *mem)
{
	const struct ferry_region *last;

	if (!mem->nr_regions)
		return 0;
	last = &mem->regions[mem->nr_regions - 1];
	return last->guest_base + last->size;
}

static bool overlap(uint64_t a, uint64_t a_len, uint64_t b, uint64_t b_len)
{
	return a < b + b_len && b < a + a_len;
}

/* Does r clash with a region already there, by gpa or by mapping? */
static int check_clash(const struct ferry_mem *mem,
		       const struct ferry_region *r)
{
	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		const struct ferry_region *o = &mem->regions[i];

		if (overlap(r->guest_base, r->size, o->guest_base, o->size))
			return ferry_fail(-EINVAL, "guest-physical range "
					  "[%#llx, %#llx) overlaps region %u "
					  "[%#llx, %#llx)",
					  (unsigned long long)r->guest_base,
					  (unsigned long long)(r->guest_base +
							       r->size), i,
					  (unsigned long long)o->guest_base,
					  (unsigned long long)(o->guest_base +
							       o->size));
		if (r->guest && (overlap((uintptr_t)r->guest, r->size,
					 (uintptr_t)o->guest, o->size) ||
				 overlap((uintptr_t)r->guest, r->size,
					 (uintptr_t)o->alias, o->size)))
			return ferry_fail(-EINVAL, "the mapping at %p overlaps "
					  "region %u's views", (void *)r->guest,
					  i);
	}
	return 0;
}

/* Map what ferry maps and insert in guest-physical order. */
static int mem_insert(struct ferry_mem *mem, struct ferry_region *r,
		      struct ferry_region **out)
{
	struct ferry_region *regions;
	unsigned int at = mem->nr_regions;
	int ret;

	if (r->guest_base % r->page_size ||
	    r->guest_base + r->size < r->guest_base)
		return ferry_fail(-EINVAL, "guest-physical address %#llx is "
				  "not a multiple of the %zu-byte page, or "
				  "wraps", (unsigned long long)r->guest_base,
				  r->page_size);
	ret = check_clash(mem, r);
	if (ret)
		return ret;
	regions = realloc(mem->regions,
			  (mem->nr_regions + 1) * sizeof(*regions));
	if (!regions)
		return ferry_fail(-ENOMEM, "out of memory");
	mem->regions = regions;
	r->nr_pages = r->size / r->page_size;
	ret = region_map(r);
	if (ret)
		return ret;
	while (at > 0 && regions[at - 1].guest_base > r->guest_base)
		at--;
	memmove(&regions[at + 1], &regions[at],
		(mem->nr_regions - at) * sizeof(*regions));
	regions[at] = *r;
	mem->total_size += r->size;
	mem->nr_regions++;
	if (out)
		*out = &regions[at];
	return 0;
}

static size_t round_up(size_t v, size_t to)
{
	return (v + to - 1) / to * to;
}

int ferry_mem_add_region(struct ferry_mem *mem, enum ferry_backing backing,
			 size_t size, struct ferry_region **out)
{
	return ferry_mem_add_region_at(mem, backing, size, mem_end(mem), out);
}

int ferry_mem_add_region_at(struct ferry_mem *mem, enum ferry_backing backing,
			    size_t size, uint64_t gpa,
			    struct ferry_region **out)
{
	struct ferry_region r = { .backing = backing, .own_fd = true,
				  .guest_base = gpa };
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
	ret = mem_insert(mem, &r, out);
	if (ret)
		goto err_close;
	return 0;

err_close:
	close(r.memfd);
	return ret;
}

/*
 * Does the fd's file system match the backing the caller claims, and does
 * the file reach `end`?
 */
static int check_fd_kind(int fd, enum ferry_backing backing, uint64_t end)
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
	if ((uint64_t)st.st_size < end)
		return ferry_fail(-EINVAL, "fd %d holds %lld bytes, less than "
				  "the %llu the region reaches", fd,
				  (long long)st.st_size,
				  (unsigned long long)end);
	return 0;
}

/* Backing, size and offset fit together; r's page size set. */
static int check_shape(struct ferry_region *r)
{
	size_t align;

	if ((unsigned int)r->backing >= FERRY_BACKING_COUNT || !r->size)
		return ferry_fail(-EINVAL, "bad region: backing %d, size %zu",
				  r->backing, r->size);
	align = backing_align(r->backing);
	r->page_size = ferry_mem_backing_page_size(r->backing);
	if (r->size % align || r->offset % align)
		return ferry_fail(-EINVAL, "region size %zu or offset %llu is "
				  "not a multiple of %zu (%s)", r->size,
				  (unsigned long long)r->offset, align,
				  ferry_mem_backing_name(r->backing));
	if (r->guest && (uintptr_t)r->guest % align)
		return ferry_fail(-EINVAL, "mapping at %p is not aligned to "
				  "%zu (%s)", (void *)r->guest, align,
				  ferry_mem_backing_name(r->backing));
	return 0;
}

/* Check r against memfd, take a descriptor of ferry's own, insert. */
static int add_on_fd(struct ferry_mem *mem, struct ferry_region *r,
		     int memfd, struct ferry_region **out)
{
	int ret = check_shape(r);

	if (!ret)
		ret = check_fd_kind(memfd, r->backing, r->offset + r->size);
	if (!ret && r->guest)
		ret = vma_check_shared(r->guest, r->size, memfd, r->offset);
	if (ret)
		return ret;
	r->own_fd = true;
	r->memfd = sys_ret(fcntl(memfd, F_DUPFD_CLOEXEC, 0));
	if (r->memfd < 0)
		return ferry_fail(r->memfd, "dup fd %d: %s", memfd,
				  strerror(-r->memfd));
	ret = mem_insert(mem, r, out);
	if (ret)
		close(r->memfd);
	return ret;
}

int ferry_mem_add_region_fd(struct ferry_mem *mem, int memfd,
			    enum ferry_backing backing, size_t size,
			    struct ferry_region **out)
{
	struct ferry_region r = { .backing = backing, .size = size,
				  .guest_base = mem_end(mem) };

	return add_on_fd(mem, &r, memfd, out);
}

int ferry_mem_add_region_private(struct ferry_mem *mem, int memfd,
				 enum ferry_backing backing, size_t size,
				 uint64_t gpa, struct ferry_region **out)
{
	struct ferry_region r = { .backing = backing, .size = size,
				  .guest_base = gpa, .private_view = true };

	return add_on_fd(mem, &r, memfd, out);
}

int ferry_mem_add_region_mapped(struct ferry_mem *mem,
				const struct ferry_region_spec *spec,
				struct ferry_region **out)
{
	struct ferry_region r = { .backing = spec->backing,
				  .size = spec->size, .offset = spec->offset,
				  .guest = spec->addr,
				  .guest_base = spec->gpa };
	int ret;

	if (!spec->addr)
		return ferry_fail(-EINVAL, "the region's mapping is NULL");
	ret = add_on_fd(mem, &r, spec->memfd, out);
	return ret ? ferry_fail_ctx(ret, "the VMM's region at gpa %#llx",
				    (unsigned long long)spec->gpa) : 0;
}

/* Every mode any flow registers, on either kind of memory. */
#define FLOW_FEATURES							\
	(ferry_uffd_features_for(false, FERRY_UFFD_MISSING |		\
				 FERRY_UFFD_MINOR | FERRY_UFFD_WP) |	\
	 ferry_uffd_features_for(true, FERRY_UFFD_MISSING |		\
				 FERRY_UFFD_MINOR | FERRY_UFFD_WP))

int ferry_mem_set_uffd(struct ferry_mem *mem, int fd)
{
	struct ferry_uffd u;
	int ret;

	if (fd < 0) {
		if (mem->vmm_uffd >= 0)
			close(mem->vmm_uffd);
		mem->vmm_uffd = -1;
		return 0;
	}
	ret = ferry_uffd_adopt(&u, fd, 0, FLOW_FEATURES);
	if (!ret)
		ret = ferry_uffd_reports_kernel_faults(&u);
	if (ret == 0)
		ret = ferry_fail(-EINVAL, "the VMM's userfaultfd reports "
				 "user-mode faults only: open it without "
				 "UFFD_USER_MODE_ONLY (or through "
				 "/dev/userfaultfd)");
	if (ret < 0) {
		ferry_uffd_close(&u);
		return ferry_fail_ctx(ret, "handing in userfaultfd %d", fd);
	}
	ferry_mem_set_uffd(mem, -1);
	mem->vmm_uffd = u.fd;
	return 0;
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

