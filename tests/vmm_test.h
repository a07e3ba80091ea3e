/* SPDX-License-Identifier: MIT */
#ifndef FERRY_VMM_TEST_H
#define FERRY_VMM_TEST_H

/*
 * What test_embed.c and test_kfault.c share: the built-in VM run the way
 * an embedding VMM runs it.  Its RAM is one memfd the "VMM" creates and
 * maps itself, laid out at guest-physical addresses with a gap, and
 * handed to ferry region by region (ferry_mem_add_region_mapped); on a
 * destination the same layout is rebuilt from the stream's region table.
 * The vCPU ops can be hooked so that a test acts the moment ferry resumes
 * the vCPUs (its memory registered, pages still owed).
 */
#include <stdbool.h>
#include <stdint.h>

#include "ferry-vm/guest_vm.h"
#include "test.h"

/* The layout: RAM at [0, 8M) and [16M, 24M), one memfd. */
#define VMM_GAP_SIZE	(8UL << 20)
#define VMM_LOW_SIZE	(8UL << 20)
#define VMM_HIGH_GPA	(VMM_LOW_SIZE + VMM_GAP_SIZE)

/* The VMM's RAM: one memfd, one mapping of it, regions over it. */
struct vmm_ram {
	int memfd;
	uint8_t *map;		/* the VMM's MAP_SHARED mapping, all of it */
	size_t size;
	struct ferry_mem *mem;	/* regions on `map` */
};

/*
 * Regions (gpa, size) on `backing`, packed one after the other in one
 * memfd and one mapping; 0 or -errno with a reason.
 */
int vmm_ram_create(struct vmm_ram *ram, enum ferry_backing backing,
		   const uint64_t *gpa, const uint64_t *size, unsigned int nr);

/* The low and high regions of the layout above. */
int vmm_ram_create_gapped(struct vmm_ram *ram, enum ferry_backing backing);

/* ferry's memory first, then the VMM's mapping and memfd. */
void vmm_ram_destroy(struct vmm_ram *ram);

/* A VM of the built-in kind on VMM RAM. */
struct vmm_vm {
	struct vmm_ram ram;
	struct ferry_guest *g;
	struct ferry_vm vm;
	uint8_t desc[512];
	uint64_t step_limit;	/* destination: what the VM is built with */
};

/* Source: the gapped layout on `backing`, a VM laid out on it. */
enum test_result vmm_vm_create(struct test_ctx *ctx, struct vmm_vm *v,
			       const struct ferry_guest_config *cfg,
			       enum ferry_backing backing);
void vmm_vm_destroy(struct vmm_vm *v);

/*
 * Destination ops (migration and restore): RAM mapped by the "VMM" at
 * the stream's guest-physical addresses, the VM built on it with
 * arg->step_limit, started paused.  arg is a struct vmm_vm, filled in.
 */
extern const struct ferry_dest_ops vmm_dest_ops;

/*
 * Migrate src into dst (built by vmm_dest_ops, dst->step_limit set) over
 * loopback, the destination on a thread: 0, or the failure with both
 * sides' reasons in `reason`.
 */
int vmm_migrate(struct vmm_vm *src, struct vmm_vm *dst,
		const struct ferry_migrate_opts *opts, unsigned int channels,
		char *reason, size_t len);

/*
 * The built-in VM's vCPU ops with resume hooked: the first resume after
 * vmm_hook_arm() calls fn(arg) right after the VM resumed.  One hook per
 * process (the tests run in forked children).
 */
extern const struct ferry_vcpu_ops vmm_hooked_ops;
void vmm_hook_arm(void (*fn)(void *arg), void *arg);

#endif
