/* SPDX-License-Identifier: MIT */
#ifndef FERRY_SNAPSHOT_RESTORE_INT_H
#define FERRY_SNAPSHOT_RESTORE_INT_H

/*
 * snap_restore: a VM from a snapshot file, eagerly or lazily, with the
 * post-copy page machinery (pages/postcopy.h) and the file as the page
 * source.  In four files, cut at the vCPUs' resume:
 *
 *   restore.c       the restore's run: the VM built while the extent
 *                   records are read, eager or lazy, resume; start,
 *                   finish, statistics, the working set recorded
 *   restore_ctl.c   the restore in flight: its control thread, which
 *                   ends it (complete, failed, cancelled: failing
 *                   closed), events, wait, cancel, progress
 *   restore_load.c  pages read from the file, checked and put in place;
 *                   before resume, every page (eager) or the working set,
 *                   by two loaders
 *   restore_fill.c  after resume: the demand reader serves the fault
 *                   thread's requests, the fill reader the rest
 *
 * Eager: every page is read, checked and stored into the memfds, the
 * mapper CONTINUEs them into the guest views in bulk (so the guest takes
 * no fault at all), and only then do the vCPUs resume.
 *
 * Lazy: the pages the file holds are owed; the vCPUs resume at once, and
 * the readers put pages in place as they are asked for or reached.
 *
 * Working sets: with record_ws every request is a first touch of a page
 * not yet in place, noted in order (the fill reader waits, so that it
 * does not get there first).  A recorded set given to the next restore
 * is stored before the vCPUs resume, in file order, and mapped in bulk;
 * or, prefetch_async, filled first while they run.
 *
 * Threads.  The run (build, load, resume) is on the caller's thread
 * (ferry_restore_start) or the control thread (start_async); after a
 * lazy resume the control thread waits for the end: every page in place,
 * a reader's or the fault thread's failure, or a cancel, which it turns
 * into the end (restore_ctl.c).  Only the control thread (or the run,
 * before it exists) changes registration or stops threads; every other
 * caller asks, under `lock`, and waits on `cond`.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "base/error.h"
#include "base/thread.h"
#include "ferry/restore.h"
#include "pages/postcopy.h"
#include "snapshot/snapshot.h"

/* Pages read in one go: 2 MiB, or one huge page. */
#define READ_CHUNK	FERRY_HUGE_PAGE_SIZE

struct span;

struct ferry_restore {
	struct snap_file *file;
	const struct ferry_dest_ops *ops;
	void *ops_arg;
	struct ferry_restore_opts opts;
	/* The run's (then the control thread's): the VM, its page machinery,
	 * and whether the vCPUs were resumed (then the VM fails closed). */
	struct ferry_vm vm;
	bool vm_created;
	bool resumed;
	struct postcopy *pc;		/* changed under lock after build */
	uint64_t **owed;		/* per region, until switchover */
	uint64_t start_ns;

	/* In flight (restore_ctl.c). */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* Under lock: the run or the control thread writes these ... */
	enum ferry_phase phase;
	bool running;			/* the VM is the caller's (ran, and
					 * DEST_RUNNING was told) */
	bool ended;
	int result;
	char reason[400];
	/* ... and whoever reports progress these: the last rate sample. */
	uint64_t rate_at_ns, rate_bytes;
	double rate_bps;		/* < 0: no sample yet */
	/* Any thread. */
	atomic_bool cancel;		/* asked: loaders and readers stop */
	atomic_bool halt;		/* failing closed: the fill reader
					 * stops; the control thread sets */
	atomic_bool demand_up;		/* the demand reader serves requests:
					 * set by whoever starts it, cleared
					 * by it when it ends */
	atomic_bool owing;		/* switchover done: pc->owed_left
					 * counts what is owed (release) */
	int wake_fd;			/* eventfd: news for the control
					 * thread (a cancel, a failure) */
	/* Set once the extents are read (rest_main), relaxed. */
	atomic_uint_fast64_t pages_total, data_bytes;
	bool async;			/* the run is the control thread's */
	int file_fd;			/* the snapshot, for that run */
	pthread_t ctl;			/* the control thread */
	bool has_ctl;			/* its starter's; read after */

	/* What the loaders store before resume: set before they start,
	 * read-only after; next_span hands them out. */
	struct span *spans;
	size_t nr_spans, spans_cap;
	atomic_size_t next_span;

	struct snap_page *prefetch;	/* the working set given */
	/* While it is stored: its pages, per region, and zeroes to store
	 * for those of them that are zero pages.  Read-only meanwhile. */
	uint64_t **ws_maps;
	uint8_t *zero_buf;
	size_t nr_prefetch;
	/* First touches: the fault thread appends (request_page); read
	 * after finish has joined it. */
	struct snap_page *recorded;
	size_t nr_recorded, recorded_cap;

