// SPDX-License-Identifier: MIT
/* rawpeer: a hand-made peer in the record format, for hostile tests. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "rawpeer.h"

int rawpeer_init(struct rawpeer *p, struct ferry_session *s)
{
	memset(p, 0, sizeof(*p));
	p->s = s;
	p->buf = aligned_alloc(4096, FERRY_WIRE_BUF_SIZE);
	ferry_wire_reader_init(&p->bulk0, s->bulk[0]);
	ferry_wire_reader_init(&p->urgent, s->urgent);
	ferry_wire_writer_init(&p->bulk0_w, s->bulk[0]);
	ferry_wire_writer_init(&p->urgent_w, s->urgent);
	return p->buf ? 0 : -ENOMEM;
}

void rawpeer_fini(struct rawpeer *p)
{
	ferry_net_session_close(p->s);
	free(p->buf);
	p->s = NULL;
	p->buf = NULL;
}

int rawpeer_next(struct rawpeer *p, struct ferry_chan *chan,
		 struct ferry_wire_reader *r, int timeout_ms,
		 struct ferry_wire_rec *rec)
{
	for (;;) {
		struct pollfd pfd = { .fd = ferry_chan_poll_fd(chan),
				      .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, timeout_ms) == 0)
			return -ETIMEDOUT;
		n = ferry_wire_recv(r, p->buf, FERRY_WIRE_BUF_SIZE, rec);
		if (n <= 0)
			return (int)n;
		if (rec->type != FERRY_WIRE_HEARTBEAT)
			return (int)rec->type;
	}
}

int rawpeer_accept_session(struct rawpeer *p, struct ferry_listener *l,
			   int timeout_ms)
{
	struct ferry_session *s;
	int ret = ferry_net_accept(l, timeout_ms, &s);

	if (!ret)
		ret = rawpeer_init(p, s);
	if (ret && !p->buf)	/* init failed: the session was not taken */
		ferry_net_session_close(s);
	return ret;
}

int rawpeer_read_header(struct rawpeer *p, int timeout_ms)
{
	struct ferry_wire_rec rec;
	int ret = rawpeer_next(p, p->s->bulk[0], &p->bulk0, timeout_ms, &rec);

	if (ret < 0)
		return ret;
	if (ret != FERRY_WIRE_HEADER)
		return -EBADMSG;
	return ferry_wire_dec_header(&rec, &p->stream);
}

int rawpeer_accept(struct rawpeer *p, uint64_t id)
{
	struct ferry_wire_accept a = { FERRY_WIRE_VERSION,
				       id ? id : p->stream.id };
	int ret = ferry_wire_enc_accept(&p->frame, &a);

	return ret ? ret : (int)(ferry_wire_send(&p->urgent_w, &p->frame) < 0);
}

int rawpeer_error(struct rawpeer *p, int err, const char *msg)
{
	int ret = ferry_wire_enc_error(&p->frame, err, msg);

	return ret ? ret : (int)(ferry_wire_send(&p->urgent_w, &p->frame) < 0);
}

int rawpeer_send_header_version(struct rawpeer *p,
				const struct ferry_wire_stream *s,
				unsigned int version)
{
	uint8_t *rec = p->buf;
	uint16_t v = (uint16_t)version;
	uint32_t meta_len;
	uint64_t sum;
	size_t len = 0;
	ssize_t total;
	int ret = ferry_wire_enc_header(&p->frame, s);
	struct iovec iov;

	if (ret)
		return ret;
	total = ferry_wire_seal(&p->frame, p->bulk0_w.next_nr);
	for (int i = 0; i < p->frame.iovcnt; i++) {
		memcpy(rec + len, p->frame.iov[i].iov_base,
		       p->frame.iov[i].iov_len);
		len += p->frame.iov[i].iov_len;
	}
	/* docs/wire.md: meta byte 8 is the version; the header's sums. */
	memcpy(rec + FERRY_WIRE_HDR_SIZE + 8, &v, 2);
	memcpy(&meta_len, rec + 8, 4);
	sum = XXH3_64bits(rec + FERRY_WIRE_HDR_SIZE, meta_len);
	memcpy(rec + 16, &sum, 8);
	sum = XXH3_64bits(rec, 24);
	memcpy(rec + 24, &sum, 8);
	iov = (struct iovec){ rec, (size_t)total };
	p->bulk0_w.next_nr++;
	return ferry_chan_sendv(p->s->bulk[0], &iov, 1) == total ? 0 : -EIO;
}
