/* SPDX-License-Identifier: MIT */
#ifndef FERRY_NET_SOCK_H
#define FERRY_NET_SOCK_H

/*
 * Sockets (sock.c): options on a socket about to become a channel, and
 * the small transfers of the handshake, on non-blocking sockets under one
 * deadline.  Deadlines are CLOCK_MONOTONIC milliseconds; -1 is none.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/net.h"

/* The caller's options (NULL: all defaults) with defaults filled in. */
struct ferry_net_opts net_opts_or_default(const struct ferry_net_opts *o);

/* setsockopt of an int: 0 or -errno. */
int net_set_int(int fd, int level, int name, int value);

/*
 * A handshaken socket made ready for channel I/O: TCP options, buffers
 * and timeouts from o, then blocking.  0 or -errno; the caller words it.
 */
int net_sock_tune(int fd, const struct ferry_net_opts *o);

/* Close each descriptor of fds[0..nr) that is >= 0. */
void net_close_fds(const int *fds, unsigned int nr);

int64_t net_now_ms(void);

/* Milliseconds to the deadline for poll(): -1 for none, 0 when past. */
int net_ms_left(int64_t deadline);

/* 0 when fd is ready for events, -ETIMEDOUT at the deadline, or -errno. */
int net_wait_fd(int fd, short events, int64_t deadline);

/*
 * All of a small message on a non-blocking socket (out: send, else recv)
 * before the deadline: 0, -ETIMEDOUT, -ECONNRESET when the peer closes, or
 * -errno.  Sent with MSG_NOSIGNAL.
 */
int net_xfer(int fd, void *buf, size_t len, bool out, int64_t deadline);

#endif
