// SPDX-License-Identifier: MIT
/*
 * handle: a migration in flight (see handle.h), and the public calls on
 * it that do not depend on the side.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "ferry/clock.h"
#include "migrate/handle.h"
#include "migrate/link.h"

#define DEFAULT_TIMEOUT_MS	10000
#define DEFAULT_HEARTBEAT_MS	250

static const char *const location_names[] = {
	[FERRY_VM_HERE] = "here",
	[FERRY_VM_SPLIT] = "split",
	[FERRY_VM_THERE] = "there",
};

static const char *const event_names[] = {
	[FERRY_EVENT_SWITCHOVER] = "switchover",
	[FERRY_EVENT_DEST_RUNNING] = "destination running",
	[FERRY_EVENT_PAUSED] = "paused",
	[FERRY_EVENT_RESUMED] = "resumed",
	[FERRY_EVENT_DONE] = "done",
	[FERRY_EVENT_FAILED] = "failed",
};

const char *ferry_migrate_location_name(enum ferry_vm_location location)
{
	return (unsigned int)location <= FERRY_VM_THERE ?
	       location_names[location] : "?";
}

const char *ferry_migrate_event_name(enum ferry_migrate_event_kind kind)
{
	return (unsigned int)kind <= FERRY_EVENT_FAILED ? event_names[kind] :
							  "?";
}

/* ---- life --------------------------------------------------------------- */

int mig_create(bool source, const struct ferry_migrate_opts *opts,
	       struct ferry_migration **out)
{
	struct ferry_migration *m = calloc(1, sizeof(*m));

	if (!m)
		return ferry_fail(-ENOMEM, "out of memory");
	m->source = source;
	if (opts)
		m->opts = *opts;
	else
		ferry_migrate_opts_init(&m->opts);
	if (!m->opts.timeout_ms)
		m->opts.timeout_ms = DEFAULT_TIMEOUT_MS;
	if (!m->opts.heartbeat_ms)
		m->opts.heartbeat_ms = DEFAULT_HEARTBEAT_MS;
	if (!m->opts.progress_ms)
		m->opts.progress_ms = 100;
	m->location = source ? FERRY_VM_HERE : FERRY_VM_THERE;
	m->start_ns = ferry_clock_now_ns();
	m->stats.sessions = 1;
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	ratelimit_init(&m->rl, m->opts.bandwidth_bps);
	*out = m;
	return 0;
}

