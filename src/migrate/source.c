// SPDX-License-Identifier: MIT
/*
 * source: the sending side of a live migration, the flow.  Open the
 * session, send the HEADER and wait for ACCEPT, arm dirty tracking,
 * pre-copy, switch over, commit, serve what is still owed; then account.
 * After the commit a failed session pauses instead: the VM stays paused
 * here, whole, and a new session resumes it or hands it to a new
 * destination.  source_int.h says which file does what.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/source_int.h"

/*
 * Dirty tracking, or none: without async write-protect (before Linux 6.7)
 * the migration is post-copy only, every page sent once after the pause.
 */
static int arm_dirty(struct source *src)
{
	int ret;

	if (src->opts->postcopy_at_once) {	/* no live pass to track */
		src->dirty = NULL;
		return 0;
	}
	ret = ferry_dirty_start(src->vm->mem, &src->dirty);

	if (ret == -EOPNOTSUPP && src->opts->mode == FERRY_MODE_POSTCOPY) {
		src->dirty = NULL;
		return 0;
	}
	return ret;
}

static int enc_commit(struct ferry_wire_frame *f, const void *arg)
{
	return ferry_wire_enc_commit(f, *(const uint64_t *)arg);
}

/*
 * The destination is ready: commit.  From here on the VM is the
 * destination's to run and is never resumed here, whatever happens to
 * the session: COMMIT may be lost, and the VM may run there already.
 */
static int commit(struct source *src, enum ferry_mode mode,
		  uint64_t pause_ns)
{
	int ret;

	/* A handover's commit is not the VM's switchover: the first is. */
	if (!src->committed) {
		src->st.downtime_ns = ferry_clock_now_ns() - pause_ns;
		src->st.mode = mode;
	}
	src->committed = true;
	mig_set_location(src->m, FERRY_VM_SPLIT);
	ret = link_send(&src->link, enc_commit, &src->stream.id);
	if (!ret && !src->st.downtime_ns)	/* COMMIT is on its way */
		src->st.downtime_ns = ferry_clock_now_ns() - pause_ns;
	ferry_dirty_stop(src->dirty);
	src->dirty = NULL;
	/* Pre-copy sent everything: the send maps held the last round. */
	if (mode == FERRY_MODE_PRECOPY)
		source_clear_maps(src);
	if (!ret)
		mig_event(src->m, FERRY_EVENT_DEST_RUNNING, 0,
			  source_count_maps(src));
	return ret;
}

/*
 * A handover: the VM is paused since an earlier commit, so one pass over
 * every page that exists is all of it (nothing is torn: nothing runs).
 */
static int handover_pass(struct source *src)
{
	double bps;
	int ret;

	source_clear_maps(src);
	ret = source_map_populated(src);
	if (!ret)
		ret = source_round(src, false, &bps);
	source_clear_maps(src);
	return ret;
}

/* A destination that starts afresh: all of the VM, then serve. */
static int transfer(struct source *src)
{
	enum ferry_mode mode = FERRY_MODE_PRECOPY;
	uint64_t pause_ns = 0;
	int ret;

	mig_set_phase(src->m, FERRY_PHASE_PRECOPY);
	if (src->handover) {
		ret = handover_pass(src);
	} else {
		ret = arm_dirty(src);
		if (!ret)
			ret = source_precopy(src, &mode);
	}
	if (!ret) {
		source_notify_progress(src, FERRY_PHASE_SWITCHOVER);
		ret = source_switchover(src, mode, &pause_ns);
	}
	if (!ret)
		ret = commit(src, mode, pause_ns);
	if (!ret)
		ret = source_serve(src, mode == FERRY_MODE_POSTCOPY);
	return ret;
}

/* The destination holds this migration: what it owes is the truth. */
static int resume_serving(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;

	if (!src->committed)
		return ferry_fail(-EPROTO, "the destination resumes a "
				  "migration this source never committed");
	for (unsigned int i = 0; i < mem->nr_regions; i++)
		memcpy(src->send_map[i], src->resume_map[i],
		       bitmap_words(mem->regions[i].nr_pages) * 8);
	return source_serve(src, true);
}

/* One session: the handshake, then whatever its answer calls for. */
static int run_session(struct source *src, struct ferry_session *session,
		       bool again)
{
	int ret = source_session_open(src, session);

	if (!ret)
		ret = source_handshake(src);
	if (!ret && again)
		mig_event(src->m, FERRY_EVENT_RESUMED, 0, source_owed_now(src));
	if (!ret && src->reply == REPLY_RESUME)
		return resume_serving(src);
	if (!ret && src->committed)	/* ACCEPT after a commit */
		src->handover = true;
	return ret ? ret : transfer(src);
}

