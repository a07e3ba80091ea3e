// SPDX-License-Identifier: MIT
/*
 * net_limits: what the transport can do at best on this machine, over
 * 127.0.0.1 and Unix sockets only.
 *
 *   tcp_stream      bulk throughput with 1, 2 and 4 connections at once
 *   chan_stream     one ferry channel (a session's bulk channel over
 *                   loopback TCP), plain and TLS 1.3 (pre-shared key,
 *                   AES-GCM) taken in turns: what encryption costs
 *   *_rtt_64b_4k    a 64-byte request answered by a 4 KiB reply, the shape
 *                   of a post-copy page request
 *   postcopy_floor  the least a post-copy fault can cost: a vCPU thread
 *                   faults on a MINOR-registered page, the fault thread
 *                   asks a "source" thread for it over a socket, pwrite()s
 *                   the reply into the memfd and CONTINUEs
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "bench.h"

#define STREAM_NS	(BENCH_NSEC / 2)	/* per measurement */
#define STREAM_REPS	3
#define STREAM_CHUNK	(256 * BENCH_KIB)
#define MAX_STREAMS	4

#define RTT_SAMPLES	20000
#define RTT_BUDGET_NS	(3 * BENCH_NSEC)

#define REQUEST_SIZE	64
#define REPLY_SIZE	4096

#define FLOOR_SIZE	(64 * BENCH_MIB)
#define FLOOR_BUDGET_NS	(4 * BENCH_NSEC)

/* ---- sockets ---------------------------------------------------------- */

static int read_full(int fd, void *buf, size_t len)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = read(fd, (uint8_t *)buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n ? -errno : -EPIPE;
		done += (size_t)n;
	}
	return 0;
}

/* send(), not write(): a peer gone early is an error, not SIGPIPE. */
static int write_full(int fd, const void *buf, size_t len)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = send(fd, (const uint8_t *)buf + done, len - done,
				 MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (size_t)n;
	}
	return 0;
}

static void nodelay(int fd)
{
	int one = 1;

	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)))
		bench_die("TCP_NODELAY: %s", strerror(errno));
}

/* A listener on 127.0.0.1 and an ephemeral port, which *addr gets. */
static int tcp_listen(struct sockaddr_in *addr)
{
	socklen_t len = sizeof(*addr);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	*addr = (struct sockaddr_in){
		.sin_family = AF_INET,
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	if (fd < 0 || bind(fd, (struct sockaddr *)addr, sizeof(*addr)) ||
	    listen(fd, MAX_STREAMS) ||
	    getsockname(fd, (struct sockaddr *)addr, &len))
		bench_die("listening on 127.0.0.1: %s", strerror(errno));
	return fd;
}

/* A connected loopback TCP pair: fds[0] the client, fds[1] the server. */
static void tcp_pair(int lfd, const struct sockaddr_in *addr, int fds[2])
{
	fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fds[0] < 0 ||
	    connect(fds[0], (const struct sockaddr *)addr, sizeof(*addr)))
		bench_die("connecting to 127.0.0.1: %s", strerror(errno));
	fds[1] = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fds[1] < 0)
		bench_die("accept: %s", strerror(errno));
	nodelay(fds[0]);
	nodelay(fds[1]);
}

enum transport { TRANSPORT_TCP, TRANSPORT_UNIX };

static const char *const transport_names[] = {
	[TRANSPORT_TCP] = "tcp",
	[TRANSPORT_UNIX] = "unix",
};

static void socket_pair(enum transport t, int fds[2])
{
	struct sockaddr_in addr;
	int lfd;

	if (t == TRANSPORT_UNIX) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds))
			bench_die("socketpair: %s", strerror(errno));
		return;
	}
	lfd = tcp_listen(&addr);
	tcp_pair(lfd, &addr, fds);
	close(lfd);
}

static void start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
	int ret = pthread_create(t, NULL, fn, arg);

	if (ret)
		bench_die("starting a thread: %s", strerror(ret));
}

/* ---- throughput ------------------------------------------------------- */

/* One connection: the sender writes until the deadline, then EOF. */
struct stream {
	int fds[2];
	uint64_t deadline_ns;	/* set before start */
	uint64_t bytes;		/* by the receiver; read after join */
	pthread_t sender, receiver;
};

