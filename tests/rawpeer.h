/* SPDX-License-Identifier: MIT */
#ifndef FERRY_TEST_RAWPEER_H
#define FERRY_TEST_RAWPEER_H

/*
 * A peer written by hand in the record format, for tests that need one
 * that misbehaves on purpose: answers a HEADER and then drops the
 * session, never answers, speaks another version, lies about its id.
 */
#include <stdint.h>

#include "ferry/net.h"
#include "ferry/wire.h"

struct rawpeer {
	struct ferry_session *s;
	struct ferry_wire_reader bulk0, urgent;
	struct ferry_wire_writer bulk0_w, urgent_w;
	struct ferry_wire_frame frame;
	struct ferry_wire_stream stream;	/* from the HEADER read */
	uint8_t *buf;				/* FERRY_WIRE_BUF_SIZE */
};

/* Take over a session: 0 or -ENOMEM. */
int rawpeer_init(struct rawpeer *p, struct ferry_session *s);
void rawpeer_fini(struct rawpeer *p);	/* closes the session */

/*
 * The next record of `chan`'s reader that is not a HEARTBEAT, within
 * timeout_ms: its type (> 0), -ETIMEDOUT, 0 at the stream's end, or the
 * reader's error.  The record is in p->buf, *rec.
 */
int rawpeer_next(struct rawpeer *p, struct ferry_chan *chan,
		 struct ferry_wire_reader *r, int timeout_ms,
		 struct ferry_wire_rec *rec);

/* Accept a session on l and take it over: 0 or -errno. */
int rawpeer_accept_session(struct rawpeer *p, struct ferry_listener *l,
			   int timeout_ms);

/* Read the HEADER on bulk 0 into p->stream: 0 or -errno. */
int rawpeer_read_header(struct rawpeer *p, int timeout_ms);

/* Answer it: ACCEPT with its id (or `id`, when not 0). */
int rawpeer_accept(struct rawpeer *p, uint64_t id);

/* Send ERROR(err, msg) on the urgent channel. */
int rawpeer_error(struct rawpeer *p, int err, const char *msg);

/*
 * A HEADER for stream `s` as version `version` would send it: the
 * record encoded, the version field set, every checksum made good.
 */
int rawpeer_send_header_version(struct rawpeer *p,
				const struct ferry_wire_stream *s,
				unsigned int version);

#endif
