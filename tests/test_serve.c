// SPDX-License-Identifier: MIT
/*
 * serve-faults: ferry as Firecracker's external page-fault handler, driven
 * by a Firecracker-like VMM (fcharness.h) in forked children.  Every VM
 * checks every byte it touched against the memory file's pattern; bad
 * lists are refused with their reason and the VMM that sent one dies at
 * its first touch (poison) instead of waiting forever; the server serves
 * the others meanwhile.
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fcharness.h"
#include "ferry/serve.h"
#include "guest_test.h"
#include "serve/serve.h"
#include "test.h"

#define MIB		(1024ULL * 1024)
#define VM_WAIT_MS	30000
#define MAX_EVENTS	64

static bool is_hugetlb(const struct test_ctx *ctx)
{
	return ctx->backing == FERRY_BACKING_HUGETLB;
}

/* ---- a server on its own thread, and what it said ------------------------ */

struct event {
	enum ferry_serve_event_kind kind;
	int pid;
	char reason[256];
};

struct server {
	struct ferry_serve *srv;
	pthread_t thread;
	int listen_fd, run_ret;
	char path[108];
	pthread_mutex_t lock;
	struct event ev[MAX_EVENTS];
	unsigned int nr_ev;
};

static void on_event(void *arg, const struct ferry_serve_event *ev)
{
	struct server *s = arg;

	pthread_mutex_lock(&s->lock);
	if (s->nr_ev < MAX_EVENTS) {
		struct event *e = &s->ev[s->nr_ev++];

		e->kind = ev->kind;
		e->pid = ev->vm ? ev->vm->pid : 0;
		snprintf(e->reason, sizeof(e->reason), "%s", ev->reason);
	}
	pthread_mutex_unlock(&s->lock);
	if (getenv("FERRY_TEST_VERBOSE"))
		fprintf(stderr, "  serve event %d vm %llu pid %d: %s\n",
			ev->kind, ev->vm ? (unsigned long long)ev->vm->id : 0,
			ev->vm ? ev->vm->pid : 0, ev->reason);
}

static void *server_main(void *arg)
{
	struct server *s = arg;

	s->run_ret = ferry_serve_run(s->srv);
	return NULL;
}

/*
 * A server listening, its thread not started: VMs are forked now, while
 * this process runs no other thread (see fch_vm_spawn), then server_go.
 */
static enum test_result server_open(struct test_ctx *ctx, struct server *s,
				    const struct fch_memfile *m,
				    const struct ferry_serve_opts *opts)
{
	struct ferry_serve_opts o = { 0 };

	if (opts)
		o = *opts;
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->lock, NULL);
	snprintf(s->path, sizeof(s->path), "/tmp/ferry-serve-%d-%p.sock",
		 getpid(), (void *)s);
	o.on_event = on_event;
	o.event_arg = s;
	s->listen_fd = ferry_serve_listen(s->path);
	CHECK_OK(ctx, s->listen_fd);
	CHECK_OK(ctx, ferry_serve_create(s->listen_fd, m->fd, &o, &s->srv));
	return TEST_PASS;
}

static enum test_result server_go(struct test_ctx *ctx, struct server *s)
{
	CHECK(ctx, !pthread_create(&s->thread, NULL, server_main, s),
	      "pthread_create");
	return TEST_PASS;
}

static void server_stop(struct server *s)
{
	if (!s->srv)
		return;
	ferry_serve_stop(s->srv);
	pthread_join(s->thread, NULL);
	ferry_serve_destroy(s->srv);
	s->srv = NULL;
	close(s->listen_fd);
	unlink(s->path);
}

/* The figures of the VM of pid (0: none yet). */
static bool vm_stats(struct server *s, int pid, struct ferry_serve_vm_stats *st)
{
	static struct ferry_serve_vm_stats all[64];
	size_t n = ferry_serve_vms(s->srv, all, 64);

	for (size_t i = 0; i < n && i < 64; i++)
		if (all[i].pid == pid) {
			*st = all[i];
			return true;
		}
	return false;
}

/* Until the VM of pid is in `state`, or timeout_ms. */
static bool wait_state(struct server *s, int pid,
		       enum ferry_serve_vm_state state, int timeout_ms,
		       struct ferry_serve_vm_stats *st)
{
	uint64_t end = fch_now_ns() + (uint64_t)timeout_ms * 1000000ULL;

	while (fch_now_ns() < end) {
		if (vm_stats(s, pid, st) && st->state == state)
			return true;
		usleep(2000);
	}
	return false;
}

