// SPDX-License-Identifier: MIT
/*
 * net tls_chan: a ferry_chan over a TLS session, holding the channel
 * contract (ferry/chan.h) as the plain channel does.
 *
 * Threads.  One thread sends while another receives (GnuTLS allows one
 * of each on a session at once); shutdown comes from any third thread:
 * it shuts the socket down, which wakes both out of the kernel, and the
 * flag it sets first turns what they then see into the contract's end of
 * stream (recv) and -EPIPE (send).
 *
 * Readiness.  GnuTLS reads whole TLS records: after a recv, bytes of the
 * last record may wait decrypted inside it while the socket has nothing
 * to read, and a poll on the socket alone would sleep on data that is
 * there.  So the descriptor to poll is an epoll set of the socket and an
 * eventfd that the receiving thread raises while GnuTLS holds bytes and
 * clears once it holds none: readable whenever recv can make progress.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "base/error.h"
#include "base/sys.h"
#include "net/chan.h"
#include "net/tls.h"

struct tls_chan {
	struct ferry_chan base;
	struct net_tls_link *link;
	int io_timeout_ms;
	int poll_fd;		/* epoll: the socket and pending_fd */
	int pending_fd;		/* eventfd: the receiving thread's */
	bool pending;		/* pending_fd raised; receiving thread */
	atomic_bool shut;	/* set by shutdown, any thread */
	char gather[16384];	/* small pieces; the sending thread's */
};

static struct tls_chan *tls_chan_of(struct ferry_chan *chan)
{
	return (struct tls_chan *)chan;
}

static int chan_fail(struct tls_chan *c, int gnutls_err, int err,
		     const char *op)
{
	if (err == -ETIMEDOUT)
		return ferry_fail(err, "%s: %s: no progress for %d ms",
				  c->base.name, op, c->io_timeout_ms);
	if (err == -EBADMSG)
		return ferry_fail(err, "%s: %s: TLS: %s (the stream was "
				  "altered on the way)", c->base.name, op,
				  gnutls_strerror(gnutls_err));
	return ferry_fail(err, "%s: %s: %s", c->base.name, op,
			  strerror(-err));
}

static bool is_shut(struct tls_chan *c)
{
	return atomic_load_explicit(&c->shut, memory_order_acquire);
}