static void *stream_send(void *arg)
{
	struct stream *s = arg;
	uint8_t *buf = bench_alloc(STREAM_CHUNK, 5);
	int ret;

	while (bench_now_ns() < s->deadline_ns) {
		ret = write_full(s->fds[0], buf, STREAM_CHUNK);
		if (ret)
			bench_die("sending: %s", strerror(-ret));
	}
	shutdown(s->fds[0], SHUT_WR);
	bench_free(buf, STREAM_CHUNK);
	return NULL;
}

static void *stream_receive(void *arg)
{
	struct stream *s = arg;
	uint8_t *buf = bench_alloc(STREAM_CHUNK, 6);
	ssize_t n;

	while ((n = read(s->fds[1], buf, STREAM_CHUNK)) != 0) {
		if (n < 0 && errno != EINTR)
			bench_die("receiving: %s", strerror(errno));
		if (n > 0)
			s->bytes += (uint64_t)n;
	}
	bench_free(buf, STREAM_CHUNK);
	return NULL;
}

/* Aggregate GB/s of `nr` connections, from start to the last EOF. */
static double streams_once(int lfd, const struct sockaddr_in *addr,
			   unsigned int nr)
{
	struct stream s[MAX_STREAMS] = { 0 };
	uint64_t t0, bytes = 0;

	for (unsigned int i = 0; i < nr; i++)
		tcp_pair(lfd, addr, s[i].fds);
	t0 = bench_now_ns();
	for (unsigned int i = 0; i < nr; i++) {
		s[i].deadline_ns = t0 + STREAM_NS;
		start_thread(&s[i].receiver, stream_receive, &s[i]);
		start_thread(&s[i].sender, stream_send, &s[i]);
	}
	for (unsigned int i = 0; i < nr; i++) {
		pthread_join(s[i].sender, NULL);
		pthread_join(s[i].receiver, NULL);
		bytes += s[i].bytes;
		close(s[i].fds[0]);
		close(s[i].fds[1]);
	}
	return bench_gbps(bytes, bench_now_ns() - t0);
}

static void run_streams(void)
{
	static const unsigned int counts[] = { 1, 2, 4 };
	struct sockaddr_in addr;
	int lfd = tcp_listen(&addr);

	for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
		double gbps[STREAM_REPS];
		char prefix[32];

		for (int rep = 0; rep < STREAM_REPS; rep++)
			gbps[rep] = streams_once(lfd, &addr, counts[c]);
		snprintf(prefix, sizeof(prefix), "tcp_stream_x%u", counts[c]);
		bench_put_spread(prefix, "gbps", gbps, STREAM_REPS);
	}
	close(lfd);
}

/* ---- one ferry channel, plain and TLS ------------------------------- */

#define CHAN_CHUNK	BENCH_MIB

struct chan_stream {
	struct ferry_chan *chan;
	uint64_t deadline_ns;
	uint64_t bytes;		/* by the receiver; read after join */
	pthread_t thread;
};

/* Send until the deadline, then shut the channel: the receiver's EOF. */
static void *chan_send(void *arg)
{
	struct chan_stream *c = arg;
	uint8_t *buf = bench_alloc(CHAN_CHUNK, 8);
	struct iovec iov = { buf, CHAN_CHUNK };

	while (bench_now_ns() < c->deadline_ns)
		if (ferry_chan_sendv(c->chan, &iov, 1) != CHAN_CHUNK)
			bench_die("sending: %s", ferry_error_msg());
	ferry_chan_shutdown(c->chan);
	bench_free(buf, CHAN_CHUNK);
	return NULL;
}

static void chan_receive(struct chan_stream *c)
{
	uint8_t *buf = bench_alloc(CHAN_CHUNK, 9);
	ssize_t n;

	while ((n = ferry_chan_recv(c->chan, buf, CHAN_CHUNK)) > 0)
		c->bytes += (uint64_t)n;
	if (n < 0)
		bench_die("receiving: %s", ferry_error_msg());
	bench_free(buf, CHAN_CHUNK);
}

struct chan_connect {
	pthread_t thread;
	const char *addr;
	const struct ferry_net_opts *opts;
	struct ferry_session *s;
};

static void *chan_connect_main(void *arg)
{
	struct chan_connect *c = arg;

	if (ferry_net_connect(c->addr, 1, c->opts, &c->s))
		bench_die("connecting: %s", ferry_error_msg());
	return NULL;
}

