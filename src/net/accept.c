// SPDX-License-Identifier: MIT
/*
 * net accept: run the TLS handshake and read the hello on each accepted
 * connection, and group the channels into sessions.
 *
 * Accepted connections stay non-blocking until their session is whole,
 * so one poll() serves the listening socket and every handshake and
 * hello in flight.  Hostile connections cost little and end nothing: each
 * has a short deadline for its handshake and hello (hello_timeout_ms),
 * the set of them is bounded and a new one pushes out the oldest, and a
 * bad hello (garbage, another version, a failed handshake) ends that
 * connection only.  Only a peer that authenticated is told why.  A
 * listener that has its session keeps answering, from a thread of its
 * own, every later sender "busy" (ferry_net_listener_busy).
 */
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/error.h"
#include "base/thread.h"
#include "net/listener.h"

/* A TLS record of type handshake starts every TLS connection. */
#define TLS_HANDSHAKE_BYTE	0x16

static void peer_name(int fd, const struct ferry_listener *l, char *buf,
		      size_t len)
{
	struct net_addr a = { .len = sizeof(a.ss) };

	if (l->addr.ss.ss_family == AF_UNIX ||
	    getpeername(fd, (struct sockaddr *)&a.ss, &a.len)) {
		snprintf(buf, len, "%s", l->addr.text);
		return;
	}
	net_addr_format(&a);
	snprintf(buf, len, "%s", a.text);
}

/*
 * What the peer sent and we did not read would make close() reset the
 * connection, and the reset can overtake the answer just sent: read it
 * first (a little, without waiting).
 */
static void drain_close(struct net_conn *c)
{
	char junk[4096];

	if (c->fd >= 0)
		while (recv(c->fd, junk, sizeof(junk), MSG_DONTWAIT) > 0)
			;
	net_conn_close(c);
}

static void pending_drop(struct ferry_listener *l, unsigned int i,
			 bool close_conn)
{
	if (close_conn)
		drain_close(&l->pending[i].conn);
	l->pending[i] = l->pending[--l->nr_pending];
}

__attribute__((format(printf, 3, 4)))
static void refuse(struct ferry_listener *l, unsigned int i,
		   const char *fmt, ...)
{
	va_list ap;
	int off;

	off = snprintf(l->refused, sizeof(l->refused), "%s ",
		       l->pending[i].peer);
	va_start(ap, fmt);
	vsnprintf(l->refused + off, sizeof(l->refused) - (size_t)off, fmt, ap);
	va_end(ap);
	l->nr_refused++;
	pending_drop(l, i, true);
}

/* The oldest waiting connection makes room for a new one. */
static void pending_evict(struct ferry_listener *l)
{
	unsigned int oldest = 0;

	for (unsigned int i = 1; i < l->nr_pending; i++)
		if (l->pending[i].seq < l->pending[oldest].seq)
			oldest = i;
	refuse(l, oldest, "pushed out: %u connections waited for their "
	       "hello", NET_MAX_PENDING);
}

static void pending_add(struct ferry_listener *l, int fd)
{
	struct net_pending *p;
	int64_t now = net_now_ms();

	if (l->nr_pending == NET_MAX_PENDING)
		pending_evict(l);
	p = &l->pending[l->nr_pending];
	*p = (struct net_pending){
		.conn = net_conn_plain(fd),
		.state = NET_PENDING_HELLO,
		.seq = l->nr_accepted++,
		.deadline = now + l->opts.hello_timeout_ms,
	};
	peer_name(fd, l, p->peer, sizeof(p->peer));
	l->nr_pending++;
}

static void accept_new(struct ferry_listener *l)
{
	int fd;

	while ((fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK |
			     SOCK_CLOEXEC)) >= 0)
		pending_add(l, fd);
}

/* Best effort: the peer may already be gone, and then nobody is told. */
static void send_ack(struct net_conn *c, uint64_t id, int status)
{
	struct net_ack a = net_ack_make(id, status);

	net_conn_xfer(c, &a, sizeof(a), true, net_now_ms() + 100);
}

