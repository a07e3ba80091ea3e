/* SPDX-License-Identifier: MIT */
#ifndef FERRY_GUEST_TEST_H
#define FERRY_GUEST_TEST_H

/*
 * What the workload VM's tests share (test_vcpu.c, test_guest.c,
 * test_verify.c): a VM on a fresh memory of the case's backing, run to a
 * step limit, checked.
 */
#include "ferry-vm/guest.h"
#include "ferry/restore.h"
#include "test.h"

/* Pass a helper's failure or skip up to the case. */
#define TRY(expr)							\
	do {								\
		enum test_result _t = (expr);				\
		if (_t != TEST_PASS)					\
			return _t;					\
	} while (0)

struct tvm {
	struct ferry_mem *mem;
	struct ferry_guest *g;
};

/*
 * 16 MiB of the case's backing: 4096 cells.  Small enough for the
 * default hugetlb reservation to hold several.
 */
#define TVM_MEM_SIZE	(16UL << 20)

/* A config: nr vCPUs, spec, the default boot mask, seed 7. */
void tvm_config(struct ferry_guest_config *cfg, unsigned int nr_vcpus,
		const char *spec, uint64_t step_limit);

/* Memory of TVM_MEM_SIZE on ctx->backing and a VM on it (not started). */
enum test_result tvm_create(struct test_ctx *ctx, struct tvm *t,
			    const struct ferry_guest_config *cfg);
void tvm_destroy(struct tvm *t);

/* Start (if needed), wait until every vCPU settles, pause. */
enum test_result tvm_settle(struct test_ctx *ctx, struct tvm *t);

/* Raise the step limit, resume, settle again, pause. */
enum test_result tvm_run_to(struct test_ctx *ctx, struct tvm *t,
			    uint64_t limit);

/* Verify must pass; the report is left in *rep if rep is not NULL. */
enum test_result tvm_verify_ok(struct test_ctx *ctx, struct tvm *t,
			       struct ferry_verify_report *rep);

/*
 * Any VM's verifier report: no fault (the first bad cell named), some
 * cells written, vCPU i's power state want[i] for the first nr.
 */
enum test_result tvm_report_ok(struct test_ctx *ctx,
			       const struct ferry_verify_report *rep,
			       const enum ferry_mp_state *want, unsigned int nr);

/* Every vCPU's MP state must be states[i]. */
enum test_result tvm_expect_mp(struct test_ctx *ctx, struct tvm *t,
			       const enum ferry_mp_state *states);

/* Every vCPU must have run exactly `steps` steps. */
enum test_result tvm_expect_steps(struct test_ctx *ctx, struct tvm *t,
				  uint64_t steps);

/* The version in the header of cell `cell`, read through the alias. */
uint64_t tvm_cell_version(const struct tvm *t, uint64_t cell);
uint8_t *tvm_cell_alias(const struct tvm *t, uint64_t cell);

/*
 * restore(ctx, fd, mode) in a process of its own, as a VMM started fresh
 * would restore: a child, which hands its verdict and reason back on a
 * pipe.
 */
typedef enum test_result (*tvm_restore_fn)(struct test_ctx *ctx, int fd,
					   enum ferry_restore_mode mode);
enum test_result tvm_restore_in_child(struct test_ctx *ctx, int fd,
				      enum ferry_restore_mode mode,
				      tvm_restore_fn restore);

/* Print the report's offending cells when the runner is verbose. */
void tvm_dump_report(const struct ferry_verify_report *rep);

#endif
