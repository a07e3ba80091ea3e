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
 * The records go in last, at offset 0: a save that fails leaves a file
 * that no restore accepts.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "ferry/stats.h"
#include "ferry/uffd.h"
#include "migrate/migrate.h"
#include "snapshot/snapshot.h"
#include "base/sys.h"

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
	struct ferry_uffd uffd;
	bool registered;
	int stop_fd;			/* eventfd: stop the fault thread */
	int plan_fd;			/* eventfd: the plan is made */
	/* The fault thread's own: the plan seen, writes held before it. */
	bool planned;
	struct early_write *early;
	size_t nr_early, early_cap;
	pthread_t fault_thread;
	bool fault_started;
	/* The fault thread's failure: it writes both before it exits;
	 * read after the join. */
	int fault_err;
	char fault_reason[256];

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
	size_t done = 0;

	if (r->private_view) {
		memcpy(buf, r->alias + off, len);
		return 0;
	}
	while (done < len) {
		ssize_t n = sys_pread(r->memfd, buf + done, len - done,
				      (off_t)(off + done));

		if (n == -EINTR)
			continue;
		if (n <= 0)
			return ferry_fail(n ? (int)n : -EIO, "reading guest "
					  "memory: %s",
					  strerror(n ? (int)-n : EIO));
		done += (size_t)n;
	}
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
		ret = ferry_uffd_writeprotect(&sv->uffd, r->guest +
					      first * r->page_size,
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
	void *addr = (void *)(uintptr_t)msg->arg.pagefault.address;
	struct ferry_region *r = ferry_mem_find(sv->vm->mem, addr);
	uint64_t page, held, n;
	struct snap_extent *e;
	unsigned int idx;
	int ret;

	if (!r || ferry_uffd_fault_kind(msg) != FERRY_FAULT_WP)
		return ferry_fail(-EPROTO, "unexpected fault at %p", addr);
	idx = (unsigned int)(r - sv->vm->mem->regions);
	page = (uint64_t)((uint8_t *)addr - r->guest) / r->page_size;
	e = snap_plan_find(&sv->plan, idx, page);
	/* Not ours to save: nothing was there at the pause. */
	if (!e)
		return ferry_uffd_writeprotect(&sv->uffd, r->guest +
					       page * r->page_size,
					       r->page_size, false, 0);
	/* Claimed by the sweep, whose un-protect wakes the writer. */
	if (!claim(sv, idx, page))
		return ferry_uffd_wake(&sv->uffd, r->guest + page * r->page_size,
				       r->page_size);
	n = 1 + claim_after(sv, e, page);
	ret = save_claimed(sv, e, page, n, sv->fault_buf);
	held = ferry_now_ns() - t0;
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
		.t0 = ferry_now_ns() };
	return 0;
}

static int on_fault(void *arg, const struct uffd_msg *msg)
{
	struct saver *sv = arg;

	return sv->planned ? handle_wp(sv, msg, ferry_now_ns()) :
			     keep(sv, msg);
}

static int plan_ready(struct saver *sv)
{
	uint64_t v;
	int ret = 0;

	if (read(sv->plan_fd, &v, sizeof(v)) < 0)
		return ferry_fail(-errno, "eventfd: %s", strerror(errno));
	sv->planned = true;
	for (size_t i = 0; i < sv->nr_early && !ret; i++)
		ret = handle_wp(sv, &sv->early[i].msg, sv->early[i].t0);
	sv->nr_early = 0;
	return ret;
}

/*
 * Reads held writes from the moment the vCPUs resume, and serves them
 * once the plan says which pages are to be saved and where.
 */
