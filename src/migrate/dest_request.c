// SPDX-License-Identifier: MIT
/*
 * dest_request: the destination's page requests, the fault thread's and
 * main's, on the urgent channel of whichever session is open.  With no
 * session a request is only recorded (postcopy's requested bits): the
 * next session asks again.
 */
#include <pthread.h>

#include "migrate/dest_int.h"

void dest_requests_on(struct dest *d, bool on)
{
	pthread_mutex_lock(&d->req_lock);
	d->requests_on = on;
	pthread_mutex_unlock(&d->req_lock);
}

struct request_arg {
	const struct ferry_wire_stream *stream;
	struct ferry_wire_page_request req;
};

static int enc_request(struct ferry_wire_frame *f, const void *arg)
{
	const struct request_arg *a = arg;

	return ferry_wire_enc_page_request(f, a->stream, &a->req);
}

/* A send that fails ends the session, never fault service. */
int dest_request(void *arg, unsigned int region, uint64_t page)
{
	struct dest *d = arg;
	struct request_arg a = { .stream = &d->stream, .req = {
		.region = region, .page = (uint32_t)page, .count = 1 } };

	pthread_mutex_lock(&d->req_lock);
	if (d->requests_on) {
		a.req.request_id = ++d->next_request_id;
		link_send(&d->link, enc_request, &a);
	}
	pthread_mutex_unlock(&d->req_lock);
	return 0;
}
