// SPDX-License-Identifier: MIT
/*
 * vCPUs: MP state, power calls, register blobs, and seed 001's scenario
 * end to end: a vCPU that was off before a migration is off after it, and
 * a reset after it returns to the boot configuration.
 */
#include <xxhash.h>

#include "guest_test.h"

#define R	FERRY_MP_RUNNABLE
#define S	FERRY_MP_STOPPED
#define Z	FERRY_MP_SUSPENDED

static const struct ferry_vcpu_ops *ops(void)
{
	return ferry_guest_vcpu_ops();
}

static enum test_result ops_complete(struct test_ctx *ctx)
{
	struct ferry_vcpu_ops broken = *ops();

	CHECK_OK(ctx, ferry_vcpu_ops_check(ops()));
	broken.reset = NULL;
	CHECK_EQ(ctx, ferry_vcpu_ops_check(&broken), -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "reset"), "reason: %s",
	      ferry_error_msg());
	CHECK(ctx, !strcmp(ferry_vcpu_mp_state_name(FERRY_MP_SUSPENDED),
			   "SUSPENDED"), "name");
	CHECK(ctx, !strcmp(ferry_vcpu_mp_state_name((enum ferry_mp_state)7), "?"),
	      "name of 7");
	CHECK(ctx, ferry_vcpu_mp_state_valid(2) && !ferry_vcpu_mp_state_valid(3) &&
	      !ferry_vcpu_mp_state_valid(-1), "validity");
	return TEST_PASS;
}

/* Every vCPU's blob, to show that something did not change. */
static enum test_result save_all(struct test_ctx *ctx, struct tvm *t,
				 uint8_t (*blobs)[FERRY_GUEST_STATE_SIZE])
{
	unsigned int n = ops()->nr_vcpus(t->g);

	CHECK_EQ(ctx, ops()->state_size(t->g), FERRY_GUEST_STATE_SIZE);
	for (unsigned int i = 0; i < n; i++)
		CHECK_EQ(ctx, ops()->save(t->g, i, blobs[i],
					  FERRY_GUEST_STATE_SIZE),
			 FERRY_GUEST_STATE_SIZE);
	return TEST_PASS;
}

static enum test_result same_blobs(struct test_ctx *ctx, struct tvm *t,
				   uint8_t (*before)[FERRY_GUEST_STATE_SIZE])
{
	uint8_t now[4][FERRY_GUEST_STATE_SIZE];

	TRY(save_all(ctx, t, now));
	CHECK(ctx, !memcmp(now, before, sizeof(now)), "a vCPU changed");
	return TEST_PASS;
}

static enum test_result mp_state(struct test_ctx *ctx)
{
	static const int bad[] = { 3, 4, 7, 255, -1, 0x7fffffff };
	uint8_t blobs[4][FERRY_GUEST_STATE_SIZE];
	struct ferry_guest_config cfg;
	enum ferry_mp_state mp;
	struct tvm t;

	tvm_config(&cfg, 4, "random", 0);
	TRY(tvm_create(ctx, &t, &cfg));
	TRY(tvm_expect_mp(ctx, &t, (enum ferry_mp_state[]){ R, S, S, S }));
	CHECK_OK(ctx, ops()->set_mp_state(t.g, 1, R));
	CHECK_OK(ctx, ops()->set_mp_state(t.g, 2, Z));
	CHECK_OK(ctx, ops()->set_mp_state(t.g, 0, S));
	TRY(tvm_expect_mp(ctx, &t, (enum ferry_mp_state[]){ S, R, Z, S }));
	TRY(save_all(ctx, &t, blobs));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		for (unsigned int v = 0; v < 4; v++)
			CHECK_EQ(ctx, ops()->set_mp_state(t.g, v,
				 (enum ferry_mp_state)bad[i]), -EINVAL);
		TRY(same_blobs(ctx, &t, blobs));
	}
	TRY(tvm_expect_mp(ctx, &t, (enum ferry_mp_state[]){ S, R, Z, S }));
	CHECK_EQ(ctx, ops()->set_mp_state(t.g, 4, R), -EINVAL);
	CHECK_EQ(ctx, ops()->get_mp_state(t.g, 4, &mp), -EINVAL);
	/* Running: get still answers, set wants the vCPUs paused. */
	CHECK_OK(ctx, ferry_guest_start(t.g));
	CHECK_OK(ctx, ops()->get_mp_state(t.g, 1, &mp));
	CHECK_EQ(ctx, mp, R);
	CHECK_EQ(ctx, ops()->set_mp_state(t.g, 1, S), -EBUSY);
	CHECK_OK(ctx, ops()->pause(t.g));
	CHECK_OK(ctx, ops()->set_mp_state(t.g, 1, S));
	TRY(tvm_expect_mp(ctx, &t, (enum ferry_mp_state[]){ S, S, Z, S }));
	tvm_destroy(&t);
	return TEST_PASS;
}

