// SPDX-License-Identifier: MIT
/*
 * dest: the receiving side of a live migration, the flow.  Read the
 * HEADER, build the VM it describes, ACCEPT, receive until every bulk
 * channel is at SWITCHOVER, switch over, serve until every page is in
 * place.  Before the source commits, any failure discards the VM (it
 * never ran here) and tells the source why.  After it, a failed session
 * pauses: the VM runs on here, faulting vCPUs wait, and a new session of
 * the same migration resumes it.  dest_int.h says which file does what.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/dest_int.h"
#include "pages/postcopy.h"

static int alloc_tables(struct dest *d)
{
	unsigned int nr = d->stream.nr_regions;

	d->stale = calloc(nr ? nr : 1, sizeof(*d->stale));
	d->vcpus = calloc(d->stream.nr_vcpus ? d->stream.nr_vcpus : 1,
			  sizeof(*d->vcpus));
	if (!d->stale || !d->vcpus || refetch_init(&d->rf, &d->stream))
		return ferry_fail(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < nr; i++) {
		d->stale[i] = bitmap_alloc(d->stream.regions[i].nr_pages);
		if (!d->stale[i])
			return ferry_fail(-ENOMEM, "out of memory");
	}
	return 0;
}

static int check_vm(struct dest *d)
{
	const struct ferry_vm *vm = &d->vm;
	int ret = ferry_vcpu_ops_check(vm->ops);

	if (ret)
		return ret;
	if (vm->ops->nr_vcpus(vm->handle) != d->stream.nr_vcpus)
		return ferry_fail(-EINVAL, "the VM built here has %u vCPUs; "
				  "the stream carries %u",
				  vm->ops->nr_vcpus(vm->handle),
				  d->stream.nr_vcpus);
	if (vm->mem->nr_regions != d->stream.nr_regions)
		return ferry_fail(-EINVAL, "the VM built here has %u memory "
				  "regions; the stream carries %u",
				  vm->mem->nr_regions, d->stream.nr_regions);
	for (unsigned int i = 0; i < d->stream.nr_regions; i++)
		if (vm->mem->regions[i].page_size !=
		    d->stream.regions[i].page_size ||
		    vm->mem->regions[i].size != d->stream.regions[i].size)
			return ferry_fail(-EINVAL, "region %u here does not "
					  "match the source's", i);
	return 0;
}

/* The VM the HEADER describes, built, not running. */
static int build_vm(struct dest *d)
{
	struct postcopy *pc;
	int ret = alloc_tables(d);

	if (!ret)
		ret = d->ops->create(d->ops_arg, &d->stream, &d->vm);
	if (ret)
		return ret;
	d->vm_created = true;
	ret = check_vm(d);
	if (!ret)
		ret = postcopy_create(d->vm.mem, &pc);
	if (!ret) {	/* progress reports read it */
		pthread_mutex_lock(&d->m->lock);
		d->pc = pc;
		pthread_mutex_unlock(&d->m->lock);
	}
	return ret;
}

/* The first session: all of it, up to the VM running here. */
static int first_session(struct dest *d)
{
	int ret = dest_session_open(d, d->m->first);

	if (!ret)
		ret = dest_read_header(d);
	if (!ret)
		ret = build_vm(d);
	if (!ret)
		ret = dest_send_accept(d);
	if (!ret) {
		mig_set_phase(d->m, FERRY_PHASE_PRECOPY);
		ret = dest_session_start_bulk(d, false);
	}
	if (!ret)
		dest_prepare_postcopy(d);
	if (!ret)
		ret = dest_wait_switchover(d);
	if (!ret)
		ret = dest_switchover(d);
	if (ret && !d->running)	/* the source hears why it may go on */
		dest_tell_source(d, ret);
	if (!ret)
		ret = dest_serve(d);
	return ret;
}

/*
 * A later session: it must be this migration's.  RESUME says what is
 * still needed; the requests the old session lost are asked again.
 */
