/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_SOURCE_H
#define FERRY_MIGRATE_SOURCE_H

/*
 * The sending side of a live migration, inside: what its files share.
 *
 *   source.c           the flow: set up, pre-copy, switch over, account
 *   source_batch.c     a sender's batches of pages, sent as records
 *   source_jobs.c      the sender threads, the jobs the main thread posts
 *                      them, and progress while they run
 *   source_rounds.c    pre-copy: the send maps and the rounds over them
 *   source_switch.c    switchover: pause, stale bitmaps, vCPUs, control
 *                      records; the VM runs here again if it fails
 *   source_urgent.c    the urgent channel: the destination's replies and
 *                      the thread that answers its page requests
 *   source_push.c      post-copy: the background push and its end
 *
 * One sender thread per bulk channel.  The main thread hands them jobs (a
 * round: send the pages of a bitmap; a push: send what post-copy still
 * owes) and waits for all of them at the end of each, so it alone writes
 * bulk channel 0's control records, between jobs.  In post-copy an urgent
 * thread answers page requests.
 *
 *   main        HEADER | round 0 | collect, round 1 | ... | pause
 *               precopy:  final round, VCPUs, SWITCHOVER, COMPLETE
 *               postcopy: STALE bitmaps, VCPUs, SWITCHOVER | wait resume
 *                         | push job + urgent thread | COMPLETE
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/thread.h"
#include "ferry/dirty.h"
#include "migrate/migrate.h"

struct sender;

/*
 * A job: one sender's share of a round or of the push.  The layer that
 * posts a job names its work, so the sender threads know no job kind.
 */
typedef int (*source_job_fn)(struct sender *s, bool live,
			     unsigned int round);

struct source;

/* One thread's batches of pages: a bulk channel's, or the urgent one's.
 * Only that thread touches it, but for the main thread between jobs. */
struct sender {
	struct source *src;
	unsigned int idx;		/* its bulk channel */
	struct ferry_wire_writer writer;
	struct ferry_wire_frame frame;
	uint32_t data_index[FERRY_WIRE_MAX_PAGES];
	uint32_t zero_index[FERRY_WIRE_MAX_ZERO];
	uint32_t nr_data, nr_zero, batch_region;
};

/* Written by the main thread unless a field says otherwise. */
struct source {
	const struct ferry_vm *vm;
	struct ferry_session *session;
	const struct ferry_migrate_opts *opts;
	struct ferry_migrate_stats *stats;
	struct ferry_wire_stream stream;	/* set before the first job;
						 * read-only after */
	struct ferry_dirty *dirty;
	uint64_t **send_map;		/* per region: this job's pages; the
					 * main thread fills them between
					 * jobs, senders read (a push takes
					 * bits atomically, as does the
					 * urgent thread) */
	unsigned int nr_senders;
	struct sender *senders;
	struct threads sender_threads;	/* started and joined by main */
	struct err_slot sender_err;	/* the first job that failed */

	/* Jobs: the main thread sets job and bumps gen under lock; each
	 * sender does it once and counts itself into done. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	source_job_fn job;		/* NULL: the senders exit */
	unsigned int gen, done;
	bool live;			/* the VM runs while this job reads */
	unsigned int round;		/* bumped between jobs; senders read */

	/* Push hint: the region and page last requested (urgent thread
	 * writes, senders read; relaxed, a hint only). */
	atomic_uint hint_region;
	atomic_uint_fast64_t hint_page, hint_gen;

	/* Counters, any thread, relaxed. */
	atomic_uint_fast64_t bytes_sent, pages_sent, zero_pages, pushed,
			     requested, answered_owed;
	uint64_t owed;			/* pages owed when post-copy began */
	double rate_bps;		/* progress: the last rate seen */

	/* Urgent channel.  The main thread reads it until the destination
	 * confirms, then the urgent thread until it is joined; the urgent
	 * thread writes answers, then the main thread the last COMPLETE. */
	struct ferry_wire_reader urgent_reader;
	struct ferry_wire_writer urgent_writer;
	struct threads urgent_thread;	/* started and joined by main */
	struct err_slot urgent_err;	/* why the urgent thread stopped */
	struct sender *urgent_sender;	/* the urgent thread's batches */
	uint8_t *urgent_buf;		/* and its receive buffer, touched
					 * before the pause */
	uint8_t *main_buf;		/* the main thread's urgent receive
					 * buffer */
	uint64_t start_ns;
};