void mig_free(struct ferry_migration *m)
{
	if (m->has_worker)
		pthread_join(m->worker, NULL);
	if (m->ops && m->flow)
		m->ops->destroy(m);
	if (m->pending)
		mig_session_close(m, m->pending);
	ratelimit_fini(&m->rl);
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

static void *worker_main(void *arg)
{
	struct ferry_migration *m = arg;

	ferry_error_clear();
	m->run(m);
	return NULL;
}

int mig_start_worker(struct ferry_migration *m)
{
	int ret = -pthread_create(&m->worker, NULL, worker_main, m);

	if (ret)
		return ferry_fail(ret, "starting the migration thread: %s",
				  strerror(-ret));
	m->has_worker = true;
	return 0;
}

void mig_event(struct ferry_migration *m, enum ferry_migrate_event_kind kind,
	       int err, uint64_t owed)
{
	struct ferry_migrate_event ev = {
		.kind = kind, .err = err, .owed = owed,
		.reason = err ? ferry_error_msg() : "",
		.location = ferry_migrate_vm_location(m),
	};

	if (m->opts.event)
		m->opts.event(&ev, m->opts.event_arg);
}

int mig_end(struct ferry_migration *m, int ret)
{
	char reason[sizeof(m->reason)];

	snprintf(reason, sizeof(reason), "%s", ret ? ferry_error_msg() : "");
	pthread_mutex_lock(&m->lock);
	m->phase = ret ? FERRY_PHASE_FAILED : FERRY_PHASE_DONE;
	m->result = ret;
	snprintf(m->reason, sizeof(m->reason), "%s", reason);
	m->paused = false;
	m->current = NULL;
	m->link = NULL;
	m->stats.total_ns = ferry_clock_now_ns() - m->start_ns;
	pthread_mutex_unlock(&m->lock);
	mig_event(m, ret ? FERRY_EVENT_FAILED : FERRY_EVENT_DONE, ret, 0);
	pthread_mutex_lock(&m->lock);
	m->ended = true;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	if (ret)
		ferry_fail(ret, "%s", reason);
	return ret;
}

void mig_set_phase(struct ferry_migration *m, enum ferry_phase phase)
{
	pthread_mutex_lock(&m->lock);
	m->phase = phase;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
}

void mig_set_location(struct ferry_migration *m,
		      enum ferry_vm_location location)
{
	pthread_mutex_lock(&m->lock);
	m->location = location;
	pthread_mutex_unlock(&m->lock);
}

void mig_session_use(struct ferry_migration *m, struct ferry_session *s,
		     struct link *link)
{
	pthread_mutex_lock(&m->lock);
	m->current = s;
	m->link = link;
	if (s && m->cancel)
		ferry_net_session_shutdown(s);
	pthread_mutex_unlock(&m->lock);
}

void mig_session_close(struct ferry_migration *m, struct ferry_session *s)
{
	if (s && !(m->blocking && s == m->first))
		ferry_net_session_close(s);
}

void mig_publish_stats(struct ferry_migration *m,
		       const struct ferry_migrate_stats *st)
{
	pthread_mutex_lock(&m->lock);
	{
		struct ferry_migrate_stats own = m->stats;

		m->stats = *st;
		m->stats.total_ns = own.total_ns;
		m->stats.sessions = own.sessions;
		m->stats.pauses = own.pauses;
		m->stats.paused_ns = own.paused_ns;
	}
	pthread_mutex_unlock(&m->lock);
}

bool mig_cancelled(struct ferry_migration *m)
{
	bool c;

	pthread_mutex_lock(&m->lock);
	c = m->cancel;
	pthread_mutex_unlock(&m->lock);
	return c;
}

bool mig_take_postcopy_now(struct ferry_migration *m)
{
	bool now;

	pthread_mutex_lock(&m->lock);
	now = m->postcopy_now;
	m->postcopy_now = false;
	pthread_mutex_unlock(&m->lock);
	return now;
}

int mig_cancel_error(struct ferry_migration *m, const char *where)
{
	(void)m;
	return ferry_fail(-ECANCELED, "cancelled (%s)", where);
}

int mig_wait_until(struct ferry_migration *m, struct link *l,
		   bool (*cond)(const void *arg), const void *arg)
{
	bool met;

	pthread_mutex_lock(&m->lock);
	while (!(met = cond(arg)) && !link_failed(l) && !m->cancel)
		pthread_cond_wait(&m->cond, &m->lock);
	pthread_mutex_unlock(&m->lock);
	if (met)
		return 0;
	if (mig_cancelled(m))
		return -ECANCELED;
	return link_error(l);
}

/* ---- pausing ------------------------------------------------------------ */

static struct timespec deadline_in(uint64_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static int pause_until(struct ferry_migration *m,
		       struct ferry_session **session)
{
	unsigned int limit = m->opts.pause_timeout_ms;
	struct timespec ts = deadline_in(limit);
	int ret = 0;

	pthread_mutex_lock(&m->lock);
	while (!m->pending && !m->cancel && !ret)
		ret = limit ? pthread_cond_timedwait(&m->cond, &m->lock, &ts) :
			      pthread_cond_wait(&m->cond, &m->lock);
	*session = m->pending;
	m->pending = NULL;
	m->paused = !*session;
	if (*session) {
		m->stats.sessions++;	/* the handle's own figures */
		m->stats.paused_ns += ferry_clock_now_ns() - m->paused_at_ns;
	}
	pthread_mutex_unlock(&m->lock);
	if (*session)
		return 0;
	if (m->cancel)
		return -ECANCELED;
	return ferry_fail(-ETIMEDOUT, "paused for %u ms with no new session",
			  limit);
}

int mig_pause_wait(struct ferry_migration *m, int err, uint64_t owed,
		   struct ferry_session **session)
{
	char why[sizeof(m->reason)];

	snprintf(why, sizeof(why), "%s", ferry_error_msg());
	pthread_mutex_lock(&m->lock);
	m->paused = true;
	m->paused_at_ns = ferry_clock_now_ns();
	m->stats.pauses++;
	snprintf(m->reason, sizeof(m->reason), "%s", why);
	m->current = NULL;
	m->link = NULL;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	ferry_fail(err, "%s", why);
	mig_event(m, FERRY_EVENT_PAUSED, err, owed);
	return pause_until(m, session);
}

/* ---- the public calls --------------------------------------------------- */

int ferry_migrate_wait(struct ferry_migration *m, int timeout_ms)
{
	struct timespec ts = deadline_in(timeout_ms < 0 ? 0 :
					 (uint64_t)timeout_ms);
	int ret = 0;

	pthread_mutex_lock(&m->lock);
	while (!m->ended && !ret)
		ret = timeout_ms < 0 ? pthread_cond_wait(&m->cond, &m->lock) :
			pthread_cond_timedwait(&m->cond, &m->lock, &ts);
	if (m->ended)
		ret = m->result ? ferry_fail(m->result, "%s", m->reason) : 0;
	else
		ret = ferry_fail(-EINPROGRESS, "the migration is still %s",
				 m->paused ? "paused" : "running");
	pthread_mutex_unlock(&m->lock);
	return ret;
}

int ferry_migrate_cancel(struct ferry_migration *m)
{
	pthread_mutex_lock(&m->lock);
	m->cancel = true;
	if (m->current)
		ferry_net_session_shutdown(m->current);
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

int ferry_migrate_postcopy_now(struct ferry_migration *m)
{
	if (!m->source)
		return ferry_fail(-EINVAL, "post-copy is the source's to "
				  "start");
	pthread_mutex_lock(&m->lock);
	m->postcopy_now = true;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

int ferry_migrate_set_bandwidth(struct ferry_migration *m,
				uint64_t bytes_per_s)
{
	if (!m->source)
		return ferry_fail(-EINVAL, "the bandwidth limit is the "
				  "source's");
	ratelimit_set(&m->rl, bytes_per_s);
	return 0;
}

int ferry_migrate_reconnect(struct ferry_migration *m,
			    struct ferry_session *session)
{
	int ret = 0;

	if (!session || !session->nr_bulk || !session->urgent)
		return ferry_fail(-EINVAL, "reconnecting needs a session with "
				  "a bulk and an urgent channel");
	pthread_mutex_lock(&m->lock);
	if (m->ended)
		ret = ferry_fail(-EALREADY, "the migration has ended");
	else if (!m->paused || m->pending)
		ret = ferry_fail(-EINVAL, "the migration is not paused");
	else
		m->pending = session;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	if (ret)
		ferry_net_session_close(session);
	return ret;
}

enum ferry_vm_location ferry_migrate_vm_location(struct ferry_migration *m)
{
	enum ferry_vm_location loc;

	pthread_mutex_lock(&m->lock);
	loc = m->location;
	pthread_mutex_unlock(&m->lock);
	return loc;
}

void mig_fill_progress(struct ferry_migration *m, struct ferry_progress *p)
{
	uint64_t now = ferry_clock_now_ns();

	memset(p, 0, sizeof(*p));
	p->eta_s = -1;
	p->bytes_sent = atomic_load(&m->bytes_sent);
	p->bytes_received = atomic_load(&m->bytes_received);
	p->bandwidth_bps = ratelimit_get(&m->rl);
	pthread_mutex_lock(&m->lock);
	p->phase = m->phase;
	p->round = m->round;
	p->paused = m->paused;
	p->location = m->location;
	p->sessions = m->stats.sessions;
	p->elapsed_ns = now - m->start_ns;
	if (m->link)
		p->stalled_ns = link_stalled_ns(m->link);
	else if (m->paused)
		p->stalled_ns = now - m->paused_at_ns;
	if (m->ops && m->flow && !m->ended)
		m->ops->progress(m, p);
	pthread_mutex_unlock(&m->lock);
}

int ferry_migrate_progress(struct ferry_migration *m,
			   struct ferry_progress *p)
{
	mig_fill_progress(m, p);
	return 0;
}

int ferry_migrate_get_stats(struct ferry_migration *m,
			    struct ferry_migrate_stats *stats)
{
	pthread_mutex_lock(&m->lock);
	*stats = m->stats;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

void ferry_migrate_destroy(struct ferry_migration *m)
{
	if (!m)
		return;
	ferry_migrate_cancel(m);
	mig_free(m);
}
