/* SPDX-License-Identifier: MIT */
#ifndef FERRY_VM_KVM_H
#define FERRY_VM_KVM_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry-vm/guest.h"
#include "ferry-vm/verify.h"
#include "ferry/clone.h"
#include "ferry/mem.h"
#include "ferry/migrate.h"
#include "ferry/vcpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The KVM VM (x86-64): ferry's workload run by a real hardware-
 * virtualization guest, behind the same vCPU operations as the built-in
 * VM and built, like any VMM embedding ferry, on the public API only.
 *
 *   - Guest memory is memfds of the VMM's own (shmem, THP shmem or
 *     hugetlbfs), mapped by it and handed to ferry with
 *     ferry_mem_add_region_mapped(): KVM's memory slots are on exactly
 *     the mappings ferry registers with userfaultfd.  A system region at
 *     guest-physical 0 (page tables, descriptor tables, the guest image,
 *     each vCPU's block and stack) and the workload's RAM at 4 GiB.
 *   - The guest is ferry's workload and cell format built freestanding
 *     (guest/), entered in 64-bit mode at CPL3 (no guest code runs at
 *     CPL0 but its exception reports), one loop per vCPU.  Power calls,
 *     settling at a step limit, naps and errors leave it as MMIO exits
 *     (docs/kvm.md has the calls).
 *   - One thread per vCPU in KVM_RUN, in-kernel irqchip and PIT; pause
 *     kicks each thread out with a signal (FERRY_KVM_KICK_SIGNAL) and
 *     immediate_exit, and completes any MMIO before the state is read.
 *   - Power states are KVM's MP states: on = RUNNABLE, off =
 *     UNINITIALIZED or INIT_RECEIVED, suspended = HALTED (seed 001 on
 *     x86); the guest's CPU_ON, CPU_OFF, CPU_SUSPEND, SYSTEM_RESET and
 *     SYSTEM_OFF are paravirtual calls.
 *   - The vCPU state blob (save / load) holds the whole vCPU, and for
 *     vCPU 0 the VM's clock, PIC, IOAPIC and PIT, as a versioned
 *     little-endian blob checked field by field before anything changes;
 *     a load that KVM refuses half-way is rolled back.
 *   - Dirty tracking is KVM's dirty log with manual protect
 *     (ferry_dirty_set_log), plus the VMM's own writes
 *     (ferry_kvm_vm_write).
 *
 * The machine is described by a struct ferry_guest_config (ferry-vm/
 * guest.h), as for the built-in VM: mem_size is the workload's RAM.
 */

/* The signal that kicks vCPU threads out of KVM_RUN (a no-op handler). */
#define FERRY_KVM_KICK_SIGNAL	SIGUSR2

/* ---- KVM on this machine ------------------------------------------------ */

enum ferry_kvm_backend {
	FERRY_KVM_BACKEND_UNKNOWN,
	FERRY_KVM_BACKEND_VMX,		/* Intel VT-x (kvm_intel) */
	FERRY_KVM_BACKEND_SVM,		/* AMD-V (kvm_amd) */
	FERRY_KVM_BACKEND_PVM,		/* kvm_pvm: no VMX/SVM, shadow paging */
};

/* The capabilities ferry uses, by name, and whether KVM has them. */
struct ferry_kvm_cap {
	const char *name;		/* "KVM_CAP_SREGS2" */
	const char *use;		/* what ferry does with it */
	bool required;			/* without it the VM cannot run */
	long value;			/* KVM_CHECK_EXTENSION, 0: missing */
};

#define FERRY_KVM_MAX_CAPS	24

struct ferry_kvm_info {
	bool present;			/* /dev/kvm opened */
	bool usable;			/* KVM_CREATE_VM worked, every required
					 * capability is there */
	char reason[256];		/* why not, when !usable */
	int api_version;		/* KVM_GET_API_VERSION */
	enum ferry_kvm_backend backend;
	char backend_why[128];		/* what said so */
	unsigned int nr_caps;
	struct ferry_kvm_cap caps[FERRY_KVM_MAX_CAPS];
};

/*
 * What KVM offers here, tried for real (open /dev/kvm, KVM_CREATE_VM).
 * Fills *info whole; 0 even when KVM is missing (info says why).
 */
int ferry_kvm_probe(struct ferry_kvm_info *info);

/* Can a KVM VM run here?  When not, a reason with ferry_error_set. */
bool ferry_kvm_usable(void);

const char *ferry_kvm_backend_name(enum ferry_kvm_backend backend);

/* ---- the VM ------------------------------------------------------------- */

struct ferry_kvm;

/*
 * A KVM VM as a migration endpoint, like struct ferry_guest_vm: its
 * memory, the VM, and the machine description that travels in the
 * stream's HEADER.
 */
struct ferry_kvm_vm {
	struct ferry_mem *mem;
	struct ferry_kvm *kvm;
	struct ferry_vm vm;		/* what ferry_migrate_* take */
	uint8_t desc[512];		/* vm.desc points here */
};

/*
 * Source side: memory of `mem_size` bytes of RAM on `backing` (plus the
 * system region), the guest image loaded, vCPUs created in the boot
 * configuration (cfg->boot_off_mask), not started.
 */
int ferry_kvm_vm_create(const struct ferry_guest_config *cfg,
			enum ferry_backing backing, uint64_t mem_size,
			struct ferry_kvm_vm **out);

/* Stop the vCPUs, free the VM and its memory.  NULL is fine. */
void ferry_kvm_vm_destroy(struct ferry_kvm_vm *kv);

/*
 * Start one thread per vCPU (a VM started while paused starts paused).
 * ferry_kvm_stop lets every running vCPU reach the end of its step (not
 * when paused: then the vCPUs stay where the pause left them) and joins
 * the threads; the VM can be started again.
 */
int ferry_kvm_start(struct ferry_kvm *k);
int ferry_kvm_stop(struct ferry_kvm *k);

/* The vCPU interface's pause / resume (they nest). */
int ferry_kvm_pause(struct ferry_kvm *k);
int ferry_kvm_resume(struct ferry_kvm *k);

/* Every vCPU's step limit (0: none); running vCPUs see it at once. */
int ferry_kvm_set_step_limit(struct ferry_kvm *k, uint64_t limit);

/*
 * Until every vCPU has settled (off, suspended, at its step limit, or
 * stopped on an error): 0, or -ETIMEDOUT after timeout_ms (< 0: none).
 */
int ferry_kvm_wait_settled(struct ferry_kvm *k, int timeout_ms);

/* The config in use (mem_size: the RAM; boot_off_mask as loaded). */
void ferry_kvm_get_config(const struct ferry_kvm *k,
			  struct ferry_guest_config *cfg);

/* Counters as of now, from the vCPUs' blocks; any time, any thread. */
void ferry_kvm_stats(struct ferry_kvm *k, struct ferry_guest_stats *st);

/*
 * The verifier (ferry-vm/verify.h) over the RAM, against each vCPU's
 * registers in its block.  Every vCPU must be at a step boundary: the VM
 * settled, or stopped from running (ferry_kvm_stop); a vCPU paused in the
 * middle of a step is -EBUSY, as is a VM still running.
 */
int ferry_kvm_verify(struct ferry_kvm *k, struct ferry_verify_report *rep);

/* XXH3-64 over the RAM (not the system region), as ferry_guest_digest. */
int ferry_kvm_digest(struct ferry_kvm *k, uint64_t *digest);

/*
 * What stopped a vCPU, if anything did: a cell that failed its check
 * ("vCPU 1: cell 4711 failed its check"), an exception in the guest, an
 * exit KVM could not handle.  "" when none.  Valid until the next call.
 */
const char *ferry_kvm_error(struct ferry_kvm *k);

/*
 * The VMM writing guest memory itself (a device model's DMA): through
 * the guest's own mapping, and reported to dirty tracking, which KVM's
 * log would not see.  -EINVAL outside guest memory.
 */
int ferry_kvm_vm_write(struct ferry_kvm *k, uint64_t gpa, const void *buf,
		       size_t len);

/*
 * How KVM maps guest memory now, from its binary stats (Linux 5.14):
 * the pages its MMU maps at each size.  With shadow paging (PVM, or
 * kvm_amd npt=0) it maps at most what the guest's own page tables do,
 * 4 KiB for this guest; with EPT/NPT, 2 MiB where the host's mapping is
 * huge.  -EOPNOTSUPP (or another error) with a reason without the stats.
 */
struct ferry_kvm_pages {
	uint64_t pages_4k, pages_2m, pages_1g;
};

int ferry_kvm_page_sizes(struct ferry_kvm *k, struct ferry_kvm_pages *out);

/* The backend and the capabilities this VM degraded without, in words. */
const char *ferry_kvm_describe(const struct ferry_kvm *k);

/*
 * The vCPU operations; their `vm` handle is the struct ferry_kvm.
 * state_size is a few KiB (the XSAVE area and MSRs included).  The blob:
 *
 *   offset size field (little-endian)
 *        0    4 magic "FKVS"
 *        4    2 version (1)
 *        6    2 zero
 *        8    4 length of the blob, the checksum included
 *       12    4 vCPU index
 *       16    8 machine id: the workload's fingerprint and the layout;
 *               a blob loads only into the same kind of machine
 *       24    4 flags: 1 boot-off, 2 wake pending, 4 stopped on an
 *               error, 8 at a step boundary
 *       28    4 number of sections
 *       32      sections, tags strictly ascending: tag (4), length (4),
 *               payload; each KVM structure field by field (docs/kvm.md)
 *      end    8 XXH3-64 of everything before
 *
 * A load checks the frame, the identity and every field's range before
 * any ioctl, then sets the state in QEMU's order; an ioctl that fails
 * half-way restores the state taken just before.
 */
const struct ferry_vcpu_ops *ferry_kvm_vcpu_ops(void);

/* ---- migration destination, clones -------------------------------------- */

/*
 * ferry_migrate_recv()'s (and ferry_restore_start()'s) ops for the KVM
 * VM, with a struct ferry_kvm_dest as their argument: the description is
 * decoded (hostile bytes), memory laid out as the stream says (on
 * `backing`, or the stream's own when keep_backing), the vCPUs created
 * and started paused.  With boot_off_set, the vCPUs are created with
 * these power-off bits instead of the description's; the loaded states
 * win either way (seed 001).
 */
struct ferry_kvm_dest {
	enum ferry_backing backing;
	bool keep_backing;
	bool boot_off_set;
	uint64_t boot_off_mask;
	struct ferry_kvm_vm *kv;	/* out: the VM built */
};

const struct ferry_dest_ops *ferry_kvm_vm_dest_ops(void);

/* Clones (ferry_clone_create) of a KVM VM's snapshot; the arg is NULL. */
const struct ferry_clone_ops *ferry_kvm_vm_clone_ops(void);

/* Does this machine description describe a KVM VM? */
bool ferry_kvm_desc_is_kvm(const void *desc, size_t len);

#ifdef __cplusplus
}
#endif

#endif
