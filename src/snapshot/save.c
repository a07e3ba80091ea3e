// SPDX-License-Identifier: MIT
/*
 * snap_save: a VM into a snapshot file, paused or live.
 *
 * Paused, the vCPUs stop for the whole save.  Live, they stop only while
 * their state is taken and every page to save is write-protected
 * (userfaultfd WP, synchronous: no WP_ASYNC), then run on:
 *
 *   vCPU            fault thread              sweep (calling thread)
 *    |--write P-->|                              |
 *    |  (held)    | claim P: UNSAVED -> SAVING   | claims runs of UNSAVED
 *    |            | copy P out of the memfd      | pages, copies them out,
 *    |<--wake-----| un-protect P                 | un-protects them (which
 *    |  writes    | sum, write P to the file     | wakes anyone held on
 *    |            | P: SAVED                     | them), sums, writes
 *
 * Each page is copied out exactly once, by whoever claims it, and always
 * before the guest can change it: the image is the one of the pause.
 * A write held on a page the sweep owns is woken by the sweep's
 * un-protect; the kernel rechecks the protection after queueing the
 * fault, so no wake-up is lost.
 *
 * The fault thread is the fault service's (pages/faultsvc.h), with the
 * save's handler, and the plan eventfd as the flow's own fd.
 *
 * The records go in last, at offset 0: a save that fails leaves a file
 * that no restore accepts.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/io.h"
#include "base/sys.h"
#include "base/thread.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/migrate.h"
#include "pages/faultsvc.h"
#include "pages/uffdmem.h"
#include "snapshot/snapshot.h"

enum save_state { SAVE_UNSAVED = 0, SAVE_SAVING, SAVE_SAVED };

struct early_write {
	struct uffd_msg msg;
	uint64_t t0;
};

/* Pages copied out in one go: 2 MiB, or one huge page. */
#define SAVE_CHUNK	FERRY_HUGE_PAGE_SIZE

struct saver {
	const struct ferry_vm *vm;
	int fd;
	bool live;
	struct ferry_wire_stream stream;
	uint8_t *head;			/* HEADER and VCPU records */
	uint64_t head_len;
	uint64_t **populated;		/* per region, at the pause */
	struct snap_plan plan;		/* sums: written by each page's
					 * owner, read after both threads
					 * are done */
	_Atomic uint8_t **state;	/* per region and page: save_state,
					 * claimed by compare-and-swap */
	uint8_t *sweep_buf, *fault_buf;	/* SAVE_CHUNK each, one per thread */

	/* live */
	struct uffdmem um;		/* guest memory, registered WP */
	struct faultsvc *svc;		/* the fault thread, its failure */
	int plan_fd;			/* eventfd: the plan is made */
	/* The fault thread's own: the plan seen, writes held before it. */
	bool planned;
	struct early_write *early;
	size_t nr_early, early_cap;

	/* Counters: any thread, relaxed; read after the threads end. */
	atomic_uint_fast64_t pages, zero_pages, bytes, saved_on_fault,
			     held_writes, held_total_ns;
	struct ferry_hist held;
};

/* ---- copying pages out -------------------------------------------------- */

/*
 * Copy pages out of guest memory.  From the memfd with pread: no page
 * faults in this process.  A private view's own copies are not in the
 * file, so those are read through the view (a read never trips the
 * write protection).
 */
static int copy_out(struct ferry_region *r, uint64_t first, uint64_t count,
		    uint8_t *buf)
{
	size_t off = (size_t)first * r->page_size, len = count * r->page_size;
	ssize_t n;

	if (r->private_view) {
		memcpy(buf, r->alias + off, len);
		return 0;
	}
	n = io_pread_full(r->memfd, buf, len, (off_t)(r->offset + off));
	if (n >= 0 && (size_t)n < len)
		n = -EIO;	/* the memfd is shorter than its region */
	if (n < 0)
		return ferry_fail((int)n, "reading guest memory: %s",
				  strerror((int)-n));
	return 0;
}

