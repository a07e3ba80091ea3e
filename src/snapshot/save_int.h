/* SPDX-License-Identifier: MIT */
#ifndef FERRY_SNAPSHOT_SAVE_INT_H
#define FERRY_SNAPSHOT_SAVE_INT_H

/*
 * Saving a VM, inside: what its files share.
 *
 *   save.c         the flow: tables, the pause, which pages exist and
 *                  where they go (the plan), copying pages out and
 *                  writing them, the records
 *   save_sweep.c   claiming pages and saving claimed runs; the sweep,
 *                  which saves every planned page, live first where the
 *                  guest writes
 *   save_live.c    live: write protection and the fault thread, which
 *                  saves the pages of held writes
 *   save_pages.c   a save's page I/O: copied out, summed, written
 *   save_path.c    a path saved atomically: the file beside it, renamed
 *   save_handle.c  a save in flight: its thread, wait, cancel, progress,
 *                  and the blocking calls on top
 */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "ferry/hist.h"
#include "ferry/migrate.h"
#include "pages/faultsvc.h"
#include "pages/uffdmem.h"
#include "snapshot/snapshot.h"

/*
 * A page's way through a save: claimed (SAVING), copied out and
 * un-protected (COPIED: the guest may write it), stored (SAVED).
 */
enum save_state { SAVE_UNSAVED = 0, SAVE_SAVING, SAVE_COPIED, SAVE_SAVED };

struct early_write {
	struct uffd_msg msg;
	uint64_t t0;
};

/* A run the fault thread copied out before the plan, to store after it. */
struct early_run {
	unsigned int region;
	uint64_t first, count;
	uint8_t *buf;		/* in the saver's early pool */
};

/* Pages copied out in one go: 2 MiB, or one huge page. */
#define SAVE_CHUNK	FERRY_HUGE_PAGE_SIZE
/* Claimed with the page of a held write: the next ones, up to 64 KiB. */
#define SAVE_NEAR	(64U << 10)
/* Where the guest writes: runs this long, up to SAVE_AHEAD past a hold. */
#define SAVE_RUN	(256U << 10)
#define SAVE_AHEAD	(4U << 20)
#define SAVE_HINTS	4		/* writers followed at once */
#define SAVE_WAITING	64		/* writes held on the sweep's runs */
/* Runs of SAVE_NEAR copied out for writes held before the plan. */
#define SAVE_EARLY_RUNS	64

/*
 * A write held on a page the sweep has claimed: its page (region + 1 in
 * the top 16 bits, so that 0 is a free slot) and when the fault thread
 * read it.  The fault thread fills a free slot (t0, then key); whoever
 * takes the key back to 0 (the sweep once its run is un-protected, or
 * the fault thread if it finds the run done already) records the hold.
 */
struct held_slot {
	_Atomic uint64_t key;
	uint64_t t0;
};

struct saver {
	struct ferry_snapshot_save *h;	/* the save it is for */
	const struct ferry_vm *vm;
	int fd;
	bool live;
	struct ferry_wire_stream stream;
	uint8_t *head;			/* HEADER and VCPU records */
	uint64_t head_len;
	uint64_t **populated;		/* per region, at the pause */
	struct snap_plan plan;		/* sums: written by each page's
					 * owner, read after both threads
					 * are done */
	_Atomic uint8_t **state;	/* per region and page: save_state,
					 * claimed by compare-and-swap */
	uint8_t *sweep_buf, *fault_buf;	/* SAVE_CHUNK each, one per thread */

	/* live */
	struct uffdmem um;		/* guest memory, registered WP */
	struct faultsvc *svc;		/* the fault thread, its failure */
	int plan_fd;			/* eventfd: the plan is made */
	/*
	 * The fault thread's own: the plan seen, writes held before it and
	 * runs it copied out for them (early_pool: SAVE_EARLY_RUNS runs of
	 * SAVE_NEAR, allocated before the pause).
	 */
	bool planned;
	struct early_write *early;
	size_t nr_early, early_cap;
	struct early_run early_runs[SAVE_EARLY_RUNS];
	size_t nr_early_runs;
	uint8_t *early_pool;
	/*
	 * Where the guest writes: the fault thread stores the page after
	 * each run it saved in hint[hint_gen % SAVE_HINTS], then bumps
	 * hint_gen (release); the sweep saves ahead of it first.  Hints
	 * only: the sweep checks what it reads.
	 */
	_Atomic uint64_t hint[SAVE_HINTS];
	atomic_uint_fast64_t hint_gen;
	struct held_slot waiting[SAVE_WAITING];

	/* Counters: any thread, relaxed; progress reads them meanwhile. */
	atomic_uint_fast64_t pages, zero_pages, bytes, saved_on_fault,
			     held_writes, held_total_ns;
	atomic_uint_fast64_t nr_planned;	/* pages to save, once planned */
	struct ferry_hist held;		/* the fault thread's */
	struct ferry_hist held_sweep;	/* the sweep's: writes it released */
};

