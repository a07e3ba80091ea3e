// SPDX-License-Identifier: MIT
/*
 * The handle on a restore in flight, used from other threads.
 *
 *   - A lazy restore cancelled while a vCPU waits on a page that has not
 *     arrived: the restore does not end (nor let go of userfaultfd) while
 *     that vCPU waits; it gets its page from the file, never a hole, and
 *     parks; -ECANCELED with a reason; the VM, its missing pages then
 *     filled in from the source, verifies (a vCPU that had run on a
 *     missing page would show as a lost write or a misread) and is
 *     discarded cleanly.
 *   - Progress read from another thread moves forward (pages in place,
 *     bytes read, demand reads; phase), and ends at DONE with nothing
 *     owed; events come in order.
 *   - Asynchronous start: an eager restore watched through its events; a
 *     restore cancelled before its VM ran discards the VM.
 *
 * Every restore that completes ends with the verifier.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "ferry-vm/guest_vm.h"
#include "ferry/restore.h"
#include "ferry/snapshot.h"
#include "guest_test.h"
#include "snapshot/restore_int.h"	/* the demand queue's lock (cancel) */

/* vCPU 2 powers off early; the others write and read. */
#define SPEC		"random,read=30,off=2@200"
#define SPEC_VCPUS	3
#define SPEC_STEPS	1500
#define MORE_STEPS	300

/* ---- a snapshot to restore ---------------------------------------------- */

struct src {
	struct tvm t;
	int fd;
	uint64_t digest;
};

static enum test_result make_snapshot(struct test_ctx *ctx, struct src *s)
{
	struct ferry_snapshot_opts o = { .live = false };
	struct ferry_snapshot_stats st;
	struct ferry_guest_config cfg;
	uint8_t desc[512];
	struct ferry_vm vm;
	ssize_t n;

	s->fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	CHECK(ctx, s->fd >= 0, "O_TMPFILE in /tmp: %s", strerror(errno));
	tvm_config(&cfg, SPEC_VCPUS, SPEC, SPEC_STEPS);
	TRY(tvm_create(ctx, &s->t, &cfg));
	TRY(tvm_settle(ctx, &s->t));
	TRY(tvm_verify_ok(ctx, &s->t, NULL));
	CHECK_OK(ctx, ferry_guest_digest(s->t.g, &s->digest));
	ferry_guest_get_config(s->t.g, &cfg);
	n = ferry_guest_config_encode(&cfg, desc, sizeof(desc));
	CHECK(ctx, n > 0, "encoding the machine");
	vm = (struct ferry_vm){ .mem = s->t.mem,
		.ops = ferry_guest_vcpu_ops(), .handle = s->t.g, .desc = desc,
		.desc_len = (uint32_t)n };
	CHECK_OK(ctx, ferry_snapshot_save(&vm, s->fd, &o, &st));
	return TEST_PASS;
}

static void drop_snapshot(struct src *s)
{
	tvm_destroy(&s->t);
	close(s->fd);
}

/* Verify; the VM must be paused. */
static enum test_result verified(struct test_ctx *ctx, struct ferry_guest *g)
{
	struct ferry_verify_report rep;

	CHECK_OK(ctx, ferry_guest_verify(g, &rep));
	tvm_dump_report(&rep);
	CHECK(ctx, rep.ok, "verifier: %llu lost, %llu torn, %llu duplicated, "
	      "%llu read errors", (unsigned long long)rep.lost,
	      (unsigned long long)rep.torn,
	      (unsigned long long)rep.duplicated,
	      (unsigned long long)rep.read_errors);
	CHECK(ctx, rep.nr_vcpus == SPEC_VCPUS &&
	      rep.vcpu[2].mp_state == FERRY_MP_STOPPED &&
	      rep.vcpu[0].mp_state == FERRY_MP_RUNNABLE,
	      "vCPU power states changed");
	return TEST_PASS;
}

static uint64_t total_steps(struct ferry_guest *g)
{
	struct ferry_guest_stats st;

	ferry_guest_stats(g, &st);
	return st.steps;
}

/* ---- events ------------------------------------------------------------- */

#define MAX_EVENTS	8

struct evlog {
	pthread_mutex_t lock;
	unsigned int n;
	struct ferry_migrate_event ev[MAX_EVENTS];	/* reason not kept */
};

static void on_event(const struct ferry_migrate_event *ev, void *arg)
{
	struct evlog *log = arg;

	pthread_mutex_lock(&log->lock);
	if (log->n < MAX_EVENTS) {
		log->ev[log->n] = *ev;
		log->ev[log->n++].reason = NULL;
	}
	pthread_mutex_unlock(&log->lock);
}