/* The first event of this kind about pid: its reason, or NULL. */
static const char *event_of(struct server *s, int pid,
			    enum ferry_serve_event_kind kind)
{
	const char *r = NULL;

	pthread_mutex_lock(&s->lock);
	for (unsigned int i = 0; i < s->nr_ev && !r; i++)
		if (s->ev[i].pid == pid && s->ev[i].kind == kind)
			r = s->ev[i].reason;
	pthread_mutex_unlock(&s->lock);
	return r;
}

static const char *wait_event(struct server *s, int pid,
			      enum ferry_serve_event_kind kind, int timeout_ms)
{
	uint64_t end = fch_now_ns() + (uint64_t)timeout_ms * 1000000ULL;
	const char *r;

	while (!(r = event_of(s, pid, kind)) && fch_now_ns() < end)
		usleep(2000);
	return r;
}

/* ---- a VM that must come through whole ----------------------------------- */

static enum test_result vm_ok(struct test_ctx *ctx, struct fch_vm *vm)
{
	int st = fch_vm_wait(vm, VM_WAIT_MS);
	struct fch_result *r = vm->res;

	CHECK(ctx, st != -ETIMEDOUT, "VM %d timed out at stage %d", vm->pid,
	      r->stage);
	CHECK(ctx, WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "VM %d: status %#x at stage %d: %s", vm->pid, st, r->stage,
	      r->why);
	CHECK_EQ(ctx, r->stage, FCH_STAGE_DONE);
	CHECK(ctx, r->bad_bytes == 0, "VM %d: %llu bytes wrong, the first at "
	      "file offset %llu", vm->pid, (unsigned long long)r->bad_bytes,
	      (unsigned long long)r->first_bad_off);
	return TEST_PASS;
}

static enum test_result spawn(struct test_ctx *ctx, struct fch_vm *vm,
			      struct server *s, const struct fch_memfile *m,
			      const struct fch_vm_opts *o)
{
	CHECK_OK(ctx, fch_vm_spawn(vm, s->path, m, o));
	return TEST_PASS;
}

static enum test_result memfile(struct test_ctx *ctx, struct fch_memfile *m,
				uint64_t size, uint64_t seed)
{
	CHECK_OK(ctx, fch_memfile_create(m, size, seed));
	return TEST_PASS;
}

static uint64_t page_size_of(const struct test_ctx *ctx)
{
	return is_hugetlb(ctx) ? FCH_HUGE : 4096;
}

/* ---- cases --------------------------------------------------------------- */

/*
 * On demand only: every page comes through a fault; data by COPY, holes
 * (whole pages of holes) by ZEROPAGE, and nothing else.
 */
static enum test_result restore(struct test_ctx *ctx)
{
	struct ferry_serve_opts so = { .no_fill = true };
	struct fch_vm_opts vo = { .hugetlb = is_hugetlb(ctx), .threads = 3 };
	struct ferry_serve_vm_stats st;
	struct fch_memfile m;
	struct server s;
	struct fch_vm vm;
	uint64_t ps = page_size_of(ctx), data;

	TRY(memfile(ctx, &m, 16 * MIB, 1));
	data = fch_data_pages(&m, ps);
	TRY(server_open(ctx, &s, &m, &so));
	TRY(spawn(ctx, &vm, &s, &m, &vo));
	TRY(server_go(ctx, &s));
	TRY(vm_ok(ctx, &vm));
	CHECK_EQ(ctx, vm.res->pages_checked, m.size / 4096);
	CHECK(ctx, wait_state(&s, vm.pid, FERRY_SERVE_VM_ENDED, VM_WAIT_MS,
			      &st), "the VM's end was not seen");
	CHECK_EQ(ctx, st.copies, data);
	CHECK_EQ(ctx, st.zero_pages, m.size / ps - data);
	/*
	 * Not equal: a fault read for a page another fault just brought
	 * (hugetlb: several threads in one huge page) may be served after
	 * the VMM has exited, and is then dropped.
	 */
	CHECK(ctx, st.faults >= st.copies + st.zero_pages + st.races,
	      "%llu faults: %llu copies, %llu zero pages, %llu races, %llu "
	      "deferred, %llu poisoned", (unsigned long long)st.faults,
	      (unsigned long long)st.copies,
	      (unsigned long long)st.zero_pages,
	      (unsigned long long)st.races, (unsigned long long)st.deferred,
	      (unsigned long long)st.poisoned);
	CHECK_EQ(ctx, st.poisoned, 0);
	CHECK_EQ(ctx, st.nr_regions, 2);
	CHECK_EQ(ctx, st.page_size, ps);
	CHECK(ctx, st.fault_latency_max_ns > 0, "no fault latency recorded");
	server_stop(&s);
	fch_vm_release(&vm);
	fch_memfile_close(&m);
	return TEST_PASS;
}

