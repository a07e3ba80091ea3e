// SPDX-License-Identifier: MIT
/*
 * net connect: open every channel of a session to a listener, each
 * introduced by a hello, under one deadline.
 *
 *   connecting side                         listening side
 *   connect() every channel  ──────────▶    accept(), non-blocking
 *   [TLS 1.3 handshake, both ways authenticated, when keys are given]
 *   HELLO (session id, role, index) ───▶    read HELLO, group by session id
 *   read ACK ◀─────────────────────────     ACK: 0, or why it was refused
 *   every channel ACKed: session ready      every channel in: session ready
 *
 * The handshake runs on non-blocking sockets, so a silent peer costs a
 * timeout, never a hang; the channels then switch to blocking I/O.
 */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "base/error.h"
#include "base/sys.h"
#include "net/addr.h"
#include "net/hello.h"
#include "net/session.h"
#include "net/sock.h"
#include "net/tls.h"

static int connect_wait(int fd, int64_t deadline)
{
	socklen_t len = sizeof(int);
	int err = 0, ret = net_wait_fd(fd, POLLOUT, deadline);

	if (ret)
		return ret;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len))
		return -errno;
	return -err;
}

/*
 * A unix socket whose backlog is full refuses a non-blocking connect with
 * EAGAIN rather than queueing it; try again until the deadline.
 */
static int connect_fd(int fd, const struct net_addr *a, int64_t deadline)
{
	for (;;) {
		if (!connect(fd, (const struct sockaddr *)&a->ss, a->len))
			return 0;
		if (errno == EINPROGRESS)
			return connect_wait(fd, deadline);
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
		if (!net_ms_left(deadline))
			return -ETIMEDOUT;
		usleep(1000);
	}
}

static int connect_fail(const struct net_addr *a, int err, int timeout_ms)
{
	if (err == -ETIMEDOUT)
		return ferry_fail(err, "connect to %s: no answer within %d ms",
				  a->text, timeout_ms);
	if (err == -ECONNREFUSED)
		return ferry_fail(err, "connect to %s: refused (is a ferry "
				  "listener there?)", a->text);
	return ferry_fail(err, "connect to %s: %s", a->text, strerror(-err));
}

static int connect_one(const struct net_addr *a, int64_t deadline,
		       int timeout_ms)
{
	int fd = sys_ret(socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
				SOCK_CLOEXEC, 0));
	int ret;

	if (fd < 0)
		return ferry_fail(fd, "socket for %s: %s", a->text,
				  strerror(-fd));
	ret = connect_fd(fd, a, deadline);
	if (!ret)
		return fd;
	close(fd);
	return connect_fail(a, ret, timeout_ms);
}

/* The first candidate address that answers, for the first channel. */
static int connect_first(struct net_addr *cand, int nr, int64_t deadline,
			 int timeout_ms)
{
	int fd = -ENOENT;

	for (int i = 0; i < nr; i++) {
		fd = connect_one(&cand[i], deadline, timeout_ms);
		if (fd >= 0) {
			cand[0] = cand[i];
			break;
		}
	}
	return fd;
}

static int read_ack(struct net_conn *c, const char *peer, int64_t deadline,
		    int timeout_ms)
{
	struct net_ack a;
	int ret = net_conn_xfer(c, &a, sizeof(a), false, deadline);

	if (ret == -ETIMEDOUT)
		return ferry_fail(ret, "%s did not answer the hello within %d "
				  "ms: not a ferry listener?", peer,
				  timeout_ms);
	if (ret == -ECONNRESET && c->link)
		return ferry_fail(ret, "%s closed the channel without "
				  "answering its hello", peer);
	/* TLS 1.3: the server checks our certificate after we are done. */
	if (ret == -EACCES)
		return ferry_fail(ret, "%s refused the TLS handshake: %s",
				  peer, net_conn_alert(c));
	if (ret)
		return ferry_fail(ret, "%s: reading the hello's answer: %s",
				  peer, strerror(-ret));
	return net_ack_check(&a, peer);
}

static int session_id(uint64_t *id)
{
	do {
		if (getrandom(id, sizeof(*id), 0) != sizeof(*id))
			return ferry_fail(-errno, "getrandom: %s",
					  strerror(errno));
	} while (!*id);
	return 0;
}

/* What one connect needs besides the session: shared by every channel. */
struct dialer {
	struct net_addr cand[NET_MAX_CANDIDATES];
	int nr_cand;
	const struct ferry_net_opts *o;
	struct net_tls *tls;
	int64_t deadline;
};

