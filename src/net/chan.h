/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_CHAN_H
#define FERRY_NET_CHAN_H

/* The channel over a descriptor (chan.c), for the sessions that make them. */
#include "ferry/net.h"

/*
 * A channel over fd, which it takes over (closed with the channel).  A
 * socket is sent to with MSG_NOSIGNAL; io_timeout_ms (0: none) only words
 * the reason when a socket timeout set on fd expires.
 */
int net_chan_create(int fd, enum ferry_chan_role role, unsigned int index,
		    const char *name, int io_timeout_ms,
		    struct ferry_chan **out);

#endif
