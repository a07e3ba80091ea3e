// SPDX-License-Identifier: MIT
/*
 * serve fill: a VM's pages put in place before the guest asks, by one
 * thread beside the fault thread.
 *
 *   1. the working set given (prefetch_ws), in the order it was touched,
 *      256 pages at a time, each batch in file order and in runs: one
 *      UFFDIO_COPY (or ZEROPAGE) per run.  Above the vCPUs: they are
 *      about to touch these.
 *   2. while the first touches are recorded, or with no_fill: wait
 *   3. every page of the file's data not in place yet, in file order, 64
 *      KiB at a time, first the 1 MiB after the last fault; below the
 *      vCPUs (nice 10): a vCPU that touches a page not in yet has it read
 *      at once by the fault thread anyway.
 *   4. every page in place: the regions are unregistered.  The holes of
 *      the file and the pages the VMM discarded, never installed, are
 *      the kernel's to fill with zeroes from now on, which is what they
 *      hold; the VM needs the server no more (hand-off).
 *
 * Each install happens under install_lock, at the fault thread's priority
 * while it holds it (a fault read meanwhile waits for it), and only into
 * pages that are neither in place nor discarded (fault.c says why).
 */
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "ferry/mem.h"
#include "serve/serve.h"

#ifndef MADV_POPULATE_READ		/* Linux 5.14 */
#define MADV_POPULATE_READ	22
#endif

#define FILL_CHUNK	(64 * 1024ULL)
#define NEAR_BYTES	(1024 * 1024ULL)
#define WS_BATCH	256
#define FILL_NICE	10

struct fill {
	struct serve_vm *vm;
	int nice;		/* the thread's level between installs */
	bool incomplete;	/* a page could not be put in place */
};

static void set_nice(int nice)
{
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice))
		errno = 0;	/* best effort */
}

static void lock_install(struct fill *f)
{
	if (!f->vm->remove_events)
		return;
	sys_thread_boost(SYS_BOOST_URGENT);
	pthread_mutex_lock(&f->vm->install_lock);
}

static void unlock_install(struct fill *f)
{
	if (!f->vm->remove_events)
		return;
	pthread_mutex_unlock(&f->vm->install_lock);
	set_nice(f->nice);
}

static bool stopping(const struct serve_vm *vm)
{
	return faultsvc_stopping(vm->svc);
}

/* The file's pages in the page cache and mapped, before the lock. */
static void populate(struct serve_vm *vm, struct serve_region *r,
		     uint64_t page, uint64_t count)
{
	uintptr_t src = (uintptr_t)vm->file->map + r->r.offset +
			(page << r->shift);

	if (madvise((void *)src, count << r->shift, MADV_POPULATE_READ))
		errno = 0;	/* a hint: the copy reads it anyway */
}

/* ---- runs ---------------------------------------------------------------- */

enum need { NEED_NOTHING, NEED_DATA, NEED_ZERO };

static enum need need(struct serve_vm *vm, struct serve_region *r,
		      uint64_t page, bool holes)
{
	if (serve_bit_test(r->served, page) || serve_bit_test(r->removed, page))
		return NEED_NOTHING;
	if (serve_page_has_data(vm, r, page))
		return NEED_DATA;
	return holes ? NEED_ZERO : NEED_NOTHING;
}

/* Pages from *page on (before end) of one kind, at most max. */
static uint64_t next_run(struct serve_vm *vm, struct serve_region *r,
			 uint64_t *page, uint64_t end, bool holes,
			 uint64_t max, enum need *kind)
{
	uint64_t n = 0;

	while (*page < end &&
	       (*kind = need(vm, r, *page, holes)) == NEED_NOTHING)
		(*page)++;
	while (*page + n < end && n < max &&
	       need(vm, r, *page + n, holes) == *kind)
		n++;
	return n;
}

static bool finishing(const struct serve_vm *vm)
{
	return __atomic_load_n(&vm->finish, __ATOMIC_ACQUIRE);
}

/*
 * A page the file cannot give.  A fault on it will poison it; when the
 * server stops, it is poisoned now, so that the rest can be handed off.
 */
