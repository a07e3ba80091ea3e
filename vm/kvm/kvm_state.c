// SPDX-License-Identifier: MIT
/*
 * kvm_state: a vCPU's whole state through KVM, and the vCPU operations.
 *
 * Save reads every piece KVM has (and, on vCPU 0, the VM's devices and
 * clock) into a struct kb_state, which kvm_blob.c turns into bytes.  Load
 * decodes and checks the bytes first (kvm_blob.c: frame and ranges; here:
 * whose they are, and what this KVM can take), then sets the pieces in
 * QEMU's order: the devices first (as their post-load does), CPUID, the
 * local APIC, segments and control registers (before the MSRs: EFER),
 * TSC frequency, registers, XSAVE, XCRs, MSRs, MP state, pending events,
 * debug registers, and the clock last (as at the VM's start).  If KVM
 * refuses a piece, the state read just before the load is put back, so
 * a refused load changes nothing.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/error.h"
#include "kvm_int.h"
#include "le.h"

#define HAVE(s, tag)	((s)->have & KB_HAVE(tag))

static int failed(int ret, const char *what, unsigned int vcpu)
{
	return ferry_error_set(ret, "vCPU %u: %s: %s", vcpu, what,
			       strerror(-ret));
}

/* ---- reading ------------------------------------------------------------ */

static int get_cpuid(struct kvcpu *v, struct kb_state *s)
{
	struct {
		struct kvm_cpuid2 head;
		struct kvm_cpuid_entry2 e[KB_MAX_CPUID];
	} c = { .head.nent = KB_MAX_CPUID };
	int ret = kvm_ioctl(v->fd, KVM_GET_CPUID2, &c);

	if (ret)
		return ret;
	s->nr_cpuid = c.head.nent;
	memcpy(s->cpuid, c.e, c.head.nent * sizeof(c.e[0]));
	s->have |= KB_HAVE(KB_CPUID);
	return 0;
}

static int get_msrs(struct kvcpu *v, struct kb_state *s)
{
	struct ferry_kvm *k = v->k;
	struct {
		struct kvm_msrs head;
		struct kvm_msr_entry e[KB_MAX_MSRS];
	} m = { .head.nmsrs = k->nr_msrs };
	int ret;

	for (uint32_t i = 0; i < k->nr_msrs; i++)
		m.e[i].index = k->msrs[i];
	ret = kvm_ioctl(v->fd, KVM_GET_MSRS, &m);
	if (ret >= 0 && (uint32_t)ret != k->nr_msrs)
		return ferry_error_set(-EIO, "vCPU %u: KVM_GET_MSRS read %d of "
				       "%u", v->index, ret, k->nr_msrs);
	if (ret < 0)
		return ret;
	s->nr_msrs = k->nr_msrs;
	for (uint32_t i = 0; i < k->nr_msrs; i++)
		s->msrs[i] = (struct kb_msr){ m.e[i].index, m.e[i].data };
	s->have |= KB_HAVE(KB_MSRS);
	return 0;
}

static int get_xsave(struct kvcpu *v, struct kb_state *s)
{
	struct ferry_kvm *k = v->k;
	int ret = kvm_ioctl(v->fd, k->has_xsave2 ? KVM_GET_XSAVE2 :
			    KVM_GET_XSAVE, s->xsave);

	if (ret)
		return ret;
	s->xsave_len = k->has_xsave2 ? (uint32_t)k->xsave_size : 4096;
	s->have |= KB_HAVE(KB_XSAVE);
	return 0;
}

/* One optional piece: read if KVM has it. */
#define GET(cond, tag, req, field) do {					\
	if (!ret && (cond)) {						\
		ret = kvm_ioctl(v->fd, req, &s->field);			\
		if (!ret)						\
			s->have |= KB_HAVE(tag);			\
		else							\
			what = #req;					\
	}								\
} while (0)

