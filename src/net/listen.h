/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_LISTEN_H
#define FERRY_NET_LISTEN_H

/*
 * The listener, shared by listen.c (its socket, open and close) and
 * accept.c (hellos in, sessions out).  One thread at a time uses a
 * listener: nothing in it is shared between threads.
 */
#include <stddef.h>
#include <stdint.h>
#include <sys/un.h>

#include "ferry/net.h"
#include "net/addr.h"
#include "net/hello.h"
#include "net/session.h"
#include "net/sock.h"

#define NET_MAX_PENDING		16	/* accepted, hello not yet read */
#define NET_MAX_GROUPS		4	/* sessions being assembled */

/* An accepted connection whose hello has not all come. */
struct net_pending {
	int fd;
	size_t got;		/* bytes of hello so far */
	int64_t deadline;	/* the whole hello by then, or be refused */
	struct net_hello hello;
	char peer[FERRY_NET_ADDR_MAX];
};

/* The channels of one session seen so far; fds[nr_bulk] is urgent. */
struct net_group {
	uint64_t id;
	unsigned int nr_bulk;
	unsigned int have;
	int64_t deadline;	/* complete by then, or be dropped */
	int fds[NET_MAX_CHANS];
	char peer[FERRY_NET_ADDR_MAX];
};

struct ferry_listener {
	int fd;
	struct ferry_net_opts opts;
	struct net_addr addr;
	char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct net_pending pending[NET_MAX_PENDING];
	unsigned int nr_pending;
	struct net_group groups[NET_MAX_GROUPS];
	unsigned int nr_groups;
	unsigned int nr_refused;	/* during the current accept */
	char refused[256];		/* why the last one was refused */
};

static inline void net_group_close(struct net_group *g)
{
	net_close_fds(g->fds, NET_MAX_CHANS);
}

#endif
