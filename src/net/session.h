/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_SESSION_H
#define FERRY_NET_SESSION_H

/*
 * Sessions (session.c): what connect and accept build once every channel
 * of one has been handshaken.  A session's channels are numbered bulk
 * 0..nr_bulk-1, then the urgent one (nr_bulk).
 */
#include "ferry/net.h"
#include "net/tls.h"

#define NET_MAX_CHANS	(FERRY_NET_MAX_BULK + 1)

/* A session of nr_bulk bulk channels (1 to FERRY_NET_MAX_BULK), none open. */
int net_session_alloc(unsigned int nr_bulk, const char *peer,
		      struct ferry_session **out);

/*
 * Turn the handshaken connections conns[0..nr_bulk] into the session's
 * channels (named "bulk 2 <dir> <peer>"; dir is "to" or "from"), each
 * socket tuned by o.  Each connection taken is emptied; on failure the
 * caller closes what is left and the session.
 */
int net_session_fill(struct ferry_session *s, struct net_conn *conns,
		     const struct ferry_net_opts *o, const char *dir);

/* Close each connection of conns[0..nr) that is open. */
void net_conns_close(struct net_conn *conns, unsigned int nr);

/* Every connection of conns[0..nr) empty. */
void net_conns_init(struct net_conn *conns, unsigned int nr);

#endif
