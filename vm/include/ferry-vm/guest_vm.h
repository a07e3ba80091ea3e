/* SPDX-License-Identifier: MIT */
#ifndef FERRY_GUEST_VM_H
#define FERRY_GUEST_VM_H

#include "ferry-vm/guest.h"
#include "ferry/clone.h"
#include "ferry/migrate.h"
#include "ferry/restore.h"
#include "ferry/snapshot.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The built-in workload VM as a migration endpoint: its memory, its
 * vCPUs, and the machine description (the encoded guest config) that
 * travels in the stream's HEADER so the destination builds the same
 * machine.
 */
struct ferry_guest_vm {
	struct ferry_mem *mem;
	struct ferry_guest *guest;
	struct ferry_vm vm;		/* what ferry_migrate_* take */
	uint8_t desc[512];		/* encoded config; vm.desc points here */
};

/*
 * Source side: memory of `mem_size` bytes on `backing` and a VM laid out
 * on it, not started.
 */
int ferry_guest_vm_create(const struct ferry_guest_config *cfg,
			  enum ferry_backing backing, uint64_t mem_size,
			  struct ferry_guest_vm **out);

/* Stop the vCPUs, free the VM and its memory.  NULL is fine. */
void ferry_guest_vm_destroy(struct ferry_guest_vm *gv);

/*
 * Destination side: ferry_migrate_recv()'s ops for the built-in VM, with
 * a struct ferry_guest_dest as their argument.  create decodes the
 * description (hostile bytes), lays memory out as the stream says (on
 * `backing`, or the source's when keep_backing), builds the VM and starts
 * it paused; the VM ends up in `gv`.
 */
struct ferry_guest_dest {
	enum ferry_backing backing;
	bool keep_backing;
	struct ferry_guest_vm *gv;	/* out: the VM built */
};

const struct ferry_dest_ops *ferry_guest_vm_dest_ops(void);

/*
 * Clones (ferry_clone_create): the built-in VM on the memory ferry lays
 * out for a clone, from the snapshot's machine description, started
 * paused.  The ops take no argument (NULL).
 */
const struct ferry_clone_ops *ferry_guest_vm_clone_ops(void);

#ifdef __cplusplus
}
#endif

#endif
