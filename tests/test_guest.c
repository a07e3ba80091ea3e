// SPDX-License-Identifier: MIT
/*
 * The workload VM: every workload runs and verifies, runs replay to the
 * same memory, pause stops every vCPU, the rate cap holds, the machine
 * description survives its bytes.
 */
#include <time.h>
#include <xxhash.h>

#include "guest_test.h"

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Run a workload on 2 vCPUs for a while; it must write, read and verify. */
static enum test_result run_workload(struct test_ctx *ctx, const char *spec,
				     bool writes)
{
	struct ferry_guest_config cfg;
	struct ferry_guest_stats st;
	struct tvm t;

	tvm_config(&cfg, 2, spec, 0);
	TRY(tvm_create(ctx, &t, &cfg));
	CHECK_OK(ctx, ferry_guest_start(t.g));
	/*
	 * 300 ms, and then as long as a vCPU has not run yet (vCPU 0 powers
	 * the other on, which a busy machine may delay), up to 10 s.
	 */
	sleep_ms(300);
	for (int i = 0; i < 1000; i++) {
		ferry_guest_stats(t.g, &st);
		if (st.vcpu[0].steps && st.vcpu[1].steps &&
		    (!writes || (st.vcpu[0].reads && st.vcpu[1].reads)))
			break;
		sleep_ms(10);
	}
	CHECK_OK(ctx, ferry_guest_pause(t.g));
	ferry_guest_stats(t.g, &st);
	for (unsigned int i = 0; i < 2; i++)
		CHECK(ctx, st.vcpu[i].steps > 0, "vCPU %u made no step", i);
	if (writes) {
		CHECK(ctx, st.vcpu[0].writes && st.vcpu[1].writes,
		      "a vCPU wrote nothing");
		CHECK(ctx, st.vcpu[0].reads && st.vcpu[1].reads,
		      "a vCPU read nothing");
	} else {
		CHECK_EQ(ctx, st.writes + st.reads, 0);
	}
	CHECK_EQ(ctx, st.read_errors, 0);
	CHECK_EQ(ctx, st.bytes_dirtied, st.writes * FERRY_CELL_SIZE);
	TRY(tvm_verify_ok(ctx, &t, NULL));
	tvm_destroy(&t);
	return TEST_PASS;
}

/* A small working set so the walk wraps: replay's closed form is used. */
static enum test_result workload_seqdirty(struct test_ctx *ctx)
{
	return run_workload(ctx, "seqdirty,ws=1M", true);
}

static enum test_result workload_random(struct test_ctx *ctx)
{
	return run_workload(ctx, "random", true);
}

static enum test_result workload_hotcold(struct test_ctx *ctx)
{
	return run_workload(ctx, "hotcold,hot=5,hotw=95", true);
}

static enum test_result workload_kv(struct test_ctx *ctx)
{
	return run_workload(ctx, "kv,read=70", true);
}

static enum test_result workload_idle(struct test_ctx *ctx)
{
	return run_workload(ctx, "idle", false);
}

/* Two machines, same seed, same step counts: same memory, bit for bit. */
static enum test_result replay_digest(struct test_ctx *ctx)
{
	struct ferry_guest_config cfg;
	struct tvm a, b, c;
	uint64_t da, db, dc;

	tvm_config(&cfg, 3, "kv,read=50", 3000);
	TRY(tvm_create(ctx, &a, &cfg));
	TRY(tvm_create(ctx, &b, &cfg));
	cfg.seed++;
	TRY(tvm_create(ctx, &c, &cfg));
	/* b gets there in two legs, with a pause between them. */
	CHECK_OK(ctx, ferry_guest_set_step_limit(b.g, 1234));
	TRY(tvm_settle(ctx, &a));
	TRY(tvm_settle(ctx, &b));
	TRY(tvm_run_to(ctx, &b, 3000));
	TRY(tvm_settle(ctx, &c));
	CHECK_OK(ctx, ferry_guest_digest(a.g, &da));
	CHECK_OK(ctx, ferry_guest_digest(b.g, &db));
	CHECK_OK(ctx, ferry_guest_digest(c.g, &dc));
	CHECK(ctx, da == db, "same seed and steps, digests %016llx != %016llx",
	      (unsigned long long)da, (unsigned long long)db);
	CHECK(ctx, da != dc, "another seed gave the same digest");
	TRY(tvm_verify_ok(ctx, &a, NULL));
	TRY(tvm_verify_ok(ctx, &b, NULL));
	tvm_destroy(&a);
	tvm_destroy(&b);
	tvm_destroy(&c);
	return TEST_PASS;
}

