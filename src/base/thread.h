/* SPDX-License-Identifier: MIT */
#ifndef FERRY_THREAD_H
#define FERRY_THREAD_H

/*
 * Threads ferry starts, and the eventfds that stop and wake them.
 *
 * Shutdown is an eventfd in each thread's poll set, never a flag polled
 * in a loop: a thread blocked in poll() wakes the moment stop is asked.
 * Every thread started through a group is joined by threads_stop(), so
 * nothing ferry started outlives the object that started it.
 *
 * The first failure of any thread, with its reason, is kept in an
 * err_slot for the thread that owns the work to report.
 */
#include <pthread.h>
#include <stdbool.h>

/* An eventfd (CLOEXEC, NONBLOCK): the fd, or -errno (EMFILE kept). */
int evfd_open(void);

/* Make it readable.  Cannot fail on a valid eventfd. */
void evfd_signal(int fd);

/* Readable now?  Does not consume it. */
bool evfd_test(int fd);

/* Consume what was signalled (nothing pending is fine). */
void evfd_drain(int fd);

/*
 * Wait until `fd` or the stop eventfd is readable: 1 for fd, 0 for
 * stop (stop wins when both are), -ETIMEDOUT after timeout_ms (< 0: no
 * limit), -errno if poll fails.
 */
int evfd_wait(int fd, int stop_fd, int timeout_ms);

#define THREADS_MAX	40

/* Threads that share one stop eventfd.  Owned by one thread. */
struct threads {
	int stop_fd;			/* readable once stop is asked */
	unsigned int nr;		/* started and not yet joined */
	pthread_t id[THREADS_MAX];
};

/* No threads yet, and the stop eventfd: 0 or -errno. */
int threads_init(struct threads *ts);

/* Start fn(arg): 0 or -errno with a reason naming `what`. */
int threads_start(struct threads *ts, void *(*fn)(void *), void *arg,
		  const char *what);

/* Has stop been asked?  Any thread. */
bool threads_stopping(const struct threads *ts);

/* Ask every thread to stop and join them all.  Idempotent. */
void threads_stop(struct threads *ts);

/* Stop, then close the eventfd.  A zeroed group with stop_fd -1 is fine. */
void threads_fini(struct threads *ts);

/* The first failure of several threads, with its reason. */
struct err_slot {
	pthread_mutex_t lock;
	int err;			/* 0 until something fails */
	char reason[400];
};

void err_slot_init(struct err_slot *slot);
void err_slot_fini(struct err_slot *slot);

/* Keep err and this thread's ferry_error_msg() if nothing failed before. */
void err_slot_set(struct err_slot *slot, int err);

/*
 * 0 if nothing failed; else the error, with its reason recorded again
 * on the calling thread.
 */
int err_slot_get(struct err_slot *slot);

#endif