/* GB/s over one bulk channel of a fresh session with these options. */
static double chan_once(const struct ferry_net_opts *o)
{
	struct chan_connect cc = { .opts = o };
	struct chan_stream tx = { 0 }, rx_side = { 0 };
	struct ferry_listener *l;
	struct ferry_session *rx;
	uint64_t t0;

	if (ferry_net_listener_open("127.0.0.1:0", o, &l))
		bench_die("listening: %s", ferry_error_msg());
	cc.addr = ferry_net_listener_addr(l);
	start_thread(&cc.thread, chan_connect_main, &cc);
	if (ferry_net_accept(l, 5000, &rx))
		bench_die("accepting: %s", ferry_error_msg());
	pthread_join(cc.thread, NULL);
	tx.chan = cc.s->bulk[0];
	rx_side.chan = rx->bulk[0];
	t0 = bench_now_ns();
	tx.deadline_ns = t0 + STREAM_NS;
	start_thread(&tx.thread, chan_send, &tx);
	chan_receive(&rx_side);
	pthread_join(tx.thread, NULL);
	ferry_net_session_close(cc.s);
	ferry_net_session_close(rx);
	ferry_net_listener_close(l);
	return bench_gbps(rx_side.bytes, bench_now_ns() - t0);
}

/* A pre-shared key in a file of its own, as an operator keeps one. */
static void psk_file(char *path, size_t len)
{
	int fd;

	snprintf(path, len, "/tmp/ferry-bench-psk-XXXXXX");
	fd = mkstemp(path);
	if (fd < 0 || bench_write_fd(fd, "bench:000102030405060708090a0b0c0d0e"
				     "0f101112131415161718191a1b1c1d1e1f\n"))
		bench_die("writing a key file: %s", strerror(errno));
	close(fd);
}

static void run_chan_streams(void)
{
	struct ferry_net_opts plain = { 0 }, tls = { 0 };
	double gbps[2][STREAM_REPS], cost[STREAM_REPS];
	char path[64];

	psk_file(path, sizeof(path));
	tls.tls_psk_file = path;
	for (int rep = 0; rep < STREAM_REPS; rep++) {
		gbps[0][rep] = chan_once(&plain);
		gbps[1][rep] = chan_once(&tls);
		cost[rep] = gbps[0][rep] / gbps[1][rep];
	}
	unlink(path);
	bench_put_spread("chan_stream_plain", "gbps", gbps[0], STREAM_REPS);
	bench_put_spread("chan_stream_tls", "gbps", gbps[1], STREAM_REPS);
	bench_put_spread("chan_stream_plain_over_tls", "ratio", cost,
			 STREAM_REPS);
}

/* ---- request / reply -------------------------------------------------- */

/*
 * The "source": answers each 64-byte request (a page offset in its first
 * 8 bytes) with a 4 KiB page that carries offset ^ BENCH_PAGE_MAGIC, until
 * EOF.
 */
static void *page_server(void *arg)
{
	int fd = *(int *)arg;
	uint8_t request[REQUEST_SIZE], reply[REPLY_SIZE];
	uint64_t offset;

	bench_fill_pattern(reply, sizeof(reply), 7);
	while (!read_full(fd, request, sizeof(request))) {
		memcpy(&offset, request, sizeof(offset));
		offset ^= BENCH_PAGE_MAGIC;
		memcpy(reply, &offset, sizeof(offset));
		if (write_full(fd, reply, sizeof(reply)))
			break;
	}
	return NULL;
}

/* Ask for the page at `offset`; the reply lands in `page`.  0 or -errno. */
static int fetch_page(int fd, uint64_t offset, uint8_t *page)
{
	uint8_t request[REQUEST_SIZE] = { 0 };
	int ret;

	memcpy(request, &offset, sizeof(offset));
	ret = write_full(fd, request, sizeof(request));
	return ret ? ret : read_full(fd, page, REPLY_SIZE);
}

static void run_rtt(enum transport t)
{
	uint64_t *ns = calloc(RTT_SAMPLES, sizeof(*ns));
	uint64_t deadline = bench_now_ns() + RTT_BUDGET_NS;
	uint8_t page[REPLY_SIZE];
	char prefix[32];
	pthread_t server;
	size_t n = 0;
	int fds[2];

	if (!ns)
		bench_die("out of memory");
	socket_pair(t, fds);
	start_thread(&server, page_server, &fds[1]);
	while (n < RTT_SAMPLES && bench_now_ns() < deadline) {
		uint64_t t0 = bench_now_ns();
		int ret = fetch_page(fds[0], n * REPLY_SIZE, page);

		if (ret)
			bench_die("%s request/reply: %s", transport_names[t],
				  strerror(-ret));
		ns[n++] = bench_now_ns() - t0;
	}
	shutdown(fds[0], SHUT_WR);
	pthread_join(server, NULL);
	close(fds[0]);
	close(fds[1]);
	snprintf(prefix, sizeof(prefix), "%s_rtt_64b_4k", transport_names[t]);
	bench_put_latency(prefix, ns, n);
	free(ns);
}