static enum test_result call(struct test_ctx *ctx, struct tvm *t,
			     unsigned int caller, enum ferry_psci_fn fn,
			     unsigned int target, int want)
{
	int got = 99;

	CHECK_OK(ctx, ferry_guest_psci(t->g, caller, fn, target, &got));
	CHECK(ctx, got == want, "vCPU %u %s(%u) = %d, want %d", caller,
	      ferry_guest_psci_fn_name(fn), target, got, want);
	return TEST_PASS;
}

static enum test_result psci_cpu_on_off(struct test_ctx *ctx, struct tvm *t)
{
	TRY(call(ctx, t, 0, FERRY_PSCI_AFFINITY_INFO, 0,
		 FERRY_PSCI_AFFINITY_ON));
	TRY(call(ctx, t, 0, FERRY_PSCI_AFFINITY_INFO, 1,
		 FERRY_PSCI_AFFINITY_OFF));
	TRY(call(ctx, t, 0, FERRY_PSCI_AFFINITY_INFO, 4,
		 FERRY_PSCI_INVALID_PARAMETERS));
	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_ON, 4,
		 FERRY_PSCI_INVALID_PARAMETERS));
	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_ON, 0, FERRY_PSCI_ALREADY_ON));
	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_ON, 1, FERRY_PSCI_SUCCESS));
	/* Not yet run since: pending, in both calls that can tell. */
	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_ON, 1, FERRY_PSCI_ON_PENDING));
	TRY(call(ctx, t, 0, FERRY_PSCI_AFFINITY_INFO, 1,
		 FERRY_PSCI_AFFINITY_ON_PENDING));
	/* A vCPU that is off makes no calls. */
	TRY(call(ctx, t, 2, FERRY_PSCI_CPU_ON, 3, FERRY_PSCI_DENIED));
	/* vCPU 1 calling shows it running: no longer pending. */
	TRY(call(ctx, t, 1, FERRY_PSCI_AFFINITY_INFO, 1,
		 FERRY_PSCI_AFFINITY_ON));
	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_ON, 1, FERRY_PSCI_ALREADY_ON));
	TRY(call(ctx, t, 1, FERRY_PSCI_CPU_OFF, 0, FERRY_PSCI_SUCCESS));
	TRY(call(ctx, t, 0, FERRY_PSCI_AFFINITY_INFO, 1,
		 FERRY_PSCI_AFFINITY_OFF));
	/* The last vCPU that is on may not switch itself off. */
	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_OFF, 0, FERRY_PSCI_DENIED));
	return tvm_expect_mp(ctx, t, (enum ferry_mp_state[]){ R, S, S, S });
}

static enum test_result psci_suspend_wake(struct test_ctx *ctx,
					  struct tvm *t)
{
	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_ON, 2, FERRY_PSCI_SUCCESS));
	TRY(call(ctx, t, 2, FERRY_PSCI_CPU_SUSPEND, 0, FERRY_PSCI_SUCCESS));
	TRY(tvm_expect_mp(ctx, t, (enum ferry_mp_state[]){ R, S, Z, S }));
	/* Suspended is still on, for PSCI. */
	TRY(call(ctx, t, 0, FERRY_PSCI_AFFINITY_INFO, 2,
		 FERRY_PSCI_AFFINITY_ON));
	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_ON, 2, FERRY_PSCI_ALREADY_ON));
	TRY(call(ctx, t, 2, FERRY_PSCI_CPU_OFF, 0, FERRY_PSCI_DENIED));
	TRY(call(ctx, t, 0, FERRY_PSCI_WAKE, 2, FERRY_PSCI_SUCCESS));
	TRY(tvm_expect_mp(ctx, t, (enum ferry_mp_state[]){ R, S, R, S }));
	/* A wake-up that comes first is kept for the next suspend. */
	TRY(call(ctx, t, 0, FERRY_PSCI_WAKE, 2, FERRY_PSCI_SUCCESS));
	TRY(call(ctx, t, 2, FERRY_PSCI_CPU_SUSPEND, 0, FERRY_PSCI_SUCCESS));
	TRY(tvm_expect_mp(ctx, t, (enum ferry_mp_state[]){ R, S, R, S }));
	TRY(call(ctx, t, 2, FERRY_PSCI_CPU_SUSPEND, 0, FERRY_PSCI_SUCCESS));
	TRY(tvm_expect_mp(ctx, t, (enum ferry_mp_state[]){ R, S, Z, S }));
	TRY(call(ctx, t, 0, FERRY_PSCI_WAKE, 3, FERRY_PSCI_DENIED));
	TRY(call(ctx, t, 0, FERRY_PSCI_WAKE, 9,
		 FERRY_PSCI_INVALID_PARAMETERS));
	return TEST_PASS;
}

