/* SPDX-License-Identifier: MIT */
#ifndef FERRY_KVM_BLOB_H
#define FERRY_KVM_BLOB_H

/*
 * kvm_blob: the KVM vCPU state blob (layout in ferry-vm/kvm.h), as bytes
 * and back.  Pure: no KVM, no system call, so its tests run anywhere.
 * Decoding checks the frame (length, magic, version, checksum, section
 * order and sizes) and every field's range; who the blob belongs to
 * (vCPU index, machine id) is the caller's check.
 */
#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define KB_MAGIC	0x53564b46u	/* "FKVS" little-endian */
#define KB_VERSION	1
#define KB_HEAD		32
#define KB_TAIL		8

#define KB_MAX_CPUID	128
#define KB_MAX_MSRS	128
#define KB_MAX_XSAVE	(32U << 10)

/* Section tags, in the order they appear (and are loaded: see kvm_state.c). */
enum kb_tag {
	KB_CPUID = 1,
	KB_LAPIC,
	KB_SREGS,
	KB_SREGS2,
	KB_TSC_KHZ,
	KB_REGS,
	KB_XSAVE,
	KB_XCRS,
	KB_MSRS,
	KB_MP_STATE,
	KB_EVENTS,
	KB_DEBUGREGS,
	/* VM-wide, in vCPU 0's blob */
	KB_PIC_MASTER,
	KB_PIC_SLAVE,
	KB_IOAPIC,
	KB_PIT2,
	KB_CLOCK,
	KB_TAG_COUNT
};

#define KB_HAVE(tag)	(1u << (tag))

/* flags */
#define KB_F_BOOT_OFF	(1u << 0)
#define KB_F_WAKE	(1u << 1)
#define KB_F_FAILED	(1u << 2)
#define KB_F_BOUNDARY	(1u << 3)
#define KB_F_RESET	(1u << 4)	/* a SYSTEM_RESET waits for step ends */
#define KB_F_OFF	(1u << 5)	/* a SYSTEM_OFF waits for boundaries */
#define KB_F_KNOWN	(KB_F_BOOT_OFF | KB_F_WAKE | KB_F_FAILED | \
			 KB_F_BOUNDARY | KB_F_RESET | KB_F_OFF)

struct kb_msr {
	uint32_t index;
	uint64_t data;
};

/* A whole vCPU (and for vCPU 0 the VM's devices), decoded. */
struct kb_state {
	uint32_t vcpu;
	uint64_t machine_id;
	uint32_t flags;
	uint32_t have;			/* KB_HAVE() of the sections present */
	uint32_t nr_cpuid;
	struct kvm_cpuid_entry2 cpuid[KB_MAX_CPUID];
	struct kvm_lapic_state lapic;
	struct kvm_sregs sregs;
	struct kvm_sregs2 sregs2;
	uint32_t tsc_khz;
	struct kvm_regs regs;
	uint32_t xsave_len;
	_Alignas(64) uint8_t xsave[KB_MAX_XSAVE];
	struct kvm_xcrs xcrs;
	uint32_t nr_msrs;
	struct kb_msr msrs[KB_MAX_MSRS];
	uint32_t mp_state;
	struct kvm_vcpu_events events;
	struct kvm_debugregs debugregs;
	struct kvm_pic_state pic[2];
	struct kvm_ioapic_state ioapic;
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
};

/* The longest blob any state encodes to. */
size_t kb_max_size(void);

/* Bytes of s (only the sections in s->have); -ENOSPC if len is short. */
ssize_t kb_encode(const struct kb_state *s, void *buf, size_t len);

/*
 * Bytes into *s: -EBADMSG for the frame, -EINVAL for a field out of
 * range, with a reason (ferry_error_set); *s is scratch either way.
 */
int kb_decode(const void *buf, size_t len, struct kb_state *s);

/*
 * Does a decoded state belong to vCPU `vcpu` of machine `machine_id`?
 * -EINVAL with a reason when it is another vCPU's or another machine's.
 */
int kb_check_identity(const struct kb_state *s, uint32_t vcpu,
		      uint64_t machine_id);

const char *kb_tag_name(enum kb_tag tag);

#endif
