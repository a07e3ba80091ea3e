/* SPDX-License-Identifier: MIT */
#ifndef FERRY_SNAPSHOT_H
#define FERRY_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/mem.h"
#include "ferry/migrate.h"
#include "ferry/wire.h"

/*
 * Snapshots: a VM saved to a file, restored from it, cloned from it.
 *
 * The file is the migration stream's records at its start (HEADER, VCPU
 * per vCPU, PAGE_EXTENT per run of pages, COMPLETE) and page data at fixed
 * offsets after them, aligned to the region's page size; pages that are
 * all zero, and pages the guest never touched, are holes of a sparse file.
 * docs/snapshot.md gives the layout.  Every record carries its checksum
 * and every page's checksum is in its extent: reading treats each byte as
 * hostile, and a truncated or corrupted file is refused with a reason
 * that names what is wrong (-EBADMSG), never installed.
 *
 * Save (ferry_snapshot_save): the vCPUs pause for their state; with `live`
 * they run on while the pages are written, and the image is still the one
 * of the moment they paused: every page to save is write-protected with
 * userfaultfd (synchronous mode) before they resume, and a guest write to
 * a page not saved yet is held in the kernel until that page has been
 * copied out.
 *
 * Restore (ferry_restore_start): builds the VM the file describes through
 * the same ferry_dest_ops a migration destination uses, then either reads
 * every page before the vCPUs resume (eager), or resumes them at once and
 * brings pages in as the guest touches them (lazy): the post-copy page
 * machinery with the file as its source, a reader serving faults and a
 * background reader filling the rest, near recent faults first.  A
 * working set recorded during one restore (the order of first touches)
 * lets the next restore load those pages first.
 *
 * Clones (ferry_clone_*): one snapshot loaded once into shared memory;
 * each clone maps it privately and copies only the pages it writes.
 */

/* ---- save ------------------------------------------------------------- */

struct ferry_snapshot_opts {
	bool live;		/* vCPUs run while pages are written */
	bool sync;		/* fdatasync the file before returning */
};

struct ferry_snapshot_stats {
	uint64_t total_ns;	/* start to the file complete */
	uint64_t pause_ns;	/* vCPUs paused: their state (and, live,
				 * write protection armed) */
	uint64_t pages;		/* pages written with data */
	uint64_t zero_pages;	/* populated but all zero: holes */
	uint64_t bytes;		/* page data written */
	uint64_t file_size;	/* the file's length (mostly holes) */
	uint64_t file_blocks;	/* bytes the file takes on disk */
	/* live: guest writes held until their page was saved */
	uint64_t held_writes;
	uint64_t held_total_ns;
	uint64_t held_max_ns;
	uint64_t held_p99_ns;
	uint64_t saved_on_fault;	/* pages saved ahead of the sweep */
};

/*
 * Write `vm` to `fd` (a regular file, opened for writing; it is truncated
 * and written from offset 0).  The vCPUs are paused for the call (pauses
 * nest: a VM the caller paused stays paused), or, live, only while their
 * state is taken and write protection is armed.  Needs userfaultfd WP on
 * the backing for `live` (Linux 5.19 for shmem and hugetlbfs); the guest
 * views must not be registered with another userfaultfd.  On failure the
 * VM runs as before and the file holds no valid snapshot.
 */
int ferry_snapshot_save(const struct ferry_vm *vm, int fd,
			const struct ferry_snapshot_opts *opts,
			struct ferry_snapshot_stats *stats);

/* What a snapshot file holds, for a listing; every record checked. */
struct ferry_snapshot_info {
	struct ferry_wire_stream stream;	/* desc is not kept: NULL */
	uint64_t pages;		/* pages with data */
	uint64_t zero_pages;	/* pages stored as holes */
	uint64_t extents;
	uint64_t file_size;
	uint64_t file_blocks;	/* bytes on disk */
	uint64_t id;		/* identifies the snapshot (working sets) */
};

int ferry_snapshot_info(int fd, struct ferry_snapshot_info *info);

/* ---- restore ---------------------------------------------------------- */

enum ferry_restore_mode {
	FERRY_RESTORE_EAGER,	/* every page in place, then resume */
	FERRY_RESTORE_LAZY,	/* resume at once; pages on demand */
};