static int get_vcpu(struct kvcpu *v, struct kb_state *s)
{
	struct ferry_kvm *k = v->k;
	const char *what = "KVM_GET_CPUID2";
	struct kvm_mp_state mp;
	int ret = get_cpuid(v, s);

	GET(true, KB_LAPIC, KVM_GET_LAPIC, lapic);
	GET(k->has_sregs2, KB_SREGS2, KVM_GET_SREGS2, sregs2);
	GET(!k->has_sregs2, KB_SREGS, KVM_GET_SREGS, sregs);
	GET(true, KB_REGS, KVM_GET_REGS, regs);
	GET(k->has_xcrs, KB_XCRS, KVM_GET_XCRS, xcrs);
	GET(k->has_events, KB_EVENTS, KVM_GET_VCPU_EVENTS, events);
	GET(k->has_debugregs, KB_DEBUGREGS, KVM_GET_DEBUGREGS, debugregs);
	if (!ret && (ret = get_xsave(v, s)))
		what = "KVM_GET_XSAVE";
	if (!ret && (ret = get_msrs(v, s)))
		what = "KVM_GET_MSRS";
	if (!ret && !(ret = kvm_ioctl(v->fd, KVM_GET_MP_STATE, &mp))) {
		s->mp_state = mp.mp_state;
		s->have |= KB_HAVE(KB_MP_STATE);
	}
	if (!ret && k->tsc_khz) {
		s->tsc_khz = k->tsc_khz;
		s->have |= KB_HAVE(KB_TSC_KHZ);
	}
	return ret ? failed(ret, what, v->index) : 0;
}

static int get_chip(struct ferry_kvm *k, uint32_t id, void *out)
{
	struct kvm_irqchip chip = { .chip_id = id };
	int ret = kvm_ioctl(k->vm_fd, KVM_GET_IRQCHIP, &chip);

	if (!ret)
		memcpy(out, &chip.chip, id == KVM_IRQCHIP_IOAPIC ?
		       sizeof(struct kvm_ioapic_state) :
		       sizeof(struct kvm_pic_state));
	return ret;
}

static int get_vm(struct ferry_kvm *k, struct kb_state *s)
{
	int ret = get_chip(k, KVM_IRQCHIP_PIC_MASTER, &s->pic[0]);

	if (!ret)
		ret = get_chip(k, KVM_IRQCHIP_PIC_SLAVE, &s->pic[1]);
	if (!ret)
		ret = get_chip(k, KVM_IRQCHIP_IOAPIC, &s->ioapic);
	if (ret)
		return failed(ret, "KVM_GET_IRQCHIP", 0);
	s->have |= KB_HAVE(KB_PIC_MASTER) | KB_HAVE(KB_PIC_SLAVE) |
		   KB_HAVE(KB_IOAPIC);
	if (!kvm_ioctl(k->vm_fd, KVM_GET_PIT2, &s->pit))
		s->have |= KB_HAVE(KB_PIT2);
	if (!kvm_ioctl(k->vm_fd, KVM_GET_CLOCK, &s->clock))
		s->have |= KB_HAVE(KB_CLOCK);
	return 0;
}

static uint32_t vcpu_flags(const struct kvcpu *v)
{
	const struct ferry_kvm *k = v->k;

	return (k->boot_off_mask >> v->index & 1 ? KB_F_BOOT_OFF : 0) |
	       (v->wake_pending ? KB_F_WAKE : 0) |
	       (v->failed ? KB_F_FAILED : 0) |
	       (v->boundary ? KB_F_BOUNDARY : 0) |
	       (k->action == KVM_ACTION_RESET ? KB_F_RESET : 0) |
	       (k->action == KVM_ACTION_OFF ? KB_F_OFF : 0);
}

