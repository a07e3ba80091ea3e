/* SPDX-License-Identifier: MIT */
#ifndef FERRY_KVM_TEST_H
#define FERRY_KVM_TEST_H

/*
 * What the KVM VM's tests share (test_kvm*.c): skipping with KVM's own
 * reason where it cannot run, a VM run to a step limit, its check.
 *
 * Sizes are small and step counts low: an exit costs tens of
 * microseconds on a PVM host and far more under nested emulation
 * (scripts/kvm-nested), where these cases run for real.
 */
#include "ferry-vm/kvm.h"
#include "guest_test.h"

#define KVM_TEST_MEM	(16UL << 20)

/* SKIP with KVM's reason unless a KVM VM can run here. */
#define KVM_OR_SKIP(ctx)						\
	do {								\
		if (!ferry_kvm_usable())				\
			SKIP(ctx, "%s", ferry_error_msg());		\
	} while (0)

/* A KVM VM of mem bytes of RAM on ctx->backing, not started. */
enum test_result kvt_create(struct test_ctx *ctx, struct ferry_kvm_vm **kv,
			    unsigned int vcpus, const char *spec,
			    uint64_t steps, size_t mem);

/* A paused or new VM: set the limit, resume (or start), settle, pause. */
enum test_result kvt_run_to(struct test_ctx *ctx, struct ferry_kvm *k,
			    uint64_t steps);

/* A running VM (a destination's, a clone's): set the limit, settle, pause. */
enum test_result kvt_settle(struct test_ctx *ctx, struct ferry_kvm *k,
			    uint64_t steps);

/* Verify (every vCPU at a step boundary) and the MP states. */
enum test_result kvt_check(struct test_ctx *ctx, struct ferry_kvm *k,
			   const enum ferry_mp_state *want, unsigned int nr);

/* Every vCPU's MP state through the vCPU ops. */
enum test_result kvt_expect_mp(struct test_ctx *ctx, struct ferry_kvm *k,
			       const enum ferry_mp_state *want,
			       unsigned int nr);

#endif
