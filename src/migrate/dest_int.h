/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_DEST_H
#define FERRY_MIGRATE_DEST_H

/*
 * The receiving side of a live migration, inside: what its files share.
 *
 *   dest.c          the flow: set up, switch over, serve; pause and
 *                   resume after the commit; fail closed; tear down
 *   dest_session.c  one session: its link, its receivers, the HEADER it
 *                   starts with and the answer to it (ACCEPT, RESUME,
 *                   ERROR), and the urgent writer's requests
 *   dest_recv.c     the receivers: one thread per channel, its records,
 *                   and what to do with a page that fails its check
 *   dest_switch.c   switchover and post-copy: vCPUs, READY, COMMIT,
 *                   resume, the pages still owed, the end
 *
 * One receiver thread per bulk channel stores pages as they come (pwrite
 * into the memfd: no page faults) and collects what channel 0 carries for
 * the switchover (stale bitmaps, vCPU states); the urgent channel's
 * receiver takes heartbeats, COMMIT and the replies to page requests.
 * Each bulk receiver reports when its channel reaches SWITCHOVER; once
 * all have, everything sent before the pause is in, and the main thread
 * switches over:
 *
 *   pre-copy   fetch the pages that failed their check, load the vCPUs,
 *              READY, wait for COMMIT, resume, COMPLETE
 *   post-copy  stale and failed pages become owed, fault service starts,
 *              load the vCPUs, READY, wait for COMMIT, resume, ask for
 *              the failed pages; replies come on the urgent channel,
 *              pushed pages on the bulk ones; when every page is in
 *              place, unregister, collapse THP, COMPLETE
 *
 * Before COMMIT the vCPUs never ran: any failure discards the VM.  After
 * it a failed session pauses (faulting vCPUs wait in the kernel, the
 * page states stay); only a cancel, the pause deadline or a failure of
 * this side's own machinery ends it, and then the vCPUs are stopped
 * before userfaultfd registration is touched (fail closed).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/thread.h"
#include "ferry/pagefaults.h"
#include "migrate/handle.h"
#include "migrate/link.h"
#include "migrate/migrate.h"
#include "migrate/refetch.h"

struct dest;

/* One channel's receiver.  The main thread sets it up; once its thread
 * runs, that thread alone writes it, and the main thread reads it after
 * the join. */
struct receiver {
	struct dest *d;
	struct ferry_chan *chan;
	struct ferry_wire_reader reader;
	uint8_t *buf;			/* touched before anything is
					 * timed */
	bool urgent;
	bool bulk0;
	bool switched;			/* passed SWITCHOVER: what follows
					 * is fresh */
	uint64_t bytes;
	uint64_t installed;		/* pages */
	uint64_t installed_bytes;
	struct ferry_pagefaults faults;	/* this thread's page faults */
};

/* A vCPU's state from the stream; bulk channel 0's receiver writes it
 * before SWITCHOVER, the main thread reads it after. */
struct vcpu_slot {
	bool seen;
	uint32_t mp_state;
	uint32_t len;
	uint8_t *regs;
};

/* Figures that outlive a session's receivers: the main thread adds each
 * session's in when it closes. */
struct dest_totals {
	uint64_t bytes, installed, installed_bytes, faults;
};

/* Written by the main thread unless a field says otherwise. */
struct dest {
	struct ferry_migration *m;
	const struct ferry_dest_ops *ops;
	void *ops_arg;
	const struct ferry_migrate_opts *opts;	/* &m->opts */
	struct ferry_migrate_stats st;		/* published at the end */
	struct ferry_wire_stream stream;	/* main, before receivers run */
	uint8_t *desc;			/* stream.desc points here */
	struct ferry_vm vm;
	bool vm_created;
	bool running;			/* resumed after COMMIT: the vCPUs
					 * are the VM's truth now */
	bool complete;			/* every page in place, COMPLETE
					 * sent */
	atomic_bool all_in;		/* every page in place: main sets it
					 * before fault service ends, and the
					 * receivers drop what still comes */
	struct postcopy *pc;		/* created with the VM */
	uint64_t **stale;		/* per region: bulk channel 0's
					 * receiver ORs BITMAP records in
					 * before SWITCHOVER */
	struct refetch rf;		/* pages whose copy failed; any
					 * receiver marks and clears */
	struct vcpu_slot *vcpus;
	enum ferry_wire_switch_mode mode;	/* set by the receivers at
						 * SWITCHOVER, under lock */
	struct dest_totals totals;

