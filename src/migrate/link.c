// SPDX-License-Identifier: MIT
/*
 * link: heartbeats out, the peer watched, and the end of a session (see
 * link.h).  A peer is stalled when, for timeout_ms, nothing came from it
 * at all, or data we sent waited without its heartbeats showing any more
 * of it arriving: a slow peer still moves, a stuck one does not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "migrate/link.h"

static void *heartbeat_main(void *arg);
static void *watchdog_main(void *arg);

int link_start(struct link *l, struct ferry_session *session,
	       const char *peer, unsigned int heartbeat_ms,
	       unsigned int timeout_ms, pthread_mutex_t *lock,
	       pthread_cond_t *cond)
{
	uint64_t now = ferry_clock_now_ns();
	int ret;

	memset(l, 0, sizeof(*l));
	l->session = session;
	l->peer = peer;
	l->heartbeat_ms = heartbeat_ms;
	l->timeout_ms = timeout_ms;
	l->owner_lock = lock;
	l->owner_cond = cond;
	l->threads.stop_fd = -1;
	pthread_mutex_init(&l->send_lock, NULL);
	err_slot_init(&l->err);
	atomic_init(&l->heard_ns, now);
	atomic_init(&l->heartbeat_ns, now);
	ferry_wire_writer_init(&l->urgent_writer, session->urgent);
	ret = threads_init(&l->threads);
	if (!ret)
		ret = threads_start(&l->threads, heartbeat_main, l,
				    "heartbeat");
	if (!ret)
		ret = threads_start(&l->threads, watchdog_main, l, "watchdog");
	if (ret)
		link_fini(l);
	return ret;
}

void link_stop(struct link *l)
{
	threads_stop(&l->threads);
}

void link_fini(struct link *l)
{
	if (!l->session)
		return;
	threads_fini(&l->threads);
	err_slot_fini(&l->err);
	pthread_mutex_destroy(&l->send_lock);
	l->session = NULL;
}

static int send_locked(struct link *l, bool data)
{
	ssize_t n = ferry_wire_send(&l->urgent_writer, &l->frame);

	if (n < 0)
		return (int)n;
	if (data)
		link_sent(l, (uint64_t)n);
	return 0;
}

int link_send(struct link *l,
	      int (*enc)(struct ferry_wire_frame *f, const void *arg),
	      const void *arg)
{
	int ret;

	pthread_mutex_lock(&l->send_lock);
	ret = enc(&l->frame, arg);
	if (!ret)
		ret = send_locked(l, true);
	pthread_mutex_unlock(&l->send_lock);
	return ret ? link_fail(l, ret) : 0;
}

/* The caller holds send_lock. */
static int send_heartbeat(struct link *l)
{
	struct ferry_wire_heartbeat hb = {
		.seq = l->heartbeat_seq++,
		.data_received = atomic_load_explicit(&l->data_received,
						      memory_order_relaxed),
	};
	int ret = ferry_wire_enc_heartbeat(&l->frame, &hb);

	return ret ? ret : send_locked(l, false);
}

int link_heartbeat(struct link *l)
{
	int ret;

	pthread_mutex_lock(&l->send_lock);
	ret = send_heartbeat(l);
	pthread_mutex_unlock(&l->send_lock);
	return ret ? link_fail(l, ret) : 0;
}

void link_sent(struct link *l, uint64_t bytes)
{
	atomic_fetch_add_explicit(&l->data_sent, bytes, memory_order_relaxed);
}

void link_heard(struct link *l, const struct ferry_wire_rec *rec,
		uint64_t bytes)
{
	struct ferry_wire_heartbeat hb;

	atomic_store_explicit(&l->heard_ns, ferry_clock_now_ns(),
			      memory_order_relaxed);
	if (rec->type != FERRY_WIRE_HEARTBEAT) {
		atomic_fetch_add_explicit(&l->data_received, bytes,
					  memory_order_relaxed);
		return;
	}
	if (!ferry_wire_dec_heartbeat(rec, &hb)) {
		atomic_store_explicit(&l->peer_received, hb.data_received,
				      memory_order_relaxed);
		atomic_store_explicit(&l->heartbeat_ns, ferry_clock_now_ns(),
				      memory_order_relaxed);
	}
}

static bool broken(int err);

