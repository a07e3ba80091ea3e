/* SPDX-License-Identifier: MIT */
#ifndef FERRY_RESTORE_H
#define FERRY_RESTORE_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/migrate.h"
#include "ferry/snapshot.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Restore: a VM from a snapshot file (ferry/snapshot.h), eagerly (every
 * page in place before the vCPUs resume) or lazily (they resume at once
 * and pages come in on demand from the file, with a background fill).
 */

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
	/*
	 * The guest memory a snapshot may make the restore set up; its
	 * header is checked against it before anything is allocated.  0:
	 * what this machine can give (MemTotal, and for hugetlb what the
	 * pool has free plus what it may grow by).
	 */
	uint64_t max_guest_bytes;
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

#ifdef __cplusplus
}
#endif

#endif
