// SPDX-License-Identifier: MIT
/*
 * save_handle: a save in flight.  The save (save.c) runs on one thread:
 * ferry's own for ferry_snapshot_start*(), the caller's for the blocking
 * calls, which are a handle without a thread of its own.  Any other
 * thread reads its progress (the saver's counters, the phase under
 * `lock`) and may ask it to stop: `cancel`, which the save looks at
 * before the pause, before each run of pages it writes and before the
 * records; then it ends as a failed save does (the VM runs as before,
 * write protection removed, no snapshot left).
 *
 *   saving thread                          any thread
 *   SETUP ─ pause: SWITCHOVER ─ resume  ◀── ferry_snapshot_progress()
 *   (live: POSTCOPY) ─ sweep ...        ◀── ferry_snapshot_cancel()
 *   end: DONE or FAILED ──────────────────▶ ferry_snapshot_wait()
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "snapshot/save_int.h"

/* A rate over less than this is noise (ns). */
#define RATE_MIN_NS	100000000ULL

/* ---- life --------------------------------------------------------------- */

static int copy_vm(struct ferry_snapshot_save *h, const struct ferry_vm *vm)
{
	if (!vm || !vm->mem || !vm->ops)
		return ferry_fail(-EINVAL, "saving needs a VM with memory and "
				  "vCPU ops");
	h->vm = *vm;
	if (!vm->desc || !vm->desc_len)
		return 0;
	h->desc = malloc(vm->desc_len);
	if (!h->desc)
		return ferry_fail(-ENOMEM, "out of memory");
	memcpy(h->desc, vm->desc, vm->desc_len);
	h->vm.desc = h->desc;
	return 0;
}

static void handle_free(struct ferry_snapshot_save *h)
{
	if (h->target) {
		save_target_close(h->target);
		free(h->target);
	}
	free(h->desc);
	pthread_cond_destroy(&h->cond);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

static int handle_create(const struct ferry_vm *vm,
			 const struct ferry_snapshot_opts *opts,
			 struct ferry_snapshot_save **out)
{
	struct ferry_snapshot_save *h = calloc(1, sizeof(*h));
	int ret;

	if (!h)
		return ferry_fail(-ENOMEM, "out of memory");
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->cond, NULL);
	h->fd = -1;
	h->start_ns = ferry_clock_now_ns();
	h->rate_bps = h->pages_per_s = -1;
	if (opts)
		h->opts = *opts;
	ret = copy_vm(h, vm);
	if (ret) {
		handle_free(h);
		return ret;
	}
	*out = h;
	return 0;
}

/* The file beside `path`, for a save to it. */
static int add_target(struct ferry_snapshot_save *h, const char *path)
{
	int ret;

	h->target = malloc(sizeof(*h->target));
	if (!h->target)
		return ferry_fail(-ENOMEM, "out of memory");
	*h->target = (struct save_target){ .dir_fd = -1, .fd = -1 };
	ret = save_target_open(h->target, path);
	h->fd = h->target->fd;
	return ret;
}

/* ---- what the save tells ------------------------------------------------ */

static int cancel_error(struct ferry_snapshot_save *h)
{
	if (h->target)
		return ferry_fail(-ECANCELED, "cancelled (the VM runs on as "
				  "before; nothing was left at %s/%s)",
				  h->target->dir, h->target->base);
	return ferry_fail(-ECANCELED, "cancelled (the VM runs on as before; "
			  "the file was emptied)");
}

static int save_end(struct ferry_snapshot_save *h, int ret,
	       const struct ferry_snapshot_stats *st)
{
	char reason[sizeof(h->reason)];

	snprintf(reason, sizeof(reason), "%s", ret ? ferry_error_msg() : "");
	pthread_mutex_lock(&h->lock);
	h->phase = ret ? FERRY_PHASE_FAILED : FERRY_PHASE_DONE;
	h->result = ret;
	snprintf(h->reason, sizeof(h->reason), "%s", reason);
	h->stats = *st;
	h->ended = true;
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
	if (ret)
		ferry_fail(ret, "%s", reason);
	return ret;
}

/*
 * The save, then (a path) the rename into place.  A failed save leaves
 * no snapshot: a path's file is removed, a descriptor's emptied.
 */
