// SPDX-License-Identifier: MIT
/*
 * The KVM VM on this machine's KVM: the guest boots, runs and is
 * verified; power calls give real MP states; seed 001's scenario;
 * state blobs (a damaged one is refused and changes nothing); dirty
 * tracking is exact.  Each case skips with KVM's reason where /dev/kvm
 * is missing or lacks what the VM needs; scripts/kvm-nested runs them
 * under nested virtualization on machines without KVM.
 */
#include <stdlib.h>

#include "ferry/dirty.h"
#include "kvm_blob.h"
#include "kvm_test.h"

#define R	FERRY_MP_RUNNABLE
#define S	FERRY_MP_STOPPED
#define Z	FERRY_MP_SUSPENDED

static const struct ferry_vcpu_ops *ops(void)
{
	return ferry_kvm_vcpu_ops();
}

/* Boot, run to a limit, verify: the guest writes and reads, BSP on. */
static enum test_result boot(struct test_ctx *ctx)
{
	struct ferry_kvm_vm *kv;
	struct ferry_guest_stats st;

	KVM_OR_SKIP(ctx);
	TRY(kvt_create(ctx, &kv, 2, "random,read=30", 0, KVM_TEST_MEM));
	CHECK_OK(ctx, ferry_vcpu_ops_check(ops()));
	TRY(kvt_run_to(ctx, kv->kvm, 1500));
	TRY(kvt_check(ctx, kv->kvm, (enum ferry_mp_state[]){ R, R }, 2));
	ferry_kvm_stats(kv->kvm, &st);
	CHECK_EQ(ctx, st.vcpu[0].steps, 1500);
	CHECK_EQ(ctx, st.vcpu[1].steps, 1500);
	CHECK(ctx, st.reads > 0 && st.writes > 0, "%llu reads, %llu writes",
	      (unsigned long long)st.reads, (unsigned long long)st.writes);
	/* Run on from where it settled. */
	TRY(kvt_run_to(ctx, kv->kvm, 2500));
	TRY(kvt_check(ctx, kv->kvm, (enum ferry_mp_state[]){ R, R }, 2));
	ferry_kvm_vm_destroy(kv);
	return TEST_PASS;
}

/*
 * The guest's power calls are KVM MP states: off (INIT_RECEIVED),
 * suspended (HALTED) and woken; a powered-off vCPU is off in KVM; the
 * kv workload's key tables work in the guest.
 */
static enum test_result power(struct test_ctx *ctx)
{
	struct ferry_kvm_vm *kv;
	struct ferry_guest_stats st;

	KVM_OR_SKIP(ctx);
	TRY(kvt_create(ctx, &kv, 4, "kv,off=2@300,suspend=3@200", 0,
		       KVM_TEST_MEM));
	TRY(kvt_run_to(ctx, kv->kvm, 1000));
	TRY(kvt_check(ctx, kv->kvm, (enum ferry_mp_state[]){ R, R, S, Z },
		      4));
	ferry_kvm_stats(kv->kvm, &st);
	CHECK_EQ(ctx, st.vcpu[2].steps, 300);
	CHECK_EQ(ctx, st.vcpu[3].steps, 200);
	CHECK_EQ(ctx, st.vcpu[1].steps, 1000);
	ferry_kvm_vm_destroy(kv);
	/* A wake-up ends a suspend; SYSTEM_RESET from the guest. */
	TRY(kvt_create(ctx, &kv, 3, "random,suspend=1@100,wake=1@400,"
		       "reset=600", 0, KVM_TEST_MEM));
	TRY(kvt_run_to(ctx, kv->kvm, 1000));
	TRY(kvt_check(ctx, kv->kvm, (enum ferry_mp_state[]){ R, R, R }, 3));
	ferry_kvm_stats(kv->kvm, &st);
	CHECK_EQ(ctx, st.vcpu[0].resets, 1);
	CHECK_EQ(ctx, st.vcpu[1].steps, 1000);
	ferry_kvm_vm_destroy(kv);
	return TEST_PASS;
}

/* ---- dirty tracking ----------------------------------------------------- */

/* The version in each RAM cell's header, through the alias. */
static void cell_versions(const struct ferry_kvm_vm *kv, uint64_t *v,
			  uint64_t nr)
{
	const struct ferry_region *r = &kv->mem->regions[1];

	for (uint64_t c = 0; c < nr; c++)
		memcpy(&v[c], r->alias + c * 4096 + 8, 8);
}

/*
 * KVM's dirty log behind ferry's tracker is exact: the RAM pages it
 * reports are those whose cells the guest rewrote, and those the VMM
 * wrote itself (ferry_kvm_vm_write), no more, no fewer, over three
 * rounds: whole collects, and a peek then a collect in ranges.
 */
