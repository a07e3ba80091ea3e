// SPDX-License-Identifier: MIT
/*
 * dest_recv: the receivers, one thread per channel.  Pages are stored as
 * they come, bulk channel 0's switchover records are collected, and each
 * bulk channel counts itself in at SWITCHOVER.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/sys.h"
#include "migrate/dest_int.h"
#include "migrate/dest_limits.h"
#include "pages/postcopy.h"

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

/* ---- threads ------------------------------------------------------------ */

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

	ferry_error_clear();
	sys_thread_boost(rv->urgent ? SYS_BOOST_URGENT : SYS_BOOST_BULK);
	ferry_pagefaults_start(&rv->faults, FERRY_PAGEFAULTS_THREAD);
	ret = receive(rv);
	ferry_pagefaults_stop(&rv->faults);
	if (ret) {	/* the first failure ends the migration */
		err_slot_set(&d->err, ret);
		evfd_signal(d->threads.stop_fd);
	}
	pthread_mutex_lock(&d->lock);
	d->nr_failed += ret != 0;
	d->nr_ended++;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

int dest_prepare_receiver(struct dest *d, struct receiver *rv,
			  struct ferry_chan *chan, bool urgent)
{
	rv->d = d;
	rv->chan = chan;
	rv->urgent = urgent;
	ferry_wire_reader_init(&rv->reader, chan);
	rv->buf = sys_zalloc_aligned(4096, FERRY_WIRE_BUF_SIZE);
	if (!rv->buf)
		return ferry_fail(-ENOMEM, "out of memory");
	return 0;
}

int dest_start_receiver(struct dest *d, struct receiver *rv)
{
	return threads_start(&d->threads, receiver_main, rv, "receiver");
}

int dest_wait_switchover(struct dest *d)
{
	int ret;

	pthread_mutex_lock(&d->lock);
	while (!d->nr_failed && d->nr_switched < d->nr_receivers &&
	       d->nr_ended < d->nr_receivers)
		pthread_cond_wait(&d->cond, &d->lock);
	ret = err_slot_get(&d->err);
	if (!ret && d->nr_switched < d->nr_receivers)
		ret = ferry_fail(-EPIPE, "a channel ended before switchover");
	pthread_mutex_unlock(&d->lock);
	return ret;
}

int dest_read_header(struct dest *d)
{
	struct receiver *rv0 = &d->receivers[0];
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
	if (!ret)	/* before anything is sized from the header */
		ret = dest_limits_check(&d->stream,
					d->session->max_guest_bytes,
					"the source");
	if (ret)
		return ret;
	d->desc = malloc(d->stream.desc_len ? d->stream.desc_len : 1);
	if (!d->desc)
		return -ENOMEM;
	memcpy(d->desc, d->stream.desc, d->stream.desc_len);
	d->stream.desc = d->desc;
	return 0;
}
