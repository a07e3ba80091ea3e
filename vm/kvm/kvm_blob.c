// SPDX-License-Identifier: MIT
/*
 * kvm_blob: the KVM vCPU state blob, field by field.
 *
 * Each KVM structure is described by a table of its fields (offset,
 * width, allowed range or bits); encoding writes them little-endian one
 * after the other, decoding reads them back and refuses any value out of
 * its range, so nothing KVM would take badly (or take at all, for
 * reserved bits) gets past the decoder.  Variable sections (CPUID,
 * MSRs, the XSAVE area, the local APIC page) have their own code.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <xxhash.h>

#include "ferry/error.h"
#include "kvm_blob.h"
#include "le.h"

enum field_kind { K_RANGE, K_MASK, K_ENUM };

struct field {
	uint16_t off;
	uint8_t width;
	uint8_t kind;
	uint64_t a, b;		/* RANGE: [a, b]; MASK: bits allowed in a;
				 * ENUM: [0, a], or b */
	const char *name;
};

#define FLD(S, m, k, x, y) \
	{ offsetof(S, m), sizeof(((S *)0)->m), k, x, y, #m }
#define ANY(S, m)	FLD(S, m, K_RANGE, 0, UINT64_MAX)
#define RNG(S, m, x, y)	FLD(S, m, K_RANGE, x, y)
#define FLAG(S, m)	RNG(S, m, 0, 1)
#define MSK(S, m, bits)	FLD(S, m, K_MASK, bits, 0)
#define ZERO(S, m)	RNG(S, m, 0, 0)

#define SEG(S, sg) \
	ANY(S, sg.base), ANY(S, sg.limit), ANY(S, sg.selector), \
	RNG(S, sg.type, 0, 15), FLAG(S, sg.present), RNG(S, sg.dpl, 0, 3), \
	FLAG(S, sg.db), FLAG(S, sg.s), FLAG(S, sg.l), FLAG(S, sg.g), \
	FLAG(S, sg.avl), FLAG(S, sg.unusable)
#define SEGS(S) \
	SEG(S, cs), SEG(S, ds), SEG(S, es), SEG(S, fs), SEG(S, gs), \
	SEG(S, ss), SEG(S, tr), SEG(S, ldt), \
	ANY(S, gdt.base), ANY(S, gdt.limit), ANY(S, idt.base), \
	ANY(S, idt.limit)

/* The architectural bits of the control registers, EFER and RFLAGS. */
#define CR0_BITS	0xe005003fULL
#define CR4_BITS	0x1ff7fffULL
#define EFER_BITS	0xfd01ULL
#define RFLAGS_BITS	0x3f7fd7ULL
#define APIC_BASE_BITS	0x000ffffffffffd00ULL
#define CR_REGS(S) \
	MSK(S, cr0, CR0_BITS), ANY(S, cr2), ANY(S, cr3), \
	MSK(S, cr4, CR4_BITS), RNG(S, cr8, 0, 15), MSK(S, efer, EFER_BITS), \
	MSK(S, apic_base, APIC_BASE_BITS)

static const struct field regs_fields[] = {
	ANY(struct kvm_regs, rax), ANY(struct kvm_regs, rbx),
	ANY(struct kvm_regs, rcx), ANY(struct kvm_regs, rdx),
	ANY(struct kvm_regs, rsi), ANY(struct kvm_regs, rdi),
	ANY(struct kvm_regs, rsp), ANY(struct kvm_regs, rbp),
	ANY(struct kvm_regs, r8), ANY(struct kvm_regs, r9),
	ANY(struct kvm_regs, r10), ANY(struct kvm_regs, r11),
	ANY(struct kvm_regs, r12), ANY(struct kvm_regs, r13),
	ANY(struct kvm_regs, r14), ANY(struct kvm_regs, r15),
	ANY(struct kvm_regs, rip), MSK(struct kvm_regs, rflags, RFLAGS_BITS),
};

static const struct field sregs_fields[] = {
	SEGS(struct kvm_sregs), CR_REGS(struct kvm_sregs),
	ANY(struct kvm_sregs, interrupt_bitmap[0]),
	ANY(struct kvm_sregs, interrupt_bitmap[1]),
	ANY(struct kvm_sregs, interrupt_bitmap[2]),
	ANY(struct kvm_sregs, interrupt_bitmap[3]),
};

static const struct field sregs2_fields[] = {
	SEGS(struct kvm_sregs2), CR_REGS(struct kvm_sregs2),
	RNG(struct kvm_sregs2, flags, 0, KVM_SREGS2_FLAGS_PDPTRS_VALID),
	ANY(struct kvm_sregs2, pdptrs[0]), ANY(struct kvm_sregs2, pdptrs[1]),
	ANY(struct kvm_sregs2, pdptrs[2]), ANY(struct kvm_sregs2, pdptrs[3]),
};

#define XCR(i) \
	RNG(struct kvm_xcrs, xcrs[i].xcr, 0, 0), \
	ANY(struct kvm_xcrs, xcrs[i].value)
static const struct field xcrs_fields[] = {
	RNG(struct kvm_xcrs, nr_xcrs, 0, KVM_MAX_XCRS),
	ZERO(struct kvm_xcrs, flags),
	XCR(0), XCR(1), XCR(2), XCR(3), XCR(4), XCR(5), XCR(6), XCR(7),
	XCR(8), XCR(9), XCR(10), XCR(11), XCR(12), XCR(13), XCR(14), XCR(15),
};

#define EV struct kvm_vcpu_events
static const struct field events_fields[] = {
	FLAG(EV, exception.injected), RNG(EV, exception.nr, 0, 31),
	FLAG(EV, exception.has_error_code), FLAG(EV, exception.pending),
	ANY(EV, exception.error_code),
	FLAG(EV, interrupt.injected), ANY(EV, interrupt.nr),
	FLAG(EV, interrupt.soft), RNG(EV, interrupt.shadow, 0, 3),
	FLAG(EV, nmi.injected), RNG(EV, nmi.pending, 0, 2),
	FLAG(EV, nmi.masked),
	RNG(EV, sipi_vector, 0, 255), MSK(EV, flags, 0x3f),
	FLAG(EV, smi.smm), FLAG(EV, smi.pending), FLAG(EV, smi.smm_inside_nmi),
	FLAG(EV, smi.latched_init), FLAG(EV, triple_fault.pending),
	FLAG(EV, exception_has_payload), ANY(EV, exception_payload),
};
#undef EV

#define DR struct kvm_debugregs
static const struct field debugregs_fields[] = {
	ANY(DR, db[0]), ANY(DR, db[1]), ANY(DR, db[2]), ANY(DR, db[3]),
	MSK(DR, dr6, 0xffffffffULL), MSK(DR, dr7, 0xffffffffULL),
	ZERO(DR, flags),
};
#undef DR

static const struct field mp_fields[] = {
	/* RUNNABLE, UNINITIALIZED, INIT_RECEIVED, HALTED */
	{ 0, 4, K_RANGE, 0, KVM_MP_STATE_HALTED, "mp_state" },
};

static const struct field tsc_fields[] = {
	{ 0, 4, K_RANGE, 1000, 100000000, "tsc_khz" },	/* 1 MHz..100 GHz */
};

#define PIC struct kvm_pic_state
static const struct field pic_fields[] = {
	ANY(PIC, last_irr), ANY(PIC, irr), ANY(PIC, imr), ANY(PIC, isr),
	RNG(PIC, priority_add, 0, 7), MSK(PIC, irq_base, 0xf8),
	FLAG(PIC, read_reg_select), FLAG(PIC, poll), FLAG(PIC, special_mask),
	RNG(PIC, init_state, 0, 3), FLAG(PIC, auto_eoi),
	FLAG(PIC, rotate_on_auto_eoi), FLAG(PIC, special_fully_nested_mode),
	FLAG(PIC, init4), ANY(PIC, elcr), ANY(PIC, elcr_mask),
};
#undef PIC

#define IOA struct kvm_ioapic_state
#define RTE(i) ANY(IOA, redirtbl[i].bits)
static const struct field ioapic_fields[] = {
	ANY(IOA, base_address), RNG(IOA, ioregsel, 0, 0xff),
	RNG(IOA, id, 0, 0xff), MSK(IOA, irr, 0xffffff),
	RTE(0), RTE(1), RTE(2), RTE(3), RTE(4), RTE(5), RTE(6), RTE(7),
	RTE(8), RTE(9), RTE(10), RTE(11), RTE(12), RTE(13), RTE(14), RTE(15),
	RTE(16), RTE(17), RTE(18), RTE(19), RTE(20), RTE(21), RTE(22),
	RTE(23),
};
#undef RTE
#undef IOA

#define PIT struct kvm_pit_state2
#define CHAN(i) \
	RNG(PIT, channels[i].count, 0, 0x10000), \
	ANY(PIT, channels[i].latched_count), \
	RNG(PIT, channels[i].count_latched, 0, 3), \
	FLAG(PIT, channels[i].status_latched), \
	ANY(PIT, channels[i].status), RNG(PIT, channels[i].read_state, 0, 4), \
	RNG(PIT, channels[i].write_state, 0, 4), \
	ANY(PIT, channels[i].write_latch), \
	RNG(PIT, channels[i].rw_mode, 0, 3), \
	/* KVM marks a channel never programmed with mode 0xff */ \
	FLD(PIT, channels[i].mode, K_ENUM, 5, 0xff), \
	FLAG(PIT, channels[i].bcd), \
	FLAG(PIT, channels[i].gate), ANY(PIT, channels[i].count_load_time)
static const struct field pit_fields[] = {
	CHAN(0), CHAN(1), CHAN(2), MSK(PIT, flags, 3),
};
#undef CHAN
#undef PIT

#define CLK struct kvm_clock_data
static const struct field clock_fields[] = {
	ANY(CLK, clock),
	MSK(CLK, flags, KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME |
			KVM_CLOCK_HOST_TSC),
	ANY(CLK, realtime), ANY(CLK, host_tsc),
};
#undef CLK

#define CPUID_ENTRY_BYTES	28	/* function .. edx, 7 x 4 */
#define MSR_BYTES		12	/* index, data */

/* A fixed section: its fields and where its structure is in kb_state. */
struct fixed {
	const struct field *fields;
	unsigned int nr;
	size_t state_off;
};

#define FIXED(t, m) \
	{ t, sizeof(t) / sizeof(t[0]), offsetof(struct kb_state, m) }

static const struct fixed fixed[KB_TAG_COUNT] = {
	[KB_SREGS] = FIXED(sregs_fields, sregs),
	[KB_SREGS2] = FIXED(sregs2_fields, sregs2),
	[KB_TSC_KHZ] = FIXED(tsc_fields, tsc_khz),
	[KB_REGS] = FIXED(regs_fields, regs),
	[KB_XCRS] = FIXED(xcrs_fields, xcrs),
	[KB_MP_STATE] = FIXED(mp_fields, mp_state),
	[KB_EVENTS] = FIXED(events_fields, events),
	[KB_DEBUGREGS] = FIXED(debugregs_fields, debugregs),
	[KB_PIC_MASTER] = FIXED(pic_fields, pic[0]),
	[KB_PIC_SLAVE] = FIXED(pic_fields, pic[1]),
	[KB_IOAPIC] = FIXED(ioapic_fields, ioapic),
	[KB_PIT2] = FIXED(pit_fields, pit),
	[KB_CLOCK] = FIXED(clock_fields, clock),
};

static const char *const tag_names[KB_TAG_COUNT] = {
	[KB_CPUID] = "CPUID2", [KB_LAPIC] = "LAPIC", [KB_SREGS] = "SREGS",
	[KB_SREGS2] = "SREGS2", [KB_TSC_KHZ] = "TSC_KHZ", [KB_REGS] = "REGS",
	[KB_XSAVE] = "XSAVE", [KB_XCRS] = "XCRS", [KB_MSRS] = "MSRS",
	[KB_MP_STATE] = "MP_STATE", [KB_EVENTS] = "VCPU_EVENTS",
	[KB_DEBUGREGS] = "DEBUGREGS", [KB_PIC_MASTER] = "PIC master",
	[KB_PIC_SLAVE] = "PIC slave", [KB_IOAPIC] = "IOAPIC",
	[KB_PIT2] = "PIT2", [KB_CLOCK] = "CLOCK",
};

const char *kb_tag_name(enum kb_tag tag)
{
	if ((unsigned int)tag >= KB_TAG_COUNT || !tag_names[tag])
		return "?";
	return tag_names[tag];
}

/* ---- little-endian fields ----------------------------------------------- */

static uint64_t load_width(const uint8_t *p, unsigned int width)
{
	switch (width) {
	case 1:
		return *p;
	case 2:
		return le16_load(p);
	case 4:
		return le32_load(p);
	default:
		return le64_load(p);
	}
}

static void store_width(uint8_t *p, unsigned int width, uint64_t v)
{
	switch (width) {
	case 1:
		*p = (uint8_t)v;
		break;
	case 2:
		le16_store(p, (uint16_t)v);
		break;
	case 4:
		le32_store(p, (uint32_t)v);
		break;
	default:
		le64_store(p, v);
	}
}

/* Host structures are little-endian x86 ones: copy at their width. */
static uint64_t host_load(const void *p, unsigned int width)
{
	uint64_t v = 0;

	memcpy(&v, p, width);
	return v;
}

static size_t fixed_bytes(const struct fixed *fx)
{
	size_t n = 0;

	for (unsigned int i = 0; i < fx->nr; i++)
		n += fx->fields[i].width;
	return n;
}

static void fixed_encode(const struct fixed *fx, const struct kb_state *s,
			 uint8_t *p)
{
	const uint8_t *base = (const uint8_t *)s + fx->state_off;

	for (unsigned int i = 0; i < fx->nr; i++) {
		const struct field *f = &fx->fields[i];

		store_width(p, f->width, host_load(base + f->off, f->width));
		p += f->width;
	}
}

static int field_check(enum kb_tag tag, const struct field *f, uint64_t v)
{
	bool ok;

	switch (f->kind) {
	case K_MASK:
		ok = !(v & ~f->a);
		break;
	case K_ENUM:
		ok = v <= f->a || v == f->b;
		break;
	default:
		ok = v >= f->a && v <= f->b;
	}

	if (ok)
		return 0;
	return ferry_error_set(-EINVAL, "vCPU state: %s.%s = %#llx is out of "
			       "range", kb_tag_name(tag), f->name,
			       (unsigned long long)v);
}

static int fixed_decode(enum kb_tag tag, const struct fixed *fx,
			const uint8_t *p, struct kb_state *s)
{
	uint8_t *base = (uint8_t *)s + fx->state_off;

	for (unsigned int i = 0; i < fx->nr; i++) {
		const struct field *f = &fx->fields[i];
		uint64_t v = load_width(p, f->width);
		int ret = field_check(tag, f, v);

		if (ret)
			return ret;
		memcpy(base + f->off, &v, f->width);
		p += f->width;
	}
	return 0;
}

/* ---- variable sections -------------------------------------------------- */

static size_t var_bytes(enum kb_tag tag, const struct kb_state *s)
{
	switch (tag) {
	case KB_CPUID:
		return 4 + (size_t)s->nr_cpuid * CPUID_ENTRY_BYTES;
	case KB_LAPIC:
		return KVM_APIC_REG_SIZE;
	case KB_XSAVE:
		return 4 + s->xsave_len;
	case KB_MSRS:
		return 4 + (size_t)s->nr_msrs * MSR_BYTES;
	default:
		return fixed_bytes(&fixed[tag]);
	}
}

static void cpuid_encode(const struct kb_state *s, uint8_t *p)
{
	le32_store(p, s->nr_cpuid);
	p += 4;
	for (uint32_t i = 0; i < s->nr_cpuid; i++, p += CPUID_ENTRY_BYTES) {
		const struct kvm_cpuid_entry2 *e = &s->cpuid[i];
		uint32_t w[7] = { e->function, e->index, e->flags, e->eax,
				  e->ebx, e->ecx, e->edx };

		for (int j = 0; j < 7; j++)
			le32_store(p + 4 * j, w[j]);
	}
}

static void msrs_encode(const struct kb_state *s, uint8_t *p)
{
	le32_store(p, s->nr_msrs);
	p += 4;
	for (uint32_t i = 0; i < s->nr_msrs; i++, p += MSR_BYTES) {
		le32_store(p, s->msrs[i].index);
		le64_store(p + 4, s->msrs[i].data);
	}
}

static void section_encode(enum kb_tag tag, const struct kb_state *s,
			   uint8_t *p)
{
	switch (tag) {
	case KB_CPUID:
		cpuid_encode(s, p);
		break;
	case KB_LAPIC:
		memcpy(p, s->lapic.regs, KVM_APIC_REG_SIZE);
		break;
	case KB_XSAVE:
		le32_store(p, s->xsave_len);
		memcpy(p + 4, s->xsave, s->xsave_len);
		break;
	case KB_MSRS:
		msrs_encode(s, p);
		break;
	default:
		fixed_encode(&fixed[tag], s, p);
	}
}

static int count_check(const char *what, uint32_t n, uint32_t max,
		       size_t len, size_t each)
{
	if (n > max)
		return ferry_error_set(-EINVAL, "vCPU state: %u %s, at most %u",
				       n, what, max);
	if (len != 4 + (size_t)n * each)
		return ferry_error_set(-EBADMSG, "vCPU state: %s section of "
				       "%zu bytes for %u entries", what, len,
				       n);
	return 0;
}

static int cpuid_decode(const uint8_t *p, size_t len, struct kb_state *s)
{
	uint32_t n = le32_load(p);
	int ret = count_check("CPUID entries", n, KB_MAX_CPUID, len,
			      CPUID_ENTRY_BYTES);

	if (ret)
		return ret;
	s->nr_cpuid = n;
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *e = p + 4 + (size_t)i * CPUID_ENTRY_BYTES;

		s->cpuid[i] = (struct kvm_cpuid_entry2){
			.function = le32_load(e), .index = le32_load(e + 4),
			.flags = le32_load(e + 8), .eax = le32_load(e + 12),
			.ebx = le32_load(e + 16), .ecx = le32_load(e + 20),
			.edx = le32_load(e + 24) };
		if (s->cpuid[i].flags & ~7u)
			return ferry_error_set(-EINVAL, "vCPU state: CPUID "
					       "entry %u has flags %#x", i,
					       s->cpuid[i].flags);
	}
	return 0;
}