static void group_drop(struct ferry_listener *l, unsigned int i)
{
	struct net_group *g = &l->groups[i];

	snprintf(l->refused, sizeof(l->refused), "%s opened %u of the %u "
		 "channels of its session within %d ms", g->peer, g->have,
		 g->nr_bulk + 1, l->opts.connect_timeout_ms);
	l->nr_refused++;
	net_group_close(g);
	*g = l->groups[--l->nr_groups];
}

/* A session that never completes makes room for a new one. */
static void group_evict(struct ferry_listener *l)
{
	unsigned int oldest = 0;

	for (unsigned int i = 1; i < l->nr_groups; i++)
		if (l->groups[i].deadline < l->groups[oldest].deadline)
			oldest = i;
	group_drop(l, oldest);
}

/* The group a hello joins: its session's, or a new one. */
static struct net_group *group_find(struct ferry_listener *l,
				    const struct net_hello *h)
{
	struct net_group *g;

	for (unsigned int i = 0; i < l->nr_groups; i++)
		if (l->groups[i].id == h->session_id)
			return &l->groups[i];
	if (l->nr_groups == NET_MAX_GROUPS)
		group_evict(l);
	g = &l->groups[l->nr_groups++];
	*g = (struct net_group){
		.id = h->session_id,
		.nr_bulk = h->nr_bulk,
		.deadline = net_now_ms() + l->opts.connect_timeout_ms,
	};
	net_conns_init(g->conns, NET_MAX_CHANS);
	return g;
}

/* Connection i's slot in group g, or -1 after refusing it. */
static int group_slot(struct ferry_listener *l, unsigned int i,
		      const struct net_group *g)
{
	struct net_pending *p = &l->pending[i];
	const struct net_hello *h = &p->hello;
	unsigned int slot;

	if (g->nr_bulk != h->nr_bulk) {
		send_ack(&p->conn, h->session_id, EBADMSG);
		refuse(l, i, "disagrees on the bulk channel count");
		return -1;
	}
	slot = h->role == FERRY_CHAN_URGENT ? g->nr_bulk : h->index;
	if (g->conns[slot].fd < 0)
		return (int)slot;
	send_ack(&p->conn, h->session_id, EEXIST);
	refuse(l, i, "opened channel %u of its session twice", slot);
	return -1;
}

/* Put a good hello's channel in its session's group. */
static void group_add(struct ferry_listener *l, unsigned int i)
{
	struct net_pending *p = &l->pending[i];
	const struct net_hello *h = &p->hello;
	struct net_group *g;
	int slot;

	if (l->busy) {
		send_ack(&p->conn, h->session_id, EBUSY);
		refuse(l, i, "came while this listener is busy");
		return;
	}
	g = group_find(l, h);
	slot = group_slot(l, i, g);
	if (slot < 0)
		return;
	send_ack(&p->conn, h->session_id, 0);
	g->conns[slot] = p->conn;
	g->have++;
	snprintf(g->peer, sizeof(g->peer), "%s", p->peer);
	pending_drop(l, i, false);
}

/*
 * A whole hello.  A plain one to a TLS listener is told so (it learns
 * nothing but that TLS is wanted); garbage is told only by a plain
 * listener, as before TLS; another version is refused, and the wait for
 * the session expected goes on.
 */
static void hello_done(struct ferry_listener *l, unsigned int i)
{
	struct net_pending *p = &l->pending[i];
	const char *why = net_hello_bad(&p->hello);
	unsigned int version = p->hello.version;

	if (!why && l->tls && !p->conn.link) {
		send_ack(&p->conn, p->hello.session_id, EACCES);
		refuse(l, i, "sent a plain hello; this listener wants TLS");
	} else if (why) {
		if (!l->tls)
			send_ack(&p->conn, p->hello.session_id, EBADMSG);
		refuse(l, i, "%s", why);
	} else if (version != FERRY_NET_VERSION) {
		send_ack(&p->conn, p->hello.session_id, EPROTO);
		refuse(l, i, "speaks version %u; this ferry speaks version %u",
		       version, FERRY_NET_VERSION);
	} else {
		group_add(l, i);
	}
}

