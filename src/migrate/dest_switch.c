// SPDX-License-Identifier: MIT
/*
 * dest_switch: switchover and post-copy at the destination.  Every bulk
 * channel is at SWITCHOVER: pages that failed their check are fetched
 * (pre-copy) or owed (post-copy, with the stale ones, and fault service
 * starts), the vCPUs are loaded, the source hears READY, and only its
 * COMMIT lets them run.  In post-copy, once nothing is owed, fault
 * service ends and the source hears COMPLETE.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include "base/error.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/dest_int.h"
#include "pages/postcopy.h"

static const struct postcopy_ops request_ops = { .request = dest_request };

static int enc_ready(struct ferry_wire_frame *f, const void *arg)
{
	return ferry_wire_enc_switchover(f,
			*(const enum ferry_wire_switch_mode *)arg);
}

static int enc_complete(struct ferry_wire_frame *f, const void *arg)
{
	return ferry_wire_enc_complete(f, arg);
}

/* ---- pages that failed their check -------------------------------------- */

/* Ask for every page marked bad (that is still needed, in post-copy). */
static int request_bad(struct dest *d)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->stream.nr_regions && !ret; i++) {
		uint64_t pages = d->stream.regions[i].nr_pages;

		for (uint64_t w = 0; w < (pages + 63) / 64 && !ret; w++) {
			uint64_t bits = d->rf.bad[i][w];

			while (bits && !ret) {
				uint64_t p = w * 64 + (uint64_t)
					     __builtin_ctzll(bits);

				bits &= bits - 1;
				ret = d->pc->started ?
				      postcopy_request(d->pc, i, p) :
				      dest_request(d, i, p);
			}
		}
	}
	return ret;
}

static bool none_bad(const void *arg)
{
	const struct dest *d = arg;

	return refetch_count(&d->rf) == 0;
}

/*
 * Pre-copy: every page whose last copy failed comes whole before the VM
 * may run here.  The source is paused, so each reply is final; one that
 * fails too is asked for again by the receiver, up to the page's tries.
 */
static int fetch_bad(struct dest *d)
{
	int ret = request_bad(d);

	return ret ? ret : mig_wait_until(d->m, &d->link, none_bad, d);
}

/* ---- switchover --------------------------------------------------------- */

static int load_vcpus(struct dest *d)
{
	const struct ferry_vm *vm = &d->vm;

	for (unsigned int i = 0; i < d->stream.nr_vcpus; i++) {
		struct vcpu_slot *s = &d->vcpus[i];
		int ret;

		if (!s->seen)
			return ferry_fail(-EBADMSG, "vCPU %u's state never "
					  "came", i);
		if (!ferry_vcpu_mp_state_valid((int)s->mp_state))
			return ferry_fail(-EINVAL, "vCPU %u: MP state %u is "
					  "not one ferry knows", i,
					  s->mp_state);
		ret = vm->ops->load(vm->handle, i, s->regs, s->len);
		if (!ret)
			ret = vm->ops->set_mp_state(vm->handle, i,
					(enum ferry_mp_state)s->mp_state);
		if (ret)
			return ferry_fail_ctx(ret, "loading vCPU %u", i);
	}
	return 0;
}

void dest_prepare_postcopy(struct dest *d)
{
	/* Best effort: a switchover in post-copy starts it anyway, and
	 * one in pre-copy never needs it. */
	if (postcopy_prepare(d->pc, &request_ops, d))
		ferry_error_clear();
}

/* Stale pages and failed ones are owed; fault service starts. */
static int start_postcopy(struct dest *d)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->stream.nr_regions && !ret; i++) {
		ret = postcopy_switchover(d->pc, i, d->stale[i]);
		if (!ret)
			ret = postcopy_switchover(d->pc, i, d->rf.bad[i]);
	}
	if (!ret)
		ret = postcopy_start_held(d->pc, &request_ops, d);
	return ret;
}

/* COMMIT came: the VM is this side's to run. */
static int run_vm(struct dest *d, uint64_t t0)
{
	bool post = d->mode == FERRY_WIRE_SWITCH_POSTCOPY;
	int ret = d->vm.ops->resume(d->vm.handle);

	d->st.downtime_ns = ferry_clock_now_ns() - t0;
	d->st.mode = post ? FERRY_MODE_POSTCOPY : FERRY_MODE_PRECOPY;
	if (ret)
		return ferry_fail_ctx(ret, "resuming the vCPUs");
	d->running = true;
	if (post)	/* the guest runs: map what is here in bulk */
		postcopy_map_go(d->pc);
	mig_set_location(d->m, post ? FERRY_VM_SPLIT : FERRY_VM_HERE);
	mig_event(d->m, FERRY_EVENT_DEST_RUNNING, 0,
		  post ? atomic_load(&d->pc->owed_left) : 0);
	return 0;
}

