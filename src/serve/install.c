// SPDX-License-Identifier: MIT
/*
 * serve install: pages into the VMM's address space.  The VMM's memory is
 * never mapped here: UFFDIO_COPY copies from this process's mapping of the
 * memory file into the VMM's missing page, UFFDIO_ZEROPAGE maps the zero
 * page there (hugetlb has none: a huge page of zeroes is copied), and
 * UFFDIO_POISON marks a page that cannot be served, so the access that
 * wanted it takes SIGBUS instead of waiting forever.
 *
 * Why poison and not something else, for a page that cannot be served:
 *
 *  - closing the userfaultfd does nothing: the VMM holds its own copy
 *    (Firecracker does), so the context lives on and its faults wait
 *    forever; and were it the last copy, the kernel would unregister
 *    the ranges and fill the page with zeroes: silent corruption;
 *  - UFFD_FEATURE_SIGBUS is the registrant's choice, made at UFFDIO_API
 *    and for every page, not the handler's for one;
 *  - UFFDIO_POISON (Linux 6.6) installs a marker the access faults on
 *    with SIGBUS (KVM turns it into SIGBUS on the vCPU thread): the VMM
 *    fails loudly, at the page that could not be served.
 *
 * When the kernel refuses to poison (older than 6.6), the VMM is killed
 * through its pidfd, as Firecracker's documentation asks of a handler
 * that cannot go on.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/mem.h"
#include "serve/serve.h"


struct serve_region *serve_region_of(struct serve_vm *vm, uint64_t addr)
{
	for (unsigned int i = 0; i < vm->nr_regions; i++) {
		struct serve_region *r = &vm->regions[i];

		if (addr >= r->r.base_host_virt_addr &&
		    addr - r->r.base_host_virt_addr < r->r.size)
			return r;
	}
	return NULL;
}

bool serve_page_has_data(const struct serve_vm *vm,
			 const struct serve_region *r, uint64_t page)
{
	return serve_file_has_data(vm->file, r->r.offset + (page << r->shift),
				   r->r.page_size);
}

static uint64_t page_addr(const struct serve_region *r, uint64_t page)
{
	return r->r.base_host_virt_addr + (page << r->shift);
}

ssize_t serve_install(struct serve_vm *vm, struct serve_region *r,
		      uint64_t page, uint64_t count, bool zero)
{
	void *dst = (void *)(uintptr_t)page_addr(r, page);
	size_t len = (size_t)(count << r->shift);
	const uint8_t *src = vm->file->map + r->r.offset + (page << r->shift);
	ssize_t n;

	if (zero && r->r.page_size == SERVE_PAGE)
		n = ferry_uffd_zeropage(&vm->uffd, dst, len, 0);
	else if (zero)		/* hugetlb: no zero page; one at a time */
		n = ferry_uffd_copy(&vm->uffd, dst, vm->file->zeroes,
				    (size_t)r->r.page_size, 0);
	else
		n = ferry_uffd_copy(&vm->uffd, dst, src, len, 0);
	if (n > 0 && !zero)
		serve_count(&vm->stats.bytes_copied, (uint64_t)n);
	return n > 0 ? (ssize_t)((uint64_t)n >> r->shift) : n;
}

void serve_wake(struct serve_vm *vm, struct serve_region *r, uint64_t page)
{
	ferry_uffd_wake(&vm->uffd, (void *)(uintptr_t)page_addr(r, page),
			(size_t)r->r.page_size);
}

static int poison_once(struct serve_vm *vm, uint64_t addr, uint64_t len)
{
	return ferry_uffd_poison(&vm->uffd, (void *)(uintptr_t)(addr &
				 ~(len - 1)), len);
}

static void kill_vmm(struct serve_vm *vm, int why)
{
	int ret = -ESRCH;

	if (vm->pidfd >= 0)
		ret = sys_ret(syscall(SYS_pidfd_send_signal, vm->pidfd,
				      SIGKILL, NULL, 0));
	serve_vm_fail(vm, "the kernel refused to poison a page (%s): %s",
		      strerror(-why), ret ? "and the VMM could not be killed; "
		      "it waits" : "the VMM was killed");
}

int serve_poison(struct serve_vm *vm, uint64_t addr, uint64_t page_size)
{
	int ret = poison_once(vm, addr, page_size ? page_size : SERVE_PAGE);

	if (ret == -EINVAL && !page_size)	/* a hugetlb range, maybe */
		ret = poison_once(vm, addr, FERRY_HUGE_PAGE_SIZE);
	if (ret == -ESRCH || ret == -EAGAIN)
		return ret;
	if (ret == -EEXIST || ret == -ENOENT)	/* there, or not ours */
		return 0;
	if (ret)
		kill_vmm(vm, ret);
	else
		serve_count(&vm->stats.poisoned, 1);
	return 0;
}
