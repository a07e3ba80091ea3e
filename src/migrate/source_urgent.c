// SPDX-License-Identifier: MIT
/*
 * source_urgent: the urgent channel, from the source's side.  One thread
 * reads everything the destination sends there, for the whole session:
 * its answer to the HEADER (ACCEPT, or RESUME and the pages it still
 * needs), heartbeats, pages to send again (REFETCH), READY, page requests
 * (answered at once, the whole page straight from guest memory, so a
 * faulting vCPU never waits behind bulk data), COMPLETE, and its last
 * word when it gives up (ERROR).  What main waits for it sets under the
 * handle's lock.
 */
#include <stdio.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/sys.h"
#include "migrate/source_int.h"

static int misplaced(const struct ferry_wire_rec *rec, const char *when)
{
	return ferry_fail(-EBADMSG, "the destination sent %s %s",
			  ferry_wire_type_name(rec->type), when);
}

/* Set a flag main waits on. */
static void tell_main(struct source *src, bool *flag)
{
	pthread_mutex_lock(&src->m->lock);
	*flag = true;
	pthread_cond_broadcast(&src->m->cond);
	pthread_mutex_unlock(&src->m->lock);
}

/* Main may wait for the destination to show a round arrived. */
static void heard_heartbeat(struct source *src)
{
	pthread_mutex_lock(&src->m->lock);
	pthread_cond_broadcast(&src->m->cond);
	pthread_mutex_unlock(&src->m->lock);
}

static void set_reply(struct source *src, enum source_reply reply)
{
	pthread_mutex_lock(&src->m->lock);
	src->reply = reply;
	pthread_cond_broadcast(&src->m->cond);
	pthread_mutex_unlock(&src->m->lock);
}

static int on_error(struct source *src, const struct ferry_wire_rec *rec)
{
	struct ferry_wire_error e;
	int ret = ferry_wire_dec_error(rec, &e);

	if (ret)
		return ret;
	ret = ferry_fail(-(e.err ? e.err : EIO), "the destination gave up: %s",
			 e.msg);
	return link_peer_said(&src->link, ret);
}

static int on_accept(struct source *src, const struct ferry_wire_rec *rec)
{
	struct ferry_wire_accept a;
	int ret = ferry_wire_dec_accept(rec, &a);

	if (ret)
		return ret;
	if (src->reply != REPLY_NONE)
		return misplaced(rec, "twice");
	if (a.version != FERRY_WIRE_VERSION || a.id != src->stream.id)
		return ferry_fail(-EPROTO, "the destination accepted version "
				  "%u of migration %016llx; this is version %u "
				  "of %016llx", a.version,
				  (unsigned long long)a.id, FERRY_WIRE_VERSION,
				  (unsigned long long)src->stream.id);
	set_reply(src, REPLY_ACCEPT);
	return 0;
}

/*
 * RESUME: the destination holds this migration.  Its OWED bitmaps follow;
 * the reply is complete (REPLY_RESUME) once they all came and their bits
 * add up to what RESUME announced.
 */
static int owed_done(struct source *src)
{
	if (source_count_resume(src) != src->resume_owed)
		return ferry_fail(-EBADMSG, "the destination's owed bitmaps "
				  "hold %llu pages; its RESUME said %llu",
				  (unsigned long long)source_count_resume(src),
				  (unsigned long long)src->resume_owed);
	set_reply(src, REPLY_RESUME);
	return 0;
}

static int on_resume(struct source *src, const struct ferry_wire_rec *rec,
		     uint32_t *bitmaps_left)
{
	struct ferry_wire_resume r;
	int ret = ferry_wire_dec_resume(rec, &r);

	if (ret)
		return ret;
	if (src->reply != REPLY_NONE)
		return misplaced(rec, "twice");
	if (r.id != src->stream.id)
		return ferry_fail(-ESRCH, "the destination resumes migration "
				  "%016llx, not this one (%016llx): it holds "
				  "another VM", (unsigned long long)r.id,
				  (unsigned long long)src->stream.id);
	source_clear_resume(src);
	src->resume_owed = r.owed;
	*bitmaps_left = r.nr_bitmaps;
	return r.nr_bitmaps ? 0 : owed_done(src);
}

static int on_owed(struct source *src, const struct ferry_wire_rec *rec,
		   uint32_t *bitmaps_left)
{
	struct ferry_wire_bitmap b;
	uint64_t *map;
	int ret = ferry_wire_dec_bitmap(&src->stream, rec, &b);

	if (ret)
		return ret;
	if (!*bitmaps_left || b.kind != FERRY_WIRE_BITMAP_OWED)
		return misplaced(rec, "outside a RESUME");
	map = src->resume_map[b.region];
	for (uint32_t w = 0; w < bitmap_words(b.nr_bits); w++)
		map[b.first_page / 64 + w] |= b.words[w];
	return --*bitmaps_left ? 0 : owed_done(src);
}

/* Pages the destination could not use: they go again in the next round. */
static int on_refetch(struct source *src, const struct ferry_wire_rec *rec)
{
	struct ferry_wire_pages p;
	int ret = ferry_wire_dec_refetch(&src->stream, rec, &p);

	if (ret)
		return ret;
	for (uint32_t i = 0; i < p.count; i++) {
		_Atomic uint64_t *word = (_Atomic uint64_t *)
			&src->refetch_map[p.region][p.index[i] / 64];

		atomic_fetch_or(word, 1ULL << (p.index[i] % 64));
	}
	return 0;
}