/*
 * With the background fill: the VM waits until every page is in place
 * and the regions are handed back, then touches all of it without a
 * single fault, and what it reads is the file (holes as zeroes, from the
 * kernel now).  Discards after the hand-off read zero too.
 */
static enum test_result fill_handoff(struct test_ctx *ctx)
{
	struct fch_vm_opts vo = { .hugetlb = is_hugetlb(ctx), .wait_go = true,
				  .remove = true };
	struct ferry_serve_vm_stats st;
	struct fch_memfile m;
	struct server s;
	struct fch_vm vm;

	TRY(memfile(ctx, &m, 16 * MIB, 2));
	TRY(server_open(ctx, &s, &m, NULL));
	TRY(spawn(ctx, &vm, &s, &m, &vo));
	TRY(server_go(ctx, &s));
	CHECK(ctx, wait_state(&s, vm.pid, FERRY_SERVE_VM_HANDED_OFF,
			      VM_WAIT_MS, &st), "the VM was not handed off");
	CHECK_EQ(ctx, st.filled, fch_data_pages(&m, page_size_of(ctx)));
	fch_vm_go(&vm);
	TRY(vm_ok(ctx, &vm));
	CHECK(ctx, vm.res->removed_checked > 0, "no discard checked");
	CHECK(ctx, wait_state(&s, vm.pid, FERRY_SERVE_VM_ENDED, VM_WAIT_MS,
			      &st), "the VM's end was not seen");
	CHECK_EQ(ctx, st.faults, 0);
	server_stop(&s);
	fch_vm_release(&vm);
	fch_memfile_close(&m);
	return TEST_PASS;
}

/*
 * REMOVE: pages discarded before anyone touched them, then touched, read
 * zero (not the file's data); pages discarded after, too.  With and
 * without the fill racing the discards.
 */
static enum test_result remove_one(struct test_ctx *ctx, bool fill)
{
	struct ferry_serve_opts so = { .no_fill = !fill };
	struct fch_vm_opts vo = { .hugetlb = is_hugetlb(ctx), .remove = true,
				  .threads = 2 };
	struct ferry_serve_vm_stats st;
	struct fch_memfile m;
	struct server s;
	struct fch_vm vm;

	TRY(memfile(ctx, &m, 16 * MIB, 3));
	TRY(server_open(ctx, &s, &m, &so));
	TRY(spawn(ctx, &vm, &s, &m, &vo));
	TRY(server_go(ctx, &s));
	TRY(vm_ok(ctx, &vm));
	CHECK(ctx, vm.res->removed_checked > 0, "no discard checked");
	CHECK(ctx, wait_state(&s, vm.pid, FERRY_SERVE_VM_ENDED, VM_WAIT_MS,
			      &st), "the VM's end was not seen");
	if (!fill) {
		CHECK_EQ(ctx, st.removes, 2);
		CHECK(ctx, st.removed_pages >= 2 * 64 / (is_hugetlb(ctx) ?
							 32 : 1),
		      "%llu pages removed", (unsigned long long)
		      st.removed_pages);
	}
	server_stop(&s);
	fch_vm_release(&vm);
	fch_memfile_close(&m);
	return TEST_PASS;
}

static enum test_result remove_events(struct test_ctx *ctx)
{
	TRY(remove_one(ctx, false));
	return remove_one(ctx, true);
}

/* Two VMs at once, each checked whole; b's page size as it was found. */
static enum test_result two_vms(struct test_ctx *ctx, uint64_t seed,
				const struct fch_vm_opts *oa,
				const struct fch_vm_opts *ob, uint64_t *ps_b)
{
	struct ferry_serve_vm_stats st;
	struct fch_memfile m;
	struct server s;
	struct fch_vm a, b;

	TRY(memfile(ctx, &m, 8 * MIB, seed));
	TRY(server_open(ctx, &s, &m, NULL));
	TRY(spawn(ctx, &a, &s, &m, oa));
	TRY(spawn(ctx, &b, &s, &m, ob));
	TRY(server_go(ctx, &s));
	TRY(vm_ok(ctx, &a));
	TRY(vm_ok(ctx, &b));
	CHECK(ctx, vm_stats(&s, b.pid, &st), "no figures for the VM");
	*ps_b = st.page_size;
	server_stop(&s);
	fch_vm_release(&a);
	fch_vm_release(&b);
	fch_memfile_close(&m);
	return TEST_PASS;
}

