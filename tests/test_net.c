// SPDX-License-Identifier: MIT
/*
 * Channels and sessions on this machine: TCP over 127.0.0.1 and ::1, unix
 * sockets.  Whole sessions carrying records both ways, peers that vanish
 * mid-record, strangers, version mismatches, nobody listening.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "ferry/net.h"
#include "ferry/wire.h"
#include "migpair.h"
#include "test.h"
#include "tlskeys.h"

#define PAGE		4096
#define NR_PAGES	8192		/* 32 MiB of "guest memory" */
#define BATCH		64
#define NR_REQUESTS	32

/* ---- both ends of a session in one process ---- */

struct connector {
	pthread_t thread;
	const char *addr;
	unsigned int nr_bulk;
	struct ferry_net_opts opts;
	struct ferry_session *session;
	int ret;
	char why[512];
};

static void *connector_main(void *arg)
{
	struct connector *c = arg;

	c->ret = ferry_net_connect(c->addr, c->nr_bulk, &c->opts, &c->session);
	snprintf(c->why, sizeof(c->why), "%s", ferry_error_msg());
	return NULL;
}

/* Connect from a thread while this one accepts. */
static enum test_result pair_open_with(struct test_ctx *ctx,
				       struct ferry_listener *l,
				       unsigned int nr_bulk,
				       const struct ferry_net_opts *o,
				       struct ferry_session **client,
				       struct ferry_session **server)
{
	struct connector c = { .addr = ferry_net_listener_addr(l),
			       .nr_bulk = nr_bulk, .opts = *o };

	CHECK(ctx, !pthread_create(&c.thread, NULL, connector_main, &c),
	      "thread");
	CHECK_OK(ctx, ferry_net_accept(l, 5000, server));
	pthread_join(c.thread, NULL);
	CHECK(ctx, !c.ret, "connect: %s", c.why);
	*client = c.session;
	return TEST_PASS;
}

#define PAIR_OPEN_WITH(l, nr_bulk, o, client, server)			\
	do {								\
		if (pair_open_with(ctx, l, nr_bulk, o, client, server))	\
			return TEST_FAIL;				\
	} while (0)
#define PAIR_OPEN(l, nr_bulk, client, server)				\
	PAIR_OPEN_WITH(l, nr_bulk, &(struct ferry_net_opts){ 0 }, client, \
		       server)

static uint64_t fill_word(size_t page, size_t i)
{
	return (page * 0x9e3779b97f4a7c15ULL) ^ (i * 0xff51afd7ed558ccdULL);
}

static uint8_t *guest_alloc(bool fill)
{
	uint64_t *g = aligned_alloc(PAGE, (size_t)NR_PAGES * PAGE);

	if (g && fill)
		for (size_t i = 0; i < (size_t)NR_PAGES * PAGE / 8; i++)
			g[i] = fill_word(i / (PAGE / 8), i);
	else if (g)
		memset(g, 0, (size_t)NR_PAGES * PAGE);
	return (uint8_t *)g;
}

static void stream_make(struct ferry_wire_stream *s)
{
	*s = (struct ferry_wire_stream){
		.version = FERRY_WIRE_VERSION,
		.kind = FERRY_WIRE_MIGRATION,
		.id = 1,		/* a migration names itself */
		.nr_vcpus = 1,
		.nr_regions = 1,
	};
	s->regions[0] = (struct ferry_wire_region){
		FERRY_BACKING_SHMEM, PAGE, (uint64_t)NR_PAGES * PAGE, NR_PAGES,
		0 };
}

/* One thread's side of a channel: what it moves, and how it ended. */
struct worker {
	pthread_t thread;
	struct ferry_chan *chan;
	const struct ferry_wire_stream *stream;
	uint8_t *guest;
	unsigned int nr_bulk;
	unsigned int records;
	int ret;
	char why[512];
};

static void *worker_done(struct worker *w, int ret)
{
	w->ret = ret;
	if (ret)
		snprintf(w->why, sizeof(w->why), "%s", ferry_error_msg());
	return NULL;
}

/* Bulk channel i sends pages i, i + nr_bulk, ... in batches; then COMPLETE. */
static void *bulk_sender(void *arg)
{
	struct worker *w = arg;
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	struct ferry_wire_writer wr;
	struct ferry_wire_complete c = { 0 };
	uint32_t index[BATCH];
	uint32_t page = w->chan->index, n;
	int ret = f ? 0 : -ENOMEM;

	ferry_wire_writer_init(&wr, w->chan);
	if (!ret && !w->chan->index)
		ret = ferry_wire_enc_header(f, w->stream);
	if (!ret && !w->chan->index && ferry_wire_send(&wr, f) < 0)
		ret = -EIO;
	while (!ret && page < NR_PAGES) {
		for (n = 0; n < BATCH && page < NR_PAGES; page += w->nr_bulk)
			index[n++] = page;
		ret = ferry_wire_enc_pages(f, w->stream, &(struct
			ferry_wire_batch){ .count = n, .index = index,
			.base = w->guest });
		if (!ret && ferry_wire_send(&wr, f) < 0)
			ret = -EIO;
		c.pages += n;
	}
	if (!ret)
		ret = ferry_wire_enc_complete(f, &c);
	if (!ret && ferry_wire_send(&wr, f) < 0)
		ret = -EIO;
	free(f);
	return worker_done(w, ret);
}

