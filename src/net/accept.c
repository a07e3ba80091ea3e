// SPDX-License-Identifier: MIT
/*
 * net accept: read the hello on each accepted connection and group the
 * channels into sessions.
 *
 * Accepted connections stay non-blocking until their session is whole,
 * so one poll() serves the listening socket and every hello in flight: a
 * stray or silent client costs its own slot and its own deadline, never
 * the wait for the session expected.
 */
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/error.h"
#include "net/listen.h"

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

static void pending_drop(struct ferry_listener *l, unsigned int i,
			 bool close_fd)
{
	if (close_fd)
		close(l->pending[i].fd);
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

static void accept_new(struct ferry_listener *l)
{
	int fd;

	while ((fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK |
			     SOCK_CLOEXEC)) >= 0) {
		struct net_pending *p = &l->pending[l->nr_pending];

		if (l->nr_pending == NET_MAX_PENDING) {
			close(fd);	/* a flood; real peers retry */
			continue;
		}
		*p = (struct net_pending){
			.fd = fd,
			.deadline = net_now_ms() + l->opts.connect_timeout_ms,
		};
		peer_name(fd, l, p->peer, sizeof(p->peer));
		l->nr_pending++;
	}
}

/* Best effort: the peer may already be gone, and then nobody is told. */
static void send_ack(int fd, uint64_t id, int status)
{
	struct net_ack a = net_ack_make(id, status);

	if (send(fd, &a, sizeof(a), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		return;
}

static struct net_group *group_find(struct ferry_listener *l,
				    const struct net_hello *h)
{
	struct net_group *g;

	for (unsigned int i = 0; i < l->nr_groups; i++)
		if (l->groups[i].id == h->session_id)
			return &l->groups[i];
	if (l->nr_groups == NET_MAX_GROUPS)
		return NULL;
	g = &l->groups[l->nr_groups++];
	*g = (struct net_group){
		.id = h->session_id,
		.nr_bulk = h->nr_bulk,
		.deadline = net_now_ms() + l->opts.connect_timeout_ms,
	};
	memset(g->fds, -1, sizeof(g->fds));
	return g;
}

/* Connection i's slot in group g, or -1 after refusing it. */
static int group_slot(struct ferry_listener *l, unsigned int i,
		      const struct net_group *g)
{
	const struct net_hello *h = &l->pending[i].hello;
	int fd = l->pending[i].fd;
	unsigned int slot;

	if (!g || g->nr_bulk != h->nr_bulk) {
		send_ack(fd, h->session_id, g ? EBADMSG : EBUSY);
		refuse(l, i, "%s", g ? "disagrees on the bulk channel count" :
		       "would start one session too many");
		return -1;
	}
	slot = h->role == FERRY_CHAN_URGENT ? g->nr_bulk : h->index;
	if (g->fds[slot] < 0)
		return (int)slot;
	send_ack(fd, h->session_id, EEXIST);
	refuse(l, i, "opened channel %u of its session twice", slot);
	return -1;
}

/* Put a good hello's channel in its session's group. */
static void group_add(struct ferry_listener *l, unsigned int i)
{
	struct net_pending *p = &l->pending[i];
	const struct net_hello *h = &p->hello;
	struct net_group *g = group_find(l, h);
	int slot = group_slot(l, i, g);

	if (slot < 0)
		return;
	send_ack(p->fd, h->session_id, 0);
	g->fds[slot] = p->fd;
	g->have++;
	snprintf(g->peer, sizeof(g->peer), "%s", p->peer);
	pending_drop(l, i, false);
}

static int hello_done(struct ferry_listener *l, unsigned int i)
{
	struct net_pending *p = &l->pending[i];
	const char *why = net_hello_bad(&p->hello);
	unsigned int version = p->hello.version;

	if (why) {
		send_ack(p->fd, p->hello.session_id, EBADMSG);
		refuse(l, i, "%s", why);
		return 0;
	}
	if (version == FERRY_NET_VERSION) {
		group_add(l, i);
		return 0;
	}
	send_ack(p->fd, p->hello.session_id, EPROTO);
	refuse(l, i, "speaks format version %u", version);
	return ferry_fail(-EPROTO, "%s; this ferry speaks version %u",
			  l->refused, FERRY_NET_VERSION);
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

/* Read what has come of connection i's hello. */
static int pending_read(struct ferry_listener *l, unsigned int i)
{
	struct net_pending *p = &l->pending[i];
	ssize_t n = recv(p->fd, (char *)&p->hello + p->got,
			 sizeof(p->hello) - p->got, 0);

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0) {
		refuse(l, i, "closed before finishing its hello");
		return 0;
	}
	p->got += (size_t)n;
	return p->got == sizeof(p->hello) ? hello_done(l, i) : 0;
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
			refuse(l, i, "sent no hello within %d ms",
			       l->opts.connect_timeout_ms);
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

/* One round: wait, take new connections, read hellos, drop the slow. */
static int accept_round(struct ferry_listener *l, int64_t deadline)
{
	struct pollfd pfd[1 + NET_MAX_PENDING] = { { l->fd, POLLIN, 0 } };
	unsigned int nr = l->nr_pending;
	int ret = 0;

	for (unsigned int i = 0; i < nr; i++)
		pfd[1 + i] = (struct pollfd){ l->pending[i].fd, POLLIN, 0 };
	if (poll(pfd, 1 + nr, poll_wait(l, deadline)) < 0 && errno != EINTR)
		return ferry_fail(-errno, "poll: %s", strerror(errno));
	/* Backwards: dropping entry i moves the last one into its place. */
	for (unsigned int i = nr; i-- > 0 && !ret;)
		if (pfd[1 + i].revents)
			ret = pending_read(l, i);
	if (!ret && pfd[0].revents)
		accept_new(l);
	pending_expire(l);
	return ret;
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
		ret = net_session_fill(s, g->fds, &l->opts, "from");
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

	l->nr_refused = 0;
	for (;;) {
		g = group_complete(l);
		if (g)
			return session_from_group(l, g, out);
		if (deadline >= 0 && !net_ms_left(deadline))
			return accept_timeout(l, timeout_ms);
		ret = accept_round(l, deadline);
		if (ret)
			return ret;
	}
}