static int msrs_decode(const uint8_t *p, size_t len, struct kb_state *s)
{
	uint32_t n = le32_load(p);
	int ret = count_check("MSRs", n, KB_MAX_MSRS, len, MSR_BYTES);

	if (ret)
		return ret;
	s->nr_msrs = n;
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *m = p + 4 + (size_t)i * MSR_BYTES;

		s->msrs[i].index = le32_load(m);
		s->msrs[i].data = le64_load(m + 4);
		if (i && s->msrs[i].index <= s->msrs[i - 1].index)
			return ferry_error_set(-EINVAL, "vCPU state: MSR %#x "
					       "out of order",
					       s->msrs[i].index);
	}
	return 0;
}

/*
 * The legacy area and the XSAVE header: MXCSR's reserved bits, the
 * standard (not compacted) format, the header's reserved bytes.  The
 * components present are KVM's to check against what it supports.
 */
static int xsave_decode(const uint8_t *p, size_t len, struct kb_state *s)
{
	uint32_t n = le32_load(p);
	const uint8_t *x = p + 4;

	if (n > KB_MAX_XSAVE || n < 576 || n % 4 || len != 4 + (size_t)n)
		return ferry_error_set(-EBADMSG, "vCPU state: XSAVE area of "
				       "%u bytes in a %zu-byte section", n,
				       len);
	if (le32_load(x + 24) >> 16)
		return ferry_error_set(-EINVAL, "vCPU state: MXCSR %#x sets "
				       "reserved bits", le32_load(x + 24));
	if (le64_load(x + 520) >> 63)
		return ferry_error_set(-EINVAL, "vCPU state: a compacted XSAVE "
				       "area");
	for (int off = 528; off < 576; off += 8)
		if (le64_load(x + off))
			return ferry_error_set(-EINVAL, "vCPU state: XSAVE "
					       "header reserved bytes set");
	s->xsave_len = n;
	memcpy(s->xsave, x, n);
	return 0;
}