/* Sum each page, write the runs that are not all zero. */
static int store_run(struct saver *sv, struct snap_extent *e, uint64_t first,
		     uint64_t count, const uint8_t *buf)
{
	size_t ps = sv->vm->mem->regions[e->region].page_size;
	uint64_t zero = snap_zero_sum(ps), run = 0, nr_zero = 0;
	int ret = 0;

	for (uint64_t i = 0; i <= count && !ret; i++) {
		bool is_zero = i < count &&
			       migrate_page_is_zero(buf + i * ps, ps);

		if (i < count)
			e->sums[first + i - e->first_page] = is_zero ? zero :
				ferry_wire_page_sum(buf + i * ps, ps);
		nr_zero += is_zero;
		if (i < count && !is_zero) {
			run++;
			continue;
		}
		if (run)
			ret = snap_write(sv->fd, buf + (i - run) * ps,
					 run * ps, e->file_offset +
					 (first + i - run - e->first_page) * ps);
		run = 0;
	}
	atomic_fetch_add_explicit(&sv->pages, count - nr_zero,
				  memory_order_relaxed);
	atomic_fetch_add_explicit(&sv->zero_pages, nr_zero,
				  memory_order_relaxed);
	atomic_fetch_add_explicit(&sv->bytes, (count - nr_zero) * ps,
				  memory_order_relaxed);
	return ret;
}

static void mark(struct saver *sv, unsigned int region, uint64_t first,
		 uint64_t count, enum save_state to)
{
	for (uint64_t p = first; p < first + count; p++)
		atomic_store_explicit(&sv->state[region][p], (uint8_t)to,
				      memory_order_release);
}

/*
 * Save claimed pages.  Live, the copy is out before the un-protect: from
 * then on the guest may write them.  *held_ns (optional) gets the time
 * from entry to the un-protect.
 */
static int save_claimed(struct saver *sv, struct snap_extent *e,
			uint64_t first, uint64_t count, uint8_t *buf)
{
	struct ferry_region *r = &sv->vm->mem->regions[e->region];
	int ret = copy_out(r, first, count, buf);

	if (!ret && sv->live)
		ret = ferry_uffd_writeprotect(&sv->um.uffd,
					      uffdmem_addr(&sv->um, e->region,
							   first),
					      count * r->page_size, false, 0);
	if (!ret)
		ret = store_run(sv, e, first, count, buf);
	mark(sv, e->region, first, count, ret ? SAVE_UNSAVED : SAVE_SAVED);
	return ret;
}

static bool claim(struct saver *sv, unsigned int region, uint64_t page)
{
	uint8_t want = SAVE_UNSAVED;

	return atomic_compare_exchange_strong_explicit(
		&sv->state[region][page], &want, SAVE_SAVING,
		memory_order_acq_rel, memory_order_acquire);
}

/* ---- the sweep ---------------------------------------------------------- */

static int sweep_extent(struct saver *sv, struct snap_extent *e)
{
	size_t ps = sv->vm->mem->regions[e->region].page_size;
	uint64_t max = SAVE_CHUNK / ps, end = e->first_page + e->count;
	uint64_t page = e->first_page;
	int ret = 0;

	while (page < end && !ret) {
		uint64_t n = 0;

		while (n < max && page + n < end &&
		       claim(sv, e->region, page + n))
			n++;
		if (n)
			ret = save_claimed(sv, e, page, n, sv->sweep_buf);
		page += n ? n : 1;	/* a page the fault thread took */
	}
	return ret;
}

static int sweep(struct saver *sv)
{
	int ret = 0;

	for (size_t i = 0; i < sv->plan.nr_extents && !ret; i++)
		ret = sweep_extent(sv, &sv->plan.extents[i]);
	return ret;
}

/* ---- the fault thread (live) -------------------------------------------- */

/*
 * A guest writing one page is likely to write the next ones soon (a
 * sequential writer would otherwise wait once per page): the pages just
 * after it are claimed along with it, up to 64 KiB, so one copy, one
 * un-protect and one write of the file serve them all.
 */
#define SAVE_NEAR	(64U << 10)

static uint64_t claim_after(struct saver *sv, const struct snap_extent *e,
			    uint64_t page)
{
	size_t ps = sv->vm->mem->regions[e->region].page_size;
	uint64_t end = (uint64_t)e->first_page + e->count, n = 0;

	while (n + 1 < SAVE_NEAR / ps && page + 1 + n < end &&
	       claim(sv, e->region, page + 1 + n))
		n++;
	return n;
}

