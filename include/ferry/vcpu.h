/* SPDX-License-Identifier: MIT */
#ifndef FERRY_VCPU_H
#define FERRY_VCPU_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The vCPU interface: what ferry needs from a virtual machine monitor to
 * move a VM's processors.  A VMM fills in a struct ferry_vcpu_ops and hands
 * ferry the table together with an opaque VM handle (`void *vm`); ferry
 * never looks behind the handle.  ferry's own workload VM (ferry-vm/guest.h)
 * is one implementation; a KVM-based VMM is another, and the notes below
 * say what each operation means in KVM terms.
 *
 * A vCPU, as ferry sees it, is two things:
 *
 *   - a register blob: an opaque, versioned byte string that captures
 *     everything the vCPU needs to continue (for KVM: KVM_GET_REGS,
 *     _SREGS, _FPU, _XSAVE, _MSRS, _LAPIC, _VCPU_EVENTS, ... serialized by
 *     the VMM, little-endian, with its own magic and length).  ferry sends
 *     it as it is and hands it to `load` on the other side.
 *   - an MP state (multiprocessing state, KVM_GET/SET_MP_STATE): whether
 *     the vCPU is powered on and running, powered off, or suspended.
 *
 * Calling rules, common to every operation:
 *
 *   - Return 0 (or a size) on success, -errno on failure, and leave a
 *     reason with ferry_error_set() (ferry/error.h) when failing.  Never
 *     print.
 *   - `vcpu` is an index, 0 <= vcpu < nr_vcpus(vm); an index out of range
 *     is -EINVAL.
 *   - save, load, set_mp_state and reset are called only while the vCPUs
 *     are paused (between pause and resume).  An implementation that can
 *     tell returns -EBUSY otherwise.  get_mp_state may be called at any
 *     time.
 *   - All operations are called from one ferry thread at a time; the
 *     implementation serializes them against its own vCPU threads.
 */

/*
 * vCPU power state, with KVM's meaning (KVM_MP_STATE_*; the arm64 form of
 * seed 001):
 *
 *   RUNNABLE   powered on; runs when the VM is not paused
 *              (KVM_MP_STATE_RUNNABLE)
 *   STOPPED    powered off: PSCI CPU_OFF, SYSTEM_OFF, or off at boot; runs
 *              again only after another vCPU's CPU_ON or a reset
 *              (KVM_MP_STATE_STOPPED)
 *   SUSPENDED  powered on but waiting for a wake-up event (PSCI
 *              CPU_SUSPEND; KVM_MP_STATE_SUSPENDED on arm64, HALTED on x86)
 *
 * The values are what travels on the wire; they never change.
 */
enum ferry_mp_state {
	FERRY_MP_RUNNABLE = 0,
	FERRY_MP_STOPPED = 1,
	FERRY_MP_SUSPENDED = 2,
};

#define FERRY_MP_STATE_COUNT	3

struct ferry_vcpu_ops {
	/* Short name for messages: "ferry-guest", "kvm". */
	const char *name;

	/*
	 * Stop every vCPU at an instruction (or step) boundary and return
	 * once none is running guest code.  Calls nest: the VM runs again
	 * after as many resumes as pauses.  A vCPU blocked in a page fault
	 * on guest memory delays pause until the fault is served; pause must
	 * not fail because of it.  KVM: set immediate_exit / signal each
	 * vCPU thread out of KVM_RUN and wait for all of them to be outside
	 * it.
	 */
	int (*pause)(void *vm);

	/* Undo one pause; when the last is undone, runnable vCPUs run. */
	int (*resume)(void *vm);

	/* How many vCPUs the VM has; fixed for the VM's lifetime. */
	unsigned int (*nr_vcpus)(void *vm);

	/*
	 * Size of one vCPU's register blob in bytes, for sizing buffers.
	 * The same for every vCPU of the VM.
	 */
	size_t (*state_size)(void *vm);

	/*
	 * Serialize one vCPU's registers, MP state included, into buf.
	 * Returns the blob's length, or -ENOSPC (buf too small: see
	 * state_size), -EINVAL, -EBUSY (not paused).  The VM is unchanged.
	 */
	ssize_t (*save)(void *vm, unsigned int vcpu, void *buf, size_t len);

	/*
	 * Replace one vCPU's registers and MP state with a saved blob.  The
	 * blob comes from the network or a file: treat every byte as
	 * hostile.  Check its length, magic, version and every field's range
	 * before changing anything; a malformed blob is -EBADMSG (framing:
	 * length, magic, version, checksum) or -EINVAL (a field out of
	 * range, a blob from another vCPU or another kind of machine), with
	 * a reason, and leaves the vCPU exactly as it was.  After a
	 * successful load the vCPU continues, on resume, exactly where the
	 * saved one stopped, powered on or off as it was: the MP state in
	 * the blob wins over however this VM's vCPUs were created (seed
	 * 001).  KVM: KVM_SET_REGS & co, then KVM_SET_MP_STATE.
	 */
	int (*load)(void *vm, unsigned int vcpu, const void *buf, size_t len);

	/* The vCPU's MP state.  Always succeeds for a valid index. */
	int (*get_mp_state)(void *vm, unsigned int vcpu,
			    enum ferry_mp_state *state);

	/*
	 * Set the vCPU's MP state.  Any value other than the three above is
	 * -EINVAL and changes nothing.  RUNNABLE on a stopped or suspended
	 * vCPU lets it run from its current registers; STOPPED powers it
	 * off; SUSPENDED makes it wait for a wake-up.
	 */
	int (*set_mp_state)(void *vm, unsigned int vcpu,
			    enum ferry_mp_state state);

	/*
	 * SYSTEM_RESET from outside the guest: every vCPU goes back to its
	 * boot configuration, the one the machine was created with (each
	 * vCPU powered on or off at boot as its power-off-at-boot setting
	 * says), whatever the power states were before the reset or before
	 * a migration.  Guest memory is left alone.  KVM: KVM_ARM_VCPU_INIT
	 * again with the same features (KVM_ARM_VCPU_POWER_OFF for the
	 * vCPUs that boot powered off), as QEMU does on a PSCI reset.
	 */
	int (*reset)(void *vm);
};

/* "RUNNABLE", "STOPPED", "SUSPENDED"; "?" for anything else. */
const char *ferry_vcpu_mp_state_name(enum ferry_mp_state state);

/* Is `state` one of the three MP states? */
bool ferry_vcpu_mp_state_valid(int state);

/* 0 if every operation is filled in; -EINVAL naming the missing one. */
int ferry_vcpu_ops_check(const struct ferry_vcpu_ops *ops);

#ifdef __cplusplus
}
#endif

#endif
