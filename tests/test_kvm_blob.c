// SPDX-License-Identifier: MIT
/*
 * The KVM vCPU state blob's codec, without KVM: a whole state goes
 * through bytes and back unchanged; truncated, mis-versioned, corrupted,
 * reordered and out-of-range blobs are refused with a reason, never
 * half-read; a blob of another vCPU or another machine is told apart;
 * random damage never crashes the decoder.
 */
#include <stdlib.h>
#include <xxhash.h>

#include "kvm_blob.h"
#include "le.h"
#include "guest_test.h"

#define MACHINE	0x1122334455667788ULL

/* A state with every section, values in range. */
static void sample(struct kb_state *s, uint32_t vcpu)
{
	memset(s, 0, sizeof(*s));
	s->vcpu = vcpu;
	s->machine_id = MACHINE;
	s->flags = KB_F_BOOT_OFF | KB_F_BOUNDARY;
	s->have = ~0u & (KB_HAVE(KB_TAG_COUNT) - 1) & ~1u & ~KB_HAVE(KB_SREGS);
	s->nr_cpuid = 3;
	for (uint32_t i = 0; i < 3; i++)
		s->cpuid[i] = (struct kvm_cpuid_entry2){ .function = i,
			.flags = i == 2 ? 1 : 0, .eax = 0x10 + i,
			.edx = 0xdead0000 | i };
	le32_store(s->lapic.regs + 0x20, vcpu << 24);
	le32_store(s->lapic.regs + 0x30, 0x50014);
	s->sregs2.cs = (struct kvm_segment){ .limit = 0xffffffff,
		.selector = 0x1b, .type = 11, .present = 1, .dpl = 3, .s = 1,
		.l = 1, .g = 1 };
	s->sregs2.ldt.unusable = 1;
	s->sregs2.cr0 = 0x80050033;
	s->sregs2.cr3 = 0x5000;
	s->sregs2.cr4 = 0x620;
	s->sregs2.efer = 0x500;
	s->sregs2.apic_base = 0xfee00900;
	s->tsc_khz = 2400000;
	s->regs = (struct kvm_regs){ .rax = 1, .rip = 0x100090,
		.rsp = 0x205ff8, .rflags = 0x2 };
	s->xsave_len = 4096;
	le32_store(s->xsave + 24, 0x1f80);
	le64_store(s->xsave + 512, 3);
	s->xcrs.nr_xcrs = 1;
	s->xcrs.xcrs[0].value = 3;
	s->nr_msrs = 3;
	s->msrs[0] = (struct kb_msr){ 0x10, 12345 };
	s->msrs[1] = (struct kb_msr){ 0x174, 0 };
	s->msrs[2] = (struct kb_msr){ 0xc0000080, 0x500 };
	s->mp_state = KVM_MP_STATE_INIT_RECEIVED;
	s->events.interrupt.shadow = 1;
	s->events.flags = KVM_VCPUEVENT_VALID_SHADOW;
	s->debugregs.dr6 = 0xffff0ff0;
	s->debugregs.dr7 = 0x400;
	s->pic[0].irq_base = 0x08;
	s->pic[1].irq_base = 0x70;
	s->ioapic.base_address = 0xfec00000;
	s->ioapic.redirtbl[0].bits = 0x10000;
	s->pit.channels[0] = (struct kvm_pit_channel_state){ .count = 0x10000,
		.rw_mode = 3, .mode = 2, .gate = 1 };
	s->clock.clock = 987654321;
}

static uint8_t blob[64 << 10], other[64 << 10];
static struct kb_state a, b;

static enum test_result round_trip(struct test_ctx *ctx)
{
	ssize_t n, m;

	sample(&a, 1);
	n = kb_encode(&a, blob, sizeof(blob));
	CHECK(ctx, n > 0 && (size_t)n <= kb_max_size(), "encode: %zd", n);
	CHECK_OK(ctx, kb_decode(blob, (size_t)n, &b));
	CHECK_EQ(ctx, b.have, a.have);
	CHECK_EQ(ctx, b.vcpu, 1);
	CHECK(ctx, b.machine_id == MACHINE && b.flags == a.flags, "identity");
	CHECK(ctx, !memcmp(&a.regs, &b.regs, sizeof(a.regs)), "regs");
	CHECK(ctx, !memcmp(&a.sregs2, &b.sregs2, sizeof(a.sregs2)), "sregs2");
	CHECK(ctx, !memcmp(&a.events, &b.events, sizeof(a.events)), "events");
	CHECK(ctx, !memcmp(&a.pit, &b.pit, sizeof(a.pit)), "pit");
	CHECK(ctx, !memcmp(a.xsave, b.xsave, 4096), "xsave");
	CHECK(ctx, !memcmp(a.msrs, b.msrs, sizeof(a.msrs[0]) * 3), "msrs");
	m = kb_encode(&b, other, sizeof(other));
	CHECK(ctx, m == n && !memcmp(blob, other, (size_t)n),
	      "a decoded state encodes to other bytes");
	CHECK_EQ(ctx, kb_encode(&a, other, (size_t)n - 1), -ENOSPC);
	return TEST_PASS;
}

/* The checksum made right again after a change, as an attacker would. */
static void reseal(uint8_t *p, size_t len)
{
	le64_store(p + len - 8, XXH3_64bits(p, len - 8));
}

static enum test_result framing(struct test_ctx *ctx)
{
	size_t n;

