// SPDX-License-Identifier: MIT
/*
 * The verifier can fail: a torn cell, a lost write and a duplicated write
 * are each found and named, and so is a damaged cell a vCPU reads.
 */
#include <stdlib.h>

#include "cell.h"
#include "guest_test.h"

/* 2 vCPUs over 256 cells: every cell written several times by step 2000. */
#define SPEC	"random,ws=1M"

static enum test_result ready(struct test_ctx *ctx, struct tvm *t,
			      uint64_t limit)
{
	struct ferry_guest_config cfg;

	tvm_config(&cfg, 2, SPEC, limit);
	TRY(tvm_create(ctx, t, &cfg));
	TRY(tvm_settle(ctx, t));
	return tvm_verify_ok(ctx, t, NULL);
}

/* Verification must fail with exactly this one offender. */
static enum test_result expect_one(struct test_ctx *ctx, struct tvm *t,
				   enum ferry_verify_kind kind, uint64_t cell,
				   uint64_t expected, uint64_t found)
{
	struct ferry_verify_report rep;
	const struct ferry_verify_bad *b = &rep.bad[0];

	CHECK_OK(ctx, ferry_guest_verify(t->g, &rep));
	tvm_dump_report(&rep);
	CHECK(ctx, !rep.ok, "verify passed a %s cell",
	      ferry_verify_kind_name(kind));
	CHECK_EQ(ctx, rep.nr_bad, 1);
	CHECK(ctx, b->kind == kind, "found %s, want %s",
	      ferry_verify_kind_name(b->kind), ferry_verify_kind_name(kind));
	CHECK_EQ(ctx, b->cell, cell);
	CHECK_EQ(ctx, b->expected, expected);
	CHECK_EQ(ctx, b->found, found);
	CHECK_EQ(ctx, rep.torn, kind == FERRY_VERIFY_TORN);
	if (kind == FERRY_VERIFY_LOST)
		CHECK_EQ(ctx, rep.lost, expected - found);
	if (kind == FERRY_VERIFY_DUPLICATED)
		CHECK_EQ(ctx, rep.duplicated, found - expected);
	return TEST_PASS;
}

/*
 * One flipped bit anywhere in the 4 KiB is a torn cell: in the payload,
 * the check, the version, the index.  Torn cells report the version
 * replay expects.
 */
static enum test_result catches_torn(struct test_ctx *ctx)
{
	static const size_t offsets[] = { 4095, 2000, 32, 0, 17, 29 };
	struct ferry_verify_report rep;
	struct tvm t;
	uint64_t cell = 200, beyond = 4000;

	TRY(ready(ctx, &t, 2000));
	for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
		uint8_t *p = tvm_cell_alias(&t, cell);

		p[offsets[i]] ^= 0x40;
		CHECK_OK(ctx, ferry_guest_verify(t.g, &rep));
		CHECK(ctx, !rep.ok && rep.torn == 1 && rep.nr_bad == 1,
		      "byte %zu flipped: torn %llu", offsets[i],
		      (unsigned long long)rep.torn);
		CHECK_EQ(ctx, rep.bad[0].kind, FERRY_VERIFY_TORN);
		CHECK_EQ(ctx, rep.bad[0].cell, cell);
		CHECK_EQ(ctx, rep.bad[0].vcpu, 1);
		CHECK_EQ(ctx, rep.bad[0].expected, tvm_cell_version(&t, cell));
		p[offsets[i]] ^= 0x40;
		TRY(tvm_verify_ok(ctx, &t, NULL));
	}
	/* A byte past the working set, where nothing is ever written. */
	tvm_cell_alias(&t, beyond)[100] = 1;
	TRY(expect_one(ctx, &t, FERRY_VERIFY_TORN, beyond, 0, 0));
	tvm_destroy(&t);
	return TEST_PASS;
}

/* Put back a cell as it was at step 1000: the writes since are lost. */
static enum test_result catches_lost(struct test_ctx *ctx)
{
	uint8_t *old = malloc(1UL << 20);
	uint64_t cell, was, now = 0;
	struct tvm t;

	CHECK(ctx, old, "malloc");
	TRY(ready(ctx, &t, 1000));
	memcpy(old, tvm_cell_alias(&t, 0), 1UL << 20);
	TRY(tvm_run_to(ctx, &t, 3000));
	for (cell = 0; cell < 256; cell++) {
		memcpy(&was, old + cell * FERRY_CELL_SIZE + 8, 8);
		now = tvm_cell_version(&t, cell);
		if (now > was && was > 0)
			break;
	}
	CHECK(ctx, cell < 256, "no cell was rewritten");
	memcpy(tvm_cell_alias(&t, cell), old + cell * FERRY_CELL_SIZE,
	       FERRY_CELL_SIZE);
	TRY(expect_one(ctx, &t, FERRY_VERIFY_LOST, cell, now, was));
	/* A cell that vanished (a hole) lost every write. */
	memset(tvm_cell_alias(&t, cell), 0, FERRY_CELL_SIZE);
	TRY(expect_one(ctx, &t, FERRY_VERIFY_LOST, cell, now, 0));
	free(old);
	tvm_destroy(&t);
	return TEST_PASS;
}

/*
 * Apply a cell's next write twice: once by hand, exactly as the vCPU
 * would write it, and once more when the vCPU gets there.
 */