	/* Requests: the fault thread appends under qlock, the demand
	 * reader swaps the array out under qlock. */
	pthread_mutex_t qlock;
	struct snap_page *queue;
	size_t qlen, qcap;
	int demand_fd;			/* eventfd: the queue has entries */
	int fill_fd;			/* eventfd: the fill reader may start */
	/* The last page requested (region + 1) << 32 | page, 0: none;
	 * the fault thread stores, the fill reader exchanges; relaxed. */
	_Atomic uint64_t hint;
	struct threads readers;		/* demand and fill; the restore's
					 * caller starts and stops them */
	/* READ_CHUNK each, one per reader (and loader before resume). */
	uint8_t *demand_buf, *fill_buf;

	/* The first failure of a thread other than the caller's: the
	 * extent reader, the second loader, the demand and fill readers. */
	struct err_slot err;

	/* Counters: written by the thread named, relaxed, read any time. */
	atomic_uint_fast64_t stored;		/* main: before resume */
	atomic_uint_fast64_t installed;		/* readers */
	atomic_uint_fast64_t zero, bytes_read;	/* any */
	atomic_uint_fast64_t demand_reads, filled;
	struct ferry_restore_stats stats;
};

/* ---- restore_load.c: putting pages in place ----------------------------- */

/* Put count pages from `first` in place (data NULL: zero pages). */
typedef int (*restore_put_fn)(struct ferry_restore *rs, unsigned int region,
			      uint64_t first, uint64_t count,
			      const uint8_t *data);

/*
 * After resume: install page by page (data NULL: zero pages).  Returns
 * how many were installed (not dropped), or -errno.
 */
int restore_put_install(struct ferry_restore *rs, unsigned int region,
			uint64_t first, uint64_t count, const uint8_t *data);

/*
 * Pages of extent e, each run of wanted pages read with one pread into
 * buf (READ_CHUNK), checked against its sums, put in place; zero pages
 * are never read.  Returns pages put, or -errno.
 */
int restore_load_span(struct ferry_restore *rs, const struct snap_extent *e,
		      uint64_t first, uint64_t count, uint8_t *buf,
		      restore_put_fn put);

/* The same for at most READ_CHUNK. */
int restore_load_range(struct ferry_restore *rs, const struct snap_extent *e,
		       uint64_t first, uint64_t count, uint8_t *buf,
		       restore_put_fn put);

/* ---- restore_load.c: before resume -------------------------------------- */

/* Owed: every page some extent holds. */
int restore_alloc_owed(struct ferry_restore *rs);

/* Every page the file holds stored, by two loaders (eager). */
int restore_load_all(struct ferry_restore *rs);

/* The working set's pages stored, by two loaders, in file order. */
int restore_store_ws(struct ferry_restore *rs);

/* Until the mapper has CONTINUEd `pages` stored pages, or fails. */
int restore_wait_mapped(struct ferry_restore *rs, uint64_t pages);

/* ---- restore_fill.c: after resume --------------------------------------- */

/* The fault thread's requests, answered from the file. */
extern const struct postcopy_ops restore_file_ops;

/* The demand and fill readers (the fill reader waits to be let go). */
int restore_readers_start(struct ferry_restore *rs);
void restore_readers_stop(struct ferry_restore *rs);

/* ---- restore_ctl.c: in flight ------------------------------------------- */

/* The run: the restore is in this phase now (progress reads it). */
void restore_set_phase(struct ferry_restore *rs, enum ferry_phase phase);

/*
 * Was a cancel asked?  Any thread.  Inline: the readers and the loader
 * ask it as they go, and the control thread above them sets it.
 */
static inline bool restore_cancelled(struct ferry_restore *rs)
{
	return atomic_load(&rs->cancel);
}

/* -ECANCELED with a reason, if a cancel was asked; else 0. */
static inline int restore_check_cancel(struct ferry_restore *rs)
{
	if (!restore_cancelled(rs))
		return 0;
	return ferry_fail(-ECANCELED, "cancelled");
}

/*
 * The vCPUs run and the VM is the caller's: DEST_RUNNING is told, and
 * the control thread (if any) may end the restore from now on.
 */
void restore_running(struct ferry_restore *rs);

/*
 * Stop a VM whose vCPUs ran, before its registration changes: the fill
 * reader stops, the vCPUs pause (served from the file meanwhile, or with
 * what the memfd holds once the file can no longer serve them), then
 * the readers stop and fault service ends.
 */
void restore_fail_closed(struct ferry_restore *rs);

/*
 * The end: result and reason recorded, the phase, the event (DONE or
 * FAILED), waiters woken.  Returns ret.
 */
int restore_end(struct ferry_restore *rs, int ret);

/*
 * Before the VM is discarded: its page machinery stopped and freed
 * (progress no longer counts on it).
 */
void restore_forget_pc(struct ferry_restore *rs);

/* The control thread after a lazy resume: until the end. */
int restore_supervise(struct ferry_restore *rs);

/* The handle's own parts: lock, eventfd.  0 or -errno. */
int restore_ctl_init(struct ferry_restore *rs);
void restore_ctl_fini(struct ferry_restore *rs);

#endif
