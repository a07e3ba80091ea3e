// SPDX-License-Identifier: MIT
/*
 * psci: the power calls of the built-in VM, with PSCI 0.2's results.
 *
 * Every call runs with g->lock held and changes only power registers
 * (struct vcpu_power), which vCPU threads read only under that lock; a
 * vCPU whose power changed is kicked and acts on it at its next step
 * boundary, so every call is atomic with respect to every step.
 */
#include <errno.h>

#include "ferry/error.h"
#include "psci.h"

static const char *const fn_names[FERRY_PSCI_FN_COUNT] = {
	[FERRY_PSCI_CPU_ON] = "CPU_ON",
	[FERRY_PSCI_CPU_OFF] = "CPU_OFF",
	[FERRY_PSCI_CPU_SUSPEND] = "CPU_SUSPEND",
	[FERRY_PSCI_AFFINITY_INFO] = "AFFINITY_INFO",
	[FERRY_PSCI_SYSTEM_OFF] = "SYSTEM_OFF",
	[FERRY_PSCI_SYSTEM_RESET] = "SYSTEM_RESET",
	[FERRY_PSCI_WAKE] = "WAKE",
};

const char *ferry_guest_psci_fn_name(enum ferry_psci_fn fn)
{
	if ((unsigned int)fn >= FERRY_PSCI_FN_COUNT)
		return "?";
	return fn_names[fn];
}

/* The power state vCPU v has at boot and after a reset. */
void psci_boot_power(struct ferry_guest *g, struct vcpu *v)
{
	bool off = g->boot_off_mask >> v->index & 1;

	v->power.mp = off ? FERRY_MP_STOPPED : FERRY_MP_RUNNABLE;
	v->power.pc = VCPU_PC_BOOT;
	v->power.on_pending = false;
	v->power.wake_pending = false;
}

static struct vcpu *target_of(struct ferry_guest *g, unsigned int target)
{
	return target < g->nr_vcpus ? &g->vcpus[target] : NULL;
}

static int cpu_on(struct ferry_guest *g, unsigned int target)
{
	struct vcpu *t = target_of(g, target);

	if (!t)
		return FERRY_PSCI_INVALID_PARAMETERS;
	if (t->power.mp != FERRY_MP_STOPPED)
		return t->power.on_pending ? FERRY_PSCI_ON_PENDING :
					     FERRY_PSCI_ALREADY_ON;
	/* A secondary's entry point is the workload. */
	t->power.mp = FERRY_MP_RUNNABLE;
	t->power.pc = VCPU_PC_RUN;
	t->power.on_pending = true;
	t->power.wake_pending = false;
	guest_kick_all_locked(g);
	return FERRY_PSCI_SUCCESS;
}

static unsigned int nr_powered(const struct ferry_guest *g)
{
	unsigned int n = 0;

	for (unsigned int i = 0; i < g->nr_vcpus; i++)
		n += g->vcpus[i].power.mp != FERRY_MP_STOPPED;
	return n;
}

/*
 * The last vCPU that is on may not power itself off: nothing could ever
 * power it on again.  SYSTEM_OFF is the call for that.
 */
static int cpu_off(struct ferry_guest *g, struct vcpu *caller)
{
	if (nr_powered(g) <= 1)
		return FERRY_PSCI_DENIED;
	caller->power.mp = FERRY_MP_STOPPED;
	caller->power.on_pending = false;
	caller->power.wake_pending = false;	/* lost with the power */
	guest_kick_all_locked(g);
	return FERRY_PSCI_SUCCESS;
}

/* A wake-up that came first is consumed, as a pending interrupt ends WFI. */
static int cpu_suspend(struct vcpu *caller)
{
	if (caller->power.wake_pending) {
		caller->power.wake_pending = false;
		return FERRY_PSCI_SUCCESS;
	}
	caller->power.mp = FERRY_MP_SUSPENDED;
	guest_kick_locked(caller);
	return FERRY_PSCI_SUCCESS;
}

