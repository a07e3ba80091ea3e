/* SPDX-License-Identifier: MIT */
#ifndef FERRY_TEST_MIGRIG_H
#define FERRY_TEST_MIGRIG_H

/*
 * A migration rig for fault tests and the soak benchmark: the built-in VM
 * migrated in one process, through a fault-injecting proxy
 * (faultproxy.h), each side driven through its handle as an operator's
 * tool would: the destination accepts on its listener and hands a new
 * session to a paused migration, the source dials again while paused.
 * Whatever happened, the rig finds the VM and verifies it where it is:
 * at the destination when the migration completed, at the source when it
 * failed before the commit.  Public API only, so bench/ can build it.
 */
#include <stdbool.h>
#include <stdint.h>

#include "faultproxy.h"
#include "netns.h"
#include "ferry-vm/guest_vm.h"
#include "ferry/migrate.h"

#define RIG_MAX_RULES	4
#define RIG_MAX_EVENTS	32

struct rig_opts {
	enum ferry_backing backing;
	uint64_t mem;			/* bytes */
	unsigned int vcpus;
	const char *workload;
	unsigned int warmup_ms;
	enum ferry_mode mode;
	bool at_once;
	unsigned int channels;
	unsigned int timeout_ms, heartbeat_ms;	/* both sides */
	uint64_t bandwidth;		/* source, bytes/s; 0: none */
	struct fp_rule rules[RIG_MAX_RULES];
	unsigned int nr_rules;
	unsigned int budget_ms;		/* give up (cancel both) after; 0:
					 * 60 s */
	/*
	 * Called on the source's loop every 20 ms with its progress, to
	 * act on the migration while it runs (bandwidth, cancel, a link
	 * that goes down).
	 */
	void (*tick)(struct ferry_migration *sm,
		     const struct ferry_progress *p, void *arg);
	void *tick_arg;
	/*
	 * Two hosts: the destination listens on listen_addr (default
	 * "127.0.0.1:0") with the calling thread moved by enter_dest(), then
	 * back by enter_src(); the source dials it directly (no proxy, no
	 * rules).
	 */
	const char *listen_addr;
	int (*enter_dest)(void *arg);
	int (*enter_src)(void *arg);
	void *enter_arg;
};

/* Sensible defaults: 32 MiB shmem, 3 vCPUs dirtying, hybrid, 2 channels. */
void rig_opts_init(struct rig_opts *o);

struct rig_side {
	int ret;
	char reason[400];
	struct ferry_migrate_stats stats;
	enum ferry_vm_location location;
	enum ferry_migrate_event_kind events[RIG_MAX_EVENTS];
	unsigned int nr_events;
	uint64_t max_stalled_ns;	/* as progress showed it */
	uint64_t running_owed;		/* DEST_RUNNING's pages owed */
	double max_rate_bps;		/* source: as progress showed it */
};

struct rig_result {
	struct rig_side src, dst;
	unsigned int fired;		/* proxy rules that fired */
	bool verified;			/* the verifier ran (where the VM is) */
	bool at_dest;			/* and it ran at the destination */
	struct ferry_verify_report rep;
	bool states_ok;			/* vCPU power states as the source's */
	char why[480];			/* when the rig itself failed */
};

/*
 * Run one migration as o says and verify the VM where it ended up.
 * 0 when the rig could run it (r says what happened; r->rep.ok is the
 * verdict), or -errno with r->why when it could not (a setup failure).
 */
int rig_run(const struct rig_opts *o, struct rig_result *r);

/* Did `ev` happen on this side? */
bool rig_saw(const struct rig_side *side, enum ferry_migrate_event_kind ev);

/*
 * The workloads power vCPU 2 off at its step S ("off=2@S"; vCPU 0 powers
 * the secondaries on first).  Until it has, a destination may see it go
 * off after the migration while the source saw it on: wait for those
 * steps, so the power states compared are those of one moment however
 * slowly the vCPUs start on a busy machine.  0, or -ETIMEDOUT after 20 s.
 */
int rig_wait_power_events(struct ferry_guest_vm *gv, const char *workload);

/*
 * Two hosts (network namespaces, tests/netns.h) and the link between
 * them taken down for down_ms once the VM runs at the destination.
 */
struct rig_flap {
	struct netns_pair ns;		/* set up by the caller */
	unsigned int down_ms;
	bool done;			/* the link went down */
};

/* o's destination listens on host b at listen_addr; f flaps the link. */
void rig_flap_opts(struct rig_opts *o, struct rig_flap *f,
		   const char *listen_addr);

/* Move the calling thread onto host a (the source's). */
int rig_flap_enter_source(struct rig_flap *f);

#endif