static int section_decode(enum kb_tag tag, const uint8_t *p, size_t len,
			  struct kb_state *s)
{
	switch (tag) {
	case KB_CPUID:
		return len < 4 ? -EBADMSG : cpuid_decode(p, len, s);
	case KB_MSRS:
		return len < 4 ? -EBADMSG : msrs_decode(p, len, s);
	case KB_XSAVE:
		return len < 4 ? -EBADMSG : xsave_decode(p, len, s);
	case KB_LAPIC:
		if (len != KVM_APIC_REG_SIZE)
			return -EBADMSG;
		memcpy(s->lapic.regs, p, len);
		return 0;
	default:
		if (len != fixed_bytes(&fixed[tag]))
			return -EBADMSG;
		return fixed_decode(tag, &fixed[tag], p, s);
	}
}

/* ---- the blob ----------------------------------------------------------- */

size_t kb_max_size(void)
{
	size_t n = KB_HEAD + KB_TAIL;

	for (int tag = 1; tag < KB_TAG_COUNT; tag++)
		n += 8 + (fixed[tag].fields ? fixed_bytes(&fixed[tag]) : 0);
	n += 4 + KB_MAX_CPUID * CPUID_ENTRY_BYTES + KVM_APIC_REG_SIZE +
	     4 + KB_MAX_XSAVE + 4 + KB_MAX_MSRS * MSR_BYTES;
	return n;
}

