// SPDX-License-Identifier: MIT
/*
 * The handle on a migration in flight, used from another thread while
 * it runs: the bandwidth limit holds (bytes counted over a window of the
 * test's own clock) and changes while running; a cancel before the
 * commit leaves the VM running here; post-copy now switches over at the
 * next round; events come in order.  Each migration ends with the
 * verifier.
 */
#include <stdlib.h>
#include <time.h>

#include "ferry/migrate.h"
#include "rigtest.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- the bandwidth limit ------------------------------------------------ */

#define BW_FIRST	(8ULL << 20)
#define BW_SECOND	(20ULL << 20)

/*
 * Windows of one second of the test's clock, each opened 300 ms after the
 * limit was set, while the senders send (bytes moved since the last
 * look), and inside one pre-copy round, the last one (paused) included
 * (between rounds the source collects the dirty set and sends nothing):
 * what the source counted as sent over each, per second.
 */
struct bw {
	int stage;
	unsigned int round;
	uint64_t t0, b0, set_at, last_bytes;
	double rate[2];
};

static void bw_tick(struct ferry_migration *sm, const struct ferry_progress *p,
		    void *arg)
{
	struct bw *bw = arg;
	uint64_t now = now_ns();
	bool sending;

	if (bw->stage > 3 || p->phase < FERRY_PHASE_PRECOPY ||
	    p->phase > FERRY_PHASE_SWITCHOVER)
		return;
	if (!bw->set_at)
		bw->set_at = now;
	sending = p->bytes_sent != bw->last_bytes;
	bw->last_bytes = p->bytes_sent;
	if (bw->stage % 2 == 0 && now - bw->set_at >= 300000000ULL &&
	    sending) {
		bw->t0 = now;
		bw->b0 = p->bytes_sent;
		bw->round = p->round;
		bw->stage++;
	} else if (bw->stage % 2 == 1 && p->round != bw->round) {
		bw->stage--;		/* a new round: open the window again */
	} else if (bw->stage % 2 == 1 && now - bw->t0 >= 1000000000ULL) {
		bw->rate[bw->stage / 2] = (double)(p->bytes_sent - bw->b0) *
					  1e9 / (double)(now - bw->t0);
		bw->stage++;
		ferry_migrate_set_bandwidth(sm, bw->stage == 2 ? BW_SECOND : 0);
		bw->set_at = now;
	}
}

static enum test_result bandwidth(struct test_ctx *ctx)
{
	struct bw bw = { 0 };
	struct rig_opts o;
	struct rig_result r;
	enum test_result res;

	rig_opts_init(&o);
	o.backing = ctx->backing;
	o.mem = 64 << 20;
	/*
	 * Writes capped, so the machine is not kept busy, yet faster than
	 * the limit: pre-copy never converges while limited, and the
	 * senders always have pages to send.
	 */
	o.vcpus = 2;
	o.workload = "random,rate=40M";
	o.mode = FERRY_MODE_PRECOPY;
	o.timeout_ms = 5000;
	o.bandwidth = BW_FIRST;
	o.tick = bw_tick;
	o.tick_arg = &bw;
	res = rig_verified(ctx, &r, rig_run(&o, &r));
	if (res != TEST_PASS)
		return res;
	if (getenv("FERRY_TEST_VERBOSE"))
		fprintf(stderr, "    %.2f MiB/s (limit %.0f), %.2f MiB/s "
			"(limit %.0f)\n", bw.rate[0] / (1 << 20),
			(double)BW_FIRST / (1 << 20), bw.rate[1] / (1 << 20),
			(double)BW_SECOND / (1 << 20));
	CHECK(ctx, bw.stage == 4, "pre-copy ended before both windows "
	      "(stage %d)", bw.stage);
	CHECK(ctx, bw.rate[0] > 0.9 * BW_FIRST && bw.rate[0] < 1.1 * BW_FIRST,
	      "%.2f MiB/s with a limit of %.0f", bw.rate[0] / (1 << 20),
	      (double)BW_FIRST / (1 << 20));
	CHECK(ctx, bw.rate[1] > 0.9 * BW_SECOND &&
	      bw.rate[1] < 1.1 * BW_SECOND, "%.2f MiB/s with a limit of %.0f",
	      bw.rate[1] / (1 << 20), (double)BW_SECOND / (1 << 20));
	CHECK(ctx, !r.src.ret && r.at_dest, "it did not complete: %s",
	      r.src.reason);
	/* The handle's progress carries the rate without a callback. */
	CHECK(ctx, r.src.max_rate_bps > 0.5 * BW_FIRST, "progress showed at most "
	      "%.2f MiB/s", r.src.max_rate_bps / (1 << 20));
	return TEST_PASS;
}

/* ---- cancel ------------------------------------------------------------- */

static void cancel_tick(struct ferry_migration *sm,
			const struct ferry_progress *p, void *arg)
{
	bool *done = arg;

	if (!*done && p->phase == FERRY_PHASE_PRECOPY &&
	    p->elapsed_ns > 300000000ULL) {
		ferry_migrate_cancel(sm);
		*done = true;
	}
}