static int serve_faults(struct saver *sv)
{
	struct pollfd pfd[3] = {
		{ .fd = sv->uffd.fd, .events = POLLIN },
		{ .fd = sv->plan_fd, .events = POLLIN },
		{ .fd = sv->stop_fd, .events = POLLIN },
	};
	int ret = 0;

	while (!ret) {
		if (poll(pfd, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return ferry_fail(-errno, "poll: %s", strerror(errno));
		}
		if (pfd[2].revents)
			break;
		if (pfd[1].revents && !sv->planned)
			ret = plan_ready(sv);
		if (!ret && pfd[0].revents)
			ret = snap_uffd_drain(&sv->uffd, on_fault, sv);
	}
	return ret;
}

static void *fault_main(void *arg)
{
	struct saver *sv = arg;
	int ret;

	sys_thread_boost(SYS_BOOST_URGENT);
	ret = serve_faults(sv);
	sv->fault_err = ret;
	if (ret)
		snprintf(sv->fault_reason, sizeof(sv->fault_reason), "%s",
			 ferry_errmsg());
	return NULL;
}

/* ---- arming and disarming write protection ------------------------------ */

static uint64_t wp_features(const struct ferry_mem *mem)
{
	uint64_t f = 0;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		f |= ferry_uffd_features_for(
			mem->regions[i].backing == FERRY_BACKING_HUGETLB,
			FERRY_UFFD_WP);
	return f;
}

/*
 * All of guest memory is protected, holes too, so that from here on no
 * page can come into being without a write the fault thread sees: which
 * pages exist can then be found after the vCPUs resume, and is still what
 * existed at the pause.  A write to a hole, later, is simply let through.
 */
static int arm(struct saver *sv)
{
	struct ferry_mem *mem = sv->vm->mem;
	int ret = ferry_uffd_open(&sv->uffd, wp_features(mem), 0, false);

	if (ret)
		return ferry_fail_ctx(ret, "live snapshot");
	sv->registered = true;
	for (unsigned int i = 0; i < mem->nr_regions && !ret; i++) {
		struct ferry_region *r = &mem->regions[i];

		ret = ferry_uffd_register(&sv->uffd, r->guest, r->size,
					  FERRY_UFFD_WP, NULL);
		if (!ret)
			ret = ferry_uffd_writeprotect(&sv->uffd, r->guest,
						      r->size, true, 0);
	}
	return ret;
}

static int start_fault_thread(struct saver *sv)
{
	int ret;

	sv->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	sv->plan_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (sv->stop_fd < 0 || sv->plan_fd < 0)
		return ferry_fail(-errno, "eventfd: %s", strerror(errno));
	ret = -pthread_create(&sv->fault_thread, NULL, fault_main, sv);
	if (ret)
		return ferry_fail(ret, "starting the fault thread: %s",
				  strerror(-ret));
	sv->fault_started = true;
	return 0;
}

static int plan_made(struct saver *sv)
{
	uint64_t one = 1;

	if (write(sv->plan_fd, &one, sizeof(one)) < 0)
		return ferry_fail(-errno, "eventfd: %s", strerror(errno));
	return 0;
}

static int stop_fault_thread(struct saver *sv)
{
	uint64_t one = 1;

	if (!sv->fault_started)
		return 0;
	if (write(sv->stop_fd, &one, sizeof(one)) < 0)
		abort();	/* an eventfd write cannot fail here */
	pthread_join(sv->fault_thread, NULL);
	sv->fault_started = false;
	if (sv->fault_err)
		return ferry_fail(sv->fault_err, "%s", sv->fault_reason);
	return 0;
}

/*
 * Unregistering drops every protection left (a failed save leaves some)
 * and wakes any write still held.  Then THP gets its huge mappings back:
 * protecting split them.
 */
static void disarm(struct saver *sv)
{
	struct ferry_mem *mem = sv->vm->mem;

	for (unsigned int i = 0; sv->registered && i < mem->nr_regions; i++)
		ferry_uffd_unregister(&sv->uffd, mem->regions[i].guest,
				      mem->regions[i].size);
	sv->registered = false;
	ferry_uffd_close(&sv->uffd);
	for (unsigned int i = 0; i < mem->nr_regions; i++)
		if (!mem->regions[i].private_view)
			ferry_region_collapse(&mem->regions[i]);
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
	if (sv->stop_fd >= 0)
		close(sv->stop_fd);
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
		ssize_t n = ferry_region_populated(&vm->mem->regions[i],
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
	uint64_t t0 = ferry_now_ns();

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
	st->pause_ns = ferry_now_ns() - t0;
	if (!ret && sv->live)
		ret = start_fault_thread(sv);
	if (!ret && sv->live)
		ret = capture_pages(sv);
	if (!ret && sv->live)
		ret = plan_made(sv);
	if (!ret && sv->live)
		ret = sweep(sv);
	stopped = stop_fault_thread(sv);
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
	uint64_t t0 = ferry_now_ns();
	int ret;

	memset(stats, 0, sizeof(*stats));
	if (!sv)
		return ferry_fail(-ENOMEM, "out of memory");
	sv->vm = vm;
	sv->fd = fd;
	sv->live = opts && opts->live;
	sv->uffd.fd = -1;
	sv->stop_fd = -1;
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
	stats->total_ns = ferry_now_ns() - t0;
	free_tables(sv);
	free(sv);
	return ret;
}
