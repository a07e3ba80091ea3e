// SPDX-License-Identifier: MIT
/*
 * faultproxy: a TCP proxy that reads ferry's protocol as it forwards it
 * and breaks it where a test says (faultproxy.h).  It uses sockets and
 * the byte layout of docs/wire.md only, so a benchmark can build it too.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "faultproxy.h"

#define HELLO_SIZE	32
#define REC_HDR		32
#define REC_MAX		((4U << 20) + (1U << 20) + 4096)
#define MAX_CONNS	128

struct fp_conn;

struct fp_pump {
	struct fp_conn *c;
	bool to_dest;
	int from, to;
	pthread_t thread;
	bool started;
	unsigned int seen[256];		/* records of each type so far */
	unsigned int total;		/* and of all types */
	uint8_t *buf;
};

struct fp_conn {
	struct faultproxy *fp;
	int src_fd, dst_fd;
	unsigned int session;		/* 1, 2, ... as they opened */
	int role, index;
	struct fp_pump up, down;	/* to_dest, and back */
};

struct faultproxy {
	int listen_fd;
	char addr[64];
	struct sockaddr_in target;
	pthread_t acceptor;
	int stop_pipe[2];

	pthread_mutex_t lock;		/* everything below */
	pthread_cond_t cond;
	struct fp_rule rules[FP_MAX_RULES];
	bool fired[FP_MAX_RULES];
	unsigned int nr_rules, nr_fired;
	struct fp_conn *conns[MAX_CONNS];
	unsigned int nr_conns;
	uint64_t session_ids[MAX_CONNS];
	unsigned int nr_sessions;
	/* STALL: per session, until when (ns; UINT64_MAX: released by
	 * hand); 0 none */
	uint64_t stalled_until[MAX_CONNS + 1];
	unsigned int delay_ms[MAX_CONNS + 1];
	bool stopping;
};

static uint64_t fp_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int parse_addr(const char *text, struct sockaddr_in *sa)
{
	char host[64];
	const char *colon = strrchr(text, ':');

	if (!colon || (size_t)(colon - text) >= sizeof(host))
		return -EINVAL;
	memcpy(host, text, (size_t)(colon - text));
	host[colon - text] = '\0';
	*sa = (struct sockaddr_in){ .sin_family = AF_INET,
		.sin_port = htons((uint16_t)atoi(colon + 1)) };
	return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -EINVAL;
}

/* ---- moving bytes ------------------------------------------------------- */

static int read_all(int fd, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = recv(fd, (char *)buf + done, len - done, 0);

		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			return -1;
		}
		done += (size_t)n;
	}
	return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = send(fd, (const char *)buf + done, len - done,
				 MSG_NOSIGNAL);

		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			return -1;
		}
		done += (size_t)n;
	}
	return 0;
}

/* Close both ends of every connection of a session (lock held). */
static void cut_session(struct faultproxy *fp, unsigned int session)
{
	for (unsigned int i = 0; i < fp->nr_conns; i++) {
		struct fp_conn *c = fp->conns[i];

		if (session && c->session != session)
			continue;
		shutdown(c->src_fd, SHUT_RDWR);
		shutdown(c->dst_fd, SHUT_RDWR);
	}
}

/* Wait while the session is stalled; false when the proxy stops. */
static bool wait_stall(struct fp_conn *c)
{
	struct faultproxy *fp = c->fp;
	bool go;

	pthread_mutex_lock(&fp->lock);
	for (;;) {
		uint64_t until = fp->stalled_until[c->session];
		uint64_t now = fp_now_ns();
		struct timespec ts;

		if (fp->stopping || !until || (until != UINT64_MAX &&
					       now >= until))
			break;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 10 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&fp->cond, &fp->lock, &ts);
	}
	go = !fp->stopping;
	pthread_mutex_unlock(&fp->lock);
	return go;
}

/* ---- rules -------------------------------------------------------------- */

static bool matches(const struct fp_rule *r, const struct fp_pump *p,
		    unsigned int type)
{
	const struct fp_conn *c = p->c;

	if (r->session && r->session != c->session)
		return false;
	if ((r->role && r->role != c->role) ||
	    (r->index >= 0 && r->index != c->index) ||
	    r->to_dest != p->to_dest)
		return false;
	if (r->after && !p->seen[r->after])
		return false;
	if (r->type && r->type != type)
		return false;
	return (r->type ? p->seen[type] : p->total) == r->nth;
}

static void flip(uint8_t *rec, uint32_t meta_len, uint32_t data_len,
		 const struct fp_rule *r)
{
	uint32_t base = 0, size = REC_HDR;

	if (r->part == FP_META && meta_len)
		base = REC_HDR, size = meta_len;
	else if (r->part == FP_DATA && data_len)
		base = REC_HDR + meta_len, size = data_len;
	rec[base + r->offset % size] ^= r->mask ? r->mask : 0x01;
}

/*
 * A record is about to go on: the rules that fire on it.  Returns false
 * when it must not go (the session was cut).
 */