/* Store a decoded batch where it belongs. */
static void store(uint8_t *guest, const struct ferry_wire_pages *p)
{
	for (uint32_t i = 0; i < p->count; i++)
		memcpy(guest + (size_t)p->index[i] * PAGE,
		       p->data + (size_t)i * PAGE, PAGE);
}

/* Receive one bulk channel until COMPLETE. */
static void *bulk_receiver(void *arg)
{
	struct worker *w = arg;
	uint8_t *buf = aligned_alloc(PAGE, FERRY_WIRE_BUF_SIZE);
	struct ferry_wire_reader r;
	struct ferry_wire_rec rec;
	struct ferry_wire_pages p;
	int ret = buf ? 0 : -ENOMEM;

	ferry_wire_reader_init(&r, w->chan);
	r.next_nr = w->chan->index ? 0 : 1;	/* main took the HEADER */
	while (!ret) {
		ssize_t n = ferry_wire_recv(&r, buf, FERRY_WIRE_BUF_SIZE, &rec);

		if (n <= 0) {
			ret = n ? (int)n : -ENODATA;
			break;
		}
		if (rec.type == FERRY_WIRE_COMPLETE)
			break;
		ret = ferry_wire_dec_pages(w->stream, &rec, &p);
		if (!ret)
			store(w->guest, &p);
		w->records++;
	}
	free(buf);
	return worker_done(w, ret);
}

/* Serve PAGE_REQUESTs on the urgent channel until COMPLETE. */
static void *urgent_server(void *arg)
{
	struct worker *w = arg;
	uint8_t *buf = aligned_alloc(PAGE, FERRY_WIRE_BUF_SIZE);
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	struct ferry_wire_page_request q;
	struct ferry_wire_reader r;
	struct ferry_wire_writer wr;
	struct ferry_wire_rec rec;
	uint32_t index[BATCH];
	int ret = buf && f ? 0 : -ENOMEM;

	ferry_wire_reader_init(&r, w->chan);
	ferry_wire_writer_init(&wr, w->chan);
	while (!ret && ferry_wire_recv(&r, buf, FERRY_WIRE_BUF_SIZE, &rec) > 0
	       && rec.type == FERRY_WIRE_PAGE_REQUEST) {
		ret = ferry_wire_dec_page_request(w->stream, &rec, &q);
		for (uint32_t i = 0; !ret && i < q.count; i++)
			index[i] = q.page + i;
		if (!ret)
			ret = ferry_wire_enc_pages(f, w->stream, &(struct
				ferry_wire_batch){ .count = q.count,
				.index = index, .base = w->guest,
				.request_id = q.request_id });
		if (!ret && ferry_wire_send(&wr, f) < 0)
			ret = -EIO;
		w->records++;
	}
	free(buf);
	free(f);
	return worker_done(w, ret);
}

static int start(struct worker *w, void *(*fn)(void *))
{
	return pthread_create(&w->thread, NULL, fn, w) ? -EAGAIN : 0;
}

/* Ask for pages on the urgent channel; each reply must be the page. */
static enum test_result urgent_client(struct test_ctx *ctx,
				      struct ferry_chan *chan,
				      const struct ferry_wire_stream *s,
				      const uint8_t *src, uint8_t *buf)
{
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	struct ferry_wire_reader r;
	struct ferry_wire_writer wr;
	struct ferry_wire_rec rec;
	struct ferry_wire_pages p;
	struct ferry_wire_complete c = { 0 };

	ferry_wire_reader_init(&r, chan);
	ferry_wire_writer_init(&wr, chan);
	for (uint32_t i = 1; i <= NR_REQUESTS; i++) {
		struct ferry_wire_page_request q = { 0, i * 211 % NR_PAGES,
						     i % 4 + 1, 1000 + i };

		CHECK_OK(ctx, ferry_wire_enc_page_request(f, s, &q));
		CHECK_OK(ctx, ferry_wire_send(&wr, f));
		CHECK_OK(ctx, ferry_wire_recv(&r, buf, FERRY_WIRE_BUF_SIZE,
					      &rec));
		CHECK_OK(ctx, ferry_wire_dec_pages(s, &rec, &p));
		CHECK(ctx, p.request_id == q.request_id && p.count == q.count &&
		      p.index[0] == q.page && !memcmp(p.data, src +
		      (size_t)q.page * PAGE, (size_t)q.count * PAGE),
		      "reply to request %u is wrong", i);
	}
	CHECK_OK(ctx, ferry_wire_enc_complete(f, &c));
	CHECK_OK(ctx, ferry_wire_send(&wr, f));
	free(f);
	return TEST_PASS;
}

