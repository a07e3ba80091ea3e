// SPDX-License-Identifier: MIT
/*
 * dest_switch: switchover and post-copy at the destination.  Every bulk
 * channel is at SWITCHOVER: stale pages become STALE and fault service
 * starts (post-copy), the vCPUs are loaded, the source hears that the VM
 * runs here, and it resumes; in post-copy, once nothing is owed, fault
 * service ends and the source hears COMPLETE.
 */
#include "base/error.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/dest_int.h"
#include "pages/postcopy.h"

/* ---- the urgent writer -------------------------------------------------- */

static int urgent_send_locked(struct dest *d)
{
	ssize_t n = ferry_wire_send(&d->urgent_writer, &d->urgent_frame);

	return n < 0 ? (int)n : 0;
}

/* The fault thread asks for a page (see postcopy_ops). */
static int request_page(void *arg, unsigned int region, uint64_t page)
{
	struct dest *d = arg;
	struct ferry_wire_page_request req = {
		.region = region, .page = (uint32_t)page, .count = 1,
	};
	int ret;

	pthread_mutex_lock(&d->urgent_lock);
	req.request_id = ++d->next_request_id;
	ret = ferry_wire_enc_page_request(&d->urgent_frame, &d->stream, &req);
	if (!ret)
		ret = urgent_send_locked(d);
	pthread_mutex_unlock(&d->urgent_lock);
	return ret;
}

static const struct postcopy_ops request_ops = { .request = request_page };

static int confirm(struct dest *d, bool complete)
{
	struct ferry_wire_complete c = { 0 };
	int ret;

	pthread_mutex_lock(&d->urgent_lock);
	ret = complete ? ferry_wire_enc_complete(&d->urgent_frame, &c) :
		ferry_wire_enc_switchover(&d->urgent_frame, d->mode);
	if (!ret)
		ret = urgent_send_locked(d);
	pthread_mutex_unlock(&d->urgent_lock);
	return ret;
}

void dest_tell_source(struct dest *d, int err, const char *why)
{
	pthread_mutex_lock(&d->urgent_lock);
	if (!ferry_wire_enc_error(&d->urgent_frame, err, why))
		ferry_wire_send(&d->urgent_writer, &d->urgent_frame);
	pthread_mutex_unlock(&d->urgent_lock);
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

static int start_postcopy(struct dest *d)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->stream.nr_regions && !ret; i++)
		ret = postcopy_switchover(d->pc, i, d->stale[i]);
	if (!ret)
		ret = postcopy_start(d->pc, &request_ops, d);
	if (!ret)
		ret = dest_start_receiver(d, &d->urgent);
	return ret;
}

/*
 * Wait for every page to be in place, or for something to fail: a
 * receiver says so at once (it signals stop), fault service is asked
 * every 50 ms.
 */
static int wait_postcopy(struct dest *d)
{
	for (;;) {
		int ret = err_slot_get(&d->err);

		if (!ret)
			ret = postcopy_error(d->pc);
		if (ret)
			return ret;
		if (evfd_wait(postcopy_done_fd(d->pc), d->threads.stop_fd,
			      50) == 1 || postcopy_done(d->pc))
			return 0;
	}
}

static void fill_fault_stats(struct dest *d)
{
	struct postcopy_stats ps;
	struct ferry_migrate_stats *st = d->stats;

	postcopy_get_stats(d->pc, &ps);
	st->minor_faults = ps.minor_faults;
	st->missing_faults = ps.missing_faults;
	st->pages_requested = ps.requests;
	st->fault_latency_p50_ns =
		ferry_hist_percentile(&d->pc->fault_latency, 50);
	st->fault_latency_p99_ns =
		ferry_hist_percentile(&d->pc->fault_latency, 99);
	st->fault_latency_max_ns = ferry_hist_max(&d->pc->fault_latency);
	if (d->opts && d->opts->fault_latency)
		ferry_hist_add(d->opts->fault_latency, &d->pc->fault_latency);
}

static int finish_postcopy(struct dest *d)
{
	int ret = wait_postcopy(d);

	if (!ret)
		ret = postcopy_finish(d->pc);
	if (!ret)
		ret = confirm(d, true);
	fill_fault_stats(d);
	return ret;
}

int dest_switchover(struct dest *d)
{
	const struct ferry_vm *vm = &d->vm;
	bool post = d->mode == FERRY_WIRE_SWITCH_POSTCOPY;
	uint64_t t0 = ferry_clock_now_ns();
	int ret = post ? start_postcopy(d) : 0;

	if (!ret)
		ret = load_vcpus(d);
	/*
	 * Confirm before resuming: the vCPUs' first faults send requests on
	 * the urgent channel, and the source expects the confirmation first.
	 */
	if (!ret)
		ret = confirm(d, false);
	if (!ret)
		ret = vm->ops->resume(vm->handle);
	d->stats->downtime_ns = ferry_clock_now_ns() - t0;
	d->stats->mode = post ? FERRY_MODE_POSTCOPY : FERRY_MODE_PRECOPY;
	if (!ret && post)
		ret = finish_postcopy(d);
	return ret;
}
