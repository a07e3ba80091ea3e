// SPDX-License-Identifier: MIT
/*
 * bench/soak: randomized faulted migrations, each ending with the
 * verifier wherever the VM ended up, and the tally.  Not a timing: a
 * count of what happened, and the promise it checks is "nothing lost":
 * zero writes lost, torn or duplicated over every run; a migration that
 * fails before the commit leaves the VM running, whole, at the source;
 * one that pauses after it recovers (target: every one).
 *
 * Each run picks a mode (pre-copy, hybrid, post-copy, post-copy at once),
 * a point of the protocol (a record type on a channel, one direction, its
 * nth occurrence: pages in a round, the stale bitmap, a vCPU state,
 * SWITCHOVER, READY, COMMIT, a reply, a request, a heartbeat, the HEADER,
 * ACCEPT, a push after switchover) and a fault there (a byte flipped in
 * the record's header, meta or data; the session cut; stalled for good
 * or for less than the timeout; every record delayed), through the
 * proxy of tests/faultproxy.c, driven by the rig of tests/migrig.c (the
 * destination accepts a new session when paused, the source dials
 * again).  One run in eight instead takes the link between two network
 * namespaces down after the commit, for longer than the timeout.  A
 * fault whose point never comes in that run (a BITMAP in pre-copy)
 * leaves an unfaulted run, which is counted apart and not towards the
 * number asked for.
 *
 * Environment: FERRY_SOAK_COUNT (faulted runs, default 200),
 * FERRY_SOAK_SECONDS (budget, default 120, so that `make bench` stays
 * under 15 minutes; the tally says how many runs fit), FERRY_SOAK_SEED.
 *
 * Figures (key=value): soak_runs, soak_faulted, soak_unfaulted,
 * soak_migrated (completed, no pause), soak_refetched (of those, the ones
 * where a page failed its check: torn, or flipped on the way),
 * soak_failed_before_commit_intact,
 * soak_paused_after_commit, soak_recovered_after_commit,
 * soak_recovered_share_pct, soak_lost_writes, soak_torn_writes,
 * soak_duplicated_writes, soak_bad (a run that broke the promise: the
 * rig's reason on stderr), then per fault kind soak_<kind>_runs and
 * _recovered.  Exit status 1 when any write was lost, torn or
 * duplicated, or a run broke the promise.
 */
#include <sys/wait.h>

#include "bench.h"

#include "../tests/faultproxy.c"
#include "../tests/migrig.c"
#include "../tests/netns.c"

enum kind {
	K_FLIP_DATA, K_FLIP_META, K_FLIP_HDR, K_CUT, K_STALL, K_STALL_SHORT,
	K_DELAY, K_LINK_DOWN, K_COUNT
};

static const char *const kind_names[K_COUNT] = {
	"flip_data", "flip_meta", "flip_header", "cut", "stall",
	"stall_short", "delay", "link_down",
};

/* Where in the protocol: a record type on a channel, one way. */
struct point {
	int role;		/* 1 bulk, 2 urgent */
	bool to_dest;
	unsigned int type, after, max_nth;
};

static const struct point points[] = {
	{ 1, true, FERRY_WIRE_PAGES, 0, 24 },		/* rounds */
	{ 1, true, FERRY_WIRE_ZERO_PAGES, 0, 2 },
	{ 1, true, FERRY_WIRE_ROUND_END, 0, 3 },
	{ 1, true, FERRY_WIRE_BITMAP, 0, 0 },		/* stale */
	{ 1, true, FERRY_WIRE_VCPU, 0, 2 },
	{ 1, true, FERRY_WIRE_SWITCHOVER, 0, 0 },
	{ 1, true, FERRY_WIRE_PAGES, FERRY_WIRE_SWITCHOVER, 12 },  /* push */
	{ 1, true, FERRY_WIRE_HEADER, 0, 0 },
	{ 2, false, FERRY_WIRE_ACCEPT, 0, 0 },
	{ 2, false, FERRY_WIRE_SWITCHOVER, 0, 0 },	/* READY */
	{ 2, true, FERRY_WIRE_COMMIT, 0, 0 },
	{ 2, true, FERRY_WIRE_PAGES, 0, 40 },		/* replies */
	{ 2, false, FERRY_WIRE_PAGE_REQUEST, 0, 40 },
	{ 2, false, FERRY_WIRE_HEARTBEAT, 0, 6 },
	{ 2, true, FERRY_WIRE_HEARTBEAT, 0, 6 },
	{ 2, false, FERRY_WIRE_REFETCH, 0, 0 },
};

