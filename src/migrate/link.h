/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_LINK_H
#define FERRY_MIGRATE_LINK_H

/*
 * link: one session of a migration as a thing that is alive or not.
 *
 * Both sides run the same two threads per session:
 *
 *   heartbeat  every heartbeat_ms, a HEARTBEAT on the urgent channel that
 *              says how many bytes of other records arrived here, so the
 *              peer can tell a slow reader from a stuck one
 *   watchdog   every heartbeat_ms, looks at the peer: nothing heard from
 *              it at all, or data sent that its heartbeats (coming on
 *              time: late ones say nothing) do not show arriving, for
 *              timeout_ms, and the peer is stalled
 *
 * A stalled peer (a SIGSTOPped process, whose kernel still acknowledges
 * TCP), a broken channel, or any thread of the session that fails ends
 * the session the same way: link_fail() keeps the first reason, shuts
 * every channel down (which wakes whatever sits in I/O on it, sends
 * included) and wakes the owner.  What ending a session means (fail,
 * pause) is the owner's to decide; the link only says it ended, and why.
 *
 * The urgent channel's writer lives here too: the heartbeat thread, the
 * fault thread's requests, answers and control records all send on it,
 * one record at a time under send_lock.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/thread.h"
#include "ferry/net.h"
#include "ferry/wire.h"

struct link {
	struct ferry_session *session;	/* set by start, then read-only */
	const char *peer;		/* "the destination", in reasons */
	unsigned int heartbeat_ms, timeout_ms;
	/* The owner's lock and condition, broadcast when the link fails. */
	pthread_mutex_t *owner_lock;
	pthread_cond_t *owner_cond;

	pthread_mutex_t send_lock;	/* the urgent writer and frame */
	struct ferry_wire_writer urgent_writer;
	struct ferry_wire_frame frame;
	uint64_t heartbeat_seq;		/* under send_lock */

	struct threads threads;		/* heartbeat and watchdog */
	struct err_slot err;		/* the session's first failure */
	atomic_bool failed;		/* any thread; set once */

	/* Any thread, relaxed: bytes of records other than HEARTBEAT. */
	atomic_uint_fast64_t data_sent, data_received;
	/* Any receiving thread: when the peer was last heard (ns), when its
	 * last heartbeat came, and the data_received that heartbeat said. */
	atomic_uint_fast64_t heard_ns, heartbeat_ns, peer_received;
	/* The watchdog's: since when data sent has waited (0: none). */
	atomic_uint_fast64_t waiting_since_ns;
	uint64_t last_peer_received;	/* watchdog only */
};

/*
 * Start the session's heartbeat and watchdog.  `lock`/`cond`: what to
 * broadcast on failure.  0, or -errno with a reason (nothing started).
 */
int link_start(struct link *l, struct ferry_session *session,
	       const char *peer, unsigned int heartbeat_ms,
	       unsigned int timeout_ms, pthread_mutex_t *lock,
	       pthread_cond_t *cond);

/*
 * Stop and join both threads.  The session stays open.  Idempotent.  The
 * heartbeat thread may sit in a send to a peer that reads no more: shut
 * the session down first (link_fail() does, or ferry_net_session_shutdown
 * once the last record is out).
 */
void link_stop(struct link *l);

/* Stop, and release what start made.  A zeroed link is fine. */
void link_fini(struct link *l);

/*
 * Encode with enc(frame, arg) and send on the urgent channel, counted as
 * data.  0, or -errno (the link has failed with it).
 */
int link_send(struct link *l,
	      int (*enc)(struct ferry_wire_frame *f, const void *arg),
	      const void *arg);

/*
 * A HEARTBEAT now, besides the periodic ones: it tells the peer at once
 * how much of what it sent has arrived (the destination says so at each
 * ROUND_END, which the source waits for before it pauses).  0, or -errno
 * (the link has failed with it).  Any thread.
 */
int link_heartbeat(struct link *l);

/*
 * What the peer's heartbeats show arrived there: compare with data_sent.
 * Any thread.
 */
static inline uint64_t link_peer_received(const struct link *l)
{
	return atomic_load_explicit(&l->peer_received, memory_order_relaxed);
}

/* What a frame that was sent elsewhere cost, for the peer's reports. */
void link_sent(struct link *l, uint64_t bytes);

/* A record of `bytes` came from the peer, on any channel. */
void link_heard(struct link *l, const struct ferry_wire_rec *rec,
		uint64_t bytes);

/*
 * End the session: keep err and this thread's reason unless something
 * failed first, shut every channel down, wake the owner.  Returns the
 * first failure (which may be an earlier one).  Any thread.
 */
int link_fail(struct link *l, int err);

/*
 * The peer said why it gives up (an ERROR record).  That is the reason
 * to report even when the channels broke first, as they do when the
 * peer closes right after saying it: it replaces a broken-connection
 * error, and otherwise works as link_fail().
 */
int link_peer_said(struct link *l, int err);

/* Has the session ended? */
static inline bool link_failed(const struct link *l)
{
	return atomic_load_explicit(&l->failed, memory_order_acquire);
}

/* 0, or the session's first failure with its reason recorded again. */
int link_error(struct link *l);

/* How long the peer has shown no progress, ns (0: it shows some). */
uint64_t link_stalled_ns(const struct link *l);

#endif
