/* SPDX-License-Identifier: MIT */
#ifndef FERRY_KVM_INT_H
#define FERRY_KVM_INT_H

/*
 * The KVM VM's insides, shared by its files, bottom up:
 *
 *   kvm_sys.c     /dev/kvm, ioctls, capabilities, the probe
 *   kvm_mem.c     guest memory (memfds and mappings of the VM's own, given
 *                 to ferry and to KVM), the control page, memory slots
 *   kvm_layout.c  the system region: page tables, descriptor tables, the
 *                 image, the machine and vCPU blocks
 *   kvm_x86.c     vCPUs: creation, CPUID, MSR list, entry registers
 *   kvm_run.c     the vCPU threads, pause, the guest's calls, power
 *   kvm_blob.c    the state blob's bytes (pure)
 *   kvm_state.c   save / load through KVM, the vCPU operations
 *   kvm_dirty.c   KVM's dirty log behind ferry's dirty tracker
 *   kvm_vm.c      the VM's lifecycle, description, destination, clones,
 *                 verifier
 *
 * Locking: one mutex per VM, k->lock, guards every power field, the
 * pause bookkeeping and the control page.  Each vCPU's KVM state is
 * changed only by its own thread, or by a ferry thread while every vCPU
 * thread is parked (paused, or not started): the power calls of one vCPU
 * change another's *desired* state under the lock and wake it, and that
 * vCPU's thread makes KVM agree before it runs or parks.
 */
#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cell_map.h"
#include "ferry-vm/kvm.h"
#include "ferry/dirty.h"
#include "guest_abi.h"
#include "kvm_blob.h"
#include "workload.h"

/* ---- kvm_sys.c ---------------------------------------------------------- */

/* ioctl, retried on EINTR unless `intr`; 0/positive or -errno. */
int kvm_ioctl(int fd, unsigned long req, void *arg);
/* The same, where the caller wants EINTR (KVM_RUN). */
int kvm_ioctl_intr(int fd, unsigned long req, void *arg);

/* /dev/kvm opened (O_CLOEXEC), API checked; -errno with a reason. */
int kvm_open_dev(int *fd);
long kvm_check_cap(int fd, long cap);

/* ---- the VM ------------------------------------------------------------- */

/* Where things are in guest memory (guest-physical = guest-virtual). */
struct kvm_layout {
	uint64_t sys_size;		/* the system region, 2 MiB multiple */
	uint64_t gdt, tss, idt, kstack_top;
	uint64_t machine;		/* struct kg_machine */
	uint64_t vcpus;			/* first vCPU area */
	uint64_t vcpu_stride;		/* block, buffer, stack */
	uint64_t kv_tables;		/* kv key tables, or 0 */
	uint64_t page_tables;		/* PML4 first */
	uint64_t page_tables_size;
	uint64_t ram_size;		/* workload RAM, at KG_RAM_GPA */
};

#define KVM_VCPU_BLOCK(l, i)	((l)->vcpus + (uint64_t)(i) * (l)->vcpu_stride)
#define KVM_VCPU_STACK		(16ULL << 10)

enum kvm_entry {
	KVM_ENTRY_NONE,		/* registers as they are */
	KVM_ENTRY_AP,		/* kg_main(machine, vcpu, 0): a CPU_ON */
	KVM_ENTRY_BOOT,		/* kg_main(machine, vcpu, 1): boot, reset */
};

struct kvcpu {
	struct ferry_kvm *k;		/* const */
	unsigned int index;		/* const */
	int fd;				/* const */
	struct kvm_run *run;		/* const mapping; immediate_exit is
					 * written under k->lock by kickers
					 * and by the thread */
	size_t run_size;
	struct wl_part part;		/* const: host copy (verify) */
	uint64_t block;			/* guest address of its kg_vcpu */
	pthread_t thread;
	pthread_cond_t wake;		/* the thread waits on it (lock) */