/* The whole state of a parked vCPU (k->lock held). */
static int read_state(struct kvcpu *v, struct kb_state *s)
{
	int ret = kvm_vcpu_sync_locked(v);

	memset(s, 0, offsetof(struct kb_state, xsave));
	memset(&s->xcrs, 0, sizeof(*s) - offsetof(struct kb_state, xcrs));
	s->vcpu = v->index;
	s->machine_id = v->k->machine_id;
	s->flags = vcpu_flags(v);
	if (!ret)
		ret = get_vcpu(v, s);
	if (!ret && v->index == 0)
		ret = get_vm(v->k, s);
	return ret;
}

/* ---- writing ------------------------------------------------------------ */

static bool same_cpuid(struct kvcpu *v, const struct kb_state *s)
{
	struct kb_state *now = malloc(sizeof(*now));
	bool same;

	if (!now)
		return false;
	now->have = 0;
	same = !get_cpuid(v, now) && now->nr_cpuid == s->nr_cpuid &&
	       !memcmp(now->cpuid, s->cpuid,
		       s->nr_cpuid * sizeof(s->cpuid[0]));
	free(now);
	return same;
}

static int set_cpuid(struct kvcpu *v, const struct kb_state *s)
{
	struct {
		struct kvm_cpuid2 head;
		struct kvm_cpuid_entry2 e[KB_MAX_CPUID];
	} c = { .head.nent = s->nr_cpuid };

	if (same_cpuid(v, s))
		return 0;
	memcpy(c.e, s->cpuid, s->nr_cpuid * sizeof(c.e[0]));
	return kvm_ioctl(v->fd, KVM_SET_CPUID2, &c);
}

static int set_msrs(struct kvcpu *v, const struct kb_state *s)
{
	struct {
		struct kvm_msrs head;
		struct kvm_msr_entry e[KB_MAX_MSRS];
	} m = { .head.nmsrs = s->nr_msrs };
	int ret;

	for (uint32_t i = 0; i < s->nr_msrs; i++)
		m.e[i] = (struct kvm_msr_entry){ .index = s->msrs[i].index,
						 .data = s->msrs[i].data };
	ret = kvm_ioctl(v->fd, KVM_SET_MSRS, &m);
	if (ret >= 0 && (uint32_t)ret < s->nr_msrs)
		return ferry_error_set(-EINVAL, "vCPU %u: KVM refused MSR %#x",
				       v->index, s->msrs[ret].index);
	return ret < 0 ? ret : 0;
}

static int set_chip(struct ferry_kvm *k, uint32_t id, const void *in)
{
	struct kvm_irqchip chip = { .chip_id = id };

	memcpy(&chip.chip, in, id == KVM_IRQCHIP_IOAPIC ?
	       sizeof(struct kvm_ioapic_state) :
	       sizeof(struct kvm_pic_state));
	return kvm_ioctl(k->vm_fd, KVM_SET_IRQCHIP, &chip);
}

static int set_tsc_khz(struct kvcpu *v, const struct kb_state *s)
{
	/* Another frequency may be refused (PVM hosts): keep ours then. */
	if (s->tsc_khz == v->k->tsc_khz || !v->k->has_tsc_control)
		return 0;
	kvm_ioctl(v->fd, KVM_SET_TSC_KHZ, (void *)(uintptr_t)s->tsc_khz);
	return 0;
}

#define SET(tag, expr) do {						\
	if (!ret && HAVE(s, tag) && (ret = (expr)))			\
		what = kb_tag_name(tag);				\
} while (0)

static int set_devices(struct ferry_kvm *k, const struct kb_state *s,
		       const char **what_out)
{
	const char *what = NULL;
	int ret = 0;

	SET(KB_PIC_MASTER, set_chip(k, KVM_IRQCHIP_PIC_MASTER, &s->pic[0]));
	SET(KB_PIC_SLAVE, set_chip(k, KVM_IRQCHIP_PIC_SLAVE, &s->pic[1]));
	SET(KB_IOAPIC, set_chip(k, KVM_IRQCHIP_IOAPIC, &s->ioapic));
	SET(KB_PIT2, kvm_ioctl(k->vm_fd, KVM_SET_PIT2, (void *)&s->pit));
	*what_out = what;
	return ret;
}