/* Read what has come of connection i's hello. */
static void hello_read(struct ferry_listener *l, unsigned int i)
{
	struct net_pending *p = &l->pending[i];
	ssize_t n;

	do {
		n = net_conn_read(&p->conn, (char *)&p->hello + p->got,
				  sizeof(p->hello) - p->got);
		if (n > 0)
			p->got += (size_t)n;
	} while (n > 0 && p->got < sizeof(p->hello));
	if (p->got == sizeof(p->hello))
		hello_done(l, i);
	else if (n == 0 || (n < 0 && n != -EAGAIN && n != -EINTR))
		refuse(l, i, "closed before finishing its hello");
}

/*
 * A TLS listener: a connection that starts a TLS handshake gets one; one
 * that starts with anything else is read as a plain hello (and told TLS
 * is wanted, if it is one).
 */
static bool tls_begins(struct ferry_listener *l, unsigned int i)
{
	struct net_pending *p = &l->pending[i];
	uint8_t first;

	if (!l->tls || p->conn.link || p->got ||
	    recv(p->conn.fd, &first, 1, MSG_PEEK | MSG_DONTWAIT) != 1 ||
	    first != TLS_HANDSHAKE_BYTE)
		return false;
	if (net_conn_tls(&p->conn, l->tls, true)) {
		refuse(l, i, "could not start TLS: %s", ferry_error_msg());
		return true;
	}
	p->state = NET_PENDING_HANDSHAKE;
	return false;
}

/* Move connection i on as far as what has come allows. */
static void pending_step(struct ferry_listener *l, unsigned int i)
{
	struct net_pending *p = &l->pending[i];
	int ret;

	if (tls_begins(l, i))
		return;
	if (p->state == NET_PENDING_HANDSHAKE) {
		ret = net_conn_handshake(&p->conn, p->peer);
		if (ret == -EAGAIN)
			return;
		if (ret) {
			refuse(l, i, "failed the TLS handshake: %s",
			       ferry_error_msg());
			return;
		}
		p->state = NET_PENDING_HELLO;	/* it may be here already */
	}
	hello_read(l, i);
}

/*
 * Connections that said no hello in time, and sessions whose peer never
 * opened all their channels (it died halfway): their slots are wanted.
 */
static void pending_expire(struct ferry_listener *l)
{
	int64_t now = net_now_ms();

	for (unsigned int i = l->nr_pending; i-- > 0;)
		if (now >= l->pending[i].deadline)
			refuse(l, i, "%s within %d ms",
			       l->pending[i].state == NET_PENDING_HANDSHAKE ?
			       "finished no TLS handshake" : "sent no hello",
			       l->opts.hello_timeout_ms);
	for (unsigned int i = l->nr_groups; i-- > 0;)
		if (now >= l->groups[i].deadline)
			group_drop(l, i);
}

/* Poll until the deadline, or the first connection or session to expire. */
static int poll_wait(const struct ferry_listener *l, int64_t deadline)
{
	int64_t soonest = deadline;

	for (unsigned int i = 0; i < l->nr_pending; i++)
		if (soonest < 0 || l->pending[i].deadline < soonest)
			soonest = l->pending[i].deadline;
	for (unsigned int i = 0; i < l->nr_groups; i++)
		if (soonest < 0 || l->groups[i].deadline < soonest)
			soonest = l->groups[i].deadline;
	return net_ms_left(soonest);
}

