// SPDX-License-Identifier: MIT
/*
 * serve conn: a VMM's connection until its list has come.
 *
 * The VMM sends the list and the descriptor with one sendmsg() on a
 * stream socket, the descriptor riding on the first bytes.  A stream has
 * no message boundaries: a long list may come in several reads (the
 * kernel stops a read at the bytes that carry descriptors, and a sender's
 * buffer may split it), and the connection stays open after it (the VMM
 * keeps its end until it exits), so the list's end is where the JSON says
 * it is: each read is parsed again until the list is whole, within
 * FERRY_SERVE_MAX_JSON bytes and the handshake's time.  One descriptor,
 * and only one, must come with it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "serve/serve.h"

#ifndef SO_PEERPIDFD			/* Linux 6.5 */
#define SO_PEERPIDFD	77
#endif

/* Descriptors a read may carry before it counts as too many. */
#define CONN_MAX_FDS	8

static int refuse(struct serve_conn *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int refuse(struct serve_conn *c, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
	va_end(ap);
	return err;
}

/* The peer: pid and uid (SO_PEERCRED), a pidfd to see it exit. */
static void peer(struct serve_conn *c)
{
	struct ucred cred = { .pid = 0 };
	socklen_t len = sizeof(cred);
	int pidfd = -1;

	if (!getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len)) {
		c->pid = cred.pid;
		c->uid = (int)cred.uid;
	}
	len = sizeof(pidfd);
	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len))
		pidfd = c->pid > 0 ? (int)syscall(SYS_pidfd_open, c->pid, 0) :
				     -1;
	c->pidfd = pidfd < 0 ? -1 : pidfd;
}

int serve_conn_init(struct serve_conn *c, int fd, uint64_t id,
		    int timeout_ms)
{
	memset(c, 0, sizeof(*c));
	c->id = id;
	c->fd = fd;
	c->uffd = c->pidfd = -1;
	c->deadline_ns = ferry_clock_now_ns() + (uint64_t)timeout_ms *
			 1000000ULL;
	c->buf = malloc(FERRY_SERVE_MAX_JSON);
	if (!c->buf) {
		c->fd = -1;
		return ferry_fail(-ENOMEM, "out of memory");
	}
	peer(c);
	return 0;
}

void serve_conn_fini(struct serve_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	if (c->uffd >= 0)
		close(c->uffd);
	if (c->pidfd >= 0)
		close(c->pidfd);
	free(c->buf);
	c->buf = NULL;
	c->fd = c->uffd = c->pidfd = -1;
}

/* Keep the first descriptor; any other is closed and refuses the VMM. */
static int take_fds(struct serve_conn *c, struct msghdr *mh)
{
	int extra = 0;

	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm;
	     cm = CMSG_NXTHDR(mh, cm)) {
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int),
			       sizeof(fd));
			if (c->uffd < 0 && !extra)
				c->uffd = fd;
			else {
				close(fd);
				extra++;
			}
		}
	}
	if (mh->msg_flags & MSG_CTRUNC)
		return refuse(c, -EBADMSG, "more than %d descriptors came with "
			      "the list", CONN_MAX_FDS);
	if (extra)
		return refuse(c, -EBADMSG, "%d descriptors more than the one "
			      "userfaultfd came with the list", extra);
	return 0;
}

/* One read: bytes (0 at the end), -EAGAIN, or a refusal. */
static ssize_t read_some(struct serve_conn *c)
{
	char control[CMSG_SPACE(CONN_MAX_FDS * sizeof(int))];
	struct iovec iov = { c->buf + c->len, FERRY_SERVE_MAX_JSON - c->len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = control,
			     .msg_controllen = sizeof(control) };
	ssize_t n;
	int ret;

	do {
		n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return -EAGAIN;
	if (n < 0)
		return refuse(c, -errno, "recvmsg: %s", strerror(errno));
	ret = take_fds(c, &mh);
	return ret ? ret : n;
}

static int ended(struct serve_conn *c)
{
	if (!c->len && c->uffd < 0)
		return refuse(c, -ECONNRESET, "closed without sending a list");
	return refuse(c, -ECONNRESET, "closed after %zu bytes of a list that "
		      "does not end", c->len);
}

/* What the bytes so far say: 1 whole, 0 more to come, or a refusal. */
static int parse(struct serve_conn *c, struct serve_list *l)
{
	int ret = serve_json_parse(c->buf, c->len, l);

	if (ret == -EAGAIN && c->len == FERRY_SERVE_MAX_JSON)
		return refuse(c, -E2BIG, "the list is longer than %d bytes",
			      FERRY_SERVE_MAX_JSON);
	if (ret == -EAGAIN)
		return 0;
	if (ret)
		return refuse(c, ret, "%s", ferry_error_msg());
	if (c->uffd < 0)
		return refuse(c, -EBADMSG, "the list came without a "
			      "userfaultfd (SCM_RIGHTS)");
	return 1;
}

int serve_conn_read(struct serve_conn *c, struct serve_list *l)
{
	for (;;) {
		ssize_t n = read_some(c);
		int ret;

		if (n == -EAGAIN)
			return 0;
		if (n < 0)
			return (int)n;
		if (n == 0)
			return ended(c);
		c->len += (size_t)n;
		ret = parse(c, l);
		if (ret)
			return ret;
	}
}
