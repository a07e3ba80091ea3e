/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_LISTENER_H
#define FERRY_NET_LISTENER_H

/*
 * The listener, shared by listen.c (its socket, open and close) and
 * accept.c (handshakes and hellos in, sessions out).  One thread at a
 * time uses a listener: the caller's, or while it is busy (between
 * ferry_net_listener_busy and the next accept or close) the busy thread.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/un.h>

#include "ferry/net.h"
#include "net/addr.h"
#include "net/hello.h"
#include "net/session.h"
#include "net/sock.h"
#include "net/tls.h"

#define NET_MAX_PENDING		16	/* accepted, hello not yet read */
#define NET_MAX_GROUPS		4	/* sessions being assembled */
#define NET_HELLO_TIMEOUT_MS	2000

enum net_pending_state {
	NET_PENDING_HANDSHAKE,	/* TLS: the handshake runs */
	NET_PENDING_HELLO,	/* the hello comes (after TLS, if any) */
};

/* An accepted connection whose hello has not all come. */
struct net_pending {
	struct net_conn conn;
	enum net_pending_state state;
	size_t got;		/* bytes of hello so far */
	uint64_t seq;		/* order of arrival: the oldest makes
				 * room first */
	int64_t deadline;	/* handshake and hello by then, or refused */
	struct net_hello hello;
	char peer[FERRY_NET_ADDR_MAX];
};

/* The channels of one session seen so far; conns[nr_bulk] is urgent. */
struct net_group {
	uint64_t id;
	unsigned int nr_bulk;
	unsigned int have;
	int64_t deadline;	/* complete by then, or be dropped */
	struct net_conn conns[NET_MAX_CHANS];
	char peer[FERRY_NET_ADDR_MAX];
};

struct ferry_listener {
	int fd;
	struct ferry_net_opts opts;
	struct net_tls *tls;		/* NULL: plain */
	struct net_addr addr;
	char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct net_pending pending[NET_MAX_PENDING];
	unsigned int nr_pending;
	struct net_group groups[NET_MAX_GROUPS];
	unsigned int nr_groups;
	uint64_t nr_accepted;		/* the next connection's seq */
	unsigned int nr_refused;	/* during the current accept */
	char refused[320];		/* why the last one was refused */
	/* The busy thread: answers "busy" while it runs; stop_fd stops it. */
	bool busy;
	pthread_t busy_thread;
	int stop_fd;			/* -1 while no busy thread runs */
};

static inline void net_group_close(struct net_group *g)
{
	net_conns_close(g->conns, NET_MAX_CHANS);
}

/* accept.c: one round of the wait, stopped early by stop_fd (or -1). */
int net_accept_round(struct ferry_listener *l, int64_t deadline, int stop_fd);

/* Stop the busy thread, if it runs. */
void net_listener_busy_stop(struct ferry_listener *l);

#endif
