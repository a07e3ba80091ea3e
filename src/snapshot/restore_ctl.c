// SPDX-License-Identifier: MIT
/*
 * restore_ctl: a restore in flight.  After a lazy resume the control
 * thread waits for the end, and makes it:
 *
 *   every page in place   readers stopped, unregistered, THP collapsed:
 *                         DONE
 *   a reader or the fault thread failed, or a cancel
 *                         failing closed (below), then FAILED
 *
 * Failing closed: the vCPUs have run, so some may be asleep in the
 * kernel on a page that has not arrived.  Unregistering now would wake
 * them on a hole.  So the fill reader stops, the vCPUs are asked to pause
 * (on a thread of their own: a pause returns only once every vCPU is
 * parked), and while they park the demand reader goes on serving their
 * faults from the file: a vCPU gets the page it waits for, finishes its
 * access and parks.  Only if the file can no longer serve (the demand
 * reader or the fault thread failed) does every fault get what the memfd
 * holds (postcopy_release), for a VM that is then discarded.  Once they
 * are paused the readers stop and fault service ends.
 *
 *   caller            control thread          pauser      demand reader
 *   cancel() ──wake──▶ halt the fill reader
 *                      start ───────────────▶ pause()      serves faults
 *                      (release if the        ...parked      from the
 *                       file cannot serve) ◀── done          file
 *                      stop readers, unregister
 *   wait() ◀────────── FAILED, -ECANCELED
 */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "ferry/clock.h"
#include "snapshot/restore_int.h"

/* The control thread looks at the fault service this often (ms). */
#define CTL_POLL_MS	100
/* A rate over less than this is noise (ns). */
#define RATE_MIN_NS	100000000ULL

static const char *const phase_names[] = {
	[FERRY_PHASE_SETUP] = "setup",
	[FERRY_PHASE_PRECOPY] = "loading",
	[FERRY_PHASE_SWITCHOVER] = "resuming",
	[FERRY_PHASE_POSTCOPY] = "running lazily",
	[FERRY_PHASE_DONE] = "done",
	[FERRY_PHASE_FAILED] = "failed",
};

const char *ferry_restore_phase_name(enum ferry_phase phase)
{
	return (unsigned int)phase <= FERRY_PHASE_FAILED ? phase_names[phase] :
							   "?";
}

int restore_ctl_init(struct ferry_restore *rs)
{
	int fd;

	pthread_mutex_init(&rs->lock, NULL);
	pthread_cond_init(&rs->cond, NULL);
	rs->rate_bps = -1;
	fd = evfd_open();
	if (fd < 0)
		return ferry_fail(fd, "eventfd: %s", strerror(-fd));
	rs->wake_fd = fd;
	return 0;
}

void restore_ctl_fini(struct ferry_restore *rs)
{
	if (rs->wake_fd >= 0)
		close(rs->wake_fd);
	pthread_cond_destroy(&rs->cond);
	pthread_mutex_destroy(&rs->lock);
}

/* ---- what the run tells ------------------------------------------------- */

void restore_set_phase(struct ferry_restore *rs, enum ferry_phase phase)
{
	pthread_mutex_lock(&rs->lock);
	rs->phase = phase;
	pthread_mutex_unlock(&rs->lock);
}

void restore_forget_pc(struct ferry_restore *rs)
{
	struct postcopy *pc = rs->pc;

	if (pc)
		postcopy_finish(pc);
	pthread_mutex_lock(&rs->lock);
	atomic_store(&rs->owing, false);
	rs->pc = NULL;
	pthread_mutex_unlock(&rs->lock);
	postcopy_destroy(pc);
}

/*
 * Pages still to come: the page machinery's count after switchover
 * (lock held: the machinery stays while it is).
 */
static uint64_t owed_now(struct ferry_restore *rs)
{
	uint64_t total = atomic_load_explicit(&rs->pages_total,
					      memory_order_relaxed);
	uint64_t put;

	if (atomic_load_explicit(&rs->owing, memory_order_acquire))
		return atomic_load(&rs->pc->owed_left);
	put = atomic_load(&rs->stored) + atomic_load(&rs->zero);
	return total > put ? total - put : 0;
}

/* Where the VM is (lock held). */
static enum ferry_vm_location location(struct ferry_restore *rs)
{
	if (rs->phase == FERRY_PHASE_DONE)
		return FERRY_VM_HERE;
	if (!rs->running || rs->phase == FERRY_PHASE_FAILED)
		return FERRY_VM_THERE;
	return owed_now(rs) ? FERRY_VM_SPLIT : FERRY_VM_HERE;
}