static enum test_result psci_system(struct test_ctx *ctx, struct tvm *t)
{
	struct ferry_guest_stats st;

	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_ON, 3, FERRY_PSCI_SUCCESS));
	TRY(call(ctx, t, 3, FERRY_PSCI_SYSTEM_RESET, 0, FERRY_PSCI_SUCCESS));
	TRY(tvm_expect_mp(ctx, t, (enum ferry_mp_state[]){ R, S, S, S }));
	TRY(call(ctx, t, 0, FERRY_PSCI_SYSTEM_OFF, 0, FERRY_PSCI_SUCCESS));
	TRY(tvm_expect_mp(ctx, t, (enum ferry_mp_state[]){ S, S, S, S }));
	TRY(call(ctx, t, 0, FERRY_PSCI_CPU_ON, 1, FERRY_PSCI_DENIED));
	/* The VMM's reset brings a machine that is off back. */
	CHECK_OK(ctx, ops()->reset(t->g));
	TRY(tvm_expect_mp(ctx, t, (enum ferry_mp_state[]){ R, S, S, S }));
	ferry_guest_stats(t->g, &st);
	for (unsigned int i = 0; i < 4; i++)
		CHECK_EQ(ctx, st.vcpu[i].resets, 2);
	return TEST_PASS;
}

static enum test_result psci_calls(struct test_ctx *ctx)
{
	struct ferry_guest_config cfg;
	int ret = 0;
	struct tvm t;

	tvm_config(&cfg, 4, "random", 0);
	TRY(tvm_create(ctx, &t, &cfg));
	TRY(psci_cpu_on_off(ctx, &t));
	TRY(psci_suspend_wake(ctx, &t));
	TRY(psci_system(ctx, &t));
	CHECK_EQ(ctx, ferry_guest_psci(t.g, 4, FERRY_PSCI_CPU_ON, 1, &ret),
		 -EINVAL);
	CHECK_EQ(ctx, ferry_guest_psci(t.g, 0, FERRY_PSCI_FN_COUNT, 1, &ret),
		 -EINVAL);
	CHECK_OK(ctx, ferry_guest_start(t.g));
	CHECK_EQ(ctx, ferry_guest_psci(t.g, 0, FERRY_PSCI_CPU_ON, 1, &ret),
		 -EBUSY);
	tvm_destroy(&t);
	return TEST_PASS;
}

/* vCPU 0's program powers the others on; they all reach their limit. */
static enum test_result boot_powers_on(struct test_ctx *ctx)
{
	struct ferry_guest_config cfg;
	struct tvm t;

	tvm_config(&cfg, 4, "random", 2000);
	TRY(tvm_create(ctx, &t, &cfg));
	TRY(tvm_settle(ctx, &t));
	TRY(tvm_expect_mp(ctx, &t, (enum ferry_mp_state[]){ R, R, R, R }));
	TRY(tvm_expect_steps(ctx, &t, 2000));
	TRY(tvm_verify_ok(ctx, &t, NULL));
	tvm_destroy(&t);
	return TEST_PASS;
}

/* Put every vCPU's state and all of memory of `from` into `to`. */
static enum test_result migrate(struct test_ctx *ctx, struct tvm *from,
				struct tvm *to)
{
	uint8_t blobs[4][FERRY_GUEST_STATE_SIZE];

