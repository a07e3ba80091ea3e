// SPDX-License-Identifier: MIT
/*
 * restore: a restore's life (restore.h says how it is cut up).  The VM
 * is built while another thread reads the extent records; then eager (all
 * stored and mapped, fault service over) or lazy (owed, the working set
 * first), the vCPUs resume, and a lazy restore's readers start.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "migrate/dest_limits.h"
#include "snapshot/restore.h"

/* ---- before resume ------------------------------------------------------ */

/* What was not stored before resume is owed (prefetched pages are not). */
static int switchover(struct ferry_restore *rs)
{
	int ret = 0;

	for (unsigned int i = 0; i < rs->file->stream.nr_regions && !ret; i++)
		ret = postcopy_owe(rs->pc, i, rs->owed[i]);
	return ret;
}

/*
 * Eager: everything stored, then mapped in bulk, then fault service is
 * over before the vCPUs run: they find plain, complete memory.  Where
 * userfaultfd cannot CONTINUE on this memory, the guest's first touch of
 * each page is an ordinary fault instead.
 */
static int restore_eager(struct ferry_restore *rs)
{
	int ret = restore_load_all(rs);

	if (!ret)
		ret = switchover(rs);
	if (!ret)
		ret = postcopy_start(rs->pc, &restore_file_ops, rs);
	if (ret == -EOPNOTSUPP) {
		rs->finished = true;
		return 0;
	}
	if (!ret)
		ret = restore_wait_mapped(rs, atomic_load(&rs->stored));
	if (!ret)
		ret = postcopy_finish(rs->pc);
	rs->finished = true;
	return ret;
}

/*
 * Touch every page of the working set through the guest view, a write
 * that changes nothing (the vCPUs are paused, and nothing else writes
 * them yet).  Mapping a page does not make its first access cheap
 * everywhere: under shadow paging (a PVM-style host, like the one these
 * figures come from) that access costs an exit to the hypervisor, some
 * microseconds.  Paid here, once per page, it is not paid by a vCPU
 * in the first seconds after resume, and the set is what the guest
 * touches first.  Where first accesses are cheap this costs about a TLB
 * miss a page.  (A second thread does not help: those exits go one at a
 * time.)
 */
static void warm_ws(struct ferry_restore *rs)
{
	for (size_t i = 0; i < rs->nr_prefetch; i++) {
		const struct snap_page *p = &rs->prefetch[i];
		struct ferry_region *r = &rs->vm.mem->regions[p->region];
		uint8_t *page = r->guest + (size_t)p->page * r->page_size;

		for (size_t off = 0; off < r->page_size; off += 4096)
			__atomic_fetch_or(page + off, 0, __ATOMIC_RELAXED);
	}
}

/* Everything that must be done before the vCPUs resume. */
static int restore_lazy(struct ferry_restore *rs)
{
	uint64_t t0 = ferry_clock_now_ns();
	int ret = 0;

	if (rs->nr_prefetch) {
		rs->zero_buf = snap_buf_alloc(READ_CHUNK);
		ret = rs->zero_buf ? 0 : ferry_fail(-ENOMEM, "out of memory");
	}
	if (!ret && rs->nr_prefetch && !rs->opts.prefetch_async)
		ret = restore_store_ws(rs);
	if (!ret)
		ret = switchover(rs);
	if (!ret)
		ret = snap_load_vcpus(rs->file, &rs->vm);
	if (!ret)
		ret = postcopy_start(rs->pc, &restore_file_ops, rs);
	if (!ret && rs->nr_prefetch && !rs->opts.prefetch_async)
		ret = restore_wait_mapped(rs, atomic_load(&rs->stored));
	if (!ret && rs->nr_prefetch && !rs->opts.prefetch_async)
		warm_ws(rs);
	rs->stats.prefetch_ns = rs->nr_prefetch ? ferry_clock_now_ns() - t0 : 0;
	return ret;
}

static int load_ws(struct ferry_restore *rs)
{
	ssize_t n;

	if (!rs->opts.prefetch_ws)
		return 0;
	if (rs->opts.mode != FERRY_RESTORE_LAZY)
		return ferry_fail(-EINVAL, "a working set is for a lazy "
				  "restore");
	n = snap_ws_load(rs->file, rs->opts.prefetch_ws, &rs->prefetch);
	if (n < 0)
		return (int)n;
	rs->nr_prefetch = (size_t)n;
	return 0;
}

/*
 * The extent records, read and checked while the VM is being built, and
 * what they make owed.
 */
static void *rest_main(void *arg)
{
	struct ferry_restore *rs = arg;
	int ret = snap_file_open_rest(rs->file);

	if (!ret)
		ret = restore_alloc_owed(rs);
	if (ret)
		err_slot_set(&rs->err, ret);
	rs->stats.open_ns = ferry_clock_now_ns() - rs->start_ns;
	return NULL;
}