static int rejoin(struct dest *d, struct ferry_session *session)
{
	int ret = dest_session_open(d, session);

	if (!ret)
		ret = dest_check_rejoin(d);
	if (ret) {
		dest_tell_source(d, ret);
		return ret;
	}
	refetch_reset_tries(&d->rf);
	ret = dest_send_resume(d);
	if (!ret)
		ret = dest_session_start_bulk(d, true);
	if (!ret) {
		mig_event(d->m, FERRY_EVENT_RESUMED, 0,
			  atomic_load(&d->pc->owed_left));
		ret = postcopy_rerequest(d->pc);
	}
	return ret ? ret : dest_serve(d);
}

/*
 * After the commit, until every page is in place: a failed session
 * pauses, and the next one rejoins.  Fault service failing is this
 * side's own breakdown, which no session mends.
 */
static int recover(struct dest *d, int ret)
{
	struct ferry_migration *m = d->m;

	while (ret && d->running && !d->complete && !mig_cancelled(m) &&
	       !postcopy_error(d->pc)) {
		struct ferry_session *session;
		char why[400];

		ret = dest_session_close(d, ret);
		snprintf(why, sizeof(why), "%s", ferry_error_msg());
		if (m->blocking)
			return ferry_fail(-ENOTCONN, "paused after the commit "
					  "(%s), with no way to reconnect",
					  why);
		ferry_fail(ret, "%s", why);
		ret = mig_pause_wait(m, ret, atomic_load(&d->pc->owed_left),
				     &session);
		if (!ret)
			ret = rejoin(d, session);
	}
	return ret;
}

/* ---- the end ------------------------------------------------------------ */

static void fill_stats(struct dest *d)
{
	struct ferry_migrate_stats *st = &d->st;
	uint64_t faults = d->totals.faults, bytes = d->totals.installed_bytes;

	st->bytes_received = atomic_load(&d->m->bytes_received);
	st->bytes_sent = atomic_load(&d->m->bytes_sent);
	st->pages_installed = d->totals.installed;
	st->install_page_faults = faults;
	st->faults_per_installed_page = bytes ?
		(double)faults * 4096.0 / (double)bytes : 0;
	if (d->vm_created) {
		st->guest_bytes = d->vm.mem->total_size;
		for (unsigned int i = 0; i < d->vm.mem->nr_regions; i++) {
			uint64_t b = 0;

			if (!ferry_mem_region_pmd_mapped(&d->vm.mem->regions[i], &b))
				st->pmd_mapped_bytes += b;
		}
	}
	mig_publish_stats(d->m, st);
}

static void forget_pc(struct dest *d)
{
	struct postcopy *pc = d->pc;

	pthread_mutex_lock(&d->m->lock);
	d->pc = NULL;
	pthread_mutex_unlock(&d->m->lock);
	postcopy_destroy(pc);
}

/* The VM is not whole here: stop it if it ran, then discard it. */
static void discard(struct dest *d)
{
	if (!d->vm_created)
		return;
	dest_fail_closed(d);
	forget_pc(d);
	if (d->ops->discard)
		d->ops->discard(d->ops_arg, &d->vm);
	d->vm_created = false;
}

static int final_error(struct dest *d, int ret)
{
	if (!mig_cancelled(d->m) && ret != -ECANCELED)
		return ret;
	return mig_cancel_error(d->m, d->running ? "the VM was stopped and "
				"discarded here" : "nothing was kept here");
}

static int dest_run(struct ferry_migration *m)
{
	struct dest *d = m->flow;
	char why[400];
	int ret;

	mig_set_phase(m, FERRY_PHASE_SETUP);
	ret = first_session(d);
	ret = recover(d, ret);
	ret = dest_session_close(d, ret);
	if (ret) {
		ret = final_error(d, ret);
		snprintf(why, sizeof(why), "%s", ferry_error_msg());
		discard(d);
		mig_set_location(m, FERRY_VM_THERE);
		ferry_fail(ret, "%s", why);
	}
	fill_stats(d);
	return mig_end(m, ret);
}

/* ---- progress ----------------------------------------------------------- */

static void dest_progress(struct ferry_migration *m, struct ferry_progress *p)
{
	struct dest *d = m->flow;
	struct postcopy_stats ps;

	if (!d->pc)
		return;
	postcopy_get_stats(d->pc, &ps);
	p->pages_requested = ps.requests;
	if (m->location == FERRY_VM_SPLIT)
		p->owed = atomic_load(&d->pc->owed_left);
	p->remaining = p->owed;
}

