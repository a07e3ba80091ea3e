// SPDX-License-Identifier: MIT
/* Helpers for the KVM VM's tests: see kvm_test.h. */
#include <stdlib.h>

#include "kvm_test.h"

enum test_result kvt_create(struct test_ctx *ctx, struct ferry_kvm_vm **kv,
			    unsigned int vcpus, const char *spec,
			    uint64_t steps, size_t mem)
{
	struct ferry_guest_config cfg;

	tvm_config(&cfg, vcpus, spec, steps);
	CHECK_OK(ctx, ferry_kvm_vm_create(&cfg, ctx->backing, mem, kv));
	return TEST_PASS;
}

enum test_result kvt_run_to(struct test_ctx *ctx, struct ferry_kvm *k,
			    uint64_t steps)
{
	int ret;

	CHECK_OK(ctx, ferry_kvm_set_step_limit(k, steps));
	ret = ferry_kvm_start(k);
	if (ret == -EBUSY)
		CHECK_OK(ctx, ferry_kvm_resume(k));
	else
		CHECK_OK(ctx, ret);
	return kvt_settle(ctx, k, steps);
}

enum test_result kvt_settle(struct test_ctx *ctx, struct ferry_kvm *k,
			    uint64_t steps)
{
	int ret;

	CHECK_OK(ctx, ferry_kvm_set_step_limit(k, steps));
	ret = ferry_kvm_wait_settled(k, 120000);
	CHECK(ctx, !ret, "settling: %s (guest: %s)", ferry_error_msg(),
	      ferry_kvm_error(k));
	CHECK_OK(ctx, ferry_kvm_pause(k));
	return TEST_PASS;
}

enum test_result kvt_expect_mp(struct test_ctx *ctx, struct ferry_kvm *k,
			       const enum ferry_mp_state *want,
			       unsigned int nr)
{
	const struct ferry_vcpu_ops *ops = ferry_kvm_vcpu_ops();

	for (unsigned int i = 0; i < nr; i++) {
		enum ferry_mp_state mp;

		CHECK_OK(ctx, ops->get_mp_state(k, i, &mp));
		CHECK(ctx, mp == want[i], "vCPU %u is %s, want %s", i,
		      ferry_vcpu_mp_state_name(mp),
		      ferry_vcpu_mp_state_name(want[i]));
	}
	return TEST_PASS;
}

enum test_result kvt_check(struct test_ctx *ctx, struct ferry_kvm *k,
			   const enum ferry_mp_state *want, unsigned int nr)
{
	struct ferry_verify_report rep;

	CHECK(ctx, !ferry_kvm_error(k)[0], "the guest stopped: %s",
	      ferry_kvm_error(k));
	CHECK_OK(ctx, ferry_kvm_verify(k, &rep));
	TRY(tvm_report_ok(ctx, &rep, want, nr));
	return kvt_expect_mp(ctx, k, want, nr);
}
