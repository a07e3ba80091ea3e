// SPDX-License-Identifier: MIT
/*
 * dest_recv: the receivers, one thread per channel.  Pages are stored as
 * they come, bulk channel 0's switchover records are collected, each bulk
 * channel counts itself in at SWITCHOVER, and the urgent channel brings
 * heartbeats, COMMIT and the replies to page requests.  A page whose copy
 * fails its check is marked and asked for again (refetch.h), never
 * installed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/sys.h"
#include "migrate/dest_int.h"
#include "pages/postcopy.h"

static int misplaced(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	return ferry_fail(-EBADMSG, "%s: record %llu: %s out of place",
			  rv->chan->name, (unsigned long long)rec->nr,
			  ferry_wire_type_name(rec->type));
}

/* ---- pages that failed their check -------------------------------------- */

/*
 * Pre-copy: the source sends what REFETCH names in its next round, so a
 * byte changed in transit does not leave an old copy here unnoticed.
 */
struct refetch_arg {
	const struct ferry_wire_stream *stream;
	struct ferry_wire_batch batch;
};

static int enc_refetch(struct ferry_wire_frame *f, const void *arg)
{
	const struct refetch_arg *a = arg;

	return ferry_wire_enc_refetch(f, a->stream, &a->batch);
}

static int send_refetch(struct dest *d, const struct ferry_wire_pages *p,
			const uint32_t *bad, uint32_t nr)
{
	struct refetch_arg a = { .stream = &d->stream,
		.batch = { .region = p->region, .count = nr, .index = bad } };

	return link_send(&d->link, enc_refetch, &a);
}

/*
 * Page i of p failed its check.  A copy the paused source sent cannot
 * have torn: it counts against the page's tries.
 */
static int page_failed(struct receiver *rv, const struct ferry_wire_pages *p,
		       uint32_t i)
{
	struct dest *d = rv->d;

	refetch_mark(&d->rf, p->region, p->index[i]);
	pthread_mutex_lock(&d->stats_lock);
	d->st.torn_pages++;
	pthread_mutex_unlock(&d->stats_lock);
	return p->live ? 0 : refetch_failed(&d->rf, p->region, p->index[i]);
}

/* ---- records ------------------------------------------------------------ */

/* How many pages from i on are consecutive and whole. */
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

/*
 * Before switchover (and pre-copy's replies): runs of consecutive pages,
 * one write each.  A failed page is marked, and named in a REFETCH.
 */
static int store_runs(struct receiver *rv, const struct ferry_wire_pages *p)
{
	struct dest *d = rv->d;
	uint32_t bad[FERRY_WIRE_MAX_PAGES], nr_bad = 0, i = 0;
	int ret = 0;

	while (i < p->count && !ret) {
		uint32_t n = run_length(p, i);

		if (!n) {
			ret = page_failed(rv, p, i);
			bad[nr_bad++] = p->index[i++];
			continue;
		}
		ret = postcopy_store(d->pc, p->region, p->index[i], n,
				     p->data ? p->data + i * p->page_size :
					       NULL);
		if (!ret)
			refetch_clear(&d->rf, p->region, p->index[i], n);
		rv->installed += n;
		rv->installed_bytes += (uint64_t)n * p->page_size;
		i += n;
	}
	if (!ret && nr_bad && !rv->urgent)
		ret = send_refetch(d, p, bad, nr_bad);
	if (!ret && nr_bad && rv->urgent)	/* a reply: ask at once */
		for (uint32_t k = 0; k < nr_bad && !ret; k++)
			ret = dest_request(d, p->region, bad[k]);
	return ret;
}

/* After switchover: page by page, each into the guest view. */
static int install_each(struct receiver *rv, const struct ferry_wire_pages *p)
{
	struct dest *d = rv->d;
	int ret = 0;

	for (uint32_t i = 0; i < p->count && ret >= 0; i++) {
		uint32_t page = p->index[i];

		if (p->data && ferry_wire_page_torn(p, i)) {
			if (!postcopy_needs(d->pc, p->region, page))
				continue;	/* in place already */
			ret = page_failed(rv, p, i);
			if (!ret)
				ret = postcopy_request(d->pc, p->region, page);
			continue;
		}
		ret = postcopy_install(d->pc, p->region, page,
				       p->data ? p->data + i * p->page_size :
						 NULL);
		if (ret >= 0)
			refetch_clear(&d->rf, p->region, page, 1);
		rv->installed += ret > 0;
		rv->installed_bytes += ret > 0 ? p->page_size : 0;
	}
	return ret < 0 ? ret : 0;
}

static int store_pages(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	struct dest *d = rv->d;
	struct ferry_wire_pages p;
	int ret = ferry_wire_dec_pages_tolerant(&d->stream, rec, &p);

	if (ret)
		return ret;
	if (rv->urgent && !p.request_id)
		return misplaced(rv, rec);
	if (atomic_load(&d->all_in))	/* a late push, a duplicate reply */
		return 0;
	/* Fault service runs only in post-copy, from its switchover on. */
	if ((rv->switched || rv->urgent) && d->pc->started)
		return install_each(rv, &p);
	if (rv->switched)	/* pre-copy sends nothing after SWITCHOVER */
		return misplaced(rv, rec);
	ret = store_runs(rv, &p);
	if (rv->urgent) {	/* main waits for the failed pages */
		pthread_mutex_lock(&d->m->lock);
		pthread_cond_broadcast(&d->m->cond);
		pthread_mutex_unlock(&d->m->lock);
	}
	return ret;
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
		return ferry_fail(-EBADMSG, "a bitmap of kind %u is not "
				  "expected here", b.kind);
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
	pthread_mutex_lock(&d->m->lock);
	if (d->nr_switched && mode != d->mode)
		ret = ferry_fail(-EBADMSG, "channels disagree on the "
				 "switchover mode");
	d->mode = mode;
	d->nr_switched++;
	pthread_cond_broadcast(&d->m->cond);
	pthread_mutex_unlock(&d->m->lock);
	rv->switched = true;
	return ret;
}

