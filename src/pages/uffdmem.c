// SPDX-License-Identifier: MIT
/* uffdmem: a ferry_mem registered with one userfaultfd, a page at a time. */
#include <pthread.h>
#include <string.h>

#include "base/error.h"
#include "base/sys.h"
#include "pages/uffdmem.h"

/*
 * Zeroes to write a zero page from, and to COPY into a hugetlbfs hole
 * (hugetlbfs has no zero page).  One read-only mapping of anonymous
 * memory, populated, serves every flow of the process: each 4 KiB of it
 * is the kernel's shared zero page, so it takes no memory and reading it
 * takes no fault.  Mapped once, never unmapped.
 */
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;
static const uint8_t *zeroes;
static int zeroes_err;		/* why the mapping failed, set once */

static void zeroes_init(void)
{
	zeroes = sys_mmap(NULL, FERRY_HUGE_PAGE_SIZE, PROT_READ,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0,
			  &zeroes_err);
}

const void *uffdmem_zeroes(void)
{
	pthread_once(&zero_once, zeroes_init);
	return zeroes;
}

int uffdmem_init(struct uffdmem *um, struct ferry_mem *mem)
{
	um->uffd.fd = -1;
	um->mem = mem;
	if (!uffdmem_zeroes())
		return ferry_fail(zeroes_err, "a zero huge page: %s",
				  strerror(-zeroes_err));
	return 0;
}

/* What every region needs for `modes`, shmem and hugetlbfs alike. */
static uint64_t features_needed(const struct ferry_mem *mem, uint64_t modes)
{
	uint64_t f = 0;

	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		bool hugetlb = mem->regions[i].backing == FERRY_BACKING_HUGETLB;

		f |= ferry_uffd_features_for(hugetlb, modes);
	}
	return f;
}

int uffdmem_open_only(struct uffdmem *um, uint64_t modes, bool kernel_faults)
{
	uint64_t need = features_needed(um->mem, modes);

	return um->mem->vmm_uffd >= 0 ?
	       ferry_uffd_adopt(&um->uffd, um->mem->vmm_uffd, need, 0) :
	       ferry_uffd_open(&um->uffd, need, 0, kernel_faults);
}

int uffdmem_register(struct uffdmem *um, uint64_t modes)
{
	int ret = 0;

	for (unsigned int i = 0; !ret && i < um->mem->nr_regions; i++) {
		struct ferry_region *r = &um->mem->regions[i];

		ret = ferry_uffd_register(&um->uffd, r->guest, r->size, modes,
					  NULL);
	}
	return ret;
}

int uffdmem_open(struct uffdmem *um, uint64_t modes, bool kernel_faults)
{
	int ret = uffdmem_open_only(um, modes, kernel_faults);

	if (!ret)
		ret = uffdmem_register(um, modes);
	/* Closing the descriptor unregisters what it registered. */
	if (ret)
		ferry_uffd_close(&um->uffd);
	return ret;
}

/*
 * Unregistering wakes the range's waiters *before* it takes the range
 * off the descriptor, so a vCPU whose fault queued itself in between
 * sleeps on: nobody reads the queue any more, and when the descriptor
 * is a VMM's, closing ours does not release it.  A wake after the
 * unregister finds it; woken, it faults again on a range no descriptor
 * watches, as on any mapping.
 */
void uffdmem_close(struct uffdmem *um)
{
	if (um->uffd.fd < 0)
		return;
	for (unsigned int i = 0; i < um->mem->nr_regions; i++) {
		struct ferry_region *r = &um->mem->regions[i];

		ferry_uffd_unregister(&um->uffd, r->guest, r->size);
		ferry_uffd_wake(&um->uffd, r->guest, r->size);
	}
	ferry_uffd_close(&um->uffd);
}

int uffdmem_locate(const struct uffdmem *um, const struct uffd_msg *msg,
		   unsigned int *region, uint64_t *page)
{
	void *addr = (void *)(uintptr_t)msg->arg.pagefault.address;
	struct ferry_region *r = ferry_mem_find(um->mem, addr);

	if (!r)
		return ferry_fail(-EFAULT, "fault at %p outside guest memory",
				  addr);
	*region = (unsigned int)(r - um->mem->regions);
	*page = (uint64_t)((uint8_t *)addr - r->guest) / r->page_size;
	return 0;
}

int uffdmem_map_page(struct uffdmem *um, unsigned int region, uint64_t page,
		     bool hole)
{
	struct ferry_region *r = &um->mem->regions[region];
	uint8_t *addr = uffdmem_addr(um, region, page);
	ssize_t n;

	if (!hole)
		n = ferry_uffd_continue(&um->uffd, addr, r->page_size, 0);
	else if (r->backing == FERRY_BACKING_HUGETLB)
		n = ferry_uffd_copy(&um->uffd, addr, uffdmem_zeroes(),
				    r->page_size, 0);
	else
		n = ferry_uffd_zeropage(&um->uffd, addr, r->page_size, 0);
	if (n == (ssize_t)r->page_size)
		return 0;
	/*
	 * Whoever mapped it woke the range; a wake where nobody waits costs
	 * nothing, and no thread is left asleep on a page that is there.
	 */
	if (n == -EEXIST)
		return ferry_uffd_wake(&um->uffd, addr, r->page_size);
	if (n >= 0)
		n = -EIO;
	return ferry_fail((int)n, "mapping page %llu of region %u: %s",
			  (unsigned long long)page, region, strerror((int)-n));
}