/* A path saved atomically (save_path.c). */
struct save_target {
	char dir[PATH_MAX];
	char base[NAME_MAX + 1];
	char tmp[NAME_MAX + 1];		/* the temporary name in dir */
	int dir_fd;
	int fd;
	bool named;			/* fd has the temporary name */
};

/* A save in flight (save_handle.c). */
struct ferry_snapshot_save {
	struct ferry_vm vm;		/* the caller's, copied */
	void *desc;			/* vm.desc, copied */
	struct ferry_snapshot_opts opts;
	int fd;				/* the file written */
	struct save_target *target;	/* a path's, or NULL */
	struct saver sv;
	uint64_t start_ns;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* Under lock: the thread that saves writes these ... */
	enum ferry_phase phase;
	bool ended;
	int result;
	char reason[400];
	struct ferry_snapshot_stats stats;	/* once ended */
	/* ... and whoever reports progress these: the last sample. */
	uint64_t rate_at_ns, rate_bytes, rate_pages;
	double rate_bps, pages_per_s;	/* < 0: no sample yet */
	/* Any thread. */
	atomic_bool cancel;
	pthread_t worker;		/* its starter's; read after */
	bool has_worker;
};

/* ---- save.c ------------------------------------------------------------- */

/* The save itself, on the calling thread; stats filled either way. */
int saver_run(struct ferry_snapshot_save *h, struct ferry_snapshot_stats *st);

/* Tables and buffers of a save; freed by saver_run. */
void saver_free(struct saver *sv);

/* ---- save_handle.c ------------------------------------------------------ */

/*
 * The save is in this phase now (progress reads it).  Inline, as the
 * next: the saver's steps tell the handle above them.
 */
static inline void save_set_phase(struct ferry_snapshot_save *h,
				  enum ferry_phase phase)
{
	pthread_mutex_lock(&h->lock);
	h->phase = phase;
	pthread_mutex_unlock(&h->lock);
}

/* -ECANCELED with a reason if a cancel was asked, else 0. */
static inline int save_check_cancel(const struct ferry_snapshot_save *h)
{
	if (!atomic_load(&h->cancel))
		return 0;
	return ferry_fail(-ECANCELED, "cancelled");
}

/* ---- save_path.c -------------------------------------------------------- */

/* The file beside path, open for writing: t->fd. */
int save_target_open(struct save_target *t, const char *path);

/* Durable, named, renamed over the target, the directory durable. */
int save_target_publish(struct save_target *t);

/* Close; a file not published is removed. */
void save_target_close(struct save_target *t);

/* ---- save_pages.c ------------------------------------------------------- */

/* Copy pages out of guest memory into buf; -errno with a reason. */
int saver_copy_out(struct ferry_region *r, uint64_t first, uint64_t count,
		   uint8_t *buf);

/* Sum each page of buf into the plan, write the runs not all zero. */
int saver_store_run(struct saver *sv, struct snap_extent *e, uint64_t first,
		    uint64_t count, const uint8_t *buf);

/* ---- save_sweep.c ------------------------------------------------------- */

/* UNSAVED -> SAVING: true when this caller now owns the page. */
bool saver_claim(struct saver *sv, unsigned int region, uint64_t page);

/*
 * Copy claimed pages out; live, then un-protect them (COPIED): from then
 * on the guest may write them, and a write held on them is woken.
 */
int saver_capture(struct saver *sv, unsigned int region, uint64_t first,
		  uint64_t count, uint8_t *buf);

/* Store what saver_capture took (ret: its result): SAVED, or UNSAVED. */
int saver_store(struct saver *sv, struct snap_extent *e, uint64_t first,
		uint64_t count, const uint8_t *buf, int ret);

/* A held write's hold ended: into hist (its thread's) and the totals. */
void saver_count_hold(struct saver *sv, struct ferry_hist *hist,
		      uint64_t held_ns);

/* The key of a page in sv->waiting. */
uint64_t saver_held_key(unsigned int region, uint64_t page);

/* Save every planned page the fault thread has not taken. */
int saver_sweep(struct saver *sv);

/* ---- save_live.c -------------------------------------------------------- */

/* The fault service and the plan's eventfd, made before the pause. */
int saver_make_service(struct saver *sv);

/* Protect all of guest memory (in the pause). */
int saver_arm(struct saver *sv);

/* Start the fault thread (the vCPUs have resumed). */
int saver_start_service(struct saver *sv);

/* Stop it: its failure, with its reason. */
int saver_stop_service(struct saver *sv);

/* Drop every protection left and give THP its huge mappings back. */
void saver_disarm(struct saver *sv);

#endif
