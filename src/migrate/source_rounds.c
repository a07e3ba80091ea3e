// SPDX-License-Identifier: MIT
/*
 * source_rounds: pre-copy's rounds.  The send maps (every page that
 * exists, then the pages written since a collect, and those the
 * destination asked for again), and a round over them on every sender;
 * source_pace.c says how many.
 */
#include <string.h>

#include "base/bitmap.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
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

static ssize_t collect(struct source *src, unsigned int region, bool protect)
{
	if (!src->dirty)
		return 0;
	return protect ? ferry_dirty_collect(src->dirty, region,
					     src->send_map[region]) :
			 ferry_dirty_peek(src->dirty, region,
					  src->send_map[region]);
}

ssize_t source_map_dirty(struct source *src, bool protect)
{
	ssize_t newly = 0;

	for (unsigned int i = 0; i < src->vm->mem->nr_regions; i++) {
		ssize_t n = collect(src, i, protect);

		if (n < 0)
			return n;
		newly += n;
		take_refetch(src, i);
	}
	return newly;
}

/* Any bit set in [first, end) of a map? */
static bool any_in(const uint64_t *map, uint64_t first, uint64_t end)
{
	for (uint64_t p = first; p < end; p += 64 - p % 64) {
		uint64_t bits = map[p / 64] >> (p % 64);

		if (end - p < 64 - p % 64)	/* not to the word's end */
			bits &= (1ULL << (end - p)) - 1;
		if (bits)
			return true;
	}
	return false;
}

/* Chunks protected in one call, at most: the deadline is looked at
 * between calls. */
#define PROTECT_RUN_CHUNKS	4

/*
 * From chunk *c of region r on: the next run of chunks holding a page in
 * the send map, protected again; *c moves past it.  0 when none is left.
 */
static ssize_t protect_next_run(struct source *src, unsigned int region,
				uint64_t *c)
{
	const struct ferry_region *r = &src->vm->mem->regions[region];
	const uint64_t *map = src->send_map[region];
	uint64_t per = migrate_chunk_pages(r), nr = source_nr_chunks(r);
	uint64_t first, end;
	ssize_t n;

	while (*c < nr && !any_in(map, *c * per,
				  *c * per + per < r->nr_pages ?
				  *c * per + per : r->nr_pages))
		(*c)++;
	if (*c == nr)
		return 0;
	first = *c * per;
	*c += PROTECT_RUN_CHUNKS < nr - *c ? PROTECT_RUN_CHUNKS : nr - *c;
	end = *c * per < r->nr_pages ? *c * per : r->nr_pages;
	n = ferry_dirty_collect_range(src->dirty, region, first, end - first,
				      src->send_map[region]);
	return n < 0 ? n : 1;
}

int source_protect_maps(struct source *src, uint64_t deadline_ns)
{
	const struct ferry_mem *mem = src->vm->mem;

	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		uint64_t c = 0;
		ssize_t n;

		while ((n = protect_next_run(src, i, &c)) > 0)
			if (deadline_ns && ferry_clock_now_ns() > deadline_ns)
				return 0;
		if (n < 0)
			return (int)n;
		take_refetch(src, i);
	}
	return 1;
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
