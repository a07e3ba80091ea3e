// SPDX-License-Identifier: MIT
/*
 * Hostile peers and files that must cost little and stop nothing: idle
 * connections that would hold a receiver's slots, a second sender while
 * a migration runs, a 144-byte header claiming 1 TiB (shmem and hugetlb)
 * at the receiver and in a snapshot, and a hugetlb receiver killed with
 * SIGKILL or stopped with SIGTERM, which must leave the huge page pool
 * and the files it made as they were.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry-vm/guest_vm.h"
#include "ferry/hugetlb.h"
#include "ferry/migrate.h"
#include "ferry/net.h"
#include "ferry/restore.h"
#include "migpair.h"
#include "test.h"

#define TIB		(1ULL << 40)
#define MAX_GROWTH	(16ULL << 20)	/* what a hostile claim may cost */

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

/* ---- slots -------------------------------------------------------------- */

/* 20 connections that say nothing, then a real migration gets in. */
static enum test_result idle_then_migration(struct test_ctx *ctx)
{
	struct migpair m = { .mode = FERRY_MODE_PRECOPY };
	int idle[20];
	enum test_result res;

	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL,
					      &m.listener));
	for (int i = 0; i < 20; i++) {
		idle[i] = tcp_connect(ferry_net_listener_port(m.listener));
		CHECK(ctx, idle[i] >= 0, "idle connection %d", i);
	}
	res = migpair_run(ctx, &m);
	for (int i = 0; i < 20; i++)
		close(idle[i]);
	ferry_net_listener_close(m.listener);
	return res;
}

struct sender {
	pthread_t thread;
	const char *addr;
	struct ferry_session *s;
	int ret;
	char why[512];
};

static void *sender_main(void *arg)
{
	struct sender *c = arg;

	c->ret = ferry_net_connect(c->addr, 1, NULL, &c->s);
	snprintf(c->why, sizeof(c->why), "%s", ferry_error_msg());
	return NULL;
}

/* A receiver with its session says "busy" to a second sender. */
static enum test_result second_sender_busy(struct test_ctx *ctx)
{
	struct ferry_session *first;
	struct ferry_listener *l;
	struct sender a = { 0 }, b = { 0 };

	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL, &l));
	a.addr = b.addr = ferry_net_listener_addr(l);
	CHECK_EQ(ctx, pthread_create(&a.thread, NULL, sender_main, &a), 0);
	CHECK_OK(ctx, ferry_net_accept(l, 5000, &first));
	pthread_join(a.thread, NULL);
	CHECK_OK(ctx, a.ret);
	CHECK_OK(ctx, ferry_net_listener_busy(l));
	sender_main(&b);
	CHECK_EQ(ctx, b.ret, -EBUSY);
	CHECK(ctx, strstr(b.why, "is busy: it receives another migration"),
	      "reason: %s", b.why);
	ferry_net_session_close(a.s);
	ferry_net_session_close(first);
	ferry_net_listener_close(l);
	return TEST_PASS;
}

/* ---- 1 TiB in 144 bytes ------------------------------------------------- */

static long status_kb(const char *key)
{
	char line[128];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");
	size_t len = strlen(key);

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, len))
			kb = atol(line + len);
	if (f)
		fclose(f);
	return kb;
}

/* What a forked child found: its verdict and its memory's growth. */
struct claim_result {
	int ret;
	long grew_kb;
	char why[400];
};

/* Reset the peak, then measure how far the peak rises over the start. */
static long rss_start(void)
{
	int fd = open("/proc/self/clear_refs", O_WRONLY);

	if (fd >= 0) {
		if (write(fd, "5", 1) != 1)
			fd = fd;	/* the peak then counts from fork */
		close(fd);
	}
	return status_kb("VmRSS:");
}

static void claim_report(int fd, int ret, long start_kb)
{
	struct claim_result r = { .ret = ret,
				  .grew_kb = status_kb("VmHWM:") - start_kb };

	snprintf(r.why, sizeof(r.why), "%s", ferry_error_msg());
	_exit(write(fd, &r, sizeof(r)) == sizeof(r) ? 0 : 2);
}

