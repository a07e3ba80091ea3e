// SPDX-License-Identifier: MIT
/*
 * snap_save: a VM into a snapshot file, paused or live.
 *
 * Paused, the vCPUs stop for the whole save.  Live, they stop only while
 * their state is taken and every page to save is write-protected
 * (userfaultfd WP, synchronous: no WP_ASYNC), then run on:
 *
 *   vCPU            fault thread (save_live.c)  sweep (save_sweep.c)
 *    |--write P-->|                              |
 *    |  (held)    | claim P: UNSAVED -> SAVING   | claims runs of UNSAVED
 *    |            | copy P out of the memfd      | pages, copies them out,
 *    |<--wake-----| un-protect P: COPIED         | un-protects them (which
 *    |  writes    | sum, write P to the file     | wakes anyone held on
 *    |            | P: SAVED; hint: after P      | them), sums, writes;
 *    |                                           | after a hint first
 *
 * Each page is copied out exactly once, by whoever claims it, and always
 * before the guest can change it: the image is the one of the pause.
 * A write held on a page the sweep owns is woken by the sweep's
 * un-protect; the kernel rechecks the protection after queueing the
 * fault, so no wake-up is lost.
 *
 * Which pages exist is looked up before the pause, and after it only
 * among the pages that did not then (a page that exists stays): writes
 * held on pages known to exist are served at once, before the plan of
 * the file is made; the others wait for it.
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
#include "base/sys.h"
#include "base/thread.h"
#include "ferry/clock.h"
#include "snapshot/save_int.h"

/* ---- the save ----------------------------------------------------------- */

