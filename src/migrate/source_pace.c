// SPDX-License-Identifier: MIT
/*
 * source_pace: how many pre-copy rounds.  After each round a peek (a
 * collect that protects nothing again) tells what the guest wrote, and
 * the destination is heard to have read all of the round; then the
 * decision: switch over in pre-copy when the rest fits the downtime
 * budget by an estimate of the whole switchover, in post-copy when
 * (hybrid) another round cannot converge, or go on, and only then
 * protect the written pages again, which is most of a round's cost while
 * the vCPUs write (hybrid gives that up too, for post-copy, when it takes
 * longer than sending the dirty set would).
 *
 *   round k | peek | wait: all of it arrived | decide | protect | round k+1
 */
#include <limits.h>
#include <time.h>

#include "base/bitmap.h"
#include "ferry/clock.h"
#include "migrate/link.h"
#include "migrate/source_int.h"

/* What the rounds measured, for the decision after each.  Main's own. */
struct pace {
	uint64_t peek_ns;	/* when the last peek ended: a round's span
				 * runs from one to the next, its protecting
				 * collect included */
	uint64_t protect_ns;	/* when the last protecting collect started
				 * (or tracking did): the dirty set is what
				 * was written since */
	uint64_t round_bytes;	/* the last round's */
	uint64_t span_ns;	/* from the peek before it to its own */
	double bps;		/* its bytes over the time until the
				 * destination had them all */
	double dirty_bps;	/* the distinct pages written since the last
				 * protecting collect, as bytes per second */
	uint64_t rtt_ns;	/* the least time, over the rounds, from a
				 * round's last record to the destination's
				 * word that it had it all */
	uint64_t peek_cpu_ns;	/* the last peek's CPU time: what the last
				 * collect costs, the vCPUs paused */
	uint64_t since_ns;	/* from the last peek to the decision */
};

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t page_size(const struct source *src)
{
	return src->vm->mem->regions[0].page_size;
}

/* ---- measuring ---------------------------------------------------------- */

/* What the guest wrote since the last protecting collect, protecting
 * nothing: its CPU time is what the last collect will cost. */
static int peek(struct source *src, struct pace *p)
{
	uint64_t cpu = thread_cpu_ns();
	ssize_t n = source_map_dirty(src, false);

	p->peek_cpu_ns = thread_cpu_ns() - cpu;
	return n < 0 ? (int)n : 0;
}

struct sent_arg {
	const struct link *link;
	uint64_t sent;
};

static bool all_arrived(const void *arg)
{
	const struct sent_arg *a = arg;

	return link_peer_received(a->link) >= a->sent;
}

/*
 * Wait until the destination shows it has read all that was sent: it
 * says so at each ROUND_END.  Socket buffers hold tens of MiB on a fast
 * link, which the destination must read before it sees SWITCHOVER: read
 * now, while the guest runs, they cost no downtime, and the round's rate
 * is the rate at which the destination took it.  The peek runs while
 * they drain.
 */
static int wait_arrived(struct source *src, uint64_t sent)
{
	struct sent_arg a = { .link = &src->link, .sent = sent };

	return mig_wait_until(src->m, &src->link, all_arrived, &a);
}

/*
 * A round went from round_ns until its last record at sent_ns, its peek
 * ended at peek_ns, and the destination showed it had it all in the
 * heartbeat that came last.  Its end-to-end rate and round trip, and the
 * guest's dirty rate.
 */
static void measure(const struct source *src, struct pace *p, uint64_t dirty,
		    uint64_t round_ns, uint64_t sent_ns, uint64_t peek_ns)
{
	uint64_t now = ferry_clock_now_ns();
	uint64_t arrived = atomic_load(&src->link.heartbeat_ns);
	uint64_t since = peek_ns - p->protect_ns;

	if (arrived < sent_ns || arrived > now)
		arrived = arrived < sent_ns ? sent_ns : now;
	p->bps = arrived > round_ns ? (double)p->round_bytes * 1e9 /
				      (double)(arrived - round_ns) : 0;
	if (!p->rtt_ns || arrived - sent_ns < p->rtt_ns)
		p->rtt_ns = arrived - sent_ns;
	p->dirty_bps = since ? (double)(dirty * page_size(src)) * 1e9 /
			       (double)since : 0;
	p->span_ns = peek_ns - p->peek_ns;
	p->peek_ns = peek_ns;
	p->since_ns = now - peek_ns;
}

/* ---- deciding ----------------------------------------------------------- */

/*
 * The downtime a switchover in pre-copy would take now, ms: the last
 * collect (a peek, the vCPUs paused: as long as this one's CPU time), the
 * dirty set and what the guest writes until the pause at the end-to-end
 * rate, and the round trip of READY (the data in flight is in already:
 * the rounds wait for it).
 */
static double precopy_downtime_ms(const struct pace *p, double bytes)
{
	double ns = (double)p->peek_cpu_ns + (double)p->rtt_ns;

	if (p->bps <= 0)
		return 1e9;
	bytes += p->dirty_bps * (double)p->since_ns / 1e9;
	return (ns + bytes * 1e9 / p->bps) / 1e6;
}

/*
 * Hybrid: another round cannot converge when the guest dirties memory at
 * this share of the bandwidth or more.  A round that sends D bytes at B
 * leaves about D x R / B dirty behind it (R: the guest's dirty rate), so
 * at R / B = 1/2 the rounds still to come would send as much again as the
 * dirty set itself, which post-copy sends once.
 */
#define HYBRID_CONVERGE_PCT	50

/*
 * Rounds it would take, each shrinking the dirty set by dirty_bps / bps,
 * to bring `bytes` within the downtime budget; UINT_MAX when the set does
 * not shrink.
 */
