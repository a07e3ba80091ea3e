// SPDX-License-Identifier: MIT
/*
 * net hello: the message that opens every channel of a session and the
 * listener's answer to it (docs/wire.md, "Session hello").
 *
 * The version they carry is the session protocol's, FERRY_NET_VERSION:
 * the transport's own, apart from the record format's, which the stream
 * checks in its HEADER record.
 */
#include <string.h>
#include <xxhash.h>

#include "base/error.h"
#include "net/hello.h"

#define HELLO_MAGIC	"FERRYHEL"
#define ACK_MAGIC	"FERRYACK"

/* Both messages end in the checksum of the 24 bytes before it. */
static uint64_t hello_sum(const void *msg)
{
	return XXH3_64bits(msg, 24);
}

struct net_hello net_hello_make(uint64_t session_id, unsigned int nr_bulk,
				unsigned int i)
{
	struct net_hello h = {
		.magic = HELLO_MAGIC,
		.version = FERRY_NET_VERSION,
		.role = i < nr_bulk ? FERRY_CHAN_BULK : FERRY_CHAN_URGENT,
		.index = (uint16_t)(i < nr_bulk ? i : 0),
		.nr_bulk = (uint16_t)nr_bulk,
		.session_id = session_id,
	};

	h.sum = hello_sum(&h);
	return h;
}

const char *net_hello_bad(const struct net_hello *h)
{
	if (memcmp(h->magic, HELLO_MAGIC, 8))
		return "sent no ferry hello (bad magic)";
	if (h->sum != hello_sum(h))
		return "sent a hello with a bad checksum";
	if (h->version != FERRY_NET_VERSION)
		return NULL;	/* reported on its own */
	if (!h->nr_bulk || h->nr_bulk > FERRY_NET_MAX_BULK || h->reserved ||
	    !h->session_id)
		return "sent a hello with bad counts";
	if ((h->role == FERRY_CHAN_BULK && h->index < h->nr_bulk) ||
	    (h->role == FERRY_CHAN_URGENT && !h->index))
		return NULL;
	return "sent a hello with a bad role or index";
}

struct net_ack net_ack_make(uint64_t session_id, int status)
{
	struct net_ack a = {
		.magic = ACK_MAGIC,
		.version = FERRY_NET_VERSION,
		.status = (uint32_t)status,
		.session_id = session_id,
	};

	a.sum = hello_sum(&a);
	return a;
}

int net_ack_check(const struct net_ack *a, const char *peer)
{
	if (memcmp(a->magic, ACK_MAGIC, 8) || a->sum != hello_sum(a))
		return ferry_fail(-EBADMSG, "%s answered the hello with "
				  "garbage: not a ferry listener?", peer);
	if (a->status == EPROTO)
		return ferry_fail(-EPROTO, "%s speaks ferry session version "
				  "%u; this ferry speaks %u", peer, a->version,
				  FERRY_NET_VERSION);
	if (a->status == EACCES)
		return ferry_fail(-EACCES, "%s wants TLS: give the pre-shared "
				  "key it holds, or a certificate its CA "
				  "signed", peer);
	if (a->status == EBUSY)
		return ferry_fail(-EBUSY, "%s is busy: it receives another "
				  "migration", peer);
	if (a->status)
		return ferry_fail(-(int)a->status, "%s refused the channel: %s",
				  peer, strerror((int)a->status));
	return 0;
}
