// SPDX-License-Identifier: MIT
/*
 * migrate: ferry's live migration of the built-in VM over loopback TCP,
 * each figure next to the limit it is judged against, measured in the
 * same run (issue 4's targets):
 *
 *   limit_*          single-stream TCP from a hot buffer; the cold chain
 *                    (guest-sized memory -> one TCP stream -> pwrite into
 *                    a fresh memfd); install rates; the post-copy floor
 *   precopy_*        pre-copy stream rate of a full, idle 1 GiB guest,
 *                    per backing
 *   sparse_*         a 4 GiB guest with 256 MiB touched: time and the
 *                    destination's memory
 *   postcopy_downtime_*  1, 2, 4, 8 GiB, the same 64 MiB dirty set
 *   fault_latency_*  demand faults while the background push runs
 *   faults_per_page_*    page faults per installed 4 KiB, receive path
 *   thp_postcopy_*   huge mappings restored after post-copy on THP
 *   hybrid_*         a 1 GiB guest dirtying as fast as it can
 *
 * Layout: the source VM runs in this process; the destination is a child
 * forked for each migration (before the source VM exists), as two hosts
 * would be, so neither side's page tables or mmap lock are the other's.
 * Every migration ends with the verifier at the destination.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "bench.h"
#include "ferry-vm/guest_vm.h"
#include "ferry/migrate.h"

#define WATCHDOG_S	270	/* bench/run stops a program at 300 s */
/*
 * No part, and no repetition but a part's first, starts after this; one
 * migration takes seconds (a post-copy that waits for the guest to touch
 * its last pages, half a minute).
 */
#define BUDGET_NS	(210 * BENCH_NSEC)
#define REPS		3
#define NR_VCPUS	2
#define PAGE_4K		4096UL

#ifndef MADV_POPULATE_READ
/* Linux 5.14, like MADV_POPULATE_WRITE. */
#define MADV_POPULATE_READ 22
#endif

/* Limits. */
#define STREAM_NS	(BENCH_NSEC / 2)
#define STREAM_CHUNK	(256 * BENCH_KIB)
#define CHAIN_SIZE	BENCH_GIB
#define CHAIN_CHUNK	(2 * BENCH_MIB)
#define FILL_SRC	(64 * BENCH_MIB)
#define FLOOR_SIZE	(64 * BENCH_MIB)
#define FLOOR_BUDGET_NS	(3 * BENCH_NSEC)
#define REQUEST_SIZE	64

/* The migrations. */
#define PRECOPY_MEM	BENCH_GIB
#define SPARSE_MEM	(4 * BENCH_GIB)
#define SPARSE_TOUCHED	(256 * BENCH_MIB)
#define DOWNTIME_WS	(64 * BENCH_MIB)
#define LATENCY_MEM	BENCH_GIB
#define THP_MEM		(512 * BENCH_MIB)
#define HYBRID_MEM	BENCH_GIB
#define ACCEPT_MS	30000
#define SETTLE_MS	60000
#define WARM_BUDGET_NS	(20 * BENCH_NSEC)

static const char *const mode_keys[] = {
	[FERRY_MODE_PRECOPY] = "precopy",
	[FERRY_MODE_POSTCOPY] = "postcopy",
	[FERRY_MODE_HYBRID] = "hybrid",
};

/* ---- small helpers ---------------------------------------------------- */

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / BENCH_NSEC),
			       (long)(ns % BENCH_NSEC) };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static double median_of(const double *vals, size_t n)
{
	double sorted[REPS];

	memcpy(sorted, vals, n * sizeof(*vals));
	qsort(sorted, n, sizeof(*sorted), bench_cmp_double);
	return sorted[n / 2];
}

/*
 * bench_put_spread with a choice of decimals, and no unit when unit is
 * NULL; vals are left as they are.
 */
static void put_spread(const char *prefix, const char *unit,
		       const double *vals, size_t n, int decimals)
{
	double sorted[REPS];
	char key[128];

	memcpy(sorted, vals, n * sizeof(*vals));
	qsort(sorted, n, sizeof(*sorted), bench_cmp_double);
	snprintf(key, sizeof(key), "%s%s%s", prefix, unit ? "_" : "",
		 unit ? unit : "");
	bench_put(key, "min", sorted[0], decimals);
	bench_put(key, "median", sorted[n / 2], decimals);
	bench_put(key, "max", sorted[n - 1], decimals);
}

/* Each value over `limit`, as a spread of ratios. */
static void put_ratio(const char *prefix, const char *unit,
		      const double *vals, size_t n, double limit)
{
	double ratio[REPS];

	for (size_t i = 0; i < n; i++)
		ratio[i] = limit > 0 ? vals[i] / limit : 0;
	put_spread(prefix, unit, ratio, n, 3);
}

static void start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
	int ret = pthread_create(t, NULL, fn, arg);

	if (ret)
		bench_die("starting a thread: %s", strerror(ret));
}

static struct ferry_mem *region_create(enum ferry_backing backing,
				       size_t size, struct ferry_region **r)
{
	struct ferry_mem *mem;

	bench_check(ferry_mem_create(&mem), "creating memory");
	bench_check(ferry_mem_add_region(mem, backing, size, r),
		    "adding a region");
	return mem;
}

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

/* A connected loopback TCP pair, TCP_NODELAY: [0] client, [1] server. */
static void tcp_pair(int fds[2])
{
	struct sockaddr_in addr = { .sin_family = AF_INET,
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(addr);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) ||
	    listen(lfd, 1) || getsockname(lfd, (struct sockaddr *)&addr, &len))
		bench_die("listening on 127.0.0.1: %s", strerror(errno));
	fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fds[0] < 0 ||
	    connect(fds[0], (struct sockaddr *)&addr, sizeof(addr)))
		bench_die("connecting to 127.0.0.1: %s", strerror(errno));
	fds[1] = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fds[1] < 0)
		bench_die("accept: %s", strerror(errno));
	close(lfd);
	for (int i = 0; i < 2; i++)
		if (setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one,
			       sizeof(one)))
			bench_die("TCP_NODELAY: %s", strerror(errno));
}

static void close_pair(int fds[2])
{
	close(fds[0]);
	close(fds[1]);
}

/* ---- limit: one TCP stream from a hot buffer --------------------------- */

struct hot_stream {
	int fds[2];
	uint64_t deadline_ns;	/* set before start */
	uint64_t bytes;		/* by the receiver; read after join */
};

static void *hot_send(void *arg)
{
	struct hot_stream *s = arg;
	uint8_t *buf = bench_alloc(STREAM_CHUNK, 5);

	while (bench_now_ns() < s->deadline_ns) {
		int ret = write_full(s->fds[0], buf, STREAM_CHUNK);

		if (ret)
			bench_die("sending: %s", strerror(-ret));
	}
	shutdown(s->fds[0], SHUT_WR);
	bench_free(buf, STREAM_CHUNK);
	return NULL;
}