static void stream_claim(struct ferry_wire_stream *s, enum ferry_backing b,
			 enum ferry_wire_kind kind)
{
	uint32_t page = b == FERRY_BACKING_HUGETLB ? FERRY_HUGE_PAGE_SIZE :
						     4096;

	*s = (struct ferry_wire_stream){ .version = FERRY_WIRE_VERSION,
		.kind = kind, .nr_vcpus = 1, .nr_regions = 1,
		/* a migration names itself; a snapshot does not */
		.id = kind == FERRY_WIRE_MIGRATION ? 1 : 0 };
	s->regions[0] = (struct ferry_wire_region){ b, page, TIB,
		TIB / page, 0 };
}

struct pool {
	long total, free_pages, surplus, overcommit;
};

static int pool_read(struct pool *p)
{
	char buf[32];
	FILE *f;
	int ret = ferry_hugetlb_pool(&p->total, &p->free_pages);
	const char *base = "/sys/kernel/mm/hugepages/hugepages-2048kB/";

	snprintf(buf, sizeof(buf), "%s", "surplus_hugepages");
	for (int i = 0; i < 2 && !ret; i++) {
		char path[128];

		snprintf(path, sizeof(path), "%s%s", base, i ?
			 "nr_overcommit_hugepages" : "surplus_hugepages");
		f = fopen(path, "r");
		if (!f || fscanf(f, "%ld", i ? &p->overcommit : &p->surplus)
		    != 1)
			ret = -EIO;
		if (f)
			fclose(f);
	}
	return ret;
}

static enum test_result pool_same(struct test_ctx *ctx, const struct pool *a)
{
	struct pool b;

	CHECK_OK(ctx, pool_read(&b));
	CHECK(ctx, a->total == b.total && a->free_pages == b.free_pages &&
	      a->surplus == b.surplus && a->overcommit == b.overcommit,
	      "hugetlb pool was %ld pages (%ld free, %ld surplus, overcommit "
	      "%ld), is %ld (%ld, %ld, %ld)", a->total, a->free_pages,
	      a->surplus, a->overcommit, b.total, b.free_pages, b.surplus,
	      b.overcommit);
	return TEST_PASS;
}

static enum test_result claim_check(struct test_ctx *ctx, int fd,
				    pid_t child, const char *what)
{
	struct claim_result r = { 0 };
	ssize_t n = read(fd, &r, sizeof(r));

	waitpid(child, NULL, 0);
	close(fd);
	CHECK_EQ(ctx, n, sizeof(r));
	CHECK(ctx, r.ret == -E2BIG || r.ret == -ENOMEM, "%s: %d (%s)", what,
	      r.ret, r.why);
	CHECK(ctx, strstr(r.why, "refused before anything"), "reason: %s",
	      r.why);
	CHECK(ctx, r.grew_kb >= 0 && r.grew_kb < (long)(MAX_GROWTH >> 10),
	      "%s: a 1 TiB claim cost %ld KiB", what, r.grew_kb);
	if (getenv("FERRY_TEST_VERBOSE"))
		fprintf(stderr, "    %s: peak RSS grew %ld KiB; %s\n", what,
			r.grew_kb, r.why);
	return TEST_PASS;
}

/* The receiver: a forked process, measured from before its session. */
static void claim_receiver(struct ferry_session *s, int fd)
{
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct ferry_migrate_stats stats;
	struct ferry_vm vm;
	long start = rss_start();
	int ret = ferry_migrate_recv(s, ferry_guest_vm_dest_ops(), &dd, NULL,
				     &vm, &stats);

	claim_report(fd, ret, start);
}

static enum test_result claim_recv(struct test_ctx *ctx)
{
	static struct ferry_wire_frame f;
	struct ferry_session *src, *dst;
	struct ferry_wire_stream s;
	struct ferry_wire_writer w;
	struct pool before;
	enum test_result res;
	int fds[2];
	pid_t child;