/* The listening side: HEADER on bulk 0, then every channel at once. */
static enum test_result receive_all(struct test_ctx *ctx,
				    struct ferry_session *s,
				    struct worker *rx, const uint8_t *src,
				    uint8_t *dst, uint8_t *buf)
{
	struct ferry_wire_stream stream;
	struct ferry_wire_reader r;
	struct ferry_wire_rec rec;
	enum test_result res;

	ferry_wire_reader_init(&r, s->bulk[0]);
	CHECK_OK(ctx, ferry_wire_recv(&r, buf, FERRY_WIRE_BUF_SIZE, &rec));
	CHECK_OK(ctx, ferry_wire_dec_header(&rec, &stream));
	for (unsigned int i = 0; i < s->nr_bulk; i++) {
		rx[i] = (struct worker){ .chan = s->bulk[i], .stream = &stream,
					 .guest = dst };
		CHECK_OK(ctx, start(&rx[i], bulk_receiver));
	}
	res = urgent_client(ctx, s->urgent, &stream, src, buf);
	for (unsigned int i = 0; i < s->nr_bulk; i++) {
		pthread_join(rx[i].thread, NULL);
		CHECK(ctx, !rx[i].ret, "receiver %u: %d: %s", i, rx[i].ret,
		      rx[i].why);
	}
	return res;
}

static enum test_result check_sessions(struct test_ctx *ctx,
				       const struct ferry_session *a,
				       const struct ferry_session *b)
{
	CHECK(ctx, a->id && a->id == b->id, "session ids differ");
	CHECK(ctx, a->nr_bulk == 3 && b->nr_bulk == 3, "bulk count");
	for (unsigned int i = 0; i < 3; i++)
		CHECK(ctx, b->bulk[i]->role == FERRY_CHAN_BULK &&
		      b->bulk[i]->index == i, "bulk %u misplaced", i);
	CHECK_EQ(ctx, b->urgent->role, FERRY_CHAN_URGENT);
	return TEST_PASS;
}

/* 3 bulk + 1 urgent: every page arrives, every request is answered. */
static enum test_result session_carries_with(struct test_ctx *ctx,
					     const char *addr,
					     const struct ferry_net_opts *o)
{
	struct ferry_session *client, *server;
	struct ferry_wire_stream s;
	struct ferry_listener *l;
	struct worker tx[3], urgent, rx[3];
	uint8_t *src = guest_alloc(true), *dst = guest_alloc(false);
	uint8_t *buf = aligned_alloc(PAGE, FERRY_WIRE_BUF_SIZE);

	CHECK(ctx, src && dst && buf, "out of memory");
	stream_make(&s);
	CHECK_OK(ctx, ferry_net_listener_open(addr, o, &l));
	PAIR_OPEN_WITH(l, 3, o, &client, &server);
	if (check_sessions(ctx, client, server))
		return TEST_FAIL;
	for (unsigned int i = 0; i < 3; i++) {
		tx[i] = (struct worker){ .chan = client->bulk[i], .stream = &s,
					 .guest = src, .nr_bulk = 3 };
		CHECK_OK(ctx, start(&tx[i], bulk_sender));
	}
	urgent = (struct worker){ .chan = client->urgent, .stream = &s,
				  .guest = src };
	CHECK_OK(ctx, start(&urgent, urgent_server));
	if (receive_all(ctx, server, rx, src, dst, buf))
		return TEST_FAIL;
	for (unsigned int i = 0; i < 3; i++) {
		pthread_join(tx[i].thread, NULL);
		CHECK(ctx, !tx[i].ret, "sender %u: %s", i, tx[i].why);
	}
	pthread_join(urgent.thread, NULL);
	CHECK(ctx, !urgent.ret && urgent.records == NR_REQUESTS,
	      "urgent server: %u requests: %s", urgent.records, urgent.why);
	CHECK(ctx, rx[0].records == (NR_PAGES / 3 + 1 + BATCH - 1) / BATCH,
	      "bulk 0 carried %u records", rx[0].records);
	CHECK(ctx, !memcmp(src, dst, (size_t)NR_PAGES * PAGE),
	      "guest memory differs after the session");
	ferry_net_session_close(client);
	ferry_net_session_close(server);
	ferry_net_listener_close(l);
	free(src);
	free(dst);
	free(buf);
	return TEST_PASS;
}

static enum test_result session_carries(struct test_ctx *ctx,
					const char *addr)
{
	return session_carries_with(ctx, addr, &(struct ferry_net_opts){ 0 });
}

static enum test_result session_tcp4(struct test_ctx *ctx)
{
	return session_carries(ctx, "127.0.0.1:0");
}

static enum test_result session_tcp6(struct test_ctx *ctx)
{
	struct ferry_listener *l;

	if (ferry_net_listener_open("[::1]:0", NULL, &l))
		SKIP(ctx, "no IPv6 loopback: %s", ferry_error_msg());
	ferry_net_listener_close(l);
	return session_carries(ctx, "[::1]:0");
}

static enum test_result session_unix(struct test_ctx *ctx)
{
	char addr[64];
	enum test_result res;

	snprintf(addr, sizeof(addr), "unix:/tmp/ferry-test-%d.sock", getpid());
	res = session_carries(ctx, addr);
	CHECK(ctx, access(addr + 5, F_OK), "%s left behind", addr + 5);
	return res;
}

