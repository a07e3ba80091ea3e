// SPDX-License-Identifier: MIT
/*
 * bench serve: ferry serve-faults as Firecracker's page-fault handler.  A
 * VMM (a forked child, through the library's VMM side,
 * ferry_serve_handover) maps 256 MiB of anonymous guest memory, registers
 * it MISSING and hands the userfaultfd over; then one vCPU thread touches
 * a working set of 4096 pages (16 MiB) scattered over it, in the order
 * recorded from a first run.  Measured from the hand-over:
 *
 *   first_touch   until the first page of the set is in place
 *   ws_touch      until the whole set is
 *
 * for three ways of serving, interleaved round by round:
 *
 *   lazy          on demand only: every page of the set is a fault
 *   prefetch      the recorded set installed in bulk from the hand-over
 *                 on, racing the vCPU (the worst case for it)
 *   settled       the same, the vCPU starting once the set is in (as when
 *                 restoring devices takes longer than installing it); then
 *                 prefetch_install is how long installing took
 *
 * with the userfaultfd faults the server read for the VM (_faults) and the
 * VMM's own minor faults.  Then ten VMs touch their sets at once, lazily:
 * the same figures per VM, and the server's fault latency against one VM's
 * (each VM has a fault thread of its own).
 */
#include <sys/resource.h>
#include <sys/wait.h>

#include "bench.h"

#define MEM		(256 * BENCH_MIB)
#define WS_PAGES	4096
#define REPS		5
#define MANY		10
#define PAGE		4096UL

static uint64_t expected_word(uint64_t off)
{
	uint64_t x = (off / 8 + 1) * 0x9e3779b97f4a7c15ULL;

	return (x ^ (x >> 29)) | 1;
}

/* Every 8th 64 KiB of the file is a hole; the rest a pattern. */
static bool hole(uint64_t off)
{
	return (off >> 16) % 8 == 5;
}

static int memory_file(void)
{
	uint64_t *buf = malloc(BENCH_MIB);
	int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd < 0 || !buf || ftruncate(fd, MEM))
		bench_die("memory file: %s", strerror(errno));
	for (uint64_t at = 0; at < MEM; at += BENCH_MIB) {
		for (uint64_t i = 0; i < BENCH_MIB / 8; i++)
			buf[i] = expected_word(at + i * 8);
		for (uint64_t off = at; off < at + BENCH_MIB; off += PAGE)
			if (!hole(off) && pwrite(fd, (uint8_t *)buf +
						 (off - at), PAGE,
						 (off_t)off) != (ssize_t)PAGE)
				bench_die("memory file: %s", strerror(errno));
	}
	free(buf);
	return fd;
}

/* ---- the VMM ------------------------------------------------------------- */

struct vm_result {
	uint64_t sent_ns, first_ns, ws_ns, minor_faults;
	int go_fd;
	char why[128];
};

struct vmm {
	pid_t pid;
	struct vm_result *res;
};

static uint32_t ws_order[WS_PAGES];

static void child_fail(struct vm_result *r, const char *what)
{
	snprintf(r->why, sizeof(r->why), "%s: %s", what, ferry_error_msg());
	_exit(2);
}

static void touch_ws(const uint8_t *mem, struct vm_result *r, uint64_t t0)
{
	struct rusage before, after;

	getrusage(RUSAGE_SELF, &before);
	for (size_t i = 0; i < WS_PAGES; i++) {
		uint64_t off = (uint64_t)ws_order[i] * PAGE, w;

		memcpy(&w, mem + off, sizeof(w));
		if (w != (hole(off) ? 0 : expected_word(off))) {
			snprintf(r->why, sizeof(r->why), "page %u holds the "
				 "wrong bytes", ws_order[i]);
			_exit(3);
		}
		if (!i)
			r->first_ns = bench_now_ns() - t0;
	}
	r->ws_ns = bench_now_ns() - t0;
	getrusage(RUSAGE_SELF, &after);
	r->minor_faults = (uint64_t)(after.ru_minflt - before.ru_minflt);
}

