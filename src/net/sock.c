// SPDX-License-Identifier: MIT
/*
 * net sockets: the options a channel's socket gets, and the handshake's
 * small transfers on non-blocking sockets under one deadline, so a silent
 * peer costs a timeout, never a hang.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include "base/sys.h"
#include "net/sock.h"

#define CONNECT_TIMEOUT_MS	5000

/*
 * Keepalive finds a peer that vanished without a FIN or RST (a dead host)
 * within about 20 s, even on a channel that is idle by design (the urgent
 * channel while no page faults).
 */
#define KEEPALIVE_IDLE_S	10
#define KEEPALIVE_INTVL_S	2
#define KEEPALIVE_CNT		5

/* ---- socket set-up ---- */

int net_set_int(int fd, int level, int name, int value)
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
	int ret = net_set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);

	if (!ret)
		ret = net_set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
	if (!ret)
		ret = net_set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE,
				  KEEPALIVE_IDLE_S);
	if (!ret)
		ret = net_set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL,
				  KEEPALIVE_INTVL_S);
	if (!ret)
		ret = net_set_int(fd, IPPROTO_TCP, TCP_KEEPCNT,
				  KEEPALIVE_CNT);
	return ret;
}

/*
 * Socket buffers are the kernel's unless the caller sets sock_buf: TCP
 * autotuning grows them to net.ipv4.tcp_wmem's maximum (and setting
 * SO_SNDBUF would switch it off), and on unix sockets 200 KiB, 1 MiB and
 * 4 MiB measured the same for 1 MiB records here (the smaller ones keep
 * the data in cache between the two copies).
 */
static int tune_bufs(int fd, int bytes)
{
	int ret = net_set_int(fd, SOL_SOCKET, SO_SNDBUF, bytes);

	return ret ? ret : net_set_int(fd, SOL_SOCKET, SO_RCVBUF, bytes);
}

int net_sock_tune(int fd, const struct ferry_net_opts *o)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int ret = sys_ret(getsockname(fd, (struct sockaddr *)&ss, &len));

	if (!ret && (ss.ss_family == AF_INET || ss.ss_family == AF_INET6))
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

struct ferry_net_opts net_opts_or_default(const struct ferry_net_opts *o)
{
	struct ferry_net_opts d = o ? *o : (struct ferry_net_opts){ 0 };

	if (d.connect_timeout_ms <= 0)
		d.connect_timeout_ms = CONNECT_TIMEOUT_MS;
	return d;
}

void net_close_fds(const int *fds, unsigned int nr)
{
	for (unsigned int i = 0; i < nr; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* ---- deadlines ---- */

int64_t net_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int net_ms_left(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - net_now_ms();
	return left < 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
}

int net_wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int n;

	do {
		n = poll(&pfd, 1, net_ms_left(deadline));
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return n ? 0 : -ETIMEDOUT;
}

int net_xfer(int fd, void *buf, size_t len, bool out, int64_t deadline)
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
			ret = net_wait_fd(fd, out ? POLLOUT : POLLIN, deadline);
		else if (errno != EINTR)
			ret = -errno;
	}
	return ret;
}