static void event(struct ferry_restore *rs,
		  enum ferry_migrate_event_kind kind, int err)
{
	struct ferry_migrate_event ev = { .kind = kind, .err = err,
		.reason = err ? ferry_error_msg() : "" };

	if (!rs->opts.event)
		return;
	pthread_mutex_lock(&rs->lock);
	ev.location = location(rs);
	ev.owed = kind == FERRY_EVENT_DONE ? 0 : owed_now(rs);
	pthread_mutex_unlock(&rs->lock);
	rs->opts.event(&ev, rs->opts.event_arg);
}

void restore_running(struct ferry_restore *rs)
{
	pthread_mutex_lock(&rs->lock);
	rs->running = true;
	if (rs->opts.mode == FERRY_RESTORE_LAZY)
		rs->phase = FERRY_PHASE_POSTCOPY;
	pthread_cond_broadcast(&rs->cond);
	pthread_mutex_unlock(&rs->lock);
	event(rs, FERRY_EVENT_DEST_RUNNING, 0);
}

/* A cancel's error, saying what became of the VM. */
static int final_error(struct ferry_restore *rs, int ret)
{
	if (!ret || (!restore_cancelled(rs) && ret != -ECANCELED))
		return ret;
	if (rs->resumed)
		return ferry_fail(-ECANCELED, "cancelled (the vCPUs were "
				  "stopped before every page was in place: "
				  "discard the VM)");
	return ferry_fail(-ECANCELED, "cancelled (before the vCPUs ran: "
			  "nothing ran, and what was built was discarded)");
}

int restore_end(struct ferry_restore *rs, int ret)
{
	char reason[sizeof(rs->reason)];
	uint64_t now = ferry_clock_now_ns();

	ret = final_error(rs, ret);
	snprintf(reason, sizeof(reason), "%s", ret ? ferry_error_msg() : "");
	pthread_mutex_lock(&rs->lock);
	rs->phase = ret ? FERRY_PHASE_FAILED : FERRY_PHASE_DONE;
	rs->result = ret;
	snprintf(rs->reason, sizeof(rs->reason), "%s", reason);
	rs->stats.total_ns = !ret && rs->opts.mode == FERRY_RESTORE_EAGER ?
			     rs->stats.resume_ns : now - rs->start_ns;
	pthread_mutex_unlock(&rs->lock);
	event(rs, ret ? FERRY_EVENT_FAILED : FERRY_EVENT_DONE, ret);
	pthread_mutex_lock(&rs->lock);
	rs->ended = true;
	pthread_cond_broadcast(&rs->cond);
	pthread_mutex_unlock(&rs->lock);
	if (ret)
		ferry_fail(ret, "%s", reason);
	return ret;
}

/* ---- failing closed ----------------------------------------------------- */

struct pauser {
	const struct ferry_vm *vm;
	int done_fd;
};

static void *pause_main(void *arg)
{
	struct pauser *p = arg;

	p->vm->ops->pause(p->vm->handle);
	evfd_signal(p->done_fd);
	return NULL;
}

/* Can a vCPU that waits on a page still get it from the file? */
static bool file_serves(struct ferry_restore *rs)
{
	return atomic_load(&rs->demand_up) && !postcopy_error(rs->pc);
}

/* Pause the vCPUs, serving them from the file while it can. */
static void stop_vcpus(struct ferry_restore *rs)
{
	struct pauser p = { .vm = &rs->vm, .done_fd = evfd_open() };
	bool released = false;
	pthread_t t;
	int ret;

	if (p.done_fd < 0 || pthread_create(&t, NULL, pause_main, &p)) {
		postcopy_release(rs->pc);	/* and pause here */
		rs->vm.ops->pause(rs->vm.handle);
		if (p.done_fd >= 0)
			close(p.done_fd);
		return;
	}
	/* A reader that fails wakes us (wake_fd); the fault thread, never. */
	while ((ret = evfd_wait(p.done_fd, rs->wake_fd, CTL_POLL_MS)) != 1) {
		if (ret == 0)
			evfd_drain(rs->wake_fd);
		else if (ret != -ETIMEDOUT)
			usleep(1000);	/* poll failed: do not spin */
		if (!released && !file_serves(rs)) {
			postcopy_release(rs->pc);
			released = true;
		}
	}
	pthread_join(t, NULL);
	close(p.done_fd);
}

void restore_fail_closed(struct ferry_restore *rs)
{
	atomic_store(&rs->halt, true);
	evfd_signal(rs->fill_fd);	/* a fill reader waiting to start */
	if (rs->resumed && rs->pc)
		stop_vcpus(rs);
	restore_readers_stop(rs);
	if (rs->pc)
		postcopy_finish(rs->pc);
}