/* Firecracker 1.7 to 1.11 sent page_size_kib alone, older ones none. */
static enum test_result old_json(struct test_ctx *ctx)
{
	struct fch_vm_opts kib = { .hugetlb = is_hugetlb(ctx),
				   .format = FCH_JSON_KIB };
	struct fch_vm_opts none = { .hugetlb = is_hugetlb(ctx),
				    .format = FCH_JSON_NONE, .nr_regions = 1 };
	uint64_t ps = 0;

	TRY(two_vms(ctx, 4, &kib, &none, &ps));
	CHECK_EQ(ctx, ps, page_size_of(ctx));
	return TEST_PASS;
}

/* ---- hostile lists ------------------------------------------------------- */

struct bad {
	const char *raw;	/* NULL: the VM's own list */
	const char *why;	/* in the refusal's reason */
	bool no_fd, two_fds;
	size_t pad;
	uint64_t claim;
};

#define BAD(r, w)	{ .raw = r, .why = w }
#define A "\"base_host_virt_addr\":"
#define R(base, size, off, ps) \
	"{" A #base ",\"size\":" #size ",\"offset\":" #off \
	",\"page_size\":" #ps "}"

static const struct bad bads[] = {
	BAD("hello", "'[' expected"),
	BAD("[{" A "1073741824,\"size\":4096,\"size\":4096,\"offset\":0}]",
	    "gives size twice"),
	BAD("[]", "holds no region"),
	BAD("[" R(1073741824, 8388608, 0, 4096) "]", "past its end"),
	BAD("[" R(1073741824, 2097152, 0, 4096) ","
	    R(1074790400, 2097152, 2097152, 4096) "]",
	    "overlap in the VMM's address space"),
	BAD("[" R(1073741824, 2097152, 0, 4096) ","
	    R(1342177280, 2097152, 1048576, 4096) "]",
	    "overlap in the memory file"),
	BAD("[" R(1073741824, 4194304, 0, 8192) "]", "page size 8192"),
	BAD("[{" A "1073741824,\"size\":4194304,\"offset\":0,"
	    "\"page_size_kib\":4}]", "carries bytes"),
	BAD("[" R(1073741824, 18446744073709547520, 0, 4096) "]",
	    "past any process's address space"),
	BAD("[" R(1073741824, 99999999999999999999, 0, 4096) "]",
	    "past 2^64"),
	BAD("[" R(1073741824, -4096, 0, 4096) "]", "not an unsigned integer"),
	BAD("[" R(1073741824, 4194304.0, 0, 4096) "]",
	    "not an unsigned integer"),
	BAD("[{\"x\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}]",
	    "nested too deep"),
	BAD("[{" A "1073741824,\"size\":4194304,\"page_size\":4096}]",
	    "has no offset"),
	BAD("[" R(1073741824, 4194304, 0, 4096) "] x", "after its end"),
	BAD("[{\"\xff\":1}]", "not UTF-8"),
	BAD("[{\"\\q\":1}]", "unknown escape"),
	BAD("[" R(1073741824, 4194305, 0, 4096) "]",
	    "not a positive multiple"),
	BAD("[" R(1073741824, 2097152, 0, 4096) "]", "not this VM's memory"),
	BAD("[" R(1073741824, 4194304, 0, 4096) "]", "not registered"),
	BAD("[" R(1073741824, 4194304, 0, 4096), "no whole list"),
	{ .why = "without a userfaultfd", .no_fd = true },
	{ .why = "descriptors more than", .two_fds = true },
	{ .why = "longer than", .pad = 70000 },
	{ .why = "says 2097152-byte pages", .claim = 2097152 },
};

#define NR_BADS		(sizeof(bads) / sizeof(bads[0]))

static void bad_opts(const struct bad *b, struct fch_vm_opts *o)
{
	*o = (struct fch_vm_opts){ .nr_regions = 1, .touch_and_die = true,
				   .no_fd = b->no_fd, .two_fds = b->two_fds,
				   .pad = b->pad, .claim_page_size = b->claim,
				   .format = b->raw ? FCH_JSON_RAW :
						      FCH_JSON_CURRENT,
				   .raw = b->raw };
	/* With no descriptor there is nothing to die of: it waits. */
	o->wait_go = b->no_fd;
}

/* Did the VM die of a poisoned page: SIGBUS at the page it touched? */
static bool poisoned(const struct fch_vm *vm, int status)
{
	int code = vm->res->bus_code;

	return WIFEXITED(status) && WEXITSTATUS(status) == FCH_EXIT_SIGBUS &&
	       (code == BUS_MCEERR_AR || code == BUS_ADRERR) &&
	       vm->res->bus_at_page;
}