static int unreadable(struct fill *f, struct serve_region *r,
		      uint64_t page, int err)
{
	struct serve_vm *vm = f->vm;
	uint64_t off = r->r.offset + (page << r->shift);

	if (!finishing(vm)) {
		f->incomplete = true;
		serve_vm_note(vm, "fill: page %llu of region %u (file offset "
			      "%llu): %s; a touch of it will be poisoned",
			      (unsigned long long)page,
			      (unsigned int)(r - vm->regions),
			      (unsigned long long)off, strerror(-err));
		return 0;
	}
	serve_vm_fail(vm, "page %llu of region %u (file offset %llu) cannot "
		      "be served: %s; it is poisoned",
		      (unsigned long long)page, (unsigned int)(r - vm->regions),
		      (unsigned long long)off, strerror(-err));
	return serve_poison(vm, r->r.base_host_virt_addr + (page << r->shift),
			    r->r.page_size);
}

/* One locked install: pages put in place (0: the first was discarded). */
static ssize_t install_locked(struct fill *f, struct serve_region *r,
			      uint64_t page, uint64_t count, bool zero)
{
	uint64_t k = 0;
	ssize_t n = 0;

	lock_install(f);
	while (k < count && !serve_bit_test(r->removed, page + k))
		k++;
	if (k)
		n = serve_install(f->vm, r, page, k, zero);
	unlock_install(f);
	return n;
}

/* A run of one kind: 0, or -ESRCH / -ECANCELED. */
static int install_run(struct fill *f, struct serve_region *r, uint64_t page,
		       uint64_t count, bool zero, uint64_t *counter)
{
	while (count) {
		ssize_t n;

		if (!zero)
			populate(f->vm, r, page, count);
		n = install_locked(f, r, page, count, zero);
		if (n > 0) {
			for (ssize_t i = 0; i < n; i++)
				serve_bit_set(r->served, page + (uint64_t)i);
			serve_count(counter, (uint64_t)n);
		} else if (n == -EEXIST) {
			serve_bit_set(r->served, page);
		} else if (n == -EAGAIN) {
			if (stopping(f->vm))
				return -ECANCELED;
			sched_yield();	/* a REMOVE to be read first */
			continue;
		} else if (n == -ESRCH) {
			return -ESRCH;
		} else if (n < 0 && n != -ENOENT) {
			/* (ENOENT: the VMM took the range back) */
			if (unreadable(f, r, page, (int)n))
				return -ESRCH;
		}
		n = n > 0 ? n : 1;	/* 0: a discarded page, skipped */
		page += (uint64_t)n;
		count -= (uint64_t)n;
	}
	return 0;
}

static int fill_near(struct fill *f);

/* Every page of [first, first + count) that needs it; near: faults too. */
static int install_span(struct fill *f, struct serve_region *r,
			uint64_t first, uint64_t count, bool holes, bool near,
			uint64_t *counter)
{
	uint64_t end = first + count, page = first, n;
	uint64_t chunk = FILL_CHUNK >> r->shift ? FILL_CHUNK >> r->shift : 1;
	enum need kind = NEED_NOTHING;
	int ret = 0;

	while (!ret && (n = next_run(f->vm, r, &page, end, holes, chunk,
				     &kind))) {
		if (stopping(f->vm))
			return -ECANCELED;
		if (near)
			ret = fill_near(f);
		if (!ret)
			ret = install_run(f, r, page, n, kind == NEED_ZERO,
					  counter);
		page += n;
	}
	return ret;
}

/* The pages after the one a vCPU last faulted on. */
static int fill_near(struct fill *f)
{
	struct serve_vm *vm = f->vm;
	uint64_t h = __atomic_exchange_n(&vm->hint, 0, __ATOMIC_RELAXED);
	unsigned int region = (unsigned int)(h >> 32) - 1;
	uint64_t page = (h & 0xffffffffULL) + 1, want;
	struct serve_region *r;

	if (!h || region >= vm->nr_regions)
		return 0;
	r = &vm->regions[region];
	want = NEAR_BYTES >> r->shift ? NEAR_BYTES >> r->shift : 1;
	if (page >= r->nr_pages)
		return 0;
	if (want > r->nr_pages - page)
		want = r->nr_pages - page;
	return install_span(f, r, page, want, false, false,
			    &vm->stats.filled);
}

/* ---- the working set ----------------------------------------------------- */

static int page_cmp(const void *a, const void *b)
{
	const struct snap_page *x = a, *y = b;

	if (x->region != y->region)
		return x->region < y->region ? -1 : 1;
	return (x->page > y->page) - (x->page < y->page);
}

/* A sorted batch: each run of consecutive pages in one go. */
static int ws_batch(struct fill *f, struct snap_page *p, size_t n)
{
	int ret = 0;

	qsort(p, n, sizeof(*p), page_cmp);
	for (size_t i = 0, k; i < n && !ret; i += k) {
		for (k = 1; i + k < n && p[i + k].region == p[i].region &&
		     p[i + k].page <= p[i + k - 1].page + 1; k++)
			;
		ret = install_span(f, &f->vm->regions[p[i].region], p[i].page,
				   p[i + k - 1].page - p[i].page + 1, true,
				   false, &f->vm->stats.prefetched);
	}
	return ret;
}