static size_t encoded_size(const struct kb_state *s)
{
	size_t n = KB_HEAD + KB_TAIL;

	for (int tag = 1; tag < KB_TAG_COUNT; tag++)
		if (s->have & KB_HAVE(tag))
			n += 8 + var_bytes((enum kb_tag)tag, s);
	return n;
}

ssize_t kb_encode(const struct kb_state *s, void *buf, size_t len)
{
	size_t need = encoded_size(s);
	uint8_t *b = buf, *p = b + KB_HEAD;
	uint32_t sections = 0;

	if (len < need)
		return ferry_error_set(-ENOSPC, "a KVM vCPU state of %zu bytes "
				       "does not fit in %zu", need, len);
	for (int tag = 1; tag < KB_TAG_COUNT; tag++) {
		size_t n;

		if (!(s->have & KB_HAVE(tag)))
			continue;
		n = var_bytes((enum kb_tag)tag, s);
		le32_store(p, (uint32_t)tag);
		le32_store(p + 4, (uint32_t)n);
		section_encode((enum kb_tag)tag, s, p + 8);
		p += 8 + n;
		sections++;
	}
	memset(b, 0, KB_HEAD);
	le32_store(b, KB_MAGIC);
	le16_store(b + 4, KB_VERSION);
	le32_store(b + 8, (uint32_t)need);
	le32_store(b + 12, s->vcpu);
	le64_store(b + 16, s->machine_id);
	le32_store(b + 24, s->flags);
	le32_store(b + 28, sections);
	le64_store(p, XXH3_64bits(b, need - KB_TAIL));
	return (ssize_t)need;
}