struct ferry_restore_opts {
	enum ferry_restore_mode mode;
	/*
	 * A working set file (ferry_restore_save_ws) to load first, or
	 * NULL.  Its pages are read in bulk, in file order, before the
	 * vCPUs resume, mapped (so the guest takes no fault on them) and
	 * touched once (see docs/snapshot.md); or with prefetch_async
	 * while they run, ahead of everything else the background reader
	 * fills.  Lazy mode only.
	 */
	const char *prefetch_ws;
	bool prefetch_async;
	/*
	 * Record the order in which the guest first touches pages.  The
	 * background reader then waits (ferry_restore_fill, or finish) so
	 * that every first touch is seen.  Lazy mode only.
	 */
	bool record_ws;
};

struct ferry_restore_stats {
	enum ferry_restore_mode mode;
	uint64_t resume_ns;	/* start of restore to vCPUs running */
	uint64_t open_ns;	/* of which: reading and checking records */
	uint64_t prefetch_ns;	/* of which: loading the working set */
	uint64_t total_ns;	/* start to every page in place */
	uint64_t pages;		/* pages installed from the file */
	uint64_t zero_pages;	/* left as holes */
	uint64_t bytes_read;	/* from the file */
	uint64_t prefetched;	/* working-set pages loaded first */
	uint64_t demand_reads;	/* pages a vCPU waited for */
	uint64_t filled;	/* pages the background reader installed */
	uint64_t minor_faults;	/* lazy: userfaultfd faults, by kind */
	uint64_t missing_faults;
	uint64_t fault_latency_p50_ns;	/* fault to page in place */
	uint64_t fault_latency_p99_ns;
	uint64_t fault_latency_max_ns;
	uint64_t ws_recorded;	/* first touches recorded */
	uint64_t guest_bytes;
	uint64_t pmd_mapped_bytes;	/* THP and hugetlb, at the end */
};

struct ferry_restore;

/*
 * Restore the snapshot in `fd`: check every record, have ops->create
 * build the VM (started, paused), load the vCPU states (the power state
 * in the file wins over how the vCPUs were created), put memory in place
 * as the mode says, and resume.  On return the VM runs; *out tracks the
 * pages still to come.  On failure the VM built is discarded
 * (ops->discard) and nothing ran.  fd stays the caller's; it must stay
 * open until ferry_restore_finish.
 */
int ferry_restore_start(int fd, const struct ferry_dest_ops *ops, void *arg,
			const struct ferry_restore_opts *opts,
			struct ferry_restore **out);

/* The VM restored: the caller's, valid until it discards it. */
const struct ferry_vm *ferry_restore_vm(const struct ferry_restore *rs);

/* Let the background reader start (it waits while recording). */
int ferry_restore_fill(struct ferry_restore *rs);

/*
 * Wait until every page is in place (0), timeout_ms passed (-ETIMEDOUT;
 * negative: no limit), or reading failed: a page that does not match its
 * checksum, an I/O error (the error, with a reason).  Starts the
 * background reader if it waits.
 */
int ferry_restore_wait(struct ferry_restore *rs, int timeout_ms);

/*
 * Wait as above, then stop the readers, unregister the guest views (the
 * guest then runs on plain memory) and give THP its huge mappings back.
 * Fills *stats (optional) either way.  After a failure the VM's memory is
 * incomplete: discard the VM.  Idempotent.
 */
int ferry_restore_finish(struct ferry_restore *rs,
			 struct ferry_restore_stats *stats);

/*
 * After finish: write the working set this restore recorded (the
 * prefetched pages first, then the first touches in order) to `path`.
 * -EINVAL when it did not record.
 */
int ferry_restore_save_ws(struct ferry_restore *rs, const char *path);

/* The figures so far; any time, from the thread that drives the restore. */
void ferry_restore_stats(const struct ferry_restore *rs,
			 struct ferry_restore_stats *stats);

/*
 * Free the restore; the VM stays the caller's, and must outlive this
 * call (its memory is unregistered here).  Before finish this abandons
 * the restore: the readers stop with pages still missing, so stop the
 * vCPUs first (one may wait on a page only the readers bring), then
 * destroy, then discard the VM.  NULL is fine.
 */
void ferry_restore_destroy(struct ferry_restore *rs);

/* ---- clones ----------------------------------------------------------- */

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

#endif
