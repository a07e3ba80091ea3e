// SPDX-License-Identifier: MIT
/*
 * net: channels over stream sockets, and sessions of channels.
 *
 *   connecting side                         listening side
 *   connect() every channel  ────────────▶  accept(), non-blocking
 *   HELLO (session id, role, index, ...) ─▶ read HELLO, group by session id
 *   read ACK ◀────────────────────────────  ACK: 0, or why it was refused
 *   every channel ACKed: session ready      every channel in: session ready
 *
 * The handshake runs on non-blocking sockets under one deadline, so a
 * silent peer costs a timeout, never a hang; the channels then switch to
 * blocking I/O (with SO_RCVTIMEO / SO_SNDTIMEO when an I/O timeout is set).
 * Sends use MSG_NOSIGNAL: a closed peer is -EPIPE, not a SIGPIPE.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <xxhash.h>

#include "base/error.h"
#include "ferry/net.h"
#include "ferry/wire.h"
#include "base/sys.h"

#define CONNECT_TIMEOUT_MS	5000
#define MAX_PENDING		16	/* accepted, hello not yet read */
#define MAX_GROUPS		4	/* sessions being assembled */
#define MAX_CHANS		(FERRY_NET_MAX_BULK + 1)
#define SEND_WINDOW		64
#define MAX_CANDIDATES		4

/*
 * Keepalive finds a peer that vanished without a FIN or RST (a dead host)
 * within about 20 s, even on a channel that is idle by design (the urgent
 * channel while no page faults).
 */
#define KEEPALIVE_IDLE_S	10
#define KEEPALIVE_INTVL_S	2
#define KEEPALIVE_CNT		5

/*
 * Socket buffers are the kernel's unless the caller sets sock_buf: TCP
 * autotuning grows them to net.ipv4.tcp_wmem's maximum (and setting
 * SO_SNDBUF would switch it off), and on unix sockets 200 KiB, 1 MiB and
 * 4 MiB measured the same for 1 MiB records here (the smaller ones keep
 * the data in cache between the two copies).
 */

/* ---- hello and its answer (docs/wire.md, "Session hello") ---- */

#define HELLO_MAGIC	"FERRYHEL"
#define ACK_MAGIC	"FERRYACK"

struct hello {
	char magic[8];
	uint16_t version;
	uint8_t role;
	uint8_t reserved;
	uint16_t index;
	uint16_t nr_bulk;
	uint64_t session_id;
	uint64_t sum;		/* XXH3-64 of the 24 bytes above */
};

struct ack {
	char magic[8];
	uint16_t version;
	uint16_t reserved;
	uint32_t status;	/* 0: accepted; else a positive errno */
	uint64_t session_id;
	uint64_t sum;
};

_Static_assert(sizeof(struct hello) == 32, "hello layout");
_Static_assert(sizeof(struct ack) == 32, "ack layout");

static uint64_t hello_sum(const void *msg)
{
	return XXH3_64bits(msg, 24);
}

/* ---- a channel over a descriptor ---- */

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

static ssize_t recv_once(struct fd_chan *c, void *buf, size_t len)
{
	ssize_t n;

	do {
		n = c->is_sock ? recv(c->fd, buf, len, MSG_WAITALL) :
				 read(c->fd, buf, len);
	} while (n < 0 && errno == EINTR);
	return sys_ssize(n);
}

static ssize_t fd_recv(struct ferry_chan *chan, void *buf, size_t len)
{
	struct fd_chan *c = fd_chan_of(chan);
	size_t got = 0;

	while (got < len) {
		ssize_t n = recv_once(c, (char *)buf + got, len - got);

		if (n < 0)
			return chan_fail(c, (int)n, "recv");
		if (!n)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
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

static int chan_create(int fd, enum ferry_chan_role role, unsigned int index,
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
	return chan_create(fd, FERRY_CHAN_BULK, 0, name, 0, out);
}

/* ---- addresses ---- */

struct net_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[FERRY_NET_ADDR_MAX];
};

static int addr_unix(const char *path, struct net_addr *a)
{
	struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
	size_t len = strlen(path);

	if (!len || len >= sizeof(un->sun_path))
		return ferry_fail(-EINVAL, "unix socket path '%s': 1 to %zu "
				  "bytes", path, sizeof(un->sun_path) - 1);
	memset(a, 0, sizeof(*a));
	un->sun_family = AF_UNIX;
	memcpy(un->sun_path, path, len);
	if (path[0] == '@')
		un->sun_path[0] = '\0';	/* the abstract namespace */
	a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
			     (path[0] != '@'));
	snprintf(a->text, sizeof(a->text), "unix:%s", path);
	return 0;
}