/*
 * Connect channel i (the first finds an address that answers), run its
 * TLS handshake when there is a key or certificate, say hello.
 */
static int connect_hello(const struct ferry_session *s, unsigned int i,
			 struct dialer *d, struct net_conn *c)
{
	struct net_hello h = net_hello_make(s->id, s->nr_bulk, i);
	int fd = connect_first(d->cand, i ? 1 : d->nr_cand, d->deadline,
			       d->o->connect_timeout_ms);
	int ret;

	if (fd < 0)
		return fd;
	*c = net_conn_plain(fd);
	ret = d->tls ? net_conn_tls(c, d->tls, false) : 0;
	if (!ret && d->tls)
		ret = net_conn_handshake_by(c, d->cand[0].text, d->deadline);
	if (ret)
		return ret;
	ret = net_conn_xfer(c, &h, sizeof(h), true, d->deadline);
	if (ret)
		return ferry_fail(ret, "%s: sending hello: %s", d->cand[0].text,
				  strerror(-ret));
	return 0;
}

/* Connect every channel and send its hello; then read every answer. */
static int connect_all(struct ferry_session *s, struct dialer *d,
		       struct net_conn *conns)
{
	int ret = 0;

	for (unsigned int i = 0; i <= s->nr_bulk && !ret; i++)
		ret = connect_hello(s, i, d, &conns[i]);
	for (unsigned int i = 0; i <= s->nr_bulk && !ret; i++)
		ret = read_ack(&conns[i], d->cand[0].text, d->deadline,
			       d->o->connect_timeout_ms);
	return ret;
}

/* Handshake every channel of s, then make them channels. */
static int connect_session(struct ferry_session *s, struct dialer *d)
{
	struct net_conn conns[NET_MAX_CHANS];
	int ret;

	net_conns_init(conns, NET_MAX_CHANS);
	ret = session_id(&s->id);
	if (!ret)
		ret = connect_all(s, d, conns);
	if (!ret)
		snprintf(s->peer, sizeof(s->peer), "%s", d->cand[0].text);
	if (!ret)
		ret = net_session_fill(s, conns, d->o, "to");
	net_conns_close(conns, NET_MAX_CHANS);
	return ret;
}

/* Plain only to this machine, unless the operator said otherwise. */
static int dial_policy(const struct dialer *d)
{
	bool local = true;

	for (int i = 0; i < d->nr_cand; i++)
		local = local && net_addr_is_local(&d->cand[i]);
	return net_tls_policy(d->tls, d->o, "connecting to",
			      d->cand[0].text, local);
}

int ferry_net_connect(const char *addr, unsigned int nr_bulk,
		      const struct ferry_net_opts *opts,
		      struct ferry_session **out)
{
	struct ferry_net_opts o = net_opts_or_default(opts);
	struct dialer d = { .o = &o };
	struct ferry_session *s = NULL;
	int ret;

	d.nr_cand = net_addr_resolve(addr, false, d.cand);
	if (d.nr_cand < 0)
		return d.nr_cand;
	ret = net_tls_load(&o, &d.tls);
	if (!ret)
		ret = dial_policy(&d);
	if (!ret)
		ret = net_session_alloc(nr_bulk, d.cand[0].text, &s);
	d.deadline = net_now_ms() + o.connect_timeout_ms;
	if (!ret)
		ret = connect_session(s, &d);
	net_tls_put(d.tls);
	if (!ret)
		*out = s;
	else
		ferry_net_session_close(s);
	return ret;
}

int ferry_net_probe(const char *addr, const struct ferry_net_opts *opts)
{
	struct ferry_net_opts o = net_opts_or_default(opts);
	struct dialer d = { .o = &o };
	int ret, fd;

	d.nr_cand = net_addr_resolve(addr, false, d.cand);
	if (d.nr_cand < 0)
		return d.nr_cand;
	ret = net_tls_load(&o, &d.tls);
	if (!ret)
		ret = dial_policy(&d);
	net_tls_put(d.tls);
	if (ret)
		return ret;
	fd = connect_first(d.cand, d.nr_cand,
			   net_now_ms() + o.connect_timeout_ms,
			   o.connect_timeout_ms);
	if (fd < 0)
		return fd;
	close(fd);	/* the listener drops a connection with no hello */
	return 0;
}