/* ---- the post-copy floor ---------------------------------------------- */

/* What the fault thread needs to fetch a page; only it touches this. */
struct fetcher {
	int fd;
	struct ferry_region *region;
	uint8_t page[REPLY_SIZE];
};

/* Fetch, write through the file (no fault), then map: post-copy's path. */
static int resolve_fetch(struct bench_fault_server *srv, uint8_t *page)
{
	struct fetcher *f = srv->ctx;
	uint64_t offset = (uint64_t)(page - f->region->guest);
	ssize_t n;
	int ret;

	ret = fetch_page(f->fd, offset, f->page);
	if (ret)
		return ret;
	n = pwrite(f->region->memfd, f->page, REPLY_SIZE, (off_t)offset);
	if (n != REPLY_SIZE)
		return n < 0 ? -errno : -EIO;
	n = ferry_uffd_continue(srv->uffd, page, REPLY_SIZE, 0);
	if (n < 0)
		return (int)n;
	return n == REPLY_SIZE ? 0 : -EIO;
}

static size_t floor_sample(struct ferry_uffd *uffd, struct fetcher *f,
			   uint64_t *ns)
{
	struct ferry_region *r = f->region;
	struct bench_fault_server srv = {
		.uffd = uffd,
		.page_size = r->page_size,
		.expect = FERRY_FAULT_MINOR,
		.resolve = resolve_fetch,
		.ctx = f,
	};
	size_t n;

	bench_check(ferry_uffd_register(uffd, r->guest, r->size,
					FERRY_UFFD_MINOR, NULL),
		    "registering MINOR");
	bench_fault_server_start(&srv);
	n = bench_touch_timed(r->guest, r->page_size, r->nr_pages, ns,
			      bench_now_ns() + FLOOR_BUDGET_NS);
	bench_fault_server_stop(&srv);
	bench_floor_verify(r, n);
	return n;
}

/*
 * The destination holds a stale copy of every page (MINOR faults); each
 * fault costs one request over the socket, one pwrite and one CONTINUE.
 */
static void floor_run(enum transport t, struct ferry_uffd *uffd,
		      const char *prefix)
{
	struct fetcher f = { 0 };
	struct ferry_mem *mem;
	pthread_t server;
	uint64_t *ns;
	int fds[2];
	size_t n;

	bench_check(ferry_mem_create(&mem), "creating guest memory");
	bench_check(ferry_mem_add_region(mem, FERRY_BACKING_SHMEM, FLOOR_SIZE,
					 &f.region), "adding a region");
	if (madvise(f.region->alias, FLOOR_SIZE, MADV_POPULATE_WRITE))
		bench_die("populating: %s", strerror(errno));
	ns = calloc(f.region->nr_pages, sizeof(*ns));
	if (!ns)
		bench_die("out of memory");
	socket_pair(t, fds);
	f.fd = fds[0];
	start_thread(&server, page_server, &fds[1]);
	n = floor_sample(uffd, &f, ns);
	shutdown(fds[0], SHUT_WR);
	pthread_join(server, NULL);
	close(fds[0]);
	close(fds[1]);
	bench_put_latency(prefix, ns, n);
	free(ns);
	ferry_mem_destroy(mem);
}

static void run_floor(enum transport t)
{
	struct ferry_uffd uffd;
	char prefix[32];
	int ret;

	snprintf(prefix, sizeof(prefix), "postcopy_floor_%s",
		 transport_names[t]);
	ret = ferry_uffd_open(&uffd, FERRY_UFFD_F_MINOR_SHMEM, 0, false);
	if (ret == -EOPNOTSUPP || ret == -EPERM) {
		bench_put_text(prefix, "skip", ferry_error_msg());
		return;
	}
	bench_check(ret, "opening a userfaultfd");
	floor_run(t, &uffd, prefix);
	ferry_uffd_close(&uffd);
}

int main(int argc, char **argv)
{
	uint64_t start = bench_now_ns();

	bench_start(argc, argv, "net_limits", 90);
	run_streams();
	run_chan_streams();
	run_rtt(TRANSPORT_TCP);
	run_rtt(TRANSPORT_UNIX);
	run_floor(TRANSPORT_TCP);
	run_floor(TRANSPORT_UNIX);
	bench_finish(start);
	return 0;
}
