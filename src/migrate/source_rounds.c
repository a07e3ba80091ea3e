// SPDX-License-Identifier: MIT
/*
 * source_rounds: pre-copy.  Send every page that exists, then rounds of
 * the pages written since the last one, until the rest fits the downtime
 * budget or the rounds stop shrinking; in hybrid mode, until another round
 * cannot converge (the guest dirties too fast for the link), which is
 * judged after every round, the first pass included.
 */
#include <limits.h>
#include <string.h>

#include "base/bitmap.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/link.h"
#include "migrate/source_int.h"

int sender_round(struct sender *s, bool live, unsigned int round)
{
	const struct ferry_mem *mem = s->src->vm->mem;
	struct ferry_wire_round_end re = { .round = round };
	int ret = 0;

	for (unsigned int i = 0; i < mem->nr_regions && !ret; i++)
		for (uint64_t c = 0;
		     c < source_nr_chunks(&mem->regions[i]) && !ret; c++)
			if (sender_owns_chunk(s, i, c))
				ret = sender_send_chunk(s, i, c, false, live);
	if (!ret)
		ret = sender_flush(s, live);
	if (!ret)
		ret = ferry_wire_enc_round_end(&s->frame, &re);
	if (!ret)
		ret = source_send_frame(s->src, &s->writer, &s->frame);
	return ret;
}

void source_clear_maps(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		memset(src->send_map[i], 0,
		       bitmap_words(mem->regions[i].nr_pages) * 8);
}

static uint64_t count(struct source *src, uint64_t **maps)
{
	const struct ferry_mem *mem = src->vm->mem;
	uint64_t n = 0;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		n += bitmap_weight(maps[i], mem->regions[i].nr_pages);
	return n;
}

uint64_t source_count_maps(struct source *src)
{
	return count(src, src->send_map);
}

uint64_t source_count_resume(struct source *src)
{
	return count(src, src->resume_map);
}

void source_clear_resume(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		memset(src->resume_map[i], 0,
		       bitmap_words(mem->regions[i].nr_pages) * 8);
}

int source_map_populated(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;

	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		ssize_t n = ferry_mem_region_populated(&mem->regions[i],
						   src->send_map[i]);

		if (n < 0)
			return (int)n;
	}
	return 0;
}

/*
 * Take what REFETCH records asked for: word by word, atomically, since
 * the urgent thread may OR more in meanwhile (they wait for the next
 * round, or for the stale set).
 */
static void take_refetch(struct source *src, unsigned int region)
{
	const struct ferry_region *r = &src->vm->mem->regions[region];
	uint64_t n = 0;

	for (size_t w = 0; w < bitmap_words(r->nr_pages); w++) {
		_Atomic uint64_t *word =
			(_Atomic uint64_t *)&src->refetch_map[region][w];
		uint64_t bits;

		if (!atomic_load_explicit(word, memory_order_relaxed))
			continue;
		bits = atomic_exchange(word, 0);
		src->send_map[region][w] |= bits;
		n += (uint64_t)__builtin_popcountll(bits);
	}
	atomic_fetch_add_explicit(&src->refetched, n, memory_order_relaxed);
}

static ssize_t collect(struct source *src, unsigned int region, bool final)
{
	if (!src->dirty)
		return 0;
	return final ? ferry_dirty_collect_final(src->dirty, region,
						 src->send_map[region]) :
		       ferry_dirty_collect(src->dirty, region,
					   src->send_map[region]);
}

int source_map_dirty(struct source *src, bool final)
{
	for (unsigned int i = 0; i < src->vm->mem->nr_regions; i++) {
		ssize_t n = collect(src, i, final);

		if (n < 0)
			return (int)n;
		take_refetch(src, i);
	}
	return 0;
}