static void *hot_receive(void *arg)
{
	struct hot_stream *s = arg;
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

static double hot_stream_once(void)
{
	struct hot_stream s = { 0 };
	pthread_t sender, receiver;
	uint64_t t0;

	tcp_pair(s.fds);
	t0 = bench_now_ns();
	s.deadline_ns = t0 + STREAM_NS;
	start_thread(&receiver, hot_receive, &s);
	start_thread(&sender, hot_send, &s);
	pthread_join(sender, NULL);
	pthread_join(receiver, NULL);
	close_pair(s.fds);
	return bench_gbps(s.bytes, bench_now_ns() - t0);
}

/* GB/s, median of REPS; the spread is printed. */
static double limit_tcp_hot(const char *prefix)
{
	double gbps[REPS];

	for (int rep = 0; rep < REPS; rep++)
		gbps[rep] = hot_stream_once();
	put_spread(prefix, "gbps", gbps, REPS, 2);
	return median_of(gbps, REPS);
}

/* ---- limit: install, and the cold chain ------------------------------- */

/*
 * Write `len` bytes at `off` of a region the way ferry's receiver does:
 * pwrite into the memfd (no page faults), or, hugetlbfs having no
 * write(), a memcpy through the alias.  0 or -errno.
 */
static int install_chunk(struct ferry_region *r, size_t off,
			 const uint8_t *buf, size_t len)
{
	ssize_t n;

	if (r->backing == FERRY_BACKING_HUGETLB) {
		memcpy(r->alias + off, buf, len);
		return 0;
	}
	n = pwrite(r->memfd, buf, len, (off_t)off);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EIO;
}

/* Fill a fresh region from a hot buffer, cycled; GB/s. */
static double install_fill(struct ferry_region *r, const uint8_t *src)
{
	uint64_t t0 = bench_now_ns();

	for (size_t off = 0; off < r->size; off += CHAIN_CHUNK) {
		int ret = install_chunk(r, off, src + off % FILL_SRC,
					CHAIN_CHUNK);

		if (ret)
			bench_die("installing into %s: %s",
				  ferry_mem_backing_name(r->backing),
				  strerror(-ret));
	}
	return bench_gbps(r->size, bench_now_ns() - t0);
}

/* One TCP stream: guest-sized memory in, a fresh region out. */
struct chain {
	int fds[2];
	const uint8_t *src;	/* a fresh mapping of the filled memfd */
	size_t len;
	struct ferry_region *dst;
	uint8_t *buf;		/* the receiver's, touched before timing */
};

static void *chain_send(void *arg)
{
	struct chain *c = arg;

	for (size_t off = 0; off < c->len; off += CHAIN_CHUNK) {
		int ret = write_full(c->fds[0], c->src + off, CHAIN_CHUNK);

		if (ret)
			bench_die("cold chain: sending: %s", strerror(-ret));
	}
	return NULL;
}

static void *chain_receive(void *arg)
{
	struct chain *c = arg;

	for (size_t off = 0; off < c->len; off += CHAIN_CHUNK) {
		int ret = read_full(c->fds[1], c->buf, CHAIN_CHUNK);

		if (!ret)
			ret = install_chunk(c->dst, off, c->buf, CHAIN_CHUNK);
		if (ret)
			bench_die("cold chain: receiving: %s", strerror(-ret));
	}
	return NULL;
}

/*
 * Map the filled memfd afresh and read a word of each 4 KiB through the
 * mapping, as a guest view its vCPUs wrote is mapped when the source
 * first reads it.  On this machine the first access to a page through a
 * mapping costs a few us in the hypervisor, once from user space and
 * once again from the kernel (here, when send() copies it): a mapping
 * used before would hide the second.
 */
static const uint8_t *map_fresh(const struct ferry_region *r)
{
	const volatile uint8_t *p = mmap(NULL, r->size, PROT_READ, MAP_SHARED,
					 r->memfd, 0);

	if (p == MAP_FAILED)
		bench_die("mapping the memfd: %s", strerror(errno));
	if (madvise((void *)p, r->size, MADV_POPULATE_READ))
		bench_die("populating: %s", strerror(errno));
	for (size_t off = 0; off < r->size; off += PAGE_4K)
		(void)p[off];
	return (const uint8_t *)p;
}

static double chain_once(const struct ferry_region *src, uint8_t *buf)
{
	struct chain c = { .src = map_fresh(src), .len = src->size,
			   .buf = buf };
	struct ferry_mem *mem = region_create(src->backing, src->size, &c.dst);
	pthread_t sender, receiver;
	uint64_t t0;

	tcp_pair(c.fds);
	t0 = bench_now_ns();
	start_thread(&receiver, chain_receive, &c);
	start_thread(&sender, chain_send, &c);
	pthread_join(sender, NULL);
	pthread_join(receiver, NULL);
	t0 = bench_now_ns() - t0;
	close_pair(c.fds);
	munmap((void *)c.src, c.len);
	ferry_mem_destroy(mem);
	return bench_gbps(c.len, t0);
}

/* Medians, the yardsticks of one backing's figures. */
struct backing_limits {
	double tcp_hot_gbps;
	double install_gbps;
	double cold_gbps;
	double precopy_gbps;	/* the lower of tcp_hot and install */
};

/*
 * Hot TCP and the install rate into fresh guest-sized memory; the region
 * filled last stays (*mem, *r), the cold chain's source.
 */
static void limit_install(enum ferry_backing b, struct backing_limits *lim,
			  struct ferry_mem **mem, struct ferry_region **r)
{
	const char *name = ferry_mem_backing_name(b);
	uint8_t *src = bench_alloc(FILL_SRC, 3);
	double install[REPS];
	char prefix[64];

	snprintf(prefix, sizeof(prefix), "limit_tcp_x1_hot_%s", name);
	lim->tcp_hot_gbps = limit_tcp_hot(prefix);
	*mem = NULL;
	for (int rep = 0; rep < REPS; rep++) {
		ferry_mem_destroy(*mem);
		*mem = region_create(b, CHAIN_SIZE, r);
		install[rep] = install_fill(*r, src);
	}
	bench_free(src, FILL_SRC);
	snprintf(prefix, sizeof(prefix), "limit_install_%s", name);
	put_spread(prefix, "gbps", install, REPS, 2);
	lim->install_gbps = median_of(install, REPS);
	lim->precopy_gbps = lim->tcp_hot_gbps < lim->install_gbps ?
			    lim->tcp_hot_gbps : lim->install_gbps;
	snprintf(prefix, sizeof(prefix), "limit_precopy_%s", name);
	bench_put(prefix, "gbps", lim->precopy_gbps, 2);
}

static void put_cold(enum ferry_backing b, const double *cold, size_t n,
		     struct backing_limits *lim)
{
	char prefix[64];

	snprintf(prefix, sizeof(prefix), "limit_tcp_x1_cold_%s",
		 ferry_mem_backing_name(b));
	put_spread(prefix, "gbps", cold, n, 2);
	lim->cold_gbps = median_of(cold, n);
}

/*
 * The limits alone (for the parts after part 1, when it did not run):
 * hot TCP, install, then the cold chain from the last region filled: its
 * data in RAM, in no cache, mapped as the source finds a guest view.
 */
static void limit_backing(enum ferry_backing b, struct backing_limits *lim)
{
	uint8_t *buf = bench_alloc(CHAIN_CHUNK, 4);
	struct ferry_mem *mem;
	struct ferry_region *r;
	double cold[REPS];

	limit_install(b, lim, &mem, &r);
	for (int rep = 0; rep < REPS; rep++)
		cold[rep] = chain_once(r, buf);
	ferry_mem_destroy(mem);
	bench_free(buf, CHAIN_CHUNK);
	put_cold(b, cold, REPS, lim);
}

/* ---- limit: the bare post-copy floor ----------------------------------- */

/* The "source": answers a 64-byte request with the page it names. */
static void *page_server(void *arg)
{
	int fd = *(int *)arg;
	uint8_t request[REQUEST_SIZE], reply[PAGE_4K];
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

/* The fault thread's side; only it touches this while faults run. */
struct fetcher {
	int fd;
	struct ferry_region *region;
	uint8_t page[PAGE_4K];
	uint64_t *service_ns;	/* request sent to CONTINUE done */
	size_t nr_service, max_service;
};

/*
 * Fetch, write through the file, map: post-copy's path.  The time from
 * the request to the page mapped is the span ferry's own fault latency
 * covers (the destination's stamp is taken as the request goes out).
 */
static int resolve_fetch(struct bench_fault_server *srv, uint8_t *page)
{
	struct fetcher *f = srv->ctx;
	uint64_t offset = (uint64_t)(page - f->region->guest);
	uint8_t request[REQUEST_SIZE] = { 0 };
	uint64_t t0 = bench_now_ns();
	ssize_t n;
	int ret;

	memcpy(request, &offset, sizeof(offset));
	ret = write_full(f->fd, request, sizeof(request));
	if (!ret)
		ret = read_full(f->fd, f->page, PAGE_4K);
	if (ret)
		return ret;
	n = pwrite(f->region->memfd, f->page, PAGE_4K, (off_t)offset);
	if (n != PAGE_4K)
		return n < 0 ? -errno : -EIO;
	n = ferry_uffd_continue(srv->uffd, page, PAGE_4K, 0);
	if (n < 0)
		return (int)n;
	if (f->nr_service < f->max_service)
		f->service_ns[f->nr_service++] = bench_now_ns() - t0;
	return n == PAGE_4K ? 0 : -EIO;
}

static size_t floor_sample(struct ferry_uffd *uffd, struct fetcher *f,
			   uint64_t *access_ns)
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
	n = bench_touch_timed(r->guest, r->page_size, r->nr_pages, access_ns,
			      bench_now_ns() + FLOOR_BUDGET_NS);
	bench_fault_server_stop(&srv);
	bench_floor_verify(r, n);
	return n;
}

/* p50 and p99 of the service span, in ns, for the ratios. */
struct floor {
	double p50_ns, p99_ns;
};

static void floor_run(struct ferry_uffd *uffd, struct floor *fl)
{
	struct fetcher f = { 0 };
	struct ferry_mem *mem = region_create(FERRY_BACKING_SHMEM, FLOOR_SIZE,
					      &f.region);
	uint64_t *access_ns = calloc(f.region->nr_pages, sizeof(uint64_t));
	pthread_t server;
	int fds[2];
	size_t n;

	f.service_ns = calloc(f.region->nr_pages, sizeof(uint64_t));
	f.max_service = f.region->nr_pages;
	if (!access_ns || !f.service_ns)
		bench_die("out of memory");
	if (madvise(f.region->alias, FLOOR_SIZE, MADV_POPULATE_WRITE))
		bench_die("populating: %s", strerror(errno));
	tcp_pair(fds);
	f.fd = fds[0];
	start_thread(&server, page_server, &fds[1]);
	n = floor_sample(uffd, &f, access_ns);
	shutdown(fds[0], SHUT_WR);
	pthread_join(server, NULL);
	close_pair(fds);
	bench_put_latency("limit_postcopy_floor_tcp", access_ns, n);
	bench_put_latency("limit_postcopy_floor_service_tcp", f.service_ns,
			  f.nr_service);
	fl->p50_ns = (double)bench_pct(f.service_ns, f.nr_service, 50);
	fl->p99_ns = (double)bench_pct(f.service_ns, f.nr_service, 99);
	free(access_ns);
	free(f.service_ns);
	ferry_mem_destroy(mem);
}

/* false when the kernel cannot do it here (printed as a skip). */
static bool limit_floor(struct floor *fl)
{
	struct ferry_uffd uffd;
	int ret = ferry_uffd_open(&uffd, FERRY_UFFD_F_MINOR_SHMEM, 0, false);

	if (ret == -EOPNOTSUPP || ret == -EPERM) {
		bench_put_text("limit_postcopy_floor", "skip", ferry_error_msg());
		return false;
	}
	bench_check(ret, "opening a userfaultfd");
	floor_run(&uffd, fl);
	ferry_uffd_close(&uffd);
	return true;
}

/* ---- one migration ---------------------------------------------------- */

/* What to migrate and how. */
struct mig_spec {
	const char *workload;
	enum ferry_backing backing;
	uint64_t mem_size;
	unsigned int channels;
	enum ferry_mode mode;
	uint64_t step_limit;	/* per vCPU; the VM settles there; 0: none */
	uint64_t populate;	/* bytes of the guest view populated (zero
				 * cells) before the vCPUs start */
	uint64_t warm_writes;	/* run until the vCPUs wrote this many */
	uint64_t warm_ns;	/* then on for this long, measuring */
	bool at_once;		/* post-copy with no live pass */
	const char *timeline;	/* record one: <timeline>.timeline, and
				 * <timeline>_round<N>_* figures */
};

/* One progress call of the source, for the timeline. */
struct tl_row {
	uint64_t t_ns, bytes_sent, remaining_bytes, requests;
	enum ferry_phase phase;
	unsigned int round;
};

#define TL_ROWS		4096	/* 80 s at PROGRESS_MS */
#define PROGRESS_MS	20

/* What the destination child sends up its pipe. */
struct dest_report {
	int ret;
	char reason[400];
	struct ferry_migrate_stats stats;
	struct ferry_hist latency;	/* its demand faults, each */
	uint64_t mem_bytes;	/* allocated in its memfds after recv */
	struct ferry_verify_report verify;
};

struct mig_result {
	double canary_gbps;	/* bench_canary_gbps, just before */
	struct ferry_migrate_stats src, dst;
	uint64_t switch_bytes;	/* sent when the source paused */
	uint64_t switch_ns;	/* since the start of ferry_migrate_send */
	uint64_t postcopy_ns;	/* since the start: post-copy began */
	double dirty_gbps;	/* the vCPUs' write rate before migrating */
	uint64_t dest_mem_bytes;
	uint64_t inflight_bytes;	/* queued in the connections at the pause */
	struct ferry_pagefaults src_faults;	/* this process during the send */
	size_t page_size;	/* the guest's */
	unsigned int port;	/* the destination's */
	struct ferry_hist *latency;	/* the destination's demand faults */
	struct ferry_guest *guest;	/* the source's */
	uint64_t start_writes, switch_writes;	/* its writes, so far */
	struct tl_row *tl;	/* the source's progress, when recorded */
	size_t tl_n;
};

static uint64_t mem_allocated(const struct ferry_mem *mem)
{
	uint64_t bytes = 0;

	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		struct stat st;

		if (!fstat(mem->regions[i].memfd, &st))
			bytes += (uint64_t)st.st_blocks * 512;
	}
	return bytes;
}

