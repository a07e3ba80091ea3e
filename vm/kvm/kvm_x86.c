// SPDX-License-Identifier: MIT
/*
 * kvm_x86: the VM's devices (in-kernel irqchip and PIT), its vCPUs, the
 * CPUID they get, the MSRs their state carries, and the registers of an
 * entry into the guest: long mode, straight at CPL3.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/error.h"
#include "kvm_int.h"

#define CR0_PE		(1ULL << 0)
#define CR0_MP		(1ULL << 1)
#define CR0_ET		(1ULL << 4)
#define CR0_NE		(1ULL << 5)
#define CR0_WP		(1ULL << 16)
#define CR0_PG		(1ULL << 31)
#define CR4_PAE		(1ULL << 5)
#define CR4_OSFXSR	(1ULL << 9)
#define CR4_OSXMMEXCPT	(1ULL << 10)
#define EFER_LME	(1ULL << 8)
#define EFER_LMA	(1ULL << 10)

#define TSS_ADDR	0xfffbd000UL	/* three pages, as QEMU puts them */

static int fail_ioctl(int ret, const char *what)
{
	return ferry_error_set(ret, "%s: %s", what, strerror(-ret));
}

/* ---- the VM: devices, CPUID, MSRs ---------------------------------------- */

static int get_cpuid(struct ferry_kvm *k)
{
	size_t size = sizeof(struct kvm_cpuid2) +
		      256 * sizeof(struct kvm_cpuid_entry2);
	struct kvm_cpuid2 *c = calloc(1, size);
	int ret;

	if (!c)
		return ferry_error_set(-ENOMEM, "out of memory");
	c->nent = 256;
	ret = kvm_ioctl(k->dev_fd, KVM_GET_SUPPORTED_CPUID, c);
	if (!ret && c->nent > KB_MAX_CPUID)
		ret = ferry_error_set(-E2BIG, "KVM offers %u CPUID entries, "
				      "the state blob holds %d", c->nent,
				      KB_MAX_CPUID);
	else if (ret)
		ret = fail_ioctl(ret, "KVM_GET_SUPPORTED_CPUID");
	if (!ret) {
		k->nr_cpuid = c->nent;
		memcpy(k->cpuid, c->entries, c->nent * sizeof(c->entries[0]));
	}
	free(c);
	return ret;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int get_msr_list(struct ferry_kvm *k)
{
	struct kvm_msr_list probe = { .nmsrs = 0 }, *list;
	int ret = kvm_ioctl(k->dev_fd, KVM_GET_MSR_INDEX_LIST, &probe);

	if (ret && ret != -E2BIG)
		return fail_ioctl(ret, "KVM_GET_MSR_INDEX_LIST");
	list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
	if (!list)
		return ferry_error_set(-ENOMEM, "out of memory");
	list->nmsrs = probe.nmsrs;
	ret = kvm_ioctl(k->dev_fd, KVM_GET_MSR_INDEX_LIST, list);
	if (ret) {
		free(list);
		return fail_ioctl(ret, "KVM_GET_MSR_INDEX_LIST");
	}
	k->nr_msrs = list->nmsrs < KB_MAX_MSRS ? list->nmsrs : KB_MAX_MSRS;
	memcpy(k->msrs, list->indices, k->nr_msrs * sizeof(uint32_t));
	qsort(k->msrs, k->nr_msrs, sizeof(uint32_t), cmp_u32);
	free(list);
	return 0;
}

/*
 * KVM lists MSRs this vCPU may still refuse (a feature its CPUID lacks):
 * keep those KVM_GET_MSRS reads.  It reads in order and stops at the
 * first it refuses, so drop that one and go on.
 */
static int keep_readable_msrs(struct ferry_kvm *k, int vcpu_fd)
{
	struct {
		struct kvm_msrs head;
		struct kvm_msr_entry e[KB_MAX_MSRS];
	} m;
	uint32_t i = 0;

	while (i < k->nr_msrs) {
		int n;

		memset(&m, 0, sizeof(m));
		m.head.nmsrs = k->nr_msrs - i;
		for (uint32_t j = 0; j < m.head.nmsrs; j++)
			m.e[j].index = k->msrs[i + j];
		n = kvm_ioctl(vcpu_fd, KVM_GET_MSRS, &m);
		if (n < 0)
			return fail_ioctl(n, "KVM_GET_MSRS");
		i += (uint32_t)n;
		if (i < k->nr_msrs) {
			memmove(&k->msrs[i], &k->msrs[i + 1],
				(k->nr_msrs - i - 1) * sizeof(uint32_t));
			k->nr_msrs--;
		}
	}
	return 0;
}

static void note_caps(struct ferry_kvm *k)
{
	long xsave2 = kvm_check_cap(k->vm_fd, KVM_CAP_XSAVE2);

	k->has_sregs2 = kvm_check_cap(k->vm_fd, KVM_CAP_SREGS2) > 0;
	k->has_xsave2 = xsave2 > 0;
	k->xsave_size = xsave2 > 4096 ? (size_t)xsave2 : 4096;
	if (k->xsave_size > KB_MAX_XSAVE)
		k->xsave_size = KB_MAX_XSAVE;
	k->has_xcrs = kvm_check_cap(k->vm_fd, KVM_CAP_XCRS) > 0;
	k->has_debugregs = kvm_check_cap(k->vm_fd, KVM_CAP_DEBUGREGS) > 0;
	k->has_events = kvm_check_cap(k->vm_fd, KVM_CAP_VCPU_EVENTS) > 0;
	k->has_tsc_control = kvm_check_cap(k->vm_fd, KVM_CAP_TSC_CONTROL) > 0;
	k->has_manual_protect =
		kvm_check_cap(k->vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) > 0;
}

int kvm_vm_setup(struct ferry_kvm *k)
{
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	int ret;

	note_caps(k);
	kvm_ioctl(k->vm_fd, KVM_SET_TSS_ADDR, (void *)TSS_ADDR);
	ret = kvm_ioctl(k->vm_fd, KVM_CREATE_IRQCHIP, NULL);
	if (ret)
		return fail_ioctl(ret, "KVM_CREATE_IRQCHIP");
	k->has_irqchip = true;
	if (kvm_check_cap(k->vm_fd, KVM_CAP_PIT2) > 0) {
		ret = kvm_ioctl(k->vm_fd, KVM_CREATE_PIT2, &pit);
		if (ret)
			return fail_ioctl(ret, "KVM_CREATE_PIT2");
	}
	if (k->has_manual_protect) {
		struct kvm_enable_cap cap = {
			.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
			.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE };

		if (kvm_ioctl(k->vm_fd, KVM_ENABLE_CAP, &cap))
			k->has_manual_protect = false;
	}
	ret = get_cpuid(k);
	return ret ? ret : get_msr_list(k);
}

/* ---- vCPUs -------------------------------------------------------------- */

/* The supported CPUID, with this vCPU's APIC ID where CPUID says it. */
static int set_cpuid(struct ferry_kvm *k, struct kvcpu *v)
{
	size_t size = sizeof(struct kvm_cpuid2) +
		      k->nr_cpuid * sizeof(struct kvm_cpuid_entry2);
	struct kvm_cpuid2 *c = calloc(1, size);
	int ret;

	if (!c)
		return ferry_error_set(-ENOMEM, "out of memory");
	c->nent = k->nr_cpuid;
	memcpy(c->entries, k->cpuid, k->nr_cpuid * sizeof(c->entries[0]));
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		if (e->function == 1)
			e->ebx = (e->ebx & 0x00ffffffu) | v->index << 24;
		if (e->function == 0xb || e->function == 0x1f)
			e->edx = v->index;
	}
	ret = kvm_ioctl(v->fd, KVM_SET_CPUID2, c);
	free(c);
	return ret ? fail_ioctl(ret, "KVM_SET_CPUID2") : 0;
}

