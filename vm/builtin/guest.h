/* SPDX-License-Identifier: MIT */
#ifndef FERRY_GUEST_INTERNAL_H
#define FERRY_GUEST_INTERNAL_H

/*
 * The built-in VM's insides, shared by guest.c (lifecycle, stats),
 * guest_kick.c (kicks, the pause condition), psci.c (power calls, psci.h),
 * guest_run.c (the vCPU threads, pause), guest_state.c (register blobs,
 * the vCPU ops), guest_config.c and guest_verify.c.  Layers, bottom up:
 * guest_kick, psci, guest_run; each calls only those below it.
 *
 * Locking: one mutex per VM, g->lock, guards every power field and the
 * pause / settle bookkeeping.  A vCPU thread runs its steps without it,
 * checking only its own request word between steps (like KVM's vCPU
 * requests), and takes it at a step boundary to act on a request, fire a
 * scripted power call or wait.  Whoever changes another vCPU's power
 * state does so under the lock and kicks it; the vCPU sees the change at
 * its next step boundary.
 */
#include <pthread.h>
#include <sched.h>
#include <sys/types.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cell_map.h"
#include "ferry-vm/guest.h"
#include "workload.h"

/* Program position: what a vCPU does when it next runs. */
enum vcpu_pc {
	VCPU_PC_BOOT = 0,	/* the boot vCPU powers the others on */
	VCPU_PC_RUN = 1,	/* the workload */
	VCPU_PC_COUNT
};

/* Request bits in vcpu->req. */
#define VCPU_REQ_STOP	(1u << 0)	/* level: the thread must exit */
#define VCPU_REQ_PAUSE	(1u << 1)	/* level: the VM is paused */
#define VCPU_REQ_KICK	(1u << 2)	/* edge: power or limit changed */

/* A vCPU's power registers; all guarded by g->lock. */
struct vcpu_power {
	enum ferry_mp_state mp;
	enum vcpu_pc pc;
	bool on_pending;	/* CPU_ON'd, has not run since */
	bool wake_pending;	/* a wake-up came before CPU_SUSPEND */
	uint32_t script_cursor;	/* scripted calls done (part.events) */
	uint32_t resets;	/* SYSTEM_RESETs seen */
};

struct vcpu {
	/*
	 * Requests: set by any thread holding g->lock; KICK is cleared by
	 * the vCPU itself under g->lock; read by the vCPU, without the
	 * lock, at every step boundary (relaxed: the lock orders whatever
	 * the request is about).  First, so it starts a cache line that
	 * other vCPUs never write to.
	 */
	_Alignas(64) atomic_uint req;
	struct ferry_guest *g;		/* const */
	unsigned int index;		/* const */
	struct wl_part part;		/* const after create */
	/*
	 * The workload registers: the vCPU thread's while it runs; other
	 * threads read or replace them only under g->lock while the vCPU
	 * is quiescent (paused, or the VM not started).
	 */
	struct wl_regs regs;
	struct vcpu_power power;	/* g->lock */
	bool quiescent;			/* g->lock: waiting, at a boundary */
	bool settled;			/* g->lock: waiting, nothing to do */
	pthread_cond_t wake;		/* the vCPU waits on it (g->lock) */
	pthread_t thread;		/* start/stop (the API thread) */
	/*
	 * Its scheduling, for a pause that must not wait for the scheduler
	 * (guest_kick.c): the thread id and its own policy, set by the
	 * thread as it starts, under g->lock; boosted, under g->lock.
	 */
	pid_t tid;
	int policy;
	struct sched_param param;
	bool boosted;
	/* The vCPU thread's alone. */
	uint8_t *buf;			/* CELL_SIZE: a cell being built */
	double tokens;			/* rate cap: bytes it may write */
	uint64_t tokens_ns;		/* when tokens was last topped up */
	/*
	 * Published counters: stored (relaxed) by the vCPU thread after each
	 * step, loaded (relaxed) by ferry_guest_stats from any thread.
	 */
	atomic_uint_fast64_t pub_steps, pub_writes, pub_reads;
	atomic_uint_fast64_t pub_read_errors;
};

struct ferry_guest {
	struct ferry_mem *mem;		/* const; the caller's */
	struct ferry_guest_config cfg;	/* const; limit, mask: below */
	struct workload wl;		/* const after create */
	struct cell_map cells;		/* const after create */
	uint64_t machine_id;		/* const: workload_fingerprint */
	unsigned int nr_vcpus;		/* const */
	struct vcpu *vcpus;		/* const array */

	pthread_mutex_t lock;
	/*
	 * Broadcast (under lock) when nr_quiescent or nr_settled reaches
	 * nr_vcpus, and when the threads stop; pause and wait_settled wait
	 * on it.
	 */
	pthread_cond_t quiesce;
	pthread_cond_t unpause;		/* paused vCPUs wait on it (lock) */
	unsigned int pause_depth;	/* lock */
	unsigned int nr_quiescent;	/* lock */
	unsigned int nr_settled;	/* lock */
	bool started;			/* lock; written by start/stop */
	uint64_t boot_off_mask;		/* lock; load may change a bit */
	uint64_t step_limit;		/* lock; 0: none */
};

/*
 * guest_kick.c, g->lock held: the bottom layer, used by the power calls
 * (psci.h) and the run loop alike.
 */
bool guest_paused_locked(const struct ferry_guest *g);
void guest_kick_locked(struct vcpu *v);
void guest_kick_all_locked(struct ferry_guest *g);
void guest_boost_locked(struct vcpu *v);
void guest_unboost_all_locked(struct ferry_guest *g);

/* guest_run.c: publish v's counters for ferry_guest_stats. */
void guest_publish(struct vcpu *v);

/* guest_config.c */
int guest_config_check(const struct ferry_guest_config *cfg);

#endif
