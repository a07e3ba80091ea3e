/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_H
#define FERRY_NET_H

#include <stdint.h>
#include <sys/types.h>

#include "ferry/chan.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * net: channels, and sessions of channels between two hosts.
 *
 * A channel (ferry/chan.h) is a reliable byte stream behind a small ops
 * table.
 *
 * A session is what one migration uses: N bulk channels (pre-copy and
 * background push) and one urgent channel (post-copy page requests and
 * their replies, so a faulting vCPU never waits behind bulk data).  The
 * connecting side opens every channel and starts each with a hello naming
 * the session; the listening side groups what it accepts into sessions.
 * docs/wire.md gives the hello's layout.
 *
 * The transport knows nothing of what travels on a channel: the record
 * format (ferry/wire.h) sits above it and versions itself.
 *
 * Addresses: "HOST:PORT" (TCP; an IPv6 literal in brackets, "[::1]:4000";
 * HOST may be empty when listening: all addresses) and "unix:/path" (a Unix
 * stream socket; "unix:@name" for the abstract namespace).
 *
 * A broken peer is an error (-EPIPE, -ECONNRESET, -ETIMEDOUT) with a
 * reason, never a hang or a SIGPIPE.
 */

/*
 * The session protocol's version: the one a hello and its answer carry,
 * and the one a peer must speak for a session to open.  It belongs to the
 * transport: it changes with how channels are opened and what they
 * promise, never with the records they carry, whose format has its own
 * version (FERRY_WIRE_VERSION), checked by a stream's first record.  The
 * hello's layout itself never changes, so peers of any two versions can
 * tell each other which one they speak.
 */
#define FERRY_NET_VERSION	1

/* Options for connect and listen; NULL, or zero fields, for defaults. */
struct ferry_net_opts {
	/*
	 * Connecting: the whole of connect, hellos and answers.  Listening:
	 * how long an accepted connection has to say hello.  0: 5000 ms.
	 */
	int connect_timeout_ms;
	/*
	 * A send or recv that makes no progress for this long fails with
	 * -ETIMEDOUT.  0: no limit (TCP keepalive still finds a dead peer).
	 */
	int io_timeout_ms;
	/*
	 * SO_SNDBUF and SO_RCVBUF in bytes; 0: the kernel's (TCP autotuning,
	 * which a fixed size switches off).
	 */
	int sock_buf;
};

#define FERRY_NET_MAX_BULK	32
#define FERRY_NET_ADDR_MAX	128

struct ferry_session {
	uint64_t id;		/* random, chosen by the connecting side */
	unsigned int nr_bulk;
	struct ferry_chan *bulk[FERRY_NET_MAX_BULK];
	struct ferry_chan *urgent;
	char peer[FERRY_NET_ADDR_MAX];
};

/*
 * Open a session to addr: nr_bulk (1 to FERRY_NET_MAX_BULK) bulk channels
 * and the urgent one, each connected, introduced by a hello and accepted
 * by the listener, within the connect timeout.  Errors: -ECONNREFUSED
 * (nobody listens), -ETIMEDOUT (no answer), -EPROTO (the listener speaks
 * another FERRY_NET_VERSION), -EINVAL (a bad address), each with a reason.
 */
int ferry_net_connect(const char *addr, unsigned int nr_bulk,
		      const struct ferry_net_opts *opts,
		      struct ferry_session **out);

/* Shut every channel down (see the shutdown op): wakes blocked threads. */
void ferry_net_session_shutdown(struct ferry_session *session);

/* Close every channel and free the session.  NULL is fine. */
void ferry_net_session_close(struct ferry_session *session);

struct ferry_listener;

/*
 * Listen on addr.  Port 0 picks a free port: read the address back with
 * ferry_net_listener_addr().  A unix socket path is created here and
 * removed on close; a stale socket left at the path is replaced.
 */
int ferry_net_listener_open(const char *addr,
			    const struct ferry_net_opts *opts,
			    struct ferry_listener **out);

/* The address a peer can connect to ("127.0.0.1:40123", "unix:/x"). */
const char *ferry_net_listener_addr(const struct ferry_listener *listener);

/* The bound TCP port, or 0 for a unix socket. */
int ferry_net_listener_port(const struct ferry_listener *listener);

/*
 * Wait up to timeout_ms (< 0: no limit) for a whole session.  Connections
 * whose hello is garbage, or never comes, are refused and closed, and the
 * wait goes on: a stray client does not end it.  A hello of another
 * FERRY_NET_VERSION ends it with -EPROTO (that peer is the one we were
 * waiting for).
 * -ETIMEDOUT when time runs out; its reason says what was refused.
 * Channels of other sessions stay with the listener for a later call.
 */
int ferry_net_accept(struct ferry_listener *listener, int timeout_ms,
		     struct ferry_session **out);

/* Close, refusing sessions still incomplete.  NULL is fine. */
void ferry_net_listener_close(struct ferry_listener *listener);

#ifdef __cplusplus
}
#endif

#endif