static int vcpu_create(struct ferry_kvm *k, struct kvcpu *v)
{
	int ret;

	v->fd = kvm_ioctl(k->vm_fd, KVM_CREATE_VCPU,
			  (void *)(uintptr_t)v->index);
	if (v->fd < 0) {
		ret = v->fd;
		v->fd = -1;
		return ferry_error_set(ret, "KVM_CREATE_VCPU %u: %s", v->index,
				       strerror(-ret));
	}
	v->run_size = k->run_size;
	v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		      v->fd, 0);
	if (v->run == MAP_FAILED) {
		v->run = NULL;
		return ferry_error_set(-errno, "mapping vCPU %u's kvm_run: %s",
				       v->index, strerror(errno));
	}
	ret = set_cpuid(k, v);
	if (!ret)
		ret = kvm_vcpu_get_mp(v, &v->kvm_mp);
	return ret;
}

int kvm_vcpus_create(struct ferry_kvm *k)
{
	int size = kvm_ioctl(k->dev_fd, KVM_GET_VCPU_MMAP_SIZE, NULL);
	int ret = 0;

	if (size <= 0)
		return fail_ioctl(size ? size : -EINVAL,
				  "KVM_GET_VCPU_MMAP_SIZE");
	k->run_size = (size_t)size;
	for (unsigned int i = 0; !ret && i < k->nr_vcpus; i++)
		ret = vcpu_create(k, &k->vcpus[i]);
	if (!ret)
		ret = keep_readable_msrs(k, k->vcpus[0].fd);
	return ret;
}

void kvm_vcpus_destroy(struct ferry_kvm *k)
{
	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		struct kvcpu *v = &k->vcpus[i];

		if (v->run)
			munmap(v->run, v->run_size);
		if (v->fd >= 0)
			close(v->fd);
		v->run = NULL;
		v->fd = -1;
	}
}

/* ---- entering the guest ------------------------------------------------- */