static int frame_check(const uint8_t *b, size_t len)
{
	if (len < KB_HEAD + KB_TAIL || le32_load(b) != KB_MAGIC)
		return ferry_error_set(-EBADMSG, "not a ferry KVM vCPU state "
				       "(%zu bytes, bad magic)", len);
	if (le16_load(b + 4) != KB_VERSION)
		return ferry_error_set(-EBADMSG, "KVM vCPU state version %u; "
				       "this ferry reads version %u",
				       le16_load(b + 4), KB_VERSION);
	if (le32_load(b + 8) != len || len > kb_max_size())
		return ferry_error_set(-EBADMSG, "KVM vCPU state of %zu bytes, "
				       "its header says %u", len,
				       le32_load(b + 8));
	if (le64_load(b + len - KB_TAIL) != XXH3_64bits(b, len - KB_TAIL))
		return ferry_error_set(-EBADMSG,
				       "KVM vCPU state checksum mismatch");
	if (le16_load(b + 6))
		return ferry_error_set(-EBADMSG,
				       "KVM vCPU state: reserved bytes set");
	if (le32_load(b + 24) & ~KB_F_KNOWN)
		return ferry_error_set(-EINVAL, "KVM vCPU state: unknown flags "
				       "%#x", le32_load(b + 24));
	return 0;
}