/* All of one piece: GnuTLS sends at most a record's worth a call. */
static ssize_t send_piece(gnutls_session_t s, const char *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = gnutls_record_send(s, buf + done, len - done);

		if (n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n < 0)
			return n;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

/*
 * Small pieces (a record's header before its pages) are gathered into
 * one TLS record with what follows, so the wire does not carry a TLS
 * record per iovec entry; large ones go straight from the caller's
 * memory.
 */
static ssize_t tls_sendv(struct ferry_chan *chan, const struct iovec *iov,
			 int iovcnt)
{
	struct tls_chan *c = tls_chan_of(chan);
	gnutls_session_t s = c->link->session;
	ssize_t n = 0, total = 0;
	size_t held = 0;
	int ret;

	if (is_shut(c))
		return chan_fail(c, 0, -EPIPE, "send");
	net_tls_link_cork(c->link);
	for (int i = 0; i < iovcnt && n >= 0; i++) {
		if (iov[i].iov_len <= sizeof(c->gather) - held) {
			memcpy(c->gather + held, iov[i].iov_base,
			       iov[i].iov_len);
			held += iov[i].iov_len;
			n = (ssize_t)iov[i].iov_len;
		} else {
			n = held ? send_piece(s, c->gather, held) : 0;
			held = 0;
			if (n >= 0 && iov[i].iov_len <= sizeof(c->gather)) {
				i--;	/* gather it after all */
				continue;
			}
			n = n < 0 ? n : send_piece(s, iov[i].iov_base,
						   iov[i].iov_len);
		}
		total += n > 0 ? n : 0;
	}
	if (n >= 0 && held)
		n = send_piece(s, c->gather, held);
	/* What GnuTLS wrote is held until here: one write for many records. */
	ret = net_tls_link_flush(c->link);
	if (n >= 0 && ret)
		return chan_fail(c, 0, is_shut(c) ? -EPIPE :
				 ret == -EAGAIN ? -ETIMEDOUT : ret, "send");
	if (n >= 0)
		return total;
	return chan_fail(c, (int)n, is_shut(c) ? -EPIPE :
			 net_tls_errno((int)n, errno), "send");
}

/* Raise or clear pending_fd as GnuTLS holds bytes or not. */
static void note_pending(struct tls_chan *c)
{
	bool now = gnutls_record_check_pending(c->link->session) > 0 ||
		   net_tls_link_buffered(c->link);
	uint64_t v = 1;

	if (now == c->pending)
		return;
	if (now ? write(c->pending_fd, &v, sizeof(v)) :
		  read(c->pending_fd, &v, sizeof(v)))
		c->pending = now;
}

static ssize_t recv_some(struct tls_chan *c, char *buf, size_t len)
{
	ssize_t n;

	do {
		n = gnutls_record_recv(c->link->session, buf, len);
	} while (n < 0 && n != GNUTLS_E_AGAIN &&
		 !gnutls_error_is_fatal((int)n));
	return n;
}

static ssize_t tls_recv(struct ferry_chan *chan, void *buf, size_t len)
{
	struct tls_chan *c = tls_chan_of(chan);
	size_t got = 0;
	ssize_t n = 1;

	while (got < len && n > 0 && !is_shut(c)) {
		n = recv_some(c, (char *)buf + got, len - got);
		got += n > 0 ? (size_t)n : 0;
	}
	note_pending(c);
	/* The end of the stream, announced or not, or our own shutdown. */
	if (n >= 0 || n == GNUTLS_E_PREMATURE_TERMINATION || is_shut(c))
		return (ssize_t)got;
	return chan_fail(c, (int)n, net_tls_errno((int)n, errno), "recv");
}

static int tls_shutdown(struct ferry_chan *chan)
{
	struct tls_chan *c = tls_chan_of(chan);

	atomic_store_explicit(&c->shut, true, memory_order_release);
	if (shutdown(c->link->fd, SHUT_RDWR) && errno != ENOTCONN)
		return chan_fail(c, 0, -errno, "shutdown");
	return 0;
}

static int tls_poll_fd(struct ferry_chan *chan)
{
	return tls_chan_of(chan)->poll_fd;
}

static void tls_close(struct ferry_chan *chan)
{
	struct tls_chan *c = tls_chan_of(chan);
	int fd = c->link->fd;

	net_tls_link_free(c->link);
	close(fd);
	if (c->poll_fd >= 0)
		close(c->poll_fd);
	if (c->pending_fd >= 0)
		close(c->pending_fd);
	free(c);
}

static const struct ferry_chan_ops tls_chan_ops = {
	.sendv = tls_sendv,
	.recv = tls_recv,
	.shutdown = tls_shutdown,
	.poll_fd = tls_poll_fd,
	.close = tls_close,
};

static int poll_set(struct tls_chan *c)
{
	struct epoll_event ev = { .events = EPOLLIN };

	c->poll_fd = sys_ret(epoll_create1(EPOLL_CLOEXEC));
	c->pending_fd = sys_ret(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
	if (c->poll_fd < 0 || c->pending_fd < 0)
		return -EMFILE;
	if (epoll_ctl(c->poll_fd, EPOLL_CTL_ADD, c->link->fd, &ev) ||
	    epoll_ctl(c->poll_fd, EPOLL_CTL_ADD, c->pending_fd, &ev))
		return -errno;
	return 0;
}

int net_tls_chan_create(struct net_tls_link *link, enum ferry_chan_role role,
			unsigned int index, const char *name,
			int io_timeout_ms, struct ferry_chan **out)
{
	struct tls_chan *c = calloc(1, sizeof(*c));
	int ret;

	if (!c)
		return ferry_fail(-ENOMEM, "%s: out of memory", name);
	c->base = (struct ferry_chan){ &tls_chan_ops, role, index, "" };
	snprintf(c->base.name, sizeof(c->base.name), "%s", name);
	c->link = link;
	c->io_timeout_ms = io_timeout_ms;
	atomic_init(&c->shut, false);
	c->poll_fd = c->pending_fd = -1;
	ret = net_tls_link_buffers(link);
	if (!ret)
		ret = poll_set(c);
	if (ret) {
		if (c->poll_fd >= 0)
			close(c->poll_fd);
		if (c->pending_fd >= 0)
			close(c->pending_fd);
		free(c);
		return ferry_fail(ret, "%s: %s: %s", name, ret == -ENOMEM ?
				  "buffers" : "poll set", strerror(-ret));
	}
	/* The handshake may have left the first bytes decrypted. */
	note_pending(c);
	*out = &c->base;
	return 0;
}

int net_conn_chan(struct net_conn *c, enum ferry_chan_role role,
		  unsigned int index, const char *name, int io_timeout_ms,
		  struct ferry_chan **out)
{
	int ret = c->link ? net_tls_chan_create(c->link, role, index, name,
						io_timeout_ms, out) :
			    net_chan_create(c->fd, role, index, name,
					    io_timeout_ms, out);

	if (!ret)
		*c = net_conn_plain(-1);
	return ret;
}