int source_round(struct source *src, bool live, double *bps)
{
	uint64_t before = atomic_load(&src->m->bytes_sent);
	uint64_t t0 = ferry_clock_now_ns();
	int ret = source_run_job(src, sender_round, live,
				 live ? FERRY_PHASE_PRECOPY :
					FERRY_PHASE_SWITCHOVER,
				 source_count_maps(src));
	uint64_t ns = ferry_clock_now_ns() - t0;

	if (!ret && ns)
		*bps = (double)(atomic_load(&src->m->bytes_sent) - before) *
		       1e9 / (double)ns;
	src->st.rounds++;
	src->round++;
	pthread_mutex_lock(&src->m->lock);
	src->m->round = src->round;
	pthread_mutex_unlock(&src->m->lock);
	return ret;
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
 * within the budget at that pace.  Both rates are over the same span,
 * from the last collect to this one: dirty_bps the distinct pages the
 * guest wrote, bps the bytes a round made good, its collect included
 * (write-protecting all of memory again costs as much as the sending on
 * some hosts, and another round pays it too).
 */
static bool hybrid_gives_up(const struct source *src, double bytes,
			    double bps, double dirty_bps)
{
	unsigned int max = src->opts->max_rounds;
	unsigned int left = max > src->round ? max - src->round : 0;

	if (bps <= 0 || dirty_bps * 100 >= bps * HYBRID_CONVERGE_PCT)
		return true;
	return rounds_to_converge(src, bytes, bps, dirty_bps) > left;
}

/* What the rounds measured, for the decision after each. */
struct pace {
	uint64_t collect_ns;	/* when the last collect ended */
	uint64_t round_bytes;	/* the last round's */
	double bps;		/* its bytes over the time until the
				 * destination had them all */
	double span_bps;	/* the same bytes over the span from the
				 * collect before it to this decision */
	double dirty_bps;	/* distinct pages written over that span */
	uint64_t rtt_ns;	/* the least time, over the rounds, from a
				 * round's last record to the destination's
				 * word that it had it all */
	uint64_t since_ns;	/* from this collect to the decision */
};

/*
 * The downtime a switchover in pre-copy would take now, ms: the last
 * collect (a read-only walk), the dirty set and what the guest writes
 * until the pause at the end-to-end rate, and the round trip of READY
 * (the in-flight data is already in: the rounds wait for it).
 */
static double precopy_downtime_ms(const struct source *src,
				  const struct pace *p, double bytes)
{
	double ns = (double)ferry_dirty_final_cost_ns(src->dirty) +
		    (double)p->rtt_ns;

	bytes += p->dirty_bps * (double)p->since_ns / 1e9;
	if (p->bps <= 0)
		return 1e9;
	return (ns + bytes * 1e9 / p->bps) / 1e6;
}

/*
 * After a round, with the pages dirtied during it in the send maps: the
 * mode to switch over in now, or false to go on with another round.
 */
static bool converged(struct source *src, uint64_t dirty, uint64_t prev,
		      const struct pace *p, enum ferry_mode *switch_mode)
{
	const struct ferry_migrate_opts *o = src->opts;
	uint64_t page = src->vm->mem->regions[0].page_size;

	if (o->mode == FERRY_MODE_POSTCOPY || mig_take_postcopy_now(src->m)) {
		*switch_mode = FERRY_MODE_POSTCOPY;
		return true;
	}
	if (precopy_downtime_ms(src, p, (double)(dirty * page)) <=
	    o->max_downtime_ms) {
		*switch_mode = FERRY_MODE_PRECOPY;
		return true;
	}
	if (o->mode == FERRY_MODE_HYBRID &&
	    hybrid_gives_up(src, (double)(dirty * page), p->span_bps,
			    p->dirty_bps)) {
		*switch_mode = FERRY_MODE_POSTCOPY;
		return true;
	}
	/* Not converging: the dirty set stopped shrinking by 10%. */
	if (src->round >= o->max_rounds ||
	    (src->round >= 2 && dirty * 10 > prev * 9)) {
		*switch_mode = o->mode == FERRY_MODE_HYBRID ?
			       FERRY_MODE_POSTCOPY : FERRY_MODE_PRECOPY;
		return true;
	}
	return false;
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
 * is the rate at which the destination took it.  The collect runs while
 * they drain.
 */
static int wait_arrived(struct source *src, uint64_t sent)
{
	struct sent_arg a = { .link = &src->link, .sent = sent };

	return mig_wait_until(src->m, &src->link, all_arrived, &a);
}

/*
 * A round went from round_ns until its last record at sent_ns; the
 * destination showed it had it all in the heartbeat that came last.  Its
 * end-to-end rate and round trip, and the rates over the span from the
 * previous collect (p->collect_ns, moved to collect_ns) to this one: the
 * guest's dirty rate (the distinct pages it wrote, as bytes per second)
 * and the round's bytes.
 */
static void measure(const struct source *src, struct pace *p, uint64_t dirty,
		    uint64_t round_ns, uint64_t sent_ns, uint64_t collect_ns)
{
	uint64_t page = src->vm->mem->regions[0].page_size;
	uint64_t now = ferry_clock_now_ns();
	uint64_t arrived = atomic_load(&src->link.heartbeat_ns);
	uint64_t span = collect_ns - p->collect_ns;

	if (arrived < sent_ns || arrived > now)
		arrived = arrived < sent_ns ? sent_ns : now;
	p->bps = arrived > round_ns ? (double)p->round_bytes * 1e9 /
				      (double)(arrived - round_ns) : 0;
	p->span_bps = span ? (double)p->round_bytes * 1e9 / (double)span : 0;
	p->dirty_bps = span ? (double)(dirty * page) * 1e9 / (double)span : 0;
	if (!p->rtt_ns || arrived - sent_ns < p->rtt_ns)
		p->rtt_ns = arrived - sent_ns;
	p->since_ns = now - collect_ns;
	p->collect_ns = collect_ns;
}

/* One live round and the collect after it; *sent_ns: its last record. */
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
	return ret ? ret : source_map_dirty(src, false);
}

int source_precopy(struct source *src, enum ferry_mode *switch_mode)
{
	struct pace p = { .collect_ns = ferry_clock_now_ns() };
	uint64_t prev = UINT64_MAX, dirty;
	int ret;

	if (!src->dirty) {	/* nothing can tell what changed: all later */
		*switch_mode = FERRY_MODE_POSTCOPY;
		return 0;
	}
	source_clear_maps(src);
	ret = source_map_populated(src);
	for (;;) {
		uint64_t round_ns = ferry_clock_now_ns(), sent_ns, collect_ns;

		if (!ret)
			ret = live_round(src, &p, &sent_ns);
		collect_ns = ferry_clock_now_ns();
		if (!ret)
			ret = wait_arrived(src, atomic_load(&src->link.data_sent));
		if (ret)
			return ret;
		dirty = source_count_maps(src);
		measure(src, &p, dirty, round_ns, sent_ns, collect_ns);
		if (converged(src, dirty, prev, &p, switch_mode))
			return 0;
		prev = dirty;
	}
}