/* Exactly these kinds, in this order. */
static enum test_result events_were(struct test_ctx *ctx, struct evlog *log,
				    const enum ferry_migrate_event_kind *kinds,
				    unsigned int n)
{
	pthread_mutex_lock(&log->lock);
	for (unsigned int i = 0; i < log->n && i < n; i++)
		if (log->ev[i].kind != kinds[i]) {
			pthread_mutex_unlock(&log->lock);
			FAIL(ctx, "event %u is %s, want %s", i,
			     ferry_migrate_event_name(log->ev[i].kind),
			     ferry_migrate_event_name(kinds[i]));
		}
	pthread_mutex_unlock(&log->lock);
	CHECK_EQ(ctx, log->n, n);
	return TEST_PASS;
}

static void opts_init(struct ferry_restore_opts *o,
		      enum ferry_restore_mode mode, struct evlog *log)
{
	*o = (struct ferry_restore_opts){ .mode = mode, .event = on_event,
					  .event_arg = log };
	pthread_mutex_init(&log->lock, NULL);
	log->n = 0;
}

/* ---- cancel with a vCPU waiting on a page ------------------------------- */

/* Until the fault thread has asked for a page (and so waits on the lock). */
static bool request_made(struct ferry_restore *rs, uint64_t before)
{
	for (int i = 0; i < 10000; i++) {
		if (atomic_load(&rs->pc->requests) > before)
			return true;
		usleep(1000);
	}
	return false;
}

/*
 * Every page the restore still owed when it ended (its page machinery
 * says which: what the memfd holds tells nothing on THP, where a page
 * brought in allocates the huge page around it) written from the source,
 * through the guest view: it was unregistered, or this would wait
 * forever.  Returns how many.
 */
static uint64_t fill_from(struct ferry_restore *rs, struct ferry_mem *dst,
			  const struct ferry_mem *src)
{
	uint64_t filled = 0;

	for (unsigned int i = 0; i < dst->nr_regions; i++) {
		const struct ferry_region *d = &dst->regions[i];
		const struct ferry_region *s = &src->regions[i];

		for (size_t p = 0; p < d->nr_pages; p++) {
			if (!postcopy_needs(rs->pc, i, p))
				continue;
			memcpy(d->guest + p * d->page_size,
			       s->alias + p * d->page_size, d->page_size);
			filled++;
		}
	}
	return filled;
}

/*
 * The test holds the demand queue's lock: the fault thread, asked for a
 * page a vCPU faulted on, cannot queue it, so that vCPU waits in the
 * kernel.  The cancel then cannot end the restore: it waits for the
 * vCPUs to pause, and that one cannot until its page comes.  Let go, the
 * page comes from the file, and the restore ends cancelled.
 */
static enum test_result cancel_waiting(struct test_ctx *ctx,
				       struct ferry_restore *rs,
				       struct ferry_guest *g)
{
	struct ferry_restore_progress p;
	uint64_t before = atomic_load(&rs->pc->requests);
	int ret;

	pthread_mutex_lock(&rs->qlock);
	CHECK_OK(ctx, ferry_guest_set_step_limit(g, SPEC_STEPS + MORE_STEPS));
	if (!request_made(rs, before)) {
		pthread_mutex_unlock(&rs->qlock);
		FAIL(ctx, "no vCPU faulted on a page still owed");
	}
	ferry_restore_cancel(rs);
	usleep(200000);
	ret = ferry_restore_wait(rs, 0);
	ferry_restore_progress(rs, &p);
	pthread_mutex_unlock(&rs->qlock);
	CHECK(ctx, ret == -ETIMEDOUT, "the restore ended (%d: %s) while a vCPU "
	      "waited on a page", ret, ferry_error_msg());
	CHECK(ctx, p.phase == FERRY_PHASE_POSTCOPY && p.owed > 0,
	      "phase %s, %llu owed, while a vCPU waited",
	      ferry_restore_phase_name(p.phase), (unsigned long long)p.owed);
	ret = ferry_restore_wait(rs, 20000);
	CHECK(ctx, ret == -ECANCELED && strstr(ferry_error_msg(), "discard"),
	      "%d (%s)", ret, ferry_error_msg());
	return TEST_PASS;
}

static enum test_result restore_cancel(struct test_ctx *ctx)
{
	static const enum ferry_migrate_event_kind want[] = {
		FERRY_EVENT_DEST_RUNNING, FERRY_EVENT_FAILED };
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct ferry_restore_progress p;
	struct ferry_restore_opts o;
	struct ferry_restore *rs;
	struct evlog log;
	struct src s;
	uint64_t steps, filled;

