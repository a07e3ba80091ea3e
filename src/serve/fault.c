// SPDX-License-Identifier: MIT
/*
 * serve fault: a VM's faults, on the fault service (pages/faultsvc.h).
 *
 * The faults of a batch are collected and served once the whole batch
 * has been handed over, after its events: a REMOVE read behind a fault on
 * the same page has been applied by then, and the page gets zeroes.  That
 * is a valid order: the fault had not been served when the page was
 * discarded, so the access that took it comes after the discard.
 *
 *   batch_begin   (take install_lock: the fill installs nothing while
 *                  the kernel may have handed over a REMOVE not applied)
 *   read          up to 64 messages
 *   fault()       queue it
 *   event()       REMOVE / UNMAP: the pages are discarded; from now on
 *                 they are zeroes
 *   batch_end     (drop install_lock), serve the queue:
 *                   a discarded page or a hole of the file: ZEROPAGE
 *                   else: COPY from the file
 *                   EEXIST: someone put it there first: wake the faulter
 *                   EAGAIN: a REMOVE waits to be read: keep the fault,
 *                           read first (retry_fd), serve it after
 *                   anything else: the page cannot be served: poison
 *
 * The kernel's side of the REMOVE: madvise raises mmap_changing (copies
 * then fail with EAGAIN), queues the event, waits until it is read, then
 * drops mmap_changing and zaps the pages.  A copy begun before the event
 * was read is either refused or zapped; one begun after it must know of
 * it.  The fault thread is the only reader, and serves a batch only after
 * applying it; the fill thread installs under install_lock, which the
 * fault thread holds from its read until the batch is applied.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "ferry/clock.h"
#include "serve/serve.h"

static int queue(struct serve_vm *vm, const struct uffd_msg *msg)
{
	if (vm->nr_pending == vm->pending_cap) {
		size_t cap = vm->pending_cap ? vm->pending_cap * 2 : 128;
		struct serve_pending *p = realloc(vm->pending,
						  cap * sizeof(*p));

		if (!p)
			return ferry_fail(-ENOMEM, "out of memory");
		vm->pending = p;
		vm->pending_cap = cap;
	}
	vm->pending[vm->nr_pending++] = (struct serve_pending){
		.addr = msg->arg.pagefault.address,
		.flags = msg->arg.pagefault.flags,
		.read_ns = vm->batch_ns,
	};
	return 0;
}

static int on_fault(void *arg, const struct uffd_msg *msg)
{
	struct serve_vm *vm = arg;

	serve_count(&vm->stats.faults, 1);
	return queue(vm, msg);
}

/* [start, end) discarded: each page of a region in it reads zero now. */
static void discard(struct serve_vm *vm, uint64_t start, uint64_t end)
{
	uint64_t pages = 0;

	for (unsigned int i = 0; i < vm->nr_regions; i++) {
		struct serve_region *r = &vm->regions[i];
		uint64_t base = r->r.base_host_virt_addr;
		uint64_t lo = start > base ? start : base;
		uint64_t hi = end < base + r->r.size ? end : base + r->r.size;

		if (lo >= hi)
			continue;
		for (uint64_t p = (lo - base) >> r->shift;
		     p < ((hi - base + r->r.page_size - 1) >> r->shift); p++) {
			serve_bit_set(r->removed, p);
			serve_bit_clear(r->served, p);
			pages++;
		}
	}
	serve_count(&vm->stats.removes, 1);
	serve_count(&vm->stats.removed_pages, pages);
}

static int on_event(void *arg, const struct uffd_msg *msg)
{
	struct serve_vm *vm = arg;

	switch (msg->event) {
	case UFFD_EVENT_REMOVE:
		discard(vm, msg->arg.remove.start, msg->arg.remove.end);
		break;
	case UFFD_EVENT_UNMAP:
		discard(vm, msg->arg.remove.start, msg->arg.remove.end);
		break;
	case UFFD_EVENT_FORK:	/* refused at the handshake: never asked */
		close((int)msg->arg.fork.ufd);
		break;
	default:
		serve_vm_note(vm, "an unexpected userfaultfd event %u: "
			      "ignored", msg->event);
	}
	return 0;
}

/* ---- serving one fault --------------------------------------------------- */

static void served(struct serve_vm *vm, struct serve_region *r,
		   uint64_t page, const struct serve_pending *p)
{
	if (serve_bit_set(r->served, page) &&
	    __atomic_load_n(&vm->recording, __ATOMIC_RELAXED))
		serve_ws_record(vm, (unsigned int)(r - vm->regions), page);
	ferry_hist_record(&vm->stats.fault_latency,
			  ferry_clock_now_ns() - p->read_ns);
	__atomic_store_n(&vm->hint, (uint64_t)(r - vm->regions + 1) << 32 |
			 page, __ATOMIC_RELAXED);
}