/*
 * The session ended after the commit: pause, wait for another (or a
 * cancel, or the deadline), resume on it; again if that fails too.
 */
static int recover(struct source *src, int ret)
{
	struct ferry_migration *m = src->m;

	while (ret && src->committed && !mig_cancelled(m)) {
		uint64_t owed = source_owed_now(src);
		struct ferry_session *session;
		char why[400];

		ret = source_session_close(src, ret);
		snprintf(why, sizeof(why), "%s", ferry_error_msg());
		if (m->blocking)
			return ferry_fail(-ENOTCONN, "paused after the commit "
					  "(%s); the VM is paused here, whole, "
					  "%llu pages not confirmed at the "
					  "destination", why,
					  (unsigned long long)owed);
		ferry_fail(ret, "%s", why);
		ret = mig_pause_wait(m, ret, owed, &session);
		if (ret)
			break;
		ret = run_session(src, session, true);
	}
	return ret;
}

/* The error to end with, saying where the VM is. */
static int final_error(struct source *src, int ret)
{
	if (!mig_cancelled(src->m) && ret != -ECANCELED)
		return ret;
	return mig_cancel_error(src->m, src->committed ?
				"the VM stays paused here, whole, as at "
				"switchover" : "the VM runs here");
}

static void fill_stats(struct source *src)
{
	struct ferry_migrate_stats *st = &src->st;

	st->bytes_sent = atomic_load(&src->m->bytes_sent);
	st->bytes_received = atomic_load(&src->m->bytes_received);
	st->pages_sent = atomic_load(&src->pages_sent);
	st->zero_pages = atomic_load(&src->zero_pages);
	st->pages_pushed = atomic_load(&src->pushed);
	st->pages_requested = atomic_load(&src->requested);
	st->pages_refetched = atomic_load(&src->refetched);
	st->guest_bytes = src->vm->mem->total_size;
	mig_publish_stats(src->m, st);
}

static int source_run(struct ferry_migration *m)
{
	struct source *src = m->flow;
	int ret;

	mig_set_phase(m, FERRY_PHASE_SETUP);
	source_notify_progress(src, FERRY_PHASE_SETUP);
	ret = run_session(src, m->first, false);
	ret = recover(src, ret);
	ret = source_session_close(src, ret);
	ferry_dirty_stop(src->dirty);
	src->dirty = NULL;
	if (ret)
		ret = final_error(src, ret);
	else
		mig_set_location(m, FERRY_VM_THERE);
	fill_stats(src);
	if (!ret)
		source_notify_progress(src, FERRY_PHASE_DONE);
	return mig_end(m, ret);
}

/* ---- progress ----------------------------------------------------------- */

static void source_progress(struct ferry_migration *m,
			    struct ferry_progress *p)
{
	struct source *src = m->flow;

	p->pages_requested = atomic_load(&src->requested);
	p->dirty = atomic_load(&src->dirty_pages);
	if (m->location != FERRY_VM_HERE)
		p->owed = source_owed_now(src);
	p->remaining = m->location != FERRY_VM_HERE ? p->owed : p->dirty;
	p->rate_bps = (double)atomic_load(&src->rate_bps);
	if (p->rate_bps > 0)
		p->eta_s = (double)p->remaining * 4096.0 / p->rate_bps;
}

/* ---- setup and teardown ------------------------------------------------- */

static void free_maps(uint64_t **maps, unsigned int nr)
{
	for (unsigned int i = 0; maps && i < nr; i++)
		free(maps[i]);
	free(maps);
}

static void source_destroy(struct ferry_migration *m)
{
	struct source *src = m->flow;
	unsigned int nr = src->vm->mem->nr_regions;

	free_maps(src->send_map, nr);
	free_maps(src->refetch_map, nr);
	free_maps(src->resume_map, nr);
	free(src->urgent_sender);
	free(src->urgent_buf);
	pthread_cond_destroy(&src->cond);
	pthread_mutex_destroy(&src->lock);
	free(src);
	m->flow = NULL;
}

static const struct mig_flow_ops source_ops = {
	.progress = source_progress,
	.destroy = source_destroy,
};

static uint64_t **alloc_maps(const struct ferry_mem *mem)
{
	uint64_t **maps = calloc(mem->nr_regions, sizeof(*maps));

	for (unsigned int i = 0; maps && i < mem->nr_regions; i++) {
		maps[i] = bitmap_alloc(mem->regions[i].nr_pages);
		if (!maps[i]) {
			free_maps(maps, i);
			return NULL;
		}
	}
	return maps;
}