/* One held write; t0: when the fault thread read it. */
static int handle_wp(struct saver *sv, const struct uffd_msg *msg, uint64_t t0)
{
	uint64_t page, held, n;
	struct snap_extent *e;
	unsigned int idx;
	size_t ps;
	int ret = uffdmem_locate(&sv->um, msg, &idx, &page);

	if (ret)
		return ret;
	if (ferry_uffd_fault_kind(msg) != FERRY_FAULT_WP)
		return ferry_fail(-EPROTO, "unexpected fault on page %llu of "
				  "region %u", (unsigned long long)page, idx);
	ps = sv->vm->mem->regions[idx].page_size;
	e = snap_plan_find(&sv->plan, idx, page);
	/* Not ours to save: nothing was there at the pause. */
	if (!e)
		return ferry_uffd_writeprotect(&sv->um.uffd,
					       uffdmem_addr(&sv->um, idx, page),
					       ps, false, 0);
	/* Claimed by the sweep, whose un-protect wakes the writer. */
	if (!claim(sv, idx, page))
		return ferry_uffd_wake(&sv->um.uffd,
				       uffdmem_addr(&sv->um, idx, page), ps);
	n = 1 + claim_after(sv, e, page);
	ret = save_claimed(sv, e, page, n, sv->fault_buf);
	held = ferry_clock_now_ns() - t0;
	ferry_hist_record(&sv->held, held);
	atomic_fetch_add_explicit(&sv->held_writes, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&sv->held_total_ns, held,
				  memory_order_relaxed);
	atomic_fetch_add_explicit(&sv->saved_on_fault, n,
				  memory_order_relaxed);
	return ret;
}

/*
 * Writes that came before the plan: kept, with the time each was read,
 * so that their hold counts the wait for the plan too.
 */
static int keep(struct saver *sv, const struct uffd_msg *msg)
{
	if (sv->nr_early == sv->early_cap) {
		size_t cap = sv->early_cap ? sv->early_cap * 2 : 64;
		struct early_write *e = realloc(sv->early, cap * sizeof(*e));

		if (!e)
			return ferry_fail(-ENOMEM, "out of memory");
		sv->early = e;
		sv->early_cap = cap;
	}
	sv->early[sv->nr_early++] = (struct early_write){ .msg = *msg,
		.t0 = ferry_clock_now_ns() };
	return 0;
}

/*
 * Held writes are read from the moment the vCPUs resume, and served once
 * the plan says which pages are to be saved and where.
 */
static int on_fault(void *arg, const struct uffd_msg *msg)
{
	struct saver *sv = arg;

	return sv->planned ? handle_wp(sv, msg, ferry_clock_now_ns()) :
			     keep(sv, msg);
}

/* The plan eventfd fired (the service checks it before the uffd). */
static int plan_ready(void *arg)
{
	struct saver *sv = arg;
	int ret = 0;

	evfd_drain(sv->plan_fd);
	if (sv->planned)
		return 0;
	sv->planned = true;
	for (size_t i = 0; i < sv->nr_early && !ret; i++)
		ret = handle_wp(sv, &sv->early[i].msg, sv->early[i].t0);
	sv->nr_early = 0;
	return ret;
}

static const struct faultsvc_ops fault_ops = {
	.fault = on_fault,
	.ready = plan_ready,
};

/* ---- arming and disarming write protection ------------------------------ */

/*
 * All of guest memory is protected, holes too, so that from here on no
 * page can come into being without a write the fault thread sees: which
 * pages exist can then be found after the vCPUs resume, and is still what
 * existed at the pause.  A write to a hole, later, is simply let through.
 */
static int arm(struct saver *sv)
{
	struct ferry_mem *mem = sv->vm->mem;
	int ret = uffdmem_open(&sv->um, FERRY_UFFD_WP, UFFDMEM_KERNEL_FAULTS);

	if (ret)
		return ferry_fail_ctx(ret, "live snapshot");
	for (unsigned int i = 0; i < mem->nr_regions && !ret; i++)
		ret = ferry_uffd_writeprotect(&sv->um.uffd,
					      mem->regions[i].guest,
					      mem->regions[i].size, true, 0);
	return ret;
}