static enum test_result catches_duplicate(struct test_ctx *ctx)
{
	uint8_t *buf = aligned_alloc(64, FERRY_CELL_SIZE);
	uint64_t cell = 77, version;
	struct tvm t;

	CHECK(ctx, buf, "malloc");
	TRY(ready(ctx, &t, 2000));
	version = tvm_cell_version(&t, cell);
	CHECK(ctx, version > 0, "cell %llu never written",
	      (unsigned long long)cell);
	cell_build(buf, cell, version + 1, 0);
	memcpy(tvm_cell_alias(&t, cell), buf, FERRY_CELL_SIZE);
	TRY(expect_one(ctx, &t, FERRY_VERIFY_DUPLICATED, cell, version,
		       version + 1));
	free(buf);
	tvm_destroy(&t);
	return TEST_PASS;
}

/*
 * A destination that resumes from older vCPU state than its memory holds
 * would make the writes in between again: every one is flagged.
 */
static enum test_result catches_rewind(struct test_ctx *ctx)
{
	const struct ferry_vcpu_ops *ops = ferry_guest_vcpu_ops();
	uint8_t blob[FERRY_GUEST_STATE_SIZE];
	struct ferry_guest_stats before, after;
	struct ferry_verify_report rep;
	struct tvm t;

	TRY(ready(ctx, &t, 1000));
	ferry_guest_stats(t.g, &before);
	CHECK_EQ(ctx, ops->save(t.g, 0, blob, sizeof(blob)), sizeof(blob));
	TRY(tvm_run_to(ctx, &t, 1500));
	ferry_guest_stats(t.g, &after);
	CHECK_OK(ctx, ops->load(t.g, 0, blob, sizeof(blob)));
	CHECK_OK(ctx, ferry_guest_verify(t.g, &rep));
	CHECK(ctx, !rep.ok && rep.torn == 0 && rep.lost == 0, "verdict");
	CHECK_EQ(ctx, rep.duplicated,
		 after.vcpu[0].writes - before.vcpu[0].writes);
	CHECK(ctx, rep.nr_bad > 0, "no cell named");
	for (unsigned int i = 0; i < rep.nr_bad; i++)
		CHECK(ctx, rep.bad[i].kind == FERRY_VERIFY_DUPLICATED &&
		      rep.bad[i].vcpu == 0 && rep.bad[i].cell < 128,
		      "bad[%u]: %s cell %llu of vCPU %d", i,
		      ferry_verify_kind_name(rep.bad[i].kind),
		      (unsigned long long)rep.bad[i].cell, rep.bad[i].vcpu);
	tvm_destroy(&t);
	return TEST_PASS;
}

/* Twenty damaged cells: all counted, the first sixteen named. */
static enum test_result report_caps(struct test_ctx *ctx)
{
	struct ferry_verify_report rep;
	struct tvm t;

	TRY(ready(ctx, &t, 2000));
	for (uint64_t cell = 0; cell < 20; cell++)
		tvm_cell_alias(&t, cell * 10)[3000] ^= 1;
	CHECK_OK(ctx, ferry_guest_verify(t.g, &rep));
	CHECK_EQ(ctx, rep.torn, 20);
	CHECK_EQ(ctx, rep.nr_bad, FERRY_VERIFY_MAX_BAD);
	for (unsigned int i = 0; i < rep.nr_bad; i++)
		CHECK_EQ(ctx, rep.bad[i].cell, i * 10);
	tvm_destroy(&t);
	return TEST_PASS;
}

/*
 * The workload checks what it reads: a damaged header is noticed by the
 * first access (a read, or the read half of a rewrite), counted in the
 * reader's registers, and fails the verdict even after a later write has
 * repaired the cell.
 */
static enum test_result reader_checks(struct test_ctx *ctx)
{
	struct ferry_verify_report rep;
	struct ferry_guest_stats st;
	uint64_t cell = 5;
	struct tvm t;

	TRY(ready(ctx, &t, 1000));
	tvm_cell_alias(&t, cell)[28] ^= 0xff;	/* the magic */
	TRY(tvm_run_to(ctx, &t, 3000));
	ferry_guest_stats(t.g, &st);
	CHECK(ctx, st.vcpu[0].read_errors >= 1, "the damage went unseen");
	CHECK_EQ(ctx, st.vcpu[1].read_errors, 0);
	CHECK_OK(ctx, ferry_guest_verify(t.g, &rep));
	CHECK(ctx, !rep.ok, "verify ignored a read error");
	CHECK_EQ(ctx, rep.read_errors, st.vcpu[0].read_errors);
	CHECK_EQ(ctx, rep.vcpu[0].first_bad_read, cell);
	tvm_destroy(&t);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "verify_catches_torn", catches_torn, B_ALL, 0, 0, 0, 20 },
	{ "verify_catches_lost", catches_lost, B_ALL, 0, 0, 0, 20 },
	{ "verify_catches_duplicate", catches_duplicate, B_ALL, 0, 0, 0, 20 },
	{ "verify_catches_rewind", catches_rewind, B_ALL, 0, 0, 0, 20 },
	{ "verify_report_caps", report_caps, B_SHMEM, 0, 0, 0, 20 },
	{ "verify_reader_checks", reader_checks, B_ALL, 0, 0, 0, 20 },
};

TEST_SUITE(verify, cases)