/* ---- broken peers ---- */

/* Half a record, then the sender is gone: the reader says so. */
static enum test_result disconnect_mid_record(struct test_ctx *ctx)
{
	struct ferry_session *client, *server;
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	struct ferry_wire_stream s;
	struct ferry_wire_reader r;
	struct ferry_wire_rec rec;
	struct ferry_listener *l;
	uint8_t *src = guest_alloc(true);
	uint8_t *buf = aligned_alloc(PAGE, FERRY_WIRE_BUF_SIZE);
	struct iovec part[8];
	uint32_t index[BATCH];
	size_t left = 100000;	/* the header, the meta, some page data */
	int iovcnt = 0;

	CHECK(ctx, f && src && buf, "out of memory");
	stream_make(&s);
	for (uint32_t i = 0; i < BATCH; i++)
		index[i] = i;
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL, &l));
	PAIR_OPEN(l, 1, &client, &server);
	CHECK_OK(ctx, ferry_wire_enc_pages(f, &s, &(struct ferry_wire_batch){
		.count = BATCH, .index = index, .base = src }));
	CHECK(ctx, ferry_wire_seal(f, 0) > 0, "seal");
	for (; left && iovcnt < 8; iovcnt++) {
		part[iovcnt] = f->iov[iovcnt];
		if (part[iovcnt].iov_len > left)
			part[iovcnt].iov_len = left;
		left -= part[iovcnt].iov_len;
	}
	CHECK_EQ(ctx, ferry_chan_sendv(client->bulk[0], part, iovcnt), 100000);
	ferry_net_session_close(client);
	ferry_wire_reader_init(&r, server->bulk[0]);
	CHECK_EQ(ctx, ferry_wire_recv(&r, buf, FERRY_WIRE_BUF_SIZE, &rec),
		 -EPIPE);
	CHECK(ctx, strstr(ferry_error_msg(), "record 0: stream ended inside a "
			  "256.") && strstr(ferry_error_msg(), "KiB PAGES record"),
	      "reason: %s", ferry_error_msg());
	ferry_net_session_close(server);
	ferry_net_listener_close(l);
	free(f);
	free(src);
	free(buf);
	return TEST_PASS;
}

/* The reader is gone: the sender gets -EPIPE or -ECONNRESET, no SIGPIPE. */
static enum test_result send_to_closed_peer(struct test_ctx *ctx)
{
	struct ferry_session *client, *server;
	struct ferry_listener *l;
	uint8_t *src = guest_alloc(true);
	struct iovec iov = { src, 1 << 20 };
	ssize_t n = 0;

	CHECK(ctx, src, "out of memory");
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL, &l));
	PAIR_OPEN(l, 1, &client, &server);
	ferry_net_session_close(server);
	for (int i = 0; i < 1000 && n >= 0; i++)
		n = ferry_chan_sendv(client->bulk[0], &iov, 1);
	CHECK(ctx, n == -EPIPE || n == -ECONNRESET, "send: %zd", n);
	CHECK(ctx, strstr(ferry_error_msg(), "bulk 0 to 127.0.0.1:") &&
	      strstr(ferry_error_msg(), ": send: "), "reason: %s",
	      ferry_error_msg());
	ferry_net_session_close(client);
	ferry_net_listener_close(l);
	free(src);
	return TEST_PASS;
}

/* A peer that stops talking: -ETIMEDOUT after the I/O timeout. */
static enum test_result io_timeout(struct test_ctx *ctx)
{
	struct ferry_net_opts o = { .io_timeout_ms = 200 };
	struct ferry_session *client, *server;
	struct ferry_listener *l;
	char byte;

	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", &o, &l));
	PAIR_OPEN(l, 1, &client, &server);
	CHECK_EQ(ctx, ferry_chan_recv(server->urgent, &byte, 1), -ETIMEDOUT);
	CHECK(ctx, strstr(ferry_error_msg(), "urgent from 127.0.0.1:") &&
	      strstr(ferry_error_msg(), "recv: no progress for 200 ms"),
	      "reason: %s", ferry_error_msg());
	ferry_net_session_close(client);
	ferry_net_session_close(server);
	ferry_net_listener_close(l);
	return TEST_PASS;
}

static void *reader_main(void *arg)
{
	struct worker *w = arg;
	uint8_t *buf = aligned_alloc(PAGE, FERRY_WIRE_BUF_SIZE);
	struct ferry_wire_reader r;
	struct ferry_wire_rec rec;

	ferry_wire_reader_init(&r, w->chan);
	w->ret = buf ? (int)ferry_wire_recv(&r, buf, FERRY_WIRE_BUF_SIZE, &rec)
		     : -ENOMEM;
	free(buf);
	return NULL;
}

/* Shutdown wakes a thread blocked in recv: how threads are stopped. */
static enum test_result shutdown_wakes(struct test_ctx *ctx)
{
	struct ferry_session *client, *server;
	struct ferry_listener *l;
	struct worker w = { .ret = 1 };
	char addr[64];