	sample(&a, 0);
	n = (size_t)kb_encode(&a, blob, sizeof(blob));
	for (size_t len = 0; len < n; len += len < 64 ? 1 : 97)
		CHECK_EQ(ctx, kb_decode(blob, len, &b), -EBADMSG);
	memcpy(other, blob, n);
	le16_store(other + 4, KB_VERSION + 1);
	reseal(other, n);
	CHECK_EQ(ctx, kb_decode(other, n, &b), -EBADMSG);
	CHECK(ctx, strstr(ferry_error_msg(), "version"), "reason: %s",
	      ferry_error_msg());
	memcpy(other, blob, n);
	other[100] ^= 1;		/* no reseal: the checksum catches it */
	CHECK_EQ(ctx, kb_decode(other, n, &b), -EBADMSG);
	memcpy(other, blob, n);
	le32_store(other + 8, (uint32_t)n + 8);	/* length lies */
	reseal(other, n);
	CHECK_EQ(ctx, kb_decode(other, n, &b), -EBADMSG);
	memcpy(other, blob, n);
	le32_store(other + 24, 1u << 20);	/* unknown flag */
	reseal(other, n);
	CHECK_EQ(ctx, kb_decode(other, n, &b), -EINVAL);
	/* Sections out of order: swap the first two tags. */
	memcpy(other, blob, n);
	le32_store(other + KB_HEAD, KB_MSRS);
	reseal(other, n);
	CHECK(ctx, kb_decode(other, n, &b) < 0, "a reordered blob decoded");
	return TEST_PASS;
}

/* One field out of range, everything else fine: -EINVAL naming it. */
static enum test_result refused(struct test_ctx *ctx, const char *what,
				const char *name)
{
	ssize_t n = kb_encode(&a, blob, sizeof(blob));

	CHECK(ctx, n > 0, "encode");
	CHECK(ctx, kb_decode(blob, (size_t)n, &b) == -EINVAL,
	      "%s decoded (%s)", what, ferry_error_msg());
	CHECK(ctx, strstr(ferry_error_msg(), name), "%s: reason '%s' does "
	      "not name %s", what, ferry_error_msg(), name);
	return TEST_PASS;
}

static enum test_result ranges(struct test_ctx *ctx)
{
	sample(&a, 0);
	a.mp_state = 7;
	TRY(refused(ctx, "MP state 7", "mp_state"));
	sample(&a, 0);
	a.sregs2.cs.dpl = 4;
	TRY(refused(ctx, "a DPL of 4", "cs.dpl"));
	sample(&a, 0);
	a.sregs2.cr4 |= 1ULL << 15;
	TRY(refused(ctx, "a reserved CR4 bit", "cr4"));
	sample(&a, 0);
	a.regs.rflags |= 1ULL << 3;
	TRY(refused(ctx, "a reserved RFLAGS bit", "rflags"));
	sample(&a, 0);
	a.events.exception.nr = 40;
	TRY(refused(ctx, "exception 40", "exception.nr"));
	sample(&a, 0);
	a.pit.channels[1].mode = 6;
	TRY(refused(ctx, "PIT mode 6", "mode"));
	sample(&a, 0);
	a.tsc_khz = 0;
	TRY(refused(ctx, "a TSC of 0 kHz", "tsc_khz"));
	sample(&a, 0);
	a.xcrs.nr_xcrs = KVM_MAX_XCRS + 1;
	TRY(refused(ctx, "17 XCRs", "nr_xcrs"));
	sample(&a, 0);
	le32_store(a.xsave + 24, 0x10000);
	TRY(refused(ctx, "MXCSR's reserved bits", "MXCSR"));
	sample(&a, 0);
	a.msrs[1].index = 0x10;
	TRY(refused(ctx, "MSRs out of order", "MSR"));
	sample(&a, 0);
	a.have &= ~KB_HAVE(KB_REGS);
	TRY(refused(ctx, "no registers", "registers"));
	return TEST_PASS;
}

/* Another vCPU's state, another machine's: told apart. */
static enum test_result identity(struct test_ctx *ctx)
{
	ssize_t n;

	sample(&a, 1);
	n = kb_encode(&a, blob, sizeof(blob));
	CHECK_OK(ctx, kb_decode(blob, (size_t)n, &b));
	CHECK_OK(ctx, kb_check_identity(&b, 1, MACHINE));
	CHECK_EQ(ctx, kb_check_identity(&b, 0, MACHINE), -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "vCPU 1"), "reason: %s",
	      ferry_error_msg());
	CHECK_EQ(ctx, kb_check_identity(&b, 1, MACHINE + 1), -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "another machine"), "reason: %s",
	      ferry_error_msg());
	return TEST_PASS;
}

/* Random damage, resealed or not: refused or decoded, never a crash. */
static enum test_result damage(struct test_ctx *ctx)
{
	uint64_t seed = 12345;
	size_t n;
	int decoded = 0;

	sample(&a, 2);
	n = (size_t)kb_encode(&a, blob, sizeof(blob));
	for (int round = 0; round < 4000; round++) {
		memcpy(other, blob, n);
		for (int k = 0; k < 1 + round % 4; k++) {
			seed = seed * 6364136223846793005ULL +
			       1442695040888963407ULL;
			other[(seed >> 33) % n] ^=
				(uint8_t)(1 + (seed >> 20) % 255);
		}
		if (round % 2)
			reseal(other, n);
		decoded += kb_decode(other, n, &b) == 0;
	}
	CHECK(ctx, decoded < 4000, "every damaged blob decoded");
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "kvm_blob_round_trip", round_trip, 0, 0, 0, 0, 30 },
	{ "kvm_blob_framing", framing, 0, 0, 0, 0, 30 },
	{ "kvm_blob_ranges", ranges, 0, 0, 0, 0, 30 },
	{ "kvm_blob_identity", identity, 0, 0, 0, 0, 30 },
	{ "kvm_blob_damage", damage, 0, 0, 0, 0, 60 },
};

TEST_SUITE(kvm_blob, cases)