static bool apply_rules(struct fp_pump *p, uint8_t *rec, uint32_t meta_len,
			uint32_t data_len)
{
	struct faultproxy *fp = p->c->fp;
	unsigned int type = rec[2], session = p->c->session;
	bool go = true;

	pthread_mutex_lock(&fp->lock);
	for (unsigned int i = 0; i < fp->nr_rules; i++) {
		const struct fp_rule *r = &fp->rules[i];

		if (fp->fired[i] || !matches(r, p, type))
			continue;
		fp->fired[i] = true;
		fp->nr_fired++;
		switch (r->action) {
		case FP_CUT:
			cut_session(fp, session);
			go = false;
			break;
		case FP_STALL:
			fp->stalled_until[session] = r->ms ? fp_now_ns() +
				(uint64_t)r->ms * 1000000 : UINT64_MAX;
			break;
		case FP_DELAY:
			fp->delay_ms[session] = r->ms;
			break;
		case FP_FLIP:
			flip(rec, meta_len, data_len, r);
			break;
		}
	}
	p->seen[type]++;
	p->total++;
	pthread_cond_broadcast(&fp->cond);
	pthread_mutex_unlock(&fp->lock);
	return go;
}

/* ---- the pumps ---------------------------------------------------------- */

/* One record from `from` into buf: its length, or -1. */
static long read_record(struct fp_pump *p, uint32_t *meta, uint32_t *data)
{
	if (read_all(p->from, p->buf, REC_HDR))
		return -1;
	memcpy(meta, p->buf + 8, 4);
	memcpy(data, p->buf + 12, 4);
	if ((uint64_t)*meta + *data + REC_HDR > REC_MAX)
		return -1;	/* garbage: let the peer say so */
	if (read_all(p->from, p->buf + REC_HDR, (size_t)*meta + *data))
		return -1;
	return (long)(REC_HDR + *meta + *data);
}

static void forward(struct fp_pump *p)
{
	struct faultproxy *fp = p->c->fp;

	for (;;) {
		uint32_t meta, data;
		long len = read_record(p, &meta, &data);
		unsigned int delay;

		if (len < 0)
			return;
		if (!apply_rules(p, p->buf, meta, data) || !wait_stall(p->c))
			return;
		pthread_mutex_lock(&fp->lock);
		delay = fp->delay_ms[p->c->session];
		pthread_mutex_unlock(&fp->lock);
		if (delay)
			usleep(delay * 1000);
		if (write_all(p->to, p->buf, (size_t)len))
			return;
	}
}

static void *pump_main(void *arg)
{
	struct fp_pump *p = arg;

	forward(p);
	/* One way ended: the other side hears it, the other way goes on. */
	shutdown(p->to, SHUT_WR);
	shutdown(p->from, SHUT_RD);
	return NULL;
}

/* The hello names the channel and its session (docs/wire.md). */
static int take_hello(struct fp_conn *c, uint8_t *hello)
{
	struct faultproxy *fp = c->fp;
	uint64_t id;
	uint16_t index;
	unsigned int s;

	if (read_all(c->src_fd, hello, HELLO_SIZE))
		return -1;
	memcpy(&index, hello + 12, 2);
	memcpy(&id, hello + 16, 8);
	c->role = hello[10];
	c->index = index;
	pthread_mutex_lock(&fp->lock);
	for (s = 0; s < fp->nr_sessions && fp->session_ids[s] != id; s++)
		;
	if (s == fp->nr_sessions && s < MAX_CONNS)
		fp->session_ids[fp->nr_sessions++] = id;
	c->session = s + 1;
	pthread_mutex_unlock(&fp->lock);
	return 0;
}

static int fp_dial(struct faultproxy *fp)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&fp->target, sizeof(fp->target))) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * The up pump's thread: the hello one way, its answer the other (which
 * may wait for the destination to accept), then the down pump starts and
 * this one forwards.
 */
static void *conn_main(void *arg)
{
	struct fp_conn *c = arg;
	struct faultproxy *fp = c->fp;
	uint8_t hello[HELLO_SIZE], ack[HELLO_SIZE];

	if (take_hello(c, hello) || write_all(c->dst_fd, hello, HELLO_SIZE) ||
	    read_all(c->dst_fd, ack, HELLO_SIZE) ||
	    write_all(c->src_fd, ack, HELLO_SIZE)) {
		shutdown(c->src_fd, SHUT_RDWR);
		shutdown(c->dst_fd, SHUT_RDWR);
		return NULL;
	}
	pthread_mutex_lock(&fp->lock);
	if (!fp->stopping)
		c->down.started = !pthread_create(&c->down.thread, NULL,
						  pump_main, &c->down);
	pthread_mutex_unlock(&fp->lock);
	return pump_main(&c->up);
}

