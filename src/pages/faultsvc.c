// SPDX-License-Identifier: MIT
/* faultsvc: the one userfaultfd fault loop, and the threads it stops. */
#include <assert.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/sys.h"
#include "base/thread.h"
#include "pages/faultsvc.h"

/* Messages read with one read(): a burst of faults costs one syscall. */
#define FAULTSVC_BATCH	64

struct faultsvc {
	const struct faultsvc_ops *ops;	/* set at create, read-only */
	void *arg;
	/* Set by start before the fault thread exists; read-only to it. */
	struct ferry_uffd *uffd;
	int extra_fd;			/* -1: none */
	/* The fault thread and the flow's, started and stopped by the
	 * service's owner. */
	struct threads threads;
	struct err_slot err;		/* the group's first failure */
};

int faultsvc_create(const struct faultsvc_ops *ops, void *arg,
		    struct faultsvc **out)
{
	struct faultsvc *svc = calloc(1, sizeof(*svc));
	int ret;

	assert(!ops->batch_begin == !ops->batch_end);
	if (!svc)
		return ferry_fail(-ENOMEM, "out of memory");
	svc->ops = ops;
	svc->arg = arg;
	svc->extra_fd = -1;
	err_slot_init(&svc->err);
	ret = threads_init(&svc->threads);
	if (ret) {
		faultsvc_destroy(svc);
		return ret;
	}
	*out = svc;
	return 0;
}

void faultsvc_destroy(struct faultsvc *svc)
{
	if (!svc)
		return;
	threads_fini(&svc->threads);
	err_slot_fini(&svc->err);
	free(svc);
}

static int dispatch(struct faultsvc *svc, const struct uffd_msg *msg)
{
	if (msg->event == UFFD_EVENT_PAGEFAULT)
		return svc->ops->fault(svc->arg, msg);
	return svc->ops->event ? svc->ops->event(svc->arg, msg) : 0;
}

/* What is pending now; nothing (a message another read took) is fine. */
static int drain(struct faultsvc *svc)
{
	struct uffd_msg msgs[FAULTSVC_BATCH];
	ssize_t n;
	int ret = 0, end;

	if (svc->ops->batch_begin)
		svc->ops->batch_begin(svc->arg);
	n = ferry_uffd_read(svc->uffd, msgs, FAULTSVC_BATCH);
	if (n < 0 && n != -EAGAIN)
		ret = ferry_fail((int)n, "reading userfaultfd: %s",
				 strerror((int)-n));
	for (ssize_t i = 0; i < n && !ret; i++)
		ret = dispatch(svc, &msgs[i]);
	if (svc->ops->batch_end) {
		end = svc->ops->batch_end(svc->arg, n > 0 ? (size_t)n : 0);
		ret = ret ? ret : end;
	}
	return ret;
}

/* Until stop (0) or a handler fails (its error). */
static int serve(struct faultsvc *svc)
{
	struct pollfd pfd[3] = {
		{ .fd = svc->threads.stop_fd, .events = POLLIN },
		{ .fd = svc->uffd->fd, .events = POLLIN },
		{ .fd = svc->extra_fd, .events = POLLIN },
	};
	nfds_t nfds = svc->extra_fd >= 0 ? 3 : 2;
	int ret = 0;

	while (!ret) {
		if (poll(pfd, nfds, -1) < 0) {
			if (errno == EINTR)
				continue;
			return ferry_fail(-errno, "poll: %s", strerror(errno));
		}
		if (pfd[0].revents)
			break;
		/* The flow's fd first: it may change how faults are served. */
		if (nfds == 3 && pfd[2].revents)
			ret = svc->ops->ready(svc->arg);
		if (!ret && pfd[1].revents)
			ret = drain(svc);
	}
	return ret;
}

static void *fault_main(void *arg)
{
	struct faultsvc *svc = arg;
	int ret;

	sys_thread_boost(SYS_BOOST_URGENT);
	ret = serve(svc);
	if (ret)
		err_slot_set(&svc->err, ret);
	return NULL;
}

int faultsvc_start(struct faultsvc *svc, struct ferry_uffd *uffd,
		   int extra_fd)
{
	assert(svc->threads.nr == 0 && uffd->fd >= 0);
	assert(extra_fd < 0 || svc->ops->ready);
	/* A stop asked before is over: its threads are joined. */
	evfd_drain(svc->threads.stop_fd);
	svc->uffd = uffd;
	svc->extra_fd = extra_fd;
	return threads_start(&svc->threads, fault_main, svc, "fault");
}

int faultsvc_spawn(struct faultsvc *svc, void *(*fn)(void *), void *arg,
		   const char *what)
{
	return threads_start(&svc->threads, fn, arg, what);
}

int faultsvc_stop_fd(const struct faultsvc *svc)
{
	return svc->threads.stop_fd;
}

bool faultsvc_stopping(const struct faultsvc *svc)
{
	return threads_stopping(&svc->threads);
}

void faultsvc_fail(struct faultsvc *svc, int err)
{
	err_slot_set(&svc->err, err);
}

int faultsvc_error(struct faultsvc *svc)
{
	return err_slot_get(&svc->err);
}

void faultsvc_stop(struct faultsvc *svc)
{
	threads_stop(&svc->threads);
}
