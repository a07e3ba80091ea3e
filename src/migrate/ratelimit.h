/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_RATELIMIT_H
#define FERRY_MIGRATE_RATELIMIT_H

/*
 * ratelimit: a bandwidth limit shared by every sender of a migration,
 * changeable while they run.  Each send reserves its bytes on one
 * timeline (the time at which the budget is next free) and sleeps until
 * its turn: the long-run rate is exact whatever the number of senders,
 * and a burst after an idle spell is at most RATELIMIT_BURST_MS worth.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define RATELIMIT_BURST_MS	20

struct ratelimit {
	pthread_mutex_t lock;
	atomic_uint_fast64_t bytes_per_s;	/* 0: no limit; any thread */
	uint64_t free_at_ns;			/* under lock */
};

void ratelimit_init(struct ratelimit *rl, uint64_t bytes_per_s);
void ratelimit_fini(struct ratelimit *rl);

/* Change the limit (0: none); senders see it at their next send. */
void ratelimit_set(struct ratelimit *rl, uint64_t bytes_per_s);

static inline uint64_t ratelimit_get(const struct ratelimit *rl)
{
	return atomic_load_explicit(&rl->bytes_per_s, memory_order_relaxed);
}

/*
 * Wait until `bytes` may go.  Returns early (0) when stop_fd becomes
 * readable, so a stopping sender is not held; -errno if poll fails.
 */
int ratelimit_take(struct ratelimit *rl, uint64_t bytes, int stop_fd);

#endif