/* Before the commit: -ECANCELED with a reason, the VM runs on here. */
static enum test_result cancel(struct test_ctx *ctx)
{
	struct rig_opts o;
	struct rig_result r;
	enum test_result res;
	bool done = false;

	rig_opts_init(&o);
	o.backing = ctx->backing;
	o.mode = FERRY_MODE_PRECOPY;
	o.bandwidth = 8 << 20;
	o.tick = cancel_tick;
	o.tick_arg = &done;
	res = rig_verified(ctx, &r, rig_run(&o, &r));
	if (res != TEST_PASS)
		return res;
	CHECK(ctx, r.src.ret == -ECANCELED && strstr(r.src.reason,
	      "the VM runs here"), "source: %d (%s)", r.src.ret,
	      r.src.reason);
	CHECK(ctx, r.src.location == FERRY_VM_HERE && !r.at_dest,
	      "the VM is %s the source",
	      ferry_migrate_location_name(r.src.location));
	CHECK(ctx, r.dst.ret != 0, "the destination completed");
	CHECK(ctx, !strcmp(ferry_migrate_phase_name(FERRY_PHASE_FAILED),
			   "failed"), "FERRY_PHASE_FAILED is named \"%s\"",
	      ferry_migrate_phase_name(FERRY_PHASE_FAILED));
	return TEST_PASS;
}

/* ---- post-copy now ------------------------------------------------------ */

static void postcopy_tick(struct ferry_migration *sm,
			  const struct ferry_progress *p, void *arg)
{
	bool *done = arg;

	if (!*done && p->phase == FERRY_PHASE_PRECOPY && p->round >= 1) {
		ferry_migrate_postcopy_now(sm);
		*done = true;
	}
}

/*
 * Pre-copy of a VM that dirties more than the link carries would go on
 * for its 30 rounds; asked, it switches over in post-copy.
 */
static enum test_result postcopy_now(struct test_ctx *ctx)
{
	struct rig_opts o;
	struct rig_result r;
	enum test_result res;
	bool done = false;

	rig_opts_init(&o);
	o.backing = ctx->backing;
	o.mode = FERRY_MODE_PRECOPY;
	o.bandwidth = 32 << 20;
	o.tick = postcopy_tick;
	o.tick_arg = &done;
	res = rig_verified(ctx, &r, rig_run(&o, &r));
	if (res != TEST_PASS)
		return res;
	CHECK(ctx, done && !r.src.ret && r.at_dest, "source %d (%s)",
	      r.src.ret, r.src.reason);
	CHECK_EQ(ctx, r.src.stats.mode, FERRY_MODE_POSTCOPY);
	CHECK(ctx, r.src.stats.rounds <= 3, "%u rounds", r.src.stats.rounds);
	return TEST_PASS;
}

/* ---- events ------------------------------------------------------------- */

static bool in_order(const struct rig_side *side,
		     const enum ferry_migrate_event_kind *want, unsigned int n)
{
	unsigned int k = 0;

	for (unsigned int i = 0; i < side->nr_events && k < n; i++)
		k += side->events[i] == want[k];
	return k == n && side->events[side->nr_events - 1] == want[n - 1];
}

/* Switchover, the destination running, done: in that order, both sides. */
static enum test_result events(struct test_ctx *ctx)
{
	static const enum ferry_migrate_event_kind want[] = {
		FERRY_EVENT_SWITCHOVER, FERRY_EVENT_DEST_RUNNING,
		FERRY_EVENT_DONE,
	};
	struct rig_opts o;
	struct rig_result r;
	enum test_result res;

	rig_opts_init(&o);
	o.backing = ctx->backing;
	o.mode = FERRY_MODE_POSTCOPY;
	res = rig_verified(ctx, &r, rig_run(&o, &r));
	if (res != TEST_PASS)
		return res;
	CHECK(ctx, in_order(&r.src, want, 3), "source events out of order");
	CHECK(ctx, in_order(&r.dst, want, 3), "destination events out of "
	      "order");
	CHECK(ctx, !r.src.stats.pauses && r.src.stats.sessions == 1,
	      "pauses %u, sessions %u", r.src.stats.pauses,
	      r.src.stats.sessions);
	/* Post-copy: both sides say pages are owed when the VM runs. */
	CHECK(ctx, r.src.running_owed > 0 && r.dst.running_owed > 0,
	      "pages owed at "
	      "DEST_RUNNING: source %llu, destination %llu",
	      (unsigned long long)r.src.running_owed,
	      (unsigned long long)r.dst.running_owed);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "handle_bandwidth_limit_holds", bandwidth, B_SHMEM,
	  FERRY_UFFD_F_WP_ASYNC, NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 0, 60 },
	{ "handle_cancel_before_commit_vm_runs_here", cancel, B_SHMEM,
	  FERRY_UFFD_F_WP_ASYNC, NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 0, 60 },
	{ "handle_postcopy_now", postcopy_now, B_SHMEM, FERRY_UFFD_F_WP_ASYNC,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR |
	  NEED_UFFD_MISSING, 0, 60 },
	{ "handle_events_in_order", events, B_SHMEM, FERRY_UFFD_F_WP_ASYNC,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR |
	  NEED_UFFD_MISSING, 0, 60 },
};

TEST_SUITE(handle, cases)
