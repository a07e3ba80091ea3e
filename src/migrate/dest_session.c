// SPDX-License-Identifier: MIT
/*
 * dest_session: one connection of a migration, from the destination.
 * Open: the link (heartbeats, the watchdog) and the urgent receiver,
 * from the first moment, so a source that waits while the VM is built
 * sees this side alive; then the HEADER on bulk channel 0 and the answer
 * to it; then the bulk receivers.  Close: shut it down, join them all,
 * keep their figures.  A paused migration opens another.
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

/* One receiver's record buffer, touched now rather than in the downtime. */
static int alloc_buf(struct receiver *rv)
{
	rv->buf = sys_zalloc_aligned(4096, FERRY_WIRE_BUF_SIZE);
	return rv->buf ? 0 : ferry_fail(-ENOMEM, "out of memory");
}

/*
 * The receivers, with buffers for the two channels that speak before the
 * HEADER is checked (bulk 0 and the urgent channel): the other channels'
 * come once the HEADER has proved the stream (dest_session_start_bulk),
 * so a peer that never sends one costs two buffers however many channels
 * it opened.
 */
static int alloc_receivers(struct dest *d, struct ferry_session *session)
{
	int ret;

	d->nr_receivers = session->nr_bulk;
	d->receivers = calloc(d->nr_receivers, sizeof(*d->receivers));
	if (!d->receivers)
		return ferry_fail(-ENOMEM, "out of memory");
	memset(&d->urgent, 0, sizeof(d->urgent));
	ret = alloc_buf(&d->receivers[0]);
	return ret ? ret : alloc_buf(&d->urgent);
}

static void forget_session(struct dest *d)
{
	pthread_mutex_lock(&d->m->lock);
	d->nr_switched = d->nr_ended = 0;
	d->ready_sent = d->got_commit = false;
	pthread_mutex_unlock(&d->m->lock);
}

int dest_session_open(struct dest *d, struct ferry_session *session)
{
	const struct ferry_migrate_opts *o = d->opts;
	int ret;

	d->session = session;
	d->threads = (struct threads){ .stop_fd = -1 };
	d->session_open = true;
	forget_session(d);
	ret = alloc_receivers(d, session);
	if (!ret)
		ret = threads_init(&d->threads);
	if (!ret)
		ret = link_start(&d->link, session, "the source",
				 o->heartbeat_ms, o->timeout_ms, &d->m->lock,
				 &d->m->cond);
	if (!ret) {
		mig_session_use(d->m, session, &d->link);
		ferry_wire_reader_init(&d->urgent.reader, session->urgent);
		ferry_wire_reader_init(&d->receivers[0].reader,
				       session->bulk[0]);
		ret = dest_start_receiver(d, &d->urgent, session->urgent,
					  true);
	}
	return ret ? dest_session_close(d, ret) : 0;
}

int dest_session_start_bulk(struct dest *d, bool switched)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->nr_receivers && !ret; i++) {
		struct receiver *rv = &d->receivers[i];

		rv->bulk0 = i == 0;
		rv->switched = switched;
		if (!rv->buf)
			ret = alloc_buf(rv);
		if (ret)
			break;
		if (i)	/* bulk 0's reader is past the HEADER already */
			ferry_wire_reader_init(&rv->reader,
					       d->session->bulk[i]);
		ret = dest_start_receiver(d, rv, d->session->bulk[i], false);
	}
	if (!ret)	/* the source may hear requests from now on */
		dest_requests_on(d, true);
	return ret;
}

static void add_totals(struct dest *d, const struct receiver *rv)
{
	d->totals.bytes += rv->bytes;
	d->totals.installed += rv->installed;
	d->totals.installed_bytes += rv->installed_bytes;
	d->totals.faults += rv->faults.minor + rv->faults.major;
}