	/* k->lock: what the vCPU should be */
	enum ferry_mp_state power;
	enum kvm_entry entry;		/* registers to set before running */
	bool wake_pending;		/* a WAKE came before its SUSPEND */
	bool failed;			/* stopped for good: see k->error */
	bool at_limit;			/* made SETTLE: waits for a new limit */
	bool parked;			/* made PARK: waits for park to clear */
	bool boundary;			/* between two steps (its last exit
					 * was a call, or it has not run) */
	uint64_t nap_until;		/* ns; made NAP: sleeps until then */
	uint32_t resets;

	/* k->lock: where the thread is */
	bool in_run;			/* in KVM_RUN, or about to be */
	bool quiescent;			/* waiting on wake, KVM state settled */
	bool stop;			/* the thread must exit */

	/*
	 * KVM's MP state as last set or read: the vCPU's thread, or a
	 * ferry thread while the threads are parked.
	 */
	uint32_t kvm_mp;

	/* The vCPU's thread alone: a FAULT call's parts. */
	uint64_t fault_err, fault_rip, fault_cr2;
};

/* What must wait for every vCPU's step boundary. */
enum kvm_action {
	KVM_ACTION_NONE,
	KVM_ACTION_RESET,	/* the guest's SYSTEM_RESET */
	KVM_ACTION_OFF,		/* the guest's SYSTEM_OFF */
};

struct kvm_slot {
	uint32_t slot;
	uint64_t gpa, size;
	void *hva;
	uint32_t flags;
};

#define KVM_CTL_SLOT	63		/* the control page's memory slot */

struct ferry_kvm {
	int dev_fd, vm_fd;
	struct ferry_mem *mem;		/* the caller's, outlives the VM */
	struct ferry_guest_config cfg;	/* const; step limit: control page */
	struct kvm_layout layout;	/* const */
	struct workload wl;		/* const: host copy */
	struct cell_map cells;		/* const: the RAM regions only */
	struct ferry_mem ram;		/* const: a view of mem's RAM regions */
	unsigned int first_ram;		/* const: mem region index */
	uint64_t machine_id;		/* const */
	unsigned int nr_vcpus;		/* const */
	struct kvcpu *vcpus;		/* const array */
	struct kvm_slot slots[FERRY_WIRE_MAX_REGIONS];	/* const */
	unsigned int nr_slots;		/* const */

	/* What KVM offers (kvm_sys.c / kvm_x86.c); const after create. */
	bool has_sregs2, has_xsave2, has_xcrs, has_debugregs, has_events;
	bool has_tsc_control, has_manual_protect, has_irqchip;
	size_t xsave_size;
	uint32_t nr_msrs;
	uint32_t msrs[KB_MAX_MSRS];	/* saved and loaded, ascending */
	uint32_t nr_cpuid;
	struct kvm_cpuid_entry2 cpuid[KB_MAX_CPUID];
	uint32_t tsc_khz;
	enum ferry_kvm_backend backend;
	char describe[256];

	struct kg_control *ctl;		/* the control page (lock) */
	size_t run_size;

	pthread_mutex_t lock;
	pthread_cond_t quiesce;		/* broadcast when a vCPU parks */
	unsigned int pause_depth;	/* lock */
	unsigned int nr_quiescent;	/* lock */
	bool started;			/* lock */
	bool stopping;			/* lock: ferry_kvm_stop parks them */
	uint64_t boot_off_mask;		/* lock: the machine's, as loaded */
	enum kvm_action action;		/* lock: waiting for the boundaries */
	char error[256];		/* lock: what stopped a vCPU */
	char error_copy[256];		/* ferry_kvm_error's answer */

	/* kvm_dirty.c */
	struct ferry_dirty_log dirty_log;
	pthread_mutex_t dirty_lock;	/* the VMM's own writes' bitmaps */
	uint64_t *vmm_dirty[FERRY_WIRE_MAX_REGIONS];	/* 4 KiB bits */
	/* KVM's bits not yet collected with protect (dirty_lock) */
	uint64_t *pending[FERRY_WIRE_MAX_REGIONS];
	uint64_t *log_buf;		/* KVM_GET_DIRTY_LOG scratch */
	bool logging;			/* dirty_lock */
};