/* How a round reads the log: as pre-copy's rounds and switchover do. */
enum collect_how {
	COLLECT_WHOLE,		/* ferry_dirty_collect */
	COLLECT_PEEK_RANGES,	/* a peek, then the region in two ranges */
};

/*
 * The round's pages into map.  Peek first: it must report what the
 * ranges then collect, and leave it to them; after them a peek finds
 * nothing new (the VM is paused).
 */
static enum test_result collect_round(struct test_ctx *ctx,
				      struct ferry_dirty *d, uint64_t pages,
				      uint64_t *map, enum collect_how how,
				      ssize_t *got)
{
	size_t words = pages / 64 + 1;
	uint64_t *ranges = calloc(words, 8);
	ssize_t a, b;

	CHECK(ctx, ranges, "out of memory");
	if (how == COLLECT_WHOLE) {
		*got = ferry_dirty_collect(d, 1, map);
		CHECK_OK(ctx, *got);
		free(ranges);
		return TEST_PASS;
	}
	*got = ferry_dirty_peek(d, 1, map);
	CHECK_OK(ctx, *got);
	a = ferry_dirty_collect_range(d, 1, 0, pages / 3, ranges);
	CHECK_OK(ctx, a);
	b = ferry_dirty_collect_range(d, 1, pages / 3, pages - pages / 3,
				      ranges);
	CHECK_OK(ctx, b);
	CHECK(ctx, !memcmp(map, ranges, words * 8) && a + b == *got,
	      "the ranges collected %zd pages, the peek saw %zd", a + b, *got);
	memset(ranges, 0, words * 8);
	CHECK_EQ(ctx, ferry_dirty_peek(d, 1, ranges), 0);
	free(ranges);
	return TEST_PASS;
}

static enum test_result dirty_round(struct test_ctx *ctx,
				    struct ferry_kvm_vm *kv,
				    struct ferry_dirty *d, uint64_t steps,
				    uint64_t vmm_cell, enum collect_how how)
{
	const struct ferry_region *r = &kv->mem->regions[1];
	uint64_t nr = r->size / 4096, per = r->page_size / 4096;
	uint64_t *before = calloc(nr, 8), *after = calloc(nr, 8);
	uint64_t *map = calloc(r->nr_pages / 64 + 1, 8);
	uint8_t zeroes[4096] = { 0 };
	ssize_t got = 0, want = 0;

	CHECK(ctx, before && after && map, "out of memory");
	cell_versions(kv, before, nr);
	TRY(kvt_run_to(ctx, kv->kvm, steps));
	CHECK_OK(ctx, ferry_kvm_vm_write(kv->kvm, r->guest_base +
					 vmm_cell * 4096, zeroes, 4096));
	cell_versions(kv, after, nr);
	TRY(collect_round(ctx, d, r->nr_pages, map, how, &got));
	for (uint64_t p = 0; p < r->nr_pages; p++) {
		bool written = false, seen = map[p / 64] >> (p % 64) & 1;

		for (uint64_t c = p * per; c < (p + 1) * per; c++)
			written |= before[c] != after[c] || c == vmm_cell;
		want += written;
		CHECK(ctx, written == seen, "page %llu: %s but %s",
		      (unsigned long long)p, written ? "written" : "untouched",
		      seen ? "reported" : "not reported");
	}
	CHECK_EQ(ctx, got, want);
	CHECK(ctx, want > 1, "the guest wrote nothing");
	free(before);
	free(after);
	free(map);
	return TEST_PASS;
}

static enum test_result dirty_exact(struct test_ctx *ctx)
{
	struct ferry_kvm_vm *kv;
	struct ferry_dirty *d;

	KVM_OR_SKIP(ctx);
	/* ws=8M: the guest writes the first half; the VMM past it. */
	TRY(kvt_create(ctx, &kv, 2, "random,ws=8M,read=30", 0, KVM_TEST_MEM));
	TRY(kvt_run_to(ctx, kv->kvm, 300));
	CHECK_OK(ctx, ferry_dirty_start(kv->mem, &d));
	TRY(dirty_round(ctx, kv, d, 600, 3000, COLLECT_WHOLE));
	TRY(dirty_round(ctx, kv, d, 900, 3500, COLLECT_PEEK_RANGES));
	TRY(dirty_round(ctx, kv, d, 1200, 3600, COLLECT_WHOLE));
	ferry_dirty_stop(d);
	TRY(kvt_check(ctx, kv->kvm, (enum ferry_mp_state[]){ R, R }, 2));
	ferry_kvm_vm_destroy(kv);
	return TEST_PASS;
}

/* ---- damaged state ------------------------------------------------------ */

