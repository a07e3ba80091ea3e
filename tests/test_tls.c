// SPDX-License-Identifier: MIT
/*
 * TLS on sessions: migrations over TLS with a pre-shared key and with
 * certificates (ending with the verifier), and every way in that must
 * be refused: a wrong key, no key, a plaintext peer to a TLS listener, a
 * TLS peer to a plaintext listener, an expired or untrusted certificate,
 * plain TCP off loopback, a byte changed on the wire.  Each refusal has
 * a reason on both sides, and the listener then still serves.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry-vm/guest_vm.h"
#include "ferry/net.h"
#include "migpair.h"
#include "netns.h"
#include "test.h"
#include "tlskeys.h"

/* ---- migrations over TLS ------------------------------------------------ */

static enum test_result migrate_psk(struct test_ctx *ctx)
{
	struct tlskeys k;
	struct ferry_net_opts o;
	struct migpair m = { .mode = FERRY_MODE_POSTCOPY };
	enum test_result res;

	KEYS(ctx, &k);
	o = tlskeys_psk(k.psk);
	m.listen_opts = m.connect_opts = &o;
	res = migpair_run(ctx, &m);
	tlskeys_remove(&k);
	if (res != TEST_PASS)
		return res;
	CHECK(ctx, !strcmp(m.dst_auth, "TLS 1.3, key ferry-test"), "auth: %s",
	      m.dst_auth);
	return TEST_PASS;
}

static enum test_result migrate_cert(struct test_ctx *ctx)
{
	struct tlskeys k;
	struct ferry_net_opts lo, co;
	struct migpair m = { .mode = FERRY_MODE_HYBRID, .channels = 3 };
	enum test_result res;

	KEYS(ctx, &k);
	lo = tlskeys_cert(&k, k.b_cert, k.b_key);
	co = tlskeys_cert(&k, k.a_cert, k.a_key);
	m.listen_opts = &lo;
	m.connect_opts = &co;
	res = migpair_run(ctx, &m);
	tlskeys_remove(&k);
	if (res != TEST_PASS)
		return res;
	CHECK(ctx, strstr(m.dst_auth, "certificate CN=host a"), "auth: %s",
	      m.dst_auth);
	return TEST_PASS;
}

/* ---- refusals ----------------------------------------------------------- */

struct attempt {
	pthread_t thread;
	const char *addr;
	struct ferry_net_opts opts;
	int ret;
	char why[512];
};

static void *attempt_main(void *arg)
{
	struct attempt *a = arg;
	struct ferry_session *s = NULL;

	a->ret = ferry_net_connect(a->addr, 1, &a->opts, &s);
	snprintf(a->why, sizeof(a->why), "%s", ferry_error_msg());
	ferry_net_session_close(s);
	return NULL;
}

/*
 * A peer with `bad` options is refused: it hears want_err and a reason
 * with want_peer; the listener's wait says want_listener.  Then a peer
 * with `good` ones gets its session from the same listener.
 */
static enum test_result refused(struct test_ctx *ctx,
				const struct ferry_net_opts *listen,
				const struct ferry_net_opts *bad, int want_err,
				const char *want_peer,
				const char *want_listener,
				const struct ferry_net_opts *good)
{
	struct ferry_net_opts lo = *listen;
	struct attempt a = { .opts = *bad };
	struct ferry_session *s;
	struct ferry_listener *l;

	lo.hello_timeout_ms = 1000;
	bad = &a.opts;
	a.opts.connect_timeout_ms = 3000;
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", &lo, &l));
	a.addr = ferry_net_listener_addr(l);
	CHECK_EQ(ctx, pthread_create(&a.thread, NULL, attempt_main, &a), 0);
	CHECK_EQ(ctx, ferry_net_accept(l, 2500, &s), -ETIMEDOUT);
	CHECK(ctx, strstr(ferry_error_msg(), want_listener),
	      "listener's reason: %s", ferry_error_msg());
	pthread_join(a.thread, NULL);
	CHECK(ctx, a.ret == want_err && strstr(a.why, want_peer),
	      "peer got %d (%s), want %d and '%s'", a.ret, a.why, want_err,
	      want_peer);
	if (!good) {
		ferry_net_listener_close(l);
		return TEST_PASS;
	}
	a = (struct attempt){ .addr = a.addr, .opts = *good };
	CHECK_EQ(ctx, pthread_create(&a.thread, NULL, attempt_main, &a), 0);
	CHECK_OK(ctx, ferry_net_accept(l, 5000, &s));
	pthread_join(a.thread, NULL);
	CHECK(ctx, !a.ret, "the good peer after it: %s", a.why);
	ferry_net_session_close(s);
	ferry_net_listener_close(l);
	return TEST_PASS;
}

