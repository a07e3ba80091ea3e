/* SPDX-License-Identifier: MIT */
#ifndef FERRY_BENCH_H
#define FERRY_BENCH_H

/*
 * What every program in bench/ shares.  The Makefile builds each
 * bench/<name>.c into its own program, so the shared code lives here as
 * static functions, one copy per program.
 *
 * Conventions (bench/README.md has the list of keys):
 *
 *   - stdout carries figures only, one per line, "key=value": the key runs
 *     up to the first '=', the value is the rest of the line.  A figure
 *     that cannot be measured here is a "<prefix>_skip=<reason>" line.
 *   - A program prints the machine lines first (bench_start), unless the
 *     environment says FERRY_BENCH_MACHINE=0 (bench/run prints them once);
 *     "<program> --machine" prints only them.
 *   - A slow machine is never an error.  A real error is one line on
 *     stderr, "bench <name>: <reason>", and exit status 1.
 *   - Anything a program changes on the machine (the hugetlb pool, the THP
 *     shmem setting) is put back on every exit path: normal, error, a
 *     signal, or the watchdog that bounds the program's run time.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "ferry/ferry.h"
#include "ferry-vm/guest_vm.h"

#ifndef MADV_POPULATE_WRITE
/* Linux 5.14; older uapi headers lack it. */
#define MADV_POPULATE_WRITE 23
#endif

#define BENCH_KIB	1024UL
#define BENCH_MIB	(1024UL * 1024)
#define BENCH_GIB	(1024UL * 1024 * 1024)
#define BENCH_NSEC	1000000000ULL

#define BENCH_THP_SHMEM "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
#define BENCH_HUGETLB_NR \
	"/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"

static const char *bench_name = "bench";

static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * BENCH_NSEC + (uint64_t)ts.tv_nsec;
}

/* GB/s, 10^9 bytes per second, like every "_gbps" key. */
static inline double bench_gbps(uint64_t bytes, uint64_t ns)
{
	return ns ? (double)bytes / (double)ns : 0.0;
}

/*
 * Settings to put back.  Written in normal context before the change is
 * made, read by the exit and signal paths, so an entry is complete before
 * the count that publishes it grows.
 */
struct bench_restore {
	char path[128];
	char text[32];
};

#define BENCH_MAX_RESTORES 4
static struct bench_restore bench_restores[BENCH_MAX_RESTORES];
static volatile sig_atomic_t bench_nr_restores;

/* 0 or -errno; async-signal-safe, like everything the exit paths use. */
static inline int bench_write_fd(int fd, const char *text)
{
	ssize_t n = write(fd, text, strlen(text));

	return n < 0 ? -errno : 0;
}

/* Write a sysfs file; 0 or -errno. */
static inline int bench_write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), ret;

	if (fd < 0)
		return -errno;
	ret = bench_write_fd(fd, text);
	close(fd);
	return ret;
}

/* Newest first; errors are ignored, there is nothing better to do. */
static inline void bench_restore_all(void)
{
	while (bench_nr_restores > 0) {
		struct bench_restore *r;

		r = &bench_restores[bench_nr_restores - 1];
		bench_write_file(r->path, r->text);
		bench_nr_restores--;
	}
}

static inline void bench_restore_push(const char *path, const char *text)
{
	struct bench_restore *r;

	if (bench_nr_restores >= BENCH_MAX_RESTORES)
		abort();	/* a bug: the table is sized for our own use */
	r = &bench_restores[bench_nr_restores];
	snprintf(r->path, sizeof(r->path), "%s", path);
	snprintf(r->text, sizeof(r->text), "%s", text);
	bench_nr_restores++;
}

/* The newest entry has been put back by its owner: forget it. */
static inline void bench_restore_drop(void)
{
	if (bench_nr_restores > 0)
		bench_nr_restores--;
}

/* Put the newest entry back now and forget it; 0 or -errno. */
static inline int bench_restore_pop(void)
{
	struct bench_restore *r = &bench_restores[bench_nr_restores - 1];
	int ret = bench_write_file(r->path, r->text);

	bench_restore_drop();
	return ret;
}

static inline void bench_on_signal(int sig)
{
	bench_restore_all();
	if (sig == SIGALRM) {
		bench_write_fd(2, "bench ");
		bench_write_fd(2, bench_name);
		bench_write_fd(2, ": watchdog: a step hung past its time "
			       "limit\n");
		_exit(1);
	}
	/* SA_RESETHAND: the default action (stop, or a core dump) follows. */
	raise(sig);
}