int dest_session_close(struct dest *d, int ret)
{
	if (!d->session_open)
		return ret;
	mig_session_use(d->m, NULL, NULL);
	/* Everything of it may sit in I/O, a request too: wake it all. */
	if (ret)
		link_fail(&d->link, ret);
	ferry_net_session_shutdown(d->session);
	dest_requests_on(d, false);	/* recorded only, until the next */
	threads_fini(&d->threads);
	/* Every thread of it has said what it met: the telling reason. */
	if (ret)
		ret = link_error(&d->link);
	link_fini(&d->link);
	for (unsigned int i = 0; d->receivers && i < d->nr_receivers; i++) {
		add_totals(d, &d->receivers[i]);
		free(d->receivers[i].buf);
	}
	add_totals(d, &d->urgent);
	free(d->urgent.buf);
	free(d->receivers);
	d->receivers = NULL;
	d->urgent.buf = NULL;
	mig_session_close(d->m, d->session);
	d->session = NULL;
	d->session_open = false;
	return ret;
}

/* ---- the HEADER --------------------------------------------------------- */

/* Bulk channel 0's first record, which must be a HEADER: decoded into s. */
static int read_first(struct dest *d, struct ferry_wire_stream *s)
{
	struct receiver *rv0 = &d->receivers[0];
	struct ferry_wire_rec rec;
	ssize_t n = ferry_wire_recv(&rv0->reader, rv0->buf,
				    FERRY_WIRE_BUF_SIZE, &rec);

	if (n == 0)
		return ferry_fail(-EPIPE, "the source closed the stream "
				  "before its header");
	if (n < 0)
		return (int)n;
	rv0->bytes += (uint64_t)n;
	atomic_fetch_add(&d->m->bytes_received, (uint64_t)n);
	link_heard(&d->link, &rec, (uint64_t)n);
	if (rec.type != FERRY_WIRE_HEADER)
		return ferry_fail(-EBADMSG, "the stream starts with %s, not "
				  "HEADER", ferry_wire_type_name(rec.type));
	n = ferry_wire_dec_header(&rec, s);
	if (!n && s->kind != FERRY_WIRE_MIGRATION)
		n = ferry_fail(-EBADMSG, "this stream is a snapshot, not a "
			       "migration");
	return (int)n;
}

int dest_read_header(struct dest *d)
{
	int ret = read_first(d, &d->stream);

	/* What the HEADER may make this side allocate is bounded before
	 * anything is sized from it. */
	if (!ret)
		ret = dest_limits_check(&d->stream,
					d->session->max_guest_bytes,
					"the source");
	if (ret)
		return ret;
	d->desc = malloc(d->stream.desc_len ? d->stream.desc_len : 1);
	if (!d->desc)
		return ferry_fail(-ENOMEM, "out of memory");
	memcpy(d->desc, d->stream.desc, d->stream.desc_len);
	d->stream.desc = d->desc;
	return 0;
}

static bool same_machine(const struct ferry_wire_stream *a,
			 const struct ferry_wire_stream *b)
{
	if (a->nr_regions != b->nr_regions || a->nr_vcpus != b->nr_vcpus)
		return false;
	for (unsigned int i = 0; i < a->nr_regions; i++)
		if (a->regions[i].page_size != b->regions[i].page_size ||
		    a->regions[i].size != b->regions[i].size ||
		    a->regions[i].guest_base != b->regions[i].guest_base)
			return false;
	return true;
}

int dest_check_rejoin(struct dest *d)
{
	struct ferry_wire_stream s;
	int ret = read_first(d, &s);

	if (ret)
		return ret;
	if (s.id != d->stream.id)
		return ferry_fail(-ESRCH, "this destination holds migration "
				  "%016llx, paused; the stream is migration "
				  "%016llx: another VM",
				  (unsigned long long)d->stream.id,
				  (unsigned long long)s.id);
	if (!same_machine(&s, &d->stream))
		return ferry_fail(-EINVAL, "migration %016llx comes back "
				  "with another machine description",
				  (unsigned long long)s.id);
	return 0;
}

/* ---- what this side says ------------------------------------------------ */