/* pfd[0]: the listening socket; pfd[1]: stop_fd; then the pending. */
int net_accept_round(struct ferry_listener *l, int64_t deadline, int stop_fd)
{
	struct pollfd pfd[2 + NET_MAX_PENDING] = {
		{ l->fd, POLLIN, 0 }, { stop_fd, POLLIN, 0 } };
	unsigned int nr = l->nr_pending;

	for (unsigned int i = 0; i < nr; i++)
		pfd[2 + i] = (struct pollfd){ l->pending[i].conn.fd,
			net_conn_events(&l->pending[i].conn), 0 };
	if (poll(pfd, 2 + nr, poll_wait(l, deadline)) < 0 && errno != EINTR)
		return ferry_fail(-errno, "poll: %s", strerror(errno));
	if (pfd[1].revents)
		return -ECANCELED;
	/* Backwards: dropping entry i moves the last one into its place. */
	for (unsigned int i = nr; i-- > 0;)
		if (pfd[2 + i].revents)
			pending_step(l, i);
	if (pfd[0].revents)
		accept_new(l);
	pending_expire(l);
	return 0;
}

static struct net_group *group_complete(struct ferry_listener *l)
{
	for (unsigned int i = 0; i < l->nr_groups; i++)
		if (l->groups[i].have == l->groups[i].nr_bulk + 1)
			return &l->groups[i];
	return NULL;
}

static int session_from_group(struct ferry_listener *l, struct net_group *g,
			      struct ferry_session **out)
{
	struct ferry_session *s = NULL;
	int ret = net_session_alloc(g->nr_bulk, g->peer, &s);

	if (!ret) {
		s->id = g->id;
		ret = net_session_fill(s, g->conns, &l->opts, "from");
	}
	net_group_close(g);
	*g = l->groups[--l->nr_groups];
	if (!ret)
		*out = s;
	else
		ferry_net_session_close(s);
	return ret;
}

static int accept_timeout(const struct ferry_listener *l, int timeout_ms)
{
	if (!l->nr_refused)
		return ferry_fail(-ETIMEDOUT, "no session on %s within %d ms",
				  l->addr.text, timeout_ms);
	return ferry_fail(-ETIMEDOUT, "no session on %s within %d ms; "
			  "refused %u connection(s), the last: %s",
			  l->addr.text, timeout_ms, l->nr_refused, l->refused);
}

int ferry_net_accept(struct ferry_listener *l, int timeout_ms,
		     struct ferry_session **out)
{
	int64_t deadline = timeout_ms < 0 ? -1 : net_now_ms() + timeout_ms;
	struct net_group *g;
	int ret;

	net_listener_busy_stop(l);
	l->nr_refused = 0;
	for (;;) {
		g = group_complete(l);
		if (g)
			return session_from_group(l, g, out);
		if (deadline >= 0 && !net_ms_left(deadline))
			return accept_timeout(l, timeout_ms);
		ret = net_accept_round(l, deadline, -1);
		if (ret)
			return ret;
	}
}

/* ---- busy --------------------------------------------------------------- */

static void *busy_main(void *arg)
{
	struct ferry_listener *l = arg;

	while (!net_accept_round(l, -1, l->stop_fd))
		;
	return NULL;
}

int ferry_net_listener_busy(struct ferry_listener *l)
{
	int ret;

	net_listener_busy_stop(l);
	l->stop_fd = evfd_open();
	if (l->stop_fd < 0)
		return ferry_fail(l->stop_fd, "eventfd: %s",
				  strerror(-l->stop_fd));
	l->busy = true;
	ret = -pthread_create(&l->busy_thread, NULL, busy_main, l);
	if (!ret)
		return 0;
	l->busy = false;
	close(l->stop_fd);
	l->stop_fd = -1;
	return ferry_fail(ret, "the listener's busy thread: %s",
			  strerror(-ret));
}

void net_listener_busy_stop(struct ferry_listener *l)
{
	if (l->stop_fd < 0)
		return;
	evfd_signal(l->stop_fd);
	pthread_join(l->busy_thread, NULL);
	close(l->stop_fd);
	l->stop_fd = -1;
	l->busy = false;
}