int dest_switchover(struct dest *d)
{
	bool post = d->mode == FERRY_WIRE_SWITCH_POSTCOPY;
	uint64_t t0 = ferry_clock_now_ns();
	int ret;

	mig_set_phase(d->m, FERRY_PHASE_SWITCHOVER);
	mig_event(d->m, FERRY_EVENT_SWITCHOVER, 0, 0);
	ret = post ? start_postcopy(d) : fetch_bad(d);
	if (!ret)
		ret = load_vcpus(d);
	/*
	 * READY, then nothing until COMMIT: had the vCPUs run now and the
	 * source not heard READY, it would run the VM too.  Without COMMIT
	 * they never run, and the VM is discarded here.
	 */
	if (!ret) {
		pthread_mutex_lock(&d->m->lock);
		d->ready_sent = true;
		pthread_mutex_unlock(&d->m->lock);
		ret = link_send(&d->link, enc_ready, &d->mode);
	}
	if (!ret)
		ret = dest_wait_flag(d, &d->got_commit);
	return ret ? ret : run_vm(d, t0);
}

/* ---- after the commit --------------------------------------------------- */

static bool postcopy_over(struct dest *d, int *err)
{
	*err = postcopy_error(d->pc);
	return *err || postcopy_done(d->pc);
}

/*
 * Wait for every page to be in place, or the session to end: a receiver
 * or the watchdog says so at once (the link wakes m->cond), fault
 * service is asked every 50 ms.
 */
static int wait_postcopy(struct dest *d)
{
	struct ferry_migration *m = d->m;
	int err = 0;

	pthread_mutex_lock(&m->lock);
	while (!postcopy_over(d, &err) && !link_failed(&d->link) &&
	       !m->cancel) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&m->cond, &m->lock, &ts);
	}
	pthread_mutex_unlock(&m->lock);
	if (err)
		return err;
	if (postcopy_done(d->pc))
		return 0;
	return m->cancel ? -ECANCELED : link_error(&d->link);
}

static void fill_fault_stats(struct dest *d)
{
	struct postcopy_stats ps;
	struct ferry_migrate_stats *st = &d->st;

	postcopy_get_stats(d->pc, &ps);
	st->minor_faults = ps.minor_faults;
	st->missing_faults = ps.missing_faults;
	st->pages_requested = ps.requests;
	st->fault_latency_p50_ns =
		ferry_hist_percentile(&d->pc->fault_latency, 50);
	st->fault_latency_p99_ns =
		ferry_hist_percentile(&d->pc->fault_latency, 99);
	st->fault_latency_max_ns = ferry_hist_max(&d->pc->fault_latency);
	if (d->opts->fault_latency)
		ferry_hist_add(d->opts->fault_latency, &d->pc->fault_latency);
}

static bool bulk_ended(const void *arg)
{
	const struct dest *d = arg;

	return d->nr_ended == d->nr_receivers;
}

int dest_serve(struct dest *d)
{
	struct ferry_wire_complete c = { 0 };
	int ret = 0;

	if (d->pc->started) {
		mig_set_phase(d->m, FERRY_PHASE_POSTCOPY);
		ret = request_bad(d);
		if (!ret)
			ret = wait_postcopy(d);
		if (!ret) {
			atomic_store(&d->all_in, true);
			ret = postcopy_finish(d->pc);
		}
		fill_fault_stats(d);
		if (ret)
			return ret;
	} else {	/* pre-copy: what was prepared for post-copy goes */
		postcopy_finish(d->pc);
	}
	/* Every page is in place: the VM is whole here, whatever follows. */
	d->complete = true;
	mig_set_location(d->m, FERRY_VM_HERE);
	/* The source's COMPLETE on every bulk channel, if it comes. */
	if (!link_send(&d->link, enc_complete, &c))
		mig_wait_until(d->m, &d->link, bulk_ended, d);
	return 0;
}

/* ---- failing closed ----------------------------------------------------- */

struct pauser {
	struct dest *d;
	atomic_bool asked;
};

static void *pause_main(void *arg)
{
	struct pauser *p = arg;

	atomic_store(&p->asked, true);
	p->d->vm.ops->pause(p->d->vm.handle);
	return NULL;
}

/*
 * The VM ends here.  If its vCPUs ever ran, they stop first: a pause is
 * asked on a thread of its own (it returns only once every vCPU is
 * parked, and a vCPU blocked on a missing page never parks by itself),
 * then every fault is served with whatever the memfd holds, so such a
 * vCPU finishes the one access it was in and parks.  Only then is
 * userfaultfd unregistered: unregistering first would let the guest run
 * on, on zero pages.  The VM is discarded after this: what those last
 * accesses read is never seen.
 */
void dest_fail_closed(struct dest *d)
{
	struct pauser p = { .d = d };
	pthread_t t;

	if (d->running) {
		if (pthread_create(&t, NULL, pause_main, &p)) {
			postcopy_release(d->pc);	/* and pause here */
			pause_main(&p);
		} else {
			while (!atomic_load(&p.asked))
				sched_yield();
			usleep(1000);	/* the pause's request lands */
			postcopy_release(d->pc);
			pthread_join(t, NULL);
		}
		d->running = false;
	}
	if (d->pc)
		postcopy_finish(d->pc);
}