	TRY(make_snapshot(ctx, &s));
	opts_init(&o, FERRY_RESTORE_LAZY, &log);
	o.record_ws = true;		/* the fill reader waits: pages stay owed */
	CHECK_OK(ctx, ferry_restore_start(s.fd, ferry_guest_vm_dest_ops(), &dd,
					  &o, &rs));
	TRY(cancel_waiting(ctx, rs, dd.gv->guest));
	ferry_restore_progress(rs, &p);
	CHECK(ctx, p.phase == FERRY_PHASE_FAILED && p.owed > 0 &&
	      p.location == FERRY_VM_THERE, "after the cancel: %s, %llu owed, "
	      "the VM %s", ferry_restore_phase_name(p.phase),
	      (unsigned long long)p.owed,
	      ferry_migrate_location_name(p.location));
	TRY(events_were(ctx, &log, want, 2));
	CHECK_EQ(ctx, log.ev[1].err, -ECANCELED);
	/* Stopped for good: paused by the cancel. */
	steps = total_steps(dd.gv->guest);
	usleep(100000);
	CHECK_EQ(ctx, total_steps(dd.gv->guest), steps);
	filled = fill_from(rs, dd.gv->mem, s.t.mem);
	CHECK(ctx, filled > 0 && filled == p.owed, "%llu pages left to come, "
	      "%llu owed", (unsigned long long)filled,
	      (unsigned long long)p.owed);
	TRY(verified(ctx, dd.gv->guest));
	CHECK_EQ(ctx, ferry_restore_finish(rs, NULL), -ECANCELED);
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd.gv);
	drop_snapshot(&s);
	return TEST_PASS;
}

/* ---- progress from another thread --------------------------------------- */

struct sampler {
	struct ferry_restore *rs;
	pthread_t thread;
	atomic_uint samples;
	pthread_mutex_t lock;
	struct ferry_restore_progress last;	/* under lock */
	char wrong[200];			/* the sampler's own */
};

/* Did anything move backwards between two reports? */
static void judge(struct sampler *sm, const struct ferry_restore_progress *a,
		  const struct ferry_restore_progress *b)
{
	if (sm->wrong[0])
		return;
	if (b->phase < a->phase || b->in_place < a->in_place ||
	    b->bytes_read < a->bytes_read ||
	    b->demand_reads < a->demand_reads || b->pages != a->pages)
		snprintf(sm->wrong, sizeof(sm->wrong), "backwards: %s %llu in "
			 "place %llu read, then %s %llu %llu",
			 ferry_restore_phase_name(a->phase),
			 (unsigned long long)a->in_place,
			 (unsigned long long)a->bytes_read,
			 ferry_restore_phase_name(b->phase),
			 (unsigned long long)b->in_place,
			 (unsigned long long)b->bytes_read);
}

static void *sampler_main(void *arg)
{
	struct sampler *sm = arg;
	struct ferry_restore_progress prev, p;

	ferry_restore_progress(sm->rs, &prev);
	for (;;) {
		ferry_restore_progress(sm->rs, &p);
		judge(sm, &prev, &p);
		pthread_mutex_lock(&sm->lock);
		sm->last = p;
		pthread_mutex_unlock(&sm->lock);
		atomic_fetch_add(&sm->samples, 1);
		if (p.phase >= FERRY_PHASE_DONE)
			return NULL;
		prev = p;
		usleep(1000);
	}
}

/* A report the sampler took after now. */
static struct ferry_restore_progress sample(struct sampler *sm)
{
	unsigned int n = atomic_load(&sm->samples);
	struct ferry_restore_progress p;

	while (atomic_load(&sm->samples) < n + 2)
		usleep(1000);
	pthread_mutex_lock(&sm->lock);
	p = sm->last;
	pthread_mutex_unlock(&sm->lock);
	return p;
}

static enum test_result progress_moves(struct test_ctx *ctx,
				       struct sampler *sm,
				       struct ferry_guest *g)
{
	struct ferry_restore_progress a, b, c;

