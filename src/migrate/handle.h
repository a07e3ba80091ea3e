/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_HANDLE_H
#define FERRY_MIGRATE_HANDLE_H

/*
 * handle: a migration in flight, the part both sides share.  The flow
 * (source.c, dest.c) runs on one thread, the worker: ferry's own for
 * ferry_migrate_start*(), the caller's for the blocking wrappers.  Any
 * other thread talks to it through the handle: under `lock`, it asks
 * (cancel, post-copy now, a new session) and the worker answers (phase,
 * pause, the end); `cond` is broadcast on every change, and the flow's
 * own waits on its session's events wait on it too.
 *
 *   worker                                 any thread
 *   mig_session_use(s)  ─── current ───▶  ferry_migrate_cancel():
 *                                           cancel, shut `current` down
 *   mig_pause_wait()    ◀── pending ────  ferry_migrate_reconnect(s)
 *   mig_end(ret)        ─── ended ──────▶  ferry_migrate_wait()
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry/migrate.h"
#include "migrate/ratelimit.h"

struct link;

/* What only the flow knows, for progress and the destination's VM. */
struct mig_flow_ops {
	/* Fill the flow's own fields of a progress report (under lock). */
	void (*progress)(struct ferry_migration *m, struct ferry_progress *p);
	/* Free the flow.  Called once, after the worker ended. */
	void (*destroy)(struct ferry_migration *m);
};

struct ferry_migration {
	bool source;
	struct ferry_migrate_opts opts;		/* a copy, defaults filled */
	const struct mig_flow_ops *ops;
	void *flow;				/* struct source or dest */
	int (*run)(struct ferry_migration *m);	/* the flow, on the worker */
	/* The blocking wrappers: nobody can reconnect, so a pause ends the
	 * flow; and the first session stays the caller's. */
	bool blocking;
	struct ferry_session *first;		/* the one start was given */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* Under lock.  The worker writes these ... */
	enum ferry_phase phase;
	enum ferry_vm_location location;
	unsigned int round;
	bool paused, ended;
	int result;
	char reason[400];
	struct ferry_session *current;		/* in use; cancel shuts it */
	struct link *link;			/* current's; NULL between */
	uint64_t paused_at_ns;
	/* ... and other threads these. */
	bool cancel, postcopy_now;
	struct ferry_session *pending;		/* posted by reconnect */

	/* The worker's figures, any reader, relaxed. */
	atomic_uint_fast64_t bytes_sent, bytes_received;
	/* Under lock: the flow's figures as it last published them, and
	 * the handle's own (total_ns, sessions, pauses, paused_ns). */
	struct ferry_migrate_stats stats;
	struct ratelimit rl;			/* source: the bulk limit */
	uint64_t start_ns;
	pthread_t worker;
	bool has_worker;
};

/* A handle with opts (NULL: defaults) copied and filled in. */
int mig_create(bool source, const struct ferry_migrate_opts *opts,
	       struct ferry_migration **out);

/* Free it (the worker is joined and the flow freed first). */
void mig_free(struct ferry_migration *m);

/* Run m->run on a worker thread of ferry's. */
int mig_start_worker(struct ferry_migration *m);

/*
 * The flow's end: record result and reason, the phase and the event,
 * wake the waiters.  Returns ret.
 */
int mig_end(struct ferry_migration *m, int ret);

/* An event to the caller's callback, if any. */
void mig_event(struct ferry_migration *m, enum ferry_migrate_event_kind kind,
	       int err, uint64_t owed);

void mig_set_phase(struct ferry_migration *m, enum ferry_phase phase);
void mig_set_location(struct ferry_migration *m,
		      enum ferry_vm_location location);

/*
 * The session the flow uses from now on (NULL: none), and its link: a
 * cancel shuts it down.  If a cancel came first, shuts it down at once.
 */
void mig_session_use(struct ferry_migration *m, struct ferry_session *s,
		     struct link *link);

/* Was a cancel asked?  (Lock not held.) */
bool mig_cancelled(struct ferry_migration *m);

/* Take a post-copy-now request (true once per request). */
bool mig_take_postcopy_now(struct ferry_migration *m);

/*
 * Paused: tell the caller (event, progress) and wait for a session from
 * ferry_migrate_reconnect(), a cancel or the pause deadline.  0 with
 * *session set (the handle's), or -ECANCELED / -ETIMEDOUT with a reason.
 * `owed`: the pages this side knows are not in place, for the report.
 */
int mig_pause_wait(struct ferry_migration *m, int err, uint64_t owed,
		   struct ferry_session **session);

/* The cancel error with its reason ("cancelled (what that means)"). */
int mig_cancel_error(struct ferry_migration *m, const char *where);

/* The flow's figures, for ferry_migrate_get_stats(). */
void mig_publish_stats(struct ferry_migration *m,
		       const struct ferry_migrate_stats *st);

/* Close a session the handle owns; the caller's first one stays. */
void mig_session_close(struct ferry_migration *m, struct ferry_session *s);

/*
 * The flow waits for an answer from its peer: until cond(arg) holds
 * (under m->lock), the session `l` ends or a cancel comes.  0, -ECANCELED,
 * or the session's error.
 */
int mig_wait_until(struct ferry_migration *m, struct link *l,
		   bool (*cond)(const void *arg), const void *arg);

/* Fill what every report carries (lock not held). */
void mig_fill_progress(struct ferry_migration *m, struct ferry_progress *p);

#endif