/*
 * The destination: receive, note its memory, stop and verify.  A child
 * of its own: nothing here may exit through the parent's handlers, which
 * would put the machine's settings back under the parent's feet.
 */
static int dest_receive(struct ferry_listener *l, struct ferry_guest_dest *dd,
			struct dest_report *rep)
{
	struct ferry_session *s = NULL;
	struct ferry_migrate_opts o;
	struct ferry_vm vm;
	int ret = ferry_net_accept(l, ACCEPT_MS, &s);

	ferry_migrate_opts_init(&o);
	o.fault_latency = &rep->latency;
	if (!ret)
		ret = ferry_migrate_recv(s, ferry_guest_vm_dest_ops(), dd, &o,
					 &vm, &rep->stats);
	if (ret)
		snprintf(rep->reason, sizeof(rep->reason), "%s",
			 ferry_error_msg());
	ferry_net_session_close(s);
	return ret;
}

static int dest_verify(struct ferry_guest_dest *dd, struct dest_report *rep)
{
	int ret;

	rep->mem_bytes = mem_allocated(dd->gv->mem);
	ret = ferry_guest_stop(dd->gv->guest);
	if (!ret)
		ret = ferry_guest_verify(dd->gv->guest, &rep->verify);
	if (ret)
		snprintf(rep->reason, sizeof(rep->reason), "verifying: %s",
			 ferry_error_msg());
	return ret;
}

