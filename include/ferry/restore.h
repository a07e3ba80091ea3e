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
 *
 * A restore is a migration destination whose source is the file, and is
 * told in the same words (ferry/migrate.h): its phases, its events and
 * where the VM is.
 *
 *   FERRY_PHASE_SETUP       the records read, the VM built (ops->create)
 *   FERRY_PHASE_PRECOPY     loading: pages put in place before the vCPUs
 *                           run (all of them, eager; the working set,
 *                           lazy with prefetch_ws)
 *   FERRY_PHASE_SWITCHOVER  the vCPU states loaded, the vCPUs resuming
 *   FERRY_PHASE_POSTCOPY    running lazily: pages still owed by the file
 *   FERRY_PHASE_DONE        every page in place (lazy: unregistered)
 *   FERRY_PHASE_FAILED      ended without: failed, or cancelled
 *
 * A restore in flight has a handle, struct ferry_restore: every call
 * below but start, finish, save_ws and destroy may be made from any
 * thread, concurrently (ferry_restore_fill, _wait, _cancel, _progress,
 * _vm, _stats).  While it runs, ferry's threads (the fault thread, the
 * demand and fill readers, and a control thread that ends it) do the
 * work; the control thread stops the readers and unregisters once every
 * page is in place.
 *
 * The VM: until the vCPUs run (the FERRY_EVENT_DEST_RUNNING event, or
 * ferry_restore_start's return) it is ferry's, and a failure or a cancel
 * discards it (ops->discard).  From then on it is the caller's; a restore
 * that fails or is cancelled after that fails closed: ferry pauses the
 * vCPUs (a vCPU waiting on a page is served from the file meanwhile, so
 * none runs on a page that has not arrived; only when the file can no
 * longer serve it does it get what the memfd holds, a hole), and only
 * then stops the readers and unregisters.  The VM is then left paused
 * with its memory incomplete: never resume it, discard it.
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
	/*
	 * Optional: DEST_RUNNING (the vCPUs run), DONE (every page in
	 * place), FAILED (with the error: -ECANCELED when cancelled).
	 * Called on the thread that gets there (the caller's inside
	 * ferry_restore_start, or one of ferry's); it must not call back
	 * into the restore but for ferry_restore_progress and
	 * ferry_restore_cancel.
	 */
	ferry_migrate_event_fn event;
	void *event_arg;
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

/* Where a restore is, for ferry_restore_progress(). */
struct ferry_restore_progress {
	enum ferry_phase phase;		/* see above */
	uint64_t pages;		/* pages the snapshot holds (its extents);
				 * 0 until its records are read */
	uint64_t in_place;	/* of which in guest memory now (zero pages
				 * count as soon as they are final) */
	uint64_t owed;		/* of which still to come: pages - in_place */
	uint64_t bytes_read;	/* page data read from the file so far */
	uint64_t bytes_left;	/* page data not read yet */
	uint64_t demand_reads;	/* pages a vCPU waited for */
	uint64_t filled;	/* pages the background reader put in place */
	double rate_bps;	/* bytes read per second since the report
				 * before (at least 100 ms back) */
	double eta_s;		/* bytes_left at rate_bps; < 0: unknown */
	uint64_t elapsed_ns;	/* since the restore started */
	enum ferry_vm_location location;	/* THERE (in the file) until
						 * the vCPUs run, SPLIT while
						 * pages are owed, HERE once
						 * whole; THERE after a
						 * failure */
};

struct ferry_restore;

/*
 * Restore the snapshot in `fd`: check every record, have ops->create
 * build the VM (started, paused), load the vCPU states (the power state
 * in the file wins over how the vCPUs were created), put memory in place
 * as the mode says, and resume.  On return the VM runs; *out tracks the
 * pages still to come.  On failure the VM built is discarded
 * (ops->discard) and nothing ran.  fd stays the caller's; it must stay
 * open until the restore ended (ferry_restore_wait says so).
 */
int ferry_restore_start(int fd, const struct ferry_dest_ops *ops, void *arg,
			const struct ferry_restore_opts *opts,
			struct ferry_restore **out);

/*
 * The same on ferry's thread: returns at once with the handle, so that
 * the loading itself can be watched (progress) and cancelled.  The VM
 * runs from the DEST_RUNNING event on; a failure before it (ops->create
 * refusing the snapshot, a bad page in an eager restore) is the restore's
 * end, which ferry_restore_wait() returns.
 */
int ferry_restore_start_async(int fd, const struct ferry_dest_ops *ops,
			      void *arg, const struct ferry_restore_opts *opts,
			      struct ferry_restore **out);

/*
 * The VM restored: the caller's, valid until it discards it.  NULL until
 * the vCPUs run (ferry_restore_start_async), and after a failure that
 * discarded it.
 */
const struct ferry_vm *ferry_restore_vm(const struct ferry_restore *rs);

/* Let the background reader start (it waits while recording). */
int ferry_restore_fill(struct ferry_restore *rs);

/*
 * Wait until every page is in place (0), timeout_ms passed (-ETIMEDOUT;
 * negative: no limit), or the restore failed: a page that does not match
 * its checksum, an I/O error, a cancel (-ECANCELED), each with a reason.
 * Starts the background reader if it waits.
 */
int ferry_restore_wait(struct ferry_restore *rs, int timeout_ms);

/*
 * End it: the readers stop reading, and the restore ends with -ECANCELED
 * and a reason once ferry has made the VM safe to discard (before the
 * vCPUs ran: discarded; after: paused, then unregistered, see above).
 * Returns at once; ferry_restore_wait() waits for that end.  No effect
 * on a restore that has ended.  Any thread, event callbacks included.
 */
int ferry_restore_cancel(struct ferry_restore *rs);

/* Where it is now.  Any thread, any time. */
int ferry_restore_progress(struct ferry_restore *rs,
			   struct ferry_restore_progress *progress);

/* A phase in a restore's words: "loading", "running lazily", ... */
const char *ferry_restore_phase_name(enum ferry_phase phase);

/*
 * Wait as above (no limit), and give THP its huge mappings back; fill in
 * *stats (optional) either way.  After a failure the VM's memory is
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

/* The figures so far.  Any thread. */
void ferry_restore_stats(const struct ferry_restore *rs,
			 struct ferry_restore_stats *stats);

/*
 * Cancel if still running, wait for ferry's threads, free.  The VM stays
 * the caller's (if it ever was), and must outlive this call; one the
 * restore did not complete is left paused: discard it.  NULL is fine.
 */
void ferry_restore_destroy(struct ferry_restore *rs);

#ifdef __cplusplus
}
#endif

#endif
