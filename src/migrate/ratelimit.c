// SPDX-License-Identifier: MIT
/* ratelimit: one timeline of reserved bytes for every sender. */
#include <errno.h>

#include "base/thread.h"
#include "ferry/clock.h"
#include "migrate/ratelimit.h"

void ratelimit_init(struct ratelimit *rl, uint64_t bytes_per_s)
{
	pthread_mutex_init(&rl->lock, NULL);
	atomic_init(&rl->bytes_per_s, bytes_per_s);
	rl->free_at_ns = 0;
}

void ratelimit_fini(struct ratelimit *rl)
{
	pthread_mutex_destroy(&rl->lock);
}

void ratelimit_set(struct ratelimit *rl, uint64_t bytes_per_s)
{
	pthread_mutex_lock(&rl->lock);
	atomic_store_explicit(&rl->bytes_per_s, bytes_per_s,
			      memory_order_relaxed);
	rl->free_at_ns = 0;	/* the new rate counts from now */
	pthread_mutex_unlock(&rl->lock);
}

/* Reserve the bytes; how long to wait before sending them, ns. */
static uint64_t reserve(struct ratelimit *rl, uint64_t bytes, uint64_t now)
{
	uint64_t bps = ratelimit_get(rl);
	uint64_t burst = RATELIMIT_BURST_MS * 1000000ULL;
	uint64_t wait;

	if (!bps)
		return 0;
	pthread_mutex_lock(&rl->lock);
	if (rl->free_at_ns + burst < now)	/* idle: no credit hoarded */
		rl->free_at_ns = now - burst;
	rl->free_at_ns += (uint64_t)((double)bytes * 1e9 / (double)bps);
	wait = rl->free_at_ns > now + burst ? rl->free_at_ns - now - burst : 0;
	pthread_mutex_unlock(&rl->lock);
	return wait;
}

int ratelimit_take(struct ratelimit *rl, uint64_t bytes, int stop_fd)
{
	uint64_t wait = reserve(rl, bytes, ferry_clock_now_ns());
	int ret;

	if (!wait)
		return 0;
	/* poll's milliseconds, rounded up: the rate errs on the low side. */
	ret = evfd_wait(stop_fd, -1, (int)((wait + 999999) / 1000000));
	return ret == -ETIMEDOUT || ret == 1 ? 0 : ret;
}