static int set_vcpu(struct kvcpu *v, const struct kb_state *s,
		    const char **what_out)
{
	struct kvm_mp_state mp = { .mp_state = s->mp_state };
	struct kvm_clock_data clock = { .clock = s->clock.clock };
	const char *what = NULL;
	int fd = v->fd, ret = 0;

	if (v->index == 0)
		ret = set_devices(v->k, s, &what);
	SET(KB_CPUID, set_cpuid(v, s));
	SET(KB_LAPIC, kvm_ioctl(fd, KVM_SET_LAPIC, (void *)&s->lapic));
	SET(KB_SREGS2, kvm_ioctl(fd, KVM_SET_SREGS2, (void *)&s->sregs2));
	SET(KB_SREGS, kvm_ioctl(fd, KVM_SET_SREGS, (void *)&s->sregs));
	SET(KB_TSC_KHZ, set_tsc_khz(v, s));
	SET(KB_REGS, kvm_ioctl(fd, KVM_SET_REGS, (void *)&s->regs));
	SET(KB_XSAVE, kvm_ioctl(fd, KVM_SET_XSAVE, (void *)s->xsave));
	SET(KB_XCRS, kvm_ioctl(fd, KVM_SET_XCRS, (void *)&s->xcrs));
	SET(KB_MSRS, set_msrs(v, s));
	SET(KB_MP_STATE, kvm_ioctl(fd, KVM_SET_MP_STATE, &mp));
	SET(KB_EVENTS, kvm_ioctl(fd, KVM_SET_VCPU_EVENTS, (void *)&s->events));
	SET(KB_DEBUGREGS, kvm_ioctl(fd, KVM_SET_DEBUGREGS,
				    (void *)&s->debugregs));
	if (v->index == 0)
		SET(KB_CLOCK, kvm_ioctl(v->k->vm_fd, KVM_SET_CLOCK, &clock));
	*what_out = what;
	return ret;
}

/* ---- checks a blob must pass here --------------------------------------- */

static bool msr_known(const struct ferry_kvm *k, uint32_t index)
{
	for (uint32_t i = 0; i < k->nr_msrs; i++)
		if (k->msrs[i] == index)
			return true;
	return false;
}

/* The SREGS2 of a blob as SREGS, for a KVM without SREGS2. */
static void sregs_from_sregs2(struct kb_state *s)
{
	memcpy(&s->sregs, &s->sregs2,
	       offsetof(struct kvm_sregs, interrupt_bitmap));
	memset(s->sregs.interrupt_bitmap, 0, sizeof(s->sregs.interrupt_bitmap));
	s->have = (s->have & ~KB_HAVE(KB_SREGS2)) | KB_HAVE(KB_SREGS);
}

static int fits_here(struct kvcpu *v, struct kb_state *s)
{
	struct ferry_kvm *k = v->k;
	int ret = kb_check_identity(s, v->index, k->machine_id);

	if (ret)
		return ret;
	if (HAVE(s, KB_SREGS2) && !k->has_sregs2)
		sregs_from_sregs2(s);
	if (HAVE(s, KB_SREGS) && k->has_sregs2) {
		memcpy(&s->sregs2, &s->sregs,
		       offsetof(struct kvm_sregs, interrupt_bitmap));
		s->sregs2.flags = 0;
		s->have = (s->have & ~KB_HAVE(KB_SREGS)) | KB_HAVE(KB_SREGS2);
	}
	if ((HAVE(s, KB_XCRS) && !k->has_xcrs) ||
	    (HAVE(s, KB_EVENTS) && !k->has_events) ||
	    (HAVE(s, KB_DEBUGREGS) && !k->has_debugregs))
		return ferry_error_set(-EINVAL, "the vCPU state needs XCRS, "
				       "VCPU_EVENTS or DEBUGREGS, which KVM "
				       "here lacks");
	if (HAVE(s, KB_XSAVE) && s->xsave_len > k->xsave_size)
		return ferry_error_set(-EINVAL, "an XSAVE area of %u bytes; "
				       "KVM here takes %zu", s->xsave_len,
				       k->xsave_size);
	for (uint32_t i = 0; i < s->nr_msrs; i++)
		if (!msr_known(k, s->msrs[i].index))
			return ferry_error_set(-EINVAL, "MSR %#x is not one "
					       "KVM here saves",
					       s->msrs[i].index);
	if (HAVE(s, KB_LAPIC) && le32_load(s->lapic.regs + 0x20) >> 24 !=
	    v->index)
		return ferry_error_set(-EINVAL, "the local APIC of vCPU %u "
				       "cannot load into vCPU %u",
				       le32_load(s->lapic.regs + 0x20) >> 24,
				       v->index);
	return 0;
}

