// SPDX-License-Identifier: MIT
/*
 * net fds: sessions over descriptors a VMM already has (one connected
 * stream socket per channel: accepted TCP, vsock, unix), with TLS on top
 * when the options give a key or certificates, and sessions over unix
 * socket pairs for a move inside one host.  No hello: whoever made the
 * descriptors paired them, in channel order.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "base/error.h"
#include "base/sys.h"
#include "net/session.h"
#include "net/sock.h"

/* Our own copies of the caller's descriptors, non-blocking for now. */
static int dup_all(const int *fds, unsigned int nr, struct net_conn *conns)
{
	for (unsigned int i = 0; i < nr; i++) {
		int fd = fds[i] < 0 ? -EBADF :
			 sys_ret(fcntl(fds[i], F_DUPFD_CLOEXEC, 0));

		if (fd < 0)
			return ferry_fail(fd, "channel %u's descriptor %d: %s",
					  i, fds[i], strerror(-fd));
		conns[i] = net_conn_plain(fd);
		if (fcntl(fd, F_SETFL, O_NONBLOCK))
			return ferry_fail(-errno, "descriptor %d: %s", fds[i],
					  strerror(errno));
	}
	return 0;
}

/* Every channel's TLS handshake, in channel order, under one deadline. */
static int handshake_all(struct net_conn *conns, unsigned int nr,
			 struct net_tls *tls, bool client,
			 const struct ferry_net_opts *o)
{
	int64_t deadline = net_now_ms() + o->connect_timeout_ms;
	char peer[48];
	int ret = 0;

	for (unsigned int i = 0; i < nr && !ret; i++) {
		snprintf(peer, sizeof(peer), "the peer of channel %u", i);
		ret = net_conn_tls(&conns[i], tls, !client);
		if (!ret)
			ret = net_conn_handshake_by(&conns[i], peer, deadline);
	}
	return ret;
}

static int session_id(uint64_t *id)
{
	if (getrandom(id, sizeof(*id), 0) != sizeof(*id))
		return ferry_fail(-errno, "getrandom: %s", strerror(errno));
	return 0;
}

int ferry_net_session_from_fds(const int *fds, unsigned int nr_bulk,
			       bool client, const struct ferry_net_opts *opts,
			       struct ferry_session **out)
{
	struct ferry_net_opts o = net_opts_or_default(opts);
	struct net_conn conns[NET_MAX_CHANS];
	struct ferry_session *s = NULL;
	struct net_tls *tls = NULL;
	int ret = net_session_alloc(nr_bulk, "descriptors", &s);

	net_conns_init(conns, NET_MAX_CHANS);
	if (!ret)
		ret = dup_all(fds, nr_bulk + 1, conns);
	if (!ret)
		ret = net_tls_load(&o, &tls);
	if (!ret && tls)
		ret = handshake_all(conns, nr_bulk + 1, tls, client, &o);
	if (!ret)
		ret = session_id(&s->id);
	if (!ret)
		ret = net_session_fill(s, conns, &o, client ? "to" : "from");
	net_conns_close(conns, NET_MAX_CHANS);
	net_tls_put(tls);
	if (!ret)
		*out = s;
	else
		ferry_net_session_close(s);
	return ret;
}

/* Socket pairs: a's ends in ca, b's in cb. */
static int make_pairs(unsigned int nr, struct net_conn *ca,
		      struct net_conn *cb)
{
	for (unsigned int i = 0; i < nr; i++) {
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
			return ferry_fail(-errno, "socketpair: %s",
					  strerror(errno));
		ca[i] = net_conn_plain(sv[0]);
		cb[i] = net_conn_plain(sv[1]);
	}
	return 0;
}

int ferry_net_session_pair(unsigned int nr_bulk, struct ferry_session **a,
			   struct ferry_session **b)
{
	struct ferry_net_opts o = net_opts_or_default(NULL);
	struct net_conn ca[NET_MAX_CHANS], cb[NET_MAX_CHANS];
	struct ferry_session *sa = NULL, *sb = NULL;
	int ret;

	net_conns_init(ca, NET_MAX_CHANS);
	net_conns_init(cb, NET_MAX_CHANS);
	ret = net_session_alloc(nr_bulk, "socket pair", &sa);
	if (!ret)
		ret = net_session_alloc(nr_bulk, "socket pair", &sb);
	if (!ret)
		ret = make_pairs(nr_bulk + 1, ca, cb);
	if (!ret)
		ret = session_id(&sa->id);
	if (!ret)
		sb->id = sa->id;
	if (!ret)
		ret = net_session_fill(sa, ca, &o, "to");
	if (!ret)
		ret = net_session_fill(sb, cb, &o, "from");
	net_conns_close(ca, NET_MAX_CHANS);
	net_conns_close(cb, NET_MAX_CHANS);
	if (ret) {
		ferry_net_session_close(sa);
		ferry_net_session_close(sb);
		return ret;
	}
	*a = sa;
	*b = sb;
	return 0;
}