/* ---- setup and teardown ------------------------------------------------- */

static void dest_destroy(struct ferry_migration *m)
{
	struct dest *d = m->flow;

	if (d->complete)	/* the caller's, taken or not */
		forget_pc(d);
	else			/* not whole here: nothing of it stays */
		discard(d);
	for (unsigned int i = 0; d->stale && i < d->stream.nr_regions; i++)
		free(d->stale[i]);
	for (unsigned int i = 0; d->vcpus && i < d->stream.nr_vcpus; i++)
		free(d->vcpus[i].regs);
	free(d->stale);
	free(d->vcpus);
	free(d->desc);
	if (d->rf.bad)
		refetch_fini(&d->rf);
	pthread_mutex_destroy(&d->stats_lock);
	pthread_mutex_destroy(&d->req_lock);
	free(d);
	m->flow = NULL;
}

static const struct mig_flow_ops dest_ops = {
	.progress = dest_progress,
	.destroy = dest_destroy,
};

static int prepare(struct ferry_session *session,
		   const struct ferry_dest_ops *ops, void *arg,
		   const struct ferry_migrate_opts *opts, bool blocking,
		   struct ferry_migration **out)
{
	struct ferry_migration *m;
	struct dest *d;
	int ret;

	if (!session || !session->nr_bulk || !session->urgent || !ops ||
	    !ops->create)
		return ferry_fail(-EINVAL, "receiving needs a session with a "
				  "bulk and an urgent channel, and a create "
				  "op");
	ret = mig_create(false, opts, &m);
	if (ret)
		return ret;
	d = calloc(1, sizeof(*d));
	if (!d) {
		mig_free(m);
		return ferry_fail(-ENOMEM, "out of memory");
	}
	*d = (struct dest){ .m = m, .ops = ops, .ops_arg = arg,
			    .opts = &m->opts };
	pthread_mutex_init(&d->stats_lock, NULL);
	pthread_mutex_init(&d->req_lock, NULL);
	m->flow = d;
	m->ops = &dest_ops;
	m->run = dest_run;
	m->blocking = blocking;
	m->first = session;
	*out = m;
	return 0;
}

int ferry_migrate_start_dest(struct ferry_session *session,
			     const struct ferry_dest_ops *ops, void *arg,
			     const struct ferry_migrate_opts *opts,
			     struct ferry_migration **out)
{
	struct ferry_migration *m = NULL;
	int ret = prepare(session, ops, arg, opts, false, &m);

	if (!ret)
		ret = mig_start_worker(m);
	if (ret) {
		if (m)
			mig_free(m);
		ferry_net_session_close(session);	/* it was ours */
		return ret;
	}
	*out = m;
	return 0;
}

int ferry_migrate_dest_vm(struct ferry_migration *m, struct ferry_vm *vm)
{
	struct dest *d = m->flow;
	int ret = 0;

	pthread_mutex_lock(&m->lock);
	if (m->source || !m->ended || m->result || !d->complete)
		ret = -EAGAIN;
	else
		*vm = d->vm;
	pthread_mutex_unlock(&m->lock);
	if (ret)
		return ferry_fail(ret, "the VM is not whole here (yet)");
	return 0;
}

int ferry_migrate_recv(struct ferry_session *session,
		       const struct ferry_dest_ops *ops, void *arg,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_vm *vm, struct ferry_migrate_stats *stats)
{
	struct ferry_migration *m;
	char reason[400];
	int ret;

	memset(stats, 0, sizeof(*stats));
	ret = prepare(session, ops, arg, opts, true, &m);
	if (ret)
		return ret;
	ret = m->run(m);
	snprintf(reason, sizeof(reason), "%s", ferry_error_msg());
	ferry_migrate_get_stats(m, stats);
	if (!ret)
		ret = ferry_migrate_dest_vm(m, vm);
	mig_free(m);
	return ret ? ferry_fail(ret, "%s", reason) : 0;
}