/* The service and the plan's eventfd, made before the vCPUs pause. */
static int make_service(struct saver *sv)
{
	int ret = uffdmem_init(&sv->um, sv->vm->mem);

	if (!ret)
		ret = faultsvc_create(&fault_ops, sv, &sv->svc);
	if (ret)
		return ret;
	sv->plan_fd = evfd_open();
	if (sv->plan_fd < 0)
		return ferry_fail(sv->plan_fd, "eventfd: %s",
				  strerror(-sv->plan_fd));
	return 0;
}

/* The fault thread's failure, with its reason, once it has stopped. */
static int stop_service(struct saver *sv)
{
	if (!sv->svc)
		return 0;
	faultsvc_stop(sv->svc);
	return faultsvc_error(sv->svc);
}

/*
 * Unregistering drops every protection left (a failed save leaves some)
 * and wakes any write still held.  Then THP gets its huge mappings back:
 * protecting split them.
 */
static void disarm(struct saver *sv)
{
	struct ferry_mem *mem = sv->vm->mem;

	uffdmem_close(&sv->um);
	for (unsigned int i = 0; i < mem->nr_regions; i++)
		if (!mem->regions[i].private_view)
			ferry_mem_region_collapse(&mem->regions[i]);
}

/* ---- the save ----------------------------------------------------------- */

static int alloc_tables(struct saver *sv)
{
	struct ferry_mem *mem = sv->vm->mem;
	unsigned int n = mem->nr_regions;

	sv->populated = calloc(n ? n : 1, sizeof(*sv->populated));
	sv->state = calloc(n ? n : 1, sizeof(*sv->state));
	sv->sweep_buf = snap_buf_alloc(SAVE_CHUNK);
	sv->fault_buf = snap_buf_alloc(SAVE_CHUNK);
	if (!sv->populated || !sv->state || !sv->sweep_buf || !sv->fault_buf)
		return ferry_fail(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < n; i++) {
		size_t pages = mem->regions[i].nr_pages;

		sv->populated[i] = bitmap_alloc(pages);
		sv->state[i] = calloc(pages ? pages : 1, 1);
		if (!sv->populated[i] || !sv->state[i])
			return ferry_fail(-ENOMEM, "out of memory");
	}
	return 0;
}

static void free_tables(struct saver *sv)
{
	for (unsigned int i = 0; sv->populated && i < sv->vm->mem->nr_regions;
	     i++) {
		free(sv->populated[i]);
		free(sv->state ? (void *)sv->state[i] : NULL);
	}
	free(sv->populated);
	free(sv->state);
	snap_buf_free(sv->sweep_buf, SAVE_CHUNK);
	snap_buf_free(sv->fault_buf, SAVE_CHUNK);
	snap_plan_free(&sv->plan);
	free(sv->head);
	faultsvc_destroy(sv->svc);
	if (sv->plan_fd >= 0)
		close(sv->plan_fd);
	free(sv->early);
}

/* What the vCPUs are paused for: their state. */
static int capture_vcpus(struct saver *sv)
{
	const struct ferry_vm *vm = sv->vm;
	int ret = ferry_wire_stream_init(&sv->stream, vm->mem,
					 FERRY_WIRE_SNAPSHOT,
					 vm->ops->nr_vcpus(vm->handle),
					 vm->desc, vm->desc_len);

	return ret ? ret : snap_encode_head(vm, &sv->stream, &sv->head,
					    &sv->head_len);
}

static int size_file(struct saver *sv, uint64_t len);

/* Which pages exist, where each goes in the file, a file that long. */
static int capture_pages(struct saver *sv)
{
	const struct ferry_vm *vm = sv->vm;
	int ret = 0;

	for (unsigned int i = 0; !ret && i < vm->mem->nr_regions; i++) {
		ssize_t n = ferry_mem_region_populated(&vm->mem->regions[i],
						   sv->populated[i]);

		ret = n < 0 ? (int)n : 0;
	}
	if (!ret)
		ret = snap_plan_make(vm->mem, sv->populated, sv->head_len,
				     &sv->plan);
	return ret ? ret : size_file(sv, sv->plan.file_size);
}