	snprintf(addr, sizeof(addr), "unix:@ferry-test-%d", getpid());
	CHECK_OK(ctx, ferry_net_listener_open(addr, NULL, &l));
	PAIR_OPEN(l, 2, &client, &server);
	w.chan = server->bulk[1];
	CHECK_OK(ctx, start(&w, reader_main));
	usleep(50000);
	ferry_net_session_shutdown(server);
	pthread_join(w.thread, NULL);
	CHECK_EQ(ctx, w.ret, 0);
	ferry_net_session_close(client);
	ferry_net_session_close(server);
	ferry_net_listener_close(l);
	return TEST_PASS;
}

/* ---- strangers and mismatches ---- */

static int raw_connect(const struct ferry_listener *l)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_port = htons(ferry_net_listener_port(l)),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd >= 0 && connect(fd, (struct sockaddr *)&sin, sizeof(sin))) {
		close(fd);
		return -1;
	}
	return fd;
}

/* A hello as docs/wire.md lays it out. */
static void hello_bytes(uint8_t *h, uint16_t version, uint8_t role,
			uint16_t index, uint16_t nr_bulk, uint64_t id)
{
	uint64_t sum;

	memset(h, 0, 32);
	memcpy(h, "FERRYHEL", 8);
	memcpy(h + 8, &version, 2);
	h[10] = role;
	memcpy(h + 12, &index, 2);
	memcpy(h + 14, &nr_bulk, 2);
	memcpy(h + 16, &id, 8);
	sum = XXH3_64bits(h, 24);
	memcpy(h + 24, &sum, 8);
}

/* The answer to a hello: its status, or -1 if none came. */
static int ack_status(int fd)
{
	uint8_t a[32];
	uint32_t status;

	if (recv(fd, a, sizeof(a), MSG_WAITALL) != sizeof(a) ||
	    memcmp(a, "FERRYACK", 8))
		return -1;
	memcpy(&status, a + 12, 4);
	return (int)status;
}

struct stranger {
	pthread_t thread;
	const struct ferry_listener *l;
	int status;		/* the answer to its garbage */
	int eof;		/* then the connection closed */
};

static void *stranger_main(void *arg)
{
	struct stranger *st = arg;
	struct connector c = { .addr = ferry_net_listener_addr(st->l),
			       .nr_bulk = 2 };
	char garbage[32] = "GET / HTTP/1.0\r\n\r\n";
	int fd = raw_connect(st->l);

	if (fd >= 0 && send(fd, garbage, sizeof(garbage), 0) == 32) {
		st->status = ack_status(fd);
		st->eof = recv(fd, garbage, 1, 0) == 0;
	}
	if (fd >= 0)
		close(fd);
	connector_main(&c);	/* then a real peer */
	ferry_net_session_close(c.session);
	return NULL;
}

/* A stranger is refused; the real session after it still gets in. */
static enum test_result stranger_refused(struct test_ctx *ctx)
{
	struct ferry_net_opts o = { .hello_timeout_ms = 300 };
	struct stranger st = { .status = -1 };
	struct ferry_session *s;
	struct ferry_listener *l;
	int fd;

	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", &o, &l));
	st.l = l;
	CHECK(ctx, !pthread_create(&st.thread, NULL, stranger_main, &st),
	      "thread");
	CHECK_OK(ctx, ferry_net_accept(l, 5000, &s));
	pthread_join(st.thread, NULL);
	CHECK(ctx, st.status == EBADMSG && st.eof, "stranger got %d, eof %d",
	      st.status, st.eof);
	CHECK_EQ(ctx, s->nr_bulk, 2);
	ferry_net_session_close(s);
	fd = raw_connect(l);	/* connects, and says nothing */
	CHECK_EQ(ctx, ferry_net_accept(l, 600, &s), -ETIMEDOUT);
	CHECK(ctx, strstr(ferry_error_msg(), "refused 1 connection(s), the last: "
			  "127.0.0.1:") && strstr(ferry_error_msg(),
			  "sent no hello within 300 ms"), "reason: %s",
	      ferry_error_msg());
	close(fd);
	ferry_net_listener_close(l);
	return TEST_PASS;
}

/* A peer that opens one of its channels and dies: its session expires. */
static enum test_result half_session(struct test_ctx *ctx)
{
	struct ferry_net_opts o = { .connect_timeout_ms = 200 };
	struct ferry_session *s;
	struct ferry_listener *l;
	uint8_t hello[32];
	int fd;

	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", &o, &l));
	fd = raw_connect(l);
	CHECK(ctx, fd >= 0, "connect");
	hello_bytes(hello, FERRY_NET_VERSION, FERRY_CHAN_BULK, 0, 1, 42);
	CHECK_EQ(ctx, send(fd, hello, 32, 0), 32);
	CHECK_EQ(ctx, ferry_net_accept(l, 500, &s), -ETIMEDOUT);
	CHECK(ctx, strstr(ferry_error_msg(), "opened 1 of the 2 channels of its "
			  "session within 200 ms"), "reason: %s",
	      ferry_error_msg());
	CHECK_EQ(ctx, ack_status(fd), 0);
	close(fd);
	ferry_net_listener_close(l);
	return TEST_PASS;
}

