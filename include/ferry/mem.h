/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MEM_H
#define FERRY_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Guest memory: a set of regions, each one memfd mapped twice.
 *
 *   guest view  what vCPUs touch; the mapping ferry registers with
 *               userfaultfd.  Aligned to the region's page size, and to
 *               2 MiB for THP so the kernel can map it with PMDs.
 *   alias       what ferry reads and writes (receive, fill, verify); never
 *               registered, so writing through it never faults to ferry.
 *
 * Both views are MAP_SHARED on the same file, so a store through one is
 * visible through the other.
 */

enum ferry_backing {
	FERRY_BACKING_SHMEM,	/* memfd, 4 KiB pages */
	FERRY_BACKING_THP,	/* memfd, THP shmem: 2 MiB-aligned, MADV_HUGEPAGE */
	FERRY_BACKING_HUGETLB,	/* memfd MFD_HUGETLB, 2 MiB pages */
	FERRY_BACKING_COUNT
};

#define FERRY_HUGE_PAGE_SIZE	(2UL << 20)

struct ferry_region {
	int memfd;
	enum ferry_backing backing;
	size_t size;		/* bytes, a multiple of page_size */
	size_t page_size;	/* userfaultfd / install unit: 4 KiB or 2 MiB */
	size_t nr_pages;	/* size / page_size */
	uint8_t *guest;		/* guest view */
	uint8_t *alias;		/* ferry's view */
	uint64_t guest_base;	/* guest-physical address of byte 0 */
	bool own_fd;		/* close memfd on destroy */
	bool private_view;	/* guest view is MAP_PRIVATE; alias == guest */
};

struct ferry_mem {
	struct ferry_region *regions;
	unsigned int nr_regions;
	uint64_t total_size;	/* sum of region sizes */
};

/* "shmem", "thp", "hugetlb" and back; parse returns 0 or -EINVAL. */
const char *ferry_mem_backing_name(enum ferry_backing backing);
int ferry_mem_backing_parse(const char *name, enum ferry_backing *out);

/* Page size that userfaultfd faults and installs at for this backing. */
size_t ferry_mem_backing_page_size(enum ferry_backing backing);

/* An empty set of regions. */
int ferry_mem_create(struct ferry_mem **out);

/* Unmaps every region and closes the memfds ferry created.  NULL is fine. */
void ferry_mem_destroy(struct ferry_mem *mem);

/*
 * Create a memfd of `size` bytes (rounded up to the page size) on `backing`,
 * map it twice and append it.  Guest-physical addresses follow on from the
 * previous region.  -ENOMEM with a reason naming vm.nr_hugepages when the
 * hugetlb pool is too small.  *out (optional) points into mem->regions and is
 * valid until the next add.
 */
int ferry_mem_add_region(struct ferry_mem *mem, enum ferry_backing backing,
			 size_t size, struct ferry_region **out);

/*
 * Same, on a memfd the caller owns (a VMM's guest RAM).  The fd is
 * duplicated; the caller keeps its own.  `size` must not exceed the file's
 * size.  -EINVAL if the fd's kind does not match `backing`.
 */
int ferry_mem_add_region_fd(struct ferry_mem *mem, int memfd,
			    enum ferry_backing backing, size_t size,
			    struct ferry_region **out);

/*
 * A region whose guest view is a private, copy-on-write mapping of a memfd
 * that others share (a clone of a snapshot): reads see the file, a write
 * copies that one page into this process.  There is no second view: the
 * alias is the guest view itself, since another private mapping would not
 * see the guest's copies.  So nothing may write through the alias while
 * the view is registered with userfaultfd, and nothing ever writes the
 * file through this region (ferry_mem_region_punch refuses it).  Mapped with
 * MAP_NORESERVE: on hugetlbfs a copy on write needs a free huge page in
 * the pool when it happens.  The fd is duplicated, as above.
 */
int ferry_mem_add_region_private(struct ferry_mem *mem, int memfd,
				 enum ferry_backing backing, size_t size,
				 struct ferry_region **out);

/* The region whose guest view (or alias) contains addr, or NULL. */
struct ferry_region *ferry_mem_find(const struct ferry_mem *mem,
				    const void *addr);
struct ferry_region *ferry_mem_find_alias(const struct ferry_mem *mem,
					  const void *addr);

/* The region holding guest-physical address gpa, or NULL. */
struct ferry_region *ferry_mem_find_gpa(const struct ferry_mem *mem,
					uint64_t gpa);

/*
 * Drop the pages of the guest view range from this process's page tables
 * (MADV_DONTNEED); the memfd keeps its contents.  The next guest access is
 * a minor fault.
 */
int ferry_mem_region_zap(struct ferry_region *region, size_t offset, size_t len);

/*
 * Free the pages of a range in the file itself (FALLOC_FL_PUNCH_HOLE); the
 * next access is a missing fault and reads zeroes.
 */
int ferry_mem_region_punch(struct ferry_region *region, size_t offset,
		       size_t len);

/*
 * Set a bit in `bitmap` (one per region page) for every page the memfd
 * holds, without reading or allocating any: SEEK_DATA / SEEK_HOLE on
 * shmem (reading a shmem hole would allocate it); on hugetlbfs, which
 * reports every page as data, and on a private view (whose copies are not
 * in the file), the pages mapped in either view (mincore).
 * Returns how many pages are populated, or -errno.
 */
ssize_t ferry_mem_region_populated(const struct ferry_region *region,
			       uint64_t *bitmap);

/*
 * Give a THP region its huge mappings back: MADV_COLLAPSE over the guest
 * view (works whatever shmem_enabled says), 2 MiB at a time, retrying the
 * ones the kernel finds busy.  -EAGAIN if some stayed busy or were refused
 * (the rest are collapsed); -EOPNOTSUPP when every one was refused as
 * before Linux 6.1; other backings are a no-op.
 */
int ferry_mem_region_collapse(struct ferry_region *region);

/*
 * How many bytes of the guest view the kernel maps with PMDs (smaps'
 * ShmemPmdMapped, or the whole mapping for hugetlb once populated:
 * Private_Hugetlb + Shared_Hugetlb).
 */
int ferry_mem_region_pmd_mapped(const struct ferry_region *region,
			    uint64_t *bytes);

#endif
