// SPDX-License-Identifier: MIT
/*
 * flows: what minivmm does with ferry.  Each flow that runs for a while
 * goes through its handle, and a thread of the VMM's own watches it (a
 * management API would answer "how far along is it?" the same way);
 * ferry's events arrive on ferry's threads.
 *
 *   snapshot            ferry_snapshot_save (the VM paused)
 *   lazy restore        ferry_restore_start; a watcher prints
 *                       ferry_restore_progress until every page is in
 *   migration, cancelled
 *                       ferry_migrate_start with a bandwidth limit,
 *                       cancelled from this thread before switchover:
 *                       the VM runs on here, untouched
 *   migration           post-copy, both sides through their handles,
 *                       progress printed by a watcher on each side
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <ferry/ferry.h>

#include "minivmm.h"

/* ---- watching a handle -------------------------------------------------- */

/*
 * A thread of the VMM's that prints a handle's progress while the flow
 * runs: when the phase (or the pre-copy round) changes, and every
 * WATCH_MS meanwhile if anything moved.  Any thread may read progress,
 * at any time; the end itself is told by an event.
 */
#define WATCH_MS	100

struct watcher {
	const char *who;
	struct ferry_migration *m;	/* one of the two */
	struct ferry_restore *rs;
	pthread_t thread;
	bool running;
	unsigned int step;		/* the watcher's: phase and round */
	uint64_t moved;			/* bytes, pages: what moves */
	unsigned int ticks;		/* ms since the last line */
};

static double mib(uint64_t bytes)
{
	return (double)bytes / (1 << 20);
}

/* Time for a line?  Updates what the watcher has seen. */
static bool news(struct watcher *w, unsigned int step, uint64_t moved)
{
	bool now = step != w->step ||
		   (++w->ticks >= WATCH_MS && moved != w->moved);

	if (now) {
		w->step = step;
		w->moved = moved;
		w->ticks = 0;
	}
	return now;
}

/* A line about a migration, as this side sees it; true once it ended. */
static bool show_migration(struct watcher *w)
{
	struct ferry_progress p;

	ferry_migrate_progress(w->m, &p);
	if (p.phase >= FERRY_PHASE_DONE)
		return true;
	if (!news(w, (unsigned int)p.phase << 16 | p.round,
		  p.bytes_sent + p.bytes_received + p.owed))
		return false;
	if (!strcmp(w->who, "source"))
		printf("minivmm:   [%s] %s, round %u: %.1f MiB sent, %llu "
		       "pages dirty, %llu owed, VM %s\n", w->who,
		       ferry_migrate_phase_name(p.phase), p.round,
		       mib(p.bytes_sent), (unsigned long long)p.dirty,
		       (unsigned long long)p.owed,
		       ferry_migrate_location_name(p.location));
	else
		printf("minivmm:   [%s] %s: %.1f MiB received, %llu pages "
		       "owed, VM %s\n", w->who,
		       ferry_migrate_phase_name(p.phase),
		       mib(p.bytes_received), (unsigned long long)p.owed,
		       ferry_migrate_location_name(p.location));
	return false;
}

/* A line about a restore; true once it ended. */
static bool show_restore(struct watcher *w)
{
	struct ferry_restore_progress p;

	ferry_restore_progress(w->rs, &p);
	if (p.phase >= FERRY_PHASE_DONE)
		return true;
	if (news(w, (unsigned int)p.phase, p.in_place))
		printf("minivmm:   [%s] %s: %llu of %llu pages in place, %llu "
		       "read on demand, %.1f MiB read, %.1f MiB/s\n", w->who,
		       ferry_restore_phase_name(p.phase),
		       (unsigned long long)p.in_place,
		       (unsigned long long)p.pages,
		       (unsigned long long)p.demand_reads, mib(p.bytes_read),
		       mib((uint64_t)p.rate_bps));
	return false;
}

static void *watch_main(void *arg)
{
	struct watcher *w = arg;

	w->step = ~0U;
	while (!(w->m ? show_migration(w) : show_restore(w)))
		usleep(1000);
	return NULL;
}

/* Without a thread it is only quieter. */
static void watch(struct watcher *w)
{
	w->running = !pthread_create(&w->thread, NULL, watch_main, w);
}

static void watch_end(struct watcher *w)
{
	if (w->running)
		pthread_join(w->thread, NULL);
	w->running = false;
}