static void dest_child(struct ferry_listener *l, int fd)
{
	struct ferry_guest_dest dd = { .keep_backing = true };
	static struct dest_report rep;
	ssize_t n;

	ferry_hist_init(&rep.latency);
	bench_nr_restores = 0;	/* the parent's to put back, not ours */
	signal(SIGALRM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGPIPE, SIG_IGN);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	rep.ret = dest_receive(l, &dd, &rep);
	if (!rep.ret)
		rep.ret = dest_verify(&dd, &rep);
	ferry_guest_vm_destroy(dd.gv);
	n = write(fd, &rep, sizeof(rep));
	_exit(n == sizeof(rep) ? 0 : 2);
}

static void dest_collect(int fd, pid_t child, struct dest_report *rep)
{
	int ret = read_full(fd, rep, sizeof(*rep)), status;

	close(fd);
	waitpid(child, &status, 0);
	if (ret)
		bench_die("the destination process died (status %#x)", status);
	if (rep->ret)
		bench_die("destination: %s", rep->reason);
	if (!rep->verify.ok)
		bench_die("verifier at the destination: %llu lost, %llu torn, "
			  "%llu duplicated, %llu read errors",
			  (unsigned long long)rep->verify.lost,
			  (unsigned long long)rep->verify.torn,
			  (unsigned long long)rep->verify.duplicated,
			  (unsigned long long)rep->verify.read_errors);
}

/*
 * Bytes queued in the migration's TCP connections (those to or from the
 * listening port): unacknowledged at the sender, unread at the receiver.
 * What the destination must still read before it sees a record sent now.
 */
static uint64_t inflight_bytes(unsigned int port)
{
	unsigned int lport, rport, tx, rx, state;
	uint64_t bytes = 0;
	char line[256];
	FILE *f = fopen("/proc/net/tcp", "re");

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, " %*u: %*x:%x %*x:%x %x %x:%x", &lport,
			   &rport, &state, &tx, &rx) != 5 || state != 1)
			continue;	/* 1: ESTABLISHED */
		if (rport == port)
			bytes += tx;
		if (lport == port)
			bytes += rx;
	}
	if (f)
		fclose(f);
	return bytes;
}

static uint64_t guest_writes(struct ferry_guest *g);

/* On ferry's sending thread: the pause, post-copy, and the timeline. */
static void on_progress(const struct ferry_progress *p, void *arg)
{
	struct mig_result *res = arg;

	if (res->tl && res->tl_n < TL_ROWS)
		res->tl[res->tl_n++] = (struct tl_row){
			.t_ns = p->elapsed_ns, .bytes_sent = p->bytes_sent,
			.remaining_bytes = p->remaining * res->page_size,
			.requests = p->pages_requested, .phase = p->phase,
			.round = p->round };

	if (p->phase == FERRY_PHASE_POSTCOPY && !res->postcopy_ns)
		res->postcopy_ns = p->elapsed_ns;
	if (p->phase != FERRY_PHASE_SWITCHOVER || res->switch_ns)
		return;		/* the pause: the phase's first call */
	res->switch_bytes = p->bytes_sent;
	res->switch_ns = p->elapsed_ns;
	res->switch_writes = guest_writes(res->guest);
	res->inflight_bytes = inflight_bytes(res->port);
}

static uint64_t guest_writes(struct ferry_guest *g)
{
	struct ferry_guest_stats st;

	ferry_guest_stats(g, &st);
	return st.writes;
}

/* Run the VM to where the spec wants it, measuring its write rate. */
static void warm_up(const struct mig_spec *sp, struct ferry_guest *g,
		    struct mig_result *res)
{
	uint64_t deadline = bench_now_ns() + WARM_BUDGET_NS, w0, t0;

	if (sp->step_limit)
		bench_check(ferry_guest_wait_settled(g, SETTLE_MS),
			    "waiting for the vCPUs to settle");
	while (guest_writes(g) < sp->warm_writes &&
	       bench_now_ns() < deadline)
		sleep_ns(5000000);
	w0 = guest_writes(g);
	t0 = bench_now_ns();
	sleep_ns(sp->warm_ns);
	res->dirty_gbps = bench_gbps((guest_writes(g) - w0) * FERRY_CELL_SIZE,
				     bench_now_ns() - t0);
}

/*
 * Give the guest view its pages before the vCPUs start, so that they run
 * at full speed from their first step: populate (the kernel's first
 * touch), then write zeroes over the zeroes through the view (on this
 * machine a page's first access from the process costs a few us more,
 * in the hypervisor).  A zero cell is a never-written cell: the verifier
 * sees nothing of this.
 */
static void prefault(uint8_t *guest, size_t len)
{
	if (madvise(guest, len, MADV_POPULATE_WRITE))
		bench_die("populating the guest: %s", strerror(errno));
	memset(guest, 0, len);
}

static struct ferry_guest_vm *source_create(const struct mig_spec *sp,
					    struct mig_result *res)
{
	struct ferry_guest_config cfg;
	struct ferry_guest_vm *gv;

	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = NR_VCPUS;
	cfg.step_limit = sp->step_limit;
	bench_check(ferry_guest_config_set_workload(&cfg, sp->workload),
		    "workload spec");
	bench_check(ferry_guest_vm_create(&cfg, sp->backing, sp->mem_size,
					  &gv), "building the source VM");
	if (sp->populate)
		prefault(gv->mem->regions[0].guest, sp->populate);
	bench_check(ferry_guest_start(gv->guest), "starting the source VM");
	warm_up(sp, gv->guest, res);
	return gv;
}

static void source_send(const struct mig_spec *sp, const char *addr,
			struct ferry_guest_vm *gv, struct mig_result *res)
{
	struct ferry_migrate_opts o;
	struct ferry_session *s;

	ferry_migrate_opts_init(&o);
	o.mode = sp->mode;
	o.progress = on_progress;
	o.progress_arg = res;
	o.progress_ms = PROGRESS_MS;
	o.postcopy_at_once = sp->at_once;
	bench_check(ferry_net_connect(addr, sp->channels, NULL, &s),
		    "connecting to the destination");
	bench_check(ferry_pagefaults_start(&res->src_faults, FERRY_PAGEFAULTS_PROCESS),
		    "counting faults");
	res->guest = gv->guest;
	res->start_writes = guest_writes(gv->guest);
	bench_check(ferry_migrate_send(&gv->vm, s, &o, &res->src),
		    "migrating");
	bench_check(ferry_pagefaults_stop(&res->src_faults), "counting faults");
	ferry_net_session_close(s);
}

static void migrate_once(const struct mig_spec *sp, struct mig_result *res)
{
	struct ferry_listener *l;
	struct ferry_guest_vm *gv;
	static struct dest_report rep;
	int fds[2];
	pid_t child;

	memset(res, 0, sizeof(*res));
	res->canary_gbps = bench_canary_gbps();
	res->page_size = ferry_mem_backing_page_size(sp->backing);
	if (sp->timeline) {
		res->tl = calloc(TL_ROWS, sizeof(*res->tl));
		if (!res->tl)
			bench_die("timeline: out of memory");
	}
	bench_check(ferry_net_listener_open("127.0.0.1:0", NULL, &l),
		    "listening on loopback");
	if (pipe2(fds, O_CLOEXEC))
		bench_die("pipe: %s", strerror(errno));
	fflush(stdout);
	child = fork();
	if (child < 0)
		bench_die("fork: %s", strerror(errno));
	if (child == 0) {
		close(fds[0]);
		dest_child(l, fds[1]);
	}
	close(fds[1]);
	res->port = (unsigned int)ferry_net_listener_port(l);
	gv = source_create(sp, res);
	source_send(sp, ferry_net_listener_addr(l), gv, res);
	ferry_net_listener_close(l);
	dest_collect(fds[0], child, &rep);
	ferry_guest_vm_destroy(gv);
	res->dst = rep.stats;
	res->dest_mem_bytes = rep.mem_bytes;
	res->latency = malloc(sizeof(*res->latency));
	if (!res->latency)
		bench_die("latency: out of memory");
	ferry_hist_init(res->latency);
	ferry_hist_add(res->latency, &rep.latency);
}