	a = sample(sm);
	CHECK(ctx, a.phase == FERRY_PHASE_POSTCOPY && a.pages > 0 &&
	      a.owed > 0, "at first: %s, %llu owed of %llu",
	      ferry_restore_phase_name(a.phase), (unsigned long long)a.owed,
	      (unsigned long long)a.pages);
	/* The vCPUs run on: what they touch is read on demand. */
	CHECK_OK(ctx, ferry_guest_set_step_limit(g, SPEC_STEPS + MORE_STEPS));
	CHECK_OK(ctx, ferry_guest_wait_settled(g, 20000));
	b = sample(sm);
	CHECK(ctx, b.demand_reads > a.demand_reads && b.in_place > a.in_place &&
	      b.bytes_read > a.bytes_read && b.owed > 0,
	      "after a run: %llu demand reads (%llu), %llu in place (%llu), "
	      "%llu owed", (unsigned long long)b.demand_reads,
	      (unsigned long long)a.demand_reads,
	      (unsigned long long)b.in_place, (unsigned long long)a.in_place,
	      (unsigned long long)b.owed);
	/* The rest, by the fill reader. */
	CHECK_OK(ctx, ferry_restore_fill(sm->rs));
	CHECK_OK(ctx, ferry_restore_wait(sm->rs, 20000));
	pthread_join(sm->thread, NULL);
	c = sm->last;
	CHECK(ctx, !sm->wrong[0], "%s", sm->wrong);
	CHECK(ctx, c.phase == FERRY_PHASE_DONE && !c.owed &&
	      c.in_place == c.pages && !c.bytes_left &&
	      c.location == FERRY_VM_HERE && c.filled > 0,
	      "at the end: %s, %llu owed, %llu bytes left, %llu filled",
	      ferry_restore_phase_name(c.phase), (unsigned long long)c.owed,
	      (unsigned long long)c.bytes_left, (unsigned long long)c.filled);
	return TEST_PASS;
}

static enum test_result restore_progress(struct test_ctx *ctx)
{
	static const enum ferry_migrate_event_kind want[] = {
		FERRY_EVENT_DEST_RUNNING, FERRY_EVENT_DONE };
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct sampler sm = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct ferry_restore_stats st;
	struct ferry_restore_opts o;
	struct evlog log;
	struct src s;

	TRY(make_snapshot(ctx, &s));
	opts_init(&o, FERRY_RESTORE_LAZY, &log);
	o.record_ws = true;		/* the fill reader waits to be let go */
	CHECK_OK(ctx, ferry_restore_start(s.fd, ferry_guest_vm_dest_ops(), &dd,
					  &o, &sm.rs));
	CHECK(ctx, !pthread_create(&sm.thread, NULL, sampler_main, &sm),
	      "no sampler thread");
	TRY(progress_moves(ctx, &sm, dd.gv->guest));
	TRY(events_were(ctx, &log, want, 2));
	CHECK(ctx, log.ev[0].location == FERRY_VM_SPLIT && log.ev[0].owed > 0 &&
	      log.ev[1].location == FERRY_VM_HERE && !log.ev[1].owed,
	      "running: %s, %llu owed; done: %s",
	      ferry_migrate_location_name(log.ev[0].location),
	      (unsigned long long)log.ev[0].owed,
	      ferry_migrate_location_name(log.ev[1].location));
	CHECK_OK(ctx, ferry_restore_finish(sm.rs, &st));
	CHECK_EQ(ctx, st.demand_reads + st.filled, st.pages + st.zero_pages);
	CHECK_OK(ctx, ferry_guest_pause(dd.gv->guest));
	TRY(verified(ctx, dd.gv->guest));
	ferry_restore_destroy(sm.rs);
	ferry_guest_vm_destroy(dd.gv);
	drop_snapshot(&s);
	return TEST_PASS;
}

/* ---- asynchronous start ------------------------------------------------- */

/* Until the restore ended; its result. */
static int ended(struct ferry_restore *rs)
{
	return ferry_restore_wait(rs, 20000);
}

/* Eager, on ferry's thread: events, the VM once running, its memory. */
static enum test_result async_eager(struct test_ctx *ctx, struct src *s)
{
	static const enum ferry_migrate_event_kind want[] = {
		FERRY_EVENT_DEST_RUNNING, FERRY_EVENT_DONE };
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct ferry_restore_progress p;
	struct ferry_restore_opts o;
	const struct ferry_vm *vm;
	struct ferry_restore *rs;
	struct evlog log;
	uint64_t digest;

