/* SPDX-License-Identifier: MIT */
#ifndef FERRY_SNAPSHOT_H
#define FERRY_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/mem.h"
#include "ferry/migrate.h"
#include "ferry/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

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
 * copied out.  ferry_snapshot_start() runs a save on ferry's thread and
 * hands back a handle: progress, cancel, wait.
 *
 * Restore (ferry/restore.h, ferry_restore_start): builds the VM the file describes through
 * the same ferry_dest_ops a migration destination uses, then either reads
 * every page before the vCPUs resume (eager), or resumes them at once and
 * brings pages in as the guest touches them (lazy): the post-copy page
 * machinery with the file as its source, a reader serving faults and a
 * background reader filling the rest, near recent faults first.  A
 * working set recorded during one restore (the order of first touches)
 * lets the next restore load those pages first.
 *
 * Clones (ferry/clone.h, ferry_clone_*): one snapshot loaded once into shared memory;
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
 * VM runs as before and the file holds no valid snapshot (it is left
 * empty).
 */
int ferry_snapshot_save(const struct ferry_vm *vm, int fd,
			const struct ferry_snapshot_opts *opts,
			struct ferry_snapshot_stats *stats);

/*
 * The same, atomically, to `path`: written beside it (in the same
 * directory, unnamed where the filesystem has O_TMPFILE, else under a
 * temporary name), made durable (fsync, whatever opts->sync says), then
 * renamed over the path, and the directory made durable.  A save that
 * fails (a full disk) leaves nothing behind, and a snapshot already at
 * the path untouched.
 */
int ferry_snapshot_save_path(const struct ferry_vm *vm, const char *path,
			     const struct ferry_snapshot_opts *opts,
			     struct ferry_snapshot_stats *stats);

/* ---- a save in flight ----------------------------------------------- */

/*
 * A save's phases, in a migration source's words (ferry/migrate.h):
 *
 *   FERRY_PHASE_SETUP       the file emptied; live, the pages that exist
 *                           found before the pause
 *   FERRY_PHASE_SWITCHOVER  the vCPUs paused: their state taken and, live,
 *                           write protection armed; a paused save writes
 *                           every page in this phase
 *   FERRY_PHASE_POSTCOPY    live: the vCPUs run again while the pages of
 *                           the pause's image are written (a guest write
 *                           to one not written yet is held until it is)
 *   FERRY_PHASE_DONE        the file complete (the path: renamed into place)
 *   FERRY_PHASE_FAILED      ended without: failed, or cancelled
 */
struct ferry_snapshot_progress {
	enum ferry_phase phase;
	uint64_t pages;		/* to save: the pages that existed at the
				 * pause (0 until they are known) */
	uint64_t pages_saved;	/* of which saved (written, or zero) */
	uint64_t bytes_written;	/* page data written so far */
	uint64_t held_writes;	/* live: guest writes held so far */
	double rate_bps;	/* bytes written per second since the report
				 * before (at least 100 ms back) */
	double eta_s;		/* the pages left at the rate pages were saved
				 * at over the same span; < 0: unknown */
	uint64_t elapsed_ns;	/* since the save started */
};

/*
 * A save in flight, on ferry's thread.  ferry_snapshot_wait, _cancel,
 * _progress and _get_stats may be called from any thread, concurrently.
 */
struct ferry_snapshot_save;

/*
 * Start saving `vm` to `fd`, as ferry_snapshot_save() does.  *vm is
 * copied (desc too); the VM itself, and fd, must stay until the save
 * ended.
 */
int ferry_snapshot_start(const struct ferry_vm *vm, int fd,
			 const struct ferry_snapshot_opts *opts,
			 struct ferry_snapshot_save **out);

/*
 * Start saving atomically to `path`, as ferry_snapshot_save_path() does;
 * the file beside it is made before this returns (a directory that
 * cannot take it fails here).
 */
int ferry_snapshot_start_path(const struct ferry_vm *vm, const char *path,
			      const struct ferry_snapshot_opts *opts,
			      struct ferry_snapshot_save **out);

/*
 * Wait up to timeout_ms (< 0: no limit) for the save to end: 0 when the
 * snapshot is complete, its error when it failed (-ECANCELED when
 * cancelled), -EINPROGRESS while it runs.
 */
int ferry_snapshot_wait(struct ferry_snapshot_save *save, int timeout_ms);

/*
 * End it; returns at once, and the save ends with -ECANCELED and a reason
 * as soon as it can (between two runs of pages it writes).  The VM runs
 * as before: paused, it is resumed as on any failure; live, the write
 * protection is removed whole and every write held goes on.  No valid
 * snapshot is left: the descriptor's file is emptied, and a path gets
 * nothing at all (a snapshot already there stays untouched).  No effect
 * once it ended.
 */
int ferry_snapshot_cancel(struct ferry_snapshot_save *save);

int ferry_snapshot_progress(struct ferry_snapshot_save *save,
			    struct ferry_snapshot_progress *progress);

/* The figures so far (all of them once it ended). */
int ferry_snapshot_get_stats(struct ferry_snapshot_save *save,
			     struct ferry_snapshot_stats *stats);

/* Cancel if still running, wait for ferry's threads, free.  NULL is fine. */
void ferry_snapshot_destroy(struct ferry_snapshot_save *save);

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

#ifdef __cplusplus
}
#endif

#endif