/* The repetitions of one figure; fewer when time has run out. */
struct mig_set {
	struct mig_result res[REPS];
	size_t n;
};

/* After this, no repetition but a part's first starts (set in main). */
static uint64_t reps_deadline_ns;

static void migrate_reps(const struct mig_spec *sp, struct mig_set *set)
{
	for (set->n = 0; set->n < REPS; set->n++) {
		if (set->n && bench_now_ns() > reps_deadline_ns)
			break;
		migrate_once(sp, &set->res[set->n]);
	}
}

/* ---- timelines and distributions ------------------------------------- */

/* The repetition whose total time is the median: the one drawn. */
static size_t median_rep(const struct mig_set *set)
{
	size_t best = 0;

	for (size_t i = 0; i < set->n; i++) {
		size_t below = 0;

		for (size_t j = 0; j < set->n; j++)
			below += set->res[j].src.total_ns <
				 set->res[i].src.total_ns;
		if (below == set->n / 2)
			best = i;
	}
	return best;
}

/*
 * Per pre-copy round of one migration, from its progress calls (one at
 * each round's start): the dirty set the round set out to send, what it
 * sent, how long it took.  <prefix>_round<N>_{dirty_mib,sent_mib,ms}.
 */
static void put_rounds(const char *prefix, const struct mig_result *r)
{
	for (size_t i = 0; i < r->tl_n; i++) {
		const struct tl_row *a = &r->tl[i], *b = NULL;
		char key[96];

		/*
		 * A round's start: its first call, or in the pause (pre-copy's
		 * last round) the call with a dirty set after the pause's own.
		 */
		if (a->phase == FERRY_PHASE_SWITCHOVER) {
			if (!a->remaining_bytes || (i && r->tl[i - 1].phase ==
			    a->phase && r->tl[i - 1].remaining_bytes))
				continue;
		} else if (a->phase != FERRY_PHASE_PRECOPY ||
			   (i && r->tl[i - 1].phase == a->phase &&
			    r->tl[i - 1].round == a->round)) {
			continue;
		}
		for (size_t j = i + 1; j < r->tl_n && !b; j++)
			if (r->tl[j].phase != a->phase ||
			    r->tl[j].round != a->round)
				b = &r->tl[j];
		if (!b)
			break;
		snprintf(key, sizeof(key), "%s_round%u", prefix, a->round);
		bench_put(key, "dirty_mib",
			  (double)a->remaining_bytes / BENCH_MIB, 1);
		bench_put(key, "sent_mib",
			  (double)(b->bytes_sent - a->bytes_sent) / BENCH_MIB, 1);
		bench_put(key, "ms", (double)(b->t_ns - a->t_ns) / 1e6, 1);
	}
}

/*
 * <name>.timeline beside the figures (columns named in its header, as
 * bench/report reads them), from the repetition of median total time; its
 * rounds as figures; the destination's demand faults of every repetition
 * as <prefix>.hist.  Then the set's memory goes.
 */
/*
 * <name>.timeline beside the figures: one migration's progress calls,
 * columns named in its header as bench/report reads them; `which` says
 * which repetition it was.
 */
static void write_timeline(const char *name, const struct mig_spec *sp,
			   const struct mig_result *r, const char *which)
{
	FILE *f = r->tl_n ? bench_out_file(name, ".timeline") : NULL;

	if (!f)
		return;
	fprintf(f, "# ferry %s, %s, %llu MiB, %u channels, %s\n",
		mode_keys[sp->mode], sp->workload,
		(unsigned long long)(sp->mem_size / BENCH_MIB), sp->channels,
		which);
	fprintf(f, "# t_ms phase round bytes_sent remaining_bytes "
		"postcopy_requests\n");
	if (r->src.mode == FERRY_MODE_POSTCOPY && r->switch_ns)
		fprintf(f, "# switch_ms %.1f\n", r->switch_ns / 1e6);
	for (size_t i = 0; i < r->tl_n; i++)
		fprintf(f, "%.1f %s %u %llu %llu %llu\n", r->tl[i].t_ns / 1e6,
			ferry_migrate_phase_name(r->tl[i].phase),
			r->tl[i].round,
			(unsigned long long)r->tl[i].bytes_sent,
			(unsigned long long)r->tl[i].remaining_bytes,
			(unsigned long long)r->tl[i].requests);
	fclose(f);
}

static void set_finish(const char *prefix, const struct mig_spec *sp,
		       struct mig_set *set)
{
	size_t m = median_rep(set);
	const struct mig_result *r = &set->res[m];
	struct ferry_hist *all = malloc(sizeof(*all));
	char which[64];

	if (sp->timeline && r->tl_n) {
		bench_put(prefix, "timeline_rep", (double)m, 0);
		put_rounds(prefix, r);
		snprintf(which, sizeof(which), "repetition %zu of %zu (median "
			 "total time)", m + 1, set->n);
		write_timeline(sp->timeline, sp, r, which);
	}
	if (!all)
		bench_die("latency: out of memory");
	ferry_hist_init(all);
	for (size_t i = 0; i < set->n; i++) {
		ferry_hist_add(all, set->res[i].latency);
		free(set->res[i].latency);
		free(set->res[i].tl);
	}
	if (sp->timeline && sp->mode != FERRY_MODE_PRECOPY)
		bench_write_hist(prefix, all);
	free(all);
}

/* ---- printing a set of migrations ------------------------------------- */

typedef double (*mig_field_fn)(const struct mig_result *res);

static void put_field(const char *prefix, const char *unit,
		      const struct mig_set *set, mig_field_fn fn, int decimals)
{
	double vals[REPS];

	for (size_t rep = 0; rep < set->n; rep++)
		vals[rep] = fn(&set->res[rep]);
	put_spread(prefix, unit, vals, set->n, decimals);
}

static double f_total_ms(const struct mig_result *r)
{
	return (double)r->src.total_ns / 1e6;
}

static double f_src_downtime_ms(const struct mig_result *r)
{
	return (double)r->src.downtime_ns / 1e6;
}

static double f_dst_downtime_ms(const struct mig_result *r)
{
	return (double)r->dst.downtime_ns / 1e6;
}

/* Start to the pause: the live part. */
static double f_live_ms(const struct mig_result *r)
{
	return (double)r->switch_ns / 1e6;
}

/* Post-copy: the source resumed elsewhere to the last page in place. */
static double f_postcopy_ms(const struct mig_result *r)
{
	return r->postcopy_ns ? (double)(r->src.total_ns - r->postcopy_ns) /
				1e6 : 0;
}

static double f_inflight_kib(const struct mig_result *r)
{
	return (double)r->inflight_bytes / BENCH_KIB;
}

static double f_rounds(const struct mig_result *r)
{
	return r->src.rounds;
}

static double f_switch_gbps(const struct mig_result *r)
{
	return bench_gbps(r->switch_bytes, r->switch_ns);
}

static double f_dst_faults_per_page(const struct mig_result *r)
{
	return r->dst.faults_per_installed_page;
}

/* Page faults of the source process per 4 KiB it sent. */
static double f_src_faults_per_page(const struct mig_result *r)
{
	uint64_t sent = r->src.pages_sent + r->src.zero_pages;

	return ferry_pagefaults_per_page(&r->src_faults,
				     sent * (r->page_size / PAGE_4K));
}