static enum test_result wrong_key(struct test_ctx *ctx)
{
	struct ferry_net_opts good, bad;
	struct tlskeys k;
	enum test_result res;

	KEYS(ctx, &k);
	good = tlskeys_psk(k.psk);
	bad = tlskeys_psk(k.psk_other);
	res = refused(ctx, &good, &bad, -EACCES, "refused the TLS handshake",
		      "failed the TLS handshake", &good);
	tlskeys_remove(&k);
	return res;
}

static enum test_result no_key(struct test_ctx *ctx)
{
	struct ferry_net_opts good, plain = { 0 };
	struct tlskeys k;
	enum test_result res;

	KEYS(ctx, &k);
	good = tlskeys_psk(k.psk);
	res = refused(ctx, &good, &plain, -EACCES, "wants TLS",
		      "sent a plain hello; this listener wants TLS", &good);
	tlskeys_remove(&k);
	return res;
}

static enum test_result tls_to_plain(struct test_ctx *ctx)
{
	struct ferry_net_opts tls, plain = { 0 };
	struct tlskeys k;
	enum test_result res;

	KEYS(ctx, &k);
	tls = tlskeys_psk(k.psk);
	res = refused(ctx, &plain, &tls, -EPROTO, "answered in the clear",
		      "sent no ferry hello", &plain);
	tlskeys_remove(&k);
	return res;
}

static enum test_result cert_expired(struct test_ctx *ctx)
{
	struct ferry_net_opts lo, good, bad;
	struct tlskeys k;
	enum test_result res;

	KEYS(ctx, &k);
	lo = tlskeys_cert(&k, k.b_cert, k.b_key);
	good = tlskeys_cert(&k, k.a_cert, k.a_key);
	bad = tlskeys_cert(&k, k.old_cert, k.old_key);
	res = refused(ctx, &lo, &bad, -EACCES, "refused the TLS handshake",
		      "expired", &good);
	tlskeys_remove(&k);
	return res;
}

static enum test_result cert_untrusted(struct test_ctx *ctx)
{
	struct ferry_net_opts lo, good, bad;
	struct tlskeys k;
	enum test_result res;

	KEYS(ctx, &k);
	lo = tlskeys_cert(&k, k.b_cert, k.b_key);
	good = tlskeys_cert(&k, k.a_cert, k.a_key);
	bad = tlskeys_cert(&k, k.rogue_cert, k.rogue_key);
	res = refused(ctx, &lo, &bad, -EACCES, "refused the TLS handshake",
		      "issuer is unknown", &good);
	tlskeys_remove(&k);
	return res;
}

/* The listener's certificate expired: the connecting side refuses it. */
static enum test_result listener_cert_expired(struct test_ctx *ctx)
{
	struct ferry_net_opts lo, good;
	struct tlskeys k;
	enum test_result res;

	KEYS(ctx, &k);
	lo = tlskeys_cert(&k, k.old_cert, k.old_key);
	good = tlskeys_cert(&k, k.a_cert, k.a_key);
	res = refused(ctx, &lo, &good, -EACCES, "certificate is refused",
		      "failed the TLS handshake", NULL);
	tlskeys_remove(&k);
	return res;
}

/* Plain TCP off loopback: refused both ways before any packet. */
static enum test_result plain_off_loopback(struct test_ctx *ctx)
{
	struct ferry_net_opts insecure = { .insecure = true };
	struct ferry_session *s;
	struct ferry_listener *l;
	struct tlskeys k;
	struct ferry_net_opts psk;