static inline void bench_at_exit(void)
{
	bench_restore_all();
}

static inline void bench_catch_signals(void)
{
	static const int sigs[] = {
		SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM, SIGSEGV, SIGBUS,
		SIGABRT, SIGPIPE,
	};
	struct sigaction sa = {
		.sa_handler = bench_on_signal,
		.sa_flags = SA_RESETHAND,
	};

	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	atexit(bench_at_exit);
}

/* One line on stderr, then exit 1; atexit puts the machine back. */
__attribute__((format(printf, 1, 2), noreturn))
static inline void bench_die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "bench %s: ", bench_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* ret < 0 from a ferry call: die naming the step and the library's why. */
static inline void bench_check(long ret, const char *what)
{
	const char *why = ferry_error_msg();

	if (ret >= 0)
		return;
	bench_die("%s: %s", what, why[0] ? why : strerror((int)-ret));
}

/* ---- figures ---------------------------------------------------------- */

static inline void bench_put(const char *prefix, const char *suffix,
			     double value, int decimals)
{
	printf("%s_%s=%.*f\n", prefix, suffix, decimals, value);
}

static inline void bench_put_text(const char *prefix, const char *suffix,
				  const char *text)
{
	printf("%s_%s=%s\n", prefix, suffix, text);
}

static inline int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static inline int bench_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/* <prefix>_<unit>_min / _median / _max of repeated runs (sorts vals). */
static inline void bench_put_spread(const char *prefix, const char *unit,
				    double *vals, size_t n)
{
	char key[128];

	qsort(vals, n, sizeof(*vals), bench_cmp_double);
	snprintf(key, sizeof(key), "%s_%s", prefix, unit);
	bench_put(key, "min", vals[0], 2);
	bench_put(key, "median", vals[n / 2], 2);
	bench_put(key, "max", vals[n - 1], 2);
}

/*
 * The post-copy floor's page server answers a 4 KiB page carrying
 * offset ^ BENCH_PAGE_MAGIC in its first word; every page the vCPU read
 * must hold that, not the stale copy.
 */
#define BENCH_PAGE_MAGIC	0x6665727279706731ULL

static inline void bench_floor_verify(const struct ferry_region *r,
				      size_t nr_pages)
{
	for (size_t i = 0; i < nr_pages; i++) {
		uint64_t word;

		memcpy(&word, r->guest + i * 4096, sizeof(word));
		if ((word ^ BENCH_PAGE_MAGIC) != i * 4096)
			bench_die("post-copy floor: page %zu holds stale data",
				  i);
	}
}

/* Nearest-rank percentile of sorted samples. */
static inline uint64_t bench_pct(const uint64_t *sorted, size_t n, double p)
{
	size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);

	if (rank < 1)
		rank = 1;
	return sorted[(rank > n ? n : rank) - 1];
}

/*
 * $FERRY_BENCH_OUT/<name><ext>, open for writing; NULL (nothing written)
 * when the program runs outside bench/run, which sets FERRY_BENCH_OUT.
 */
static inline FILE *bench_out_file(const char *name, const char *ext)
{
	const char *dir = getenv("FERRY_BENCH_OUT");
	char path[512];
	FILE *f;

	if (!dir || !*dir)
		return NULL;
	snprintf(path, sizeof(path), "%s/%s%s", dir, name, ext);
	f = fopen(path, "we");
	if (!f)
		bench_die("writing %s: %s", path, strerror(errno));
	return f;
}

/*
 * A whole latency distribution, <name>.hist beside the figures: one line
 * per non-empty bucket of the histogram, "<bucket's upper bound, us>
 * <samples>", so the report can plot it (cumulatively).
 */
static inline void bench_write_hist(const char *name,
				    const struct ferry_hist *h)
{
	FILE *f = ferry_hist_count(h) ? bench_out_file(name, ".hist") : NULL;
	uint64_t low, high;

	if (!f)
		return;
	fprintf(f, "# us_le samples (%llu in all, max %.2f us)\n",
		(unsigned long long)ferry_hist_count(h),
		(double)ferry_hist_max(h) / 1e3);
	for (unsigned int b = 0; b < FERRY_HIST_BUCKETS; b++) {
		uint64_t n = ferry_hist_bucket(h, b, &low, &high);

		if (n)
			fprintf(f, "%.3f %llu\n", (double)(high < ferry_hist_max(h) ?
				high : ferry_hist_max(h)) / 1e3,
				(unsigned long long)n);
	}
	fclose(f);
}

