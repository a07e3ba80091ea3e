// SPDX-License-Identifier: MIT
/*
 * net sessions: the bulk channels and the urgent one of one migration,
 * made from sockets that connect or accept has handshaken.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "net/session.h"
#include "net/sock.h"

int net_session_alloc(unsigned int nr_bulk, const char *peer,
		      struct ferry_session **out)
{
	struct ferry_session *s;

	if (!nr_bulk || nr_bulk > FERRY_NET_MAX_BULK)
		return ferry_fail(-EINVAL, "%u bulk channels (1 to %u)",
				  nr_bulk, FERRY_NET_MAX_BULK);
	s = calloc(1, sizeof(*s));
	if (!s)
		return ferry_fail(-ENOMEM, "session: out of memory");
	s->nr_bulk = nr_bulk;
	snprintf(s->peer, sizeof(s->peer), "%s", peer);
	*out = s;
	return 0;
}

/* Channel i of a session: bulk 0..nr_bulk-1, then the urgent one. */
static struct ferry_chan **session_slot(struct ferry_session *s,
					unsigned int i)
{
	return i < s->nr_bulk ? &s->bulk[i] : &s->urgent;
}

/* "bulk 2 to 127.0.0.1:4000", "urgent from [::1]:50123" */
static void chan_name(char *name, const struct ferry_session *s,
		      unsigned int i, const char *dir)
{
	if (i < s->nr_bulk)
		snprintf(name, FERRY_CHAN_NAME_MAX, "bulk %u %s %s", i, dir,
			 s->peer);
	else
		snprintf(name, FERRY_CHAN_NAME_MAX, "urgent %s %s", dir,
			 s->peer);
}

int net_session_fill(struct ferry_session *s, struct net_conn *conns,
		     const struct ferry_net_opts *o, const char *dir)
{
	char name[FERRY_CHAN_NAME_MAX];
	int ret;

	net_conn_auth(&conns[0], s->auth, sizeof(s->auth));
	s->tls = conns[0].link != NULL;
	s->max_guest_bytes = o->max_guest_bytes;
	for (unsigned int i = 0; i <= s->nr_bulk; i++) {
		chan_name(name, s, i, dir);
		ret = net_sock_tune(conns[i].fd, o);
		if (ret)
			return ferry_fail(ret, "%s: socket options: %s", name,
					  strerror(-ret));
		ret = net_conn_chan(&conns[i], i < s->nr_bulk ?
				    FERRY_CHAN_BULK : FERRY_CHAN_URGENT,
				    i < s->nr_bulk ? i : 0, name,
				    o->io_timeout_ms, session_slot(s, i));
		if (ret)
			return ret;
	}
	return 0;
}

void net_conns_close(struct net_conn *conns, unsigned int nr)
{
	for (unsigned int i = 0; i < nr; i++)
		net_conn_close(&conns[i]);
}

void net_conns_init(struct net_conn *conns, unsigned int nr)
{
	for (unsigned int i = 0; i < nr; i++)
		conns[i] = net_conn_plain(-1);
}

void ferry_net_session_shutdown(struct ferry_session *s)
{
	for (unsigned int i = 0; i <= s->nr_bulk; i++)
		if (*session_slot(s, i))
			ferry_chan_shutdown(*session_slot(s, i));
}

void ferry_net_session_close(struct ferry_session *s)
{
	if (!s)
		return;
	for (unsigned int i = 0; i <= s->nr_bulk; i++)
		ferry_chan_close(*session_slot(s, i));
	free(s);
}