struct tally {
	unsigned int runs, faulted, unfaulted, migrated, refetched,
		     failed_intact, paused, recovered, bad;
	uint64_t lost, torn, dup;
	unsigned int kind_runs[K_COUNT], kind_recovered[K_COUNT];
};

static uint64_t rng;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static unsigned int pick(unsigned int n)
{
	return (unsigned int)(next_rand() % n);
}

static void pick_mode(struct rig_opts *o)
{
	switch (pick(4)) {
	case 0: o->mode = FERRY_MODE_PRECOPY; break;
	case 1: o->mode = FERRY_MODE_HYBRID; break;
	case 2: o->mode = FERRY_MODE_POSTCOPY; break;
	default: o->mode = FERRY_MODE_POSTCOPY; o->at_once = true; break;
	}
	/* A slow link now and then: post-copy lasts, requests fault. */
	o->bandwidth = pick(2) ? 0 : 16ULL << 20;
}

static void pick_fault(struct rig_opts *o, enum kind kind)
{
	const struct point *pt = &points[pick(sizeof(points) /
					      sizeof(points[0]))];
	struct fp_rule r = { .session = 1, .role = pt->role, .index = -1,
		.to_dest = pt->to_dest, .type = pt->type, .after = pt->after,
		.nth = pt->max_nth ? pick(pt->max_nth + 1) : 0,
		.offset = (unsigned int)next_rand(),
		.mask = (uint8_t)(1u << pick(8)) };

	switch (kind) {
	case K_FLIP_DATA: r.action = FP_FLIP; r.part = FP_DATA; break;
	case K_FLIP_META: r.action = FP_FLIP; r.part = FP_META; break;
	case K_FLIP_HDR: r.action = FP_FLIP; r.part = FP_HDR; break;
	case K_CUT: r.action = FP_CUT; break;
	case K_STALL: r.action = FP_STALL; r.ms = 0; break;
	case K_STALL_SHORT: r.action = FP_STALL; r.ms = 300; break;
	default: r.action = FP_DELAY; r.ms = 1 + pick(30); break;
	}
	o->rules[o->nr_rules++] = r;
}

/* ---- the link between two namespaces ------------------------------------ */

static struct rig_flap flap = { .down_ms = 1500 };	/* > the timeout */
static bool flap_ready;

/*
 * The namespaces go on every exit path too: a signal (the watchdog
 * included) runs `ip netns del` for both, with fork and exec only, then
 * bench.h's handler puts the rest back.
 */
