/* SPDX-License-Identifier: MIT */
#ifndef FERRY_FAULTSVC_H
#define FERRY_FAULTSVC_H

/*
 * The fault service: the one loop that serves a userfaultfd, for every
 * flow that serves faults.  Post-copy and lazy restore (through
 * postcopy.h), clones and live save are handlers plugged into it; they
 * differ only in where a page comes from and what they do with it.
 *
 *   fault thread (SYS_BOOST_URGENT, above the bulk path and the vCPUs)
 *     poll: the stop eventfd, the flow's own fd (optional), the uffd
 *       stop readable      -> return
 *       flow's fd readable -> ops->ready()
 *       uffd readable      -> read up to 64 messages:
 *                             page fault  -> ops->fault()
 *                             other event -> ops->event() (REMOVE,
 *                                            UNMAP, ...), or ignored
 *     the first error a handler returns stops the loop and is kept,
 *     with its reason, for the flow to fetch (faultsvc_error)
 *
 * A handler must not block for long: every vCPU that faults waits behind
 * it.  Work that may wait (reading a file, a network request) is handed
 * to another thread, and the vCPU stays asleep in the kernel until
 * whoever installs the page wakes it.
 *
 * The flow's other threads that must stop with the service (the mapper)
 * run in the same group: one stop eventfd stops them all, faultsvc_stop()
 * joins them all, and their failures go to the same first-error slot.
 */
#include <stdbool.h>

#include "ferry/uffd.h"

struct faultsvc;

struct faultsvc_ops {
	/* A page fault: 0, or -errno (stops the service; kept). */
	int (*fault)(void *arg, const struct uffd_msg *msg);
	/* Any other event; NULL: events are ignored. */
	int (*event)(void *arg, const struct uffd_msg *msg);
	/* The flow's fd (faultsvc_start's extra_fd) is readable. */
	int (*ready)(void *arg);
	/*
	 * Optional, both or neither: before each read of the uffd, and
	 * once what it read (nr messages, 0 when nothing was pending) has
	 * been handed to fault() and event(); batch_end's error stops the
	 * service as a handler's does.  A flow that collects a batch's
	 * faults and serves them in batch_end applies the batch's events
	 * (a REMOVE read after the fault) first; one whose other threads
	 * install pages keeps them out from the read to batch_end, the
	 * time in which the kernel has handed over an event the flow has
	 * not applied yet.
	 */
	void (*batch_begin)(void *arg);
	int (*batch_end)(void *arg, size_t nr);
};

/* A service not started, handing faults to ops with arg: 0 or -errno. */
int faultsvc_create(const struct faultsvc_ops *ops, void *arg,
		    struct faultsvc **out);

/* Stop, then free.  NULL is fine. */
void faultsvc_destroy(struct faultsvc *svc);

/*
 * Start the fault thread on `uffd` (open; it must stay open until stop),
 * polling extra_fd too when it is >= 0.  A stopped service may start
 * again.  0, or -errno with a reason.
 */
int faultsvc_start(struct faultsvc *svc, struct ferry_uffd *uffd,
		   int extra_fd);

/*
 * Start another thread of the flow in the service's group: it polls
 * faultsvc_stop_fd() (or checks faultsvc_stopping()) and is joined by
 * faultsvc_stop().  `what` names it in a failure.
 */
int faultsvc_spawn(struct faultsvc *svc, void *(*fn)(void *), void *arg,
		   const char *what);

/* Readable once stop is asked; for the group's threads to poll. */
int faultsvc_stop_fd(const struct faultsvc *svc);

/* Has stop been asked?  Any thread. */
bool faultsvc_stopping(const struct faultsvc *svc);

/* Keep err and this thread's reason, unless something failed first. */
void faultsvc_fail(struct faultsvc *svc, int err);

/*
 * 0, or the first failure of any thread of the group, with its reason
 * recorded again on the calling thread.  Any thread.
 */
int faultsvc_error(struct faultsvc *svc);

/* Stop every thread of the group and join them.  Idempotent. */
void faultsvc_stop(struct faultsvc *svc);

#endif