/* Poisoned: 0; 1 to try again after a REMOVE is read; or -ESRCH. */
static int poison(struct serve_vm *vm, uint64_t addr, uint64_t page_size)
{
	int ret = serve_poison(vm, addr, page_size);

	return ret == -EAGAIN ? 1 : ret;
}

static int unservable(struct serve_vm *vm, const struct serve_pending *p,
		      struct serve_region *r, uint64_t page, int err)
{
	serve_vm_fail(vm, "page %llu of region %u (file offset %llu) cannot "
		      "be served: %s; it is poisoned",
		      (unsigned long long)page, (unsigned int)(r - vm->regions),
		      (unsigned long long)(r->r.offset + (page << r->shift)),
		      strerror(-err));
	return poison(vm, p->addr, r->r.page_size);
}

static int outside(struct serve_vm *vm, const struct serve_pending *p)
{
	if (p->flags & (UFFD_PAGEFAULT_FLAG_MINOR | UFFD_PAGEFAULT_FLAG_WP))
		serve_vm_fail(vm, "a %s fault at %#llx: this handler serves "
			      "missing pages only; it is poisoned",
			      p->flags & UFFD_PAGEFAULT_FLAG_WP ? "WP" :
			      "MINOR", (unsigned long long)p->addr);
	else
		serve_vm_fail(vm, "a fault at %#llx, outside every region the "
			      "VMM described; it is poisoned",
			      (unsigned long long)p->addr);
	return poison(vm, p->addr, 0);
}

/* 0 served (or poisoned), 1 to retry, -ESRCH the VMM is gone. */
static int serve_one(struct serve_vm *vm, const struct serve_pending *p)
{
	struct serve_region *r = serve_region_of(vm, p->addr);
	uint64_t page;
	bool zero;
	ssize_t n;

	if (!r || (p->flags & (UFFD_PAGEFAULT_FLAG_MINOR |
			       UFFD_PAGEFAULT_FLAG_WP)))
		return outside(vm, p);
	page = (p->addr - r->r.base_host_virt_addr) >> r->shift;
	zero = serve_bit_test(r->removed, page) ||
	       !serve_page_has_data(vm, r, page);
	n = serve_install(vm, r, page, 1, zero);
	if (n == 1)
		serve_count(zero ? &vm->stats.zero_pages : &vm->stats.copies,
			    1);
	else if (n == -EEXIST)
		serve_count(&vm->stats.races, 1);
	if (n == 1 || n == -EEXIST) {
		if (n == -EEXIST)
			serve_wake(vm, r, page);
		served(vm, r, page, p);
		return 0;
	}
	if (n == -EAGAIN)
		return 1;
	if (n == -ESRCH)
		return -ESRCH;
	/*
	 * Unregistered (handed off, or by the VMM): the faulting thread,
	 * woken, retries as a plain fault.  The kernel wakes the range's
	 * waiters as it unregisters, but one that queued itself just after
	 * that wake would wait forever.
	 */
	if (n == -ENOENT) {
		serve_wake(vm, r, page);
		return 0;
	}
	return unservable(vm, p, r, page, (int)n);
}

/*
 * Serve what is queued; what must wait stays, and retry_fd says so.  Once
 * one fault met EAGAIN the rest would too (a REMOVE to read first): they
 * wait without trying.
 */
static int serve_queue(struct serve_vm *vm)
{
	size_t kept = 0;
	bool blocked = false;
	int ret = 0;

	for (size_t i = 0; i < vm->nr_pending; i++) {
		int one = ret || blocked ? 1 : serve_one(vm, &vm->pending[i]);

		if (one < 0)
			ret = one;
		else if (one)
			vm->pending[kept++] = vm->pending[i];
		blocked |= one == 1;
	}
	vm->nr_pending = ret ? 0 : kept;
	if (ret == -ESRCH) {
		pthread_mutex_lock(&vm->news_lock);
		vm->service_ended = true;
		pthread_mutex_unlock(&vm->news_lock);
		serve_wake_server(vm->srv);
		return ferry_fail(ret, "the VMM is gone");
	}
	if (kept) {
		serve_count(&vm->stats.deferred, kept);
		evfd_signal(vm->retry_fd);
	}
	return 0;
}

/* ---- the fault service's handlers ---------------------------------------- */