/*
 * A peer of another session version is refused with EPROTO and told so;
 * the wait goes on, and the session expected after it gets in.
 */
static enum test_result version_mismatch(struct test_ctx *ctx)
{
	struct ferry_session *client, *server, *s;
	struct ferry_listener *l;
	uint8_t hello[32];
	int fd;

	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL, &l));
	fd = raw_connect(l);
	CHECK(ctx, fd >= 0, "connect");
	hello_bytes(hello, 99, FERRY_CHAN_BULK, 0, 1, 42);
	CHECK_EQ(ctx, send(fd, hello, 32, 0), 32);
	CHECK_EQ(ctx, ferry_net_accept(l, 500, &s), -ETIMEDOUT);
	CHECK(ctx, strstr(ferry_error_msg(), "speaks version 99; this ferry "
			  "speaks version 1"), "reason: %s",
	      ferry_error_msg());
	CHECK_EQ(ctx, ack_status(fd), EPROTO);
	close(fd);
	PAIR_OPEN(l, 2, &client, &server);
	ferry_net_session_close(client);
	ferry_net_session_close(server);
	ferry_net_listener_close(l);
	return TEST_PASS;
}

/* A listener of another version: what the connecting side hears. */
static void *old_listener(void *arg)
{
	int lfd = *(int *)arg, fd = accept(lfd, NULL, NULL);
	uint8_t a[32] = "FERRYACK", hello[32];
	uint32_t status = EPROTO;
	uint16_t version = 2;
	uint64_t sum;

	if (fd < 0 || recv(fd, hello, 32, MSG_WAITALL) != 32)
		return NULL;
	memcpy(a + 16, hello + 16, 8);	/* the session id */
	memcpy(a + 8, &version, 2);
	memset(a + 10, 0, 2);
	memcpy(a + 12, &status, 4);
	sum = XXH3_64bits(a, 24);
	memcpy(a + 24, &sum, 8);
	if (send(fd, a, 32, MSG_NOSIGNAL) == 32)
		recv(fd, a, 1, 0);
	close(fd);
	return NULL;
}

static int raw_listen(int *port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) ||
	    getsockname(fd, (struct sockaddr *)&sin, &len))
		return -1;
	*port = ntohs(sin.sin_port);
	return fd;
}

static enum test_result listener_too_new(struct test_ctx *ctx)
{
	struct ferry_net_opts o = { .connect_timeout_ms = 2000 };
	struct ferry_session *s;
	pthread_t thread;
	char addr[64];
	int port, lfd = raw_listen(&port);

	CHECK(ctx, lfd >= 0 && !listen(lfd, 4), "listen");
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	CHECK(ctx, !pthread_create(&thread, NULL, old_listener, &lfd), "thr");
	CHECK_EQ(ctx, ferry_net_connect(addr, 1, &o, &s), -EPROTO);
	CHECK(ctx, strstr(ferry_error_msg(), "speaks ferry session version 2; "
			  "this ferry speaks 1"), "reason: %s", ferry_error_msg());
	pthread_join(thread, NULL);
	close(lfd);
	return TEST_PASS;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Nobody listens: refused at once, not after the timeout. */
static enum test_result nobody_listens(struct test_ctx *ctx)
{
	struct ferry_net_opts o = { .connect_timeout_ms = 20000 };
	struct ferry_session *s;
	char addr[64];
	int port, fd = raw_listen(&port);	/* bound, not listening */
	double start = now_s();

	CHECK(ctx, fd >= 0, "bind");
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	CHECK_EQ(ctx, ferry_net_connect(addr, 2, &o, &s), -ECONNREFUSED);
	CHECK(ctx, now_s() - start < 10, "refusal took the timeout");
	CHECK(ctx, strstr(ferry_error_msg(), "connect to 127.0.0.1:") &&
	      strstr(ferry_error_msg(), "refused (is a ferry listener there?)"),
	      "reason: %s", ferry_error_msg());
	CHECK_EQ(ctx, ferry_net_connect("unix:/nonexistent/ferry.sock", 1, &o,
					&s), -ENOENT);
	CHECK(ctx, strstr(ferry_error_msg(), "unix:/nonexistent/ferry.sock"),
	      "reason: %s", ferry_error_msg());
	close(fd);
	return TEST_PASS;
}

/* Something listens, and never answers the hello: -ETIMEDOUT. */
static enum test_result no_answer(struct test_ctx *ctx)
{
	struct ferry_net_opts o = { .connect_timeout_ms = 300 };
	struct ferry_session *s;
	char addr[64];
	int port, fd = raw_listen(&port);