static int enc_accept(struct ferry_wire_frame *f, const void *arg)
{
	return ferry_wire_enc_accept(f, arg);
}

int dest_send_accept(struct dest *d)
{
	struct ferry_wire_accept a = { .version = FERRY_WIRE_VERSION,
				       .id = d->stream.id };

	return link_send(&d->link, enc_accept, &a);
}

static int enc_resume(struct ferry_wire_frame *f, const void *arg)
{
	return ferry_wire_enc_resume(f, arg);
}

struct owed_arg {
	const struct ferry_wire_stream *stream;
	struct ferry_wire_bitmap b;
};

static int enc_owed(struct ferry_wire_frame *f, const void *arg)
{
	const struct owed_arg *a = arg;

	return ferry_wire_enc_bitmap(f, a->stream, &a->b);
}

/* Bits of an OWED bitmap record: as many as the format allows. */
#define OWED_WINDOW	FERRY_WIRE_MAX_BITS

static bool window_empty(const uint64_t *map, uint64_t first, uint64_t bits)
{
	for (uint64_t w = first / 64; w < (first + bits + 63) / 64; w++)
		if (map[w])
			return false;
	return true;
}

/* Each region's owed bitmap in windows, leaving out empty ones. */
static int for_each_window(struct dest *d, uint64_t **maps, bool send,
			   uint32_t *nr)
{
	int ret = 0;

	*nr = 0;
	for (unsigned int i = 0; i < d->stream.nr_regions && !ret; i++) {
		uint64_t pages = d->stream.regions[i].nr_pages;

		for (uint64_t first = 0; first < pages && !ret;
		     first += OWED_WINDOW) {
			struct owed_arg a = { .stream = &d->stream, .b = {
				.region = i, .kind = FERRY_WIRE_BITMAP_OWED,
				.first_page = (uint32_t)first,
				.nr_bits = (uint32_t)(pages - first <
					OWED_WINDOW ? pages - first :
					OWED_WINDOW),
				.words = maps[i] + first / 64 } };

			if (window_empty(maps[i], first, a.b.nr_bits))
				continue;
			(*nr)++;
			if (send)
				ret = link_send(&d->link, enc_owed, &a);
		}
	}
	return ret;
}

/*
 * RESUME, then what this side still needs, as OWED bitmaps: every owed
 * page not in place, whatever the source last knew.
 */
int dest_send_resume(struct dest *d)
{
	unsigned int nr = d->stream.nr_regions;
	uint64_t **maps = calloc(nr, sizeof(*maps));
	struct ferry_wire_resume r = { .id = d->stream.id };
	int ret = maps ? 0 : -ENOMEM;

	for (unsigned int i = 0; !ret && i < nr; i++) {
		maps[i] = bitmap_alloc(d->stream.regions[i].nr_pages);
		if (!maps[i])
			ret = -ENOMEM;
		else
			r.owed += postcopy_owed_map(d->pc, i, maps[i]);
	}
	if (ret)
		ret = ferry_fail(ret, "out of memory");
	if (!ret)
		ret = for_each_window(d, maps, false, &r.nr_bitmaps);
	if (!ret)
		ret = link_send(&d->link, enc_resume, &r);
	if (!ret)
		ret = for_each_window(d, maps, true, &r.nr_bitmaps);
	for (unsigned int i = 0; maps && i < nr; i++)
		free(maps[i]);
	free(maps);
	return ret;
}

void dest_tell_source(struct dest *d, int err)
{
	struct link *l = &d->link;
	char why[400];

	if (!d->session_open)
		return;
	snprintf(why, sizeof(why), "%s", ferry_error_msg());
	pthread_mutex_lock(&l->send_lock);
	if (!ferry_wire_enc_error(&l->frame, err, why))
		ferry_wire_send(&l->urgent_writer, &l->frame);
	pthread_mutex_unlock(&l->send_lock);
	ferry_fail(err, "%s", why);	/* the send's failure is not news */
}