/* ---- the control thread ------------------------------------------------- */

/* A reason to end it early: a cancel, or a thread that failed. */
static int trouble(struct ferry_restore *rs)
{
	int ret = restore_check_cancel(rs);

	if (!ret)
		ret = err_slot_get(&rs->err);
	if (!ret && (ret = postcopy_error(rs->pc)))
		ferry_fail_ctx(ret, "fault service failed");
	return ret;
}

/* Until the run has told that the vCPUs run (events come in order). */
static void wait_running(struct ferry_restore *rs)
{
	pthread_mutex_lock(&rs->lock);
	while (!rs->running)
		pthread_cond_wait(&rs->cond, &rs->lock);
	pthread_mutex_unlock(&rs->lock);
}

/* Every page in place: the guest runs on plain memory from here on. */
static int complete(struct ferry_restore *rs)
{
	restore_readers_stop(rs);
	return postcopy_finish(rs->pc);
}

int restore_supervise(struct ferry_restore *rs)
{
	struct pollfd pfd[2] = {
		{ .fd = postcopy_done_fd(rs->pc), .events = POLLIN },
		{ .fd = rs->wake_fd, .events = POLLIN },
	};
	int ret;

	wait_running(rs);
	for (;;) {
		if (postcopy_done(rs->pc))	/* it wins over a cancel */
			return restore_end(rs, complete(rs));
		ret = trouble(rs);
		if (ret)
			break;
		if (poll(pfd, 2, CTL_POLL_MS) > 0)
			evfd_drain(rs->wake_fd);
	}
	restore_fail_closed(rs);
	return restore_end(rs, ret);
}

/* ---- the public calls --------------------------------------------------- */

int ferry_restore_cancel(struct ferry_restore *rs)
{
	atomic_store(&rs->cancel, true);
	evfd_signal(rs->wake_fd);
	return 0;
}

int ferry_restore_wait(struct ferry_restore *rs, int timeout_ms)
{
	int ret;

	ferry_restore_fill(rs);
	pthread_mutex_lock(&rs->lock);
	if (!snap_wait_ended(&rs->lock, &rs->cond, &rs->ended, timeout_ms))
		ret = ferry_fail(-ETIMEDOUT, "pages still owed after %d ms",
				 timeout_ms);
	else
		ret = rs->result ? ferry_fail(rs->result, "%s", rs->reason) : 0;
	pthread_mutex_unlock(&rs->lock);
	return ret;
}

/*
 * Bytes read per second since the last sample, one taken at least
 * RATE_MIN_NS before; until there is one, since the start (lock held).
 */
static double rate(struct ferry_restore *rs, uint64_t now, uint64_t bytes)
{
	uint64_t since = rs->rate_at_ns ? rs->rate_at_ns : rs->start_ns;

	if (now - since >= RATE_MIN_NS) {
		rs->rate_bps = (double)(bytes - rs->rate_bytes) * 1e9 /
			       (double)(now - since);
		rs->rate_at_ns = now;
		rs->rate_bytes = bytes;
	}
	if (rs->rate_bps >= 0)
		return rs->rate_bps;
	return now > rs->start_ns ? (double)bytes * 1e9 /
				    (double)(now - rs->start_ns) : 0;
}

int ferry_restore_progress(struct ferry_restore *rs,
			   struct ferry_restore_progress *p)
{
	uint64_t now = ferry_clock_now_ns(), data;

	memset(p, 0, sizeof(*p));
	p->pages = atomic_load_explicit(&rs->pages_total,
					memory_order_relaxed);
	p->bytes_read = atomic_load(&rs->bytes_read);
	p->demand_reads = atomic_load(&rs->demand_reads);
	p->filled = atomic_load(&rs->filled);
	p->elapsed_ns = now - rs->start_ns;
	pthread_mutex_lock(&rs->lock);
	p->phase = rs->phase;
	p->location = location(rs);
	p->rate_bps = rate(rs, now, p->bytes_read);
	p->owed = p->phase == FERRY_PHASE_DONE ? 0 : owed_now(rs);
	pthread_mutex_unlock(&rs->lock);
	if (p->owed > p->pages)
		p->owed = p->pages;
	p->in_place = p->pages - p->owed;
	data = atomic_load_explicit(&rs->data_bytes, memory_order_relaxed);
	p->bytes_left = p->owed && data > p->bytes_read ?
			data - p->bytes_read : 0;
	if (p->phase == FERRY_PHASE_FAILED)
		p->eta_s = -1;
	else
		p->eta_s = !p->bytes_left ? 0 : p->rate_bps > 0 ?
			   (double)p->bytes_left / p->rate_bps : -1;
	return 0;
}