static void del_netns(const char *name)
{
	pid_t pid = fork();

	if (pid == 0) {
		execlp("ip", "ip", "netns", "del", name, (char *)NULL);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

static void del_flap_netns(void)
{
	char a[40], b[40];
	size_t n = strlen(flap.ns.name);

	if (!flap_ready || n + 3 > sizeof(a))
		return;
	memcpy(a, flap.ns.name, n);
	memcpy(a + n, "-a", 3);
	memcpy(b, a, n + 3);
	b[n + 1] = 'b';
	del_netns(a);
	del_netns(b);
}

static void on_signal(int sig)
{
	del_flap_netns();
	bench_on_signal(sig);
}

static void catch_signals(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM,
				    SIGSEGV, SIGBUS, SIGABRT };
	struct sigaction sa = { .sa_handler = on_signal,
				.sa_flags = SA_RESETHAND };

	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}

static void link_down_opts(struct rig_opts *o)
{
	o->mode = FERRY_MODE_POSTCOPY;
	o->at_once = true;
	o->bandwidth = 8ULL << 20;
	rig_flap_opts(o, &flap, NETNS_ADDR_B ":7653");
}

/* ---- one run, and what it came to --------------------------------------- */

static void count(struct tally *t, enum kind kind, const struct rig_opts *o,
		  const struct rig_result *r, int ret)
{
	bool fired = kind == K_LINK_DOWN ? flap.done : r->fired > 0;
	bool paused = r->src.stats.pauses || r->dst.stats.pauses;

	t->runs++;
	if (!fired) {
		t->unfaulted++;
	} else {
		t->faulted++;
		t->kind_runs[kind]++;
	}
	t->lost += r->rep.lost;
	t->torn += r->rep.torn;
	t->dup += r->rep.duplicated;
	t->paused += paused && (!r->dst.ret ||
				r->src.location != FERRY_VM_HERE);
	if (ret || !r->verified || !r->rep.ok) {
		t->bad++;
		fprintf(stderr, "soak run %u (%s, %s): %s; source %d (%s), "
			"destination %d (%s)\n", t->runs, kind_names[kind],
			ferry_migrate_mode_name(o->mode), r->why, r->src.ret,
			r->src.reason, r->dst.ret, r->dst.reason);
	} else if (!r->dst.ret && paused) {
		t->recovered++;
		t->kind_recovered[kind] += fired;
	} else if (!r->dst.ret) {
		t->migrated++;
		t->refetched += r->dst.stats.torn_pages > 0;
	} else if (r->src.location == FERRY_VM_HERE) {
		t->failed_intact++;
	} else {
		t->bad++;	/* paused after the commit, never recovered */
		fprintf(stderr, "soak run %u (%s): paused, not recovered: %s\n",
			t->runs, kind_names[kind], r->src.reason);
	}
}

static void one_run(struct tally *t)
{
	enum kind kind = (enum kind)pick(flap_ready ? K_COUNT : K_LINK_DOWN);
	struct rig_opts o;
	struct rig_result r;
	int ret;

	rig_opts_init(&o);
	o.mem = 16 << 20;
	o.budget_ms = 40000;
	if (kind == K_LINK_DOWN) {
		link_down_opts(&o);
	} else {
		pick_mode(&o);
		pick_fault(&o, kind);
	}
	if (getenv("FERRY_SOAK_VERBOSE") && o.nr_rules)
		fprintf(stderr, "soak run %u: %s%s, %s on %s %s type %u nth "
			"%u after %u, bw %llu\n", t->runs + 1,
			ferry_migrate_mode_name(o.mode), o.at_once ?
			" at once" : "", kind_names[kind],
			o.rules[0].role == 1 ? "bulk" : "urgent",
			o.rules[0].to_dest ? "to dest" : "to source",
			o.rules[0].type, o.rules[0].nth, o.rules[0].after,
			(unsigned long long)o.bandwidth);
	ret = rig_run(&o, &r);
	count(t, kind, &o, &r, ret);
}

static void put_tally(const struct tally *t)
{
	printf("soak_runs=%u\nsoak_faulted=%u\nsoak_unfaulted=%u\n", t->runs,
	       t->faulted, t->unfaulted);
	printf("soak_migrated=%u\nsoak_refetched=%u\n", t->migrated,
	       t->refetched);
	printf("soak_failed_before_commit_intact=%u\n", t->failed_intact);
	printf("soak_paused_after_commit=%u\nsoak_recovered_after_commit=%u\n",
	       t->paused, t->recovered);
	printf("soak_recovered_share_pct=%.1f\n", t->paused ?
	       100.0 * t->recovered / t->paused : 100.0);
	printf("soak_lost_writes=%llu\nsoak_torn_writes=%llu\n"
	       "soak_duplicated_writes=%llu\nsoak_bad=%u\n",
	       (unsigned long long)t->lost, (unsigned long long)t->torn,
	       (unsigned long long)t->dup, t->bad);
	for (int k = 0; k < K_COUNT; k++)
		printf("soak_%s_runs=%u\nsoak_%s_recovered=%u\n", kind_names[k],
		       t->kind_runs[k], kind_names[k], t->kind_recovered[k]);
}

static unsigned long env(const char *name, unsigned long dflt)
{
	const char *v = getenv(name);

	return v && *v ? strtoul(v, NULL, 0) : dflt;
}

int main(int argc, char **argv)
{
	uint64_t start = bench_now_ns();
	unsigned long want = env("FERRY_SOAK_COUNT", 200);
	uint64_t budget = env("FERRY_SOAK_SECONDS", 120) * BENCH_NSEC;
	struct tally t = { 0 };
	char why[200];

	rng = env("FERRY_SOAK_SEED", 0x5eedf00d) | 1;
	bench_start(argc, argv, "soak", (unsigned int)(budget / BENCH_NSEC) +
		    60);
	printf("soak_seed=%llu\nsoak_asked=%lu\n", (unsigned long long)rng,
	       want);
	catch_signals();
	flap_ready = !netns_setup(&flap.ns, "tbf rate 1gbit burst 128kb "
				  "latency 100ms", why, sizeof(why));
	if (flap_ready && rig_flap_enter_source(&flap)) {
		snprintf(why, sizeof(why), "cannot enter the namespace");
		netns_teardown(&flap.ns);
		flap_ready = false;
	}
	if (!flap_ready)
		printf("soak_link_down_skip=%s\n", why);
	while (t.faulted < want && bench_now_ns() - start < budget)
		one_run(&t);
	put_tally(&t);
	if (flap_ready)
		netns_teardown(&flap.ns);
	bench_finish(start);
	return t.lost || t.torn || t.dup || t.bad ? 1 : 0;
}