/* Sections, in strictly ascending tag order, filling the frame exactly. */
static int sections_decode(const uint8_t *b, size_t len, struct kb_state *s)
{
	uint32_t count = le32_load(b + 28), last = 0;
	size_t off = KB_HEAD, end = len - KB_TAIL;

	for (uint32_t i = 0; i < count; i++) {
		uint32_t tag, n;
		int ret;

		if (end - off < 8)
			return ferry_error_set(-EBADMSG, "KVM vCPU state: "
					       "section %u is cut short", i);
		tag = le32_load(b + off);
		n = le32_load(b + off + 4);
		if (tag <= last || tag >= KB_TAG_COUNT || n > end - off - 8)
			return ferry_error_set(-EBADMSG, "KVM vCPU state: "
					       "section %u (tag %u, %u bytes) "
					       "is not one it can hold", i, tag,
					       n);
		ret = section_decode((enum kb_tag)tag, b + off + 8, n, s);
		if (ret == -EBADMSG && !strstr(ferry_error_msg(), "vCPU"))
			ret = ferry_error_set(-EBADMSG, "KVM vCPU state: %s "
					      "section of %u bytes",
					      kb_tag_name((enum kb_tag)tag), n);
		if (ret)
			return ret;
		s->have |= KB_HAVE(tag);
		last = tag;
		off += 8 + n;
	}
	if (off != end)
		return ferry_error_set(-EBADMSG, "KVM vCPU state: %zu bytes "
				       "after the last section", end - off);
	return 0;
}

