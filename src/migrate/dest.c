// SPDX-License-Identifier: MIT
/*
 * dest: the receiving side of a live migration.
 *
 * One receiver thread per bulk channel stores pages as they come (pwrite
 * into the memfd: no page faults) and collects what channel 0 carries for
 * the switchover (stale bitmaps, vCPU states).  Each receiver reports when
 * its channel reaches SWITCHOVER; once all have, everything sent before
 * the pause is in, and the main thread switches over:
 *
 *   pre-copy   load the vCPUs, resume, confirm on the urgent channel
 *   post-copy  stale pages become STALE, fault service starts, load the
 *              vCPUs, resume, confirm; replies to page requests come on
 *              the urgent channel, pushed pages on the bulk ones; when
 *              every page is in place, unregister, collapse THP, and send
 *              COMPLETE
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "ferry/pagefaults.h"
#include "ferry/stats.h"
#include "migrate/migrate.h"
#include "pages/postcopy.h"
#include "base/sys.h"

struct dest;

struct receiver {
	struct dest *d;
	struct ferry_chan *chan;
	struct ferry_wire_reader reader;
	uint8_t *buf;
	pthread_t thread;
	bool started;
	bool urgent;
	bool switched;		/* passed SWITCHOVER: what follows is fresh */
	int err;		/* this thread's; read after join */
	uint64_t bytes;
	uint64_t installed;		/* pages */
	uint64_t installed_bytes;
	struct ferry_pagefaults faults;	/* this thread's page faults */
};

struct vcpu_slot {
	bool seen;
	uint32_t mp_state;
	uint32_t len;
	uint8_t *regs;
};

struct dest {
	struct ferry_session *session;
	const struct ferry_dest_ops *ops;
	void *ops_arg;
	const struct ferry_migrate_opts *opts;
	struct ferry_migrate_stats *stats;
	struct ferry_wire_stream stream;
	uint8_t *desc;			/* stream.desc points here */
	struct ferry_vm vm;
	bool vm_created;
	struct postcopy *pc;
	uint64_t **stale;		/* per region, from BITMAP records */
	struct vcpu_slot *vcpus;
	unsigned int nr_receivers;
	struct receiver *receivers;	/* bulk channels */
	struct receiver urgent;

	/* Switchover: receivers count themselves in under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned int nr_switched, nr_ended;
	enum ferry_wire_switch_mode mode;
	int err;			/* first receiver error, under lock */
	char reason[512];		/* and its reason, under lock */

	/* The urgent writer: the fault thread's requests and the main
	 * thread's confirmations. */
	pthread_mutex_t urgent_lock;
	struct ferry_wire_writer urgent_writer;
	struct ferry_wire_frame urgent_frame;
	uint64_t next_request_id;	/* under urgent_lock */
	uint64_t start_ns;
};

/* Record a receiver's failure and its reason (errmsg is per thread). */
static void fail_locked(struct dest *d, int err)
{
	if (!d->err) {
		d->err = err;
		snprintf(d->reason, sizeof(d->reason), "%s", ferry_errmsg());
	}
	pthread_cond_broadcast(&d->cond);
}

static int misplaced(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	return ferry_fail(-EBADMSG, "%s: record %llu: %s out of place",
			  rv->chan->name, (unsigned long long)rec->nr,
			  ferry_wire_type_name(rec->type));
}

/* ---- records ------------------------------------------------------------ */

/* How many pages from i on are consecutive and whole (not torn). */
static uint32_t run_length(const struct ferry_wire_pages *p, uint32_t i)
{
	uint32_t n = 1;

	if (p->data && ferry_wire_page_torn(p, i))
		return 0;
	while (i + n < p->count && p->index[i + n] == p->index[i] + n &&
	       !(p->data && ferry_wire_page_torn(p, i + n)))
		n++;
	return n;
}

/* Before switchover: runs of consecutive pages, one write each. */
static int store_runs(struct receiver *rv, const struct ferry_wire_pages *p)
{
	uint32_t i = 0;
	int ret = 0;

	while (i < p->count && !ret) {
		uint32_t n = run_length(p, i);

		if (!n) {	/* torn: comes again, it was dirtied */
			i++;
			continue;
		}
		ret = postcopy_store(rv->d->pc, p->region, p->index[i], n,
				     p->data ? p->data + i * p->page_size :
					       NULL);
		rv->installed += n;
		rv->installed_bytes += (uint64_t)n * p->page_size;
		i += n;
	}
	return ret;
}

