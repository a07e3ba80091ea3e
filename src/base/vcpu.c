// SPDX-License-Identifier: MIT
/* vcpu: what every implementation of the vCPU interface shares. */
#include <errno.h>

#include "base/error.h"
#include "ferry/vcpu.h"

static const char *const mp_state_names[FERRY_MP_STATE_COUNT] = {
	[FERRY_MP_RUNNABLE] = "RUNNABLE",
	[FERRY_MP_STOPPED] = "STOPPED",
	[FERRY_MP_SUSPENDED] = "SUSPENDED",
};

bool ferry_vcpu_mp_state_valid(int state)
{
	return state >= 0 && state < FERRY_MP_STATE_COUNT;
}

const char *ferry_vcpu_mp_state_name(enum ferry_mp_state state)
{
	if (!ferry_vcpu_mp_state_valid((int)state))
		return "?";
	return mp_state_names[state];
}

int ferry_vcpu_ops_check(const struct ferry_vcpu_ops *ops)
{
	const char *missing = NULL;

	if (!ops)
		return ferry_fail(-EINVAL, "no vCPU operations");
	if (!ops->pause || !ops->resume)
		missing = "pause/resume";
	else if (!ops->nr_vcpus || !ops->state_size)
		missing = "nr_vcpus/state_size";
	else if (!ops->save || !ops->load)
		missing = "save/load";
	else if (!ops->get_mp_state || !ops->set_mp_state)
		missing = "get_mp_state/set_mp_state";
	else if (!ops->reset)
		missing = "reset";
	if (missing)
		return ferry_fail(-EINVAL, "vCPU operations '%s' lack %s",
				  ops->name ? ops->name : "?", missing);
	return 0;
}