/*
 * <prefix>_us_p50 / _us_p99 / _us_max and _samples (sorts ns); the
 * distribution in <prefix>.hist.
 */
static inline void bench_put_latency(const char *prefix, uint64_t *ns,
				     size_t n)
{
	struct ferry_hist *h = malloc(sizeof(*h));

	if (!n)
		bench_die("%s: no samples", prefix);
	if (!h)
		bench_die("%s: out of memory", prefix);
	ferry_hist_init(h);
	for (size_t i = 0; i < n; i++)
		ferry_hist_record(h, ns[i]);
	bench_write_hist(prefix, h);
	free(h);
	qsort(ns, n, sizeof(*ns), bench_cmp_u64);
	bench_put(prefix, "us_p50", (double)bench_pct(ns, n, 50) / 1e3, 2);
	bench_put(prefix, "us_p99", (double)bench_pct(ns, n, 99) / 1e3, 2);
	bench_put(prefix, "us_max", (double)ns[n - 1] / 1e3, 2);
	bench_put(prefix, "samples", (double)n, 0);
}

/* ---- the machine ------------------------------------------------------ */

/* The first line of a small file, or "?"; for sysfs and procfs. */
static inline void bench_read_line(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "re");

	snprintf(buf, len, "?");
	if (!f)
		return;
	if (fgets(buf, (int)len, f))
		buf[strcspn(buf, "\n")] = '\0';
	fclose(f);
}

/* The selected word of "a [b] c" (sysfs choices), or the whole line. */
static inline void bench_read_choice(const char *path, char *buf, size_t len)
{
	char line[256], *open, *close;

	bench_read_line(path, line, sizeof(line));
	open = strchr(line, '[');
	close = open ? strchr(open, ']') : NULL;
	if (open && close) {
		*close = '\0';
		snprintf(buf, len, "%s", open + 1);
	} else {
		snprintf(buf, len, "%s", line);
	}
}

