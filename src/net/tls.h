/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_TLS_H
#define FERRY_NET_TLS_H

/*
 * TLS 1.3 with GnuTLS (tls.c, tls_chan.c; docs/security.md).
 *
 * GnuTLS because ferry uses each channel from two threads at once (one
 * blocked in recv while another sends: the urgent channel's fault thread
 * and its receiver), and GnuTLS documents that one session may be used
 * by one sending and one receiving thread at the same time; an OpenSSL
 * SSL object may not be used concurrently at all.
 *
 * Credentials are loaded once (a listener, a connect) and shared by
 * every connection made with them, counted: a session outlives its
 * listener.  A connection is a socket and, with TLS, its link: the TLS
 * session and what its transport functions need, on the heap because
 * GnuTLS keeps a pointer to it.
 */
#include <stdbool.h>
#include <stdint.h>
#include <gnutls/gnutls.h>

#include "ferry/net.h"

struct net_tls;

/* The transport of one TLS session: GnuTLS's pointer. */
/*
 * GnuTLS reads a record's header and its body in two calls and writes one
 * record (16 KiB) a call; a system call costs tens of microseconds on a
 * virtual machine's host, so the link reads ahead and, while corked,
 * gathers records into NET_TLS_BUF bytes before writing them.
 */
#define NET_TLS_BUF	(256U << 10)

struct net_tls_link {
	gnutls_session_t session;
	int fd;
	struct net_tls *tls;
	uint8_t first[8];	/* the first bytes the peer sent */
	unsigned int nr_first;
	uint8_t *rbuf;		/* read ahead; the receiving thread's */
	size_t rpos, rlen;
	uint8_t *wbuf;		/* records held while corked; the sending
				 * thread's */
	size_t wlen;
	bool corked;
};

/*
 * The link's read-ahead and write buffers, once the handshake has proved
 * the peer (a connection still shaking hands costs none): 0 or -ENOMEM.
 */
int net_tls_link_buffers(struct net_tls_link *link);

/* Bytes read from the socket that GnuTLS has not taken yet. */
bool net_tls_link_buffered(const struct net_tls_link *link);

/* Hold the records GnuTLS writes until net_tls_link_flush(). */
void net_tls_link_cork(struct net_tls_link *link);

/* Write what is held and stop holding: 0 or -errno. */
int net_tls_link_flush(struct net_tls_link *link);

/* A connection on its way to becoming a channel. */
struct net_conn {
	int fd;			/* -1: none */
	struct net_tls_link *link;	/* NULL: plain */
};

/*
 * The credentials opts name, loaded and checked: *out NULL when they name
 * none (plain).  -EINVAL with a reason naming the file that is wrong.
 */
int net_tls_load(const struct ferry_net_opts *o, struct net_tls **out);
struct net_tls *net_tls_get(struct net_tls *tls);
void net_tls_put(struct net_tls *tls);	/* NULL is fine */

/*
 * Plain TCP only where it stays on this machine, or where the operator
 * said so: 0, or -EPERM with a reason ("listening on"/"connecting to").
 */
int net_tls_policy(const struct net_tls *tls, const struct ferry_net_opts *o,
		   const char *what, const char *addr, bool local);

/* "key" or "certificate", for reasons. */
const char *net_tls_kind(const struct net_tls *tls);

static inline struct net_conn net_conn_plain(int fd)
{
	return (struct net_conn){ .fd = fd, .link = NULL };
}

/* Put a TLS session (client or server) on c's socket; 0 or -errno. */
int net_conn_tls(struct net_conn *c, struct net_tls *tls, bool server);

/*
 * One step of the handshake on a non-blocking socket: 0 when done,
 * -EAGAIN to be called again when net_conn_events() says, or the
 * failure (-EACCES: authentication; -EPROTO: the peer speaks no TLS, or
 * another; -ECONNRESET) with a reason that names peer.
 */
int net_conn_handshake(struct net_conn *c, const char *peer);
short net_conn_events(const struct net_conn *c);

/* The whole handshake before the deadline (sock.h's deadlines). */
int net_conn_handshake_by(struct net_conn *c, const char *peer,
			  int64_t deadline);

/* Who the peer proved to be, after the handshake ("plain" without TLS). */
void net_conn_auth(const struct net_conn *c, char *buf, size_t len);

/*
 * Some bytes on a non-blocking connection: how many, 0 at the end of
 * the stream, -EAGAIN when none has come, or -errno (-EBADMSG: a TLS
 * record failed its check).
 */
ssize_t net_conn_read(struct net_conn *c, void *buf, size_t len);

/* All of a small message before the deadline: 0 or -errno (sock.h). */
int net_conn_xfer(struct net_conn *c, void *buf, size_t len, bool out,
		  int64_t deadline);

/* The name of the last alert the peer sent. */
const char *net_conn_alert(const struct net_conn *c);

/* Close the socket and free the link; c is then empty. */
void net_conn_close(struct net_conn *c);

/*
 * The channel over a handshaken connection, which it takes over (c is
 * then empty); its socket is blocking by now.
 */
int net_conn_chan(struct net_conn *c, enum ferry_chan_role role,
		  unsigned int index, const char *name, int io_timeout_ms,
		  struct ferry_chan **out);

/* tls_chan.c: the channel over a TLS link, which it takes over. */
int net_tls_chan_create(struct net_tls_link *link, enum ferry_chan_role role,
			unsigned int index, const char *name,
			int io_timeout_ms, struct ferry_chan **out);

/* Free a link's session and drop its credentials (the fd stays). */
void net_tls_link_free(struct net_tls_link *link);

/*
 * A GnuTLS error on an established channel as -errno: -ETIMEDOUT (a
 * socket timeout), -EPIPE or -ECONNRESET (the transport's errno),
 * -EBADMSG (a record that fails its check: the stream was altered).
 */
int net_tls_errno(int gnutls_err, int transport_errno);

#endif