/* ---- kvm_mem.c ---------------------------------------------------------- */

/* Memory of the layout's sizes on `backing`, mapped by the VM itself. */
int kvm_mem_create(const struct kvm_layout *l, enum ferry_backing backing,
		   struct ferry_mem **out);
/* The stream's regions, at its addresses, on `backing`. */
int kvm_mem_create_as(const struct ferry_wire_stream *stream,
		      enum ferry_backing backing, struct ferry_mem **out);
void kvm_mem_destroy(struct ferry_mem *mem);
/* Every region as a memory slot, and the control page. */
int kvm_slots_add(struct ferry_kvm *k);
int kvm_slot_set_flags(struct ferry_kvm *k, unsigned int i, uint32_t flags);
/* The RAM regions as the verifier's and the guest's cell map. */
int kvm_ram_view(struct ferry_kvm *k);

/* ---- kvm_layout.c ------------------------------------------------------- */

/* Sizes and places for this config and RAM size. */
int kvm_layout_plan(const struct ferry_guest_config *cfg,
		    const struct workload *wl, uint64_t ram_size,
		    struct kvm_layout *l);
/* Write the system region: the boot of a new machine. */
int kvm_layout_write(struct ferry_kvm *k);
/* The host's copies of the workload's parts. */
int kvm_parts_init(struct ferry_kvm *k);

extern const uint8_t kvm_guest_image[], kvm_guest_image_end[];
const struct kg_image_header *kvm_image_header(void);

/* ---- kvm_x86.c ---------------------------------------------------------- */

int kvm_vm_setup(struct ferry_kvm *k);		/* irqchip, PIT, CPUID, MSRs */
int kvm_vcpus_create(struct ferry_kvm *k);
void kvm_vcpus_destroy(struct ferry_kvm *k);
/* Registers for an entry into the guest; vCPU parked or its own thread. */
int kvm_vcpu_set_entry(struct kvcpu *v, enum kvm_entry entry);
int kvm_vcpu_set_mp(struct kvcpu *v, uint32_t mp);
int kvm_vcpu_get_mp(struct kvcpu *v, uint32_t *mp);

/* KVM_MP_STATE_* and ferry's power states. */
enum ferry_mp_state kvm_mp_to_ferry(uint32_t mp);

/* ---- kvm_run.c ---------------------------------------------------------- */

void kvm_run_init_signal(void);
/* k->lock held: the desired power state made KVM's (vCPU parked). */
int kvm_vcpu_sync_locked(struct kvcpu *v);
bool kvm_parked_locked(const struct ferry_kvm *k);
void kvm_kick_locked(struct kvcpu *v);
void kvm_wake_all_locked(struct ferry_kvm *k);
/* The boot configuration, every vCPU (SYSTEM_RESET). */
void kvm_reset_locked(struct ferry_kvm *k);
/* Apply k->action if every vCPU is at a boundary (self may be running). */
void kvm_action_apply_locked(struct ferry_kvm *k, const struct kvcpu *self);
/* Stop and join the threads where they are. */
void kvm_threads_stop(struct ferry_kvm *k);
void kvm_fail_locked(struct kvcpu *v, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* ---- kvm_state.c -------------------------------------------------------- */

size_t kvm_state_size(const struct ferry_kvm *k);

/* ---- kvm_dirty.c -------------------------------------------------------- */

int kvm_dirty_init(struct ferry_kvm *k);
void kvm_dirty_fini(struct ferry_kvm *k);
void kvm_dirty_note(struct ferry_kvm *k, unsigned int region, uint64_t off,
		    uint64_t len);

/* ---- kvm_vm.c ----------------------------------------------------------- */

/* Build a VM on `mem` (the caller's): fresh boots the machine. */
int kvm_create(struct ferry_mem *mem, const struct ferry_guest_config *cfg,
	       bool fresh, struct ferry_kvm **out);
void kvm_destroy(struct ferry_kvm *k);
uint64_t kvm_machine_id(const struct ferry_kvm *k);

#endif