static int wake(struct ferry_guest *g, unsigned int target)
{
	struct vcpu *t = target_of(g, target);

	if (!t)
		return FERRY_PSCI_INVALID_PARAMETERS;
	switch (t->power.mp) {
	case FERRY_MP_STOPPED:
		return FERRY_PSCI_DENIED;
	case FERRY_MP_SUSPENDED:
		t->power.mp = FERRY_MP_RUNNABLE;
		guest_kick_all_locked(g);
		break;
	default:
		t->power.wake_pending = true;
		break;
	}
	return FERRY_PSCI_SUCCESS;
}

static int affinity_info(struct ferry_guest *g, unsigned int target)
{
	struct vcpu *t = target_of(g, target);

	if (!t)
		return FERRY_PSCI_INVALID_PARAMETERS;
	if (t->power.mp == FERRY_MP_STOPPED)
		return FERRY_PSCI_AFFINITY_OFF;
	if (t->power.on_pending)
		return FERRY_PSCI_AFFINITY_ON_PENDING;
	return FERRY_PSCI_AFFINITY_ON;
}

/*
 * Back to the boot configuration, from the boot mask (which a loaded blob
 * may have set, so it is the source machine's), not from anything before
 * the reset.  Memory and the write accounting stay: see ferry-vm/guest.h.
 */
void psci_reset_locked(struct ferry_guest *g)
{
	for (unsigned int i = 0; i < g->nr_vcpus; i++) {
		psci_boot_power(g, &g->vcpus[i]);
		g->vcpus[i].power.resets++;
	}
	guest_kick_all_locked(g);
}

static int system_off(struct ferry_guest *g)
{
	for (unsigned int i = 0; i < g->nr_vcpus; i++) {
		struct vcpu *v = &g->vcpus[i];

		v->power.mp = FERRY_MP_STOPPED;
		v->power.on_pending = false;
		v->power.wake_pending = false;
	}
	guest_kick_all_locked(g);
	return FERRY_PSCI_SUCCESS;
}

int psci_call_locked(struct ferry_guest *g, struct vcpu *caller,
		     enum ferry_psci_fn fn, unsigned int target)
{
	if (caller->power.mp != FERRY_MP_RUNNABLE)
		return FERRY_PSCI_DENIED;
	caller->power.on_pending = false;	/* it is running: it calls */
	switch (fn) {
	case FERRY_PSCI_CPU_ON:
		return cpu_on(g, target);
	case FERRY_PSCI_CPU_OFF:
		return cpu_off(g, caller);
	case FERRY_PSCI_CPU_SUSPEND:
		return cpu_suspend(caller);
	case FERRY_PSCI_AFFINITY_INFO:
		return affinity_info(g, target);
	case FERRY_PSCI_SYSTEM_OFF:
		return system_off(g);
	case FERRY_PSCI_SYSTEM_RESET:
		psci_reset_locked(g);
		return FERRY_PSCI_SUCCESS;
	case FERRY_PSCI_WAKE:
		return wake(g, target);
	default:
		return FERRY_PSCI_NOT_SUPPORTED;
	}
}

/* KVM_SET_MP_STATE's meaning; the registers stay as they are. */
int psci_set_mp_state_locked(struct vcpu *v, enum ferry_mp_state state)
{
	if (!ferry_vcpu_mp_state_valid((int)state))
		return ferry_error_set(-EINVAL, "MP state %d is not RUNNABLE "
				       "(0), STOPPED (1) or SUSPENDED (2)",
				       (int)state);
	v->power.mp = state;
	v->power.on_pending = false;
	if (state == FERRY_MP_STOPPED)
		v->power.wake_pending = false;
	guest_kick_all_locked(v->g);
	return 0;
}

int ferry_guest_psci(struct ferry_guest *g, unsigned int caller,
		     enum ferry_psci_fn fn, unsigned int target,
		     int *psci_ret)
{
	int ret = 0;

	if (caller >= g->nr_vcpus || (unsigned int)fn >= FERRY_PSCI_FN_COUNT)
		return ferry_error_set(-EINVAL,
				       "power call %d by vCPU %u of %u",
				       (int)fn, caller, g->nr_vcpus);
	pthread_mutex_lock(&g->lock);
	if (guest_paused_locked(g))
		*psci_ret = psci_call_locked(g, &g->vcpus[caller], fn, target);
	else
		ret = ferry_error_set(-EBUSY, "power calls from outside need "
				      "the VM paused");
	pthread_mutex_unlock(&g->lock);
	return ret;
}