static double f_dest_mem_mib(const struct mig_result *r)
{
	return (double)r->dest_mem_bytes / BENCH_MIB;
}

static double f_owed(const struct mig_result *r)
{
	return (double)(r->src.pages_pushed + r->src.pages_requested);
}

static double f_p50_us(const struct mig_result *r)
{
	return (double)r->dst.fault_latency_p50_ns / 1e3;
}

static double f_p99_us(const struct mig_result *r)
{
	return (double)r->dst.fault_latency_p99_ns / 1e3;
}

static double f_max_us(const struct mig_result *r)
{
	return (double)r->dst.fault_latency_max_ns / 1e3;
}

static double f_requested(const struct mig_result *r)
{
	return (double)r->dst.pages_requested;
}

static double f_pushed(const struct mig_result *r)
{
	return (double)r->src.pages_pushed;
}

static double f_pmd_pct(const struct mig_result *r)
{
	return r->dst.guest_bytes ? 100.0 * (double)r->dst.pmd_mapped_bytes /
				    (double)r->dst.guest_bytes : 0;
}

static double f_sent_mib(const struct mig_result *r)
{
	return (double)r->src.bytes_sent / BENCH_MIB;
}

static double f_dirty_gbps(const struct mig_result *r)
{
	return r->dirty_gbps;
}

/* The vCPUs' write rate from the start to the pause. */
static double f_live_dirty_gbps(const struct mig_result *r)
{
	return bench_gbps((r->switch_writes - r->start_writes) *
			  FERRY_CELL_SIZE, r->switch_ns);
}

static void fields(const struct mig_set *set, mig_field_fn fn, double *vals)
{
	for (size_t rep = 0; rep < set->n; rep++)
		vals[rep] = fn(&set->res[rep]);
}

/* "postcopy,postcopy,precopy": how each repetition switched over. */
static void put_modes(const char *prefix, const struct mig_set *set)
{
	printf("%s_mode=", prefix);
	for (size_t rep = 0; rep < set->n; rep++)
		printf("%s%s", rep ? "," : "",
		       mode_keys[set->res[rep].src.mode]);
	printf("\n");
}

/*
 * How many migrations the figures come from, and that every one of them
 * verified (or the program would have stopped); then each repetition's
 * canary (the machine's fresh-memory write rate just before it) beside
 * its main figure, <prefix>_rep<N>_canary_gbps and _<unit>.
 */
static void put_verified(const char *prefix, const struct mig_set *set,
			 const char *unit, mig_field_fn fn)
{
	char key[96];

	bench_put(prefix, "reps", (double)set->n, 0);
	bench_put(prefix, "verify_ok", 1, 0);
	for (size_t rep = 0; rep < set->n; rep++) {
		snprintf(key, sizeof(key), "%s_rep%zu", prefix, rep);
		bench_put(key, "canary_gbps", set->res[rep].canary_gbps, 2);
		bench_put(key, unit, fn(&set->res[rep]), 2);
	}
}

/* ---- 1 and 5: pre-copy stream rate and faults per page, per backing --- */

/* A full, idle 1 GiB guest on backing b, pre-copy over `channels`. */
static struct mig_spec precopy_spec(enum ferry_backing b,
				    unsigned int channels)
{
	uint64_t cells = PRECOPY_MEM / FERRY_CELL_SIZE;

	return (struct mig_spec){ .workload = "seqdirty,read=0", .backing = b,
		.mem_size = PRECOPY_MEM, .channels = channels,
		.mode = FERRY_MODE_PRECOPY, .step_limit = cells / NR_VCPUS,
		.populate = PRECOPY_MEM,
		.timeline = b == FERRY_BACKING_SHMEM && channels == 1 ?
			    "ferry_precopy_idle_1g" : NULL };
}

/*
 * The figures of one channel count; `cold`: the cold chain measured just
 * before each repetition, so ratio_cold is a median of paired ratios.
 */
static void put_precopy(enum ferry_backing b, unsigned int channels,
			struct mig_set *set, const struct backing_limits *lim,
			const double *cold)
{
	struct mig_spec sp = precopy_spec(b, channels);
	double gbps[REPS], paired[REPS];
	char prefix[64];

	snprintf(prefix, sizeof(prefix), "precopy_%s_x%u",
		 ferry_mem_backing_name(b), channels);
	fields(set, f_switch_gbps, gbps);
	put_spread(prefix, "gbps", gbps, set->n, 2);
	put_ratio(prefix, "ratio_limit", gbps, set->n, lim->precopy_gbps);
	for (size_t i = 0; i < set->n; i++)
		paired[i] = cold[i] > 0 ? gbps[i] / cold[i] : 0;
	put_spread(prefix, "ratio_cold", paired, set->n, 3);
	put_field(prefix, "total_ms", set, f_total_ms, 1);
	put_field(prefix, "sent_mib", set, f_sent_mib, 1);
	put_field(prefix, "downtime_ms", set, f_src_downtime_ms, 2);
	put_field(prefix, "inflight_kib", set, f_inflight_kib, 0);
	put_field(prefix, "rounds", set, f_rounds, 0);
	put_field(prefix, "src_faults_per_page", set, f_src_faults_per_page,
		  5);
	put_verified(prefix, set, "gbps", f_switch_gbps);
	snprintf(prefix, sizeof(prefix), "faults_per_page_precopy_%s_x%u",
		 ferry_mem_backing_name(b), channels);
	put_field(prefix, NULL, set, f_dst_faults_per_page, 5);
	snprintf(prefix, sizeof(prefix), "precopy_%s_x%u",
		 ferry_mem_backing_name(b), channels);
	set_finish(prefix, &sp, set);
}

/*
 * Pool pages for the migrations and limits of one backing, or a skip:
 * the cold chain's source and, at once, a migration's two guests.
 */
static bool pool_get(enum ferry_backing b, struct ferry_hugetlb_resv *resv)
{
	char prefix[64];

	if (b != FERRY_BACKING_HUGETLB)
		return true;
	if (!bench_hugetlb_reserve(3 * PRECOPY_MEM / FERRY_HUGE_PAGE_SIZE,
				   resv))
		return true;
	snprintf(prefix, sizeof(prefix), "precopy_%s", ferry_mem_backing_name(b));
	bench_put_text(prefix, "skip", ferry_error_msg());
	return false;
}

/*
 * Hot TCP and install first; then, repetition by repetition, the cold
 * chain, one migration over 1 channel and one over 2: each migration's
 * ratio to the cold chain is to the one measured a moment before it,
 * on the same machine.
 */
static void run_backing(enum ferry_backing b, struct backing_limits *lim)
{
	struct mig_spec x1 = precopy_spec(b, 1), x2 = precopy_spec(b, 2);
	uint8_t *buf = bench_alloc(CHAIN_CHUNK, 4);
	static struct mig_set set1, set2;
	struct ferry_hugetlb_resv resv;
	struct ferry_mem *mem;
	struct ferry_region *r;
	double cold[REPS];
	size_t n;

	if (!pool_get(b, &resv)) {
		bench_free(buf, CHAIN_CHUNK);
		return;
	}
	limit_install(b, lim, &mem, &r);
	for (n = 0; n < REPS; n++) {
		if (n && bench_now_ns() > reps_deadline_ns)
			break;
		cold[n] = chain_once(r, buf);
		migrate_once(&x1, &set1.res[n]);
		migrate_once(&x2, &set2.res[n]);
	}
	set1.n = set2.n = n;
	ferry_mem_destroy(mem);
	bench_free(buf, CHAIN_CHUNK);
	put_cold(b, cold, n, lim);
	put_precopy(b, 1, &set1, lim, cold);
	put_precopy(b, 2, &set2, lim, cold);
	if (b == FERRY_BACKING_HUGETLB)
		bench_hugetlb_restore(&resv);
}

