// SPDX-License-Identifier: MIT
/* Helpers for the workload VM's tests: see guest_test.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "guest_test.h"

void tvm_config(struct ferry_guest_config *cfg, unsigned int nr_vcpus,
		const char *spec, uint64_t step_limit)
{
	ferry_guest_config_init(cfg);
	cfg->nr_vcpus = nr_vcpus;
	cfg->seed = 7;
	cfg->step_limit = step_limit;
	ferry_guest_config_set_workload(cfg, spec);
}

enum test_result tvm_create(struct test_ctx *ctx, struct tvm *t,
			    const struct ferry_guest_config *cfg)
{
	t->mem = NULL;
	t->g = NULL;
	CHECK_OK(ctx, ferry_mem_create(&t->mem));
	CHECK_OK(ctx, ferry_mem_add_region(t->mem, ctx->backing,
					   TVM_MEM_SIZE, NULL));
	CHECK_OK(ctx, ferry_guest_create(t->mem, cfg, &t->g));
	return TEST_PASS;
}

void tvm_destroy(struct tvm *t)
{
	ferry_guest_destroy(t->g);
	ferry_mem_destroy(t->mem);
}

enum test_result tvm_settle(struct test_ctx *ctx, struct tvm *t)
{
	int ret = ferry_guest_start(t->g);

	CHECK(ctx, ret == 0 || ret == -EBUSY, "start: %s", ferry_error_msg());
	CHECK_OK(ctx, ferry_guest_wait_settled(t->g, 20000));
	CHECK_OK(ctx, ferry_guest_pause(t->g));
	return TEST_PASS;
}

enum test_result tvm_run_to(struct test_ctx *ctx, struct tvm *t,
			    uint64_t limit)
{
	CHECK_OK(ctx, ferry_guest_set_step_limit(t->g, limit));
	CHECK_OK(ctx, ferry_guest_resume(t->g));
	CHECK_OK(ctx, ferry_guest_wait_settled(t->g, 20000));
	CHECK_OK(ctx, ferry_guest_pause(t->g));
	return TEST_PASS;
}

void tvm_dump_report(const struct ferry_verify_report *rep)
{
	if (!getenv("FERRY_TEST_VERBOSE"))
		return;
	printf("  verify: lost %llu torn %llu duplicated %llu read errors "
	       "%llu\n", (unsigned long long)rep->lost,
	       (unsigned long long)rep->torn,
	       (unsigned long long)rep->duplicated,
	       (unsigned long long)rep->read_errors);
	for (unsigned int i = 0; i < rep->nr_bad; i++)
		printf("  %s cell %llu vcpu %d expected %llu found %llu\n",
		       ferry_verify_kind_name(rep->bad[i].kind),
		       (unsigned long long)rep->bad[i].cell, rep->bad[i].vcpu,
		       (unsigned long long)rep->bad[i].expected,
		       (unsigned long long)rep->bad[i].found);
}

enum test_result tvm_verify_ok(struct test_ctx *ctx, struct tvm *t,
			       struct ferry_verify_report *rep)
{
	struct ferry_verify_report local;

	if (!rep)
		rep = &local;
	CHECK_OK(ctx, ferry_guest_verify(t->g, rep));
	tvm_dump_report(rep);
	CHECK(ctx, rep->ok, "verify: %llu lost, %llu torn, %llu duplicated, "
	      "%llu read errors", (unsigned long long)rep->lost,
	      (unsigned long long)rep->torn,
	      (unsigned long long)rep->duplicated,
	      (unsigned long long)rep->read_errors);
	return TEST_PASS;
}

enum test_result tvm_report_ok(struct test_ctx *ctx,
			       const struct ferry_verify_report *rep,
			       const enum ferry_mp_state *want, unsigned int nr)
{
	tvm_dump_report(rep);
	CHECK(ctx, rep->ok, "verifier: %llu lost, %llu torn, %llu duplicated, "
	      "%llu read errors (first cell %llu, %s)",
	      (unsigned long long)rep->lost, (unsigned long long)rep->torn,
	      (unsigned long long)rep->duplicated,
	      (unsigned long long)rep->read_errors,
	      rep->nr_bad ? (unsigned long long)rep->bad[0].cell : 0ULL,
	      rep->nr_bad ? ferry_verify_kind_name(rep->bad[0].kind) : "-");
	CHECK(ctx, rep->cells_written > 0, "the guest wrote nothing");
	for (unsigned int i = 0; i < nr; i++)
		CHECK(ctx, rep->vcpu[i].mp_state == want[i],
		      "vCPU %u is %s, want %s", i,
		      ferry_vcpu_mp_state_name(rep->vcpu[i].mp_state),
		      ferry_vcpu_mp_state_name(want[i]));
	return TEST_PASS;
}

enum test_result tvm_expect_mp(struct test_ctx *ctx, struct tvm *t,
			       const enum ferry_mp_state *states)
{
	const struct ferry_vcpu_ops *ops = ferry_guest_vcpu_ops();
	unsigned int n = ops->nr_vcpus(t->g);

	for (unsigned int i = 0; i < n; i++) {
		enum ferry_mp_state mp;

		CHECK_OK(ctx, ops->get_mp_state(t->g, i, &mp));
		CHECK(ctx, mp == states[i], "vCPU %u is %s, want %s", i,
		      ferry_vcpu_mp_state_name(mp), ferry_vcpu_mp_state_name(states[i]));
	}
	return TEST_PASS;
}

enum test_result tvm_expect_steps(struct test_ctx *ctx, struct tvm *t,
				  uint64_t steps)
{
	struct ferry_guest_stats st;

	ferry_guest_stats(t->g, &st);
	for (unsigned int i = 0; i < st.nr_vcpus; i++)
		CHECK(ctx, st.vcpu[i].steps == steps, "vCPU %u at step %llu, "
		      "want %llu", i, (unsigned long long)st.vcpu[i].steps,
		      (unsigned long long)steps);
	return TEST_PASS;
}

uint8_t *tvm_cell_alias(const struct tvm *t, uint64_t cell)
{
	uint64_t gpa = cell * FERRY_CELL_SIZE;
	struct ferry_region *r = ferry_mem_find_gpa(t->mem, gpa);

	return r->alias + (gpa - r->guest_base);
}

uint64_t tvm_cell_version(const struct tvm *t, uint64_t cell)
{
	uint64_t v;

	memcpy(&v, tvm_cell_alias(t, cell) + 8, sizeof(v));
	return v;
}

enum test_result tvm_restore_in_child(struct test_ctx *ctx, int fd,
				      enum ferry_restore_mode mode,
				      tvm_restore_fn restore)
{
	enum test_result res;
	int pfd[2], status;
	pid_t pid;

	CHECK_OK(ctx, pipe(pfd) ? -errno : 0);
	pid = fork();
	CHECK(ctx, pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(pfd[0]);
		res = restore(ctx, fd, mode);
		if (write(pfd[1], ctx->reason, sizeof(ctx->reason)) < 0)
			_exit(TEST_FAIL);
		_exit(res);
	}
	close(pfd[1]);
	if (read(pfd[0], ctx->reason, sizeof(ctx->reason)) <= 0)
		snprintf(ctx->reason, sizeof(ctx->reason), "the restoring "
			 "process died");
	close(pfd[0]);
	CHECK_EQ(ctx, waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != TEST_PASS)
		return WIFEXITED(status) && WEXITSTATUS(status) == TEST_SKIP ?
		       TEST_SKIP : TEST_FAIL;
	return TEST_PASS;
}