/* The digest is the memory's: a single changed byte changes it. */
static enum test_result digest_sees_memory(struct test_ctx *ctx)
{
	struct ferry_guest_config cfg;
	struct ferry_region *r;
	uint64_t before, after;
	struct tvm t;

	tvm_config(&cfg, 1, "idle", 0);
	TRY(tvm_create(ctx, &t, &cfg));
	CHECK_OK(ctx, ferry_guest_digest(t.g, &before));
	CHECK_EQ(ctx, before, XXH3_64bits(t.mem->regions[0].alias,
					  TVM_MEM_SIZE));
	r = &t.mem->regions[0];
	r->alias[r->size - 1] = 1;
	CHECK_OK(ctx, ferry_guest_digest(t.g, &after));
	CHECK(ctx, before != after, "digest blind to the last byte");
	CHECK_EQ(ctx, after, XXH3_64bits(r->alias, TVM_MEM_SIZE));
	tvm_destroy(&t);
	return TEST_PASS;
}

static uint64_t total_steps(struct ferry_guest *g)
{
	struct ferry_guest_stats st;

	ferry_guest_stats(g, &st);
	return st.steps;
}

/* Paused means no vCPU takes a step; pauses nest. */
static enum test_result pause_stops(struct test_ctx *ctx)
{
	struct ferry_guest_config cfg;
	uint64_t steps;
	struct tvm t;

	tvm_config(&cfg, 4, "random", 0);
	TRY(tvm_create(ctx, &t, &cfg));
	CHECK_OK(ctx, ferry_guest_start(t.g));
	sleep_ms(50);
	CHECK_OK(ctx, ferry_guest_pause(t.g));
	CHECK_OK(ctx, ferry_guest_pause(t.g));
	steps = total_steps(t.g);
	CHECK_OK(ctx, ferry_guest_resume(t.g));
	sleep_ms(50);
	CHECK_EQ(ctx, total_steps(t.g), steps);
	CHECK_OK(ctx, ferry_guest_resume(t.g));
	CHECK_EQ(ctx, ferry_guest_resume(t.g), -EINVAL);
	sleep_ms(50);
	CHECK(ctx, total_steps(t.g) > steps, "resume did not resume");
	CHECK_EQ(ctx, ferry_guest_verify(t.g, &(struct ferry_verify_report){0}),
		 -EBUSY);
	CHECK_OK(ctx, ferry_guest_pause(t.g));
	TRY(tvm_verify_ok(ctx, &t, NULL));
	/* Stopped and started again, it carries on from its registers. */
	CHECK_OK(ctx, ferry_guest_stop(t.g));
	steps = total_steps(t.g);
	CHECK_OK(ctx, ferry_guest_resume(t.g));
	CHECK_OK(ctx, ferry_guest_start(t.g));
	sleep_ms(30);
	CHECK_OK(ctx, ferry_guest_pause(t.g));
	CHECK(ctx, total_steps(t.g) > steps, "no steps after a restart");
	TRY(tvm_verify_ok(ctx, &t, NULL));
	tvm_destroy(&t);
	return TEST_PASS;
}

/*
 * The cap is an upper bound on what is written: a slow machine writes
 * less, never more.  10 ms of burst per vCPU is allowed on top.
 */
static enum test_result rate_cap(struct test_ctx *ctx)
{
	const uint64_t rate = 8 << 20;
	struct ferry_guest_config cfg;
	struct ferry_guest_stats st;
	struct timespec t0, t1;
	struct tvm t;
	double secs;