static unsigned int rounds_to_converge(const struct source *src, double bytes,
				       double bps, double dirty_bps)
{
	double budget = bps * src->opts->max_downtime_ms / 1e3;
	double shrink = dirty_bps / bps;
	unsigned int n = 0;

	if (shrink >= 1)
		return UINT_MAX;
	for (; bytes > budget && n < UINT_MAX; n++)
		bytes *= shrink;
	return n;
}

/*
 * Hybrid, after any round (the first pass included): true when another
 * round cannot converge, so that post-copy starts now rather than after
 * rounds that resend what the guest keeps writing.  Either the guest
 * dirties too fast for the link, or the rounds left cannot bring `bytes`
 * within the budget at that pace.  The bandwidth is what the last round
 * made good over its whole span, its protecting collect included.
 */
static bool hybrid_gives_up(const struct source *src, const struct pace *p,
			    double bytes)
{
	unsigned int max = src->opts->max_rounds;
	unsigned int left = max > src->round ? max - src->round : 0;
	double bps = p->span_ns ? (double)p->round_bytes * 1e9 /
				  (double)p->span_ns : 0;

	if (bps <= 0 || p->dirty_bps * 100 >= bps * HYBRID_CONVERGE_PCT)
		return true;
	return rounds_to_converge(src, bytes, bps, p->dirty_bps) > left;
}

/*
 * After a round and its peek: true and the mode to switch over in now,
 * or false to go on with another round.
 */
static bool decide(struct source *src, const struct pace *p, uint64_t dirty,
		  uint64_t prev, enum ferry_mode *switch_mode)
{
	const struct ferry_migrate_opts *o = src->opts;
	double bytes = (double)(dirty * page_size(src));

	*switch_mode = FERRY_MODE_POSTCOPY;
	if (o->mode == FERRY_MODE_POSTCOPY || mig_take_postcopy_now(src->m))
		return true;
	*switch_mode = FERRY_MODE_PRECOPY;
	if (precopy_downtime_ms(p, bytes) <= o->max_downtime_ms)
		return true;
	if (o->mode == FERRY_MODE_HYBRID) {
		*switch_mode = FERRY_MODE_POSTCOPY;
		if (hybrid_gives_up(src, p, bytes))
			return true;
	}
	/* Not converging: the dirty set stopped shrinking by 10%. */
	*switch_mode = o->mode == FERRY_MODE_HYBRID ? FERRY_MODE_POSTCOPY :
						      FERRY_MODE_PRECOPY;
	return src->round >= o->max_rounds ||
	       (src->round >= 2 && dirty * 10 > prev * 9);
}

/* ---- the rounds --------------------------------------------------------- */

/* One live round over the send maps; *sent_ns: its last record. */
static int live_round(struct source *src, struct pace *p, uint64_t *sent_ns)
{
	uint64_t before = atomic_load(&src->m->bytes_sent);
	double bps;
	int ret = 0;

	if (mig_cancelled(src->m))
		ret = mig_cancel_error(src->m, "the VM runs here");
	if (!ret)
		ret = source_round(src, true, &bps);
	*sent_ns = ferry_clock_now_ns();
	p->round_bytes = atomic_load(&src->m->bytes_sent) - before;
	source_clear_maps(src);
	return ret;
}

/*
 * Protect the dirty set again for another round: 1 when done, 0 when
 * hybrid gives it up for post-copy, or -errno.  Protecting costs a TLB
 * flush per chunk, on the vCPUs' CPUs too while they run (on this kind of
 * host half a second for 1 GiB written at random by two vCPUs, while
 * sending the few tens of MiB they wrote takes a tenth of that).  So
 * hybrid gives it as long as post-copy would take to send the dirty set,
 * and no longer: a round that cannot even be prepared in that time does
 * not pay.  What is left unprotected stays written, so the last collect
 * finds it: nothing is lost either way.
 */
static int protect(struct source *src, struct pace *p, uint64_t dirty)
{
	uint64_t deadline = 0;

	p->protect_ns = ferry_clock_now_ns();
	if (src->opts->mode == FERRY_MODE_HYBRID && p->bps > 0)
		deadline = p->protect_ns + (uint64_t)((double)(dirty *
				page_size(src)) * 1e9 / p->bps);
	return source_protect_maps(src, deadline);
}

int source_precopy(struct source *src, enum ferry_mode *switch_mode)
{
	uint64_t now = ferry_clock_now_ns(), prev = UINT64_MAX;
	struct pace p = { .peek_ns = now, .protect_ns = now };
	int ret;

	if (!src->dirty) {	/* nothing can tell what changed: all later */
		*switch_mode = FERRY_MODE_POSTCOPY;
		return 0;
	}
	source_clear_maps(src);
	ret = source_map_populated(src);
	while (!ret) {
		uint64_t round_ns = ferry_clock_now_ns(), sent_ns, dirty;

		ret = live_round(src, &p, &sent_ns);
		if (!ret)
			ret = peek(src, &p);
		now = ferry_clock_now_ns();
		if (!ret)
			ret = wait_arrived(src,
					   atomic_load(&src->link.data_sent));
		if (ret)
			break;
		dirty = source_count_maps(src);
		measure(src, &p, dirty, round_ns, sent_ns, now);
		if (decide(src, &p, dirty, prev, switch_mode))
			return 0;
		prev = dirty;
		ret = protect(src, &p, dirty);
		if (ret == 0) {		/* hybrid gave the round up */
			*switch_mode = FERRY_MODE_POSTCOPY;
			return 0;
		}
		ret = ret < 0 ? ret : 0;
	}
	return ret;
}