static void segment(struct kvm_segment *s, uint16_t sel, bool code)
{
	*s = (struct kvm_segment){ .selector = sel, .limit = 0xffffffff,
		.type = code ? 0xb : 0x3, .present = 1, .dpl = sel & 3,
		.db = !code, .s = 1, .l = code, .g = 1 };
}

/* Long mode at CPL3 on the VMM's GDT, IDT, TSS and page tables. */
#define LONG_MODE_SREGS(k, s) do {					\
	const struct kvm_layout *l_ = &(k)->layout;			\
									\
	segment(&(s)->cs, KG_SEL_UCODE, true);				\
	segment(&(s)->ss, KG_SEL_UDATA, false);				\
	segment(&(s)->ds, KG_SEL_UDATA, false);				\
	segment(&(s)->es, KG_SEL_UDATA, false);				\
	segment(&(s)->fs, KG_SEL_UDATA, false);				\
	segment(&(s)->gs, KG_SEL_UDATA, false);				\
	(s)->tr = (struct kvm_segment){ .base = l_->tss, .limit = 0x67, \
		.selector = KG_SEL_TSS, .type = 11, .present = 1 };	\
	(s)->ldt = (struct kvm_segment){ .type = 2, .unusable = 1 };	\
	(s)->gdt = (struct kvm_dtable){ .base = l_->gdt, .limit = 0x37 }; \
	(s)->idt = (struct kvm_dtable){ .base = l_->idt,		\
					.limit = 32 * 16 - 1 };		\
	(s)->cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;	\
	(s)->cr3 = l_->page_tables;					\
	(s)->cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;		\
	(s)->efer = EFER_LME | EFER_LMA;				\
	(s)->cr2 = 0;							\
	(s)->cr8 = 0;							\
} while (0)

static int set_long_mode(struct kvcpu *v)
{
	int ret;

	if (v->k->has_sregs2) {
		struct kvm_sregs2 s;

		ret = kvm_ioctl(v->fd, KVM_GET_SREGS2, &s);
		if (ret)
			return fail_ioctl(ret, "KVM_GET_SREGS2");
		LONG_MODE_SREGS(v->k, &s);
		s.flags = 0;
		ret = kvm_ioctl(v->fd, KVM_SET_SREGS2, &s);
		return ret ? fail_ioctl(ret, "KVM_SET_SREGS2") : 0;
	} else {
		struct kvm_sregs s;

		ret = kvm_ioctl(v->fd, KVM_GET_SREGS, &s);
		if (ret)
			return fail_ioctl(ret, "KVM_GET_SREGS");
		LONG_MODE_SREGS(v->k, &s);
		memset(s.interrupt_bitmap, 0, sizeof(s.interrupt_bitmap));
		ret = kvm_ioctl(v->fd, KVM_SET_SREGS, &s);
		return ret ? fail_ioctl(ret, "KVM_SET_SREGS") : 0;
	}
}

int kvm_vcpu_set_entry(struct kvcpu *v, enum kvm_entry entry)
{
	const struct kvm_layout *l = &v->k->layout;
	struct kvm_regs r = {
		.rip = kvm_image_header()->entry,
		.rsp = v->block + 2 * KG_PAGE + KVM_VCPU_STACK - 8,
		.rdi = l->machine, .rsi = v->block,
		.rdx = entry == KVM_ENTRY_BOOT, .rflags = 2,
	};
	int ret = set_long_mode(v);

	if (ret)
		return ret;
	ret = kvm_ioctl(v->fd, KVM_SET_REGS, &r);
	return ret ? fail_ioctl(ret, "KVM_SET_REGS") : 0;
}

int kvm_vcpu_set_mp(struct kvcpu *v, uint32_t mp)
{
	struct kvm_mp_state s = { .mp_state = mp };
	int ret = kvm_ioctl(v->fd, KVM_SET_MP_STATE, &s);

	if (ret)
		return ferry_error_set(ret, "KVM_SET_MP_STATE %u on vCPU %u: "
				       "%s", mp, v->index, strerror(-ret));
	v->kvm_mp = mp;
	return 0;
}

int kvm_vcpu_get_mp(struct kvcpu *v, uint32_t *mp)
{
	struct kvm_mp_state s;
	int ret = kvm_ioctl(v->fd, KVM_GET_MP_STATE, &s);

	if (ret)
		return fail_ioctl(ret, "KVM_GET_MP_STATE");
	*mp = s.mp_state;
	return 0;
}

enum ferry_mp_state kvm_mp_to_ferry(uint32_t mp)
{
	switch (mp) {
	case KVM_MP_STATE_RUNNABLE:
		return FERRY_MP_RUNNABLE;
	case KVM_MP_STATE_HALTED:
		return FERRY_MP_SUSPENDED;
	default:	/* UNINITIALIZED, INIT_RECEIVED, SIPI_RECEIVED */
		return FERRY_MP_STOPPED;
	}
}