static int run(struct ferry_snapshot_save *h)
{
	struct ferry_snapshot_stats st;
	int ret = saver_run(h, &st);

	if (!ret && h->target)
		ret = save_check_cancel(h);
	if (!ret && h->target)
		ret = save_target_publish(h->target);
	if (h->target)
		save_target_close(h->target);
	else if (ret)
		sys_ftruncate(h->fd, 0);	/* best effort: it is invalid */
	if (ret && (ret == -ECANCELED || atomic_load(&h->cancel)))
		ret = cancel_error(h);
	return save_end(h, ret, &st);
}

static void *worker_main(void *arg)
{
	ferry_error_clear();
	run(arg);
	return NULL;
}

static int start_worker(struct ferry_snapshot_save *h,
			struct ferry_snapshot_save **out)
{
	int ret = -pthread_create(&h->worker, NULL, worker_main, h);

	if (ret) {
		handle_free(h);
		return ferry_fail(ret, "starting the save's thread: %s",
				  strerror(-ret));
	}
	h->has_worker = true;
	*out = h;
	return 0;
}

/* ---- the public calls --------------------------------------------------- */

/* A save on its own thread: to path, or (path NULL) to fd. */
static int start(const struct ferry_vm *vm, const char *path, int fd,
		 const struct ferry_snapshot_opts *opts,
		 struct ferry_snapshot_save **out)
{
	struct ferry_snapshot_save *h;
	int ret = handle_create(vm, opts, &h);

	if (ret)
		return ret;
	h->fd = fd;
	ret = path ? add_target(h, path) : 0;
	if (ret) {
		handle_free(h);
		return ret;
	}
	return start_worker(h, out);
}

int ferry_snapshot_start(const struct ferry_vm *vm, int fd,
			 const struct ferry_snapshot_opts *opts,
			 struct ferry_snapshot_save **out)
{
	return start(vm, NULL, fd, opts, out);
}

int ferry_snapshot_start_path(const struct ferry_vm *vm, const char *path,
			      const struct ferry_snapshot_opts *opts,
			      struct ferry_snapshot_save **out)
{
	if (!path)
		return ferry_fail(-EINVAL, "saving needs a path");
	return start(vm, path, -1, opts, out);
}

/* A save on the caller's thread: to path, or (path NULL) to fd. */
static int save_here(const struct ferry_vm *vm, const char *path, int fd,
		     const struct ferry_snapshot_opts *opts,
		     struct ferry_snapshot_stats *stats)
{
	struct ferry_snapshot_save *h;
	int ret;

	memset(stats, 0, sizeof(*stats));
	ret = handle_create(vm, opts, &h);
	if (ret)
		return ret;
	h->fd = fd;
	if (path)
		ret = add_target(h, path);
	if (!ret) {
		ret = run(h);
		*stats = h->stats;
	}
	handle_free(h);
	return ret;
}

int ferry_snapshot_save(const struct ferry_vm *vm, int fd,
			const struct ferry_snapshot_opts *opts,
			struct ferry_snapshot_stats *stats)
{
	return save_here(vm, NULL, fd, opts, stats);
}

int ferry_snapshot_save_path(const struct ferry_vm *vm, const char *path,
			     const struct ferry_snapshot_opts *opts,
			     struct ferry_snapshot_stats *stats)
{
	if (!path) {
		memset(stats, 0, sizeof(*stats));
		return ferry_fail(-EINVAL, "saving needs a path");
	}
	return save_here(vm, path, -1, opts, stats);
}