/* "Key: value" from a procfs file such as /proc/meminfo, or -1. */
static inline long long bench_proc_field(const char *path, const char *key)
{
	size_t klen = strlen(key);
	long long value = -1;
	char line[256];
	FILE *f = fopen(path, "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
			value = strtoll(line + klen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return value;
}

static inline void bench_cpu_model(char *buf, size_t len)
{
	char line[256];
	FILE *f = fopen("/proc/cpuinfo", "re");

	snprintf(buf, len, "?");
	while (f && fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':');

		if (strncmp(line, "model name", 10) || !colon)
			continue;
		line[strcspn(line, "\n")] = '\0';
		snprintf(buf, len, "%s", colon + 2);
		break;
	}
	if (f)
		fclose(f);
}

static inline void bench_print_machine(void)
{
	char text[256], date[32];
	struct utsname uts;
	time_t now = time(NULL);

	uname(&uts);
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	bench_cpu_model(text, sizeof(text));
	printf("machine=%s\ncpu=%s\nkernel=%s\n", uts.nodename, text,
	       uts.release);
	printf("cpus=%ld\n", sysconf(_SC_NPROCESSORS_ONLN));
	printf("mem_gib=%.1f\n",
	       (double)bench_proc_field("/proc/meminfo", "MemTotal") /
	       BENCH_MIB);
	printf("date=%s\n", date);
	bench_read_choice(BENCH_THP_SHMEM, text, sizeof(text));
	printf("thp_shmem_enabled=%s\n", text);
	bench_read_line(BENCH_HUGETLB_NR, text, sizeof(text));
	printf("hugetlb_nr_hugepages=%s\n", text);
}

/*
 * Every program starts here: its name for messages, the machine lines,
 * signal handling that puts the machine back, and a watchdog of
 * `limit_s` seconds against a hang (a fault nobody resolves waits in the
 * kernel forever).  Measurement loops bound themselves well below it.
 */
static inline void bench_start(int argc, char **argv, const char *name,
			       unsigned int limit_s)
{
	const char *machine = getenv("FERRY_BENCH_MACHINE");

	bench_name = name;
	if (argc > 1 && strcmp(argv[1], "--machine") == 0) {
		bench_print_machine();
		exit(0);
	}
	if (argc > 1)
		bench_die("usage: %s [--machine]", argv[0]);
	/* Figures reach a pipe (bench/run tees them) as they are made. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	bench_catch_signals();
	alarm(limit_s);
	if (!machine || strcmp(machine, "0"))
		bench_print_machine();
	fflush(stdout);
}

/* The last line of a program: how long it ran. */
static inline void bench_finish(uint64_t start_ns)
{
	char key[64];

	snprintf(key, sizeof(key), "bench_%s", bench_name);
	bench_put(key, "seconds", (double)(bench_now_ns() - start_ns) / 1e9, 1);
	fflush(stdout);
}

/* ---- machine settings ------------------------------------------------- */

/*
 * Grow the hugetlb pool through the library; the exit and signal paths
 * know the old size from the moment the pool may change.  0, or -errno
 * when the pool cannot grow (ferry_error_msg() says why), with the pool as
 * it was.
 */
static inline int bench_hugetlb_reserve(size_t nr_pages,
					struct ferry_hugetlb_resv *resv)
{
	char old[32], now[32];
	int ret;

	bench_read_line(BENCH_HUGETLB_NR, old, sizeof(old));
	bench_restore_push(BENCH_HUGETLB_NR, old);
	ret = ferry_hugetlb_reserve(nr_pages, resv);
	if (!ret)
		return 0;
	/* The library undoes a failed growth itself; make sure of it. */
	bench_read_line(BENCH_HUGETLB_NR, now, sizeof(now));
	if (strcmp(now, old) == 0)
		bench_restore_drop();
	else if (bench_restore_pop())
		bench_die("putting vm.nr_hugepages back to %s failed", old);
	return ret;
}

static inline void bench_hugetlb_restore(struct ferry_hugetlb_resv *resv)
{
	bench_check(ferry_hugetlb_restore(resv), "restoring the hugetlb pool");
	bench_restore_drop();
}

/*
 * Set a sysfs choice for a while; the old choice goes back on
 * bench_setting_restore() or any exit.  0 or -errno (nothing changed).
 */
static inline int bench_setting_change(const char *path, const char *text)
{
	char old[32];
	int ret;

	bench_read_choice(path, old, sizeof(old));
	bench_restore_push(path, old);
	ret = bench_write_file(path, text);
	if (ret)
		bench_restore_drop();
	return ret;
}

static inline void bench_setting_restore(void)
{
	struct bench_restore saved = bench_restores[bench_nr_restores - 1];
	int ret = bench_restore_pop();

	if (ret)
		bench_die("putting '%s' back into %s: %s", saved.text,
			  saved.path, strerror(-ret));
}

/* ---- memory ----------------------------------------------------------- */

/* Non-zero bytes that no page-sharing trick can shortcut. */
static inline void bench_fill_pattern(void *buf, size_t len, uint64_t seed)
{
	uint64_t *w = buf, x = seed | 1;

	for (size_t i = 0; i < len / sizeof(*w); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x | 0x0101010101010101ULL;
	}
}

/* Private anonymous memory, already faulted in, filled with a pattern. */
static inline uint8_t *bench_alloc(size_t len, uint64_t seed)
{
	uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED)
		bench_die("mmap of %zu MiB: %s", len / BENCH_MIB,
			  strerror(errno));
	bench_fill_pattern(p, len, seed);
	return p;
}

static inline void bench_free(void *p, size_t len)
{
	munmap(p, len);
}

/*
 * The canary: how fast this machine gives memory right now.  64 MiB of
 * a hot buffer written into a fresh memfd (2 MiB a pwrite: the kernel
 * allocates and zeroes every page, then copies), timed, in GB/s.  This
 * host's memory is backed lazily by its own host, so that rate swings
 * several-fold from one minute to the next; printed beside a repetition,
 * it shows a repetition that met slow memory as such.  bench/qemu_migrate
 * runs the same one (FERRY_BENCH_ONE=canary build/bench/migrate).
 */
#define BENCH_CANARY_SIZE	(64 * BENCH_MIB)
#define BENCH_CANARY_CHUNK	(2 * BENCH_MIB)

static inline double bench_canary_gbps(void)
{
	static uint8_t *src;
	int fd = memfd_create("ferry-bench-canary", MFD_CLOEXEC);
	uint64_t t0;

	if (!src)
		src = bench_alloc(BENCH_CANARY_CHUNK, 11);
	if (fd < 0)
		bench_die("memfd_create: %s", strerror(errno));
	t0 = bench_now_ns();
	for (size_t off = 0; off < BENCH_CANARY_SIZE;
	     off += BENCH_CANARY_CHUNK)
		if (pwrite(fd, src, BENCH_CANARY_CHUNK, (off_t)off) !=
		    (ssize_t)BENCH_CANARY_CHUNK)
			bench_die("canary: pwrite: %s", strerror(errno));
	t0 = bench_now_ns() - t0;
	close(fd);
	return bench_gbps(BENCH_CANARY_SIZE, t0);
}

/* ---- a userfaultfd fault service for the latency figures -------------- */

struct bench_fault_server;

/*
 * Make the page at `page` (page-aligned guest view address) present:
 * COPY, CONTINUE, or fetch it from somewhere first.  Returns 0, -EEXIST
 * when it was already there, or -errno.
 */
typedef int (*bench_resolve_fn)(struct bench_fault_server *srv,
				uint8_t *page);

/*
 * One thread polls the userfaultfd together with an eventfd that stops it
 * and resolves each fault it reads; the faulting ("vCPU") thread times its
 * own access.  All fields are set before start and only read by the
 * server thread.
 */
struct bench_fault_server {
	struct ferry_uffd *uffd;
	size_t page_size;
	enum ferry_fault_kind expect;	/* anything else is a bug */
	bench_resolve_fn resolve;
	void *ctx;			/* for resolve */
	int stop_fd;
	pthread_t thread;
};

static inline void bench_fault_handle(struct bench_fault_server *srv,
				      const struct uffd_msg *msg)
{
	uintptr_t addr = (uintptr_t)msg->arg.pagefault.address;
	uint8_t *page = (uint8_t *)(addr & ~(uintptr_t)(srv->page_size - 1));
	int ret;

	if (msg->event != UFFD_EVENT_PAGEFAULT)
		bench_die("unexpected userfaultfd event %u", msg->event);
	if (ferry_uffd_fault_kind(msg) != srv->expect)
		bench_die("fault at %p is of kind %d, expected %d", page,
			  ferry_uffd_fault_kind(msg), srv->expect);
	ret = srv->resolve(srv, page);
	/* Somebody installed it first: just wake the faulting thread. */
	if (ret == -EEXIST)
		ret = ferry_uffd_wake(srv->uffd, page, srv->page_size);
	bench_check(ret, "resolving a userfaultfd fault");
}

static inline void bench_fault_drain(struct bench_fault_server *srv)
{
	struct uffd_msg msgs[16];
	ssize_t n;

	while ((n = ferry_uffd_read(srv->uffd, msgs, 16)) > 0)
		for (ssize_t i = 0; i < n; i++)
			bench_fault_handle(srv, &msgs[i]);
	if (n != -EAGAIN)
		bench_check(n ? n : -EIO, "reading userfaultfd events");
}

static inline void *bench_fault_server_main(void *arg)
{
	struct bench_fault_server *srv = arg;
	struct pollfd fds[2] = {
		{ .fd = srv->uffd->fd, .events = POLLIN },
		{ .fd = srv->stop_fd, .events = POLLIN },
	};

	for (;;) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			bench_die("poll on userfaultfd: %s", strerror(errno));
		}
		if (fds[1].revents)
			return NULL;
		if (fds[0].revents & (POLLERR | POLLHUP))
			bench_die("userfaultfd reported an error");
		if (fds[0].revents)
			bench_fault_drain(srv);
	}
}