/* ---- 2: a sparse guest ------------------------------------------------ */

/* 4 GiB, the first 256 MiB written once; the library's default mode. */
static struct mig_spec sparse_spec(void)
{
	uint64_t cells = SPARSE_TOUCHED / FERRY_CELL_SIZE;

	return (struct mig_spec){ .workload = "seqdirty,ws=256M,read=0",
		.backing = FERRY_BACKING_SHMEM, .mem_size = SPARSE_MEM,
		.channels = 2, .mode = FERRY_MODE_HYBRID,
		.step_limit = cells / NR_VCPUS, .populate = SPARSE_TOUCHED,
		.timeline = "ferry_hybrid_sparse_4g" };
}

static void run_sparse(double cold_gbps)
{
	struct mig_spec sp = sparse_spec();
	/* The least it can take: the touched memory once, at the limit. */
	double floor_ms = (double)SPARSE_TOUCHED / cold_gbps / 1e6;
	struct mig_set set;
	double vals[REPS];

	migrate_reps(&sp, &set);
	bench_put("sparse", "guest_mib", (double)SPARSE_MEM / BENCH_MIB, 0);
	bench_put("sparse", "touched_mib", (double)SPARSE_TOUCHED / BENCH_MIB,
		  0);
	fields(&set, f_total_ms, vals);
	put_spread("sparse", "total_ms", vals, set.n, 1);
	put_ratio("sparse", "total_ratio_cold", vals, set.n, floor_ms);
	fields(&set, f_dest_mem_mib, vals);
	put_spread("sparse", "dest_mem_mib", vals, set.n, 1);
	put_ratio("sparse", "dest_mem_ratio_touched", vals, set.n,
		  (double)SPARSE_TOUCHED / BENCH_MIB);
	put_field("sparse", "sent_mib", &set, f_sent_mib, 1);
	put_modes("sparse", &set);
	put_verified("sparse", &set, "total_ms", f_total_ms);
	set_finish("sparse", &sp, &set);
}

/* ---- 3: post-copy downtime against guest size ------------------------- */

static void downtime_size(uint64_t gib, double *src_median)
{
	struct mig_spec sp = { .workload = "random,ws=64M,read=0",
		.backing = FERRY_BACKING_SHMEM, .mem_size = gib * BENCH_GIB,
		.channels = 2, .mode = FERRY_MODE_POSTCOPY,
		.warm_writes = 2 * DOWNTIME_WS / FERRY_CELL_SIZE,
		.warm_ns = 200 * 1000000ULL };
	struct mig_set set;
	double vals[REPS];
	char prefix[64];

	migrate_reps(&sp, &set);
	snprintf(prefix, sizeof(prefix), "postcopy_downtime_%llug",
		 (unsigned long long)gib);
	fields(&set, f_src_downtime_ms, vals);
	put_spread(prefix, "src_ms", vals, set.n, 3);
	*src_median = median_of(vals, set.n);
	put_field(prefix, "dst_ms", &set, f_dst_downtime_ms, 3);
	put_field(prefix, "owed_pages", &set, f_owed, 0);
	put_field(prefix, "inflight_kib", &set, f_inflight_kib, 0);
	put_field(prefix, "total_ms", &set, f_total_ms, 1);
	put_verified(prefix, &set, "src_ms", f_src_downtime_ms);
	set_finish(prefix, &sp, &set);
}

static void run_downtime(void)
{
	static const uint64_t sizes[] = { 1, 2, 4, 8 };
	double medians[4];

	for (size_t i = 0; i < 4; i++)
		downtime_size(sizes[i], &medians[i]);
	/* Flat: the 8 GiB guest's median over the 1 GiB guest's. */
	bench_put("postcopy_downtime", "flat_ratio_8g_1g",
		  medians[0] > 0 ? medians[3] / medians[0] : 0, 3);
}

/* ---- 4 and 5: demand faults while the push runs ----------------------- */

static void run_fault_latency(const struct floor *fl)
{
	struct mig_spec sp = { .workload = "random,read=0",
		.backing = FERRY_BACKING_SHMEM, .mem_size = LATENCY_MEM,
		.channels = 2, .mode = FERRY_MODE_POSTCOPY,
		.populate = LATENCY_MEM, .warm_ns = 300 * 1000000ULL,
		.at_once = true, .timeline = "ferry_postcopy_random_1g" };
	struct mig_set set;
	double vals[REPS];

	migrate_reps(&sp, &set);
	fields(&set, f_p50_us, vals);
	put_spread("fault_latency", "us_p50", vals, set.n, 1);
	if (fl)
		put_ratio("fault_latency", "ratio_p50", vals, set.n,
			  fl->p50_ns / 1e3);
	fields(&set, f_p99_us, vals);
	put_spread("fault_latency", "us_p99", vals, set.n, 1);
	if (fl)
		put_ratio("fault_latency", "ratio_p99", vals, set.n,
			  fl->p99_ns / 1e3);
	put_field("fault_latency", "us_max", &set, f_max_us, 1);
	put_field("fault_latency", "samples", &set, f_requested, 0);
	put_field("fault_latency", "pushed", &set, f_pushed, 0);
	put_field("fault_latency", "total_ms", &set, f_total_ms, 1);
	put_field("fault_latency", "sent_mib", &set, f_sent_mib, 1);
	put_field("fault_latency", "live_ms", &set, f_live_ms, 1);
	put_field("fault_latency", "postcopy_ms", &set, f_postcopy_ms, 1);
	put_field("faults_per_page_postcopy_shmem", NULL, &set,
		  f_dst_faults_per_page, 5);
	put_verified("fault_latency", &set, "us_p99", f_p99_us);
	set_finish("fault_latency", &sp, &set);
}

/* ---- 6: huge mappings after post-copy on THP -------------------------- */

static void run_thp(void)
{
	struct mig_spec sp = { .workload = "random,read=0",
		.backing = FERRY_BACKING_THP, .mem_size = THP_MEM,
		.channels = 2, .mode = FERRY_MODE_POSTCOPY,
		.populate = THP_MEM, .warm_ns = 200 * 1000000ULL };
	struct mig_set set;

	migrate_reps(&sp, &set);
	put_field("thp_postcopy", "pmd_mapped_pct", &set, f_pmd_pct, 1);
	put_field("thp_postcopy", "total_ms", &set, f_total_ms, 1);
	put_field("thp_postcopy", "live_ms", &set, f_live_ms, 1);
	put_field("thp_postcopy", "postcopy_ms", &set, f_postcopy_ms, 1);
	put_field("faults_per_page_postcopy_thp", NULL, &set,
		  f_dst_faults_per_page, 5);
	put_verified("thp_postcopy", &set, "pmd_mapped_pct", f_pmd_pct);
	set_finish("thp_postcopy", &sp, &set);
}

/* ---- 7: hybrid, a 1 GiB guest dirtying as fast as it can -------------- */

/* 1 GiB, every page written, random writes at full speed; hybrid. */
static struct mig_spec hybrid_spec(void)
{
	return (struct mig_spec){ .workload = "random,read=0",
		.backing = FERRY_BACKING_SHMEM, .mem_size = HYBRID_MEM,
		.channels = 2, .mode = FERRY_MODE_HYBRID,
		.populate = HYBRID_MEM, .warm_ns = 500 * 1000000ULL,
		.timeline = "ferry_hybrid_dirty_1g" };
}