/* The VM's own view follows what was loaded. */
static void commit(struct kvcpu *v, const struct kb_state *s)
{
	struct ferry_kvm *k = v->k;
	uint64_t bit = 1ULL << v->index;

	v->kvm_mp = s->mp_state;
	v->power = kvm_mp_to_ferry(s->mp_state);
	v->entry = KVM_ENTRY_NONE;
	v->wake_pending = s->flags & KB_F_WAKE;
	v->failed = s->flags & KB_F_FAILED;
	v->boundary = s->flags & KB_F_BOUNDARY;
	v->at_limit = v->parked = false;
	v->nap_until = 0;
	k->boot_off_mask = s->flags & KB_F_BOOT_OFF ? k->boot_off_mask | bit :
						      k->boot_off_mask & ~bit;
	k->ctl->boot_off_mask = k->boot_off_mask;
	k->action = s->flags & KB_F_RESET ? KVM_ACTION_RESET :
		    s->flags & KB_F_OFF ? KVM_ACTION_OFF : KVM_ACTION_NONE;
	k->ctl->park = k->stopping || k->action != KVM_ACTION_NONE;
}

/* ---- the operations ----------------------------------------------------- */

static struct kvcpu *vcpu_of(struct ferry_kvm *k, unsigned int index)
{
	if (index < k->nr_vcpus)
		return &k->vcpus[index];
	ferry_error_set(-EINVAL, "no vCPU %u (the VM has %u)", index,
			k->nr_vcpus);
	return NULL;
}

static int not_paused(void)
{
	return ferry_error_set(-EBUSY, "the vCPUs must be paused first");
}

size_t kvm_state_size(const struct ferry_kvm *k)
{
	(void)k;
	return kb_max_size();
}

static ssize_t state_save(void *vm, unsigned int index, void *buf, size_t len)
{
	struct ferry_kvm *k = vm;
	struct kvcpu *v = vcpu_of(k, index);
	struct kb_state *s;
	ssize_t ret;

	if (!v)
		return -EINVAL;
	s = malloc(sizeof(*s));
	if (!s)
		return ferry_error_set(-ENOMEM, "out of memory");
	pthread_mutex_lock(&k->lock);
	ret = kvm_parked_locked(k) ? read_state(v, s) : not_paused();
	pthread_mutex_unlock(&k->lock);
	if (!ret)
		ret = kb_encode(s, buf, len);
	free(s);
	return ret;
}

static int load_locked(struct kvcpu *v, struct kb_state *s,
		       struct kb_state *before)
{
	const char *what = NULL;
	int ret = read_state(v, before);

	if (ret)
		return ferry_error_prefix(ret, "reading the state to restore "
					  "on failure");
	ret = set_vcpu(v, s, &what);
	if (!ret) {
		commit(v, s);
		return 0;
	}
	ret = ferry_error_set(ret, "KVM refused vCPU %u's %s: %s", v->index,
			      what ? what : "state", strerror(-ret));
	set_vcpu(v, before, &what);	/* as it was */
	return ret;
}