int link_fail(struct link *l, int err)
{
	bool first;

	/*
	 * A broken connection is most often what the other failure made
	 * (the peer closed on hearing of it): the more telling reason wins,
	 * whichever thread got there first.
	 */
	pthread_mutex_lock(&l->err.lock);
	if (broken(l->err.err) && !broken(err))
		l->err.err = 0;
	pthread_mutex_unlock(&l->err.lock);
	err_slot_set(&l->err, err);	/* before `failed` says to read it */
	first = !atomic_exchange(&l->failed, true);
	if (first) {
		ferry_net_session_shutdown(l->session);
		pthread_mutex_lock(l->owner_lock);
		pthread_cond_broadcast(l->owner_cond);
		pthread_mutex_unlock(l->owner_lock);
	}
	return err_slot_get(&l->err);
}

static bool broken(int err)
{
	/* ETIMEDOUT too: the watchdog's stall shuts the channels down. */
	return err == -EPIPE || err == -ECONNRESET || err == -ETIMEDOUT ||
	       err == -ENOTCONN;
}

int link_peer_said(struct link *l, int err)
{
	pthread_mutex_lock(&l->err.lock);
	if (broken(l->err.err))
		l->err.err = 0;		/* the peer's word wins */
	pthread_mutex_unlock(&l->err.lock);
	return link_fail(l, broken(err) ? -EIO : err);
}

int link_error(struct link *l)
{
	return link_failed(l) ? err_slot_get(&l->err) : 0;
}

uint64_t link_stalled_ns(const struct link *l)
{
	uint64_t now = ferry_clock_now_ns();
	uint64_t heard = atomic_load_explicit(&l->heard_ns,
					      memory_order_relaxed);
	uint64_t waiting = atomic_load_explicit(&l->waiting_since_ns,
						memory_order_relaxed);
	uint64_t silent = now > heard ? now - heard : 0;
	uint64_t stuck = waiting && now > waiting ? now - waiting : 0;
	uint64_t stalled = silent > stuck ? silent : stuck;

	/* A heartbeat or two late is the peer's scheduling, not a stall. */
	return stalled > 2ULL * l->heartbeat_ms * 1000000 ? stalled : 0;
}

/* ---- the threads -------------------------------------------------------- */

static void *heartbeat_main(void *arg)
{
	struct link *l = arg;
	int ret = 0;

	ferry_error_clear();
	sys_thread_boost(SYS_BOOST_URGENT);
	while (!ret && evfd_wait(l->threads.stop_fd, -1,
				 (int)l->heartbeat_ms) == -ETIMEDOUT) {
		pthread_mutex_lock(&l->send_lock);
		ret = send_heartbeat(l);
		pthread_mutex_unlock(&l->send_lock);
	}
	if (ret)
		link_fail(l, ret);
	return NULL;
}

/*
 * Data sent and not yet shown arriving starts the clock; each heartbeat
 * that shows more of it arriving restarts it; all of it arrived stops it.
 * The peer's heartbeats say only what it had when it sent them: when they
 * come late (queued behind data on a slow link) they cannot say it is
 * stuck, and the clock starts again (silence still counts).
 */
static void watch_data(struct link *l, uint64_t now)
{
	uint64_t sent = atomic_load_explicit(&l->data_sent,
					     memory_order_relaxed);
	uint64_t got = atomic_load_explicit(&l->peer_received,
					    memory_order_relaxed);
	uint64_t since = atomic_load_explicit(&l->waiting_since_ns,
					      memory_order_relaxed);
	uint64_t hb = atomic_load_explicit(&l->heartbeat_ns,
					   memory_order_relaxed);
	bool fresh = now < hb + 2ULL * l->heartbeat_ms * 1000000;

	if (got >= sent)
		since = 0;
	else if (!since || got != l->last_peer_received || !fresh)
		since = now;
	l->last_peer_received = got;
	atomic_store_explicit(&l->waiting_since_ns, since,
			      memory_order_relaxed);
}

static void *watchdog_main(void *arg)
{
	struct link *l = arg;

	ferry_error_clear();
	sys_thread_boost(SYS_BOOST_URGENT);
	while (evfd_wait(l->threads.stop_fd, -1, (int)l->heartbeat_ms) ==
	       -ETIMEDOUT && !link_failed(l)) {
		uint64_t stalled;

		watch_data(l, ferry_clock_now_ns());
		stalled = link_stalled_ns(l);
		if (stalled < (uint64_t)l->timeout_ms * 1000000)
			continue;
		link_fail(l, ferry_fail(-ETIMEDOUT, "%s showed no progress "
					"for %.1f s (stalled, or the link is "
					"down)", l->peer,
					(double)stalled / 1e9));
		break;
	}
	return NULL;
}