static struct timespec deadline_in(int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

bool snap_wait_ended(pthread_mutex_t *lock, pthread_cond_t *cond,
		     const bool *ended, int timeout_ms)
{
	struct timespec ts = deadline_in(timeout_ms < 0 ? 0 : timeout_ms);
	int ret = 0;

	while (!*ended && !ret)
		ret = timeout_ms < 0 ? pthread_cond_wait(cond, lock) :
		      pthread_cond_timedwait(cond, lock, &ts);
	return *ended;
}

int ferry_snapshot_wait(struct ferry_snapshot_save *h, int timeout_ms)
{
	int ret;

	pthread_mutex_lock(&h->lock);
	if (!snap_wait_ended(&h->lock, &h->cond, &h->ended, timeout_ms))
		ret = ferry_fail(-EINPROGRESS, "the save is still running");
	else
		ret = h->result ? ferry_fail(h->result, "%s", h->reason) : 0;
	pthread_mutex_unlock(&h->lock);
	return ret;
}

int ferry_snapshot_cancel(struct ferry_snapshot_save *h)
{
	atomic_store(&h->cancel, true);
	return 0;
}

/*
 * Bytes and pages saved per second since the last sample, one taken at
 * least RATE_MIN_NS before; until there is one, since the start (lock
 * held).
 */
static void rates(struct ferry_snapshot_save *h, uint64_t now,
		  uint64_t bytes, uint64_t pages, double *bps, double *pps)
{
	uint64_t since = h->rate_at_ns ? h->rate_at_ns : h->start_ns;
	double dt = (double)(now - since);

	if (now - since >= RATE_MIN_NS) {
		h->rate_bps = (double)(bytes - h->rate_bytes) * 1e9 / dt;
		h->pages_per_s = (double)(pages - h->rate_pages) * 1e9 / dt;
		h->rate_at_ns = now;
		h->rate_bytes = bytes;
		h->rate_pages = pages;
	}
	if (h->rate_bps >= 0) {
		*bps = h->rate_bps;
		*pps = h->pages_per_s;
		return;
	}
	dt = (double)(now - h->start_ns);
	*bps = dt > 0 ? (double)bytes * 1e9 / dt : 0;
	*pps = dt > 0 ? (double)pages * 1e9 / dt : 0;
}

static double eta(const struct ferry_snapshot_progress *p, double pps)
{
	uint64_t left = p->pages > p->pages_saved ? p->pages - p->pages_saved :
						    0;

	if (p->phase == FERRY_PHASE_DONE)
		return 0;
	if (!p->pages || p->phase == FERRY_PHASE_FAILED)
		return -1;
	if (!left)
		return 0;
	return pps > 0 ? (double)left / pps : -1;
}

int ferry_snapshot_progress(struct ferry_snapshot_save *h,
			    struct ferry_snapshot_progress *p)
{
	const struct saver *sv = &h->sv;
	uint64_t now = ferry_clock_now_ns();
	double pps;

	memset(p, 0, sizeof(*p));
	p->pages = atomic_load_explicit(&sv->nr_planned, memory_order_relaxed);
	p->pages_saved = atomic_load(&sv->pages) +
			 atomic_load(&sv->zero_pages);
	p->bytes_written = atomic_load(&sv->bytes);
	p->held_writes = atomic_load(&sv->held_writes);
	p->elapsed_ns = now - h->start_ns;
	pthread_mutex_lock(&h->lock);
	p->phase = h->phase;
	rates(h, now, p->bytes_written, p->pages_saved, &p->rate_bps, &pps);
	pthread_mutex_unlock(&h->lock);
	p->eta_s = eta(p, pps);
	return 0;
}

int ferry_snapshot_get_stats(struct ferry_snapshot_save *h,
			     struct ferry_snapshot_stats *st)
{
	const struct saver *sv = &h->sv;

	pthread_mutex_lock(&h->lock);
	if (h->ended) {
		*st = h->stats;
		pthread_mutex_unlock(&h->lock);
		return 0;
	}
	pthread_mutex_unlock(&h->lock);
	memset(st, 0, sizeof(*st));
	st->pages = atomic_load(&sv->pages);
	st->zero_pages = atomic_load(&sv->zero_pages);
	st->bytes = atomic_load(&sv->bytes);
	st->held_writes = atomic_load(&sv->held_writes);
	st->held_total_ns = atomic_load(&sv->held_total_ns);
	st->saved_on_fault = atomic_load(&sv->saved_on_fault);
	st->total_ns = ferry_clock_now_ns() - h->start_ns;
	return 0;
}

void ferry_snapshot_destroy(struct ferry_snapshot_save *h)
{
	if (!h)
		return;
	ferry_snapshot_cancel(h);
	if (h->has_worker)
		pthread_join(h->worker, NULL);
	handle_free(h);
}
