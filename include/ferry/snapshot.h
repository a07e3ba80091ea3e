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
 * copied out.
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
 * VM runs as before and the file holds no valid snapshot.
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
