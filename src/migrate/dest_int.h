/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_DEST_H
#define FERRY_MIGRATE_DEST_H

/*
 * The receiving side of a live migration, inside: what its files share.
 *
 *   dest.c         the flow: set up, wait for switchover, tear down
 *   dest_recv.c    the receivers: one thread per channel, its records
 *   dest_switch.c  switchover and post-copy: vCPUs, resume, the urgent
 *                  channel's requests and confirmations, the end
 *
 * One receiver thread per bulk channel stores pages as they come (pwrite
 * into the memfd: no page faults) and collects what channel 0 carries for
 * the switchover (stale bitmaps, vCPU states).  Each receiver reports when
 * its channel reaches SWITCHOVER; once all have, everything sent before
 * the pause is in, and the main thread switches over:
 *
 *   pre-copy   load the vCPUs, resume, confirm on the urgent channel
 *   post-copy  stale pages become STALE, fault service starts, load the
 *              vCPUs, resume, confirm; replies to page requests come on
 *              the urgent channel, pushed pages on the bulk ones; when
 *              every page is in place, unregister, collapse THP, and send
 *              COMPLETE
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/thread.h"
#include "ferry/pagefaults.h"
#include "migrate/migrate.h"

struct dest;

/* One channel's receiver.  The main thread sets it up; once its thread
 * runs, that thread alone writes it, and the main thread reads it after
 * the join. */
struct receiver {
	struct dest *d;
	struct ferry_chan *chan;
	struct ferry_wire_reader reader;
	uint8_t *buf;			/* touched before anything is
					 * timed */
	bool urgent;
	bool switched;			/* passed SWITCHOVER: what follows
					 * is fresh */
	uint64_t bytes;
	uint64_t installed;		/* pages */
	uint64_t installed_bytes;
	struct ferry_pagefaults faults;	/* this thread's page faults */
};

/* A vCPU's state from the stream; bulk channel 0's receiver writes it
 * before SWITCHOVER, the main thread reads it after. */
struct vcpu_slot {
	bool seen;
	uint32_t mp_state;
	uint32_t len;
	uint8_t *regs;
};

/* Written by the main thread unless a field says otherwise. */
struct dest {
	struct ferry_session *session;
	const struct ferry_dest_ops *ops;
	void *ops_arg;
	const struct ferry_migrate_opts *opts;
	struct ferry_migrate_stats *stats;	/* main thread; torn_pages by
						 * receivers, under lock */
	struct ferry_wire_stream stream;	/* main, before receivers run */
	uint8_t *desc;			/* stream.desc points here */
	struct ferry_vm vm;
	bool vm_created;
	struct postcopy *pc;		/* created before receivers run */
	uint64_t **stale;		/* per region: bulk channel 0's
					 * receiver ORs BITMAP records in
					 * before SWITCHOVER */
	struct vcpu_slot *vcpus;
	unsigned int nr_receivers;
	struct receiver *receivers;	/* bulk channels */
	struct receiver urgent;
	struct threads threads;		/* every receiver; main starts and
					 * stops them, the first to fail
					 * signals stop_fd */
	struct err_slot err;		/* that first failure */

	/* Switchover: receivers count themselves in under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned int nr_switched, nr_ended, nr_failed;
	enum ferry_wire_switch_mode mode;

	/* The urgent writer: the fault thread's requests and the main
	 * thread's confirmations. */
	pthread_mutex_t urgent_lock;
	struct ferry_wire_writer urgent_writer;
	struct ferry_wire_frame urgent_frame;
	uint64_t next_request_id;	/* under urgent_lock */
	uint64_t start_ns;
};

/* ---- dest_recv.c: receivers --------------------------------------------- */

/*
 * Ready a receiver before anything is timed: its buffer's first touch
 * costs a fault per 4 KiB, which must not land in the downtime.
 */
int dest_prepare_receiver(struct dest *d, struct receiver *rv,
			  struct ferry_chan *chan, bool urgent);

/* Bulk channel 0's first record, the HEADER, into d->stream. */
int dest_read_header(struct dest *d);

/* Start rv's thread: it receives until its channel completes or fails. */
int dest_start_receiver(struct dest *d, struct receiver *rv);

/* Wait until every bulk channel is at SWITCHOVER, or one failed. */
int dest_wait_switchover(struct dest *d);

/* ---- dest_switch.c: switchover and post-copy ---------------------------- */

/* Load the vCPUs, resume, confirm; in post-copy, serve until the end. */
int dest_switchover(struct dest *d);

/*
 * Say why we give up, so the source can tell its user more than "broken
 * pipe".  Best effort: the channel may be what broke.
 */
void dest_tell_source(struct dest *d, int err, const char *why);

#endif
