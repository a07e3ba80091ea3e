// SPDX-License-Identifier: MIT
/*
 * guest_verify: the built-in VM's side of verification and the digest.
 * The checks are the workload's (workload/verify.c); here the VM makes
 * sure its vCPUs stand still and hands over their slices and registers.
 */
#include <errno.h>
#include <stdbool.h>

#include "ferry/error.h"
#include "guest.h"
#include "verify.h"

static bool guest_paused(struct ferry_guest *g)
{
	bool paused;

	pthread_mutex_lock(&g->lock);
	paused = guest_paused_locked(g);
	pthread_mutex_unlock(&g->lock);
	return paused;
}

/* Copy every vCPU's registers while nothing can change them. */
static int collect_vcpus(struct ferry_guest *g, struct verify_vcpu *vcpus)
{
	int ret = 0;

	pthread_mutex_lock(&g->lock);
	if (!guest_paused_locked(g))
		ret = ferry_error_set(-EBUSY, "verify needs the VM paused");
	for (unsigned int i = 0; !ret && i < g->nr_vcpus; i++) {
		const struct vcpu *v = &g->vcpus[i];

		vcpus[i] = (struct verify_vcpu){ .part = &v->part,
			.regs = v->regs, .mp_state = v->power.mp };
	}
	pthread_mutex_unlock(&g->lock);
	return ret;
}

int ferry_guest_verify(struct ferry_guest *g, struct ferry_verify_report *rep)
{
	struct verify_vcpu vcpus[FERRY_GUEST_MAX_VCPUS];
	int ret = collect_vcpus(g, vcpus);

	if (ret)
		return ret;
	return verify_memory(&g->cells, &g->wl, vcpus, g->nr_vcpus, rep);
}

int ferry_guest_digest(struct ferry_guest *g, uint64_t *digest)
{
	if (!guest_paused(g))
		return ferry_error_set(-EBUSY,
				       "the digest needs the VM paused");
	return verify_digest(&g->cells, digest);
}