/* What must not change: registers, segments, power, XSAVE, flags. */
static bool same_state(const struct kb_state *a, const struct kb_state *b)
{
	return !memcmp(&a->regs, &b->regs, sizeof(a->regs)) &&
	       !memcmp(&a->sregs2, &b->sregs2, sizeof(a->sregs2)) &&
	       !memcmp(&a->sregs, &b->sregs, sizeof(a->sregs)) &&
	       a->mp_state == b->mp_state && a->flags == b->flags &&
	       a->xsave_len == b->xsave_len &&
	       !memcmp(a->xsave, b->xsave, a->xsave_len) &&
	       !memcmp(&a->lapic, &b->lapic, sizeof(a->lapic));
}

static enum test_result unchanged(struct test_ctx *ctx, struct ferry_kvm *k,
				  unsigned int vcpu, const struct kb_state *was,
				  uint8_t *buf, size_t cap)
{
	struct kb_state *now = malloc(sizeof(*now));
	ssize_t n = ops()->save(k, vcpu, buf, cap);

	CHECK(ctx, now && n > 0, "save: %s", ferry_error_msg());
	CHECK_OK(ctx, kb_decode(buf, (size_t)n, now));
	CHECK(ctx, same_state(was, now), "a refused load changed vCPU %u",
	      vcpu);
	free(now);
	return TEST_PASS;
}

/*
 * A damaged blob (cut short, a byte flipped, a field out of range,
 * another vCPU's) is refused before anything changes; one that passes
 * every check but that KVM refuses half-way (long mode without paging)
 * is rolled back.  The VM then runs on and verifies.
 */
static enum test_result damaged(struct test_ctx *ctx)
{
	struct ferry_kvm_vm *kv;
	struct kb_state *good = malloc(sizeof(*good));
	struct kb_state *bad = malloc(sizeof(*bad));
	size_t cap;
	uint8_t *b0, *b1, *scratch;
	ssize_t n0, n1, n;

	KVM_OR_SKIP(ctx);
	TRY(kvt_create(ctx, &kv, 2, "random,read=30", 0, KVM_TEST_MEM));
	TRY(kvt_run_to(ctx, kv->kvm, 500));
	cap = ops()->state_size(kv->kvm);
	b0 = malloc(cap);
	b1 = malloc(cap);
	scratch = malloc(cap);
	CHECK(ctx, good && bad && b0 && b1 && scratch, "out of memory");
	n0 = ops()->save(kv->kvm, 0, b0, cap);
	n1 = ops()->save(kv->kvm, 1, b1, cap);
	CHECK(ctx, n0 > 0 && n1 > 0, "save: %s", ferry_error_msg());
	CHECK_OK(ctx, kb_decode(b0, (size_t)n0, good));
	CHECK_EQ(ctx, ops()->load(kv->kvm, 0, b0, (size_t)n0 - 9), -EBADMSG);
	memcpy(scratch, b0, (size_t)n0);
	scratch[n0 / 2] ^= 0x40;
	CHECK_EQ(ctx, ops()->load(kv->kvm, 0, scratch, (size_t)n0), -EBADMSG);
	CHECK_EQ(ctx, ops()->load(kv->kvm, 0, b1, (size_t)n1), -EINVAL);
	*bad = *good;
	bad->mp_state = 9;
	n = kb_encode(bad, scratch, cap);
	CHECK_EQ(ctx, ops()->load(kv->kvm, 0, scratch, (size_t)n), -EINVAL);
	TRY(unchanged(ctx, kv->kvm, 0, good, scratch, cap));
	/* In range field by field, refused by KVM: rolled back. */
	*bad = *good;
	bad->sregs2.cr0 &= ~(1ULL << 31);
	bad->sregs.cr0 &= ~(1ULL << 31);
	bad->regs.rax ^= 0x5a5a;
	n = kb_encode(bad, scratch, cap);
	CHECK(ctx, ops()->load(kv->kvm, 0, scratch, (size_t)n) < 0,
	      "KVM took long mode without paging");
	TRY(unchanged(ctx, kv->kvm, 0, good, scratch, cap));
	/* The good one loads, and the guest runs on. */
	CHECK_OK(ctx, ops()->load(kv->kvm, 0, b0, (size_t)n0));
	TRY(kvt_run_to(ctx, kv->kvm, 1000));
	TRY(kvt_check(ctx, kv->kvm, (enum ferry_mp_state[]){ R, R }, 2));
	free(good);
	free(bad);
	free(b0);
	free(b1);
	free(scratch);
	ferry_kvm_vm_destroy(kv);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "kvm_boot", boot, B_ALL, 0, 0, 0, 300 },
	{ "kvm_power", power, B_SHMEM, 0, 0, 0, 300 },
	{ "kvm_dirty_exact", dirty_exact, B_ALL, 0, 0, 0, 300 },
	{ "kvm_state_damaged", damaged, B_SHMEM, 0, 0, 0, 300 },
};

TEST_SUITE(kvm, cases)