static void run_hybrid(double cold_gbps)
{
	struct mig_spec sp = hybrid_spec();
	/* The guest's memory sent once at the cold chain's rate. */
	double once_ms = (double)HYBRID_MEM / cold_gbps / 1e6;
	struct mig_set set;
	double vals[REPS];

	migrate_reps(&sp, &set);
	fields(&set, f_total_ms, vals);
	put_spread("hybrid", "total_ms", vals, set.n, 1);
	put_ratio("hybrid", "total_ratio_cold", vals, set.n, once_ms);
	put_field("hybrid", "sent_mib", &set, f_sent_mib, 1);
	put_modes("hybrid", &set);
	put_field("hybrid", "rounds", &set, f_rounds, 0);
	put_field("hybrid", "downtime_src_ms", &set, f_src_downtime_ms, 2);
	put_field("hybrid", "downtime_dst_ms", &set, f_dst_downtime_ms, 2);
	put_field("hybrid", "inflight_kib", &set, f_inflight_kib, 0);
	put_field("hybrid", "dirty_gbps", &set, f_dirty_gbps, 2);
	put_field("hybrid", "dirty_live_gbps", &set, f_live_dirty_gbps, 2);
	put_verified("hybrid", &set, "total_ms", f_total_ms);
	set_finish("hybrid", &sp, &set);
}

/* ---- one migration, for bench/qemu_migrate's side by side ------------ */

static double f_gbps_total(const struct mig_result *r)
{
	return bench_gbps(r->src.bytes_sent, r->src.total_ns);
}

/* The scenario a FERRY_BENCH_ONE name stands for; false if none. */
static bool one_spec(const char *name, struct mig_spec *sp)
{
	static const enum ferry_backing backings[] = {
		FERRY_BACKING_SHMEM, FERRY_BACKING_THP, FERRY_BACKING_HUGETLB,
	};
	char want[64];

	for (size_t i = 0; i < 3; i++)
		for (unsigned int ch = 1; ch <= 2; ch++) {
			snprintf(want, sizeof(want), "precopy_%s_x%u",
				 ferry_mem_backing_name(backings[i]), ch);
			if (!strcmp(name, want)) {
				*sp = precopy_spec(backings[i], ch);
				return true;
			}
		}
	if (!strcmp(name, "hybrid_dirty_1g"))
		*sp = hybrid_spec();
	else if (!strcmp(name, "sparse_4g"))
		*sp = sparse_spec();
	else
		return false;
	return true;
}

static void put_one(const struct mig_result *r)
{
	bench_put("one", "total_ms", f_total_ms(r), 1);
	bench_put("one", "downtime_ms", f_src_downtime_ms(r), 2);
	bench_put("one", "sent_mib", f_sent_mib(r), 1);
	bench_put("one", "gbps", f_gbps_total(r), 3);
	bench_put("one", "stream_gbps", f_switch_gbps(r), 3);
	bench_put("one", "rounds", f_rounds(r), 0);
	bench_put_text("one", "mode", mode_keys[r->src.mode]);
	bench_put("one", "dest_mem_mib", f_dest_mem_mib(r), 1);
	bench_put("one", "dirty_gbps", f_dirty_gbps(r), 3);
	bench_put("one", "dirty_live_gbps", f_live_dirty_gbps(r), 3);
	bench_put("one", "verify_ok", 1, 0);
}

/*
 * FERRY_BENCH_ONE=<scenario>: one migration and its figures (one_*), the
 * ferry half of one of bench/qemu_migrate's pairs; its timeline goes to
 * $FERRY_BENCH_TIMELINE.timeline when that is set.  FERRY_BENCH_ONE=canary
 * prints the canary alone.
 */
static void run_one(const char *name)
{
	struct ferry_hugetlb_resv resv;
	static struct mig_result res;
	const char *tl = getenv("FERRY_BENCH_TIMELINE");
	struct mig_spec sp;

	if (!strcmp(name, "canary")) {
		bench_put("canary", "gbps", bench_canary_gbps(), 3);
		return;
	}
	if (!one_spec(name, &sp))
		bench_die("FERRY_BENCH_ONE: no scenario %s", name);
	sp.timeline = tl && *tl ? tl : NULL;
	if (sp.backing == FERRY_BACKING_HUGETLB)
		bench_check(bench_hugetlb_reserve(2 * sp.mem_size /
						  FERRY_HUGE_PAGE_SIZE, &resv),
			    "reserving huge pages");
	migrate_once(&sp, &res);
	if (sp.backing == FERRY_BACKING_HUGETLB)
		bench_hugetlb_restore(&resv);
	bench_put_text("one", "scenario", name);
	put_one(&res);
	if (sp.timeline)
		write_timeline(sp.timeline, &sp, &res, "one migration");
	free(res.latency);
	free(res.tl);
}

/*
 * FERRY_BENCH_ONLY=precopy,sparse,... runs only the parts named (the
 * limits they are judged against are measured all the same).
 */
static bool selected(const char *part)
{
	const char *only = getenv("FERRY_BENCH_ONLY");
	size_t len = strlen(part);

	for (const char *p = only; p && *p; p += strcspn(p, ",")) {
		p += *p == ',';
		if (!strncmp(p, part, len) && (p[len] == ',' || !p[len]))
			return true;
	}
	return !only || !*only;
}

/*
 * A slow machine is not an error: a part that would start after the
 * budget is skipped, saying so, well before the watchdog.
 */
static bool in_budget(const char *prefix, uint64_t start_ns)
{
	if (bench_now_ns() - start_ns < BUDGET_NS)
		return true;
	printf("%s_skip=the program's time budget of %llu s was spent\n",
	       prefix, (unsigned long long)(BUDGET_NS / BENCH_NSEC));
	return false;
}

static bool part(const char *name, uint64_t start_ns)
{
	return selected(name) && in_budget(name, start_ns);
}

static void run_backings(struct backing_limits *shmem_lim, uint64_t start_ns)
{
	static const enum ferry_backing backings[] = {
		FERRY_BACKING_SHMEM, FERRY_BACKING_THP, FERRY_BACKING_HUGETLB,
	};
	struct backing_limits lim;
	char prefix[32];

	for (size_t i = 0; i < 3 && selected("precopy"); i++) {
		snprintf(prefix, sizeof(prefix), "precopy_%s",
			 ferry_mem_backing_name(backings[i]));
		if (in_budget(prefix, start_ns))
			run_backing(backings[i], i ? &lim : shmem_lim);
	}
}

int main(int argc, char **argv)
{
	uint64_t start = bench_now_ns();
	struct backing_limits shmem_lim = { 0 };
	struct floor fl;
	bool have_floor = false;

	bench_start(argc, argv, "migrate", WATCHDOG_S);
	reps_deadline_ns = start + BUDGET_NS;
	if (getenv("FERRY_BENCH_ONE")) {
		run_one(getenv("FERRY_BENCH_ONE"));
		bench_finish(start);
		return 0;
	}
	printf("migrate_layout=processes\nmigrate_vcpus=%d\n"
	       "migrate_channels=2\n", NR_VCPUS);
	if (selected("fault_latency"))
		have_floor = limit_floor(&fl);
	run_backings(&shmem_lim, start);
	if (!shmem_lim.cold_gbps && (selected("sparse") || selected("hybrid")))
		limit_backing(FERRY_BACKING_SHMEM, &shmem_lim);
	if (part("sparse", start))
		run_sparse(shmem_lim.cold_gbps);
	if (part("postcopy_downtime", start))
		run_downtime();
	if (part("hybrid", start))
		run_hybrid(shmem_lim.cold_gbps);
	if (part("thp_postcopy", start))
		run_thp();
	if (part("fault_latency", start))
		run_fault_latency(have_floor ? &fl : NULL);
	bench_finish(start);
	return 0;
}
