// SPDX-License-Identifier: MIT
/* refetch: pages that failed their check, and their tries (refetch.h). */
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "migrate/refetch.h"

int refetch_init(struct refetch *rf, const struct ferry_wire_stream *s)
{
	memset(rf, 0, sizeof(*rf));
	pthread_mutex_init(&rf->lock, NULL);
	rf->bad = calloc(s->nr_regions, sizeof(*rf->bad));
	if (!rf->bad)
		return -ENOMEM;
	rf->nr_regions = s->nr_regions;
	for (unsigned int i = 0; i < s->nr_regions; i++) {
		rf->bad[i] = bitmap_alloc(s->regions[i].nr_pages);
		if (!rf->bad[i])
			return -ENOMEM;
	}
	return 0;
}

void refetch_fini(struct refetch *rf)
{
	for (unsigned int i = 0; rf->bad && i < rf->nr_regions; i++)
		free(rf->bad[i]);
	free(rf->bad);
	free(rf->tries);
	pthread_mutex_destroy(&rf->lock);
	memset(rf, 0, sizeof(*rf));
}

static _Atomic uint64_t *word_of(struct refetch *rf, unsigned int region,
				 uint64_t page)
{
	return (_Atomic uint64_t *)&rf->bad[region][page / 64];
}

bool refetch_mark(struct refetch *rf, unsigned int region, uint64_t page)
{
	uint64_t bit = 1ULL << (page % 64);

	if (atomic_fetch_or(word_of(rf, region, page), bit) & bit)
		return false;
	atomic_fetch_add(&rf->nr_bad, 1);
	return true;
}

void refetch_clear(struct refetch *rf, unsigned int region, uint64_t first,
		   uint64_t count)
{
	/* Nothing bad at all, the usual case: one load. */
	if (!refetch_count(rf))
		return;
	for (uint64_t p = first; p < first + count; p++) {
		uint64_t bit = 1ULL << (p % 64);

		if (!refetch_is_bad(rf, region, p))
			continue;
		if (atomic_fetch_and(word_of(rf, region, p), ~bit) & bit)
			atomic_fetch_sub(&rf->nr_bad, 1);
	}
}

/* The slot of key, or the free one where it goes. */
static struct refetch_try *slot_of(struct refetch *rf, uint64_t key)
{
	size_t i = (size_t)(key * 0x9e3779b97f4a7c15ULL) & (rf->cap - 1);

	while (rf->tries[i].key && rf->tries[i].key != key)
		i = (i + 1) & (rf->cap - 1);
	return &rf->tries[i];
}

/* Twice the room, every entry placed again; under lock. */
static int grow(struct refetch *rf)
{
	struct refetch_try *old = rf->tries;
	size_t old_cap = rf->cap, cap = old_cap ? old_cap * 2 : 64;

	rf->tries = calloc(cap, sizeof(*rf->tries));
	if (!rf->tries) {
		rf->tries = old;
		return -ENOMEM;
	}
	rf->cap = cap;
	for (size_t i = 0; i < old_cap; i++)
		if (old[i].key)
			*slot_of(rf, old[i].key) = old[i];
	free(old);
	return 0;
}

int refetch_failed(struct refetch *rf, unsigned int region, uint64_t page)
{
	uint64_t key = ((uint64_t)region << 32 | page) + 1;
	struct refetch_try *t;
	uint32_t tries;
	int ret = 0;

	pthread_mutex_lock(&rf->lock);
	if ((rf->used + 1) * 2 > rf->cap)
		ret = grow(rf);
	if (!ret) {
		t = slot_of(rf, key);
		rf->used += !t->key;
		t->key = key;
		tries = ++t->tries;
	}
	pthread_mutex_unlock(&rf->lock);
	if (ret)
		return ferry_fail(ret, "out of memory");
	if (tries >= REFETCH_MAX_TRIES)
		return ferry_fail(-EBADMSG, "page %llu of region %u failed its "
				  "checksum %u times, sent by a paused source: "
				  "the link changes data",
				  (unsigned long long)page, region, tries);
	return 0;
}

void refetch_reset_tries(struct refetch *rf)
{
	pthread_mutex_lock(&rf->lock);
	if (rf->tries)
		memset(rf->tries, 0, rf->cap * sizeof(*rf->tries));
	rf->used = 0;
	pthread_mutex_unlock(&rf->lock);
}
