// SPDX-License-Identifier: MIT
/*
 * fcharness: a Firecracker-like VMM (see fcharness.h), on the kernel's
 * interfaces alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fcharness.h"

#define PAGE		4096UL
#define GAP		(64UL << 20)	/* between two regions: an MMIO gap */
#define JSON_MAX	(128 * 1024)
#define MAX_THREADS	8

uint64_t fch_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- the memory file ----------------------------------------------------- */

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* Whole 2 MiB blocks of holes (a huge page with no data), and pages. */
bool fch_is_hole(const struct fch_memfile *m, uint64_t off)
{
	uint64_t page = off / PAGE;

	if (mix(m->seed ^ (page / 512) ^ 0xb10cULL) % 8 == 0)
		return true;
	return mix(m->seed ^ page) % 16 < 3;
}

/* Pages of data that are all zero: written, not holes. */
static bool is_zero_data(const struct fch_memfile *m, uint64_t off)
{
	return !fch_is_hole(m, off) && mix(m->seed ^ (off / PAGE)) % 16 == 3;
}

static uint64_t word(const struct fch_memfile *m, uint64_t off)
{
	return mix(m->seed * 31 + off / 8) | 1;	/* never all zero */
}

uint8_t fch_expected(const struct fch_memfile *m, uint64_t off)
{
	if (fch_is_hole(m, off) || is_zero_data(m, off))
		return 0;
	return (uint8_t)(word(m, off) >> (8 * (off % 8)));
}

static void expected_page(const struct fch_memfile *m, uint64_t off,
			  uint64_t *buf)
{
	bool zero = fch_is_hole(m, off) || is_zero_data(m, off);

	for (uint64_t i = 0; i < PAGE / 8; i++)
		buf[i] = zero ? 0 : word(m, off + i * 8);
}

uint64_t fch_data_pages(const struct fch_memfile *m, uint64_t page_size)
{
	uint64_t n = 0;

	for (uint64_t off = 0; off < m->size; off += page_size)
		for (uint64_t p = off; p < off + page_size; p += PAGE)
			if (!fch_is_hole(m, p)) {
				n++;
				break;
			}
	return n;
}

int fch_memfile_create(struct fch_memfile *m, uint64_t size, uint64_t seed)
{
	uint64_t buf[PAGE / 8];

	m->size = size;
	m->seed = seed;
	m->fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (m->fd < 0 || ftruncate(m->fd, (off_t)size))
		return -errno;
	for (uint64_t off = 0; off < size; off += PAGE) {
		if (fch_is_hole(m, off))
			continue;
		expected_page(m, off, buf);
		if (pwrite(m->fd, buf, PAGE, (off_t)off) != (ssize_t)PAGE)
			return errno ? -errno : -EIO;
	}
	return 0;
}

void fch_memfile_close(struct fch_memfile *m)
{
	if (m->fd >= 0)
		close(m->fd);
	m->fd = -1;
}

/* ---- the VM: memory, userfaultfd, the list ------------------------------- */

struct region {
	uint8_t *base;
	uint64_t size, offset, page_size;
};

struct child {
	const struct fch_memfile *m;
	const struct fch_vm_opts *o;
	struct fch_result *res;
	struct region r[FCH_MAX_REGIONS];
	unsigned int nr;
	int uffd, sock, go_read;
	uint64_t removed_pages;		/* region 0's first pages, discarded */
	atomic_ulong touched;
	atomic_int first;
};

static void fail(struct child *c, int stage_err, const char *what)
{
	c->res->err = stage_err;
	snprintf(c->res->why, sizeof(c->res->why), "%s: %s", what,
		 strerror(stage_err));
	_exit(2);
}

/* Regions back to back in the file, a gap apart in the address space. */
static void map_regions(struct child *c)
{
	uint64_t ps = c->o->hugetlb ? FCH_HUGE : PAGE, half, span;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
	uint8_t *resv, *at;

	c->nr = c->o->nr_regions ? c->o->nr_regions : 2;
	half = c->m->size / c->nr;
	span = c->m->size + GAP + FCH_HUGE;
	resv = mmap(NULL, span, PROT_NONE, flags, -1, 0);
	if (resv == MAP_FAILED)
		fail(c, errno, "reserving address space");
	at = (uint8_t *)(((uintptr_t)resv + FCH_HUGE - 1) & ~(FCH_HUGE - 1));
	for (unsigned int i = 0; i < c->nr; i++) {
		struct region *r = &c->r[i];

		r->size = i + 1 == c->nr ? c->m->size - half * i : half;
		r->offset = half * i;
		r->page_size = ps;
		r->base = mmap(at, r->size, PROT_READ | PROT_WRITE, flags |
			       MAP_FIXED | (c->o->hugetlb ? MAP_HUGETLB : 0),
			       -1, 0);
		if (r->base == MAP_FAILED)
			fail(c, errno, "mapping guest memory");
		at += r->size + GAP;
	}
}