int kb_decode(const void *buf, size_t len, struct kb_state *s)
{
	const uint8_t *b = buf;
	int ret = frame_check(b, len);

	if (ret)
		return ret;
	/* All but the XSAVE area's bytes, which only its length makes live. */
	memset(s, 0, offsetof(struct kb_state, xsave));
	memset(&s->xcrs, 0, sizeof(*s) - offsetof(struct kb_state, xcrs));
	s->vcpu = le32_load(b + 12);
	s->machine_id = le64_load(b + 16);
	s->flags = le32_load(b + 24);
	ret = sections_decode(b, len, s);
	if (ret)
		return ret;
	if (!(s->have & KB_HAVE(KB_REGS)) ||
	    !(s->have & KB_HAVE(KB_MP_STATE)) ||
	    !(s->have & (KB_HAVE(KB_SREGS) | KB_HAVE(KB_SREGS2))))
		return ferry_error_set(-EINVAL, "KVM vCPU state without its "
				       "registers, segments or MP state");
	return 0;
}

int kb_check_identity(const struct kb_state *s, uint32_t vcpu,
		      uint64_t machine_id)
{
	if (s->vcpu != vcpu)
		return ferry_error_set(-EINVAL, "the state of vCPU %u cannot "
				       "load into vCPU %u", s->vcpu, vcpu);
	if (s->machine_id != machine_id)
		return ferry_error_set(-EINVAL, "the vCPU state comes from "
				       "another machine (workload, seed, vCPUs "
				       "or memory differ)");
	return 0;
}
