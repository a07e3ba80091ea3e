// SPDX-License-Identifier: MIT
/*
 * restore: a restore's run (restore_int.h says how it is cut up).  The VM is
 * built while another thread reads the extent records; then eager (all
 * stored and mapped, fault service over) or lazy (owed, the working set
 * first), the vCPUs resume, and a lazy restore's readers and control
 * thread start.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "migrate/dest_limits.h"
#include "snapshot/restore_int.h"

/* ---- before resume ------------------------------------------------------ */

/*
 * What was not stored before resume is owed (prefetched pages are not);
 * from here on progress counts what is owed in the page machinery.
 */
static int switchover(struct ferry_restore *rs)
{
	int ret = 0;

	for (unsigned int i = 0; i < rs->file->stream.nr_regions && !ret; i++)
		ret = postcopy_owe(rs->pc, i, rs->owed[i]);
	if (!ret)
		atomic_store_explicit(&rs->owing, true, memory_order_release);
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
	if (ret == -EOPNOTSUPP)
		return 0;
	if (!ret)
		ret = restore_wait_mapped(rs, atomic_load(&rs->stored));
	if (!ret)
		ret = postcopy_finish(rs->pc);
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
/*
 * What progress counts against: every page of the extents, and the bytes
 * of those with data (a scan of the sums only where page sizes differ).
 */
static void count_totals(struct ferry_restore *rs)
{
	const struct snap_file *f = rs->file;
	uint64_t pages = 0, bytes = 0;
	bool same = true;

	for (unsigned int i = 1; i < f->stream.nr_regions; i++)
		same &= snap_page_size(f, i) == snap_page_size(f, 0);
	for (size_t i = 0; i < f->nr_extents; i++) {
		const struct snap_extent *e = &f->extents[i];

		pages += e->count;
		for (uint64_t p = e->first_page; !same &&
		     p < (uint64_t)e->first_page + e->count; p++)
			if (!snap_page_is_zero(f, e, p))
				bytes += snap_page_size(f, e->region);
	}
	if (same && f->stream.nr_regions)
		bytes = f->data_pages * snap_page_size(f, 0);
	atomic_store_explicit(&rs->data_bytes, bytes, memory_order_relaxed);
	atomic_store_explicit(&rs->pages_total, pages, memory_order_relaxed);
}

static void *rest_main(void *arg)
{
	struct ferry_restore *rs = arg;
	int ret = snap_file_open_rest(rs->file);

	if (!ret)
		ret = restore_alloc_owed(rs);
	if (ret)
		err_slot_set(&rs->err, ret);
	rs->stats.open_ns = ferry_clock_now_ns() - rs->start_ns;
	if (!ret)
		count_totals(rs);
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
		ret = restore_check_cancel(rs);
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

static void *ctl_main(void *arg);

/*
 * The readers, then (run by the caller) the control thread: the last
 * thing that can fail, so that a restore that fails to start has no
 * control thread to stop.
 */
static int start_threads(struct ferry_restore *rs)
{
	int ret = restore_readers_start(rs);

	if (!ret && !rs->async) {
		ret = -pthread_create(&rs->ctl, NULL, ctl_main, rs);
		if (ret)
			ret = ferry_fail(ret, "starting the restore's control "
					 "thread: %s", strerror(-ret));
		rs->has_ctl = !ret;
	}
	return ret;
}

/*
 * Build, load, resume: 0 when the vCPUs run (and, lazy, the readers and
 * the control thread too); else what failed, for run_and_tell to undo.
 */
static int run(struct ferry_restore *rs, int fd)
{
	bool lazy = rs->opts.mode == FERRY_RESTORE_LAZY;
	int ret = prepare(rs, fd);

	if (!ret)
		restore_set_phase(rs, FERRY_PHASE_PRECOPY);
	if (!ret)
		ret = lazy ? restore_lazy(rs) : restore_eager(rs);
	if (!ret)
		ret = restore_check_cancel(rs);
	if (!ret)
		restore_set_phase(rs, FERRY_PHASE_SWITCHOVER);
	if (!ret && !lazy)
		ret = snap_load_vcpus(rs->file, &rs->vm);
	if (!ret)
		ret = rs->vm.ops->resume(rs->vm.handle);
	rs->resumed = !ret;
	rs->stats.resume_ns = ferry_clock_now_ns() - rs->start_ns;
	/*
	 * The readers start once the vCPUs run: making threads takes a
	 * while here, and a request made meanwhile waits in the queue.
	 */
	if (!ret && lazy)
		ret = start_threads(rs);
	return ret;
}

/*
 * After a failed run: nothing of it stays, and the VM is discarded, its
 * page machinery first (it is on the VM's memory).
 */
static void abort_run(struct ferry_restore *rs)
{
	if (rs->resumed)
		restore_fail_closed(rs);
	restore_readers_stop(rs);
	restore_forget_pc(rs);
	if (rs->vm_created && rs->ops->discard)
		rs->ops->discard(rs->ops_arg, &rs->vm);
	rs->vm_created = false;
}

/* Run, and tell how it went: the vCPUs run, or the restore ended. */
static int run_and_tell(struct ferry_restore *rs, int fd)
{
	int ret = run(rs, fd);

	if (ret) {
		abort_run(rs);
		return restore_end(rs, ret);
	}
	restore_running(rs);
	if (rs->opts.mode != FERRY_RESTORE_LAZY)
		return restore_end(rs, 0);
	if (!rs->opts.record_ws)
		ferry_restore_fill(rs);
	return 0;
}

/* The control thread: the run too, when asynchronous; then the end. */
static void *ctl_main(void *arg)
{
	struct ferry_restore *rs = arg;

	ferry_error_clear();
	if (rs->async && run_and_tell(rs, rs->file_fd))
		return NULL;
	if (rs->opts.mode == FERRY_RESTORE_LAZY)
		restore_supervise(rs);
	return NULL;
}

static int init(struct ferry_restore *rs)
{
	int ret = restore_ctl_init(rs);	/* its locks first: fini needs them */

	pthread_mutex_init(&rs->qlock, NULL);
	err_slot_init(&rs->err);
	if (ret)
		return ret;
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
	restore_ctl_fini(rs);
	free(rs);
}

static int create(int fd, const struct ferry_dest_ops *ops, void *arg,
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
		.fill_fd = -1, .wake_fd = -1, .file_fd = fd,
		.readers = { .stop_fd = -1 } };
	rs->stats.mode = opts->mode;
	ret = init(rs);
	if (ret) {
		free_restore(rs);
		return ret;
	}
	*out = rs;
	return 0;
}

int ferry_restore_start(int fd, const struct ferry_dest_ops *ops, void *arg,
			const struct ferry_restore_opts *opts,
			struct ferry_restore **out)
{
	struct ferry_restore *rs = NULL;
	int ret = create(fd, ops, arg, opts, &rs);

	if (!ret)
		ret = run_and_tell(rs, fd);
	if (ret && rs) {
		char why[sizeof(rs->reason)];

		snprintf(why, sizeof(why), "%s", ferry_error_msg());
		free_restore(rs);
		return ferry_fail(ret, "%s", why);
	}
	if (!ret)
		*out = rs;
	return ret;
}

int ferry_restore_start_async(int fd, const struct ferry_dest_ops *ops,
			      void *arg, const struct ferry_restore_opts *opts,
			      struct ferry_restore **out)
{
	struct ferry_restore *rs;
	int ret = create(fd, ops, arg, opts, &rs);

	if (ret)
		return ret;
	rs->async = true;
	ret = -pthread_create(&rs->ctl, NULL, ctl_main, rs);
	if (ret) {
		free_restore(rs);
		return ferry_fail(ret, "starting the restore's thread: %s",
				  strerror(-ret));
	}
	rs->has_ctl = true;
	*out = rs;
	return 0;
}

const struct ferry_vm *ferry_restore_vm(const struct ferry_restore *rs)
{
	struct ferry_restore *w = (struct ferry_restore *)rs;	/* its lock */
	bool running;

	pthread_mutex_lock(&w->lock);
	running = rs->running && rs->vm_created;
	pthread_mutex_unlock(&w->lock);
	return running ? &rs->vm : NULL;
}

/* ---- the end ------------------------------------------------------------ */

/*
 * The counters, any time; the page machinery and the VM only once they
 * stay put (the vCPUs run, or it ended), and what the fault thread
 * recorded once it has been joined.
 */
static void fill_stats(const struct ferry_restore *rs, bool settled,
		       bool over, struct ferry_restore_stats *s)
{
	struct postcopy_stats ps = { 0 };

	if (settled && rs->pc)
		postcopy_get_stats(rs->pc, &ps);
	s->pages = atomic_load(&rs->stored) + atomic_load(&rs->installed);
	s->zero_pages = atomic_load(&rs->zero);
	s->bytes_read = atomic_load(&rs->bytes_read);
	s->prefetched = rs->nr_prefetch;
	s->demand_reads = atomic_load(&rs->demand_reads);
	s->filled = atomic_load(&rs->filled);
	s->minor_faults = ps.minor_faults;
	s->missing_faults = ps.missing_faults;
	if (settled && rs->pc) {
		const struct ferry_hist *h = &rs->pc->fault_latency;

		s->fault_latency_p50_ns = ferry_hist_percentile(h, 50);
		s->fault_latency_p99_ns = ferry_hist_percentile(h, 99);
		s->fault_latency_max_ns = ferry_hist_max(h);
	}
	s->ws_recorded = over ? rs->nr_recorded : 0;
	if (settled && rs->vm_created)
		s->guest_bytes = rs->vm.mem->total_size;
}

static uint64_t pmd_mapped(struct ferry_restore *rs)
{
	uint64_t bytes = 0;

	for (unsigned int i = 0; rs->vm_created && i < rs->vm.mem->nr_regions;
	     i++) {
		uint64_t b = 0;

		if (!ferry_mem_region_pmd_mapped(&rs->vm.mem->regions[i], &b))
			bytes += b;
	}
	return bytes;
}

static bool ended(const struct ferry_restore *rs)
{
	struct ferry_restore *w = (struct ferry_restore *)rs;	/* its lock */
	bool e;

	pthread_mutex_lock(&w->lock);
	e = rs->ended;
	pthread_mutex_unlock(&w->lock);
	return e;
}

int ferry_restore_finish(struct ferry_restore *rs,
			 struct ferry_restore_stats *stats)
{
	int ret = ferry_restore_wait(rs, -1);
	struct ferry_restore_stats st;

	ferry_restore_stats(rs, &st);
	st.pmd_mapped_bytes = pmd_mapped(rs);
	if (stats)
		*stats = st;
	return ret;
}

int ferry_restore_save_ws(struct ferry_restore *rs, const char *path)
{
	size_t n = rs->nr_prefetch + rs->nr_recorded;
	struct snap_page *all;
	int ret;

	if (!rs->opts.record_ws || !ended(rs))
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
	struct ferry_restore *w = (struct ferry_restore *)rs;	/* its lock */

	bool settled, over;

	memset(stats, 0, sizeof(*stats));
	stats->mode = rs->opts.mode;
	pthread_mutex_lock(&w->lock);
	settled = rs->running || rs->ended;
	if (settled)	/* the run's times: written before it said so */
		*stats = rs->stats;
	over = rs->ended;
	pthread_mutex_unlock(&w->lock);
	fill_stats(rs, settled, over, stats);
}

void ferry_restore_destroy(struct ferry_restore *rs)
{
	if (!rs)
		return;
	ferry_restore_cancel(rs);
	if (rs->has_ctl)
		pthread_join(rs->ctl, NULL);
	restore_readers_stop(rs);
	free_restore(rs);
}