	TRY(save_all(ctx, from, blobs));
	for (unsigned int i = 0; i < 4; i++)
		CHECK_OK(ctx, ops()->load(to->g, i, blobs[i],
					  sizeof(blobs[i])));
	/* Loaded, then saved again: the same bytes. */
	TRY(same_blobs(ctx, to, blobs));
	memcpy(to->mem->regions[0].alias, from->mem->regions[0].alias,
	       TVM_MEM_SIZE);
	return TEST_PASS;
}

/* Boot; vCPU 0 powers the secondaries on; vCPU 2 powers itself off. */
static enum test_result seed_source(struct test_ctx *ctx, struct tvm *src,
				    struct ferry_guest_config *cfg)
{
	tvm_config(cfg, 4, "random,off=2@300", 1000);
	TRY(tvm_create(ctx, src, cfg));
	TRY(tvm_settle(ctx, src));
	TRY(tvm_expect_mp(ctx, src, (enum ferry_mp_state[]){ R, R, S, R }));
	return tvm_verify_ok(ctx, src, NULL);
}

/*
 * A fresh VM, its vCPUs created with other power-off bits than the
 * source's 0b1110, paused, loads the state: each vCPU has the power it
 * had, and keeps it as it runs.
 */
static enum test_result seed_destination(struct test_ctx *ctx,
					 struct tvm *src, struct tvm *dst,
					 struct ferry_guest_config *cfg)
{
	struct ferry_guest_stats st;

	cfg->boot_off_mask = 1ULL << 0 | 1ULL << 2 | 1ULL << 3;
	TRY(tvm_create(ctx, dst, cfg));
	TRY(tvm_expect_mp(ctx, dst, (enum ferry_mp_state[]){ S, R, S, S }));
	CHECK_OK(ctx, ops()->pause(dst->g));
	CHECK_OK(ctx, ferry_guest_start(dst->g));
	TRY(migrate(ctx, src, dst));
	TRY(tvm_expect_mp(ctx, dst, (enum ferry_mp_state[]){ R, R, S, R }));
	TRY(tvm_verify_ok(ctx, dst, NULL));
	TRY(tvm_run_to(ctx, dst, 3000));
	TRY(tvm_expect_mp(ctx, dst, (enum ferry_mp_state[]){ R, R, S, R }));
	ferry_guest_stats(dst->g, &st);
	CHECK_EQ(ctx, st.vcpu[2].steps, 300);
	CHECK_EQ(ctx, st.vcpu[3].steps, 3000);
	return tvm_verify_ok(ctx, dst, NULL);
}

/*
 * SYSTEM_RESET: back to the source's boot configuration (vCPU 0 on, the
 * rest off), not the destination's creation bits nor the pre-reset
 * states; vCPU 0's program then powers the rest on again.
 */
static enum test_result seed_reset(struct test_ctx *ctx, struct tvm *dst)
{
	CHECK_OK(ctx, ops()->reset(dst->g));
	TRY(tvm_expect_mp(ctx, dst, (enum ferry_mp_state[]){ R, S, S, S }));
	TRY(tvm_run_to(ctx, dst, 4000));
	TRY(tvm_expect_mp(ctx, dst, (enum ferry_mp_state[]){ R, R, R, R }));
	TRY(tvm_expect_steps(ctx, dst, 4000));
	return tvm_verify_ok(ctx, dst, NULL);
}

/* Seed 001 end to end: power state across a migration, then a reset. */
static enum test_result seed_scenario(struct test_ctx *ctx)
{
	struct ferry_guest_config cfg;
	struct tvm src, dst;

	TRY(seed_source(ctx, &src, &cfg));
	TRY(seed_destination(ctx, &src, &dst, &cfg));
	TRY(seed_reset(ctx, &dst));
	tvm_destroy(&src);
	tvm_destroy(&dst);
	return TEST_PASS;
}

/*
 * Scripted power events: off and back on, suspend and wake in either
 * order.  Each vCPU ends at its limit whatever the threads' timing.
 */
static enum test_result scripted_power(struct test_ctx *ctx)
{
	static const char *const specs[] = {
		"random,off=2@500,on=2@100,suspend=3@400,wake=3@1500",
		"kv,suspend=1@1500,wake=1@10,off=3@50,on=3@2900",
	};
	struct ferry_guest_config cfg;

