// SPDX-License-Identifier: MIT
/*
 * source_urgent: the urgent channel, from the source's side.  The main
 * thread reads the destination's confirmation (or its last word, when it
 * gives up) there; in post-copy a thread of its own answers the
 * destination's page requests, so a faulting vCPU never waits behind bulk
 * data, and tells the push where the guest faults.
 */
#include <stdio.h>

#include "base/error.h"
#include "base/sys.h"
#include "migrate/source_int.h"

/* Read the destination's next urgent record, of type `want`. */
static int urgent_expect(struct source *src, enum ferry_wire_type want,
			 struct ferry_wire_rec *rec)
{
	struct ferry_wire_error e;
	ssize_t n = ferry_wire_recv(&src->urgent_reader, src->main_buf,
				    FERRY_WIRE_BUF_SIZE, rec);

	if (n == 0)
		return ferry_fail(-EPIPE, "the destination closed the "
				  "urgent channel");
	if (n < 0)
		return (int)n;
	if (rec->type == FERRY_WIRE_ERROR && !ferry_wire_dec_error(rec, &e))
		return ferry_fail(-(e.err ? e.err : EIO), "the destination "
				  "gave up: %s", e.msg);
	if (rec->type != want)
		return ferry_fail(-EBADMSG, "expected %s from the destination, "
				  "got %s", ferry_wire_type_name(want),
				  ferry_wire_type_name(rec->type));
	return 0;
}

int source_wait_resumed(struct source *src)
{
	struct ferry_wire_rec rec;
	enum ferry_wire_switch_mode mode;
	int ret = urgent_expect(src, FERRY_WIRE_SWITCHOVER, &rec);

	if (!ret)
		ret = ferry_wire_dec_switchover(&rec, &mode);
	return ret;
}

int source_peer_reason(struct source *src, int err)
{
	int fd = ferry_chan_poll_fd(src->session->urgent);
	struct ferry_wire_error e;
	struct ferry_wire_rec rec;
	char ours[256];

	if (err != -EPIPE && err != -ECONNRESET)
		return err;
	snprintf(ours, sizeof(ours), "%s", ferry_error_msg());
	/* A last word comes at once if at all: 200 ms for it. */
	if (evfd_wait(fd, src->sender_threads.stop_fd, 200) != 1 ||
	    ferry_wire_recv(&src->urgent_reader, src->main_buf,
			    FERRY_WIRE_BUF_SIZE, &rec) <= 0 ||
	    rec.type != FERRY_WIRE_ERROR || ferry_wire_dec_error(&rec, &e))
		return ferry_fail(err, "%s", ours);
	return ferry_fail(err, "the destination gave up: %s", e.msg);
}

/* ---- the urgent thread (post-copy) ------------------------------------- */

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
	int ret;

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
	ret = sender_flush_to(u, &src->urgent_writer, false, req->request_id);
	note_request(src, req);
	return ret;
}

static int serve_urgent(struct source *src, struct sender *u, void *buf)
{
	struct ferry_wire_page_request req;
	struct ferry_wire_rec rec;

	for (;;) {
		ssize_t n = ferry_wire_recv(&src->urgent_reader, buf,
					    FERRY_WIRE_BUF_SIZE, &rec);
		int ret;

		if (n == 0)
			return ferry_fail(-EPIPE, "the destination closed the "
					  "urgent channel before completing");
		if (n < 0)
			return (int)n;
		if (rec.type == FERRY_WIRE_COMPLETE)
			return 0;
		if (rec.type != FERRY_WIRE_PAGE_REQUEST)
			return ferry_fail(-EBADMSG, "unexpected %s on the "
					  "urgent channel",
					  ferry_wire_type_name(rec.type));
		ret = ferry_wire_dec_page_request(&src->stream, &rec, &req);
		if (!ret)
			ret = answer_request(src, u, &req);
		if (ret)
			return ret;
	}
}

static void *urgent_main(void *arg)
{
	struct source *src = arg;
	int ret;

	sys_thread_boost(SYS_BOOST_URGENT);
	ret = serve_urgent(src, src->urgent_sender, src->urgent_buf);
	if (ret) {
		err_slot_set(&src->urgent_err, ret);
		/* wake the pushers: the session is over */
		ferry_net_session_shutdown(src->session);
	}
	return NULL;
}

int source_start_urgent(struct source *src)
{
	return threads_start(&src->urgent_thread, urgent_main, src, "urgent");
}

void source_stop_urgent(struct source *src)
{
	threads_stop(&src->urgent_thread);
}