/* Refused with the reason; one that sent a uffd dies at its first touch. */
static enum test_result bad_done(struct test_ctx *ctx, struct server *s,
				 const struct bad *b, struct fch_vm *vm)
{
	const char *why = wait_event(s, vm->pid, FERRY_SERVE_EV_REFUSED,
				     VM_WAIT_MS);
	int st;

	CHECK(ctx, why, "'%s': not refused", b->raw ? b->raw : b->why);
	CHECK(ctx, strstr(why, b->why), "refused '%s' for '%s', wanted '%s'",
	      b->raw ? b->raw : "(its list)", why, b->why);
	if (b->no_fd)
		kill(vm->pid, SIGKILL);
	st = fch_vm_wait(vm, VM_WAIT_MS);
	CHECK(ctx, b->no_fd || poisoned(vm, st),
	      "refused for '%s', the VMM ended with status %#x (SIGBUS code "
	      "%d), not at a poisoned page (%s)", why, st, vm->res->bus_code,
	      vm->res->why);
	fch_vm_release(vm);
	return TEST_PASS;
}

static enum test_result malformed(struct test_ctx *ctx)
{
	struct ferry_serve_opts so = { .handshake_timeout_ms = 300 };
	struct fch_vm vms[NR_BADS], good;
	struct fch_vm_opts o;
	struct fch_memfile m;
	struct server s;

	TRY(memfile(ctx, &m, 4 * MIB, 5));
	TRY(server_open(ctx, &s, &m, &so));
	for (size_t k = 0; k < NR_BADS; k++) {
		bad_opts(&bads[k], &o);
		TRY(spawn(ctx, &vms[k], &s, &m, &o));
	}
	o = (struct fch_vm_opts){ .nr_regions = 1 };
	TRY(spawn(ctx, &good, &s, &m, &o));
	TRY(server_go(ctx, &s));
	for (size_t k = 0; k < NR_BADS; k++)
		TRY(bad_done(ctx, &s, &bads[k], &vms[k]));
	TRY(vm_ok(ctx, &good));
	fch_vm_release(&good);
	server_stop(&s);
	CHECK_EQ(ctx, s.run_ret, 0);
	fch_memfile_close(&m);
	return TEST_PASS;
}

/* Parsed whole, in pieces, with what JSON allows. */
static enum test_result json(struct test_ctx *ctx)
{
	static const char good[] =
		" [ {\"offset\" : 0, \"unknown\": {\"a\": [1, -2.5e3, true, "
		"null, \"\\u00e9\\ud83d\\ude00\"]}, \"\\u0073ize\":4096,\n"
		"\"base_host_virt_addr\":\t8192 , \"page_size_kib\": 4096} ,"
		"{\"base_host_virt_addr\":1073741824,\"size\":2097152,"
		"\"offset\":4096,\"page_size\":2097152,"
		"\"page_size_kib\":2097152} ]\r\n";
	struct serve_list l;

	CHECK_OK(ctx, serve_json_parse(good, strlen(good), &l));
	CHECK_EQ(ctx, l.nr, 2);
	CHECK_EQ(ctx, l.e[0].r.size, 4096);
	CHECK_EQ(ctx, l.e[0].r.base_host_virt_addr, 8192);
	CHECK_EQ(ctx, l.e[0].page_size_kib, 4096);
	CHECK(ctx, !(l.e[0].has & SERVE_HAS_PAGE_SIZE), "page_size seen");
	CHECK_EQ(ctx, l.e[1].r.page_size, 2097152);
	for (size_t len = 0; len < strlen(good) - 3; len++)
		CHECK(ctx, serve_json_parse(good, len, &l) == -EAGAIN,
		      "%zu bytes of a good list are not 'more to come'", len);
	for (size_t i = 0; i < NR_BADS; i++) {
		const char *raw = bads[i].raw;
		int ret;

		if (!raw || strstr(bads[i].why, "whole list"))
			continue;
		ret = serve_json_parse(raw, strlen(raw), &l);
		CHECK(ctx, ret == 0 || ret == -EBADMSG, "'%s': %d", raw, ret);
	}
	return TEST_PASS;
}

/* ---- VMs that leave, and many at once ------------------------------------ */