static int split_port(const char *spec, const char *colon, bool passive)
{
	char *end;
	long port;

	if (!colon || !colon[1])
		return ferry_fail(-EINVAL, "address '%s': want HOST:PORT, "
				  "[IPv6]:PORT or unix:PATH", spec);
	port = strtol(colon + 1, &end, 10);
	if (*end || port < 0 || port > 65535 || (!port && !passive))
		return ferry_fail(-EINVAL, "address '%s': bad port '%s'", spec,
				  colon + 1);
	return 0;
}

/* Where the host ends and its colon is, in "host:port" or "[v6]:port". */
static int find_colon(const char *spec, const char **start,
		      const char **end, const char **colon)
{
	*start = spec;
	if (spec[0] == '[') {
		*start = spec + 1;
		*end = strchr(*start, ']');
		*colon = *end && (*end)[1] == ':' ? *end + 1 : NULL;
		return 0;
	}
	*end = *colon = strrchr(spec, ':');
	if (*colon && memchr(spec, ':', (size_t)(*colon - spec)))
		return ferry_fail(-EINVAL, "address '%s': an IPv6 address goes "
				  "in brackets, [::1]:4000", spec);
	return 0;
}

/* "host:port" or "[v6]:port" into host and the text after the colon. */
static int split_host(const char *spec, char *host, size_t len,
		      const char **port, bool passive)
{
	const char *start, *end, *colon;

	if (find_colon(spec, &start, &end, &colon) ||
	    split_port(spec, colon, passive))
		return -EINVAL;
	if ((size_t)(end - start) >= len || (end == start && !passive))
		return ferry_fail(-EINVAL, "address '%s': bad host", spec);
	memcpy(host, start, (size_t)(end - start));
	host[end - start] = '\0';
	*port = colon + 1;
	return 0;
}

static void addr_format(struct net_addr *a)
{
	char host[INET6_ADDRSTRLEN] = "?";
	const struct sockaddr_in6 *in6 = (const void *)&a->ss;
	const struct sockaddr_in *in4 = (const void *)&a->ss;

	if (a->ss.ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(a->text, sizeof(a->text), "[%s]:%u", host,
			 ntohs(in6->sin6_port));
	} else if (a->ss.ss_family == AF_INET) {
		inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
		snprintf(a->text, sizeof(a->text), "%s:%u", host,
			 ntohs(in4->sin_port));
	}
}

static int gai_fail(const char *spec, int err)
{
	return ferry_fail(err == EAI_NONAME ? -ENOENT : -EINVAL,
			  "address '%s': %s", spec, gai_strerror(err));
}

/* The IPv6 wildcard before the IPv4 one: it is made dual-stack. */
static void v6_first(struct net_addr *a, int n)
{
	for (int i = 1; i < n; i++) {
		if (a[i].ss.ss_family == AF_INET6 &&
		    a[0].ss.ss_family != AF_INET6) {
			struct net_addr t = a[0];

			a[0] = a[i];
			a[i] = t;
		}
	}
}

/*
 * Up to MAX_CANDIDATES addresses for spec.  Listening on an empty host
 * takes the IPv6 wildcard first: it is made dual-stack.
 */
static int addr_lookup(const char *spec, const char *host, const char *port,
		       bool passive, struct net_addr *out)
{
	struct addrinfo hints = {
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0),
	}, *res, *ai;
	int n = 0, err = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);

	if (err)
		return gai_fail(spec, err);
	for (ai = res; ai && n < MAX_CANDIDATES; ai = ai->ai_next) {
		memcpy(&out[n].ss, ai->ai_addr, ai->ai_addrlen);
		out[n].len = ai->ai_addrlen;
		addr_format(&out[n++]);
	}
	freeaddrinfo(res);
	return n ? n : ferry_fail(-ENOENT, "address '%s': nothing", spec);
}

static int addr_resolve(const char *spec, bool passive, struct net_addr *out)
{
	const char *port = NULL;
	char host[256];
	int n;

	if (!strncmp(spec, "unix:", 5)) {
		n = addr_unix(spec + 5, out);
		return n ? n : 1;
	}
	if (split_host(spec, host, sizeof(host), &port, passive))
		return -EINVAL;
	n = addr_lookup(spec, host, port, passive, out);
	if (n > 0 && !host[0])
		v6_first(out, n);
	return n;
}

/* ---- socket set-up ---- */

static int set_int(int fd, int level, int name, int value)
{
	return sys_ret(setsockopt(fd, level, name, &value, sizeof(value)));
}

static int set_timeo(int fd, int name, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	return sys_ret(setsockopt(fd, SOL_SOCKET, name, &tv, sizeof(tv)));
}

