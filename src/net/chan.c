// SPDX-License-Identifier: MIT
/*
 * net channels: a ferry_chan over a descriptor (a connected stream socket,
 * a pipe or a file).  Sessions make them from handshaken sockets; a VMM
 * brings its own descriptor through ferry_chan_fd_open().
 *
 * Sends use MSG_NOSIGNAL on sockets: a closed peer is -EPIPE, not a
 * SIGPIPE.  A socket timeout (SO_RCVTIMEO / SO_SNDTIMEO, set by the
 * session) surfaces as -EAGAIN and is reported as -ETIMEDOUT.
 */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "base/error.h"
#include "base/io.h"
#include "base/sys.h"
#include "net/chan.h"

#define SEND_WINDOW	64

struct fd_chan {
	struct ferry_chan base;
	int fd;
	bool is_sock;
	int io_timeout_ms;
};

static struct fd_chan *fd_chan_of(struct ferry_chan *chan)
{
	return (struct fd_chan *)chan;
}

static int chan_fail(struct fd_chan *c, int err, const char *op)
{
	if (err == -EAGAIN)
		return ferry_fail(-ETIMEDOUT, "%s: %s: no progress for %d ms",
				  c->base.name, op, c->io_timeout_ms);
	return ferry_fail(err, "%s: %s: %s", c->base.name, op,
			  strerror(-err));
}

static ssize_t send_once(struct fd_chan *c, const struct iovec *iov,
			 int iovcnt)
{
	struct msghdr msg = {
		.msg_iov = (struct iovec *)iov,
		.msg_iovlen = (size_t)iovcnt,
	};
	ssize_t n;

	do {
		n = c->is_sock ? sendmsg(c->fd, &msg, MSG_NOSIGNAL) :
				 writev(c->fd, iov, iovcnt);
	} while (n < 0 && errno == EINTR);
	return sys_ssize(n);
}

/* Send from iov[0] + off: straight from the caller's array when possible. */
static ssize_t send_some(struct fd_chan *c, const struct iovec *iov,
			 int iovcnt, size_t off)
{
	struct iovec win[SEND_WINDOW];
	int n;

	if (!off)
		return send_once(c, iov, iovcnt < IOV_MAX ? iovcnt : IOV_MAX);
	n = iovcnt < SEND_WINDOW ? iovcnt : SEND_WINDOW;
	memcpy(win, iov, (size_t)n * sizeof(*win));
	win[0].iov_base = (char *)win[0].iov_base + off;
	win[0].iov_len -= off;
	return send_once(c, win, n);
}

static ssize_t fd_sendv(struct ferry_chan *chan, const struct iovec *iov,
			int iovcnt)
{
	struct fd_chan *c = fd_chan_of(chan);
	size_t off = 0, total = 0;
	int i = 0;

	while (i < iovcnt) {
		ssize_t n = send_some(c, iov + i, iovcnt - i, off);

		if (n < 0)
			return chan_fail(c, (int)n, "send");
		total += (size_t)n;
		for (n += (ssize_t)off; i < iovcnt &&
		     (size_t)n >= iov[i].iov_len; i++)
			n -= (ssize_t)iov[i].iov_len;
		off = (size_t)n;
	}
	return (ssize_t)total;
}

/*
 * A socket gets one recv with MSG_WAITALL first, so a 1 MiB record is one
 * call rather than one per segment that arrived.  That call comes back
 * short on a signal, a socket timeout or the end of the stream;
 * io_read_full() takes the rest (or meets the end again), as it takes
 * everything on a pipe or a file.
 */
static ssize_t fd_recv(struct ferry_chan *chan, void *buf, size_t len)
{
	struct fd_chan *c = fd_chan_of(chan);
	ssize_t first = 0, rest;

	if (c->is_sock)
		first = sys_ssize(recv(c->fd, buf, len, MSG_WAITALL));
	if (first == -EINTR)
		first = 0;
	if (first < 0)
		return chan_fail(c, (int)first, "recv");
	rest = io_read_full(c->fd, (char *)buf + first, len - (size_t)first);
	if (rest < 0)
		return chan_fail(c, (int)rest, "recv");
	return first + rest;
}

static int fd_shutdown(struct ferry_chan *chan)
{
	struct fd_chan *c = fd_chan_of(chan);

	if (!c->is_sock)
		return 0;
	if (shutdown(c->fd, SHUT_RDWR) && errno != ENOTCONN)
		return chan_fail(c, -errno, "shutdown");
	return 0;
}

static int fd_poll_fd(struct ferry_chan *chan)
{
	return fd_chan_of(chan)->fd;
}

static void fd_close(struct ferry_chan *chan)
{
	struct fd_chan *c = fd_chan_of(chan);

	close(c->fd);
	free(c);
}

static const struct ferry_chan_ops fd_chan_ops = {
	.sendv = fd_sendv,
	.recv = fd_recv,
	.shutdown = fd_shutdown,
	.poll_fd = fd_poll_fd,
	.close = fd_close,
};

int net_chan_create(int fd, enum ferry_chan_role role, unsigned int index,
		    const char *name, int io_timeout_ms,
		    struct ferry_chan **out)
{
	struct fd_chan *c = calloc(1, sizeof(*c));
	struct stat st;

	if (!c)
		return ferry_fail(-ENOMEM, "%s: out of memory", name);
	c->base = (struct ferry_chan){ &fd_chan_ops, role, index, "" };
	snprintf(c->base.name, sizeof(c->base.name), "%s", name);
	c->fd = fd;
	c->io_timeout_ms = io_timeout_ms;
	c->is_sock = !fstat(fd, &st) && S_ISSOCK(st.st_mode);
	*out = &c->base;
	return 0;
}

int ferry_chan_fd_open(int fd, const char *name, struct ferry_chan **out)
{
	if (fd < 0)
		return ferry_fail(-EBADF, "%s: no descriptor", name);
	return net_chan_create(fd, FERRY_CHAN_BULK, 0, name, 0, out);
}