/* After switchover: page by page, each into the guest view. */
static int install_each(struct receiver *rv, const struct ferry_wire_pages *p)
{
	int ret = 0;

	for (uint32_t i = 0; i < p->count && ret >= 0; i++) {
		if (p->data && ferry_wire_page_torn(p, i))
			return ferry_fail(-EBADMSG, "a page changed while "
					  "the paused source sent it");
		ret = postcopy_install(rv->d->pc, p->region, p->index[i],
				       p->data ? p->data + i * p->page_size :
						 NULL);
		rv->installed += ret > 0;
		rv->installed_bytes += ret > 0 ? p->page_size : 0;
	}
	return ret < 0 ? ret : 0;
}

static int store_pages(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	struct dest *d = rv->d;
	struct ferry_wire_pages p;
	int ret = ferry_wire_dec_pages(&d->stream, rec, &p);

	if (ret)
		return ret;
	if (p.nr_torn) {
		pthread_mutex_lock(&d->lock);
		d->stats->torn_pages += p.nr_torn;
		pthread_mutex_unlock(&d->lock);
	}
	if (rv->switched || rv->urgent)
		return install_each(rv, &p);
	return store_runs(rv, &p);
}

static int take_bitmap(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	struct dest *d = rv->d;
	struct ferry_wire_bitmap b;
	uint64_t *map;
	int ret = ferry_wire_dec_bitmap(&d->stream, rec, &b);

	if (ret)
		return ret;
	if (b.kind != FERRY_WIRE_BITMAP_STALE)
		return ferry_fail(-EBADMSG, "a %s bitmap is not expected here",
				  "DIRTY");
	map = d->stale[b.region];
	for (uint32_t w = 0; w < bitmap_words(b.nr_bits); w++)
		map[b.first_page / 64 + w] |= b.words[w];
	return 0;
}

static int take_vcpu(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	struct dest *d = rv->d;
	struct ferry_wire_vcpu v;
	struct vcpu_slot *slot;
	int ret = ferry_wire_dec_vcpu(&d->stream, rec, &v);

	if (ret)
		return ret;
	slot = &d->vcpus[v.index];
	if (slot->seen)
		return ferry_fail(-EBADMSG, "vCPU %u sent twice", v.index);
	slot->regs = malloc(v.regs_len ? v.regs_len : 1);
	if (!slot->regs)
		return -ENOMEM;
	memcpy(slot->regs, v.regs, v.regs_len);
	slot->len = v.regs_len;
	slot->mp_state = v.mp_state;
	slot->seen = true;
	return 0;
}

static int take_switchover(struct receiver *rv,
			   const struct ferry_wire_rec *rec)
{
	struct dest *d = rv->d;
	enum ferry_wire_switch_mode mode;
	int ret = ferry_wire_dec_switchover(rec, &mode);

	if (ret)
		return ret;
	if (rv->switched)
		return ferry_fail(-EBADMSG, "%s: a second SWITCHOVER",
				  rv->chan->name);
	pthread_mutex_lock(&d->lock);
	if (d->nr_switched && mode != d->mode)
		ret = ferry_fail(-EBADMSG, "channels disagree on the "
				 "switchover mode");
	d->mode = mode;
	d->nr_switched++;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	rv->switched = true;
	return ret;
}

static int source_error(const struct ferry_wire_rec *rec)
{
	struct ferry_wire_error e;
	int ret = ferry_wire_dec_error(rec, &e);

	if (ret)
		return ret;
	return ferry_fail(-(e.err ? e.err : EIO), "the source gave up: %s",
			  e.msg);
}

