// SPDX-License-Identifier: MIT
/*
 * kvm_mem: guest memory as a VMM has it.  The VM makes its own memfds
 * and maps them itself, hands each mapping to ferry as a region's guest
 * view (ferry_mem_add_region_mapped: ferry registers exactly it, and maps
 * only its alias), and gives KVM the same mappings as memory slots: what
 * the vCPUs touch is what ferry tracks and fills.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/memfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/error.h"
#include "kvm_int.h"

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB	(21U << 26)
#endif

static size_t align_of(enum ferry_backing backing)
{
	return backing == FERRY_BACKING_SHMEM ? 4096 : FERRY_HUGE_PAGE_SIZE;
}

/* A shared mapping of fd at an address aligned for the backing. */
static void *map_aligned(int fd, size_t size, size_t align)
{
	uint8_t *area = mmap(NULL, size + align, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
			     0);
	uint8_t *at;

	if (area == MAP_FAILED)
		return NULL;
	at = (uint8_t *)(((uintptr_t)area + align - 1) &
			 ~(uintptr_t)(align - 1));
	if (mmap(at, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
		 0) == MAP_FAILED) {
		munmap(area, size + align);
		return NULL;
	}
	if (at > area)
		munmap(area, (size_t)(at - area));
	munmap(at + size, (size_t)(area + align - at));
	return at;
}

static int memfd_of(enum ferry_backing backing, size_t size, int *fd)
{
	unsigned int flags = MFD_CLOEXEC;

	if (backing == FERRY_BACKING_HUGETLB)
		flags |= MFD_HUGETLB | MFD_HUGE_2MB;
	*fd = memfd_create("ferry-kvm", flags);
	if (*fd < 0)
		return ferry_error_set(-errno, "memfd_create (%s): %s",
				       ferry_mem_backing_name(backing),
				       strerror(errno));
	if (ftruncate(*fd, (off_t)size)) {
		int err = -errno;

		close(*fd);
		return ferry_error_set(err, "sizing a %s memfd to %zu MiB: %s",
				       ferry_mem_backing_name(backing),
				       size >> 20, strerror(-err));
	}
	return 0;
}

/* One region of the VM's own, handed to ferry as its guest view. */
static int add_region(struct ferry_mem *mem, enum ferry_backing backing,
		      uint64_t gpa, size_t size)
{
	struct ferry_region_spec spec = { .size = size, .gpa = gpa,
					  .backing = backing };
	int fd, ret = memfd_of(backing, size, &fd);

	if (ret)
		return ret;
	spec.memfd = fd;
	spec.addr = map_aligned(fd, size, align_of(backing));
	if (!spec.addr) {
		ret = ferry_error_set(-ENOMEM, "mapping %zu MiB of %s: %s",
				      size >> 20,
				      ferry_mem_backing_name(backing),
				      strerror(errno));
		close(fd);
		return ret;
	}
	if (backing == FERRY_BACKING_THP)
		madvise(spec.addr, size, MADV_HUGEPAGE);
	ret = ferry_mem_add_region_mapped(mem, &spec, NULL);
	close(fd);		/* ferry has its own descriptor */
	if (ret)
		munmap(spec.addr, size);
	return ret;
}

int kvm_mem_create(const struct kvm_layout *l, enum ferry_backing backing,
		   struct ferry_mem **out)
{
	struct ferry_mem *mem;
	int ret = ferry_mem_create(&mem);

	if (!ret)
		ret = add_region(mem, backing, 0, l->sys_size);
	if (!ret)
		ret = add_region(mem, backing, KG_RAM_GPA, l->ram_size);
	if (ret) {
		kvm_mem_destroy(mem);
		return ret;
	}
	*out = mem;
	return 0;
}

static bool same_page_size(enum ferry_backing a, enum ferry_backing b)
{
	return ferry_mem_backing_page_size(a) == ferry_mem_backing_page_size(b);
}

int kvm_mem_create_as(const struct ferry_wire_stream *stream,
		      enum ferry_backing backing, struct ferry_mem **out)
{
	struct ferry_mem *mem;
	int ret = ferry_mem_create(&mem);

	for (unsigned int i = 0; !ret && i < stream->nr_regions; i++) {
		const struct ferry_wire_region *wr = &stream->regions[i];
		const char *was = ferry_mem_backing_name(wr->backing);

		if (!same_page_size(wr->backing, backing))
			ret = ferry_error_set(-EINVAL, "the source's region "
					      "%u is %s; it cannot live on "
					      "%s here", i, was,
					      ferry_mem_backing_name(backing));
		else
			ret = add_region(mem, backing, wr->guest_base,
					 wr->size);
	}
	if (ret) {
		kvm_mem_destroy(mem);
		return ret;
	}
	*out = mem;
	return 0;
}