	tvm_config(&cfg, 2, "random,rate=8M,read=0", 0);
	TRY(tvm_create(ctx, &t, &cfg));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK_OK(ctx, ferry_guest_start(t.g));
	sleep_ms(500);
	CHECK_OK(ctx, ferry_guest_pause(t.g));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - t0.tv_sec) +
	       (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	ferry_guest_stats(t.g, &st);
	CHECK(ctx, st.bytes_dirtied > 0, "nothing written");
	CHECK(ctx, (double)st.bytes_dirtied <= rate * secs + rate / 50.0 +
	      2 * FERRY_CELL_SIZE, "%llu bytes in %.2f s with an 8 MiB/s cap",
	      (unsigned long long)st.bytes_dirtied, secs);
	TRY(tvm_verify_ok(ctx, &t, NULL));
	tvm_destroy(&t);
	return TEST_PASS;
}

static enum test_result decode_fails(struct test_ctx *ctx, const uint8_t *b,
				     size_t len, int want)
{
	struct ferry_guest_config out;

	memset(&out, 0x5a, sizeof(out));
	CHECK_EQ(ctx, ferry_guest_config_decode(b, len, &out), want);
	CHECK(ctx, ferry_error_msg()[0], "no reason for a bad config");
	CHECK_EQ(ctx, out.nr_vcpus, 0x5a5a5a5a);
	return TEST_PASS;
}

/* Damage byte `at`, fix the checksum up, expect `want`. */
static enum test_result decode_patched(struct test_ctx *ctx,
				       const uint8_t *good, size_t len,
				       size_t at, uint8_t value, int want)
{
	uint8_t b[512];
	uint64_t check;

	memcpy(b, good, len);
	b[at] = value;
	check = XXH3_64bits(b, len - 8);
	memcpy(b + len - 8, &check, 8);
	return decode_fails(ctx, b, len, want);
}

static enum test_result config_bytes(struct test_ctx *ctx)
{
	struct ferry_guest_config cfg, back;
	uint8_t b[512];
	ssize_t len;

	tvm_config(&cfg, 3, "hotcold,hot=20,off=2@100,on=2@300", 5000);
	cfg.mem_size = TVM_MEM_SIZE;
	len = ferry_guest_config_encode(&cfg, NULL, 0);
	CHECK(ctx, len > 0 && len < (ssize_t)sizeof(b), "size %zd", len);
	CHECK_EQ(ctx, ferry_guest_config_encode(&cfg, b, (size_t)len - 1),
		 -ENOSPC);
	CHECK_EQ(ctx, ferry_guest_config_encode(&cfg, b, sizeof(b)), len);
	CHECK_OK(ctx, ferry_guest_config_decode(b, (size_t)len, &back));
	CHECK_EQ(ctx, back.nr_vcpus, 3);
	CHECK_EQ(ctx, back.seed, cfg.seed);
	CHECK_EQ(ctx, back.boot_off_mask, 6);	/* bits past 2: dropped */
	CHECK_EQ(ctx, back.step_limit, 5000);
	CHECK_EQ(ctx, back.mem_size, TVM_MEM_SIZE);
	CHECK(ctx, !strcmp(back.workload, cfg.workload), "spec changed");
	for (size_t cut = 0; cut < (size_t)len; cut += 7)
		TRY(decode_fails(ctx, b, cut, -EBADMSG));
	TRY(decode_fails(ctx, b, (size_t)len + 1, -EBADMSG));
	TRY(decode_patched(ctx, b, (size_t)len, 0, 'X', -EBADMSG));
	TRY(decode_patched(ctx, b, (size_t)len, 4, 2, -EBADMSG)); /* version */
	TRY(decode_patched(ctx, b, (size_t)len, 6, 200, -EBADMSG)); /* L */
	TRY(decode_patched(ctx, b, (size_t)len, 8, 0, -EINVAL));  /* 0 vCPUs */
	TRY(decode_patched(ctx, b, (size_t)len, 8, 99, -EINVAL)); /* 99 */
	TRY(decode_patched(ctx, b, (size_t)len, 24, 7, -EINVAL)); /* all off */
	TRY(decode_patched(ctx, b, (size_t)len, 24, 0xff, -EINVAL));
	TRY(decode_patched(ctx, b, (size_t)len, 40, 1, -EINVAL)); /* 4K */
	TRY(decode_patched(ctx, b, (size_t)len, 48, 'X', -EINVAL)); /* kind */
	TRY(decode_patched(ctx, b, (size_t)len, 49, 0, -EINVAL)); /* NUL */
	TRY(decode_patched(ctx, b, (size_t)len, 50, ' ', -EINVAL));
	b[20] ^= 1;		/* the seed, without fixing the checksum */
	TRY(decode_fails(ctx, b, (size_t)len, -EBADMSG));
	return TEST_PASS;
}