/* Events: on ferry's thread, as they happen; printed and nothing more. */
static void on_event(const struct ferry_migrate_event *ev, void *arg)
{
	printf("minivmm:   [%s] event: %s (VM %s, %llu pages owed)%s%s\n",
	       (const char *)arg, ferry_migrate_event_name(ev->kind),
	       ferry_migrate_location_name(ev->location),
	       (unsigned long long)ev->owed, ev->err ? ": " : "",
	       ev->err ? ev->reason : "");
}

/* ---- snapshot and restore ----------------------------------------------- */

int snapshot(struct vm *src, int fd)
{
	struct ferry_snapshot_opts opts = { .live = false };
	struct ferry_snapshot_stats st;
	struct ferry_vm handle = vm_handle(src);
	int ret = ferry_snapshot_save(&handle, fd, &opts, &st);

	if (ret)
		return fail("snapshot", ret);
	return vm_check(src, "snapshot");
}

/*
 * The restored VM runs at once; its pages come from the file.  A watcher
 * prints the restore's progress meanwhile; finish waits for the last.
 */
int lazy_restore(struct vm *dst, int fd)
{
	struct ferry_restore_opts opts = { .mode = FERRY_RESTORE_LAZY,
		.event = on_event, .event_arg = "restore" };
	struct watcher w = { .who = "restore" };
	int ret = ferry_restore_start(fd, &dest_ops, dst, &opts, &w.rs);

	if (ret)
		return fail("lazy restore", ret);
	watch(&w);
	usleep(20000);			/* running while pages are owed */
	ret = ferry_restore_finish(w.rs, NULL);
	watch_end(&w);
	ferry_restore_destroy(w.rs);
	vm_pause(dst);
	if (ret)
		return fail("lazy restore", ret);
	return disk_check(dst, "lazy restore") | vm_check(dst, "lazy restore");
}

/* ---- migration: the destination ---------------------------------------- */

/*
 * The receiving side, on a thread of its own: it accepts a session,
 * hands it to ferry_migrate_start_dest, and a watcher prints what it
 * sees (the pages still owed once the VM runs here).  On success the
 * VM is the VMM's (ferry_migrate_dest_vm); on failure ferry discarded
 * it (dest_ops.discard).
 */
struct receiver {
	struct ferry_listener *listener;
	struct vm *vm;
	int ret;
	char reason[256];
	pthread_t thread;
};

static int receive_on(struct receiver *r, struct ferry_session *s)
{
	struct ferry_migrate_opts opts;
	struct watcher w = { .who = "dest" };
	struct ferry_vm vm;
	int ret;

	ferry_migrate_opts_init(&opts);
	opts.event = on_event;
	opts.event_arg = "dest";
	ret = ferry_migrate_start_dest(s, &dest_ops, r->vm, &opts, &w.m);
	if (ret)
		return ret;
	watch(&w);
	ret = ferry_migrate_wait(w.m, -1);
	watch_end(&w);
	if (!ret)
		ret = ferry_migrate_dest_vm(w.m, &vm);
	snprintf(r->reason, sizeof(r->reason), "%s", ferry_error_msg());
	ferry_migrate_destroy(w.m);
	return ret;
}

static void *receive_main(void *arg)
{
	struct receiver *r = arg;
	struct ferry_session *s = NULL;
	int ret = ferry_net_accept(r->listener, 10000, &s);

	if (!ret)
		ret = receive_on(r, s);		/* the handle takes s */
	else
		snprintf(r->reason, sizeof(r->reason), "%s",
			 ferry_error_msg());
	r->ret = ret;
	return NULL;
}

static int receiver_start(struct receiver *r, struct vm *dst,
			  const char *addr)
{
	int ret = ferry_net_listener_open(addr, NULL, &r->listener);

	r->vm = dst;
	if (ret)
		return fail("listen", ret);
	if (pthread_create(&r->thread, NULL, receive_main, r)) {
		ferry_net_listener_close(r->listener);
		return fail("receiver thread", -EAGAIN);
	}
	return 0;
}

static void receiver_join(struct receiver *r)
{
	pthread_join(r->thread, NULL);
	ferry_net_listener_close(r->listener);
}

/* ---- migration: the source ---------------------------------------------- */

/* *vm must outlive the handle: ferry keeps a pointer to it. */
static int source_start(const struct ferry_vm *vm, const char *addr,
			const struct ferry_migrate_opts *opts,
			struct ferry_migration **m)
{
	struct ferry_session *s;
	int ret = ferry_net_connect(addr, 1, NULL, &s);