/* One record; 1 when the channel is complete. */
static int handle_record(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	bool bulk0 = !rv->urgent && rv->chan == rv->d->session->bulk[0];

	switch (rec->type) {
	case FERRY_WIRE_PAGES:
	case FERRY_WIRE_ZERO_PAGES:
		return store_pages(rv, rec);
	case FERRY_WIRE_ROUND_END:
		return 0;
	case FERRY_WIRE_BITMAP:
		return bulk0 && !rv->switched ? take_bitmap(rv, rec) :
						misplaced(rv, rec);
	case FERRY_WIRE_VCPU:
		return bulk0 && !rv->switched ? take_vcpu(rv, rec) :
						misplaced(rv, rec);
	case FERRY_WIRE_SWITCHOVER:
		return rv->urgent ? misplaced(rv, rec) :
				    take_switchover(rv, rec);
	case FERRY_WIRE_COMPLETE:
		return 1;
	case FERRY_WIRE_ERROR:
		return source_error(rec);
	default:
		return misplaced(rv, rec);
	}
}

static int receive(struct receiver *rv)
{
	struct ferry_wire_rec rec;

	for (;;) {
		ssize_t n = ferry_wire_recv(&rv->reader, rv->buf,
					    FERRY_WIRE_BUF_SIZE, &rec);
		int ret;

		if (n == 0)
			return ferry_fail(-EPIPE, "%s: the source closed the "
					  "channel before completing",
					  rv->chan->name);
		if (n < 0)
			return (int)n;
		rv->bytes += (uint64_t)n;
		ret = handle_record(rv, &rec);
		if (ret)
			return ret > 0 ? 0 : ret;
	}
}