static int tune_tcp(int fd)
{
	int ret = set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);

	if (!ret)
		ret = set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
	if (!ret)
		ret = set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, KEEPALIVE_IDLE_S);
	if (!ret)
		ret = set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL,
			      KEEPALIVE_INTVL_S);
	if (!ret)
		ret = set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, KEEPALIVE_CNT);
	return ret;
}

static int tune_bufs(int fd, int bytes)
{
	int ret = set_int(fd, SOL_SOCKET, SO_SNDBUF, bytes);

	return ret ? ret : set_int(fd, SOL_SOCKET, SO_RCVBUF, bytes);
}

/* Options for a connected socket about to become a channel. */
static int tune(int fd, const struct ferry_net_opts *o)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int ret = sys_ret(getsockname(fd, (struct sockaddr *)&ss, &len));

	if (!ret && ss.ss_family != AF_UNIX)
		ret = tune_tcp(fd);
	if (!ret && o->sock_buf)
		ret = tune_bufs(fd, o->sock_buf);
	if (!ret && o->io_timeout_ms)
		ret = set_timeo(fd, SO_RCVTIMEO, o->io_timeout_ms);
	if (!ret && o->io_timeout_ms)
		ret = set_timeo(fd, SO_SNDTIMEO, o->io_timeout_ms);
	if (!ret)
		ret = sys_ret(fcntl(fd, F_SETFL, 0));	/* blocking from now */
	return ret;
}

static struct ferry_net_opts opts_or_default(const struct ferry_net_opts *o)
{
	struct ferry_net_opts d = o ? *o : (struct ferry_net_opts){ 0 };

	if (d.connect_timeout_ms <= 0)
		d.connect_timeout_ms = CONNECT_TIMEOUT_MS;
	return d;
}

/* ---- deadlines ---- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds to the deadline for poll(): -1 for none, 0 when past. */
static int ms_left(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - now_ms();
	return left < 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
}

/* 0 when fd is ready for events, -ETIMEDOUT at the deadline, or -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int n;

	do {
		n = poll(&pfd, 1, ms_left(deadline));
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return n ? 0 : -ETIMEDOUT;
}

/* All of a small message on a non-blocking socket, before the deadline. */
static int xfer(int fd, void *buf, size_t len, bool out, int64_t deadline)
{
	size_t done = 0;
	int ret = 0;

	while (done < len && !ret) {
		ssize_t n = out ? send(fd, (char *)buf + done, len - done,
				       MSG_NOSIGNAL) :
				  recv(fd, (char *)buf + done, len - done, 0);

		if (n > 0)
			done += (size_t)n;
		else if (!n)
			ret = -ECONNRESET;
		else if (errno == EAGAIN)
			ret = wait_fd(fd, out ? POLLOUT : POLLIN, deadline);
		else if (errno != EINTR)
			ret = -errno;
	}
	return ret;
}

/* ---- connecting ---- */

static int connect_wait(int fd, int64_t deadline)
{
	socklen_t len = sizeof(int);
	int err = 0, ret = wait_fd(fd, POLLOUT, deadline);

	if (ret)
		return ret;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len))
		return -errno;
	return -err;
}

/*
 * A unix socket whose backlog is full refuses a non-blocking connect with
 * EAGAIN rather than queueing it; try again until the deadline.
 */
static int connect_fd(int fd, const struct net_addr *a, int64_t deadline)
{
	for (;;) {
		if (!connect(fd, (const struct sockaddr *)&a->ss, a->len))
			return 0;
		if (errno == EINPROGRESS)
			return connect_wait(fd, deadline);
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
		if (!ms_left(deadline))
			return -ETIMEDOUT;
		usleep(1000);
	}
}

static int connect_fail(const struct net_addr *a, int err, int timeout_ms)
{
	if (err == -ETIMEDOUT)
		return ferry_fail(err, "connect to %s: no answer within %d ms",
				  a->text, timeout_ms);
	if (err == -ECONNREFUSED)
		return ferry_fail(err, "connect to %s: refused (is a ferry "
				  "listener there?)", a->text);
	return ferry_fail(err, "connect to %s: %s", a->text, strerror(-err));
}

static int connect_one(const struct net_addr *a, int64_t deadline,
		       int timeout_ms)
{
	int fd = sys_ret(socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
				SOCK_CLOEXEC, 0));
	int ret;

	if (fd < 0)
		return ferry_fail(fd, "socket for %s: %s", a->text,
				  strerror(-fd));
	ret = connect_fd(fd, a, deadline);
	if (!ret)
		return fd;
	close(fd);
	return connect_fail(a, ret, timeout_ms);
}

/* The first candidate address that answers, for the first channel. */
static int connect_first(struct net_addr *cand, int nr, int64_t deadline,
			 int timeout_ms)
{
	int fd = -ENOENT;

	for (int i = 0; i < nr; i++) {
		fd = connect_one(&cand[i], deadline, timeout_ms);
		if (fd >= 0) {
			cand[0] = cand[i];
			break;
		}
	}
	return fd;
}