	CHECK_EQ(ctx, ferry_net_listener_open("0.0.0.0:0", NULL, &l), -EPERM);
	CHECK(ctx, strstr(ferry_error_msg(), "in the clear") &&
	      strstr(ferry_error_msg(), "insecure"), "reason: %s",
	      ferry_error_msg());
	CHECK_EQ(ctx, ferry_net_listener_open(":0", NULL, &l), -EPERM);
	CHECK_OK(ctx, ferry_net_listener_open("0.0.0.0:0", &insecure, &l));
	ferry_net_listener_close(l);
	CHECK_EQ(ctx, ferry_net_connect("169.254.77.2:7650", 1, NULL, &s),
		 -EPERM);
	CHECK(ctx, strstr(ferry_error_msg(), "connecting to 169.254.77.2:7650 "
			  "in the clear"), "reason: %s", ferry_error_msg());
	KEYS(ctx, &k);
	psk = tlskeys_psk(k.psk);
	CHECK_OK(ctx, ferry_net_listener_open("0.0.0.0:0", &psk, &l));
	ferry_net_listener_close(l);
	chmod(k.psk, 0644);
	CHECK_EQ(ctx, ferry_net_listener_open("127.0.0.1:0", &psk, &l),
		 -EACCES);
	CHECK(ctx, strstr(ferry_error_msg(), "chmod 600"), "reason: %s",
	      ferry_error_msg());
	tlskeys_remove(&k);
	return TEST_PASS;
}

/* ---- a byte changed on the wire ----------------------------------------- */

struct proxy {
	pthread_t thread;
	int lfd, port;
	int target_port;
	size_t flip_at;		/* client-to-server byte to flip */
};

static int tcp_listen(int *port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) ||
	    listen(fd, 8) || getsockname(fd, (struct sockaddr *)&sin, &len))
		return -1;
	*port = ntohs(sin.sin_port);
	return fd;
}

static int tcp_connect(int port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_port = htons(port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd >= 0 && connect(fd, (struct sockaddr *)&sin, sizeof(sin))) {
		close(fd);
		return -1;
	}
	return fd;
}

