/* SPDX-License-Identifier: MIT */
#ifndef FERRY_UFFDMEM_H
#define FERRY_UFFDMEM_H

/*
 * Guest memory seen through one userfaultfd: what every flow that serves
 * faults (post-copy, lazy restore, clones, live save) does with the whole
 * of a ferry_mem, written once.
 *
 *   open     a descriptor with the features every region needs for the
 *            flow's register modes, then every guest view registered
 *   locate   a fault's address as (region, page)
 *   map      one page installed in the guest view
 *   close    every view unregistered (the guest then faults on what is
 *            left as on any mapping), the descriptor closed
 *
 * The alias is never registered: writing through it never faults to ferry.
 */
#include <stdbool.h>
#include <stdint.h>

#include "ferry/mem.h"
#include "ferry/uffd.h"

/*
 * Guest memory is touched by the kernel too (KVM's vCPU faults, vhost,
 * O_DIRECT, a read() into a guest buffer), which a user-mode-only
 * descriptor does not report: the kernel's access would fail with EFAULT
 * instead of waiting for the page.  So every flow that registers guest
 * memory (post-copy, lazy restore, clones, live save) passes this to
 * uffdmem_open(), and a descriptor that reports kernel-mode faults is
 * what they get, or the flow fails saying what to change.  User-mode-only
 * is for memory nothing but user code touches: ferry's own scratch pages
 * and the async write-protect of dirty tracking, whose faults the kernel
 * resolves itself and never reports.
 */
#define UFFDMEM_KERNEL_FAULTS	true

struct uffdmem {
	struct ferry_uffd uffd;	/* fd -1 while closed; open: any thread
				 * issues install and wake ioctls on it */
	struct ferry_mem *mem;	/* set at init, never changed */
};

/*
 * Nothing open yet.  Makes sure the zeroes below exist (once a process),
 * so that no flow pays for them in its downtime: 0, or -ENOMEM.
 */
int uffdmem_init(struct uffdmem *um, struct ferry_mem *mem);

/*
 * FERRY_HUGE_PAGE_SIZE zero bytes, read-only, for writing a zero page and
 * for the COPY that fills a hole on hugetlbfs; one mapping for the whole
 * process.  Never NULL once a uffdmem_init() has succeeded.
 */
const void *uffdmem_zeroes(void);

/*
 * Open a userfaultfd with every feature the regions need for `modes`
 * (FERRY_UFFD_MISSING | MINOR | WP) and register every guest view with
 * them.  kernel_faults: see UFFDMEM_KERNEL_FAULTS.  When the VMM handed
 * in a userfaultfd (ferry_mem_set_uffd), a duplicate of that one is used
 * instead, checked for the features the modes need.  On failure nothing
 * stays open or registered.
 */
int uffdmem_open(struct uffdmem *um, uint64_t modes, bool kernel_faults);

/*
 * The same in two steps: the descriptor, then (maybe much later) the
 * registration.  After a failed registration, uffdmem_close() (what is
 * registered by then stays so until it).
 */
int uffdmem_open_only(struct uffdmem *um, uint64_t modes, bool kernel_faults);
int uffdmem_register(struct uffdmem *um, uint64_t modes);

/* Unregister every guest view and close.  Closed already: nothing. */
void uffdmem_close(struct uffdmem *um);

/* The guest view address of a page (at its region's page size). */
static inline uint8_t *uffdmem_addr(const struct uffdmem *um,
				    unsigned int region, uint64_t page)
{
	const struct ferry_region *r = &um->mem->regions[region];

	return r->guest + (size_t)page * r->page_size;
}

/*
 * The region and page a page-fault message is about: 0, or -EFAULT with a
 * reason when the address is outside guest memory.
 */
int uffdmem_locate(const struct uffdmem *um, const struct uffd_msg *msg,
		   unsigned int *region, uint64_t *page);

/*
 * Install one page in the guest view.  A page the memfd holds is
 * CONTINUEd; a hole (a page whose contents are zero and not in the memfd)
 * gets a zero page, or on hugetlbfs, which has none, a COPY of a zeroed
 * huge page.  -EEXIST means it is mapped already (a racing fault, the
 * mapper): fine.  Waiting threads are woken.  0, or -errno with a reason.
 */
int uffdmem_map_page(struct uffdmem *um, unsigned int region, uint64_t page,
		     bool hole);

#endif