	/* The session: opened and closed by main, once per connection. */
	struct ferry_session *session;
	bool session_open;
	struct link link;
	unsigned int nr_receivers;
	struct receiver *receivers;	/* bulk channels */
	struct receiver urgent;
	struct threads threads;		/* every receiver */

	/* The receivers say, under m->lock (broadcasting m->cond): how
	 * many bulk channels reached SWITCHOVER and ended, and COMMIT. */
	unsigned int nr_switched, nr_ended;
	bool ready_sent;		/* main: READY went; COMMIT may come */
	bool got_commit;
	pthread_mutex_t stats_lock;	/* torn_pages: any receiver */

	/*
	 * Requests: the fault thread's and main's, sent while a session is
	 * open (requests_on), only recorded while none is (the next one
	 * asks again).
	 */
	pthread_mutex_t req_lock;
	bool requests_on;		/* under req_lock */
	uint64_t next_request_id;	/* under req_lock */
};

/* ---- dest_session.c: one connection ------------------------------------- */

/* Open a session: its link and receivers' buffers.  Closes on failure. */
int dest_session_open(struct dest *d, struct ferry_session *session);

/*
 * Start the bulk receivers (the urgent one runs from the open on);
 * `switched`: the channels carry what follows a SWITCHOVER (a resumed
 * session).
 */
int dest_session_start_bulk(struct dest *d, bool switched);

/*
 * Shut it down, join its threads, add its figures in, close it.  `ret`:
 * why it ends (0: it did its work); returns the most telling reason any
 * of its threads met, once they all stopped.
 */
int dest_session_close(struct dest *d, int ret);

/*
 * The first session's HEADER: decoded and checked into d->stream.  0 or
 * -errno with a reason (the caller tells the source).
 */
int dest_read_header(struct dest *d);

/*
 * A later session's HEADER: it must be this migration's.  0, or -errno
 * with a reason the source hears too.
 */
int dest_check_rejoin(struct dest *d);

/* Say ACCEPT / RESUME (and what is owed) on the urgent channel. */
int dest_send_accept(struct dest *d);
int dest_send_resume(struct dest *d);

/* Say why we give up, best effort: the channel may be what broke. */
void dest_tell_source(struct dest *d, int err);

/* ---- dest_request.c: page requests -------------------------------------- */

/* Ask the source for a page: sent now, or recorded for the next session. */
int dest_request(void *arg, unsigned int region, uint64_t page);

/* Requests go out (a session is open and ready) or are only recorded. */
void dest_requests_on(struct dest *d, bool on);

/* ---- dest_recv.c: receivers --------------------------------------------- */

/* Start rv's thread on chan: it receives until its channel ends or fails. */
int dest_start_receiver(struct dest *d, struct receiver *rv,
			struct ferry_chan *chan, bool urgent);

/* Wait until every bulk channel is at SWITCHOVER, or the session failed. */
int dest_wait_switchover(struct dest *d);

/*
 * Wait until *flag (under m->lock), the session fails or a cancel:
 * 0, the link's error, or -ECANCELED.
 */
int dest_wait_flag(struct dest *d, const bool *flag);

/* ---- dest_switch.c: switchover and post-copy ---------------------------- */

/*
 * While pre-copy runs: post-copy's threads, ready to start at the
 * switchover without starting threads in the downtime.  Best effort.
 */
void dest_prepare_postcopy(struct dest *d);

/*
 * Every channel is at SWITCHOVER: load the vCPUs, READY, wait for COMMIT,
 * resume.  0 once the vCPUs run here.
 */
int dest_switchover(struct dest *d);

/* After the commit: until every page is in place, then COMPLETE. */
int dest_serve(struct dest *d);

/*
 * The migration ends here without the VM: stop the vCPUs if they ever
 * ran, before userfaultfd registration is touched, then tear post-copy
 * down.  The caller discards.
 */
void dest_fail_closed(struct dest *d);

#endif