static void vmm_main(const char *sock, struct vm_result *r, int go,
		     bool settled)
{
	struct ferry_uffd u;
	uint8_t *mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE |
			    MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	struct ferry_serve_region reg = { (uintptr_t)mem, MEM, 0, PAGE };
	uint64_t t0;
	char b;

	if (mem == MAP_FAILED ||
	    ferry_uffd_open(&u, FERRY_UFFD_F_EVENT_REMOVE, 0, true) ||
	    ferry_uffd_register(&u, mem, MEM, FERRY_UFFD_MISSING, NULL))
		child_fail(r, "guest memory");
	t0 = bench_now_ns();
	if (ferry_serve_handover(sock, u.fd, &reg, 1) < 0)
		child_fail(r, "hand-over");
	r->sent_ns = t0;
	if (read(go, &b, 1) != 1)
		_exit(4);
	touch_ws(mem, r, settled ? bench_now_ns() : t0);
	_exit(0);
}

static void vmm_start(struct vmm *v, const char *sock, bool settled)
{
	int go[2];

	v->res = mmap(NULL, sizeof(*v->res), PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (v->res == MAP_FAILED || pipe2(go, O_CLOEXEC))
		bench_die("VMM: %s", strerror(errno));
	memset(v->res, 0, sizeof(*v->res));
	v->pid = fork();
	if (v->pid < 0)
		bench_die("fork: %s", strerror(errno));
	if (v->pid == 0) {
		close(go[1]);
		vmm_main(sock, v->res, go[0], settled);
	}
	close(go[0]);
	v->res->go_fd = go[1];
}

static void vmm_go(struct vmm *v)
{
	if (write(v->res->go_fd, "g", 1) != 1)
		bench_die("VMM: %s", strerror(errno));
}

static void vmm_end(struct vmm *v)
{
	int st;

	if (waitpid(v->pid, &st, 0) < 0 || !WIFEXITED(st) ||
	    WEXITSTATUS(st))
		bench_die("VMM %d: status %#x: %s", v->pid, st, v->res->why);
	close(v->res->go_fd);
}

/* ---- a server ------------------------------------------------------------ */

struct server {
	struct ferry_serve *srv;
	pthread_t thread;
	int listen_fd;
	char path[64];
};

static void *server_main(void *arg)
{
	struct server *s = arg;

	bench_check(ferry_serve_run(s->srv), "ferry_serve_run");
	return NULL;
}

static void server_start(struct server *s, int mem_fd, const char *name,
			 const struct ferry_serve_opts *o)
{
	snprintf(s->path, sizeof(s->path), "/tmp/ferry-bench-%d-%s.sock",
		 getpid(), name);
	s->listen_fd = ferry_serve_listen(s->path);
	bench_check(s->listen_fd, "ferry_serve_listen");
	bench_check(ferry_serve_create(s->listen_fd, mem_fd, o, &s->srv),
		    "ferry_serve_create");
	if (pthread_create(&s->thread, NULL, server_main, s))
		bench_die("pthread_create failed");
}

static void server_stop(struct server *s)
{
	ferry_serve_stop(s->srv);
	pthread_join(s->thread, NULL);
	ferry_serve_destroy(s->srv);
	close(s->listen_fd);
	unlink(s->path);
}

/* The VM of pid, once it is in `state` (the bench's watchdog bounds it). */
static void vm_stats(struct server *s, pid_t pid,
		     enum ferry_serve_vm_state state,
		     struct ferry_serve_vm_stats *out)
{
	static struct ferry_serve_vm_stats all[256];

	for (;;) {
		size_t n = ferry_serve_vms(s->srv, all, 256);

		for (size_t i = 0; i < n && i < 256; i++)
			if (all[i].pid == pid && all[i].state == state) {
				*out = all[i];
				return;
			}
		usleep(100);
	}
}

/* ---- the measurements ---------------------------------------------------- */

enum way { LAZY, PREFETCH, SETTLED, NR_WAYS };

static const char *const way_name[NR_WAYS] = { "lazy", "prefetch",
					       "settled" };

struct figures {
	double first_us[REPS * MANY], ws_ms[REPS * MANY];
	double faults[REPS * MANY], minor[REPS * MANY];
	double install_ms[REPS];
	size_t n, installs;
	struct ferry_hist latency;
};

static void take(struct figures *f, struct vmm *v, struct server *s)
{
	struct ferry_serve_vm_stats st;

	vmm_end(v);
	vm_stats(s, v->pid, FERRY_SERVE_VM_ENDED, &st);
	f->first_us[f->n] = (double)v->res->first_ns / 1e3;
	f->ws_ms[f->n] = (double)v->res->ws_ns / 1e6;
	f->faults[f->n] = (double)st.faults;
	f->minor[f->n++] = (double)v->res->minor_faults;
	ferry_hist_add(&f->latency, &st.fault_latency);
	munmap(v->res, sizeof(*v->res));
}

/* One VM served one way. */
static void round_one(struct figures *f, struct server *s, enum way way)
{
	struct ferry_serve_vm_stats st;
	struct vmm v;
	uint64_t t0;

	vmm_start(&v, s->path, way == SETTLED);
	if (way == SETTLED) {
		do
			vm_stats(s, v.pid, FERRY_SERVE_VM_SERVING, &st);
		while (st.prefetched < WS_PAGES);
		t0 = __atomic_load_n(&v.res->sent_ns, __ATOMIC_ACQUIRE);
		f->install_ms[f->installs++] =
			(double)(bench_now_ns() - t0) / 1e6;
	}
	vmm_go(&v);
	take(f, &v, s);
}

/* Many VMs at once, lazily. */
static void round_many(struct figures *f, struct server *s)
{
	struct vmm v[MANY];

	for (int i = 0; i < MANY; i++)
		vmm_start(&v[i], s->path, false);
	for (int i = 0; i < MANY; i++)
		vmm_go(&v[i]);
	for (int i = 0; i < MANY; i++)
		take(f, &v[i], s);
}

static void put(const char *way, struct figures *f)
{
	char key[64];

	snprintf(key, sizeof(key), "serve_first_touch_%s", way);
	bench_put_spread(key, "us", f->first_us, f->n);
	snprintf(key, sizeof(key), "serve_ws_touch_%s", way);
	bench_put_spread(key, "ms", f->ws_ms, f->n);
	snprintf(key, sizeof(key), "serve_ws_%s", way);
	bench_put_spread(key, "faults", f->faults, f->n);
	snprintf(key, sizeof(key), "serve_ws_%s", way);
	bench_put_spread(key, "vmm_minor_faults", f->minor, f->n);
	snprintf(key, sizeof(key), "serve_fault_latency_%s", way);
	bench_put(key, "us_p50", (double)ferry_hist_percentile(&f->latency,
							       50) / 1e3, 2);
	bench_put(key, "us_p99", (double)ferry_hist_percentile(&f->latency,
							       99) / 1e3, 2);
	if (f->installs)
		bench_put_spread("serve_prefetch_install", "ms", f->install_ms,
				 f->installs);
}

/* The working set: scattered pages, recorded by a server from a VM. */
static void record_ws(int mem_fd, const char *ws)
{
	struct ferry_serve_opts o = { .record_ws = ws };
	struct server s;
	struct vmm v;

	for (uint32_t i = 0; i < WS_PAGES; i++)
		ws_order[i] = (uint32_t)((i * 2654435761ULL) % (MEM / PAGE));
	server_start(&s, mem_fd, "record", &o);
	vmm_start(&v, s.path, false);
	vmm_go(&v);
	vmm_end(&v);
	munmap(v.res, sizeof(*v.res));
	server_stop(&s);
}

int main(int argc, char **argv)
{
	static struct figures fig[NR_WAYS + 1];
	uint64_t start = bench_now_ns();
	struct ferry_serve_opts lazy = { .no_fill = true };
	struct ferry_serve_opts pre = { .no_fill = true };
	struct server s[NR_WAYS];
	char ws[64];
	int mem_fd;

	bench_start(argc, argv, "serve", 120);
	mem_fd = memory_file();
	snprintf(ws, sizeof(ws), "/tmp/ferry-bench-%d.ws", getpid());
	record_ws(mem_fd, ws);
	pre.prefetch_ws = ws;
	server_start(&s[LAZY], mem_fd, "lazy", &lazy);
	server_start(&s[PREFETCH], mem_fd, "prefetch", &pre);
	server_start(&s[SETTLED], mem_fd, "settled", &pre);
	for (int i = 0; i <= NR_WAYS; i++)
		ferry_hist_init(&fig[i].latency);
	for (int rep = 0; rep < REPS; rep++)
		for (int w = 0; w < NR_WAYS; w++)
			round_one(&fig[w], &s[w], (enum way)w);
	for (int rep = 0; rep < 2; rep++)
		round_many(&fig[NR_WAYS], &s[LAZY]);
	for (int w = 0; w < NR_WAYS; w++)
		put(way_name[w], &fig[w]);
	put("lazy_10vms", &fig[NR_WAYS]);
	for (int w = 0; w < NR_WAYS; w++)
		server_stop(&s[w]);
	unlink(ws);
	close(mem_fd);
	bench_finish(start);
	return 0;
}
