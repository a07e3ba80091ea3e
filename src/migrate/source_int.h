/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_SOURCE_H
#define FERRY_MIGRATE_SOURCE_H

/*
 * The sending side of a live migration, inside: what its files share.
 *
 *   source.c           the flow: set up, handshake, pre-copy, switch
 *                      over, commit, serve, account; pause and recover
 *   source_session.c   one session: its link, its senders, its urgent
 *                      thread; opened and closed once per connection
 *   source_batch.c     a sender's batches of pages, sent as records
 *   source_jobs.c      the sender threads, the jobs the main thread posts
 *                      them, and progress while they run
 *   source_rounds.c    pre-copy: the send maps and the rounds over them
 *   source_pace.c      pre-copy's pace: what each round measured, and
 *                      whether another is worth it
 *   source_switch.c    switchover: pause, stale bitmaps, vCPUs, control
 *                      records, the destination's READY; the VM runs here
 *                      again if that never comes
 *   source_urgent.c    the urgent channel: what the destination says, and
 *                      the answers to its page requests
 *   source_push.c      after the commit: the background push and its end
 *
 * One sender thread per bulk channel.  The main thread hands them jobs (a
 * round: send the pages of a bitmap; a push: send what post-copy still
 * owes) and waits for all of them at the end of each, so it alone writes
 * bulk channel 0's control records, between jobs.  An urgent thread reads
 * everything the destination sends, from the session's start to its end,
 * and answers page requests once the VM is paused.
 *
 *   main        HEADER | wait ACCEPT | round 0 | collect, round 1 | ...
 *               | pause | precopy:  final round, VCPUs, SWITCHOVER,
 *                                   COMPLETE
 *                         postcopy: STALE bitmaps, VCPUs, SWITCHOVER
 *               | wait READY | COMMIT | push job | wait the
 *               destination's COMPLETE | COMPLETE
 *
 * Before the commit, any failure leaves the VM running here.  After it,
 * a failed session pauses the migration: the VM stays paused here, whole,
 * and a new session resumes it (RESUME: the destination's owed pages
 * replace the send maps) or hands it to a new destination (ACCEPT: a
 * pre-copy of the paused VM).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/thread.h"
#include "ferry/dirty.h"
#include "migrate/handle.h"
#include "migrate/link.h"
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
	unsigned int start_gen;		/* the job generation it starts at */
};

/* What the destination answered a HEADER with. */
enum source_reply {
	REPLY_NONE,
	REPLY_ACCEPT,		/* a destination that starts afresh */
	REPLY_RESUME,		/* the one that holds this migration */
};

/* Written by the main thread unless a field says otherwise. */
struct source {
	struct ferry_migration *m;
	const struct ferry_vm *vm;
	const struct ferry_migrate_opts *opts;	/* &m->opts */
	struct ferry_migrate_stats st;		/* published at the end */
	struct ferry_wire_stream stream;	/* set before the first job;
						 * read-only after */
	struct ferry_dirty *dirty;
	uint64_t **send_map;		/* per region: this job's pages; the
					 * main thread fills them between
					 * jobs, senders read (a push takes
					 * bits atomically, as does the
					 * urgent thread) */
	uint64_t **refetch_map;		/* per region: pages the destination
					 * asked again (REFETCH); the urgent
					 * thread ORs, main takes, atomic */
	uint64_t **resume_map;		/* per region: the OWED bitmaps of a
					 * RESUME; the urgent thread writes
					 * before it says REPLY_RESUME */
	bool committed;			/* READY came and COMMIT went: the VM
					 * is never resumed here again */
	bool handover;			/* this session's transfer is of the
					 * VM paused after an earlier commit */
	atomic_bool vm_paused;		/* the vCPUs are paused: the urgent
					 * thread may answer requests */

	/* The session: opened and closed by main, once per connection. */
	struct ferry_session *session;
	struct link link;
	bool session_open;
	unsigned int nr_senders;
	struct sender *senders;
	struct threads sender_threads;	/* started and joined by main */

	/* Jobs: the main thread sets job and bumps gen under lock; each
	 * sender does it once and counts itself into done. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	source_job_fn job;		/* NULL: the senders exit */
	unsigned int gen, done;
	bool live;			/* the VM runs while this job reads */
	unsigned int round;		/* bumped between jobs; senders read */

	/* What the urgent thread heard: it writes under m->lock and
	 * broadcasts m->cond; main waits there. */
	enum source_reply reply;
	bool ready;			/* SWITCHOVER: the destination is
					 * loaded and waits for COMMIT */
	bool dest_complete;		/* COMPLETE: every page is in place */
	uint64_t resume_owed;
	uint32_t owed_bitmaps_left;	/* the urgent thread's own: OWED
					 * bitmaps of a RESUME still to come */

	/* Push hint: the region and page last requested (urgent thread
	 * writes, senders read; relaxed, a hint only). */
	atomic_uint hint_region;
	atomic_uint_fast64_t hint_page, hint_gen;