static int count_dir(const char *path)
{
	DIR *d = opendir(path);
	int n = 0;

	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* The count of entries in path, once it is `want` or time is up. */
static int count_settles(const char *path, int want)
{
	int n = count_dir(path);

	for (int i = 0; i < VM_WAIT_MS / 2 && n != want; i++) {
		usleep(2000);
		n = count_dir(path);
	}
	return n;
}

/*
 * A VMM that exits mid-restore: that VM ends, the other goes on, and once
 * both are over the server holds no descriptor or thread of theirs.
 */
static enum test_result vm_exit(struct test_ctx *ctx)
{
	struct fch_vm_opts leaver = { .hugetlb = is_hugetlb(ctx),
				      .exit_after = 40, .hold = true };
	struct fch_vm_opts stayer = { .hugetlb = is_hugetlb(ctx),
				      .hold = true };
	struct ferry_serve_vm_stats st;
	struct fch_memfile m;
	struct server s;
	struct fch_vm a, b;
	int fds, threads;

	TRY(memfile(ctx, &m, 16 * MIB, 6));
	TRY(server_open(ctx, &s, &m, NULL));
	TRY(spawn(ctx, &a, &s, &m, &leaver));
	TRY(spawn(ctx, &b, &s, &m, &stayer));
	TRY(server_go(ctx, &s));
	usleep(10000);
	/* Both VMs hold: nothing of theirs is in the server yet. */
	fds = count_dir("/proc/self/fd") - 2;	/* their go pipes */
	threads = count_dir("/proc/self/task");
	fch_vm_go(&a);
	fch_vm_go(&b);
	CHECK_EQ(ctx, fch_vm_wait(&a, VM_WAIT_MS), 0);
	CHECK(ctx, wait_event(&s, a.pid, FERRY_SERVE_EV_ENDED, VM_WAIT_MS),
	      "the VM that left did not end");
	TRY(vm_ok(ctx, &b));
	CHECK(ctx, wait_state(&s, b.pid, FERRY_SERVE_VM_ENDED, VM_WAIT_MS,
			      &st), "the other VM's end was not seen");
	CHECK(ctx, vm_stats(&s, a.pid, &st) &&
	      st.state == FERRY_SERVE_VM_ENDED, "the VM that left is not over");
	fch_vm_release(&a);
	fch_vm_release(&b);
	/* The end is told before the VM is freed: wait for the count. */
	CHECK_EQ(ctx, count_settles("/proc/self/fd", fds), fds);
	CHECK_EQ(ctx, count_settles("/proc/self/task", threads), threads);
	server_stop(&s);
	fch_memfile_close(&m);
	return TEST_PASS;
}

#define TEN	10

/* Ten VMs at once, one memory file. */
static enum test_result ten_vms(struct test_ctx *ctx)
{
	struct fch_vm_opts o = { .hugetlb = is_hugetlb(ctx), .threads = 2 };
	struct ferry_serve_vm_stats st;
	struct fch_memfile m;
	struct server s;
	struct fch_vm vm[TEN];

	TRY(memfile(ctx, &m, 16 * MIB, 7));
	TRY(server_open(ctx, &s, &m, NULL));
	for (int i = 0; i < TEN; i++) {
		o.remove = i % 3 == 0;
		TRY(spawn(ctx, &vm[i], &s, &m, &o));
	}
	TRY(server_go(ctx, &s));
	for (int i = 0; i < TEN; i++)
		TRY(vm_ok(ctx, &vm[i]));
	for (int i = 0; i < TEN; i++) {
		CHECK(ctx, wait_state(&s, vm[i].pid, FERRY_SERVE_VM_ENDED,
				      VM_WAIT_MS, &st), "VM %d not over", i);
		CHECK_EQ(ctx, st.poisoned, 0);
		fch_vm_release(&vm[i]);
	}
	server_stop(&s);
	fch_memfile_close(&m);
	return TEST_PASS;
}

/* ---- working sets -------------------------------------------------------- */

#define WS_PAGES	300

/*
 * Recorded by one server from a VM's first touches, then given to another:
 * the set is in place before the VM touches it, so touching it takes no
 * fault at all.
 */
static enum test_result working_set(struct test_ctx *ctx)
{
	static uint32_t order[WS_PAGES];
	char ws[64];
	struct ferry_serve_opts rec = { .record_ws = ws };
	struct ferry_serve_opts pre = { .prefetch_ws = ws, .no_fill = true };
	struct fch_vm_opts o = { .nr_regions = 1, .order = order,
				 .order_len = WS_PAGES };
	struct ferry_serve_vm_stats st;
	struct fch_memfile m;
	struct server s;
	struct fch_vm vm;

	snprintf(ws, sizeof(ws), "/tmp/ferry-serve-ws-%d", getpid());
	for (uint32_t i = 0; i < WS_PAGES; i++)
		order[i] = (i * 7919) % 4096;	/* distinct pages of 16 MiB */
	TRY(memfile(ctx, &m, 16 * MIB, 8));
	TRY(server_open(ctx, &s, &m, &rec));
	TRY(spawn(ctx, &vm, &s, &m, &o));
	TRY(server_go(ctx, &s));
	TRY(vm_ok(ctx, &vm));
	CHECK(ctx, wait_state(&s, vm.pid, FERRY_SERVE_VM_ENDED, VM_WAIT_MS,
			      &st), "the recording VM's end was not seen");
	CHECK_EQ(ctx, st.ws_recorded, WS_PAGES);
	fch_vm_release(&vm);
	server_stop(&s);

	o.wait_go = true;
	TRY(server_open(ctx, &s, &m, &pre));
	TRY(spawn(ctx, &vm, &s, &m, &o));
	TRY(server_go(ctx, &s));
	for (int i = 0; i < VM_WAIT_MS / 2 && (!vm_stats(&s, vm.pid, &st) ||
					       st.prefetched < WS_PAGES); i++)
		usleep(2000);
	CHECK_EQ(ctx, st.prefetched, WS_PAGES);
	fch_vm_go(&vm);
	TRY(vm_ok(ctx, &vm));
	CHECK(ctx, wait_state(&s, vm.pid, FERRY_SERVE_VM_ENDED, VM_WAIT_MS,
			      &st), "the VM's end was not seen");
	CHECK_EQ(ctx, st.faults, 0);
	server_stop(&s);
	unlink(ws);
	fch_vm_release(&vm);
	fch_memfile_close(&m);
	return TEST_PASS;
}

/* ---- pages that cannot be served ----------------------------------------- */

/*
 * The memory file shrinks under the server: the page asked for can no
 * longer be read, so it is poisoned and the VMM dies at it (SIGBUS)
 * instead of waiting forever; the server says why.
 */
static enum test_result unservable(struct test_ctx *ctx)
{
	struct ferry_serve_opts so = { .no_fill = true };
	struct fch_vm_opts o = { .nr_regions = 1, .wait_go = true,
				 .touch_and_die = true };
	struct fch_memfile m;
	struct server s;
	struct fch_vm vm;
	const char *why;
	int st;

	TRY(memfile(ctx, &m, 4 * MIB, 9));
	for (o.die_offset = 3 * MIB; fch_is_hole(&m, o.die_offset);)
		o.die_offset += 4096;
	TRY(server_open(ctx, &s, &m, &so));
	TRY(spawn(ctx, &vm, &s, &m, &o));
	TRY(server_go(ctx, &s));
	CHECK(ctx, wait_event(&s, vm.pid, FERRY_SERVE_EV_STARTED, VM_WAIT_MS),
	      "the VM was not served");
	CHECK_OK(ctx, ftruncate(m.fd, 2 * MIB) ? -errno : 0);
	fch_vm_go(&vm);
	st = fch_vm_wait(&vm, VM_WAIT_MS);
	CHECK(ctx, poisoned(&vm, st), "status %#x (SIGBUS code %d), not a "
	      "poisoned page: %s", st, vm.res->bus_code, vm.res->why);
	why = wait_event(&s, vm.pid, FERRY_SERVE_EV_FAILED, VM_WAIT_MS);
	CHECK(ctx, why && strstr(why, "poisoned"), "failure: %s",
	      why ? why : "none told");
	server_stop(&s);
	fch_vm_release(&vm);
	fch_memfile_close(&m);
	return TEST_PASS;
}

/* ---- stopping ------------------------------------------------------------ */

/*
 * The server stops while a VM it serves on demand only has touched
 * nothing: every page is put in place and the regions handed back before
 * ferry_serve_run() returns, so the VM then runs whole without it.  A
 * VMM whose list was refused, still waiting to touch, is killed.
 */
static enum test_result stop(struct test_ctx *ctx)
{
	struct ferry_serve_opts so = { .no_fill = true };
	struct fch_vm_opts o = { .hugetlb = is_hugetlb(ctx), .wait_go = true,
				 .remove = true };
	struct fch_vm_opts bad = { .nr_regions = 1, .wait_go = true,
				   .touch_and_die = true,
				   .claim_page_size = 8192 };
	struct ferry_serve_vm_stats st;
	struct fch_memfile m;
	struct server s;
	struct fch_vm vm, refused;
	int status;

	TRY(memfile(ctx, &m, 8 * MIB, 11));
	TRY(server_open(ctx, &s, &m, &so));
	TRY(spawn(ctx, &vm, &s, &m, &o));
	TRY(spawn(ctx, &refused, &s, &m, &bad));
	TRY(server_go(ctx, &s));
	CHECK(ctx, wait_event(&s, vm.pid, FERRY_SERVE_EV_STARTED, VM_WAIT_MS),
	      "the VM was not served");
	CHECK(ctx, wait_event(&s, refused.pid, FERRY_SERVE_EV_REFUSED,
			      VM_WAIT_MS), "the bad list was not refused");
	CHECK(ctx, vm_stats(&s, vm.pid, &st) && st.faults == 0,
	      "the VM took faults before it was let go");
	ferry_serve_stop(s.srv);
	pthread_join(s.thread, NULL);
	CHECK_EQ(ctx, s.run_ret, 0);
	CHECK(ctx, event_of(&s, vm.pid, FERRY_SERVE_EV_HANDED_OFF),
	      "the VM was not handed off");
	CHECK_EQ(ctx, ferry_serve_vms(s.srv, &st, 1), 2);
	fch_vm_go(&vm);
	TRY(vm_ok(ctx, &vm));
	status = fch_vm_wait(&refused, VM_WAIT_MS);
	CHECK(ctx, WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
	      "the refused VMM ended with status %#x, not killed", status);
	ferry_serve_destroy(s.srv);
	close(s.listen_fd);
	unlink(s.path);
	fch_vm_release(&vm);
	fch_vm_release(&refused);
	fch_memfile_close(&m);
	return TEST_PASS;
}

/* ---- the library's own VMM side ------------------------------------------ */

static int library_hand_over(const char *sock, int uffd, const uint64_t *q,
			     unsigned int nr)
{
	struct ferry_serve_region r[FCH_MAX_REGIONS];

	for (unsigned int i = 0; i < nr; i++)
		r[i] = (struct ferry_serve_region){ q[4 * i], q[4 * i + 1],
						    q[4 * i + 2],
						    q[4 * i + 3] };
	return ferry_serve_handover(sock, uffd, r, nr);
}

/* ferry_serve_handover, and a list that comes in pieces. */
static enum test_result handover(struct test_ctx *ctx)
{
	struct fch_vm_opts lib = { .hugetlb = is_hugetlb(ctx),
				   .hand_over = library_hand_over };
	struct fch_vm_opts pieces = { .hugetlb = is_hugetlb(ctx),
				      .in_pieces = true, .pad = 40000 };
	uint64_t ps;

	return two_vms(ctx, 10, &lib, &pieces, &ps);
}

#define F_REMOVE	FERRY_UFFD_F_EVENT_REMOVE
#define F_POISON	FERRY_UFFD_F_POISON
#define F_HUGE		(F_REMOVE | FERRY_UFFD_F_MISSING_HUGETLBFS)

static const struct test_case serve_cases[] = {
	{ "serve_json", json, 0, 0, 0, 0, 10 },
	{ "serve_restore", restore, 0, F_REMOVE, 0, 0, 60 },
	{ "serve_restore", restore, B_HUGETLB, F_HUGE, 0, 16, 60 },
	{ "serve_fill_handoff", fill_handoff, 0, F_REMOVE, 0, 0, 60 },
	{ "serve_fill_handoff", fill_handoff, B_HUGETLB, F_HUGE, 0, 16, 60 },
	{ "serve_remove", remove_events, 0, F_REMOVE, 0, 0, 60 },
	{ "serve_remove", remove_events, B_HUGETLB, F_HUGE, 0, 16, 60 },
	{ "serve_old_json", old_json, 0, F_REMOVE, 0, 0, 60 },
	{ "serve_old_json", old_json, B_HUGETLB, F_HUGE, 0, 16, 60 },
	{ "serve_malformed", malformed, 0, F_REMOVE | F_POISON, 0, 0, 120 },
	{ "serve_vm_exit", vm_exit, 0, F_REMOVE, 0, 0, 60 },
	{ "serve_ten_vms", ten_vms, 0, F_REMOVE, 0, 0, 120 },
	{ "serve_ten_vms", ten_vms, B_HUGETLB, F_HUGE, 0, 96, 120 },
	{ "serve_working_set", working_set, 0, F_REMOVE, 0, 0, 60 },
	{ "serve_unservable", unservable, 0, F_REMOVE | F_POISON, 0, 0, 60 },
	{ "serve_handover", handover, 0, F_REMOVE, 0, 0, 60 },
	{ "serve_stop", stop, 0, F_REMOVE, 0, 0, 60 },
	{ "serve_stop", stop, B_HUGETLB, F_HUGE, 0, 16, 60 },
};

TEST_SUITE(serve, serve_cases);