/*
 * Where the source reads guest memory: the guest view, not the alias.  The
 * pages it sends exist and the guest has them mapped there already, while
 * the alias is mapped by nobody yet: reading through it would take a page
 * fault per 64 KiB (fault-around), which costs a third of the stream's
 * throughput here.  Reads do not disturb dirty tracking: async
 * write-protect only notes writes.
 */
static inline const uint8_t *source_view(const struct ferry_region *r)
{
	return r->guest;
}

/* ---- source_batch.c: batches of pages ---------------------------------- */

/* Send one encoded record on w, counting its bytes. */
int source_send_frame(struct source *src, struct ferry_wire_writer *w,
		      struct ferry_wire_frame *f);

/*
 * Send what s has batched on w: its data pages, then its zero pages, as
 * answers to request_id (0: pushed).
 */
int sender_flush_to(struct sender *s, struct ferry_wire_writer *w, bool live,
		    uint64_t request_id);

/* The same on s's own bulk channel, answering nothing. */
int sender_flush(struct sender *s, bool live);

/* Chunks of a region: the unit a bulk channel owns (see migrate.h). */
uint64_t source_nr_chunks(const struct ferry_region *r);
bool sender_owns_chunk(const struct sender *s, unsigned int region,
		       uint64_t chunk);

/*
 * Batch the pages of one chunk whose bits are set in the send map (take:
 * clear them, atomically, and count them pushed).
 */
int sender_send_chunk(struct sender *s, unsigned int region, uint64_t chunk,
		      bool take, bool live);

/* ---- source_jobs.c: sender threads and their jobs ---------------------- */

int source_start_senders(struct source *src);
void source_stop_senders(struct source *src);

/*
 * Post a job to every sender and wait for all, reporting progress in
 * `phase` with `remaining` pages.  0, or the first sender's failure.
 */
int source_run_job(struct source *src, source_job_fn job, bool live,
		   enum ferry_phase phase, uint64_t remaining);

/* One progress call, if the caller asked for them. */
void source_notify_progress(struct source *src, enum ferry_phase phase);

/* ---- source_rounds.c: pre-copy ----------------------------------------- */

/* A sender's share of a round: its chunks' pages in the send maps. */
int sender_round(struct sender *s, bool live, unsigned int round);

/* Pages set in the send maps. */
uint64_t source_count_maps(struct source *src);

/* Round 0's pages: those that exist.  Holes are never read. */
int source_map_populated(struct source *src);

/* OR the pages written since the last collect into the send maps. */
int source_map_dirty(struct source *src);

/* One round over the send maps; *bps: how fast it went. */
int source_round(struct source *src, bool live, double *bps);

/*
 * Pre-copy rounds while the VM runs.  Returns the mode to switch over in,
 * with the pages still to send in the send maps.
 */
int source_precopy(struct source *src, enum ferry_mode *switch_mode);

/* ---- source_switch.c: switchover --------------------------------------- */

/* One COMPLETE record on every bulk channel: the senders are idle. */
int source_send_complete(struct source *src);

/*
 * Pause and switch over in `mode`, until the destination confirms it runs
 * the VM; if it never does, the VM runs here again.  *downtime_ns: how
 * long the vCPUs were paused.
 */
int source_switchover(struct source *src, enum ferry_mode mode,
		      uint64_t *downtime_ns);

/* ---- source_urgent.c: the urgent channel ------------------------------- */

/* Wait for the destination's SWITCHOVER: it runs the VM. */
int source_wait_resumed(struct source *src);

/*
 * The channels broke (err): if the destination said why on the urgent
 * channel before it closed, that is the reason to give.
 */
int source_peer_reason(struct source *src, int err);

/*
 * Start the thread that answers page requests.  It ends when the
 * destination sends COMPLETE, or fails (into src->urgent_err) and shuts
 * the session down; stop joins it, so shut the session down first to
 * end it early.
 */
int source_start_urgent(struct source *src);
void source_stop_urgent(struct source *src);

/* ---- source_push.c: post-copy ------------------------------------------ */

/* A sender's share of the push: every owed page of its chunks. */
int sender_push(struct sender *s, bool live, unsigned int round);

/* Push the owed pages while the urgent thread serves requests; COMPLETE. */
int source_postcopy(struct source *src);

#endif