	if (!ret)
		ret = ferry_migrate_start(vm, s, opts, m);	/* takes s */
	return ret;
}

static void address(char *addr, size_t len, const char *what)
{
	snprintf(addr, len, "unix:@minivmm-%s-%d", what, (int)getpid());
}

/*
 * Cancelled before switchover.  A bandwidth limit keeps the first pass
 * going long enough to watch it; this thread cancels once some of it has
 * been sent.  Before switchover a cancel leaves the source VM running
 * here, untouched (its vCPUs never paused for ferry), and the
 * destination discards what it had.
 */
int migrate_cancelled(struct vm *src, struct vm *dst)
{
	struct ferry_vm handle = vm_handle(src);
	struct ferry_migrate_opts opts;
	struct receiver r = { .ret = 0 };
	struct ferry_migration *m;
	struct ferry_progress p;
	uint64_t steps;
	char addr[64];
	int ret;

	address(addr, sizeof(addr), "cancel");
	if (receiver_start(&r, dst, addr))
		return 1;
	ferry_migrate_opts_init(&opts);
	opts.mode = FERRY_MODE_POSTCOPY;
	opts.bandwidth_bps = 2 << 20;	/* the first pass takes 3 s */
	opts.event = on_event;
	opts.event_arg = "source";
	vm_resume(src);			/* the source runs while it migrates */
	steps = vm_steps(src);
	ret = source_start(&handle, addr, &opts, &m);
	if (ret) {
		vm_pause(src);
		receiver_join(&r);
		return fail("migrate (source)", ret);
	}
	do {				/* progress, from this thread */
		usleep(1000);
		ferry_migrate_progress(m, &p);
	} while (p.phase <= FERRY_PHASE_PRECOPY && p.bytes_sent < (256 << 10));
	printf("minivmm:   [source] cancelling in %s after %.1f MiB\n",
	       ferry_migrate_phase_name(p.phase), mib(p.bytes_sent));
	ferry_migrate_cancel(m);
	ret = ferry_migrate_wait(m, -1);
	printf("minivmm:   [source] %s; the VM is %s\n", ret ?
	       ferry_error_msg() : "completed", ferry_migrate_location_name(
	       ferry_migrate_vm_location(m)));
	if (ret != -ECANCELED || ferry_migrate_vm_location(m) != FERRY_VM_HERE)
		fail("the cancelled migration", ret ? ret : -EINVAL);
	ferry_migrate_destroy(m);
	receiver_join(&r);
	vm_pause(src);
	if (ret != -ECANCELED)
		return 1;
	if (vm_steps(src) == steps)
		return fail("the source VM did not run meanwhile", -EINVAL);
	if (!r.ret)
		return fail("the destination completed a cancelled migration",
			    -EINVAL);
	return vm_check(src, "cancelled");
}

/* From src to dst over a Unix socket session, post-copy, to the end. */
int migrate(struct vm *src, struct vm *dst)
{
	struct watcher w = { .who = "source" };
	struct ferry_vm handle = vm_handle(src);
	struct ferry_migrate_opts opts;
	struct ferry_migrate_stats st;
	struct receiver r = { .ret = 0 };
	char addr[64];
	int ret;

	address(addr, sizeof(addr), "migrate");
	if (receiver_start(&r, dst, addr))
		return 1;
	ferry_migrate_opts_init(&opts);
	opts.mode = FERRY_MODE_POSTCOPY;
	opts.event = on_event;
	opts.event_arg = "source";
	vm_resume(src);			/* the source runs while it migrates */
	ret = source_start(&handle, addr, &opts, &w.m);
	if (!ret) {
		watch(&w);
		ret = ferry_migrate_wait(w.m, -1);
		watch_end(&w);
	}
	if (!ret && !ferry_migrate_get_stats(w.m, &st))
		printf("minivmm:   [source] %.1f MiB sent, downtime %.3f ms, "
		       "%llu pages asked for\n", mib(st.bytes_sent),
		       st.downtime_ns / 1e6,
		       (unsigned long long)st.pages_requested);
	ferry_migrate_destroy(w.m);	/* the source VM stays paused */
	receiver_join(&r);
	if (ret)
		return fail("migrate (source)", ret);
	if (r.ret) {
		fprintf(stderr, "minivmm: migrate (destination): %s (%s)\n",
			strerror(-r.ret), r.reason);
		return 1;
	}
	vm_pause(dst);
	return disk_check(dst, "post-copy") | vm_check(dst, "post-copy");
}