static void open_uffd(struct child *c)
{
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_EVENT_REMOVE };

	c->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (c->uffd < 0 || ioctl(c->uffd, UFFDIO_API, &api))
		fail(c, errno, "userfaultfd");
	for (unsigned int i = 0; i < c->nr; i++) {
		struct uffdio_register reg = {
			.range = { (uintptr_t)c->r[i].base, c->r[i].size },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};

		if (ioctl(c->uffd, UFFDIO_REGISTER, &reg))
			fail(c, errno, "UFFDIO_REGISTER");
	}
}

static size_t write_region(char *buf, size_t len, const struct region *r,
			   enum fch_format f, uint64_t ps)
{
	int n = snprintf(buf, len, "{\"base_host_virt_addr\":%llu,"
			 "\"size\":%llu,\"offset\":%llu",
			 (unsigned long long)(uintptr_t)r->base,
			 (unsigned long long)r->size,
			 (unsigned long long)r->offset);

	if (f == FCH_JSON_CURRENT)
		n += snprintf(buf + n, len - (size_t)n, ",\"page_size\":%llu",
			      (unsigned long long)ps);
	if (f == FCH_JSON_CURRENT || f == FCH_JSON_KIB)
		n += snprintf(buf + n, len - (size_t)n,
			      ",\"page_size_kib\":%llu",
			      (unsigned long long)ps);
	n += snprintf(buf + n, len - (size_t)n, "}");
	return (size_t)n;
}

static size_t write_list(struct child *c, char *buf, size_t len)
{
	size_t n = 1;

	if (c->o->format == FCH_JSON_RAW) {
		n = c->o->raw_len ? c->o->raw_len : strlen(c->o->raw);
		memcpy(buf, c->o->raw, n < len ? n : len);
		return n < len ? n : len;
	}
	buf[0] = '[';
	for (unsigned int i = 0; i < c->nr; i++) {
		if (i)
			buf[n++] = ',';
		n += write_region(buf + n, len - n, &c->r[i], c->o->format,
				  c->o->claim_page_size ?
				  c->o->claim_page_size : c->r[i].page_size);
	}
	for (size_t i = 0; i < c->o->pad && n + 2 < len; i++)
		buf[n++] = ' ';
	buf[n++] = ']';
	return n;
}

/* One sendmsg(): the bytes, and the descriptor(s) on the first. */
static ssize_t send_fds(struct child *c, const char *buf, size_t len)
{
	int fds[2] = { c->uffd, c->uffd }, nfds = c->o->two_fds ? 2 : 1;
	char control[CMSG_SPACE(2 * sizeof(int))];
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;

	if (!c->o->no_fd) {
		memset(control, 0, sizeof(control));
		mh.msg_control = control;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
	}
	return sendmsg(c->sock, &mh, MSG_NOSIGNAL);
}

static void send_all(struct child *c, const char *buf, size_t len)
{
	size_t off = 0, piece = c->o->in_pieces ? len / 3 + 1 : len;

	while (off < len) {
		size_t n = len - off < piece ? len - off : piece;
		ssize_t sent = off ? send(c->sock, buf + off, n, MSG_NOSIGNAL)
				   : send_fds(c, buf, n);

		if (sent <= 0)
			fail(c, sent < 0 ? errno : EPIPE, "sending the list");
		off += (size_t)sent;
		if (c->o->in_pieces)
			usleep(50 * 1000);
	}
}

/* Through the caller's function: a VMM linked with a library. */
static void hand_over_with(struct child *c, const char *sock)
{
	uint64_t quads[4 * FCH_MAX_REGIONS];

	for (unsigned int i = 0; i < c->nr; i++) {
		quads[4 * i] = (uintptr_t)c->r[i].base;
		quads[4 * i + 1] = c->r[i].size;
		quads[4 * i + 2] = c->r[i].offset;
		quads[4 * i + 3] = c->r[i].page_size;
	}
	c->sock = c->o->hand_over(sock, c->uffd, quads, c->nr);
	if (c->sock < 0)
		fail(c, -c->sock, "handing over");
}

