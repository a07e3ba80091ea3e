// SPDX-License-Identifier: MIT
/*
 * guest_kick: how other threads reach a vCPU thread, and the pause
 * condition.  Every call holds g->lock.
 *
 * These are the bottom of the built-in VM: the power calls (psci.c)
 * change a vCPU's power registers and kick it; the run loop
 * (guest_run.c) makes power calls as the guest program does, and pauses.
 * Both use what is here; this file uses neither, so power calls never
 * reach back into the run loop.
 */
#include <errno.h>

#include "guest.h"

/* No vCPU runs a step: not started, or paused and every vCPU parked. */
bool guest_paused_locked(const struct ferry_guest *g)
{
	return !g->started ||
	       (g->pause_depth > 0 && g->nr_quiescent == g->nr_vcpus);
}

/* A kicked vCPU is no longer settled: it has something to look at. */
void guest_kick_locked(struct vcpu *v)
{
	atomic_fetch_or_explicit(&v->req, VCPU_REQ_KICK, memory_order_relaxed);
	if (v->settled) {
		v->settled = false;
		v->g->nr_settled--;
	}
	pthread_cond_signal(&v->wake);
}

void guest_kick_all_locked(struct ferry_guest *g)
{
	for (unsigned int i = 0; i < g->nr_vcpus; i++)
		guest_kick_locked(&g->vcpus[i]);
}

/*
 * A vCPU that still runs steps a while after a pause was asked for is, on
 * a host with fewer CPUs than busy threads, waiting for a CPU: each one
 * ahead of it would run a whole time slice (milliseconds) before it sees
 * the request.  Real-time priority puts it on a CPU at once; it reaches
 * its step boundary within microseconds and parks, and stays boosted
 * while it sleeps, to be put back before it runs again (resume), so a
 * vCPU never runs guest steps above the threads of the host.  Without
 * the privilege to do so (CAP_SYS_NICE, RLIMIT_RTPRIO), nothing changes.
 */
void guest_boost_locked(struct vcpu *v)
{
	struct sched_param rt = { .sched_priority = 1 };
	int saved = errno;

	if (!v->tid || v->boosted || v->policy != SCHED_OTHER)
		return;
	v->boosted = !sched_setscheduler(v->tid, SCHED_FIFO, &rt);
	errno = saved;
}

/* Before the vCPUs run again: each its own policy back. */
void guest_unboost_all_locked(struct ferry_guest *g)
{
	int saved = errno;

	for (unsigned int i = 0; i < g->nr_vcpus; i++) {
		struct vcpu *v = &g->vcpus[i];

		if (!v->boosted)
			continue;
		sched_setscheduler(v->tid, v->policy, &v->param);
		v->boosted = false;
	}
	errno = saved;
}
