/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_REFETCH_H
#define FERRY_MIGRATE_REFETCH_H

/*
 * refetch: the destination's pages whose last copy failed its check, and
 * how often each failed.
 *
 * A page whose data does not match its sum is never installed and never
 * just dropped: torn by a running vCPU or changed in transit, the
 * destination cannot tell which, and only the first comes again by
 * itself (it was dirtied).  So it is marked here until a whole copy
 * replaces it, and fetched again before the destination may run on it.
 * A copy sent while the source was paused cannot tear: its failure is
 * the link's, and a page that fails REFETCH_MAX_TRIES times ends the
 * session (and the migration fails or pauses).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry/wire.h"

#define REFETCH_MAX_TRIES	4

struct refetch_try {
	uint64_t key;		/* region << 32 | page, + 1 (0: free) */
	uint32_t tries;
};

struct refetch {
	unsigned int nr_regions;
	uint64_t **bad;			/* per region, atomic words: any
					 * thread marks and clears */
	atomic_uint_fast64_t nr_bad;	/* bits set, over every region */
	pthread_mutex_t lock;		/* the tries table */
	struct refetch_try *tries;	/* open addressing */
	size_t cap, used;
};

/* Bitmaps for the stream's regions: 0 or -ENOMEM. */
int refetch_init(struct refetch *rf, const struct ferry_wire_stream *s);
void refetch_fini(struct refetch *rf);

/* Mark a page bad; true if it was not already. */
bool refetch_mark(struct refetch *rf, unsigned int region, uint64_t page);

/* A whole copy of these pages is in: clear what was marked. */
void refetch_clear(struct refetch *rf, unsigned int region, uint64_t first,
		   uint64_t count);

static inline bool refetch_is_bad(const struct refetch *rf,
				  unsigned int region, uint64_t page)
{
	const _Atomic uint64_t *w =
		(const _Atomic uint64_t *)&rf->bad[region][page / 64];

	return atomic_load_explicit(w, memory_order_relaxed) >> (page % 64) & 1;
}

static inline uint64_t refetch_count(const struct refetch *rf)
{
	return atomic_load_explicit(&rf->nr_bad, memory_order_relaxed);
}

/*
 * A copy sent while the source was paused failed: count it.  0, or
 * -EBADMSG with a reason once the page failed REFETCH_MAX_TRIES times.
 */
int refetch_failed(struct refetch *rf, unsigned int region, uint64_t page);

/* A new session starts every page's count again (the link may be new). */
void refetch_reset_tries(struct refetch *rf);

#endif