static inline void bench_fault_server_start(struct bench_fault_server *srv)
{
	int ret;

	srv->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (srv->stop_fd < 0)
		bench_die("eventfd: %s", strerror(errno));
	ret = pthread_create(&srv->thread, NULL, bench_fault_server_main, srv);
	if (ret)
		bench_die("starting the fault thread: %s", strerror(ret));
}

static inline void bench_fault_server_stop(struct bench_fault_server *srv)
{
	uint64_t one = 1;

	if (write(srv->stop_fd, &one, sizeof(one)) != sizeof(one))
		bench_die("stopping the fault thread: %s", strerror(errno));
	pthread_join(srv->thread, NULL);
	close(srv->stop_fd);
}

/*
 * The vCPU side: read one byte of each page in turn, timing each access
 * (the fault round trip when the page is not mapped).  Stops early at
 * `deadline_ns`; returns how many pages it timed.
 */
static inline size_t bench_touch_timed(const uint8_t *base, size_t page_size,
				       size_t nr_pages, uint64_t *ns,
				       uint64_t deadline_ns)
{
	const volatile uint8_t *p = base;
	size_t i;

	for (i = 0; i < nr_pages; i++) {
		uint64_t t0 = bench_now_ns(), t1;

		(void)p[i * page_size];
		t1 = bench_now_ns();
		ns[i] = t1 - t0;
		if (t1 > deadline_ns)
			return i + 1;
	}
	return nr_pages;
}

#endif