static int alloc_tables(struct saver *sv)
{
	struct ferry_mem *mem = sv->vm->mem;
	unsigned int n = mem->nr_regions;

	sv->populated = calloc(n ? n : 1, sizeof(*sv->populated));
	sv->state = calloc(n ? n : 1, sizeof(*sv->state));
	sv->sweep_buf = snap_buf_alloc(SAVE_CHUNK);
	sv->fault_buf = snap_buf_alloc(SAVE_CHUNK);
	if (sv->live)
		sv->early_pool = snap_buf_alloc(SAVE_EARLY_RUNS * SAVE_NEAR);
	if (!sv->populated || !sv->state || !sv->sweep_buf || !sv->fault_buf ||
	    (sv->live && !sv->early_pool))
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

void saver_free(struct saver *sv)
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
	snap_buf_free(sv->early_pool, SAVE_EARLY_RUNS * SAVE_NEAR);
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

/* The pages the memfd holds in [first, first + count): set in bitmap. */
static int find_in_range(const struct ferry_region *r, uint64_t *bitmap,
			 size_t first, size_t count)
{
	off_t base = (off_t)r->offset, ps = (off_t)r->page_size;
	off_t from = base + (off_t)first * ps, data, hole;
	off_t limit = from + (off_t)count * ps;
	int ret;

	while ((ret = sys_next_data(r->memfd, from, limit, &data,
				    &hole)) > 0) {
		bitmap_set_range(bitmap, (size_t)((data - base) / ps),
				 (size_t)((hole - data + ps - 1) / ps));
		from = hole;
	}
	return ret < 0 ? ferry_fail(ret, "SEEK_DATA/SEEK_HOLE: %s",
				    strerror(-ret)) : 0;
}

/* Add to bitmap the pages the memfd holds among those not set in it. */
static int find_in_holes(const struct ferry_region *r, uint64_t *bitmap)
{
	size_t page = 0, first;
	int ret = 0;

	while (page < r->nr_pages && !ret) {
		while (page < r->nr_pages && bitmap_test(bitmap, page))
			page += page % 64 || ~bitmap[page / 64] ? 1 : 64;
		first = page;
		while (page < r->nr_pages && !bitmap_test(bitmap, page))
			page += page % 64 || bitmap[page / 64] ? 1 : 64;
		if (page > r->nr_pages)
			page = r->nr_pages;
		if (page > first)
			ret = find_in_range(r, bitmap, first, page - first);
	}
	return ret;
}

/*
 * Which pages exist: added to sv->populated (a page that exists stays).
 * Live, this runs before the pause and again after it, where only the
 * holes of the first look are looked at again: on shmem with SEEK_DATA,
 * which costs per page looked at; mincore (hugetlbfs, a private view)
 * looks at everything each time.
 */
static int find_pages(struct saver *sv)
{
	const struct ferry_mem *mem = sv->vm->mem;
	int ret = 0;

	for (unsigned int i = 0; !ret && i < mem->nr_regions; i++) {
		const struct ferry_region *r = &mem->regions[i];
		ssize_t n;

		if (r->backing != FERRY_BACKING_HUGETLB && !r->private_view) {
			ret = find_in_holes(r, sv->populated[i]);
			continue;
		}
		n = ferry_mem_region_populated(r, sv->populated[i]);
		ret = n < 0 ? (int)n : 0;
	}
	return ret;
}

/* Which pages exist, where each goes in the file, a file that long. */
static int capture_pages(struct saver *sv)
{
	const struct ferry_vm *vm = sv->vm;
	int ret = find_pages(sv);

	if (!ret)
		ret = snap_plan_make(vm->mem, sv->populated, sv->head_len,
				     &sv->plan);
	if (!ret)
		atomic_store_explicit(&sv->nr_planned, sv->plan.nr_pages,
				      memory_order_relaxed);
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
		ret = saver_make_service(sv);
	if (!ret && sv->live)	/* what held writes can be served on */
		ret = find_pages(sv);
	if (!ret)
		ret = save_check_cancel(sv->h);
	if (ret)
		return ret;
	t0 = ferry_clock_now_ns();
	ret = vm->ops->pause(vm->handle);
	if (ret)
		return ferry_fail_ctx(ret, "pausing the vCPUs");
	save_set_phase(sv->h, FERRY_PHASE_SWITCHOVER);
	ret = capture_vcpus(sv);
	if (!ret)
		ret = sv->live ? saver_arm(sv) : capture_pages(sv);
	if (!ret && !sv->live)
		ret = saver_sweep(sv);
	resumed = vm->ops->resume(vm->handle);
	st->pause_ns = ferry_clock_now_ns() - t0;
	if (!ret && sv->live)
		save_set_phase(sv->h, FERRY_PHASE_POSTCOPY);
	if (!ret && sv->live)
		ret = saver_start_service(sv);
	if (!ret && sv->live)
		ret = capture_pages(sv);
	if (!ret && sv->live)
		evfd_signal(sv->plan_fd);
	if (!ret && sv->live)
		ret = saver_sweep(sv);
	stopped = saver_stop_service(sv);
	if (sv->live)
		saver_disarm(sv);
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
	ferry_hist_add(&sv->held, &sv->held_sweep);
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

int saver_run(struct ferry_snapshot_save *h, struct ferry_snapshot_stats *st)
{
	struct saver *sv = &h->sv;
	int ret;

	memset(st, 0, sizeof(*st));
	sv->h = h;
	sv->vm = &h->vm;
	sv->fd = h->fd;
	sv->live = h->opts.live;
	sv->um.uffd.fd = -1;
	sv->plan_fd = -1;
	ferry_hist_init(&sv->held);
	ferry_hist_init(&sv->held_sweep);
	ret = ferry_vcpu_ops_check(sv->vm->ops);
	if (!ret)
		ret = alloc_tables(sv);
	if (!ret)
		ret = save_pages(sv, st);
	if (!ret)
		ret = save_check_cancel(h);
	if (!ret)
		ret = finish_file(sv, h->opts.sync);
	fill_stats(sv, st);
	st->total_ns = ferry_clock_now_ns() - h->start_ns;
	saver_free(sv);
	return ret;
}
