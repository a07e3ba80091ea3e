/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_H
#define FERRY_NET_H

#include <stdbool.h>
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

/*
 * Options for connect and listen; NULL, or zero fields, for defaults.
 * docs/security.md says what each security setting guards against.
 */
struct ferry_net_opts {
	/* Connecting: the whole of connect, handshakes, hellos and answers.
	 * Listening: how long a session has to open all its channels.
	 * 0: 5000 ms. */
	int connect_timeout_ms;
	/*
	 * Listening: how long an accepted connection has for its TLS
	 * handshake and its hello; one that is slower is closed, so idle
	 * and half-open connections cost little.  0: 2000 ms.
	 */
	int hello_timeout_ms;
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
	/*
	 * TLS 1.3 on every channel, both peers authenticated, by one of:
	 *   tls_psk_file   a pre-shared key: one line "IDENTITY:HEXKEY"
	 *                  (16 to 64 bytes of key; the file readable by its
	 *                  owner only); both sides hold the same file
	 *   tls_cert_file, tls_key_file, tls_ca_file
	 *                  PEM files: this side's certificate and key, and
	 *                  the CA that must have signed the peer's (expired
	 *                  or untrusted certificates are refused)
	 * The TLS handshake comes before the hello: a peer that fails it is
	 * told nothing and changes nothing.  NULL: plain TCP.
	 */
	const char *tls_psk_file;
	const char *tls_cert_file;
	const char *tls_key_file;
	const char *tls_ca_file;
	/*
	 * Plain TCP (no TLS) to or on an address that is not loopback.
	 * Without it, listening on or connecting to such an address without
	 * a key or a certificate is refused (-EPERM): guest memory would
	 * cross the network in the clear, from anyone who can connect.
	 * Loopback TCP and unix sockets may stay plain.
	 */
	bool insecure;
	/*
	 * Listening: the guest memory a session accepted here may make the
	 * receiver set up (ferry_migrate_recv checks the stream's header
	 * against it before it allocates anything).  0: what this machine
	 * can give: MemTotal, and for hugetlb what the pool has free plus
	 * what it may grow by.
	 */
	uint64_t max_guest_bytes;
};

#define FERRY_NET_MAX_BULK	32
#define FERRY_NET_ADDR_MAX	128

#define FERRY_NET_AUTH_MAX	128

struct ferry_session {
	uint64_t id;		/* random, chosen by the connecting side */
	unsigned int nr_bulk;
	struct ferry_chan *bulk[FERRY_NET_MAX_BULK];
	struct ferry_chan *urgent;
	char peer[FERRY_NET_ADDR_MAX];
	/*
	 * How the peer was authenticated: "plain" (nobody), "TLS 1.3, key
	 * NAME" or "TLS 1.3, certificate CN=..." (the peer's subject).
	 */
	char auth[FERRY_NET_AUTH_MAX];
	bool tls;
	/* From the options that made the session: see ferry_net_opts. */
	uint64_t max_guest_bytes;
};

/*
 * Open a session to addr: nr_bulk (1 to FERRY_NET_MAX_BULK) bulk channels
 * and the urgent one, each connected, authenticated (TLS, when opts give
 * a key or certificate), introduced by a hello and accepted by the
 * listener, within the connect timeout.  Errors, each with a reason:
 * -ECONNREFUSED (nobody listens), -ETIMEDOUT (no answer), -EPROTO (the
 * listener speaks another FERRY_NET_VERSION, or another TLS setting),
 * -EACCES (authentication failed either way), -EBUSY (the listener has
 * its migration already), -EPERM (plain TCP to an address that is not
 * loopback without opts->insecure), -EINVAL (a bad address or option).
 */
int ferry_net_connect(const char *addr, unsigned int nr_bulk,
		      const struct ferry_net_opts *opts,
		      struct ferry_session **out);