	for (size_t s = 0; s < sizeof(specs) / sizeof(specs[0]); s++) {
		struct tvm t;

		tvm_config(&cfg, 4, specs[s], 3000);
		TRY(tvm_create(ctx, &t, &cfg));
		TRY(tvm_settle(ctx, &t));
		TRY(tvm_expect_mp(ctx, &t,
				  (enum ferry_mp_state[]){ R, R, R, R }));
		TRY(tvm_expect_steps(ctx, &t, 3000));
		TRY(tvm_verify_ok(ctx, &t, NULL));
		tvm_destroy(&t);
	}
	return TEST_PASS;
}

/* The guest's own SYSTEM_RESET and SYSTEM_OFF. */
static enum test_result guest_reset_off(struct test_ctx *ctx)
{
	struct ferry_guest_config cfg;
	struct ferry_guest_stats st;
	struct tvm t;

	tvm_config(&cfg, 3, "hotcold,reset=700", 2000);
	TRY(tvm_create(ctx, &t, &cfg));
	TRY(tvm_settle(ctx, &t));
	TRY(tvm_expect_mp(ctx, &t, (enum ferry_mp_state[]){ R, R, R }));
	TRY(tvm_expect_steps(ctx, &t, 2000));
	ferry_guest_stats(t.g, &st);
	for (unsigned int i = 0; i < 3; i++)
		CHECK_EQ(ctx, st.vcpu[i].resets, 1);
	TRY(tvm_verify_ok(ctx, &t, NULL));
	tvm_destroy(&t);

	tvm_config(&cfg, 3, "seqdirty,sysoff=500", 2000);
	TRY(tvm_create(ctx, &t, &cfg));
	TRY(tvm_settle(ctx, &t));
	TRY(tvm_expect_mp(ctx, &t, (enum ferry_mp_state[]){ S, S, S }));
	ferry_guest_stats(t.g, &st);
	CHECK_EQ(ctx, st.vcpu[0].steps, 500);
	TRY(tvm_verify_ok(ctx, &t, NULL));
	tvm_destroy(&t);
	return TEST_PASS;
}

/* ---- hostile blobs ------------------------------------------------------ */

static void put32(uint8_t *b, size_t at, uint32_t v)
{
	memcpy(b + at, &v, 4);
}

static void put64(uint8_t *b, size_t at, uint64_t v)
{
	memcpy(b + at, &v, 8);
}

static void fix_check(uint8_t *b)
{
	put64(b, 120, XXH3_64bits(b, 120));
}

struct bad_blob {
	const char *what;
	size_t at;		/* field offset */
	unsigned int width;	/* 4 or 8 */
	uint64_t value;
	int want;
};

static const struct bad_blob bad_blobs[] = {
	{ "magic", 0, 4, 0x12345678, -EBADMSG },
	{ "version", 4, 4, 2, -EBADMSG },
	{ "length", 8, 4, 127, -EBADMSG },
	{ "vCPU index", 12, 4, 0, -EINVAL },
	{ "machine id", 16, 8, 42, -EINVAL },
	{ "MP state", 24, 4, 3, -EINVAL },
	{ "MP state", 24, 4, 0xffffffff, -EINVAL },
	{ "flags", 28, 4, 0x80, -EINVAL },
	{ "on-pending while stopped", 28, 4, 2, -EINVAL },
	{ "position", 32, 4, 2, -EINVAL },
	{ "script cursor", 36, 4, 5, -EINVAL },
	{ "reserved", 44, 4, 1, -EBADMSG },
	{ "writes", 56, 8, 1ULL << 40, -EINVAL },
	{ "reads", 64, 8, 1ULL << 40, -EINVAL },
	{ "read errors", 72, 8, 3, -EINVAL },
	{ "first bad cell", 80, 8, 0, -EINVAL },
	{ "reserved", 112, 8, 1, -EBADMSG },
};

static enum test_result load_fails(struct test_ctx *ctx, struct tvm *t,
				   const uint8_t *b, size_t len, int want,
				   const char *what)
{
	uint8_t before[4][FERRY_GUEST_STATE_SIZE];
	int ret;

	TRY(save_all(ctx, t, before));
	ferry_error_clear();
	ret = ops()->load(t->g, 1, b, len);
	CHECK(ctx, ret == want, "%s: load = %d, want %d (%s)", what, ret, want,
	      ferry_error_msg());
	CHECK(ctx, ferry_error_msg()[0], "%s: no reason", what);
	return same_blobs(ctx, t, before);
}

static enum test_result blob_rejects(struct test_ctx *ctx)
{
	uint8_t good[FERRY_GUEST_STATE_SIZE + 8], b[sizeof(good)];
	struct ferry_guest_config cfg;
	struct tvm t;