/*
 * The VM needs only the HEADER and VCPU records: it is built (and its
 * page state allocated) on this thread while another reads the extents,
 * the bulk of the records for a big guest.  Without that thread, one
 * after the other.
 */
static int build(struct ferry_restore *rs)
{
	pthread_t rest;
	bool parallel = !pthread_create(&rest, NULL, rest_main, rs);
	int ret;

	if (!parallel)
		rest_main(rs);
	ret = rs->ops->create(rs->ops_arg, &rs->file->stream, &rs->vm);
	rs->vm_created = !ret;
	if (!ret)
		ret = snap_check_vm(rs->file, &rs->vm);
	if (!ret)
		ret = postcopy_create(rs->vm.mem, &rs->pc);
	if (parallel)
		pthread_join(rest, NULL);
	if (ret)
		return ret;
	return err_slot_get(&rs->err);
}

static int prepare(struct ferry_restore *rs, int fd)
{
	int ret = snap_file_open_head(fd, &rs->file);

	if (!ret)	/* before anything is sized from the header */
		ret = dest_limits_check(&rs->file->stream,
					rs->opts.max_guest_bytes,
					"the snapshot");
	if (!ret)
		ret = build(rs);
	if (!ret)
		ret = load_ws(rs);
	return ret;
}

static int run(struct ferry_restore *rs, int fd)
{
	bool lazy = rs->opts.mode == FERRY_RESTORE_LAZY;
	int ret = prepare(rs, fd);

	if (!ret)
		ret = lazy ? restore_lazy(rs) : restore_eager(rs);
	if (!ret && !lazy)
		ret = snap_load_vcpus(rs->file, &rs->vm);
	if (!ret)
		ret = rs->vm.ops->resume(rs->vm.handle);
	rs->stats.resume_ns = ferry_clock_now_ns() - rs->start_ns;
	/*
	 * The readers start once the vCPUs run: making threads takes a
	 * while here, and a request made meanwhile waits in the queue.
	 */
	if (!ret && lazy)
		ret = restore_readers_start(rs);
	if (!ret && lazy && !rs->opts.record_ws)
		ret = ferry_restore_fill(rs);
	return ret;
}

static int init(struct ferry_restore *rs)
{
	int ret;

	pthread_mutex_init(&rs->qlock, NULL);
	err_slot_init(&rs->err);
	rs->demand_fd = evfd_open();
	rs->fill_fd = evfd_open();
	rs->demand_buf = snap_buf_alloc(READ_CHUNK);
	rs->fill_buf = snap_buf_alloc(READ_CHUNK);
	/* A descriptor that could not be had keeps its errno (EMFILE). */
	ret = rs->demand_fd < 0 ? rs->demand_fd : rs->fill_fd;
	if (ret < 0)
		return ferry_fail(ret, "eventfd: %s", strerror(-ret));
	ret = threads_init(&rs->readers);
	if (ret)
		return ret;
	if (!rs->demand_buf || !rs->fill_buf)
		return ferry_fail(-ENOMEM, "read buffers: out of memory");
	return 0;
}

static void free_restore(struct ferry_restore *rs)
{
	threads_fini(&rs->readers);
	postcopy_destroy(rs->pc);
	for (unsigned int i = 0; rs->owed && i < rs->file->stream.nr_regions;
	     i++)
		free(rs->owed[i]);
	free(rs->owed);
	snap_file_close(rs->file);
	snap_buf_free(rs->demand_buf, READ_CHUNK);
	snap_buf_free(rs->fill_buf, READ_CHUNK);
	free(rs->prefetch);
	snap_buf_free(rs->zero_buf, READ_CHUNK);
	free(rs->spans);
	free(rs->recorded);
	free(rs->queue);
	if (rs->demand_fd >= 0)
		close(rs->demand_fd);
	if (rs->fill_fd >= 0)
		close(rs->fill_fd);
	pthread_mutex_destroy(&rs->qlock);
	err_slot_fini(&rs->err);
	free(rs);
}

int ferry_restore_start(int fd, const struct ferry_dest_ops *ops, void *arg,
			const struct ferry_restore_opts *opts,
			struct ferry_restore **out)
{
	struct ferry_restore *rs;
	int ret;

	if (!ops || !ops->create || !opts)
		return ferry_fail(-EINVAL, "restoring needs dest ops with "
				  "create, and options");
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return ferry_fail(-ENOMEM, "out of memory");
	*rs = (struct ferry_restore){ .ops = ops, .ops_arg = arg,
		.opts = *opts, .start_ns = ferry_clock_now_ns(), .demand_fd = -1,
		.fill_fd = -1, .readers = { .stop_fd = -1 } };
	rs->stats.mode = opts->mode;
	ret = init(rs);
	if (!ret)
		ret = run(rs, fd);
	if (ret) {
		char why[sizeof(rs->err.reason)];

		snprintf(why, sizeof(why), "%s", ferry_error_msg());
		restore_readers_stop(rs);
		postcopy_destroy(rs->pc);
		rs->pc = NULL;
		if (rs->vm_created && ops->discard)
			ops->discard(arg, &rs->vm);
		free_restore(rs);
		return ferry_fail(ret, "%s", why);
	}
	*out = rs;
	return 0;
}