/*
 * A session over descriptors the caller already has (a VMM's accepted
 * TCP, vsock or unix stream sockets): fds[0..nr_bulk-1] become the bulk
 * channels, fds[nr_bulk] the urgent one, in that order on both sides.
 * No hello is exchanged (the caller paired the descriptors); with a key
 * or certificate in opts, each channel first runs a TLS handshake, as
 * client when `client`, else as server (the two sides must differ).
 * Descriptors: ferry works on duplicates (F_DUPFD_CLOEXEC) and closes
 * them with the session (or at once on failure); the caller's own stay
 * the caller's, to close when it likes.  A duplicate shares the socket,
 * so the session's shutdown shuts the caller's descriptor down too, and
 * file status flags are shared: ferry makes the socket blocking.
 * opts->insecure is not needed: the caller chose the descriptors.
 */
int ferry_net_session_from_fds(const int *fds, unsigned int nr_bulk,
			       bool client, const struct ferry_net_opts *opts,
			       struct ferry_session **out);

/*
 * Two sessions joined by unix socket pairs, for a move on this host: a
 * is the connecting side, b the accepting one (either may send).  Plain:
 * nothing leaves the machine and only this process holds them.
 */
int ferry_net_session_pair(unsigned int nr_bulk, struct ferry_session **a,
			   struct ferry_session **b);

/*
 * Is anyone listening at addr?  Checks what ferry_net_connect would
 * (the address, the keys and certificates, plain TCP off this machine
 * refused without `insecure`) and connects once, then closes at once,
 * opening no session: a listener drops a connection that says no hello.
 * For failing fast before expensive work; the errors are
 * ferry_net_connect's.
 */
int ferry_net_probe(const char *addr, const struct ferry_net_opts *opts);

/* Shut every channel down (see the shutdown op): wakes blocked threads. */
void ferry_net_session_shutdown(struct ferry_session *session);

/* Close every channel and free the session.  NULL is fine. */
void ferry_net_session_close(struct ferry_session *session);

struct ferry_listener;

/*
 * Listen on addr.  Port 0 picks a free port: read the address back with
 * ferry_net_listener_addr().  A unix socket path is created here and
 * removed on close; a stale socket left at the path is replaced.  A key
 * or certificate in opts is loaded here (errors name the file).  An
 * address that is not loopback with neither, and without
 * opts->insecure, is refused (-EPERM).
 */
int ferry_net_listener_open(const char *addr,
			    const struct ferry_net_opts *opts,
			    struct ferry_listener **out);

/* The address a peer can connect to ("127.0.0.1:40123", "unix:/x"). */
const char *ferry_net_listener_addr(const struct ferry_listener *listener);

/* The bound TCP port, or 0 for a unix socket. */
int ferry_net_listener_port(const struct ferry_listener *listener);

/*
 * Wait up to timeout_ms (< 0: no limit) for a whole session.  A
 * connection that fails its TLS handshake, says garbage, speaks another
 * FERRY_NET_VERSION or says nothing within the hello timeout is refused
 * (told why when it authenticated, else nothing) and closed, and the wait
 * goes on: no peer ends it but the one that opens a whole session.  At
 * most 16 connections wait for their hello; a new one pushes out the
 * oldest, so idle connections cannot lock real senders out.
 * -ETIMEDOUT when time runs out; its reason says what was refused.
 * Channels of other sessions stay with the listener for a later call.
 */
int ferry_net_accept(struct ferry_listener *listener, int timeout_ms,
		     struct ferry_session **out);

/*
 * From now until the next ferry_net_accept or close, a thread of the
 * listener answers every session that comes with "busy" (-EBUSY at the
 * connecting side, once it authenticated): for a receiver that has its
 * migration and keeps the port.  0 or -errno.
 */
int ferry_net_listener_busy(struct ferry_listener *listener);

/* Close, refusing sessions still incomplete.  NULL is fine. */
void ferry_net_listener_close(struct ferry_listener *listener);

#ifdef __cplusplus
}
#endif

#endif
