/* SPDX-License-Identifier: MIT */
#ifndef FERRY_KVM_GUEST_ABI_H
#define FERRY_KVM_GUEST_ABI_H

/*
 * guest_abi: what the KVM VM (vm/kvm/) and its guest image (guest/) agree
 * on.  Both are x86-64 code built by the same compiler, so the structures
 * below are shared as they are; the VMM writes them into guest memory
 * with guest addresses in their pointers.  Included by the freestanding
 * guest build too: nothing here needs libc.
 *
 * Guest-physical memory (the guest maps it 1:1, 4 KiB pages):
 *
 *   0            system region (a ferry region): GDT, TSS, IDT, the
 *                machine block, the image at KG_IMAGE_BASE, a block, a
 *                cell buffer and a stack per vCPU, kv's key tables, the
 *                page tables.  Migrates with the rest of memory.
 *   KG_CTL_GPA   the control page: the VMM's own memory slot, outside
 *                ferry's regions (never migrated), read-only to the guest
 *   KG_MMIO_GPA  no memory at all: the guest's calls are loads and stores
 *                here, which leave the guest as MMIO exits
 *   KG_RAM_GPA   the workload's RAM (one or more ferry regions): cells
 *
 * Calls: a load of 8 bytes at KG_MMIO_GPA + fn * KG_CALL_STRIDE + arg * 8
 * (the VMM answers in the loaded value), or a store of 8 bytes at
 * KG_MMIO_GPA + fn * KG_CALL_STRIDE (the value is the argument).  One
 * exit per call; the VMM never reads guest memory to serve one.
 */
#include <stdint.h>

#include "cell_map.h"
#include "workload.h"

#define KG_ABI_VERSION		1

#define KG_PAGE			4096ULL
#define KG_IMAGE_BASE		0x100000ULL	/* the image's link address */
#define KG_IMAGE_MAX		0x100000ULL
#define KG_CTL_GPA		0x3fe00000ULL
#define KG_MMIO_GPA		0x3ff00000ULL
#define KG_MMIO_SIZE		0x10000ULL
#define KG_CALL_STRIDE		0x1000ULL
#define KG_RAM_GPA		0x100000000ULL	/* 4 GiB: clear of any hole */
#define KG_MAX_RAM_REGIONS	8

/* Selectors of the GDT the VMM builds. */
#define KG_SEL_KCODE		0x08
#define KG_SEL_KDATA		0x10
#define KG_SEL_UCODE		0x1b	/* 0x18 | RPL 3 */
#define KG_SEL_UDATA		0x23	/* 0x20 | RPL 3 */
#define KG_SEL_TSS		0x28

/* The guest's calls (fn). */
enum kg_call {
	KG_CALL_CPU_ON = 1,	/* load, arg = target: PSCI result */
	KG_CALL_CPU_OFF,	/* load */
	KG_CALL_CPU_SUSPEND,	/* load */
	KG_CALL_WAKE,		/* load, arg = target */
	KG_CALL_SYSTEM_RESET,	/* load */
	KG_CALL_SYSTEM_OFF,	/* load */
	KG_CALL_SETTLE,		/* load: at the step limit */
	KG_CALL_PARK,		/* load: the control page asked to park */
	KG_CALL_NAP,		/* store: nanoseconds to sleep */
	KG_CALL_BAD_CELL,	/* store: a cell that failed its check */
	KG_CALL_FAULT,		/* store, from the exception stubs (CPL0):
				 * +8 error code, +16 rip, +24 cr2, then
				 * +0 the vector (last) */
	KG_CALL_COUNT
};

/* The first bytes of the image. */
#define KG_IMAGE_MAGIC		0x31474b5952524546ULL	/* "FERRYKG1" */

struct kg_image_header {
	uint64_t magic;
	uint32_t abi_version;
	uint32_t header_size;
	uint64_t entry;		/* kg_main(machine, vcpu, boot) */
	uint64_t run_steps;	/* kg_run_steps(machine, vcpu, n): steps
				 * without a call, for the host's test */
	uint64_t stubs;		/* exception stub i at stubs + i * 16 */
	uint64_t image_end;	/* first byte past bss */
};

/* What every vCPU reads; built by the VMM at boot, never written after. */
#define KG_MACHINE_MAGIC	0x454e494843414d4bULL	/* "KMACHINE" */

struct kg_machine {
	uint64_t magic;
	uint32_t nr_vcpus;
	uint32_t pad;
	struct workload wl;
	struct cell_map map;		/* regions: the array below */
	struct cell_region regions[KG_MAX_RAM_REGIONS];
	uint64_t ctl;			/* guest address of the control page */
};

/*
 * One vCPU's block: its workload registers and script position, which
 * only it writes (the VMM reads them through its alias, for the
 * verifier and the counters).
 */
struct kg_vcpu {
	struct wl_regs regs;
	uint64_t cursor;		/* scripted power calls done */
	uint64_t waiting_gen;		/* a refused CPU_ON waits for the
					 * power generation to leave this */
	int64_t tokens;			/* rate cap: bytes it may write */
	uint64_t tokens_tsc;		/* TSC when last topped up */
	uint32_t index;
	uint32_t pad;
	uint64_t buf;			/* a CELL_SIZE page: a cell built */
	struct wl_part part;		/* the VMM's, const */
};

#define KG_NO_GEN		UINT64_MAX

typedef void (*kg_run_steps_fn)(const struct kg_machine *m,
				struct kg_vcpu *v, uint64_t steps);

/*
 * The control page: the VMM writes it at any time, the guest reads it
 * between steps.  Not guest memory: each side of a migration has its
 * own.
 */
struct kg_control {
	uint64_t step_limit;		/* 0: none */
	uint64_t park;			/* non-zero: park at a step's end */
	uint64_t power_gen;		/* bumped on every power change */
	uint64_t tsc_khz;
	uint64_t rate_per_vcpu;		/* bytes/s, 0: no cap */
	uint64_t boot_off_mask;		/* the machine's boot configuration */
	uint32_t nr_vcpus;
	uint32_t pad;
};

#endif