static enum test_result create_fails(struct test_ctx *ctx,
				     struct ferry_mem *mem, unsigned int nr,
				     const char *spec)
{
	struct ferry_guest_config cfg;
	struct ferry_guest *g = NULL;

	tvm_config(&cfg, nr, spec, 0);
	ferry_error_clear();
	CHECK(ctx, ferry_guest_create(mem, &cfg, &g) == -EINVAL,
	      "spec '%s' on %u vCPUs was accepted", spec, nr);
	CHECK(ctx, ferry_error_msg()[0], "no reason given for '%s'", spec);
	CHECK(ctx, g == NULL, "a VM came out of a failure");
	return TEST_PASS;
}

static enum test_result bad_specs(struct test_ctx *ctx)
{
	static const char *const specs[] = {
		"", "nosuch", "random,", "random,ws=1G", "random,ws=4K",
		"random,foo=1", "random,read=101", "random,ws", "random,ws=x",
		"random,off=9@10", "random,on=0@5", "random,off=1",
		"hotcold,hot=0",
		"random,reset=-1", "random,wake=1@", "idle,sysoff=1@2",
	};
	struct ferry_guest_config cfg;
	struct ferry_guest *g = NULL;
	struct ferry_mem *mem;

	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, ctx->backing, TVM_MEM_SIZE,
					   NULL));
	for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++)
		TRY(create_fails(ctx, mem, 2, specs[i]));
	TRY(create_fails(ctx, mem, 0, "random"));
	TRY(create_fails(ctx, mem, 65, "random"));
	tvm_config(&cfg, 2, "random,ws=8M,rate=1G/s,read=0,off=1@5", 0);
	cfg.mem_size = TVM_MEM_SIZE * 2;
	CHECK_EQ(ctx, ferry_guest_create(mem, &cfg, &g), -EINVAL);
	cfg.mem_size = 0;
	cfg.boot_off_mask = 3;
	CHECK_EQ(ctx, ferry_guest_create(mem, &cfg, &g), -EINVAL);
	cfg.boot_off_mask = ~1ULL;
	CHECK_OK(ctx, ferry_guest_create(mem, &cfg, &g));
	ferry_guest_get_config(g, &cfg);
	CHECK_EQ(ctx, cfg.mem_size, TVM_MEM_SIZE);
	ferry_guest_destroy(g);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "guest_workload_seqdirty", workload_seqdirty, B_ALL, 0, 0, 0, 20 },
	{ "guest_workload_random", workload_random, B_ALL, 0, 0, 0, 20 },
	{ "guest_workload_hotcold", workload_hotcold, B_ALL, 0, 0, 0, 20 },
	{ "guest_workload_kv", workload_kv, B_ALL, 0, 0, 0, 20 },
	{ "guest_workload_idle", workload_idle, B_ALL, 0, 0, 0, 20 },
	{ "guest_replay_digest", replay_digest, B_ALL, 0, 0, 0, 30 },
	{ "guest_digest_sees_memory", digest_sees_memory, B_ALL, 0, 0, 0, 20 },
	{ "guest_pause_stops", pause_stops, B_ALL, 0, 0, 0, 20 },
	{ "guest_rate_cap", rate_cap, B_SHMEM, 0, 0, 0, 20 },
	{ "guest_config_bytes", config_bytes, 0, 0, 0, 0, 10 },
	{ "guest_bad_specs", bad_specs, B_SHMEM, 0, 0, 0, 10 },
};

TEST_SUITE(guest, cases)
