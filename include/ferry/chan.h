/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CHAN_H
#define FERRY_CHAN_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * chan: a reliable byte stream behind a small ops table.  Everything
 * above it (the wire records, migration, snapshots) does its I/O through
 * these ops and never through a descriptor, so a layer can wrap a
 * channel (authentication, encryption) without anyone above noticing.
 * Sessions of channels between two hosts are in ferry/net.h.
 */

enum ferry_chan_role {
	FERRY_CHAN_BULK = 1,
	FERRY_CHAN_URGENT = 2,
};

struct ferry_chan;

struct ferry_chan_ops {
	/* Send every byte of the iovec, or fail: bytes sent, or -errno. */
	ssize_t (*sendv)(struct ferry_chan *chan, const struct iovec *iov,
			 int iovcnt);
	/*
	 * Receive exactly len bytes: len, fewer when the stream ends first
	 * (how many arrived), or -errno.
	 */
	ssize_t (*recv)(struct ferry_chan *chan, void *buf, size_t len);
	/*
	 * Make every blocked and later send and recv return (recv: end of
	 * stream; send: -EPIPE).  Safe from any thread, for stopping threads
	 * that sit in I/O.  Returns 0 or -errno.
	 */
	int (*shutdown)(struct ferry_chan *chan);
	/*
	 * A descriptor to poll for POLLIN: readable when recv can make
	 * progress.  For poll sets only; never read or write it.
	 */
	int (*poll_fd)(struct ferry_chan *chan);
	/* Release everything.  Not while another thread uses the channel. */
	void (*close)(struct ferry_chan *chan);
};

#define FERRY_CHAN_NAME_MAX	160

/*
 * A channel.  Implementations embed it first in their own struct.  `name`
 * says which channel and which peer ("bulk 2 to 127.0.0.1:4000"); reasons
 * recorded by the ops start with it.
 */
struct ferry_chan {
	const struct ferry_chan_ops *ops;
	enum ferry_chan_role role;
	unsigned int index;		/* bulk: 0..nr_bulk-1; urgent: 0 */
	char name[FERRY_CHAN_NAME_MAX];
};

static inline ssize_t ferry_chan_sendv(struct ferry_chan *chan,
				       const struct iovec *iov, int iovcnt)
{
	return chan->ops->sendv(chan, iov, iovcnt);
}

static inline ssize_t ferry_chan_recv(struct ferry_chan *chan, void *buf,
				      size_t len)
{
	return chan->ops->recv(chan, buf, len);
}

static inline int ferry_chan_shutdown(struct ferry_chan *chan)
{
	return chan->ops->shutdown(chan);
}

static inline int ferry_chan_poll_fd(struct ferry_chan *chan)
{
	return chan->ops->poll_fd(chan);
}

/* NULL is fine. */
static inline void ferry_chan_close(struct ferry_chan *chan)
{
	if (chan)
		chan->ops->close(chan);
}

/*
 * A channel over a descriptor ferry takes over (closed with the channel): a
 * connected stream socket (sent with MSG_NOSIGNAL), a pipe or a file.
 * `name` names it in reasons.
 */
int ferry_chan_fd_open(int fd, const char *name, struct ferry_chan **out);

#ifdef __cplusplus
}
#endif

#endif