static int fill_ws(struct fill *f)
{
	struct serve_vm *vm = f->vm;
	struct snap_page batch[WS_BATCH];
	int ret = 0;

	for (size_t i = 0; i < vm->nr_prefetch && !ret; i += WS_BATCH) {
		size_t n = vm->nr_prefetch - i < WS_BATCH ?
			   vm->nr_prefetch - i : WS_BATCH;

		memcpy(batch, vm->prefetch + i, n * sizeof(*batch));
		ret = ws_batch(f, batch, n);
	}
	return ret;
}

/* ---- waiting, filling, handing off --------------------------------------- */

/* ms left of the recording, -1: until told. */
static int record_left_ms(const struct serve_vm *vm)
{
	uint64_t limit = vm->srv->opts.record_ms, spent;

	if (!limit)
		return -1;
	spent = (ferry_clock_now_ns() - vm->start_ns) / 1000000ULL;
	return spent >= limit ? 0 : (int)(limit - spent);
}

static void end_recording(struct serve_vm *vm)
{
	if (serve_ws_save(vm, vm->srv->opts.record_ws))
		serve_vm_note(vm, "%s", ferry_error_msg());
}

/* Until the fill may run: recording over, or told to finish.  0 or stop. */
static int wait_to_fill(struct serve_vm *vm)
{
	for (;;) {
		bool rec = __atomic_load_n(&vm->recording, __ATOMIC_RELAXED);
		int ret;

		if (rec && (finishing(vm) || !record_left_ms(vm)))
			end_recording(vm);
		else if (!rec && (finishing(vm) || !vm->srv->opts.no_fill))
			return 0;
		if (__atomic_load_n(&vm->recording, __ATOMIC_RELAXED) != rec)
			continue;
		ret = evfd_wait(vm->fill_fd, faultsvc_stop_fd(vm->svc),
				rec ? record_left_ms(vm) : -1);
		if (ret == 0)
			return -ECANCELED;
		if (ret < 0 && ret != -ETIMEDOUT)
			return ret;
	}
}

static int fill_all(struct fill *f)
{
	int ret = 0;

	for (unsigned int i = 0; i < f->vm->nr_regions && !ret; i++)
		ret = install_span(f, &f->vm->regions[i], 0,
				   f->vm->regions[i].nr_pages, false, true,
				   &f->vm->stats.filled);
	return ret;
}

/* Its pidfd readable: the VMM has exited. */
static bool vmm_exited(const struct serve_vm *vm)
{
	struct pollfd p = { .fd = vm->pidfd, .events = POLLIN };

	return vm->pidfd >= 0 && poll(&p, 1, 0) > 0;
}

static void hand_off(struct serve_vm *vm)
{
	for (unsigned int i = 0; i < vm->nr_regions; i++) {
		struct serve_region *r = &vm->regions[i];
		int ret = ferry_uffd_unregister(&vm->uffd, (void *)(uintptr_t)
						r->r.base_host_virt_addr,
						(size_t)r->r.size);

		/* (ENOMEM too when the VMM's address space is gone) */
		if (ret && !vmm_exited(vm))
			serve_vm_note(vm, "region %u stays served: %s", i,
				      ferry_error_msg());
		if (ret)
			return;
	}
	pthread_mutex_lock(&vm->news_lock);
	vm->handed_off = true;
	pthread_mutex_unlock(&vm->news_lock);
	serve_wake_server(vm->srv);
}

void *serve_fill_main(void *arg)
{
	struct fill f = { .vm = arg, .nice = SYS_BOOST_BULK };
	struct serve_vm *vm = f.vm;
	int ret = 0;

	sys_thread_boost(SYS_BOOST_BULK);
	if (vm->nr_prefetch)
		ret = fill_ws(&f);
	if (!ret)
		ret = wait_to_fill(vm);
	f.nice = FILL_NICE;
	set_nice(FILL_NICE);
	if (!ret)
		ret = fill_all(&f);
	if (!ret && !f.incomplete)
		hand_off(vm);
	pthread_mutex_lock(&vm->news_lock);
	vm->fill_over = true;
	vm->service_ended |= ret == -ESRCH;
	pthread_mutex_unlock(&vm->news_lock);
	serve_wake_server(vm->srv);
	return NULL;
}
