/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MEM_H
#define FERRY_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Guest memory: a set of regions, each a range of one memfd mapped twice.
 *
 *   guest view  what vCPUs (and KVM, and the VMM's device backends)
 *               touch; the mapping ferry registers with userfaultfd.
 *               Either ferry maps it (ferry_mem_add_region*), or it is
 *               the VMM's own mapping (ferry_mem_add_region_mapped).
 *               Aligned to the region's page size, and to 2 MiB for THP
 *               so the kernel can map it with PMDs.
 *   alias       what ferry reads and writes (receive, fill, verify); never
 *               registered, so writing through it never faults to ferry.
 *               ferry always maps it itself.
 *
 * Both views are MAP_SHARED on the same file at the same offset, so a
 * store through one is visible through the other.  Registering any other
 * mapping than the one the guest really uses would lose the guest's
 * writes silently: that is why a VMM hands in its own.
 *
 * Each region sits at a guest-physical address (gpa) of its own; regions
 * are kept sorted by gpa, and gaps between them are allowed (an x86 VM's
 * RAM below 3 GiB and above 4 GiB).  They never overlap.
 */

enum ferry_backing {
	FERRY_BACKING_SHMEM,	/* memfd, 4 KiB pages */
	FERRY_BACKING_THP,	/* memfd, THP shmem: 2 MiB-aligned, MADV_HUGEPAGE */
	FERRY_BACKING_HUGETLB,	/* memfd MFD_HUGETLB, 2 MiB pages */
	FERRY_BACKING_COUNT
};

#define FERRY_HUGE_PAGE_SIZE	(2UL << 20)

struct ferry_region {
	int memfd;		/* ferry's own descriptor (a dup or created) */
	uint64_t offset;	/* of byte 0 in the memfd */
	enum ferry_backing backing;
	size_t size;		/* bytes, a multiple of page_size */
	size_t page_size;	/* userfaultfd / install unit: 4 KiB or 2 MiB */
	size_t nr_pages;	/* size / page_size */
	uint8_t *guest;		/* guest view */
	uint8_t *alias;		/* ferry's view */
	uint64_t guest_base;	/* guest-physical address of byte 0 */
	bool own_fd;		/* close memfd on destroy */
	bool own_guest;		/* ferry mapped the guest view: unmap it on
				 * destroy (false: it is the VMM's) */
	bool private_view;	/* guest view is MAP_PRIVATE; alias == guest */
};

struct ferry_dirty_log;	/* ferry/dirty.h */

struct ferry_mem {
	struct ferry_region *regions;	/* sorted by guest_base */
	unsigned int nr_regions;
	uint64_t total_size;	/* sum of region sizes (gaps not counted) */
	/*
	 * A userfaultfd the VMM handed in (ferry_mem_set_uffd), duplicated,
	 * or -1: every flow that registers this memory then registers it
	 * through that descriptor instead of opening one of its own.
	 */
	int vmm_uffd;
	/*
	 * The VM's own dirty log, or NULL: write-protect tracks writes
	 * (ferry/dirty.h, ferry_dirty_set_log).
	 */
	const struct ferry_dirty_log *dirty_log;
};

/* "shmem", "thp", "hugetlb" and back; parse returns 0 or -EINVAL. */
const char *ferry_mem_backing_name(enum ferry_backing backing);
int ferry_mem_backing_parse(const char *name, enum ferry_backing *out);

/* Page size that userfaultfd faults and installs at for this backing. */
size_t ferry_mem_backing_page_size(enum ferry_backing backing);

/* An empty set of regions (no userfaultfd handed in). */
int ferry_mem_create(struct ferry_mem **out);

/* Unmaps every region and closes the memfds ferry created.  NULL is fine. */
void ferry_mem_destroy(struct ferry_mem *mem);

/*
 * Create a memfd of `size` bytes (rounded up to the page size) on `backing`,
 * map it twice and add it right after the highest region (guest-physical
 * address = the end of the highest region; 0 for the first).  -ENOMEM
 * with a reason naming vm.nr_hugepages when the hugetlb pool is too
 * small.  *out (optional) points into mem->regions and is valid until the
 * next add.
 */
int ferry_mem_add_region(struct ferry_mem *mem, enum ferry_backing backing,
			 size_t size, struct ferry_region **out);

/*
 * Same, at guest-physical address `gpa` (a multiple of the page size, not
 * overlapping another region): what a destination uses to lay memory out
 * as the source's stream says, gaps included.
 */
int ferry_mem_add_region_at(struct ferry_mem *mem, enum ferry_backing backing,
			    size_t size, uint64_t gpa,
			    struct ferry_region **out);

/*
 * A region on memory the VMM already has: its own memfd and its own
 * mapping of it, which is what its vCPUs, KVM's memory slots and its
 * device backends use.
 */
struct ferry_region_spec {
	void *addr;		/* the VMM's mapping: MAP_SHARED of memfd at
				 * offset, readable and writable */
	size_t size;		/* bytes */
	int memfd;		/* memfd_create() (MFD_HUGETLB for hugetlb) */
	uint64_t offset;	/* in the memfd of the byte at addr */
	uint64_t gpa;		/* guest-physical address of the byte at addr */
	enum ferry_backing backing;
};

/*
 * Add the VMM's mapping as a region's guest view: ferry registers *that*
 * mapping with userfaultfd when a flow needs to, and maps only its alias
 * itself (MAP_SHARED of the same memfd at the same offset).  The memfd is
 * duplicated (the VMM keeps its own); the mapping stays the VMM's, and
 * ferry never unmaps it.  It must stay mapped, unchanged, until
 * ferry_mem_destroy().
 *
 * Everything that could not work is refused with -EINVAL and a reason,
 * never accepted: an address, size or offset not aligned to the
 * backing's page size (2 MiB for thp and hugetlb), a gpa not aligned to
 * it; a memfd of another kind than `backing`, or shorter than offset +
 * size; a range of the address space not wholly mapped, or mapped by
 * anything but MAP_SHARED of that memfd at that offset, readable and
 * writable (checked VMA by VMA in /proc/self/maps: device, inode and
 * offset) -- in particular private anonymous memory, which post-copy
 * cannot fill; a gpa range or a mapping that overlaps another region's.
 */
int ferry_mem_add_region_mapped(struct ferry_mem *mem,
				const struct ferry_region_spec *spec,
				struct ferry_region **out);

/*
 * As ferry_mem_add_region (ferry maps both views, after the highest
 * region), on a memfd the caller owns, from offset 0.  The fd is
 * duplicated; the caller keeps its own.  `size` must not exceed the
 * file's size.  -EINVAL if the fd's kind does not match `backing`.  A VMM
 * whose vCPUs use a mapping of their own must hand that mapping in with
 * ferry_mem_add_region_mapped instead: the guest view ferry maps here is
 * not the one they would write.
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
 * the pool when it happens.  The fd is duplicated, as above; the region
 * sits at guest-physical address `gpa`.
 */
int ferry_mem_add_region_private(struct ferry_mem *mem, int memfd,
				 enum ferry_backing backing, size_t size,
				 uint64_t gpa, struct ferry_region **out);

/*
 * Hand in a userfaultfd the VMM created (userfaultfd(2) without
 * UFFD_USER_MODE_ONLY, or /dev/userfaultfd, with O_NONBLOCK and
 * O_CLOEXEC, in this process), for the flows to register this memory
 * with: a VMM that must own the descriptor (it opened it with privileges
 * ferry lacks, or hands it to another process) passes it here.
 *
 * ferry duplicates it and never closes the VMM's own.  If UFFDIO_API has
 * not been done on it, ferry does it, asking for every feature the kernel
 * has that ferry may use; if it has (the VMM negotiated), ferry reads the
 * features granted from /proc/self/fdinfo, and a flow needing one that is
 * missing fails with -EOPNOTSUPP naming it.  A descriptor that does not
 * report kernel-mode faults (UFFD_USER_MODE_ONLY) is refused with -EINVAL:
 * the kernel's accesses to guest memory would fail.  While a flow uses it,
 * the VMM must not read events from it, nor register or unregister the
 * guest's memory with it.  -1 takes a handed-in descriptor back out.
 */
int ferry_mem_set_uffd(struct ferry_mem *mem, int uffd);

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

#ifdef __cplusplus
}
#endif

#endif
