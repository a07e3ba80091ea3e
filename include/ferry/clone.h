/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CLONE_H
#define FERRY_CLONE_H

#include <stdint.h>

#include "ferry/migrate.h"
#include "ferry/snapshot.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Clones: many VMs from one snapshot (ferry/snapshot.h) loaded once into
 * shared memory; each clone maps it privately and copies only the pages
 * it writes.
 */

/*
 * One snapshot loaded once into shared memory (a memfd per region,
 * hugetlbfs for hugetlb regions), every page checked.  Clones of it
 * share every page they do not write.
 */
struct ferry_clone_source;

int ferry_clone_source_create(int fd, struct ferry_clone_source **out);

/* Clones must be destroyed first.  NULL is fine. */
void ferry_clone_source_destroy(struct ferry_clone_source *src);

/* The snapshot's stream description (desc included). */
const struct ferry_wire_stream *
ferry_clone_source_stream(const struct ferry_clone_source *src);

/* Bytes of shared memory the snapshot takes (memfd blocks). */
uint64_t ferry_clone_source_bytes(const struct ferry_clone_source *src);

/* Building a clone's VM on memory ferry laid out (a private view). */
struct ferry_clone_ops {
	/*
	 * Build the VM the stream describes on `mem` (which ferry owns and
	 * frees after destroy), started but paused; fill in *vm.
	 */
	int (*create)(void *arg, const struct ferry_wire_stream *stream,
		      struct ferry_mem *mem, struct ferry_vm *vm);
	/* Stop and free what create built. */
	void (*destroy)(void *arg, struct ferry_vm *vm);
};

struct ferry_clone;

/*
 * A new VM from the source: memory that maps the shared snapshot
 * privately and is registered MINOR | MISSING with a userfaultfd of its
 * own.  A first touch of a page the snapshot holds is CONTINUEd (mapped
 * read-only, so a write copies the page: seed 003's "don't set VM_WRITE
 * for CoW"), a touch of a hole gets a zero page, and a background mapper
 * maps the rest in bulk.  The vCPU states are loaded and the VM runs on
 * return.
 */
int ferry_clone_create(struct ferry_clone_source *src,
		       const struct ferry_clone_ops *ops, void *arg,
		       struct ferry_clone **out);

const struct ferry_vm *ferry_clone_vm(const struct ferry_clone *clone);

/*
 * Memory a clone uses of its own: pages it copied on write (its private
 * view's anonymous pages), and how many snapshot pages it maps.
 */
struct ferry_clone_mem {
	uint64_t private_bytes;
	uint64_t shared_mapped_bytes;
};

int ferry_clone_memory(const struct ferry_clone *clone,
		       struct ferry_clone_mem *mem);

/*
 * 0 while fault service runs well; else its error (a vCPU may then wait
 * on a page forever: destroy the clone).
 */
int ferry_clone_error(const struct ferry_clone *clone);

/* Stop fault service, destroy the VM (ops->destroy), unmap.  NULL ok. */
void ferry_clone_destroy(struct ferry_clone *clone);

#ifdef __cplusplus
}
#endif

#endif