	/* Counters, any thread, relaxed. */
	atomic_uint_fast64_t pages_sent, zero_pages, pushed, requested,
			     answered_owed, refetched;
	atomic_uint_fast64_t dirty_pages;	/* at the round's start */
	/* Pages owed when this session's serving began, and pushed +
	 * answered_owed then: main writes, progress reads. */
	atomic_uint_fast64_t owed, owed_taken_base;
	atomic_uint_fast64_t rate_bps;	/* progress: the last rate seen */

	/* The urgent thread: reads every record the destination sends. */
	struct ferry_wire_reader urgent_reader;
	struct threads urgent_thread;	/* started and joined by main */
	struct sender *urgent_sender;	/* the urgent thread's batches */
	uint8_t *urgent_buf;		/* and its receive buffer, touched
					 * before the pause */
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

/* ---- source_session.c: one connection ---------------------------------- */

/*
 * Open a session: its link, its senders and its urgent thread.  On
 * failure what was started is stopped again; the session is the
 * caller's to close.
 */
int source_session_open(struct source *src, struct ferry_session *session);

/*
 * Shut it down, join every thread of it, close it if the handle owns it.
 * `ret`: why it ends (0: it did its work); returns the most telling
 * reason any of its threads met, once they all stopped.
 */
int source_session_close(struct source *src, int ret);

/* Send HEADER and wait for what the destination answers: 0 or -errno. */
int source_handshake(struct source *src);

/*
 * Wait until *flag (under m->lock) or the session fails: 0, the link's
 * error, or -ECANCELED.
 */
int source_wait_flag(struct source *src, const bool *flag);

/* ---- source_batch.c: batches of pages ---------------------------------- */

/* Send one encoded record on a bulk writer, counting its bytes. */
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
 * `phase` with `remaining` pages.  0, or the session's first failure.
 */
int source_run_job(struct source *src, source_job_fn job, bool live,
		   enum ferry_phase phase, uint64_t remaining);

/* One progress call, if the caller asked for them. */
void source_notify_progress(struct source *src, enum ferry_phase phase);

/* Pages still owed after the commit, as the source counts them. */
uint64_t source_owed_now(struct source *src);

/* ---- source_rounds.c: pre-copy ----------------------------------------- */

/* A sender's share of a round: its chunks' pages in the send maps. */
int sender_round(struct sender *s, bool live, unsigned int round);

/* Pages set in the send maps. */
uint64_t source_count_maps(struct source *src);

/* The same for the resume maps; and clear them. */
uint64_t source_count_resume(struct source *src);
void source_clear_resume(struct source *src);

void source_clear_maps(struct source *src);

/* Round 0's pages: those that exist.  Holes are never read. */
int source_map_populated(struct source *src);

/*
 * OR into the send maps the pages written since the last protecting
 * collect and those the destination asked for again.  `protect`: protect
 * them again, for another round to see what is written next; else a peek
 * (ferry_dirty_peek), all a decision or the last collect (the vCPUs
 * paused, tracking ends at the commit or with a failure before it)
 * needs.  Returns how many bits were newly set, or -errno.
 */
ssize_t source_map_dirty(struct source *src, bool protect);

/*
 * Protect again the chunks that hold a page in the send maps, a run of
 * them at a time (pages written since the last protecting collect are
 * added), until the deadline (ns; 0: none).  1 when all are, 0 when the
 * deadline came first (the others stay written: the next peek reports
 * them again), or -errno.
 */
int source_protect_maps(struct source *src, uint64_t deadline_ns);

/* One round over the send maps; *bps: how fast it went. */
int source_round(struct source *src, bool live, double *bps);

/* ---- source_pace.c: how many rounds ------------------------------------ */

/*
 * Pre-copy rounds while the VM runs.  Returns the mode to switch over in,
 * with the pages still to send in the send maps.
 */
int source_precopy(struct source *src, enum ferry_mode *switch_mode);

/* ---- source_switch.c: switchover --------------------------------------- */

/* One COMPLETE record on every bulk channel: the senders are idle. */
int source_send_complete(struct source *src);

/*
 * Pause and switch over in `mode`, until the destination says it is
 * ready; if it never does, the VM runs here again (or, in a handover,
 * stays paused as it was).  *pause_ns: when the vCPUs paused.
 */
int source_switchover(struct source *src, enum ferry_mode mode,
		      uint64_t *pause_ns);

/* ---- source_urgent.c: the urgent channel ------------------------------- */

/*
 * Start the thread that reads the urgent channel until the session ends
 * (any failure of it fails the link); stop joins it, so end the session
 * (link_fail, or shut it down) first.
 */
int source_start_urgent(struct source *src);
void source_stop_urgent(struct source *src);

/* ---- source_push.c: after the commit ----------------------------------- */

/* A sender's share of the push: every owed page of its chunks. */
int sender_push(struct sender *s, bool live, unsigned int round);

/*
 * Push what is owed while the urgent thread answers requests, until the
 * destination confirms every page; then COMPLETE everywhere.  `postcopy`:
 * pages are owed (progress says post-copy); else pre-copy sent them all
 * and this only waits for the confirmation.
 */
int source_serve(struct source *src, bool postcopy);

#endif
