/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_HELLO_H
#define FERRY_NET_HELLO_H

/*
 * The session hello and its answer (hello.c; docs/wire.md, "Session
 * hello"): the first 32 bytes each way on every channel.  Every field is
 * naturally aligned, so the structs have no padding and, on a
 * little-endian host, are the bytes a peer sees.  Their layout is the
 * same in every version, so that two ferries of different versions can
 * always tell each other so; the version they carry is FERRY_NET_VERSION.
 */
#include <stdint.h>

#include "ferry/net.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "the hello is little-endian: this host needs byte swapping");

struct net_hello {
	char magic[8];		/* "FERRYHEL" */
	uint16_t version;
	uint8_t role;		/* enum ferry_chan_role */
	uint8_t reserved;
	uint16_t index;
	uint16_t nr_bulk;
	uint64_t session_id;
	uint64_t sum;		/* XXH3-64 of the 24 bytes above */
};

struct net_ack {
	char magic[8];		/* "FERRYACK" */
	uint16_t version;
	uint16_t reserved;
	uint32_t status;	/* 0: accepted; else a positive errno */
	uint64_t session_id;
	uint64_t sum;
};

_Static_assert(sizeof(struct net_hello) == 32, "hello layout");
_Static_assert(sizeof(struct net_ack) == 32, "ack layout");

/* The hello for channel i of a session: bulk 0..nr_bulk-1, then urgent. */
struct net_hello net_hello_make(uint64_t session_id, unsigned int nr_bulk,
				unsigned int i);

/*
 * Why a hello is no good ("sent a hello with bad counts"), or NULL.  A
 * hello of another version is not judged past its checksum: NULL, and
 * the caller compares its version with FERRY_NET_VERSION.
 */
const char *net_hello_bad(const struct net_hello *h);

/* The answer to a hello of session_id: status 0, or a positive errno. */
struct net_ack net_ack_make(uint64_t session_id, int status);

/*
 * 0 if the answer accepts the channel; else -EBADMSG (not an answer),
 * -EPROTO (another version) or the refusal's errno, with a reason that
 * names peer.
 */
int net_ack_check(const struct net_ack *a, const char *peer);

#endif