static void hand_over(struct child *c, const char *sock)
{
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	char *buf;
	size_t len;

	if (c->o->hand_over) {
		hand_over_with(c, sock);
		c->res->sent_ns = fch_now_ns();
		c->res->stage = FCH_STAGE_SENT;
		return;
	}
	buf = malloc(JSON_MAX);
	if (!buf)
		fail(c, ENOMEM, "list buffer");
	snprintf(un.sun_path, sizeof(un.sun_path), "%s", sock);
	c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->sock < 0 || connect(c->sock, (struct sockaddr *)&un,
				   sizeof(un)))
		fail(c, errno, "connect");
	len = write_list(c, buf, JSON_MAX);
	send_all(c, buf, len);
	free(buf);
	c->res->sent_ns = fch_now_ns();
	c->res->stage = FCH_STAGE_SENT;
}

/* ---- the VM: touching and checking --------------------------------------- */

static size_t nr_pages(const struct child *c)
{
	size_t n = 0;

	for (unsigned int i = 0; i < c->nr; i++)
		n += c->r[i].size / PAGE;
	return n;
}

/* The k-th page to touch: region and offset in it. */
static void nth(const struct child *c, size_t k, unsigned int *ri,
		uint64_t *off)
{
	if (c->o->order) {
		*ri = 0;
		*off = (uint64_t)c->o->order[k] * PAGE;
		return;
	}
	for (*ri = 0; k >= c->r[*ri].size / PAGE; (*ri)++)
		k -= c->r[*ri].size / PAGE;
	*off = (uint64_t)k * PAGE;
}

static size_t nr_wanted(const struct child *c)
{
	return c->o->order ? c->o->order_len : nr_pages(c);
}

struct toucher {
	struct child *c;
	unsigned int index, of;
};

static void *touch_main(void *arg)
{
	struct toucher *t = arg;
	struct child *c = t->c;

	for (size_t k = t->index; k < nr_wanted(c); k += t->of) {
		unsigned int ri;
		uint64_t off;
		volatile const uint8_t *p;

		nth(c, k, &ri, &off);
		p = c->r[ri].base + off;
		(void)*p;
		if (!atomic_exchange(&c->first, 1))
			c->res->first_touch_ns = fch_now_ns();
		if (c->o->exit_after &&
		    atomic_fetch_add(&c->touched, 1) + 1 >= c->o->exit_after)
			_exit(0);	/* a VMM that goes away mid-restore */
	}
	return NULL;
}

static void touch_all(struct child *c)
{
	unsigned int n = c->o->threads ? c->o->threads : 2;
	struct toucher t[MAX_THREADS];
	pthread_t tid[MAX_THREADS];
	struct rusage before, after;

	n = n > MAX_THREADS ? MAX_THREADS : n;
	getrusage(RUSAGE_SELF, &before);
	for (unsigned int i = 0; i < n; i++) {
		t[i] = (struct toucher){ c, i, n };
		if (pthread_create(&tid[i], NULL, touch_main, &t[i]))
			fail(c, EAGAIN, "pthread_create");
	}
	for (unsigned int i = 0; i < n; i++)
		pthread_join(tid[i], NULL);
	getrusage(RUSAGE_SELF, &after);
	c->res->touched_ns = fch_now_ns();
	c->res->minor_faults = (uint64_t)(after.ru_minflt - before.ru_minflt);
	c->res->stage = FCH_STAGE_TOUCHED;
}

static void check_page(struct child *c, unsigned int ri, uint64_t off,
		       bool zero)
{
	uint64_t want[PAGE / 8];
	const uint8_t *got = c->r[ri].base + off, *w = (uint8_t *)want;

	if (zero)
		memset(want, 0, sizeof(want));
	else
		expected_page(c->m, c->r[ri].offset + off, want);
	if (!memcmp(got, want, PAGE)) {
		c->res->pages_checked++;
		return;
	}
	for (uint64_t i = 0; i < PAGE; i++)
		if (got[i] != w[i] && !c->res->bad_bytes++)
			c->res->first_bad_off = c->r[ri].offset + off + i;
	c->res->pages_checked++;
}

static void check_all(struct child *c)
{
	for (size_t k = 0; k < nr_wanted(c); k++) {
		unsigned int ri;
		uint64_t off;

		nth(c, k, &ri, &off);
		check_page(c, ri, off, ri == 0 &&
			   off < c->removed_pages * PAGE);
	}
	c->res->stage = FCH_STAGE_CHECKED;
}

/*
 * How much of region 0 a discard takes: 64 pages, or 2 huge ones; less
 * in a small region (two discards must fit in it).
 */
static uint64_t discard_len(const struct child *c)
{
	uint64_t page = c->o->hugetlb ? FCH_HUGE : PAGE, len = 64 * PAGE;

	if (c->o->hugetlb)
		len = 2 * FCH_HUGE;
	while (len > page && 2 * len > c->r[0].size)
		len -= page;
	return len;
}