	CHECK_OK(ctx, pool_read(&before));
	CHECK_OK(ctx, ferry_net_session_pair(1, &src, &dst));
	CHECK_EQ(ctx, pipe(fds), 0);
	child = fork();
	if (!child) {
		close(fds[0]);
		claim_receiver(dst, fds[1]);
	}
	close(fds[1]);
	ferry_net_session_close(dst);
	stream_claim(&s, ctx->backing, FERRY_WIRE_MIGRATION);
	ferry_wire_writer_init(&w, src->bulk[0]);
	CHECK_OK(ctx, ferry_wire_enc_header(&f, &s));
	CHECK(ctx, ferry_wire_send(&w, &f) > 0, "sending the header");
	res = claim_check(ctx, fds[0], child, "receiver");
	ferry_net_session_close(src);
	return res == TEST_PASS ? pool_same(ctx, &before) : res;
}

/* A snapshot file of a HEADER claiming 1 TiB and one vCPU's state. */
static int claim_file(enum ferry_backing b)
{
	static struct ferry_wire_frame f;
	struct ferry_wire_vcpu v = { .index = 0, .mp_state = FERRY_MP_RUNNABLE };
	struct ferry_wire_stream s;
	struct ferry_wire_writer w;
	struct ferry_chan *chan;
	int fd = open("/tmp", O_TMPFILE | O_RDWR, 0600), ret;

	if (fd < 0 || ferry_chan_fd_open(dup(fd), "claim", &chan))
		return -1;
	stream_claim(&s, b, FERRY_WIRE_SNAPSHOT);
	ferry_wire_writer_init(&w, chan);
	ret = ferry_wire_enc_header(&f, &s);
	if (!ret && ferry_wire_send(&w, &f) < 0)
		ret = -EIO;
	if (!ret)
		ret = ferry_wire_enc_vcpu(&f, &s, &v);
	if (!ret && ferry_wire_send(&w, &f) < 0)
		ret = -EIO;
	ferry_chan_close(chan);
	return ret ? -1 : fd;
}

static enum test_result claim_restore(struct test_ctx *ctx)
{
	struct ferry_restore_opts o = { .mode = FERRY_RESTORE_LAZY };
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct ferry_restore *rs;
	struct pool before;
	int file = claim_file(ctx->backing), fds[2];
	pid_t child;

	CHECK(ctx, file >= 0, "making the snapshot file");
	CHECK_OK(ctx, pool_read(&before));
	CHECK_EQ(ctx, pipe(fds), 0);
	child = fork();
	if (!child) {
		long start = rss_start();
		int ret = ferry_restore_start(file, ferry_guest_vm_dest_ops(),
					      &dd, &o, &rs);

		claim_report(fds[1], ret, start);
	}
	close(fds[1]);
	close(file);
	if (claim_check(ctx, fds[0], child, "restore"))
		return TEST_FAIL;
	return pool_same(ctx, &before);
}

/* ---- signals: the pool and the files as they were ----------------------- */