static struct hello make_hello(const struct ferry_session *s, unsigned int i)
{
	struct hello h = {
		.magic = HELLO_MAGIC,
		.version = FERRY_WIRE_VERSION,
		.role = i < s->nr_bulk ? FERRY_CHAN_BULK : FERRY_CHAN_URGENT,
		.index = (uint16_t)(i < s->nr_bulk ? i : 0),
		.nr_bulk = (uint16_t)s->nr_bulk,
		.session_id = s->id,
	};

	h.sum = hello_sum(&h);
	return h;
}

static int ack_check(const struct ack *a, const char *peer)
{
	if (memcmp(a->magic, ACK_MAGIC, 8) || a->sum != hello_sum(a))
		return ferry_fail(-EBADMSG, "%s answered the hello with "
				  "garbage: not a ferry listener?", peer);
	if (a->status == EPROTO)
		return ferry_fail(-EPROTO, "%s speaks ferry format version "
				  "%u; this ferry speaks %u", peer, a->version,
				  FERRY_WIRE_VERSION);
	if (a->status)
		return ferry_fail(-(int)a->status, "%s refused the channel: %s",
				  peer, strerror((int)a->status));
	return 0;
}

static int read_ack(int fd, const char *peer, int64_t deadline,
		    int timeout_ms)
{
	struct ack a;
	int ret = xfer(fd, &a, sizeof(a), false, deadline);

	if (ret == -ETIMEDOUT)
		return ferry_fail(ret, "%s did not answer the hello within %d "
				  "ms: not a ferry listener?", peer,
				  timeout_ms);
	if (ret)
		return ferry_fail(ret, "%s: reading the hello's answer: %s",
				  peer, strerror(-ret));
	return ack_check(&a, peer);
}

static int session_alloc(unsigned int nr_bulk, const char *peer,
			 struct ferry_session **out)
{
	struct ferry_session *s;

	if (!nr_bulk || nr_bulk > FERRY_NET_MAX_BULK)
		return ferry_fail(-EINVAL, "%u bulk channels (1 to %u)",
				  nr_bulk, FERRY_NET_MAX_BULK);
	s = calloc(1, sizeof(*s));
	if (!s)
		return ferry_fail(-ENOMEM, "session: out of memory");
	s->nr_bulk = nr_bulk;
	snprintf(s->peer, sizeof(s->peer), "%s", peer);
	*out = s;
	return 0;
}