static void start_conn(struct faultproxy *fp, int src_fd)
{
	struct fp_conn *c = calloc(1, sizeof(*c));
	int one = 1;

	if (c) {
		c->up.buf = malloc(REC_MAX);
		c->down.buf = malloc(REC_MAX);
	}
	if (!c || !c->up.buf || !c->down.buf || (c->dst_fd = fp_dial(fp)) < 0) {
		close(src_fd);
		if (c) {
			free(c->up.buf);
			free(c->down.buf);
		}
		free(c);
		return;
	}
	setsockopt(src_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fp = fp;
	c->src_fd = src_fd;
	c->up = (struct fp_pump){ c, true, src_fd, c->dst_fd,
				  .buf = c->up.buf };
	c->down = (struct fp_pump){ c, false, c->dst_fd, src_fd,
				    .buf = c->down.buf };
	pthread_mutex_lock(&fp->lock);
	if (fp->nr_conns < MAX_CONNS && !fp->stopping) {
		fp->conns[fp->nr_conns++] = c;
		c->up.started = !pthread_create(&c->up.thread, NULL, conn_main,
						c);
	} else {
		shutdown(src_fd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&fp->lock);
}

static void *accept_main(void *arg)
{
	struct faultproxy *fp = arg;
	struct pollfd pfd[2] = {
		{ .fd = fp->listen_fd, .events = POLLIN },
		{ .fd = fp->stop_pipe[0], .events = POLLIN },
	};

	while (poll(pfd, 2, -1) >= 0 && !pfd[1].revents) {
		int fd = accept4(fp->listen_fd, NULL, NULL, SOCK_CLOEXEC);

		if (fd >= 0)
			start_conn(fp, fd);
	}
	return NULL;
}

/* ---- the API ------------------------------------------------------------ */

int faultproxy_start(const char *listen_addr, const char *target,
		     struct faultproxy **out)
{
	struct faultproxy *fp = calloc(1, sizeof(*fp));
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int one = 1;

	if (!fp)
		return -ENOMEM;
	if (parse_addr(listen_addr, &sa) || parse_addr(target, &fp->target)) {
		free(fp);
		return -EINVAL;
	}
	pthread_mutex_init(&fp->lock, NULL);
	pthread_cond_init(&fp->cond, NULL);
	fp->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fp->listen_fd < 0 || pipe(fp->stop_pipe))
		goto err;
	setsockopt(fp->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fp->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(fp->listen_fd, 64) ||
	    getsockname(fp->listen_fd, (struct sockaddr *)&sa, &len))
		goto err;
	snprintf(fp->addr, sizeof(fp->addr), "%s:%u", inet_ntoa(sa.sin_addr),
		 ntohs(sa.sin_port));
	if (pthread_create(&fp->acceptor, NULL, accept_main, fp))
		goto err;
	*out = fp;
	return 0;
err:
	if (fp->listen_fd >= 0)
		close(fp->listen_fd);
	free(fp);
	return -errno ? -errno : -EIO;
}

const char *faultproxy_addr(const struct faultproxy *fp)
{
	return fp->addr;
}

int faultproxy_add(struct faultproxy *fp, const struct fp_rule *rule)
{
	int ret = 0;

	pthread_mutex_lock(&fp->lock);
	if (fp->nr_rules == FP_MAX_RULES)
		ret = -ENOSPC;
	else
		fp->rules[fp->nr_rules++] = *rule;
	pthread_mutex_unlock(&fp->lock);
	return ret;
}

unsigned int faultproxy_fired(struct faultproxy *fp)
{
	unsigned int n;

	pthread_mutex_lock(&fp->lock);
	n = fp->nr_fired;
	pthread_mutex_unlock(&fp->lock);
	return n;
}

void faultproxy_release(struct faultproxy *fp)
{
	pthread_mutex_lock(&fp->lock);
	for (unsigned int i = 0; i <= MAX_CONNS; i++)
		fp->stalled_until[i] = 0;
	pthread_cond_broadcast(&fp->cond);
	pthread_mutex_unlock(&fp->lock);
}

void faultproxy_cut_all(struct faultproxy *fp)
{
	pthread_mutex_lock(&fp->lock);
	cut_session(fp, 0);
	pthread_mutex_unlock(&fp->lock);
}

void faultproxy_stop(struct faultproxy *fp)
{
	if (!fp)
		return;
	if (write(fp->stop_pipe[1], "x", 1) != 1)
		return;
	pthread_join(fp->acceptor, NULL);
	pthread_mutex_lock(&fp->lock);
	fp->stopping = true;
	cut_session(fp, 0);
	pthread_cond_broadcast(&fp->cond);
	pthread_mutex_unlock(&fp->lock);
	for (unsigned int i = 0; i < fp->nr_conns; i++) {
		struct fp_conn *c = fp->conns[i];

		if (c->up.started)
			pthread_join(c->up.thread, NULL);
		if (c->down.started)
			pthread_join(c->down.thread, NULL);
		close(c->src_fd);
		close(c->dst_fd);
		free(c->up.buf);
		free(c->down.buf);
		free(c);
	}
	close(fp->listen_fd);
	close(fp->stop_pipe[0]);
	close(fp->stop_pipe[1]);
	pthread_mutex_destroy(&fp->lock);
	pthread_cond_destroy(&fp->cond);
	free(fp);
}