	CHECK(ctx, fd >= 0 && !listen(fd, 8), "listen");
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	CHECK_EQ(ctx, ferry_net_connect(addr, 1, &o, &s), -ETIMEDOUT);
	CHECK(ctx, strstr(ferry_error_msg(), "did not answer the hello within "
			  "300 ms"), "reason: %s", ferry_error_msg());
	close(fd);
	return TEST_PASS;
}

static const struct {
	const char *addr;
	const char *reason;
} bad_addrs[] = {
	{ "localhost", "want HOST:PORT" },
	{ "127.0.0.1:", "want HOST:PORT" },
	{ "::1:4000", "an IPv6 address goes in brackets" },
	{ "[::1]", "want HOST:PORT" },
	{ "127.0.0.1:99999", "bad port '99999'" },
	{ "127.0.0.1:0", "bad port '0'" },
	{ ":4000", "bad host" },
	{ "unix:", "unix socket path ''" },
};

/* Addresses: the bad ones named, port 0 read back. */
static enum test_result addresses(struct test_ctx *ctx)
{
	struct ferry_session *s;
	struct ferry_listener *l;
	char want[64], path[200];

	for (size_t i = 0; i < sizeof(bad_addrs) / sizeof(bad_addrs[0]); i++) {
		CHECK_EQ(ctx, ferry_net_connect(bad_addrs[i].addr, 1, NULL, &s),
			 -EINVAL);
		CHECK(ctx, strstr(ferry_error_msg(), bad_addrs[i].reason),
		      "%s: %s", bad_addrs[i].addr, ferry_error_msg());
	}
	memset(path, 'x', sizeof(path));
	memcpy(path, "unix:/", 6);
	path[sizeof(path) - 1] = '\0';
	CHECK_EQ(ctx, ferry_net_listener_open(path, NULL, &l), -EINVAL);
	CHECK_EQ(ctx, ferry_net_connect("127.0.0.1:4000", 0, NULL, &s),
		 -EINVAL);
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL, &l));
	CHECK(ctx, ferry_net_listener_port(l) > 0, "no port");
	snprintf(want, sizeof(want), "127.0.0.1:%d",
		 ferry_net_listener_port(l));
	CHECK(ctx, !strcmp(ferry_net_listener_addr(l), want), "%s",
	      ferry_net_listener_addr(l));
	ferry_net_listener_close(l);
	CHECK_OK(ctx, ferry_net_listener_open(":0", &(struct ferry_net_opts){
		.insecure = true }, &l));
	CHECK(ctx, ferry_net_listener_port(l) > 0, "no port for :0");
	ferry_net_listener_close(l);
	return TEST_PASS;
}

/* ---- TLS ---------------------------------------------------------------- */

static enum test_result session_tls_psk(struct test_ctx *ctx)
{
	struct ferry_net_opts o;
	struct tlskeys k;
	enum test_result res;

	KEYS(ctx, &k);
	o = tlskeys_psk(k.psk);
	res = session_carries_with(ctx, "127.0.0.1:0", &o);
	tlskeys_remove(&k);
	return res;
}

static enum test_result session_tls_cert_unix(struct test_ctx *ctx)
{
	struct ferry_net_opts o;
	struct tlskeys k;
	enum test_result res;
	char addr[64];

	KEYS(ctx, &k);
	o = tlskeys_cert(&k, k.a_cert, k.a_key);
	snprintf(addr, sizeof(addr), "unix:@ferry-tls-%d", getpid());
	res = session_carries_with(ctx, addr, &o);
	tlskeys_remove(&k);
	return res;
}

/*
 * Two records sent at once, the first read: the second sits decrypted
 * inside TLS, the socket has nothing more, and the channel's poll_fd
 * must still say readable.  Then shutdown wakes a blocked reader.
 */
static enum test_result tls_poll_and_shutdown(struct test_ctx *ctx)
{
	struct ferry_session *client, *server;
	struct ferry_listener *l;
	struct ferry_net_opts o;
	struct worker w = { .ret = 1 };
	struct tlskeys k;
	char msg[200] = "first", got[100];
	struct iovec iov = { msg, sizeof(msg) };
	struct pollfd pfd;

	KEYS(ctx, &k);
	o = tlskeys_psk(k.psk);
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", &o, &l));
	PAIR_OPEN_WITH(l, 1, &o, &client, &server);
	tlskeys_remove(&k);
	CHECK(ctx, server->tls && client->tls, "sessions not TLS");
	CHECK_EQ(ctx, ferry_chan_sendv(client->urgent, &iov, 1), sizeof(msg));
	CHECK_EQ(ctx, ferry_chan_recv(server->urgent, got, 100), 100);
	pfd = (struct pollfd){ ferry_chan_poll_fd(server->urgent), POLLIN, 0 };
	CHECK_EQ(ctx, poll(&pfd, 1, 2000), 1);
	CHECK_EQ(ctx, ferry_chan_recv(server->urgent, got, 100), 100);
	CHECK_EQ(ctx, poll(&pfd, 1, 0), 0);
	w.chan = server->bulk[0];
	CHECK_OK(ctx, start(&w, reader_main));
	usleep(50000);
	ferry_net_session_shutdown(server);
	pthread_join(w.thread, NULL);
	CHECK_EQ(ctx, w.ret, 0);
	ferry_net_session_close(client);
	ferry_net_session_close(server);
	ferry_net_listener_close(l);
	return TEST_PASS;
}

/* ---- sessions a VMM brings ---------------------------------------------- */