static int on_ready(struct source *src, const struct ferry_wire_rec *rec)
{
	enum ferry_wire_switch_mode mode;
	int ret = ferry_wire_dec_switchover(rec, &mode);

	if (ret)
		return ret;
	if (!atomic_load(&src->vm_paused))
		return misplaced(rec, "before the switchover");
	tell_main(src, &src->ready);
	return 0;
}

/* ---- page requests ------------------------------------------------------ */

/* Tell the push where the guest faults now, and count the request. */
static void note_request(struct source *src,
			 const struct ferry_wire_page_request *req)
{
	atomic_store_explicit(&src->hint_region, req->region,
			      memory_order_relaxed);
	atomic_store_explicit(&src->hint_page, req->page,
			      memory_order_relaxed);
	atomic_fetch_add_explicit(&src->hint_gen, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&src->requested, req->count,
				  memory_order_relaxed);
}

static int answer_request(struct source *src, struct sender *u,
			  const struct ferry_wire_page_request *req)
{
	struct ferry_region *r = &src->vm->mem->regions[req->region];

	u->nr_data = u->nr_zero = 0;
	u->batch_region = req->region;
	for (uint32_t i = 0; i < req->count; i++) {
		uint64_t p = (uint64_t)req->page + i;

		if (migrate_bit_take(src->send_map[req->region], p))
			atomic_fetch_add_explicit(&src->answered_owed, 1,
						  memory_order_relaxed);
		if (migrate_page_is_zero(source_view(r) + p * r->page_size,
					 r->page_size))
			u->zero_index[u->nr_zero++] = (uint32_t)p;
		else
			u->data_index[u->nr_data++] = (uint32_t)p;
	}
	/* Counted first: whoever sees the answer's pages sees the request. */
	note_request(src, req);
	return sender_flush_to(u, &src->link.urgent_writer, false,
			       req->request_id);
}

static int on_request(struct source *src, const struct ferry_wire_rec *rec)
{
	struct ferry_wire_page_request req;
	int ret = ferry_wire_dec_page_request(&src->stream, rec, &req);

	if (ret)
		return ret;
	/* Pages of a running VM would be no answer: they change. */
	if (!atomic_load(&src->vm_paused))
		return misplaced(rec, "while the VM runs here");
	/* Nor are they for a peer that has not said which VM it holds. */
	if (src->reply == REPLY_NONE)
		return misplaced(rec, "before it answered the HEADER");
	return answer_request(src, src->urgent_sender, &req);
}

/* ---- the thread --------------------------------------------------------- */

static int dispatch(struct source *src, const struct ferry_wire_rec *rec)
{
	switch (rec->type) {
	case FERRY_WIRE_HEARTBEAT:	/* link_heard() took it */
		heard_heartbeat(src);
		return 0;
	case FERRY_WIRE_ERROR:
		return on_error(src, rec);
	case FERRY_WIRE_ACCEPT:
		return on_accept(src, rec);
	case FERRY_WIRE_RESUME:
		return on_resume(src, rec, &src->owed_bitmaps_left);
	case FERRY_WIRE_BITMAP:
		return on_owed(src, rec, &src->owed_bitmaps_left);
	case FERRY_WIRE_REFETCH:
		return on_refetch(src, rec);
	case FERRY_WIRE_SWITCHOVER:
		return on_ready(src, rec);
	case FERRY_WIRE_PAGE_REQUEST:
		return on_request(src, rec);
	case FERRY_WIRE_COMPLETE:
		tell_main(src, &src->dest_complete);
		return 0;
	default:
		return misplaced(rec, "on the urgent channel");
	}
}

static int serve_urgent(struct source *src)
{
	struct ferry_wire_rec rec;

	for (;;) {
		ssize_t n = ferry_wire_recv(&src->urgent_reader,
					    src->urgent_buf,
					    FERRY_WIRE_BUF_SIZE, &rec);
		int ret;

		if (n == 0)
			return ferry_fail(-EPIPE, "the destination closed the "
					  "urgent channel");
		if (n < 0)
			return (int)n;
		atomic_fetch_add_explicit(&src->m->bytes_received,
					  (uint64_t)n, memory_order_relaxed);
		link_heard(&src->link, &rec, (uint64_t)n);
		ret = dispatch(src, &rec);
		if (ret)
			return ret;
	}
}

static void *urgent_main(void *arg)
{
	struct source *src = arg;
	int ret;

	ferry_error_clear();
	sys_thread_boost(SYS_BOOST_URGENT);
	src->owed_bitmaps_left = 0;
	ret = serve_urgent(src);
	link_fail(&src->link, ret);	/* the session is over either way */
	return NULL;
}

int source_start_urgent(struct source *src)
{
	ferry_wire_reader_init(&src->urgent_reader, src->session->urgent);
	return threads_start(&src->urgent_thread, urgent_main, src, "urgent");
}

void source_stop_urgent(struct source *src)
{
	threads_stop(&src->urgent_thread);
}