/* One connection through: bytes both ways, one of them flipped. */
static void proxy_pump(struct proxy *p, int a, int b)
{
	struct pollfd pfd[2] = { { a, POLLIN, 0 }, { b, POLLIN, 0 } };
	size_t up = 0;
	char buf[65536];

	while (poll(pfd, 2, 5000) > 0) {
		for (int i = 0; i < 2; i++) {
			ssize_t n;

			if (!pfd[i].revents)
				continue;
			n = recv(pfd[i].fd, buf, sizeof(buf), 0);
			if (n <= 0)
				return;
			if (i == 0 && up <= p->flip_at &&
			    p->flip_at < up + (size_t)n)
				buf[p->flip_at - up] ^= 0x01;
			up += i == 0 ? (size_t)n : 0;
			if (send(pfd[!i].fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
				return;
		}
	}
}

static void *proxy_main(void *arg)
{
	struct proxy *p = arg;
	int a = accept(p->lfd, NULL, NULL), b = tcp_connect(p->target_port);

	if (a >= 0 && b >= 0)
		proxy_pump(p, a, b);
	if (a >= 0)
		close(a);
	if (b >= 0)
		close(b);
	return NULL;
}

struct fd_side {
	pthread_t thread;
	int fds[2];
	bool client;
	struct ferry_net_opts opts;
	struct ferry_session *s;
	int ret;
	char why[512];
};

static void *fd_side_main(void *arg)
{
	struct fd_side *f = arg;

	f->ret = ferry_net_session_from_fds(f->fds, 1, f->client, &f->opts,
					    &f->s);
	snprintf(f->why, sizeof(f->why), "%s", ferry_error_msg());
	return NULL;
}

/* Sessions of one bulk channel through the proxy, urgent on a pair. */
static enum test_result proxied_sessions(struct test_ctx *ctx,
					 struct proxy *p,
					 const struct ferry_net_opts *o,
					 struct fd_side *client,
					 struct fd_side *server)
{
	int lfd = tcp_listen(&p->target_port), pair[2];

	p->lfd = tcp_listen(&p->port);
	CHECK(ctx, lfd >= 0 && p->lfd >= 0, "listen");
	CHECK_EQ(ctx, socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
	CHECK_EQ(ctx, pthread_create(&p->thread, NULL, proxy_main, p), 0);
	*client = (struct fd_side){ .fds = { tcp_connect(p->port), pair[0] },
				    .client = true, .opts = *o };
	*server = (struct fd_side){ .fds = { accept(lfd, NULL, NULL),
					     pair[1] }, .opts = *o };
	close(lfd);
	CHECK(ctx, client->fds[0] >= 0 && server->fds[0] >= 0, "connect");
	CHECK_EQ(ctx, pthread_create(&client->thread, NULL, fd_side_main,
				     client), 0);
	fd_side_main(server);
	pthread_join(client->thread, NULL);
	CHECK(ctx, !client->ret && !server->ret, "sessions from fds: %s / %s",
	      client->why, server->why);
	return TEST_PASS;
}

/*
 * A bulk channel through a proxy that flips one bit of the 200000th byte
 * the sender sends: the receiver's recv fails on the record's tag and
 * says the stream was altered; it never hands out altered data.
 */
static enum test_result byte_flipped(struct test_ctx *ctx)
{
	struct proxy p = { .flip_at = 200000 };
	struct fd_side client, server;
	struct tlskeys k;
	struct ferry_net_opts o;
	uint8_t *buf = calloc(1, 1 << 20);
	struct iovec iov = { buf, 1 << 20 };
	enum test_result res;

	CHECK(ctx, buf, "out of memory");
	KEYS(ctx, &k);
	o = tlskeys_psk(k.psk);
	res = proxied_sessions(ctx, &p, &o, &client, &server);
	tlskeys_remove(&k);
	if (res != TEST_PASS)
		return res;
	CHECK_EQ(ctx, ferry_chan_sendv(client.s->bulk[0], &iov, 1), 1 << 20);
	CHECK_EQ(ctx, ferry_chan_recv(server.s->bulk[0], buf, 1 << 20),
		 -EBADMSG);
	CHECK(ctx, strstr(ferry_error_msg(), "bulk 0 from") &&
	      strstr(ferry_error_msg(), "altered"), "reason: %s",
	      ferry_error_msg());
	ferry_net_session_close(client.s);
	ferry_net_session_close(server.s);
	pthread_join(p.thread, NULL);
	close(p.lfd);
	free(buf);
	return TEST_PASS;
}

/* ---- two hosts over TLS ------------------------------------------------- */

struct far {
	int ret;
	char why[400];
	char auth[FERRY_NET_AUTH_MAX];
};

/* Host b: listen with its certificate, receive, run on, verify. */
static void far_dest(struct netns_pair *ns, const struct tlskeys *k, int fd)
{
	struct ferry_net_opts o = tlskeys_cert(k, k->b_cert, k->b_key);
	struct ferry_listener *l = NULL;
	struct far r = { 0 };

	r.ret = netns_enter(ns, 'b') ? -errno : 0;
	if (!r.ret)
		r.ret = ferry_net_listener_open(NETNS_ADDR_B ":7651", &o, &l);
	if (!r.ret) {
		struct ferry_session *s = NULL;
		struct ferry_guest_dest dd = { .keep_backing = true };
		struct ferry_migrate_stats st;
		struct ferry_verify_report rep;
		struct ferry_vm vm;

		r.ret = ferry_net_accept(l, 30000, &s);
		if (!r.ret)
			snprintf(r.auth, sizeof(r.auth), "%s", s->auth);
		if (!r.ret)
			r.ret = ferry_migrate_recv(s, ferry_guest_vm_dest_ops(),
						   &dd, NULL, &vm, &st);
		ferry_net_session_close(s);
		if (!r.ret) {
			usleep(100000);
			r.ret = ferry_guest_stop(dd.gv->guest);
		}
		if (!r.ret)
			r.ret = ferry_guest_verify(dd.gv->guest, &rep);
		if (!r.ret && !rep.ok)
			r.ret = -EBADMSG;
		if (!r.ret && rep.vcpu[2].mp_state != FERRY_MP_STOPPED)
			r.ret = -EINVAL;
	}
	snprintf(r.why, sizeof(r.why), "%s", r.ret == -EBADMSG ?
		 "the verifier found lost, torn or duplicated writes" :
		 r.ret == -EINVAL ? "vCPU 2 did not stay off" :
		 ferry_error_msg());
	_exit(write(fd, &r, sizeof(r)) == sizeof(r) ? 0 : 2);
}

static int far_send(const struct tlskeys *k, struct ferry_guest_vm *gv)
{
	struct ferry_net_opts o = tlskeys_cert(k, k->a_cert, k->a_key);
	struct ferry_migrate_stats st;
	struct ferry_migrate_opts mo;
	struct ferry_session *s = NULL;
	int ret = -ECONNREFUSED;

	for (int i = 0; i < 200 && ret == -ECONNREFUSED; i++) {
		ret = ferry_net_connect(NETNS_ADDR_B ":7651", 2, &o, &s);
		if (ret == -ECONNREFUSED)
			usleep(10000);
	}
	ferry_migrate_opts_init(&mo);
	mo.mode = FERRY_MODE_HYBRID;
	if (!ret)
		ret = ferry_migrate_send(&gv->vm, s, &mo, &st);
	ferry_net_session_close(s);
	return ret;
}

/*
 * From one network namespace to another over a veth pair, with
 * certificates: not loopback, so TLS is what lets it through; the
 * destination verifies the VM.
 */
static enum test_result netns_cert(struct test_ctx *ctx)
{
	struct netns_pair ns = { 0 };
	struct ferry_guest_config cfg;
	struct ferry_guest_vm *src;
	struct tlskeys k;
	struct far r = { 0 };
	char why[200];
	int fds[2], ret;
	pid_t child;

	if (netns_setup(&ns, "tbf rate 1gbit burst 128kb latency 100ms", why,
			sizeof(why)))
		SKIP(ctx, "%s", why);
	KEYS(ctx, &k);
	CHECK_EQ(ctx, pipe(fds), 0);
	child = fork();
	if (!child)
		far_dest(&ns, &k, fds[1]);
	close(fds[1]);
	CHECK_EQ(ctx, netns_enter(&ns, 'a'), 0);
	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = 3;
	cfg.seed = 42;
	ferry_guest_config_set_workload(&cfg, "random,read=30,off=2@100");
	CHECK_OK(ctx, ferry_guest_vm_create(&cfg, ctx->backing, 32 << 20,
					    &src));
	CHECK_OK(ctx, ferry_guest_start(src->guest));
	usleep(200000);
	ret = far_send(&k, src);
	snprintf(why, sizeof(why), "%s", ferry_error_msg());
	CHECK_EQ(ctx, read(fds[0], &r, sizeof(r)), sizeof(r));
	waitpid(child, NULL, 0);
	netns_teardown(&ns);
	tlskeys_remove(&k);
	ferry_guest_vm_destroy(src);
	CHECK(ctx, !ret, "source: %s (destination: %s)", why, r.why);
	CHECK(ctx, !r.ret, "destination: %s", r.why);
	CHECK(ctx, strstr(r.auth, "certificate CN=host a"), "auth: %s", r.auth);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "tls_migrate_psk_postcopy", migrate_psk, B_SHMEM | B_HUGETLB, 0,
	  NEED_UFFD_MINOR | NEED_UFFD_MISSING, 32, 60 },
	{ "tls_migrate_cert_hybrid", migrate_cert, B_SHMEM, 0,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR |
	  NEED_UFFD_MISSING, 0, 60 },
	{ "tls_refuses_wrong_key", wrong_key, 0, 0, 0, 0, 0 },
	{ "tls_refuses_no_key", no_key, 0, 0, 0, 0, 0 },
	{ "tls_refuses_tls_to_plain_listener", tls_to_plain, 0, 0, 0, 0, 0 },
	{ "tls_refuses_expired_cert", cert_expired, 0, 0, 0, 0, 0 },
	{ "tls_refuses_untrusted_cert", cert_untrusted, 0, 0, 0, 0, 0 },
	{ "tls_refuses_plain_off_loopback", plain_off_loopback, 0, 0, 0, 0, 0 },
	{ "tls_byte_flipped_fails", byte_flipped, 0, 0, 0, 0, 0 },
	{ "tls_listener_cert_expired", listener_cert_expired, 0, 0, 0, 0, 0 },
	{ "tls_netns_cert_hybrid", netns_cert, B_SHMEM, 0, NEED_ROOT |
	  NEED_NETNS | NEED_UFFD_WP | NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR |
	  NEED_UFFD_MISSING, 0, 90 },
};

TEST_SUITE(tls, cases)