static void *receiver_main(void *arg)
{
	struct receiver *rv = arg;
	struct dest *d = rv->d;
	int ret;

	ferry_errmsg_clear();
	sys_thread_boost(rv->urgent ? SYS_BOOST_URGENT : SYS_BOOST_BULK);
	ferry_pagefaults_start(&rv->faults, FERRY_PAGEFAULTS_THREAD);
	ret = receive(rv);
	ferry_pagefaults_stop(&rv->faults);
	pthread_mutex_lock(&d->lock);
	rv->err = ret;
	if (ret)
		fail_locked(d, ret);
	d->nr_ended++;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

/* ---- threads and waiting ------------------------------------------------ */

/*
 * A receive buffer, touched now: its first use would otherwise cost a
 * fault per 4 KiB, counted against the receive path.
 */
static uint8_t *recv_buf_alloc(void)
{
	return sys_zalloc_aligned(4096, FERRY_WIRE_BUF_SIZE);
}

/*
 * Ready a receiver before anything is timed: its buffer's first touch
 * costs a fault per 4 KiB, which must not land in the downtime.
 */
static int prepare_receiver(struct dest *d, struct receiver *rv,
			    struct ferry_chan *chan, bool urgent)
{
	rv->d = d;
	rv->chan = chan;
	rv->urgent = urgent;
	ferry_wire_reader_init(&rv->reader, chan);
	rv->buf = recv_buf_alloc();
	if (!rv->buf)
		return ferry_fail(-ENOMEM, "out of memory");
	return 0;
}

static int start_receiver(struct receiver *rv)
{
	int ret = -pthread_create(&rv->thread, NULL, receiver_main, rv);

	if (ret)
		return ferry_fail(ret, "starting a receiver: %s",
				  strerror(-ret));
	rv->started = true;
	return 0;
}

static void join_receiver(struct receiver *rv)
{
	if (rv->started)
		pthread_join(rv->thread, NULL);
	rv->started = false;
	free(rv->buf);
	rv->buf = NULL;
}

/* A receiver's failure, with its reason, on the calling thread. */
static int first_error_locked(struct dest *d)
{
	if (!d->err)
		return 0;
	return ferry_fail(d->err, "%s", d->reason[0] ? d->reason :
			  strerror(-d->err));
}

static int first_error(struct dest *d)
{
	int ret;

	pthread_mutex_lock(&d->lock);
	ret = first_error_locked(d);
	pthread_mutex_unlock(&d->lock);
	return ret;
}

/* Wait until every bulk channel is at SWITCHOVER, or one failed. */
static int wait_switchover(struct dest *d)
{
	int ret;

	pthread_mutex_lock(&d->lock);
	while (!d->err && d->nr_switched < d->nr_receivers &&
	       d->nr_ended < d->nr_receivers)
		pthread_cond_wait(&d->cond, &d->lock);
	ret = first_error_locked(d);
	if (!ret && d->nr_switched < d->nr_receivers)
		ret = ferry_fail(-EPIPE, "a channel ended before switchover");
	pthread_mutex_unlock(&d->lock);
	return ret;
}

/* ---- the urgent channel ------------------------------------------------- */

static int urgent_send_locked(struct dest *d)
{
	ssize_t n = ferry_wire_send(&d->urgent_writer, &d->urgent_frame);

	return n < 0 ? (int)n : 0;
}

/* The fault thread asks for a page (see postcopy_ops). */
static int request_page(void *arg, unsigned int region, uint64_t page)
{
	struct dest *d = arg;
	struct ferry_wire_page_request req = {
		.region = region, .page = (uint32_t)page, .count = 1,
	};
	int ret;

	pthread_mutex_lock(&d->urgent_lock);
	req.request_id = ++d->next_request_id;
	ret = ferry_wire_enc_page_request(&d->urgent_frame, &d->stream, &req);
	if (!ret)
		ret = urgent_send_locked(d);
	pthread_mutex_unlock(&d->urgent_lock);
	return ret;
}

static const struct postcopy_ops request_ops = { .request = request_page };

static int confirm(struct dest *d, bool complete)
{
	struct ferry_wire_complete c = { 0 };
	int ret;

	pthread_mutex_lock(&d->urgent_lock);
	ret = complete ? ferry_wire_enc_complete(&d->urgent_frame, &c) :
		ferry_wire_enc_switchover(&d->urgent_frame, d->mode);
	if (!ret)
		ret = urgent_send_locked(d);
	pthread_mutex_unlock(&d->urgent_lock);
	return ret;
}

/*
 * Say why we give up, so the source can tell its user more than "broken
 * pipe".  Best effort: the channel may be what broke.
 */
static void tell_source(struct dest *d, int err, const char *why)
{
	pthread_mutex_lock(&d->urgent_lock);
	if (!ferry_wire_enc_error(&d->urgent_frame, err, why))
		ferry_wire_send(&d->urgent_writer, &d->urgent_frame);
	pthread_mutex_unlock(&d->urgent_lock);
}

/* ---- switchover --------------------------------------------------------- */

static int load_vcpus(struct dest *d)
{
	const struct ferry_vm *vm = &d->vm;

	for (unsigned int i = 0; i < d->stream.nr_vcpus; i++) {
		struct vcpu_slot *s = &d->vcpus[i];
		int ret;

		if (!s->seen)
			return ferry_fail(-EBADMSG, "vCPU %u's state never "
					  "came", i);
		if (!ferry_mp_state_valid((int)s->mp_state))
			return ferry_fail(-EINVAL, "vCPU %u: MP state %u is "
					  "not one ferry knows", i,
					  s->mp_state);
		ret = vm->ops->load(vm->handle, i, s->regs, s->len);
		if (!ret)
			ret = vm->ops->set_mp_state(vm->handle, i,
					(enum ferry_mp_state)s->mp_state);
		if (ret)
			return ferry_fail_ctx(ret, "loading vCPU %u", i);
	}
	return 0;
}

static int start_postcopy(struct dest *d)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->stream.nr_regions && !ret; i++)
		ret = postcopy_switchover(d->pc, i, d->stale[i]);
	if (!ret)
		ret = postcopy_start(d->pc, &request_ops, d);
	if (!ret)
		ret = start_receiver(&d->urgent);
	return ret;
}

/* Wait for every page to be in place, or for something to fail. */
static int wait_postcopy(struct dest *d)
{
	struct pollfd pfd = { .fd = postcopy_done_fd(d->pc), .events = POLLIN };

	for (;;) {
		int ret = first_error(d);

		if (!ret)
			ret = postcopy_error(d->pc);
		if (ret)
			return ret;
		if (poll(&pfd, 1, 50) > 0 || postcopy_done(d->pc))
			return 0;
	}
}