static void close_fds(int *fds, unsigned int nr)
{
	for (unsigned int i = 0; i < nr; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* Channel i of a session: bulk 0..nr_bulk-1, then the urgent one. */
static struct ferry_chan **session_slot(struct ferry_session *s,
					unsigned int i)
{
	return i < s->nr_bulk ? &s->bulk[i] : &s->urgent;
}

/* "bulk 2 to 127.0.0.1:4000", "urgent from [::1]:50123" */
static void chan_name(char *name, const struct ferry_session *s,
		      unsigned int i, const char *dir)
{
	if (i < s->nr_bulk)
		snprintf(name, FERRY_CHAN_NAME_MAX, "bulk %u %s %s", i, dir,
			 s->peer);
	else
		snprintf(name, FERRY_CHAN_NAME_MAX, "urgent %s %s", dir,
			 s->peer);
}

/* Turn the handshaken descriptors into the session's channels. */
static int session_fill(struct ferry_session *s, int *fds,
			const struct ferry_net_opts *o, const char *dir)
{
	char name[FERRY_CHAN_NAME_MAX];
	int ret;

	for (unsigned int i = 0; i <= s->nr_bulk; i++) {
		chan_name(name, s, i, dir);
		ret = tune(fds[i], o);
		if (ret)
			return ferry_fail(ret, "%s: socket options: %s", name,
					  strerror(-ret));
		ret = chan_create(fds[i], i < s->nr_bulk ? FERRY_CHAN_BULK :
				  FERRY_CHAN_URGENT, i < s->nr_bulk ? i : 0,
				  name, o->io_timeout_ms, session_slot(s, i));
		if (ret)
			return ret;
		fds[i] = -1;
	}
	return 0;
}

static int session_id(uint64_t *id)
{
	do {
		if (getrandom(id, sizeof(*id), 0) != sizeof(*id))
			return ferry_fail(-errno, "getrandom: %s",
					  strerror(errno));
	} while (!*id);
	return 0;
}

/* Connect channel i (the first finds an address that answers), say hello. */
static int connect_hello(const struct ferry_session *s, unsigned int i,
			 struct net_addr *cand, int nr_cand, int64_t deadline,
			 int timeout_ms)
{
	struct hello h = make_hello(s, i);
	int fd = connect_first(cand, i ? 1 : nr_cand, deadline, timeout_ms);
	int ret;

	if (fd < 0)
		return fd;
	ret = xfer(fd, &h, sizeof(h), true, deadline);
	if (!ret)
		return fd;
	close(fd);
	return ferry_fail(ret, "%s: sending hello: %s", cand[0].text,
			  strerror(-ret));
}

/* Connect every channel and send its hello; then read every answer. */
static int connect_all(struct ferry_session *s, struct net_addr *cand,
		       int nr_cand, int *fds, const struct ferry_net_opts *o)
{
	int64_t deadline = now_ms() + o->connect_timeout_ms;
	int ret = 0;

	for (unsigned int i = 0; i <= s->nr_bulk && !ret; i++) {
		fds[i] = connect_hello(s, i, cand, nr_cand, deadline,
				       o->connect_timeout_ms);
		ret = fds[i] < 0 ? fds[i] : 0;
	}
	for (unsigned int i = 0; i <= s->nr_bulk && !ret; i++)
		ret = read_ack(fds[i], cand[0].text, deadline,
			       o->connect_timeout_ms);
	return ret;
}

/* Handshake every channel of s, then make them channels. */
static int connect_session(struct ferry_session *s, struct net_addr *cand,
			   int nr_cand, const struct ferry_net_opts *o)
{
	int fds[MAX_CHANS], ret;

	memset(fds, -1, sizeof(fds));
	ret = session_id(&s->id);
	if (!ret)
		ret = connect_all(s, cand, nr_cand, fds, o);
	if (!ret)
		snprintf(s->peer, sizeof(s->peer), "%s", cand[0].text);
	if (!ret)
		ret = session_fill(s, fds, o, "to");
	close_fds(fds, MAX_CHANS);
	return ret;
}

int ferry_net_connect(const char *addr, unsigned int nr_bulk,
		      const struct ferry_net_opts *opts,
		      struct ferry_session **out)
{
	struct ferry_net_opts o = opts_or_default(opts);
	struct net_addr cand[MAX_CANDIDATES];
	struct ferry_session *s = NULL;
	int nr_cand, ret;

	nr_cand = addr_resolve(addr, false, cand);
	if (nr_cand < 0)
		return nr_cand;
	ret = session_alloc(nr_bulk, cand[0].text, &s);
	if (!ret)
		ret = connect_session(s, cand, nr_cand, &o);
	if (!ret)
		*out = s;
	else
		ferry_net_session_close(s);
	return ret;
}

void ferry_net_session_shutdown(struct ferry_session *s)
{
	for (unsigned int i = 0; i <= s->nr_bulk; i++)
		if (*session_slot(s, i))
			ferry_chan_shutdown(*session_slot(s, i));
}

void ferry_net_session_close(struct ferry_session *s)
{
	if (!s)
		return;
	for (unsigned int i = 0; i <= s->nr_bulk; i++)
		ferry_chan_close(*session_slot(s, i));
	free(s);
}

/* ---- listening ---- */

struct pending {
	int fd;
	size_t got;
	int64_t deadline;
	struct hello hello;
	char peer[FERRY_NET_ADDR_MAX];
};

/* The channels of one session seen so far; fds[nr_bulk] is urgent. */
struct group {
	uint64_t id;
	unsigned int nr_bulk;
	unsigned int have;
	int64_t deadline;	/* complete by then, or be dropped */
	int fds[MAX_CHANS];
	char peer[FERRY_NET_ADDR_MAX];
};

struct ferry_listener {
	int fd;
	struct ferry_net_opts opts;
	struct net_addr addr;
	char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct pending pending[MAX_PENDING];
	unsigned int nr_pending;
	struct group groups[MAX_GROUPS];
	unsigned int nr_groups;
	unsigned int nr_refused;	/* during the current accept */
	char refused[256];		/* why the last one was refused */
};

/*
 * A unix socket path in use: if nothing answers there, it is a socket a
 * dead listener left behind; remove it and bind again.
 */
static int unix_stale(const struct net_addr *a)
{
	const struct sockaddr_un *un = (const void *)&a->ss;
	struct stat st;
	int fd, ret;

	if (!un->sun_path[0] || stat(un->sun_path, &st) ||
	    !S_ISSOCK(st.st_mode))
		return -EADDRINUSE;
	fd = sys_ret(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
	if (fd < 0)
		return fd;
	ret = connect(fd, (const struct sockaddr *)&a->ss, a->len) ?
	      -errno : 0;
	close(fd);
	if (ret != -ECONNREFUSED)
		return -EADDRINUSE;
	return sys_ret(unlink(un->sun_path));
}

static int bind_addr(int fd, const struct net_addr *a)
{
	int ret = sys_ret(bind(fd, (const struct sockaddr *)&a->ss, a->len));

	if (ret == -EADDRINUSE && a->ss.ss_family == AF_UNIX &&
	    !unix_stale(a))
		ret = sys_ret(bind(fd, (const struct sockaddr *)&a->ss,
				   a->len));
	return ret;
}

static int listen_socket(const struct net_addr *a)
{
	int fd = sys_ret(socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
				SOCK_CLOEXEC, 0));
	int ret = 0;

	if (fd < 0)
		return fd;
	if (a->ss.ss_family != AF_UNIX)
		ret = set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
	if (!ret && a->ss.ss_family == AF_INET6)
		ret = set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0);
	if (!ret)
		ret = bind_addr(fd, a);
	if (!ret)
		ret = sys_ret(listen(fd, 64));
	if (!ret)
		return fd;
	close(fd);
	return ret;
}

/* The bound address, for port 0. */
static void listener_name(struct ferry_listener *l)
{
	socklen_t len = sizeof(l->addr.ss);
	const struct sockaddr_un *un = (const void *)&l->addr.ss;

	if (l->addr.ss.ss_family == AF_UNIX) {
		if (un->sun_path[0])
			snprintf(l->unix_path, sizeof(l->unix_path), "%s",
				 un->sun_path);
		return;
	}
	if (!getsockname(l->fd, (struct sockaddr *)&l->addr.ss, &len))
		addr_format(&l->addr);
}

/* The first candidate address that can be listened on. */
static int listen_first(struct ferry_listener *l, struct net_addr *cand,
			int nr)
{
	l->fd = -ENOENT;
	for (int i = 0; i < nr && l->fd < 0; i++) {
		l->addr = cand[i];
		l->fd = listen_socket(&l->addr);
	}
	if (l->fd >= 0)
		return 0;
	return ferry_fail(l->fd, "listen on %s: %s", l->addr.text,
			  strerror(-l->fd));
}

int ferry_net_listener_open(const char *addr,
			    const struct ferry_net_opts *opts,
			    struct ferry_listener **out)
{
	struct net_addr cand[MAX_CANDIDATES];
	struct ferry_listener *l;
	int ret = addr_resolve(addr, true, cand);

	if (ret < 0)
		return ret;
	l = calloc(1, sizeof(*l));
	if (!l)
		return ferry_fail(-ENOMEM, "listener: out of memory");
	l->opts = opts_or_default(opts);
	ret = listen_first(l, cand, ret);
	if (ret) {
		free(l);
		return ret;
	}
	listener_name(l);
	*out = l;
	return 0;
}

const char *ferry_net_listener_addr(const struct ferry_listener *l)
{
	return l->addr.text;
}

int ferry_net_listener_port(const struct ferry_listener *l)
{
	const struct sockaddr_in *in4 = (const void *)&l->addr.ss;
	const struct sockaddr_in6 *in6 = (const void *)&l->addr.ss;

	if (l->addr.ss.ss_family == AF_INET)
		return ntohs(in4->sin_port);
	if (l->addr.ss.ss_family == AF_INET6)
		return ntohs(in6->sin6_port);
	return 0;
}

static void group_close(struct group *g)
{
	close_fds(g->fds, MAX_CHANS);
}

void ferry_net_listener_close(struct ferry_listener *l)
{
	if (!l)
		return;
	for (unsigned int i = 0; i < l->nr_pending; i++)
		close(l->pending[i].fd);
	for (unsigned int i = 0; i < l->nr_groups; i++)
		group_close(&l->groups[i]);
	close(l->fd);
	if (l->unix_path[0])
		unlink(l->unix_path);
	free(l);
}

static void peer_name(int fd, const struct ferry_listener *l, char *buf,
		      size_t len)
{
	struct net_addr a = { .len = sizeof(a.ss) };

	if (l->addr.ss.ss_family == AF_UNIX ||
	    getpeername(fd, (struct sockaddr *)&a.ss, &a.len)) {
		snprintf(buf, len, "%s", l->addr.text);
		return;
	}
	addr_format(&a);
	snprintf(buf, len, "%s", a.text);
}

static void pending_drop(struct ferry_listener *l, unsigned int i,
			 bool close_fd)
{
	if (close_fd)
		close(l->pending[i].fd);
	l->pending[i] = l->pending[--l->nr_pending];
}

__attribute__((format(printf, 3, 4)))
static void refuse(struct ferry_listener *l, unsigned int i,
		   const char *fmt, ...)
{
	va_list ap;
	int off;

	off = snprintf(l->refused, sizeof(l->refused), "%s ",
		       l->pending[i].peer);
	va_start(ap, fmt);
	vsnprintf(l->refused + off, sizeof(l->refused) - (size_t)off, fmt, ap);
	va_end(ap);
	l->nr_refused++;
	pending_drop(l, i, true);
}

static void accept_new(struct ferry_listener *l)
{
	int fd;

	while ((fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK |
			     SOCK_CLOEXEC)) >= 0) {
		struct pending *p = &l->pending[l->nr_pending];

		if (l->nr_pending == MAX_PENDING) {
			close(fd);	/* a flood; real peers retry */
			continue;
		}
		*p = (struct pending){
			.fd = fd,
			.deadline = now_ms() + l->opts.connect_timeout_ms,
		};
		peer_name(fd, l, p->peer, sizeof(p->peer));
		l->nr_pending++;
	}
}