/*
 * The file is emptied before the vCPUs pause (freeing a big file's
 * blocks can take long: a discard, on some disks), then grown to the
 * planned length: all holes until pages land.
 */
static int size_file(struct saver *sv, uint64_t len)
{
	int ret = sys_ftruncate(sv->fd, (off_t)len);

	if (ret)
		return ferry_fail(ret, "sizing the snapshot file: %s",
				  strerror(-ret));
	return 0;
}

/*
 * Paused: from the pause to the end of the sweep.  Live: the pause is for
 * the vCPU states and arming write protection; writes that come while
 * the pages are found and planned wait for the plan, then are served.
 */
static int save_pages(struct saver *sv, struct ferry_snapshot_stats *st)
{
	const struct ferry_vm *vm = sv->vm;
	int ret = size_file(sv, 0), resumed, stopped;
	uint64_t t0;

	if (!ret && sv->live)
		ret = make_service(sv);
	t0 = ferry_clock_now_ns();
	if (!ret)
		ret = vm->ops->pause(vm->handle);
	if (ret)
		return ferry_fail_ctx(ret, "pausing the vCPUs");
	ret = capture_vcpus(sv);
	if (!ret)
		ret = sv->live ? arm(sv) : capture_pages(sv);
	if (!ret && !sv->live)
		ret = sweep(sv);
	resumed = vm->ops->resume(vm->handle);
	st->pause_ns = ferry_clock_now_ns() - t0;
	if (!ret && sv->live)
		ret = faultsvc_start(sv->svc, &sv->um.uffd, sv->plan_fd);
	if (!ret && sv->live)
		ret = capture_pages(sv);
	if (!ret && sv->live)
		evfd_signal(sv->plan_fd);
	if (!ret && sv->live)
		ret = sweep(sv);
	stopped = stop_service(sv);
	if (sv->live)
		disarm(sv);
	if (!ret)
		ret = stopped ? stopped : resumed;
	return ret;
}

static void fill_stats(struct saver *sv, struct ferry_snapshot_stats *st)
{
	struct stat sb;

	st->pages = atomic_load(&sv->pages);
	st->zero_pages = atomic_load(&sv->zero_pages);
	st->bytes = atomic_load(&sv->bytes);
	st->held_writes = atomic_load(&sv->held_writes);
	st->held_total_ns = atomic_load(&sv->held_total_ns);
	st->held_max_ns = ferry_hist_max(&sv->held);
	st->held_p99_ns = ferry_hist_percentile(&sv->held, 99);
	st->saved_on_fault = atomic_load(&sv->saved_on_fault);
	if (!fstat(sv->fd, &sb)) {
		st->file_size = (uint64_t)sb.st_size;
		st->file_blocks = (uint64_t)sb.st_blocks * 512;
	}
}

static int finish_file(struct saver *sv, bool sync)
{
	int ret = snap_write_records(sv->fd, &sv->stream, sv->head, &sv->plan,
				     atomic_load(&sv->pages),
				     atomic_load(&sv->zero_pages));

	if (!ret && sync && fdatasync(sv->fd))
		ret = ferry_fail(-errno, "fdatasync of the snapshot: %s",
				 strerror(errno));
	return ret;
}

int ferry_snapshot_save(const struct ferry_vm *vm, int fd,
			const struct ferry_snapshot_opts *opts,
			struct ferry_snapshot_stats *stats)
{
	struct saver *sv = calloc(1, sizeof(*sv));
	uint64_t t0 = ferry_clock_now_ns();
	int ret;

	memset(stats, 0, sizeof(*stats));
	if (!sv)
		return ferry_fail(-ENOMEM, "out of memory");
	sv->vm = vm;
	sv->fd = fd;
	sv->live = opts && opts->live;
	sv->um.uffd.fd = -1;
	sv->plan_fd = -1;
	ferry_hist_init(&sv->held);
	ret = ferry_vcpu_ops_check(vm->ops);
	if (!ret)
		ret = alloc_tables(sv);
	if (!ret)
		ret = save_pages(sv, stats);
	if (!ret)
		ret = finish_file(sv, opts && opts->sync);
	fill_stats(sv, stats);
	stats->total_ns = ferry_clock_now_ns() - t0;
	free_tables(sv);
	free(sv);
	return ret;
}