/* ferry never unmaps a VMM's mapping: the VM does, after ferry let go. */
void kvm_mem_destroy(struct ferry_mem *mem)
{
	struct { void *addr; size_t size; } maps[FERRY_WIRE_MAX_REGIONS];
	unsigned int n = 0;

	if (!mem)
		return;
	for (unsigned int i = 0;
	     i < mem->nr_regions && n < FERRY_WIRE_MAX_REGIONS;
	     i++) {
		const struct ferry_region *r = &mem->regions[i];

		if (!r->own_guest && !r->private_view) {
			maps[n].addr = r->guest;
			maps[n++].size = r->size;
		}
	}
	ferry_mem_destroy(mem);
	for (unsigned int i = 0; i < n; i++)
		munmap(maps[i].addr, maps[i].size);
}

/* ---- memory slots ------------------------------------------------------- */

static int set_slot(struct ferry_kvm *k, const struct kvm_slot *s)
{
	struct kvm_userspace_memory_region r = {
		.slot = s->slot, .flags = s->flags,
		.guest_phys_addr = s->gpa, .memory_size = s->size,
		.userspace_addr = (uintptr_t)s->hva,
	};
	int ret = kvm_ioctl(k->vm_fd, KVM_SET_USER_MEMORY_REGION, &r);

	if (ret)
		return ferry_error_set(ret, "KVM_SET_USER_MEMORY_REGION slot "
				       "%u (%llu MiB at %#llx): %s", s->slot,
				       (unsigned long long)s->size >> 20,
				       (unsigned long long)s->gpa,
				       strerror(-ret));
	return 0;
}

int kvm_slot_set_flags(struct ferry_kvm *k, unsigned int i, uint32_t flags)
{
	struct kvm_slot s = k->slots[i];

	s.flags = flags;
	return set_slot(k, &s);
}

static int add_ctl_slot(struct ferry_kvm *k)
{
	struct kvm_slot s = { .slot = KVM_CTL_SLOT, .gpa = KG_CTL_GPA,
			      .size = KG_PAGE };

	s.hva = mmap(NULL, KG_PAGE, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (s.hva == MAP_FAILED)
		return ferry_error_set(-errno, "mapping the control page: %s",
				       strerror(errno));
	k->ctl = s.hva;
	return set_slot(k, &s);
}

int kvm_slots_add(struct ferry_kvm *k)
{
	int ret = 0;

	if (k->mem->nr_regions > KVM_CTL_SLOT)
		return ferry_error_set(-EINVAL, "%u regions: the KVM VM takes "
				       "at most %d", k->mem->nr_regions,
				       KVM_CTL_SLOT);
	for (unsigned int i = 0; !ret && i < k->mem->nr_regions; i++) {
		const struct ferry_region *r = &k->mem->regions[i];

		k->slots[i] = (struct kvm_slot){ .slot = i,
			.gpa = r->guest_base, .size = r->size,
			.hva = r->guest };
		ret = set_slot(k, &k->slots[i]);
		k->nr_slots = i + 1;
	}
	return ret ? ret : add_ctl_slot(k);
}

/* ---- the RAM ------------------------------------------------------------ */

/*
 * The workload's cells are the RAM regions' (at and above KG_RAM_GPA),
 * numbered densely as for the built-in VM, so the same config and steps
 * leave the same RAM behind on either VM.
 */
int kvm_ram_view(struct ferry_kvm *k)
{
	const struct ferry_mem *mem = k->mem;
	unsigned int first = 0;

	while (first < mem->nr_regions &&
	       mem->regions[first].guest_base < KG_RAM_GPA)
		first++;
	if (first != 1 || first == mem->nr_regions ||
	    mem->nr_regions - first > KG_MAX_RAM_REGIONS ||
	    mem->regions[0].guest_base != 0)
		return ferry_error_set(-EINVAL, "guest memory is not laid out "
				       "as a KVM VM's: a system region at 0, "
				       "1 to %d RAM regions at 4 GiB and up",
				       KG_MAX_RAM_REGIONS);
	k->first_ram = first;
	k->ram = *mem;
	k->ram.regions = &mem->regions[first];
	k->ram.nr_regions = mem->nr_regions - first;
	k->ram.total_size = 0;
	for (unsigned int i = 0; i < k->ram.nr_regions; i++)
		k->ram.total_size += k->ram.regions[i].size;
	return cell_map_init(&k->cells, &k->ram);
}