/* Best effort: the peer may already be gone, and then nobody is told. */
static void send_ack(int fd, uint64_t id, int status)
{
	struct ack a = {
		.magic = ACK_MAGIC,
		.version = FERRY_WIRE_VERSION,
		.status = (uint32_t)status,
		.session_id = id,
	};

	a.sum = hello_sum(&a);
	if (send(fd, &a, sizeof(a), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		return;
}

/* Why a hello is no good, or NULL. */
static const char *hello_bad(const struct hello *h)
{
	if (memcmp(h->magic, HELLO_MAGIC, 8))
		return "sent no ferry hello (bad magic)";
	if (h->sum != hello_sum(h))
		return "sent a hello with a bad checksum";
	if (h->version != FERRY_WIRE_VERSION)
		return NULL;	/* reported on its own */
	if (!h->nr_bulk || h->nr_bulk > FERRY_NET_MAX_BULK || h->reserved ||
	    !h->session_id)
		return "sent a hello with bad counts";
	if ((h->role == FERRY_CHAN_BULK && h->index < h->nr_bulk) ||
	    (h->role == FERRY_CHAN_URGENT && !h->index))
		return NULL;
	return "sent a hello with a bad role or index";
}

static struct group *group_find(struct ferry_listener *l,
				const struct hello *h)
{
	struct group *g;

	for (unsigned int i = 0; i < l->nr_groups; i++)
		if (l->groups[i].id == h->session_id)
			return &l->groups[i];
	if (l->nr_groups == MAX_GROUPS)
		return NULL;
	g = &l->groups[l->nr_groups++];
	*g = (struct group){
		.id = h->session_id,
		.nr_bulk = h->nr_bulk,
		.deadline = now_ms() + l->opts.connect_timeout_ms,
	};
	memset(g->fds, -1, sizeof(g->fds));
	return g;
}

/* Connection i's slot in group g, or -1 after refusing it. */
static int group_slot(struct ferry_listener *l, unsigned int i,
		      const struct group *g)
{
	const struct hello *h = &l->pending[i].hello;
	int fd = l->pending[i].fd;
	unsigned int slot;

	if (!g || g->nr_bulk != h->nr_bulk) {
		send_ack(fd, h->session_id, g ? EBADMSG : EBUSY);
		refuse(l, i, "%s", g ? "disagrees on the bulk channel count" :
		       "would start one session too many");
		return -1;
	}
	slot = h->role == FERRY_CHAN_URGENT ? g->nr_bulk : h->index;
	if (g->fds[slot] < 0)
		return (int)slot;
	send_ack(fd, h->session_id, EEXIST);
	refuse(l, i, "opened channel %u of its session twice", slot);
	return -1;
}

/* Put a good hello's channel in its session's group. */
static void group_add(struct ferry_listener *l, unsigned int i)
{
	struct pending *p = &l->pending[i];
	const struct hello *h = &p->hello;
	struct group *g = group_find(l, h);
	int slot = group_slot(l, i, g);

	if (slot < 0)
		return;
	send_ack(p->fd, h->session_id, 0);
	g->fds[slot] = p->fd;
	g->have++;
	snprintf(g->peer, sizeof(g->peer), "%s", p->peer);
	pending_drop(l, i, false);
}

static int hello_done(struct ferry_listener *l, unsigned int i)
{
	struct pending *p = &l->pending[i];
	const char *why = hello_bad(&p->hello);
	unsigned int version = p->hello.version;

	if (why) {
		send_ack(p->fd, p->hello.session_id, EBADMSG);
		refuse(l, i, "%s", why);
		return 0;
	}
	if (version == FERRY_WIRE_VERSION) {
		group_add(l, i);
		return 0;
	}
	send_ack(p->fd, p->hello.session_id, EPROTO);
	refuse(l, i, "speaks format version %u", version);
	return ferry_fail(-EPROTO, "%s; this ferry speaks version %u",
			  l->refused, FERRY_WIRE_VERSION);
}

static void group_drop(struct ferry_listener *l, unsigned int i)
{
	struct group *g = &l->groups[i];

	snprintf(l->refused, sizeof(l->refused), "%s opened %u of the %u "
		 "channels of its session within %d ms", g->peer, g->have,
		 g->nr_bulk + 1, l->opts.connect_timeout_ms);
	l->nr_refused++;
	group_close(g);
	*g = l->groups[--l->nr_groups];
}

/* Read what has come of connection i's hello. */
static int pending_read(struct ferry_listener *l, unsigned int i)
{
	struct pending *p = &l->pending[i];
	ssize_t n = recv(p->fd, (char *)&p->hello + p->got,
			 sizeof(p->hello) - p->got, 0);

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0) {
		refuse(l, i, "closed before finishing its hello");
		return 0;
	}
	p->got += (size_t)n;
	return p->got == sizeof(p->hello) ? hello_done(l, i) : 0;
}

/*
 * Connections that said no hello in time, and sessions whose peer never
 * opened all their channels (it died halfway): their slots are wanted.
 */
static void pending_expire(struct ferry_listener *l)
{
	int64_t now = now_ms();

	for (unsigned int i = l->nr_pending; i-- > 0;)
		if (now >= l->pending[i].deadline)
			refuse(l, i, "sent no hello within %d ms",
			       l->opts.connect_timeout_ms);
	for (unsigned int i = l->nr_groups; i-- > 0;)
		if (now >= l->groups[i].deadline)
			group_drop(l, i);
}

/* Poll until the deadline, or the first connection or session to expire. */
static int poll_wait(const struct ferry_listener *l, int64_t deadline)
{
	int64_t soonest = deadline;

	for (unsigned int i = 0; i < l->nr_pending; i++)
		if (soonest < 0 || l->pending[i].deadline < soonest)
			soonest = l->pending[i].deadline;
	for (unsigned int i = 0; i < l->nr_groups; i++)
		if (soonest < 0 || l->groups[i].deadline < soonest)
			soonest = l->groups[i].deadline;
	return ms_left(soonest);
}

/* One round: wait, take new connections, read hellos, drop the slow. */
static int accept_round(struct ferry_listener *l, int64_t deadline)
{
	struct pollfd pfd[1 + MAX_PENDING] = { { l->fd, POLLIN, 0 } };
	unsigned int nr = l->nr_pending;
	int ret = 0;

	for (unsigned int i = 0; i < nr; i++)
		pfd[1 + i] = (struct pollfd){ l->pending[i].fd, POLLIN, 0 };
	if (poll(pfd, 1 + nr, poll_wait(l, deadline)) < 0 && errno != EINTR)
		return ferry_fail(-errno, "poll: %s", strerror(errno));
	/* Backwards: dropping entry i moves the last one into its place. */
	for (unsigned int i = nr; i-- > 0 && !ret;)
		if (pfd[1 + i].revents)
			ret = pending_read(l, i);
	if (!ret && pfd[0].revents)
		accept_new(l);
	pending_expire(l);
	return ret;
}

static struct group *group_complete(struct ferry_listener *l)
{
	for (unsigned int i = 0; i < l->nr_groups; i++)
		if (l->groups[i].have == l->groups[i].nr_bulk + 1)
			return &l->groups[i];
	return NULL;
}

static int session_from_group(struct ferry_listener *l, struct group *g,
			      struct ferry_session **out)
{
	struct ferry_session *s = NULL;
	int ret = session_alloc(g->nr_bulk, g->peer, &s);

	if (!ret) {
		s->id = g->id;
		ret = session_fill(s, g->fds, &l->opts, "from");
	}
	group_close(g);
	*g = l->groups[--l->nr_groups];
	if (!ret)
		*out = s;
	else
		ferry_net_session_close(s);
	return ret;
}

static int accept_timeout(const struct ferry_listener *l, int timeout_ms)
{
	if (!l->nr_refused)
		return ferry_fail(-ETIMEDOUT, "no session on %s within %d ms",
				  l->addr.text, timeout_ms);
	return ferry_fail(-ETIMEDOUT, "no session on %s within %d ms; "
			  "refused %u connection(s), the last: %s",
			  l->addr.text, timeout_ms, l->nr_refused, l->refused);
}

int ferry_net_accept(struct ferry_listener *l, int timeout_ms,
		     struct ferry_session **out)
{
	int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	struct group *g;
	int ret;

	l->nr_refused = 0;
	for (;;) {
		g = group_complete(l);
		if (g)
			return session_from_group(l, g, out);
		if (deadline >= 0 && !ms_left(deadline))
			return accept_timeout(l, timeout_ms);
		ret = accept_round(l, deadline);
		if (ret)
			return ret;
	}
}
