// SPDX-License-Identifier: MIT
/* thread: eventfds, groups of threads stopped by one, first errors. */
#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/error.h"
#include "base/thread.h"

int evfd_open(void)
{
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	return fd < 0 ? -errno : fd;
}

void evfd_signal(int fd)
{
	uint64_t one = 1;
	ssize_t n = write(fd, &one, sizeof(one));

	/* Only a full counter (2^64 - 2 signals) or a bad fd fails. */
	assert(n == sizeof(one));
	(void)n;
}

bool evfd_test(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return poll(&pfd, 1, 0) > 0;
}

void evfd_drain(int fd)
{
	uint64_t v;

	if (read(fd, &v, sizeof(v)) < 0)
		errno = 0;	/* nothing was pending */
}

int evfd_wait(int fd, int stop_fd, int timeout_ms)
{
	struct pollfd pfd[2] = {
		{ .fd = stop_fd, .events = POLLIN },
		{ .fd = fd, .events = POLLIN },
	};

	for (;;) {
		int n = poll(pfd, 2, timeout_ms);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ETIMEDOUT;
		return pfd[0].revents ? 0 : 1;
	}
}

int threads_init(struct threads *ts)
{
	ts->nr = 0;
	ts->stop_fd = evfd_open();
	if (ts->stop_fd < 0)
		return ferry_fail(ts->stop_fd, "eventfd: %s",
				  strerror(-ts->stop_fd));
	return 0;
}

int threads_start(struct threads *ts, void *(*fn)(void *), void *arg,
		  const char *what)
{
	int ret;

	assert(ts->nr < THREADS_MAX && ts->stop_fd >= 0);
	ret = -pthread_create(&ts->id[ts->nr], NULL, fn, arg);
	if (ret)
		return ferry_fail(ret, "starting the %s thread: %s", what,
				  strerror(-ret));
	ts->nr++;
	return 0;
}

bool threads_stopping(const struct threads *ts)
{
	return evfd_test(ts->stop_fd);
}

void threads_stop(struct threads *ts)
{
	if (ts->stop_fd >= 0 && ts->nr)
		evfd_signal(ts->stop_fd);
	while (ts->nr)
		pthread_join(ts->id[--ts->nr], NULL);
}

void threads_fini(struct threads *ts)
{
	threads_stop(ts);
	if (ts->stop_fd >= 0)
		close(ts->stop_fd);
	ts->stop_fd = -1;
}

void err_slot_init(struct err_slot *slot)
{
	pthread_mutex_init(&slot->lock, NULL);
	slot->err = 0;
	slot->reason[0] = '\0';
}

void err_slot_fini(struct err_slot *slot)
{
	pthread_mutex_destroy(&slot->lock);
}

void err_slot_set(struct err_slot *slot, int err)
{
	pthread_mutex_lock(&slot->lock);
	if (!slot->err) {
		slot->err = err;
		snprintf(slot->reason, sizeof(slot->reason), "%s",
			 ferry_error_msg()[0] ? ferry_error_msg() : strerror(-err));
	}
	pthread_mutex_unlock(&slot->lock);
}

int err_slot_get(struct err_slot *slot)
{
	int err;

	pthread_mutex_lock(&slot->lock);
	err = slot->err ? ferry_fail(slot->err, "%s", slot->reason) : 0;
	pthread_mutex_unlock(&slot->lock);
	return err;
}