static int finish_postcopy(struct dest *d)
{
	struct postcopy_stats ps;
	struct ferry_migrate_stats *st = d->stats;
	int ret = wait_postcopy(d);

	if (!ret)
		ret = postcopy_finish(d->pc);
	if (!ret)
		ret = confirm(d, true);
	postcopy_get_stats(d->pc, &ps);
	st->minor_faults = ps.minor_faults;
	st->missing_faults = ps.missing_faults;
	st->pages_requested = ps.requests;
	st->fault_latency_p50_ns =
		ferry_hist_percentile(&d->pc->fault_latency, 50);
	st->fault_latency_p99_ns =
		ferry_hist_percentile(&d->pc->fault_latency, 99);
	st->fault_latency_max_ns = ferry_hist_max(&d->pc->fault_latency);
	if (d->opts && d->opts->fault_latency)
		ferry_hist_add(d->opts->fault_latency, &d->pc->fault_latency);
	return ret;
}

static int switchover(struct dest *d)
{
	const struct ferry_vm *vm = &d->vm;
	bool post = d->mode == FERRY_WIRE_SWITCH_POSTCOPY;
	uint64_t t0 = ferry_now_ns();
	int ret = post ? start_postcopy(d) : 0;

	if (!ret)
		ret = load_vcpus(d);
	/*
	 * Confirm before resuming: the vCPUs' first faults send requests on
	 * the urgent channel, and the source expects the confirmation first.
	 */
	if (!ret)
		ret = confirm(d, false);
	if (!ret)
		ret = vm->ops->resume(vm->handle);
	d->stats->downtime_ns = ferry_now_ns() - t0;
	d->stats->mode = post ? FERRY_MODE_POSTCOPY : FERRY_MODE_PRECOPY;
	if (!ret && post)
		ret = finish_postcopy(d);
	return ret;
}

/* ---- setup and teardown ------------------------------------------------- */

static int read_header(struct dest *d, struct receiver *rv0)
{
	struct ferry_wire_rec rec;
	ssize_t n;
	int ret;

	n = ferry_wire_recv(&rv0->reader, rv0->buf, FERRY_WIRE_BUF_SIZE, &rec);
	if (n == 0)
		return ferry_fail(-EPIPE, "the source closed the stream "
				  "before its header");
	if (n < 0)
		return (int)n;
	rv0->bytes += (uint64_t)n;
	if (rec.type != FERRY_WIRE_HEADER)
		return ferry_fail(-EBADMSG, "the stream starts with %s, not "
				  "HEADER", ferry_wire_type_name(rec.type));
	ret = ferry_wire_dec_header(&rec, &d->stream);
	if (!ret && d->stream.kind != FERRY_WIRE_MIGRATION)
		ret = ferry_fail(-EBADMSG, "this stream is a snapshot, not a "
				 "migration");
	if (ret)
		return ret;
	d->desc = malloc(d->stream.desc_len ? d->stream.desc_len : 1);
	if (!d->desc)
		return -ENOMEM;
	memcpy(d->desc, d->stream.desc, d->stream.desc_len);
	d->stream.desc = d->desc;
	return 0;
}

static int alloc_tables(struct dest *d)
{
	unsigned int nr = d->stream.nr_regions;

	d->stale = calloc(nr ? nr : 1, sizeof(*d->stale));
	d->vcpus = calloc(d->stream.nr_vcpus ? d->stream.nr_vcpus : 1,
			  sizeof(*d->vcpus));
	if (!d->stale || !d->vcpus)
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

static int prepare_all(struct dest *d)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->nr_receivers && !ret; i++)
		ret = prepare_receiver(d, &d->receivers[i], d->session->bulk[i],
				       false);
	if (!ret)
		ret = prepare_receiver(d, &d->urgent, d->session->urgent, true);
	return ret;
}

static int setup(struct dest *d)
{
	int ret = prepare_all(d);

	if (!ret)
		ret = read_header(d, &d->receivers[0]);
	if (!ret)
		ret = alloc_tables(d);
	if (!ret)
		ret = d->ops->create(d->ops_arg, &d->stream, &d->vm);
	if (ret)
		return ret;
	d->vm_created = true;
	ret = check_vm(d);
	if (!ret)
		ret = postcopy_create(d->vm.mem, &d->pc);
	return ret;
}

