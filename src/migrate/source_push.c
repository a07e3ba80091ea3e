// SPDX-License-Identifier: MIT
/*
 * source_push: after the commit, once the VM runs at the destination.
 * The senders push every page still owed, starting near the latest
 * fault, while the urgent thread answers requests; then COMPLETE on
 * every channel.
 */
#include "migrate/source_int.h"

/* The chunk of the latest page request, and its region. */
static uint64_t hint_chunk(struct sender *s, unsigned int *region)
{
	struct source *src = s->src;
	uint64_t page = atomic_load_explicit(&src->hint_page,
					     memory_order_relaxed);

	*region = atomic_load_explicit(&src->hint_region,
				       memory_order_relaxed);
	if (*region >= src->vm->mem->nr_regions)
		*region = 0;
	return page / migrate_chunk_pages(&src->vm->mem->regions[*region]);
}

/*
 * One pass over every chunk from (region, chunk).  With follow set, a newer
 * request moves the pass to its chunk, so the pass may skip chunks: only a
 * pass that does not follow covers them all.
 */
static int push_from(struct sender *s, unsigned int region, uint64_t chunk,
		     uint64_t *seen_gen, bool follow)
{
	const struct ferry_mem *mem = s->src->vm->mem;
	uint64_t total = 0, done = 0;
	int ret = 0;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		total += source_nr_chunks(&mem->regions[i]);
	while (done < total && !ret) {
		uint64_t gen = atomic_load_explicit(&s->src->hint_gen,
						    memory_order_relaxed);

		if (follow && gen != *seen_gen) {	/* a newer fault */
			*seen_gen = gen;
			ret = sender_flush(s, false);
			chunk = hint_chunk(s, &region);
		}
		if (chunk >= source_nr_chunks(&mem->regions[region])) {
			chunk = 0;
			region = (region + 1) % mem->nr_regions;
		}
		if (!ret && sender_owns_chunk(s, region, chunk))
			ret = sender_send_chunk(s, region, chunk, true, false);
		chunk++;
		done++;
	}
	return ret;
}

/*
 * Every owed page of this sender's chunks, starting at the chunk of the
 * latest request and jumping there again whenever a newer request comes,
 * so pages near where the guest faults arrive first.
 */
int sender_push(struct sender *s, bool live, unsigned int round)
{
	uint64_t seen_gen = atomic_load(&s->src->hint_gen);
	unsigned int region;
	uint64_t chunk = hint_chunk(s, &region);
	int ret;

	(void)live;	/* the VM is paused: nothing is torn */
	(void)round;
	/*
	 * First near the faults, then a pass that ignores them, which is the
	 * one that guarantees every owed page goes out: pages already taken
	 * cost it only a bit test.
	 */
	ret = push_from(s, region, chunk, &seen_gen, true);
	if (!ret)
		ret = push_from(s, 0, 0, &seen_gen, false);
	if (!ret)
		ret = sender_flush(s, false);
	return ret;
}

static int enc_complete(struct ferry_wire_frame *f, const void *arg)
{
	return ferry_wire_enc_complete(f, arg);
}

static bool heard_complete(struct source *src)
{
	bool done;

	pthread_mutex_lock(&src->m->lock);
	done = src->dest_complete;
	pthread_mutex_unlock(&src->m->lock);
	return done;
}

/*
 * What the destination still needs, pushed while the urgent thread
 * answers its requests; then its COMPLETE (every page in place, which
 * the push alone cannot tell: a page may be in flight, or failed its
 * check and been asked for again).  Once it came, the destination holds
 * the VM whole and may close at once: a push still going, or the
 * COMPLETE records this side sends last, failing then is no failure.
 */
int source_serve(struct source *src, bool postcopy)
{
	enum ferry_phase phase = postcopy ? FERRY_PHASE_POSTCOPY :
					    FERRY_PHASE_SWITCHOVER;
	struct ferry_wire_complete c = { 0 };
	int ret;

	atomic_store(&src->owed_taken_base, atomic_load(&src->pushed) +
		     atomic_load(&src->answered_owed));
	atomic_store(&src->owed, source_count_maps(src));
	if (postcopy) {
		mig_set_phase(src->m, phase);
		source_notify_progress(src, phase);
	}
	ret = source_run_job(src, sender_push, false, phase,
			     atomic_load(&src->owed));
	if (!ret || heard_complete(src))
		ret = source_wait_flag(src, &src->dest_complete);
	if (ret)
		return ret;
	if (!source_send_complete(src))
		link_send(&src->link, enc_complete, &c);
	return 0;
}
