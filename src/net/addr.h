/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_ADDR_H
#define FERRY_NET_ADDR_H

/*
 * Addresses (addr.c): "HOST:PORT", "[IPv6]:PORT" and "unix:PATH" (see
 * ferry/net.h) into socket addresses, and back into text for reasons.
 */
#include <stdbool.h>
#include <sys/socket.h>

#include "ferry/net.h"

#define NET_MAX_CANDIDATES	4

struct net_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[FERRY_NET_ADDR_MAX];	/* "127.0.0.1:4000", "unix:/x" */
};

/*
 * Up to NET_MAX_CANDIDATES addresses for spec, in out: how many (at least
 * one), or -errno with a reason (-EINVAL: a bad address; -ENOENT: no such
 * host).  passive: to listen on, so HOST may be empty (every address, the
 * IPv6 wildcard first: it is made dual-stack) and PORT 0.
 */
int net_addr_resolve(const char *spec, bool passive, struct net_addr *out);

/* a->text from a->ss, for a TCP address ("[::1]:4000"). */
void net_addr_format(struct net_addr *a);

/*
 * Whether a stays on this machine: a unix socket, or a loopback address
 * (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104).  A wildcard is not.
 */
bool net_addr_is_local(const struct net_addr *a);

/* The TCP port of a, or 0 for a unix socket. */
int net_addr_port(const struct net_addr *a);

#endif