/* Region 0's first pages, before anyone touched them. */
static void discard_untouched(struct child *c)
{
	if (madvise(c->r[0].base, discard_len(c), MADV_DONTNEED))
		fail(c, errno, "madvise(MADV_DONTNEED)");
	c->removed_pages = discard_len(c) / PAGE;
}

/* The next pages, touched and checked: they read zero now. */
static void discard_touched(struct child *c)
{
	uint64_t len = discard_len(c);

	if (madvise(c->r[0].base + len, len, MADV_DONTNEED))
		fail(c, errno, "madvise(MADV_DONTNEED)");
	for (uint64_t off = len; off < 2 * len; off += PAGE) {
		check_page(c, 0, off, true);
		c->res->removed_checked++;
	}
}

static void wait_go(struct child *c)
{
	char b;

	while (read(c->go_read, &b, 1) < 0 && errno == EINTR)
		;
}

static struct fch_result *dying;
static uintptr_t dying_page;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	dying->bus_code = si->si_code;
	dying->bus_at_page = ((uintptr_t)si->si_addr & ~(PAGE - 1)) ==
			     dying_page;
	_exit(FCH_EXIT_SIGBUS);
}

/* Touch a page that must not be served: SIGBUS, or exit 3. */
static void touch_and_die(struct child *c)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus,
				.sa_flags = SA_SIGINFO };

	dying = c->res;
	dying_page = ((uintptr_t)c->r[0].base + c->o->die_offset) &
		     ~(PAGE - 1);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	(void)*(volatile const uint8_t *)(c->r[0].base + c->o->die_offset);
	snprintf(c->res->why, sizeof(c->res->why), "the page at %llu was "
		 "served", (unsigned long long)c->o->die_offset);
	_exit(3);
}

static void child_main(struct child *c, const char *sock)
{
	map_regions(c);
	open_uffd(c);
	if (c->o->hold)
		wait_go(c);
	hand_over(c, sock);
	if (c->o->wait_go)
		wait_go(c);
	if (c->o->touch_and_die)
		touch_and_die(c);
	if (c->o->remove)
		discard_untouched(c);
	touch_all(c);
	check_all(c);
	if (c->o->remove)
		discard_touched(c);
	c->res->stage = FCH_STAGE_DONE;
	_exit(0);
}

/* ---- the parent's side --------------------------------------------------- */

static void close_fds_but(int keep)
{
	if (keep > 3)
		syscall(SYS_close_range, 3, keep - 1, 0);
	syscall(SYS_close_range, keep + 1, ~0U, 0);
}

int fch_vm_spawn(struct fch_vm *vm, const char *sock,
		 const struct fch_memfile *m, const struct fch_vm_opts *o)
{
	int go[2];
	struct child c = { .m = m, .o = o };

	vm->res = mmap(NULL, sizeof(*vm->res), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (vm->res == MAP_FAILED || pipe2(go, O_CLOEXEC))
		return -errno;
	memset(vm->res, 0, sizeof(*vm->res));
	c.res = vm->res;
	c.go_read = go[0];
	fflush(NULL);
	vm->pid = fork();
	if (vm->pid < 0)
		return -errno;
	if (vm->pid == 0) {
		/* A VMM of its own: none of the test's descriptors (the
		 * server's, other VMs' userfaultfds) but its go pipe. */
		close_fds_but(go[0]);
		child_main(&c, sock);
	}
	close(go[0]);
	vm->res->go_fd = go[1];
	return 0;
}

void fch_vm_go(struct fch_vm *vm)
{
	if (write(vm->res->go_fd, "g", 1) != 1)
		kill(vm->pid, SIGKILL);
}

int fch_vm_wait(struct fch_vm *vm, int timeout_ms)
{
	int pidfd = (int)syscall(SYS_pidfd_open, vm->pid, 0), status = 0;
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	int ready = pidfd < 0 ? 1 : poll(&p, 1, timeout_ms);

	if (pidfd >= 0)
		close(pidfd);
	if (ready == 0)
		kill(vm->pid, SIGKILL);
	if (waitpid(vm->pid, &status, 0) < 0)
		return -errno;
	return ready == 0 ? -ETIMEDOUT : status;
}

void fch_vm_release(struct fch_vm *vm)
{
	if (vm->res && vm->res != MAP_FAILED) {
		close(vm->res->go_fd);
		munmap(vm->res, sizeof(*vm->res));
	}
	vm->res = NULL;
}
