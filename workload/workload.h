/* SPDX-License-Identifier: MIT */
#ifndef FERRY_WORKLOAD_H
#define FERRY_WORKLOAD_H

/*
 * workload: what a VM's vCPUs do, one step at a time: the built-in VM's
 * threads run it on the host, and the same code can be built into a
 * guest image.
 *
 * Each vCPU owns a contiguous slice of the working set and is the only
 * writer of its cells.  Its writes come from a write generator whose
 * state is in its registers and which no read, power event or timing
 * influences, so the verifier can replay any vCPU's writes from its boot
 * state knowing only how many it made.  Reads (and the choice between
 * reading and writing) come from a second PRNG, the op PRNG.
 *
 * The spec parser lives in workload_spec.c, the slices and the register
 * check in workload.c, the generators, the step and the replay in
 * workload_gen.c (pure: the KVM guest image is built from it too), the
 * cell format in cell.c, guest memory's cells in cell_map.c and the
 * verifier in verify.c.
 */
#include <stdbool.h>
#include <stdint.h>

#include "cell_map.h"

enum wl_kind {
	WL_IDLE,
	WL_SEQDIRTY,
	WL_RANDOM,
	WL_HOTCOLD,
	WL_KV,
	WL_KIND_COUNT
};

/* Scripted power calls; see ferry_guest_workload_help(). */
enum wl_event_kind {
	WL_EV_OFF,		/* target calls CPU_OFF */
	WL_EV_SUSPEND,		/* target calls CPU_SUSPEND */
	WL_EV_ON,		/* vCPU 0 calls CPU_ON(target), retried */
	WL_EV_WAKE,		/* vCPU 0 sends target a wake-up */
	WL_EV_RESET,		/* vCPU 0 calls SYSTEM_RESET */
	WL_EV_SYSOFF,		/* vCPU 0 calls SYSTEM_OFF */
	WL_EV_KIND_COUNT
};

struct wl_event {
	uint64_t step;		/* once the caller has run this many */
	enum wl_event_kind kind;
	unsigned int caller;	/* the vCPU that makes the call */
	unsigned int target;
};

#define WL_MAX_VCPUS		64	/* FERRY_VERIFY_MAX_VCPUS */
#define WL_SPEC_MAX		255	/* bytes of spec workload_parse takes */
#define WL_MAX_EVENTS		16
#define WL_MAX_VALUE_CELLS	16	/* kv: the largest value, 64 KiB */

/* A parsed spec; read-only once laid out. */
struct workload {
	enum wl_kind kind;
	uint64_t ws_bytes;		/* 0: all of memory */
	uint64_t rate;			/* bytes/s, whole VM; 0: none */
	unsigned int read_pct;		/* steps that read */
	unsigned int hot_pct;		/* hotcold: hot part of slice */
	unsigned int hotw_pct;		/* hotcold: writes that go hot */
	unsigned int nr_events;
	struct wl_event events[WL_MAX_EVENTS];
	/* Filled by workload_layout. */
	unsigned int nr_vcpus;
	uint64_t ws_cells;
	uint64_t seed;
};

/* One vCPU's share of the workload; read-only once built. */
struct wl_part {
	unsigned int vcpu;
	uint64_t first, nr;		/* its slice of cells */
	uint64_t hot;			/* hotcold: [0, hot) is hot */
	uint64_t nr_keys;		/* kv */
	uint64_t *key_start;		/* kv: nr_keys + 1 slice offsets */
	unsigned int nr_events;		/* calls it makes, by step */
	struct wl_event events[WL_MAX_EVENTS];
};

/*
 * The workload's part of a vCPU's registers.  Owned by the vCPU's thread
 * while it runs; others touch it only while the vCPU is quiescent.
 */
struct wl_regs {
	uint64_t steps;
	uint64_t writes;		/* cells written */
	uint64_t reads;			/* cells read and checked */
	uint64_t read_errors;		/* cells that failed the check */
	uint64_t first_bad;		/* first such cell, or WL_NO_CELL */
	uint64_t op_prng;		/* read or write; what to read */
	uint64_t wgen_prng;		/* where to write */
	uint64_t wgen_pos;		/* seqdirty: next slice offset */
};

#define WL_NO_CELL	UINT64_MAX

/* workload_spec.c */
int workload_parse(const char *spec, struct workload *wl);
int workload_check_vcpus(const struct workload *wl, unsigned int nr_vcpus);
int workload_layout(struct workload *wl, unsigned int nr_vcpus,
		    uint64_t nr_cells, uint64_t seed);
uint64_t workload_fingerprint(const struct workload *wl, uint64_t nr_cells);
const char *workload_help(void);

/* workload.c */
int workload_part_init(const struct workload *wl, unsigned int vcpu,
		       struct wl_part *part);
void workload_part_fini(struct wl_part *part);

/* Are these registers ones this vCPU could have reached?  0 or -EINVAL. */
int workload_regs_check(const struct workload *wl, const struct wl_part *part,
			const struct wl_regs *regs);

/* workload_gen.c: pure, built into the KVM guest too */
void workload_regs_boot(const struct workload *wl, unsigned int vcpu,
			struct wl_regs *regs);

/* A per-vCPU seed for one use (salt) of the machine's seed. */
uint64_t workload_vcpu_seed(uint64_t seed, unsigned int vcpu, uint64_t salt);

/*
 * One step through the guest view; returns the cells written.  buf is a
 * CELL_SIZE scratch buffer of the calling vCPU.
 */
unsigned int workload_step(const struct workload *wl,
			   const struct wl_part *part,
			   const struct cell_map *map, struct wl_regs *regs,
			   uint8_t *buf);

/*
 * Count, per cell of the slice, how many of the first `writes` writes of
 * the vCPU's stream went to it: expected[i] for cell part->first + i.
 */
void workload_replay(const struct workload *wl, const struct wl_part *part,
		     uint64_t writes, uint64_t *expected);

#endif