const struct ferry_vm *ferry_restore_vm(const struct ferry_restore *rs)
{
	return &rs->vm;
}

/* ---- after resume ------------------------------------------------------- */

int ferry_restore_wait(struct ferry_restore *rs, int timeout_ms)
{
	struct pollfd pfd = { .fd = postcopy_done_fd(rs->pc),
			      .events = POLLIN };
	uint64_t deadline = ferry_clock_now_ns() + (uint64_t)timeout_ms * 1000000;
	int ret;

	if (rs->finished)
		return rs->result;
	ret = ferry_restore_fill(rs);
	while (!ret) {
		ret = err_slot_get(&rs->err);
		if (!ret && (ret = postcopy_error(rs->pc)))
			ferry_fail_ctx(ret, "fault service failed");
		if (ret || poll(&pfd, 1, 10) > 0 || postcopy_done(rs->pc))
			break;
		if (timeout_ms >= 0 && ferry_clock_now_ns() > deadline)
			return ferry_fail(-ETIMEDOUT, "pages still owed after "
					  "%d ms", timeout_ms);
	}
	return ret;
}

static void fill_stats(const struct ferry_restore *rs,
		       struct ferry_restore_stats *s)
{
	struct postcopy_stats ps;

	postcopy_get_stats(rs->pc, &ps);
	s->pages = atomic_load(&rs->stored) + atomic_load(&rs->installed);
	s->zero_pages = atomic_load(&rs->zero);
	s->bytes_read = atomic_load(&rs->bytes_read);
	s->prefetched = rs->nr_prefetch;
	s->demand_reads = atomic_load(&rs->demand_reads);
	s->filled = atomic_load(&rs->filled);
	s->minor_faults = ps.minor_faults;
	s->missing_faults = ps.missing_faults;
	s->fault_latency_p50_ns = ferry_hist_percentile(&rs->pc->fault_latency,
							50);
	s->fault_latency_p99_ns = ferry_hist_percentile(&rs->pc->fault_latency,
							99);
	s->fault_latency_max_ns = ferry_hist_max(&rs->pc->fault_latency);
	s->ws_recorded = rs->nr_recorded;
	s->guest_bytes = rs->vm.mem->total_size;
}

static uint64_t pmd_mapped(struct ferry_restore *rs)
{
	uint64_t bytes = 0;

	for (unsigned int i = 0; i < rs->vm.mem->nr_regions; i++) {
		uint64_t b = 0;

		if (!ferry_mem_region_pmd_mapped(&rs->vm.mem->regions[i], &b))
			bytes += b;
	}
	return bytes;
}

int ferry_restore_finish(struct ferry_restore *rs,
			 struct ferry_restore_stats *stats)
{
	if (!rs->finished) {
		int ret = ferry_restore_wait(rs, -1), err;

		restore_readers_stop(rs);
		err = postcopy_finish(rs->pc);
		rs->result = ret ? ret : err;
		rs->finished = true;
		rs->stats.total_ns = ferry_clock_now_ns() - rs->start_ns;
	} else if (!rs->stats.total_ns) {
		rs->stats.total_ns = rs->stats.resume_ns;
	}
	fill_stats(rs, &rs->stats);
	rs->stats.pmd_mapped_bytes = pmd_mapped(rs);
	if (stats)
		*stats = rs->stats;
	return rs->result;
}

int ferry_restore_save_ws(struct ferry_restore *rs, const char *path)
{
	size_t n = rs->nr_prefetch + rs->nr_recorded;
	struct snap_page *all;
	int ret;

	if (!rs->opts.record_ws || !rs->finished)
		return ferry_fail(-EINVAL, "only a finished restore that "
				  "recorded has a working set to save");
	all = malloc(n ? n * sizeof(*all) : 1);
	if (!all)
		return ferry_fail(-ENOMEM, "out of memory");
	if (rs->nr_prefetch)
		memcpy(all, rs->prefetch, rs->nr_prefetch * sizeof(*all));
	if (rs->nr_recorded)
		memcpy(all + rs->nr_prefetch, rs->recorded,
		       rs->nr_recorded * sizeof(*all));
	ret = snap_ws_save(rs->file, path, all, n);
	free(all);
	return ret;
}

void ferry_restore_stats(const struct ferry_restore *rs,
			 struct ferry_restore_stats *stats)
{
	*stats = rs->stats;
	fill_stats(rs, stats);
}

void ferry_restore_destroy(struct ferry_restore *rs)
{
	if (!rs)
		return;
	restore_readers_stop(rs);
	free_restore(rs);
}