	/* vCPU 1 stopped, 2 steps in, one scripted event (cursor <= 1). */
	tvm_config(&cfg, 4, "random,off=1@2", 0);
	TRY(tvm_create(ctx, &t, &cfg));
	CHECK_EQ(ctx, ops()->save(t.g, 1, good, sizeof(good)),
		 FERRY_GUEST_STATE_SIZE);
	CHECK_EQ(ctx, ops()->save(t.g, 1, b, FERRY_GUEST_STATE_SIZE - 1),
		 -ENOSPC);
	for (size_t len = 0; len < FERRY_GUEST_STATE_SIZE; len += 9)
		TRY(load_fails(ctx, &t, good, len, -EBADMSG, "truncated"));
	TRY(load_fails(ctx, &t, good, FERRY_GUEST_STATE_SIZE + 1, -EBADMSG,
		       "too long"));
	memcpy(b, good, sizeof(good));
	b[50] ^= 1;
	TRY(load_fails(ctx, &t, b, FERRY_GUEST_STATE_SIZE, -EBADMSG,
		       "checksum"));
	for (size_t i = 0; i < sizeof(bad_blobs) / sizeof(bad_blobs[0]); i++) {
		const struct bad_blob *bb = &bad_blobs[i];

		memcpy(b, good, sizeof(good));
		if (bb->width == 4)
			put32(b, bb->at, (uint32_t)bb->value);
		else
			put64(b, bb->at, bb->value);
		fix_check(b);
		TRY(load_fails(ctx, &t, b, FERRY_GUEST_STATE_SIZE, bb->want,
			       bb->what));
	}
	CHECK_OK(ctx, ops()->load(t.g, 1, good, FERRY_GUEST_STATE_SIZE));
	CHECK_OK(ctx, ferry_guest_start(t.g));
	CHECK_EQ(ctx, ops()->load(t.g, 1, good, FERRY_GUEST_STATE_SIZE),
		 -EBUSY);
	CHECK_EQ(ctx, ops()->save(t.g, 1, b, sizeof(b)), -EBUSY);
	tvm_destroy(&t);
	return TEST_PASS;
}

/* A blob from another kind of machine does not load. */
static enum test_result blob_other_machine(struct test_ctx *ctx)
{
	uint8_t blob[FERRY_GUEST_STATE_SIZE];
	struct ferry_guest_config cfg;
	struct tvm a, b;

	tvm_config(&cfg, 2, "random", 0);
	TRY(tvm_create(ctx, &a, &cfg));
	ferry_guest_config_set_workload(&cfg, "random,read=21");
	TRY(tvm_create(ctx, &b, &cfg));
	CHECK_EQ(ctx, ops()->save(a.g, 0, blob, sizeof(blob)), sizeof(blob));
	CHECK_EQ(ctx, ops()->load(b.g, 0, blob, sizeof(blob)), -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "different machine"), "reason: %s",
	      ferry_error_msg());
	/* The rate cap only says when, not what: the blob loads. */
	tvm_destroy(&b);
	ferry_guest_config_set_workload(&cfg, "random,rate=1M");
	TRY(tvm_create(ctx, &b, &cfg));
	CHECK_OK(ctx, ops()->load(b.g, 0, blob, sizeof(blob)));
	tvm_destroy(&a);
	tvm_destroy(&b);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "vcpu_ops_complete", ops_complete, 0, 0, 0, 0, 10 },
	{ "vcpu_mp_state", mp_state, B_SHMEM, 0, 0, 0, 10 },
	{ "vcpu_psci_calls", psci_calls, B_SHMEM, 0, 0, 0, 10 },
	{ "vcpu_boot_powers_on", boot_powers_on, B_ALL, 0, 0, 0, 20 },
	{ "vcpu_seed_scenario", seed_scenario, B_ALL, 0, 0, 0, 30 },
	{ "vcpu_scripted_power", scripted_power, B_ALL, 0, 0, 0, 30 },
	{ "vcpu_guest_reset_off", guest_reset_off, B_ALL, 0, 0, 0, 30 },
	{ "vcpu_blob_rejects", blob_rejects, B_SHMEM, 0, 0, 0, 10 },
	{ "vcpu_blob_other_machine", blob_other_machine, B_SHMEM, 0, 0, 0, 10 },
};

TEST_SUITE(vcpu, cases)