static void batch_begin(void *arg)
{
	struct serve_vm *vm = arg;

	if (vm->remove_events)
		pthread_mutex_lock(&vm->install_lock);
	vm->batch_ns = ferry_clock_now_ns();
}

static int batch_end(void *arg, size_t nr)
{
	struct serve_vm *vm = arg;

	(void)nr;
	if (vm->remove_events)
		pthread_mutex_unlock(&vm->install_lock);
	return vm->nr_pending ? serve_queue(vm) : 0;
}

/* retry_fd: faults deferred by EAGAIN, the REMOVE that caused it read. */
static int retry(void *arg)
{
	struct serve_vm *vm = arg;

	evfd_drain(vm->retry_fd);
	return vm->nr_pending ? serve_queue(vm) : 0;
}

const struct faultsvc_ops serve_fault_ops = {
	.fault = on_fault,
	.event = on_event,
	.ready = retry,
	.batch_begin = batch_begin,
	.batch_end = batch_end,
};

/* Faults read and not served when the threads stop: woken, not lost. */
void serve_vm_wake_pending(struct serve_vm *vm)
{
	for (size_t i = 0; i < vm->nr_pending; i++)
		ferry_uffd_wake(&vm->uffd, (void *)(uintptr_t)
				(vm->pending[i].addr & ~(SERVE_PAGE - 1)),
				SERVE_PAGE);
	vm->nr_pending = 0;
}

/* ---- before the threads, and on the server's thread ---------------------- */

int serve_vm_take_early(struct serve_vm *vm, const struct serve_list *l)
{
	int ret = 0;

	for (size_t i = 0; i < l->nr_early && !ret; i++) {
		const struct uffd_msg *msg = &l->early[i];

		vm->batch_ns = ferry_clock_now_ns();
		ret = msg->event == UFFD_EVENT_PAGEFAULT ? on_fault(vm, msg) :
			on_event(vm, msg);
	}
	if (vm->nr_pending)
		evfd_signal(vm->retry_fd);
	return ret;
}

/*
 * A refused VM: every fault is poisoned.  A handed-off one has no region
 * registered: a fault read now was taken before that, and its thread,
 * woken, finds plain memory.  Events are read (a REMOVE waits for it).
 */
#define PASSIVE_MAX	SERVE_MAX_EARLY
#define PASSIVE_ROUNDS	1000

struct passive {
	uint64_t addr[PASSIVE_MAX];
	size_t nr;
};

static void passive_take(struct serve_vm *vm, struct passive *p,
			 const struct uffd_msg *msgs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (msgs[i].event == UFFD_EVENT_FORK)
			close((int)msgs[i].arg.fork.ufd);
		if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
			continue;
		serve_count(&vm->stats.faults, 1);
		if (p->nr < PASSIVE_MAX)
			p->addr[p->nr++] = msgs[i].arg.pagefault.address;
	}
}

static int passive_act(struct serve_vm *vm, uint64_t addr)
{
	if (vm->state == FERRY_SERVE_VM_REFUSED)
		return serve_poison(vm, addr, 0);
	ferry_uffd_wake(&vm->uffd, (void *)(uintptr_t)(addr & ~(SERVE_PAGE -
								  1)),
			SERVE_PAGE);
	return 0;
}

/* What the userfaultfd holds now, as much as p has room for. */
static void passive_read(struct serve_vm *vm, struct passive *p)
{
	struct uffd_msg msgs[PASSIVE_MAX];
	ssize_t n;

	while (p->nr < PASSIVE_MAX &&
	       (n = ferry_uffd_read(&vm->uffd, msgs,
				    PASSIVE_MAX - p->nr)) > 0)
		passive_take(vm, p, msgs, (size_t)n);
}

int serve_vm_passive(struct serve_vm *vm, const struct uffd_msg *msgs,
		     size_t nr)
{
	struct passive p = { .nr = 0 };

	passive_take(vm, &p, msgs, nr);	/* nr <= SERVE_MAX_EARLY */
	for (int round = 0; round < PASSIVE_ROUNDS; round++) {
		size_t kept = 0;

		passive_read(vm, &p);
		for (size_t i = 0; i < p.nr; i++) {
			int ret = passive_act(vm, p.addr[i]);

			if (ret == -ESRCH)
				return ret;
			if (ret == -EAGAIN)	/* a REMOVE: read it first */
				p.addr[kept++] = p.addr[i];
		}
		p.nr = kept;
		if (!kept)
			return 0;
		sched_yield();
	}
	return 0;
}