	opts_init(&o, FERRY_RESTORE_EAGER, &log);
	CHECK_OK(ctx, ferry_restore_start_async(s->fd,
						ferry_guest_vm_dest_ops(), &dd,
						&o, &rs));
	CHECK_OK(ctx, ended(rs));
	TRY(events_were(ctx, &log, want, 2));
	vm = ferry_restore_vm(rs);
	CHECK(ctx, vm && vm->handle == dd.gv->guest, "no VM after the run");
	ferry_restore_progress(rs, &p);
	CHECK(ctx, p.phase == FERRY_PHASE_DONE && p.in_place == p.pages &&
	      p.pages > 0, "%s, %llu of %llu in place",
	      ferry_restore_phase_name(p.phase),
	      (unsigned long long)p.in_place, (unsigned long long)p.pages);
	CHECK_OK(ctx, ferry_guest_pause(dd.gv->guest));
	CHECK_OK(ctx, ferry_guest_digest(dd.gv->guest, &digest));
	CHECK(ctx, digest == s->digest, "restored memory differs from saved");
	TRY(verified(ctx, dd.gv->guest));
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd.gv);
	return TEST_PASS;
}

/* Dest ops that hold the VM's creation until the test opens the gate. */
struct gate {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool entered, open, discarded;
	struct ferry_guest_dest dd;
};

static int gated_create(void *arg, const struct ferry_wire_stream *stream,
			struct ferry_vm *vm)
{
	struct gate *g = arg;

	pthread_mutex_lock(&g->lock);
	g->entered = true;
	pthread_cond_broadcast(&g->cond);
	while (!g->open)
		pthread_cond_wait(&g->cond, &g->lock);
	pthread_mutex_unlock(&g->lock);
	return ferry_guest_vm_dest_ops()->create(&g->dd, stream, vm);
}

static void gated_discard(void *arg, struct ferry_vm *vm)
{
	struct gate *g = arg;

	g->discarded = true;
	ferry_guest_vm_dest_ops()->discard(&g->dd, vm);
}

static const struct ferry_dest_ops gated_ops = {
	.create = gated_create,
	.discard = gated_discard,
};

/* Cancelled while its VM is being built: discarded, nothing ran. */
static enum test_result async_cancel(struct test_ctx *ctx, struct src *s)
{
	static const enum ferry_migrate_event_kind want[] = {
		FERRY_EVENT_FAILED };
	struct gate g = { .lock = PTHREAD_MUTEX_INITIALIZER,
			  .cond = PTHREAD_COND_INITIALIZER,
			  .dd = { .keep_backing = true } };
	struct ferry_restore_progress p;
	struct ferry_restore_opts o;
	struct ferry_restore *rs;
	struct evlog log;
	int ret;

	opts_init(&o, FERRY_RESTORE_LAZY, &log);
	CHECK_OK(ctx, ferry_restore_start_async(s->fd, &gated_ops, &g, &o,
						&rs));
	pthread_mutex_lock(&g.lock);
	while (!g.entered)
		pthread_cond_wait(&g.cond, &g.lock);
	pthread_mutex_unlock(&g.lock);
	ferry_restore_progress(rs, &p);
	CHECK(ctx, p.phase == FERRY_PHASE_SETUP &&
	      p.location == FERRY_VM_THERE && !ferry_restore_vm(rs),
	      "while building: %s, the VM %s",
	      ferry_restore_phase_name(p.phase),
	      ferry_migrate_location_name(p.location));
	CHECK_OK(ctx, ferry_restore_cancel(rs));
	pthread_mutex_lock(&g.lock);
	g.open = true;
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.lock);
	ret = ended(rs);
	CHECK(ctx, ret == -ECANCELED && strstr(ferry_error_msg(),
	      "before the vCPUs ran"), "%d (%s)", ret, ferry_error_msg());
	CHECK(ctx, g.discarded && !g.dd.gv && !ferry_restore_vm(rs),
	      "the VM was not discarded");
	TRY(events_were(ctx, &log, want, 1));
	ferry_restore_destroy(rs);
	return TEST_PASS;
}

static enum test_result restore_async(struct test_ctx *ctx)
{
	struct src s;

	TRY(make_snapshot(ctx, &s));
	TRY(async_eager(ctx, &s));
	TRY(async_cancel(ctx, &s));
	drop_snapshot(&s);
	return TEST_PASS;
}

#define NEED_LAZY	(NEED_UFFD_MISSING | NEED_UFFD_MINOR)

static const struct test_case cases[] = {
	{ "handle_restore_cancel_waiting_vcpu", restore_cancel, B_ALL, 0,
	  NEED_LAZY, 0, 60 },
	{ "handle_restore_progress", restore_progress, B_SHMEM, 0, NEED_LAZY,
	  0, 60 },
	{ "handle_restore_async", restore_async, B_SHMEM, 0, NEED_LAZY, 0,
	  60 },
};

TEST_SUITE(handles, cases)