static int take_commit(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	struct dest *d = rv->d;
	uint64_t id;
	int ret = ferry_wire_dec_commit(rec, &id);

	if (ret)
		return ret;
	if (id != d->stream.id)
		return ferry_fail(-EBADMSG, "COMMIT of migration %016llx, not "
				  "this one", (unsigned long long)id);
	pthread_mutex_lock(&d->m->lock);
	if (!d->ready_sent)
		ret = misplaced(rv, rec);	/* nothing to commit to yet */
	d->got_commit = !ret;
	pthread_cond_broadcast(&d->m->cond);
	pthread_mutex_unlock(&d->m->lock);
	return ret;
}

static int source_error(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	struct ferry_wire_error e;
	int ret = ferry_wire_dec_error(rec, &e);

	if (ret)
		return ret;
	ret = ferry_fail(-(e.err ? e.err : EIO), "the source gave up: %s",
			 e.msg);
	return link_peer_said(&rv->d->link, ret);
}

/* An urgent record; 1 when the channel is complete. */
static int urgent_record(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	switch (rec->type) {
	case FERRY_WIRE_HEARTBEAT:
		return 0;		/* link_heard() took it */
	case FERRY_WIRE_PAGES:
	case FERRY_WIRE_ZERO_PAGES:
		return store_pages(rv, rec);
	case FERRY_WIRE_COMMIT:
		return take_commit(rv, rec);
	case FERRY_WIRE_COMPLETE:
		return 1;
	case FERRY_WIRE_ERROR:
		return source_error(rv, rec);
	default:
		return misplaced(rv, rec);
	}
}

/* A bulk record; 1 when the channel is complete. */
static int bulk_record(struct receiver *rv, const struct ferry_wire_rec *rec)
{
	switch (rec->type) {
	case FERRY_WIRE_PAGES:
	case FERRY_WIRE_ZERO_PAGES:
		return store_pages(rv, rec);
	case FERRY_WIRE_ROUND_END:
		/* The source waits to hear that a round is in before it
		 * pauses: its switchover starts with nothing in flight. */
		return link_heartbeat(&rv->d->link);
	case FERRY_WIRE_BITMAP:
		return rv->bulk0 && !rv->switched ? take_bitmap(rv, rec) :
						    misplaced(rv, rec);
	case FERRY_WIRE_VCPU:
		return rv->bulk0 && !rv->switched ? take_vcpu(rv, rec) :
						    misplaced(rv, rec);
	case FERRY_WIRE_SWITCHOVER:
		return take_switchover(rv, rec);
	case FERRY_WIRE_COMPLETE:
		return 1;
	case FERRY_WIRE_ERROR:
		return source_error(rv, rec);
	default:
		return misplaced(rv, rec);
	}
}

/* ---- threads ------------------------------------------------------------ */

static int receive(struct receiver *rv)
{
	struct dest *d = rv->d;
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
		atomic_fetch_add_explicit(&d->m->bytes_received, (uint64_t)n,
					  memory_order_relaxed);
		link_heard(&d->link, &rec, (uint64_t)n);
		ret = rv->urgent ? urgent_record(rv, &rec) :
				   bulk_record(rv, &rec);
		if (ret)
			return ret > 0 ? 0 : ret;
	}
}

static void *receiver_main(void *arg)
{
	struct receiver *rv = arg;
	struct dest *d = rv->d;
	int ret;

	ferry_error_clear();
	sys_thread_boost(rv->urgent ? SYS_BOOST_URGENT : SYS_BOOST_BULK);
	ferry_pagefaults_start(&rv->faults, FERRY_PAGEFAULTS_THREAD);
	ret = receive(rv);
	ferry_pagefaults_stop(&rv->faults);
	if (ret)	/* the first failure ends the session */
		link_fail(&d->link, ret);
	pthread_mutex_lock(&d->m->lock);
	d->nr_ended += !rv->urgent;
	pthread_cond_broadcast(&d->m->cond);
	pthread_mutex_unlock(&d->m->lock);
	return NULL;
}

int dest_start_receiver(struct dest *d, struct receiver *rv,
			struct ferry_chan *chan, bool urgent)
{
	rv->d = d;
	rv->chan = chan;
	rv->urgent = urgent;
	return threads_start(&d->threads, receiver_main, rv, "receiver");
}

static bool all_switched(const void *arg)
{
	const struct dest *d = arg;

	return d->nr_switched == d->nr_receivers;
}

int dest_wait_switchover(struct dest *d)
{
	return mig_wait_until(d->m, &d->link, all_switched, d);
}

static bool flag_set(const void *flag)
{
	return *(const bool *)flag;
}

int dest_wait_flag(struct dest *d, const bool *flag)
{
	return mig_wait_until(d->m, &d->link, flag_set, flag);
}
