/* SPDX-License-Identifier: MIT */
#ifndef FERRY_GUEST_PSCI_H
#define FERRY_GUEST_PSCI_H

/*
 * psci: the built-in VM's power calls.  They sit above the vCPU kicks
 * (guest_kick.c) and below the run loop (guest_run.c), which makes them
 * on behalf of the guest program: a call changes power registers and
 * kicks the vCPUs concerned, and never waits for or runs a vCPU itself.
 */
#include "guest.h"

/* Every call with g->lock held; returns the PSCI result. */
int psci_call_locked(struct ferry_guest *g, struct vcpu *caller,
		     enum ferry_psci_fn fn, unsigned int target);
void psci_reset_locked(struct ferry_guest *g);
int psci_set_mp_state_locked(struct vcpu *v, enum ferry_mp_state state);

/* The power state vCPU v has at boot and after a reset. */
void psci_boot_power(struct ferry_guest *g, struct vcpu *v);

#endif