/* A move on this host over unix socket pairs. */
static enum test_result migrate_pair(struct test_ctx *ctx)
{
	struct migpair m = { .mode = FERRY_MODE_POSTCOPY };

	CHECK_OK(ctx, ferry_net_session_pair(2, &m.src_session,
					     &m.dst_session));
	return migpair_run(ctx, &m);
}

struct fd_maker {
	pthread_t thread;
	int port, fds[3];
	int ret;
};

static void *fd_connector(void *arg)
{
	struct fd_maker *f = arg;
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_port = htons(f->port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	for (int i = 0; i < 3; i++) {
		f->fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (f->fds[i] < 0 || connect(f->fds[i], (void *)&sin,
					     sizeof(sin)))
			f->ret = -1;
	}
	return NULL;
}

struct fd_client {
	pthread_t thread;
	const struct ferry_net_opts *opts;
	const int *fds;
	struct ferry_session **session;
	int ret;
	char why[512];
};

static void *fds_client_main(void *arg)
{
	struct fd_client *c = arg;

	c->ret = ferry_net_session_from_fds(c->fds, 2, true, c->opts,
					    c->session);
	snprintf(c->why, sizeof(c->why), "%s", ferry_error_msg());
	return NULL;
}

/*
 * A VMM's own sockets: it listens and connects by itself (three TCP
 * connections, paired in order), then hands the accepted descriptors to
 * one side and the connected ones to the other, with TLS on top.
 */
static enum test_result migrate_fds(struct test_ctx *ctx)
{
	struct migpair m = { .mode = FERRY_MODE_PRECOPY };
	struct fd_maker f = { 0 };
	struct ferry_net_opts o;
	struct tlskeys k;
	int lfd = raw_listen(&f.port), accepted[3];
	struct fd_client cl;

	CHECK(ctx, lfd >= 0 && !listen(lfd, 8), "listen");
	CHECK_EQ(ctx, pthread_create(&f.thread, NULL, fd_connector, &f), 0);
	for (int i = 0; i < 3; i++)
		accepted[i] = accept(lfd, NULL, NULL);
	pthread_join(f.thread, NULL);
	close(lfd);
	CHECK(ctx, !f.ret && accepted[2] >= 0, "connections");
	KEYS(ctx, &k);
	o = tlskeys_psk(k.psk);
	cl = (struct fd_client){ .opts = &o, .fds = f.fds,
				 .session = &m.src_session };
	CHECK_EQ(ctx, pthread_create(&cl.thread, NULL, fds_client_main, &cl),
		 0);
	CHECK_OK(ctx, ferry_net_session_from_fds(accepted, 2, false, &o,
						 &m.dst_session));
	pthread_join(cl.thread, NULL);
	tlskeys_remove(&k);
	CHECK(ctx, !cl.ret, "client side: %s", cl.why);
	for (int i = 0; i < 3; i++) {
		close(accepted[i]);	/* ferry works on its own copies */
		close(f.fds[i]);
	}
	CHECK(ctx, m.dst_session->tls, "no TLS on the descriptors");
	return migpair_run(ctx, &m);
}

static const struct test_case cases[] = {
	{ "net_session_tcp4", session_tcp4, 0, 0, 0, 0, 0 },
	{ "net_session_tcp6", session_tcp6, 0, 0, 0, 0, 0 },
	{ "net_session_unix", session_unix, 0, 0, 0, 0, 0 },
	{ "net_disconnect_mid_record", disconnect_mid_record, 0, 0, 0, 0, 0 },
	{ "net_send_to_closed_peer", send_to_closed_peer, 0, 0, 0, 0, 0 },
	{ "net_io_timeout", io_timeout, 0, 0, 0, 0, 0 },
	{ "net_shutdown_wakes", shutdown_wakes, 0, 0, 0, 0, 0 },
	{ "net_stranger_refused", stranger_refused, 0, 0, 0, 0, 0 },
	{ "net_half_session", half_session, 0, 0, 0, 0, 0 },
	{ "net_version_mismatch", version_mismatch, 0, 0, 0, 0, 0 },
	{ "net_listener_too_new", listener_too_new, 0, 0, 0, 0, 0 },
	{ "net_nobody_listens", nobody_listens, 0, 0, 0, 0, 0 },
	{ "net_no_answer", no_answer, 0, 0, 0, 0, 0 },
	{ "net_addresses", addresses, 0, 0, 0, 0, 0 },
	{ "net_session_tls_psk_tcp4", session_tls_psk, 0, 0, 0, 0, 0 },
	{ "net_session_tls_cert_unix", session_tls_cert_unix, 0, 0, 0, 0, 0 },
	{ "net_tls_poll_sees_buffered_and_shutdown_wakes",
	  tls_poll_and_shutdown, 0, 0, 0, 0, 0 },
	{ "net_migrate_over_socket_pair", migrate_pair, B_SHMEM | B_HUGETLB,
	  0, NEED_UFFD_MINOR | NEED_UFFD_MISSING, 32, 60 },
	{ "net_migrate_over_vmm_fds_tls", migrate_fds, B_SHMEM, 0,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 0, 60 },
};

TEST_SUITE(net, cases)
