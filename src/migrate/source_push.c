// SPDX-License-Identifier: MIT
/*
 * source_push: post-copy, once the VM runs at the destination.  The
 * senders push every page still owed, starting near the latest fault,
 * while the urgent thread answers requests; then COMPLETE on every
 * channel.
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

/* COMPLETE on the urgent channel too, which ends it: the senders idle. */
static int send_urgent_complete(struct source *src)
{
	struct sender *s0 = &src->senders[0];
	struct ferry_wire_complete c = { 0 };
	int ret = ferry_wire_enc_complete(&s0->frame, &c);

	if (!ret)
		ret = source_send_frame(src, &src->urgent_writer, &s0->frame);
	return ret;
}

int source_postcopy(struct source *src)
{
	int ret = source_start_urgent(src);

	if (ret)
		return ret;
	ret = source_run_job(src, sender_push, false, FERRY_PHASE_POSTCOPY,
			     src->owed);
	if (ret)	/* the urgent thread may sit in recv: wake it */
		ferry_net_session_shutdown(src->session);
	source_stop_urgent(src);
	if (!ret)
		ret = err_slot_get(&src->urgent_err);
	if (!ret)
		ret = source_send_complete(src);
	if (!ret)
		ret = send_urgent_complete(src);
	return ret;
}