static pid_t spawn_recv(const char *bin, const char *listen,
			const char *backing)
{
	pid_t pid = fork();

	if (!pid) {
		int null = open("/dev/null", O_WRONLY);

		dup2(null, 1);
		dup2(null, 2);
		execl(bin, "ferry", "recv", "--listen", listen, "--backing",
		      backing, "--timeout", "20", (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Connect, retrying while the receiver starts. */
static int connect_retry(const char *addr, struct ferry_session **s)
{
	int ret = -ECONNREFUSED;

	for (int i = 0; i < 300 && (ret == -ECONNREFUSED || ret == -ENOENT);
	     i++) {
		ret = ferry_net_connect(addr, 1, NULL, s);
		if (ret)
			usleep(10000);
	}
	return ret;
}

/*
 * A hugetlb `ferry recv` that has built its VM from a header (more huge
 * pages than the pool has free: the kernel lends surplus ones), killed
 * with SIGKILL: the pool, its surplus and the overcommit sysctl are as
 * they were before it started.
 */
static enum test_result sigkill_hugetlb_recv(struct test_ctx *ctx)
{
	static struct ferry_wire_frame f;
	struct ferry_session *s;
	struct ferry_wire_stream st;
	struct ferry_wire_writer w;
	struct pool before, during;
	struct ferry_guest_config cfg;
	char bin[PATH_MAX], addr[64];
	static uint8_t desc[512];
	ssize_t desc_len;
	uint64_t pages;
	pid_t pid;

	if (test_ferry_binary(bin, sizeof(bin)))
		SKIP(ctx, "no ferry binary beside the test runner");
	CHECK_OK(ctx, pool_read(&before));
	pages = (uint64_t)before.free_pages + 8;
	snprintf(addr, sizeof(addr), "unix:/tmp/ferry-kill-%d.sock",
		 getpid());
	pid = spawn_recv(bin, addr, "hugetlb");
	CHECK(ctx, pid > 0, "fork");
	CHECK_OK(ctx, connect_retry(addr, &s));
	stream_claim(&st, FERRY_BACKING_HUGETLB, FERRY_WIRE_MIGRATION);
	st.regions[0].size = pages * FERRY_HUGE_PAGE_SIZE;
	st.regions[0].nr_pages = pages;
	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = 1;
	desc_len = ferry_guest_config_encode(&cfg, desc, sizeof(desc));
	CHECK(ctx, desc_len > 0, "machine description");
	st.desc = desc;
	st.desc_len = (uint32_t)desc_len;
	ferry_wire_writer_init(&w, s->bulk[0]);
	CHECK_OK(ctx, ferry_wire_enc_header(&f, &st));
	CHECK(ctx, ferry_wire_send(&w, &f) > 0, "sending the header");
	/* Until its memory is mapped: a loaded machine takes its time. */
	for (int i = 0; i < 6000; i++) {
		CHECK_OK(ctx, pool_read(&during));
		if (during.surplus > before.surplus &&
		    during.overcommit == before.overcommit)
			break;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	ferry_net_session_close(s);
	unlink(addr + 5);
	CHECK(ctx, during.surplus > before.surplus, "the receiver never "
	      "mapped its hugetlb memory (surplus %ld)", during.surplus);
	return pool_same(ctx, &before);
}

/* SIGTERM ends a waiting `ferry recv`, and its socket file goes. */
static enum test_result sigterm_recv(struct test_ctx *ctx)
{
	char bin[PATH_MAX], addr[64];
	int status;
	pid_t pid;

	if (test_ferry_binary(bin, sizeof(bin)))
		SKIP(ctx, "no ferry binary beside the test runner");
	snprintf(addr, sizeof(addr), "unix:/tmp/ferry-term-%d.sock",
		 getpid());
	pid = spawn_recv(bin, addr, "shmem");
	for (int i = 0; i < 500 && access(addr + 5, F_OK); i++)
		usleep(10000);
	CHECK(ctx, !access(addr + 5, F_OK), "the receiver never listened");
	kill(pid, SIGTERM);
	waitpid(pid, &status, 0);
	/* Ended by the signal, or cancelled by it and exited 2. */
	CHECK(ctx, (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) ||
	      (WIFEXITED(status) && WEXITSTATUS(status) == 2),
	      "status %d", status);
	CHECK(ctx, access(addr + 5, F_OK), "%s left behind", addr + 5);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "hostile_20_idle_then_migration", idle_then_migration, B_SHMEM, 0,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 0, 60 },
	{ "hostile_second_sender_hears_busy", second_sender_busy, 0, 0, 0, 0,
	  0 },
	{ "hostile_1tib_claim_costs_receiver_little", claim_recv,
	  B_SHMEM | B_HUGETLB, 0, 0, 1, 30 },
	{ "hostile_1tib_snapshot_costs_restore_little", claim_restore,
	  B_SHMEM | B_HUGETLB, 0, 0, 1, 30 },
	{ "hostile_sigkill_hugetlb_recv_leaves_pool", sigkill_hugetlb_recv, 0,
	  0, NEED_ROOT, 0, 60 },
	{ "hostile_sigterm_recv_removes_socket", sigterm_recv, 0, 0, 0, 0, 30 },
};

TEST_SUITE(hostile, cases)