static int start_all(struct dest *d)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->nr_receivers && !ret; i++)
		ret = start_receiver(&d->receivers[i]);
	return ret;
}

static void collect_stats(struct dest *d)
{
	struct ferry_migrate_stats *st = d->stats;
	struct receiver *all[FERRY_NET_MAX_BULK + 1];
	unsigned int n = 0;
	uint64_t faults = 0, bytes = 0;

	for (unsigned int i = 0; i < d->nr_receivers; i++)
		all[n++] = &d->receivers[i];
	all[n++] = &d->urgent;
	for (unsigned int i = 0; i < n; i++) {
		st->bytes_received += all[i]->bytes;
		st->pages_installed += all[i]->installed;
		bytes += all[i]->installed_bytes;
		faults += all[i]->faults.minor + all[i]->faults.major;
	}
	st->install_page_faults = faults;
	st->faults_per_installed_page = bytes ?
		(double)faults * 4096.0 / (double)bytes : 0;
	st->total_ns = ferry_now_ns() - d->start_ns;
	if (d->vm_created) {
		st->guest_bytes = d->vm.mem->total_size;
		for (unsigned int i = 0; i < d->vm.mem->nr_regions; i++) {
			uint64_t b = 0;

			if (!ferry_region_pmd_mapped(&d->vm.mem->regions[i], &b))
				st->pmd_mapped_bytes += b;
		}
	}
}

static void stop_all(struct dest *d)
{
	for (unsigned int i = 0; i < d->nr_receivers; i++)
		join_receiver(&d->receivers[i]);
	join_receiver(&d->urgent);
}

static void dest_free(struct dest *d)
{
	for (unsigned int i = 0; d->stale && i < d->stream.nr_regions; i++)
		free(d->stale[i]);
	for (unsigned int i = 0; d->vcpus && i < d->stream.nr_vcpus; i++)
		free(d->vcpus[i].regs);
	free(d->stale);
	free(d->vcpus);
	free(d->desc);
	free(d->receivers);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->urgent_lock);
	free(d);
}

static int run(struct dest *d)
{
	int ret = setup(d);

	if (!ret)
		ret = start_all(d);
	if (!ret)
		ret = wait_switchover(d);
	if (!ret)
		ret = switchover(d);
	if (ret) {
		char why[512];

		/* Stop every thread: they may sit in I/O or wait on pages. */
		snprintf(why, sizeof(why), "%s", ferry_errmsg());
		tell_source(d, ret, why);
		ferry_net_session_shutdown(d->session);
		stop_all(d);
		postcopy_destroy(d->pc);
		d->pc = NULL;
		ferry_fail(ret, "%s", why);
		return ret;
	}
	stop_all(d);	/* the source sends COMPLETE on every channel */
	return first_error(d);
}

int ferry_migrate_recv(struct ferry_session *session,
		       const struct ferry_dest_ops *ops, void *arg,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_vm *vm, struct ferry_migrate_stats *stats)
{
	struct dest *d;
	int ret;

	if (!session || !session->nr_bulk || !session->urgent || !ops ||
	    !ops->create)
		return ferry_fail(-EINVAL, "receiving needs a session with a "
				  "bulk and an urgent channel, and a create op");
	memset(stats, 0, sizeof(*stats));
	d = calloc(1, sizeof(*d));
	if (!d)
		return ferry_fail(-ENOMEM, "out of memory");
	*d = (struct dest){ .session = session, .ops = ops, .ops_arg = arg,
			    .opts = opts, .stats = stats,
			    .nr_receivers = session->nr_bulk,
			    .start_ns = ferry_now_ns() };
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
	pthread_mutex_init(&d->urgent_lock, NULL);
	ferry_wire_writer_init(&d->urgent_writer, session->urgent);
	d->receivers = calloc(d->nr_receivers, sizeof(*d->receivers));
	ret = d->receivers ? run(d) : ferry_fail(-ENOMEM, "out of memory");
	collect_stats(d);
	postcopy_destroy(d->pc);
	if (ret && d->vm_created && ops->discard)
		ops->discard(arg, &d->vm);
	else if (!ret)
		*vm = d->vm;
	dest_free(d);
	return ret;
}
