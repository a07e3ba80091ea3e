// SPDX-License-Identifier: MIT
/*
 * source_jobs: the sender threads, one per bulk channel, and the jobs the
 * main thread posts them (a round, a push), with progress while they run.
 */
#include <time.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/source_int.h"

static void *sender_main(void *arg)
{
	struct sender *s = arg;
	struct source *src = s->src;
	unsigned int gen = s->start_gen;	/* jobs posted from then on */

	/* A migration that converges beats one that leaves the vCPUs a
	 * little more CPU. */
	sys_thread_boost(SYS_BOOST_BULK);
	pthread_mutex_lock(&src->lock);
	for (;;) {
		source_job_fn job;
		bool live;
		unsigned int round;
		int ret;

		while (src->gen == gen)
			pthread_cond_wait(&src->cond, &src->lock);
		gen = src->gen;
		job = src->job;
		live = src->live;
		round = src->round;
		if (!job)
			break;
		pthread_mutex_unlock(&src->lock);
		ferry_error_clear();	/* a failure's reason: this job's */
		ret = job(s, live, round);
		if (ret)	/* the session is over: wake the others */
			link_fail(&src->link, ret);
		pthread_mutex_lock(&src->lock);
		src->done++;
		pthread_cond_broadcast(&src->cond);
	}
	pthread_mutex_unlock(&src->lock);
	return NULL;
}

/* How much is left: owed after the commit, else the round's dirty set. */
uint64_t source_owed_now(struct source *src)
{
	uint64_t taken = atomic_load(&src->pushed) +
			 atomic_load(&src->answered_owed) -
			 atomic_load(&src->owed_taken_base);
	uint64_t owed = atomic_load(&src->owed);

	return taken < owed ? owed - taken : 0;
}

static void report(struct source *src, enum ferry_phase phase,
		   uint64_t *last_bytes, uint64_t *last_ns)
{
	const struct ferry_migrate_opts *o = src->opts;
	uint64_t now = ferry_clock_now_ns();
	uint64_t sent = atomic_load(&src->m->bytes_sent);
	uint64_t elapsed = now - src->m->start_ns;
	struct ferry_progress p;
	double rate;

	/* The rate is kept with or without a callback: the handle's
	 * ferry_migrate_progress() reads it from another thread. */
	if (now > *last_ns && *last_ns)
		rate = (double)(sent - *last_bytes) * 1e9 /
		       (double)(now - *last_ns);
	else if (phase == FERRY_PHASE_DONE && elapsed)
		rate = (double)sent * 1e9 / (double)elapsed;
	else	/* a round's start: no interval of its own yet */
		rate = (double)atomic_load(&src->rate_bps);
	atomic_store(&src->rate_bps, (uint64_t)rate);
	*last_bytes = sent;
	*last_ns = now;
	if (!o->progress)
		return;
	mig_fill_progress(src->m, &p);
	p.phase = phase;
	p.rate_bps = rate;
	p.eta_s = rate > 0 ? (double)p.remaining * 4096.0 / rate : -1;
	o->progress(&p, o->progress_arg);
}

void source_notify_progress(struct source *src, enum ferry_phase phase)
{
	uint64_t b = 0, t = 0;

	report(src, phase, &b, &t);
}

/* A progress interval from now, for pthread_cond_timedwait. */
static struct timespec progress_deadline(const struct source *src)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += (long)src->opts->progress_ms * 1000000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	return ts;
}

int source_run_job(struct source *src, source_job_fn job, bool live,
		   enum ferry_phase phase, uint64_t remaining)
{
	uint64_t last_bytes = 0, last_ns = 0;

	/* A round's start is reported with its dirty set; the push's after
	 * its first interval. */
	if (phase != FERRY_PHASE_POSTCOPY) {
		atomic_store(&src->dirty_pages, remaining);
		report(src, phase, &last_bytes, &last_ns);
	}
	pthread_mutex_lock(&src->lock);
	src->job = job;
	src->live = live;
	src->done = 0;
	src->gen++;
	pthread_cond_broadcast(&src->cond);
	while (src->done < src->nr_senders) {
		struct timespec ts = progress_deadline(src);

		if (pthread_cond_timedwait(&src->cond, &src->lock, &ts)) {
			pthread_mutex_unlock(&src->lock);
			report(src, phase, &last_bytes, &last_ns);
			pthread_mutex_lock(&src->lock);
		}
	}
	pthread_mutex_unlock(&src->lock);
	return link_error(&src->link);
}

int source_start_senders(struct source *src)
{
	for (unsigned int i = 0; i < src->nr_senders; i++) {
		struct sender *s = &src->senders[i];
		int ret;

		s->src = src;
		s->idx = i;
		s->nr_data = s->nr_zero = 0;
		s->start_gen = src->gen;	/* main's: no job is running */
		ferry_wire_writer_init(&s->writer, src->session->bulk[i]);
		ret = threads_start(&src->sender_threads, sender_main, s,
				    "sender");
		if (ret)
			return ret;
	}
	return 0;
}

/* No job wakes the senders idle on the condition; then join them. */
void source_stop_senders(struct source *src)
{
	pthread_mutex_lock(&src->lock);
	src->job = NULL;
	src->gen++;
	pthread_cond_broadcast(&src->cond);
	pthread_mutex_unlock(&src->lock);
	threads_stop(&src->sender_threads);
}