/* Buffers and maps, faulted in now: none of it may cost the downtime. */
static int source_alloc(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;

	src->urgent_sender = sys_zalloc(sizeof(*src->urgent_sender));
	src->urgent_buf = sys_zalloc_aligned(4096, FERRY_WIRE_BUF_SIZE);
	src->send_map = alloc_maps(mem);
	src->refetch_map = alloc_maps(mem);
	src->resume_map = alloc_maps(mem);
	if (!src->urgent_sender || !src->urgent_buf || !src->send_map ||
	    !src->refetch_map || !src->resume_map)
		return ferry_fail(-ENOMEM, "out of memory");
	src->urgent_sender->src = src;
	return 0;
}

/* A random id, not 0: the destination resumes only the one it holds. */
static int make_id(uint64_t *id)
{
	do {
		if (getrandom(id, sizeof(*id), 0) != sizeof(*id))
			return ferry_fail(-errno, "getrandom: %s",
					  strerror(errno));
	} while (!*id);
	return 0;
}

static int source_create(struct ferry_migration *m, const struct ferry_vm *vm)
{
	struct source *src = calloc(1, sizeof(*src));
	int ret;

	if (!src)
		return ferry_fail(-ENOMEM, "out of memory");
	*src = (struct source){ .m = m, .vm = vm, .opts = &m->opts,
				.start_ns = ferry_clock_now_ns() };
	pthread_mutex_init(&src->lock, NULL);
	pthread_cond_init(&src->cond, NULL);
	m->flow = src;
	m->ops = &source_ops;
	m->run = source_run;
	ret = source_alloc(src);
	if (!ret)
		ret = ferry_wire_stream_init(&src->stream, vm->mem,
				FERRY_WIRE_MIGRATION,
				vm->ops->nr_vcpus(vm->handle), vm->desc,
				vm->desc_len);
	if (!ret)
		ret = make_id(&src->stream.id);
	return ret;
}

static int check_args(const struct ferry_vm *vm, struct ferry_session *s,
		      const struct ferry_migrate_opts *opts)
{
	int ret = ferry_vcpu_ops_check(vm->ops);

	if (ret)
		return ret;
	if (!s || !s->nr_bulk || !s->urgent)
		return ferry_fail(-EINVAL, "the session needs a bulk and an "
				  "urgent channel");
	if (!vm->mem || !vm->mem->nr_regions)
		return ferry_fail(-EINVAL, "the VM has no memory");
	if (opts && opts->postcopy_at_once && opts->mode != FERRY_MODE_POSTCOPY)
		return ferry_fail(-EINVAL, "postcopy_at_once needs mode "
				  "postcopy, not %s",
				  ferry_migrate_mode_name(opts->mode));
	return 0;
}

static int prepare(const struct ferry_vm *vm, struct ferry_session *session,
		   const struct ferry_migrate_opts *opts, bool blocking,
		   struct ferry_migration **out)
{
	struct ferry_migration *m;
	int ret = check_args(vm, session, opts);

	if (!ret)
		ret = mig_create(true, opts, &m);
	if (ret)
		return ret;
	m->blocking = blocking;
	m->first = session;
	ret = source_create(m, vm);
	if (ret) {
		mig_free(m);
		return ret;
	}
	*out = m;
	return 0;
}

int ferry_migrate_start(const struct ferry_vm *vm,
			struct ferry_session *session,
			const struct ferry_migrate_opts *opts,
			struct ferry_migration **out)
{
	struct ferry_migration *m;
	int ret = prepare(vm, session, opts, false, &m);

	if (ret) {
		ferry_net_session_close(session);	/* it was ours */
		return ret;
	}
	ret = mig_start_worker(m);
	if (ret) {
		mig_free(m);
		ferry_net_session_close(session);
		return ret;
	}
	*out = m;
	return 0;
}

int ferry_migrate_send(const struct ferry_vm *vm,
		       struct ferry_session *session,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_migrate_stats *stats)
{
	struct ferry_migration *m;
	char reason[400];
	int ret;

	memset(stats, 0, sizeof(*stats));
	ret = prepare(vm, session, opts, true, &m);
	if (ret)
		return ret;
	ret = m->run(m);
	snprintf(reason, sizeof(reason), "%s", ferry_error_msg());
	ferry_migrate_get_stats(m, stats);
	mig_free(m);
	return ret ? ferry_fail(ret, "%s", reason) : 0;
}
