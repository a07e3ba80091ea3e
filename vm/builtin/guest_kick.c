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