static int state_load(void *vm, unsigned int index, const void *buf,
		      size_t len)
{
	struct ferry_kvm *k = vm;
	struct kvcpu *v = vcpu_of(k, index);
	struct kb_state *s, *before;
	int ret;

	if (!v)
		return -EINVAL;
	s = malloc(sizeof(*s));
	before = malloc(sizeof(*before));
	ret = s && before ? kb_decode(buf, len, s) :
	      ferry_error_set(-ENOMEM, "out of memory");
	pthread_mutex_lock(&k->lock);
	if (!ret)
		ret = fits_here(v, s);
	if (!ret)
		ret = kvm_parked_locked(k) ? load_locked(v, s, before) :
		      not_paused();
	pthread_mutex_unlock(&k->lock);
	free(s);
	free(before);
	return ret;
}

static int get_mp(void *vm, unsigned int index, enum ferry_mp_state *state)
{
	struct ferry_kvm *k = vm;
	struct kvcpu *v = vcpu_of(k, index);
	uint32_t mp;

	if (!v)
		return -EINVAL;
	pthread_mutex_lock(&k->lock);
	*state = v->power;
	/* A parked vCPU: KVM's own word, its desired state made real. */
	if ((!k->started || v->quiescent) && !kvm_vcpu_sync_locked(v) &&
	    !kvm_vcpu_get_mp(v, &mp)) {
		v->kvm_mp = mp;
		*state = kvm_mp_to_ferry(mp);
	}
	pthread_mutex_unlock(&k->lock);
	return 0;
}

static int set_mp(void *vm, unsigned int index, enum ferry_mp_state state)
{
	struct ferry_kvm *k = vm;
	struct kvcpu *v = vcpu_of(k, index);
	int ret;

	if (!v)
		return -EINVAL;
	if (!ferry_vcpu_mp_state_valid((int)state))
		return ferry_error_set(-EINVAL, "MP state %d is not RUNNABLE "
				       "(0), STOPPED (1) or SUSPENDED (2)",
				       (int)state);
	pthread_mutex_lock(&k->lock);
	if (kvm_parked_locked(k)) {
		v->power = state;
		if (state == FERRY_MP_STOPPED)
			v->wake_pending = false;
		ret = kvm_vcpu_sync_locked(v);
	} else {
		ret = not_paused();
	}
	pthread_mutex_unlock(&k->lock);
	return ret;
}

/*
 * SYSTEM_RESET from outside: at once, wherever each vCPU stopped (a real
 * reset does not wait for a step to end; the guest's own does).
 */
static int reset(void *vm)
{
	struct ferry_kvm *k = vm;
	int ret = 0;

	pthread_mutex_lock(&k->lock);
	if (!kvm_parked_locked(k)) {
		ret = not_paused();
	} else {
		k->action = KVM_ACTION_NONE;
		kvm_reset_locked(k);
		k->ctl->park = k->stopping;
		for (unsigned int i = 0; !ret && i < k->nr_vcpus; i++)
			ret = kvm_vcpu_sync_locked(&k->vcpus[i]);
	}
	pthread_mutex_unlock(&k->lock);
	return ret;
}

static int pause_vm(void *vm)
{
	return ferry_kvm_pause(vm);
}

static int resume_vm(void *vm)
{
	return ferry_kvm_resume(vm);
}

static unsigned int nr_vcpus(void *vm)
{
	return ((struct ferry_kvm *)vm)->nr_vcpus;
}

static size_t state_size(void *vm)
{
	return kvm_state_size(vm);
}

static const struct ferry_vcpu_ops kvm_ops = {
	.name = "kvm",
	.pause = pause_vm,
	.resume = resume_vm,
	.nr_vcpus = nr_vcpus,
	.state_size = state_size,
	.save = state_save,
	.load = state_load,
	.get_mp_state = get_mp,
	.set_mp_state = set_mp,
	.reset = reset,
};

const struct ferry_vcpu_ops *ferry_kvm_vcpu_ops(void)
{
	return &kvm_ops;
}
