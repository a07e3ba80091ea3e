/* SPDX-License-Identifier: MIT */
#ifndef FERRY_GUEST_H
#define FERRY_GUEST_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry-vm/verify.h"
#include "ferry/mem.h"
#include "ferry/vcpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The built-in workload VM: what ferry migrates when there is no KVM.
 *
 * Its vCPUs are threads that run a deterministic memory workload step by
 * step, at native speed, touching guest memory only through the regions'
 * guest views (the mappings ferry registers with userfaultfd).  Each
 * vCPU's registers (step count, PRNG states, write generator position,
 * write and read totals, program position, power state) determine its
 * future completely, and they fit in a small blob (the vCPU interface's
 * save / load).
 *
 * Memory is self-verifying: every 4 KiB cell carries its version and a
 * check, each vCPU owns a slice of cells and counts its writes, and
 * ferry_guest_verify() proves from memory and the registers that no write
 * was lost, torn or duplicated (the cell layout and the report are in
 * ferry-vm/verify.h, shared with any VM that runs the same workload).
 *
 * Power calls (PSCI-like) are part of the guest program: the boot vCPU
 * powers the others on, and the workload spec can script CPU_OFF, CPU_ON,
 * CPU_SUSPEND, wake-ups, SYSTEM_RESET and SYSTEM_OFF at given steps.
 */

#define FERRY_GUEST_MAX_VCPUS	FERRY_VERIFY_MAX_VCPUS
#define FERRY_GUEST_SPEC_MAX	255	/* bytes of workload spec */

/*
 * What a VM is made of.  This is the machine description that travels to
 * a migration's destination (ferry_guest_config_encode/decode), so the
 * destination builds the same machine.
 */
struct ferry_guest_config {
	unsigned int nr_vcpus;		/* 1 .. FERRY_GUEST_MAX_VCPUS */
	uint64_t seed;			/* every PRNG derives from it */
	/*
	 * Bit i set: vCPU i is powered off at boot (and after every
	 * SYSTEM_RESET).  Bits at and above nr_vcpus are ignored (encode
	 * drops them), and at least one vCPU must boot powered on; the
	 * lowest such vCPU is the boot vCPU, whose program powers the
	 * others on.  Default: every vCPU but vCPU 0.
	 */
	uint64_t boot_off_mask;
	/*
	 * Each vCPU idles (settles) once it has run this many steps; 0: no
	 * limit.  For deterministic runs: the same seed and the same step
	 * counts give the same memory.  Not part of the machine's state; a
	 * destination may set its own (ferry_guest_set_step_limit).
	 */
	uint64_t step_limit;
	/*
	 * Bytes of guest memory the machine is laid out on; 0 at create
	 * means "all of `mem`".  ferry_guest_get_config() reports the size
	 * in use, and a non-zero size must match `mem` at create.
	 */
	uint64_t mem_size;
	/* NUL-terminated workload spec: "random,ws=256M,rate=200M". */
	char workload[FERRY_GUEST_SPEC_MAX + 1];
};

/*
 * Defaults: one vCPU, workload "random", seed 1, every vCPU but vCPU 0
 * powered off at boot, no step limit, all of memory.
 */
void ferry_guest_config_init(struct ferry_guest_config *cfg);

/* Copy a spec in; -ENAMETOOLONG if it does not fit. */
int ferry_guest_config_set_workload(struct ferry_guest_config *cfg,
				    const char *spec);

/*
 * The config as bytes (little-endian, versioned, checksummed): returns
 * the length written, or -ENOSPC if `len` is too small.  buf NULL returns
 * the length needed.  -EINVAL for a config ferry_guest_create would
 * refuse on its face (bad counts, masks, spec length).
 */
ssize_t ferry_guest_config_encode(const struct ferry_guest_config *cfg,
				  void *buf, size_t len);

/*
 * Bytes back into a config.  The bytes are hostile: length, magic,
 * version and checksum are checked (-EBADMSG), then every field and the
 * workload spec itself (-EINVAL), before *cfg is written.
 */
int ferry_guest_config_decode(const void *buf, size_t len,
			      struct ferry_guest_config *cfg);

/*
 * The workload specs, for --help: one line per workload and per option.
 *
 *   seqdirty   writes every cell of its slice in order, round and round
 *   random     writes uniformly random cells
 *   hotcold    most writes to a small hot set
 *   kv         a key-value store: puts and gets of values of 4-64 KiB
 *   idle       touches nothing; a step is a 1 ms timer tick
 *
 * Options (NAME,opt=value,...): ws=SIZE (working set, default all of
 * memory), rate=SIZE (write cap in bytes per second for the whole VM,
 * default none), read=PCT (share of steps that read), hot=PCT and
 * hotw=PCT (hotcold: hot set size, share of writes to it); power events:
 * off=V@S, suspend=V@S (vCPU V at its step S), on=V@S, wake=V@S,
 * reset=S, sysoff=S (made by vCPU 0 at its step S).
 */
const char *ferry_guest_workload_help(void);

struct ferry_guest;

/*
 * Build a VM on `mem` (which must outlive it): lay the workload out, give
 * every vCPU its boot registers.  No thread runs until ferry_guest_start.
 * Guest memory is not touched, so a destination can create its VM, load
 * vCPU state and receive memory before starting it.  -EINVAL with a
 * reason for a bad config or a workload that does not fit in memory.
 */
int ferry_guest_create(struct ferry_mem *mem,
		       const struct ferry_guest_config *cfg,
		       struct ferry_guest **out);

/* Stops the threads if they run, frees the VM.  NULL is fine. */
void ferry_guest_destroy(struct ferry_guest *g);

/*
 * The config in use: mem_size filled in, the current step limit, and the
 * boot-off mask as loaded vCPU states have left it.
 */
void ferry_guest_get_config(const struct ferry_guest *g,
			    struct ferry_guest_config *cfg);

/*
 * Start one thread per vCPU.  A VM started while paused starts paused.
 * ferry_guest_stop asks every thread to finish its step and joins them
 * all; the registers stay, and the VM can be started again.
 */
int ferry_guest_start(struct ferry_guest *g);
int ferry_guest_stop(struct ferry_guest *g);

/* The vCPU interface's pause / resume (they nest). */
int ferry_guest_pause(struct ferry_guest *g);
int ferry_guest_resume(struct ferry_guest *g);

/* Change every vCPU's step limit (0: none); running vCPUs see it at once. */
int ferry_guest_set_step_limit(struct ferry_guest *g, uint64_t limit);

/*
 * Wait until every vCPU has settled: powered off, suspended, or at its
 * step limit, with nothing left for it to do.  0, or -ETIMEDOUT after
 * timeout_ms (negative: no limit).  A VM not started is settled.
 */
int ferry_guest_wait_settled(struct ferry_guest *g, int timeout_ms);

/*
 * The vCPU operations for the built-in VM; the `vm` handle they take is
 * the struct ferry_guest pointer.
 *
 * Its register blob, version 1, 128 bytes, little-endian:
 *
 *   offset size field
 *        0    4 magic "FVCP"
 *        4    2 version (1)
 *        6    2 zero
 *        8    4 length of the blob (128)
 *       12    4 vCPU index the state belongs to
 *       16    8 machine id: a hash of what determines the workload (seed,
 *               vCPU count, memory size, workload kind and parameters);
 *               a blob loads only into the same kind of machine
 *       24    4 MP state (enum ferry_mp_state)
 *       28    4 flags: 1 boot-off (this vCPU's power-off-at-boot bit),
 *               2 on-pending (CPU_ON done, not yet running),
 *               4 wake-pending (a wake-up arrived before CPU_SUSPEND)
 *       32    4 program position: 0 boot, 1 running the workload
 *       36    4 script cursor: scripted power events already done
 *       40    4 SYSTEM_RESETs seen
 *       44    4 zero
 *       48    8 steps
 *       56    8 cell writes
 *       64    8 cell reads
 *       72    8 read errors (cells that failed the reader's check)
 *       80    8 first cell that failed, or all ones
 *       88    8 op PRNG state (read or write, what to read)
 *       96    8 write generator PRNG state (where to write)
 *      104    8 write generator position (seqdirty's next cell)
 *      112    8 zero
 *      120    8 XXH3-64 of bytes 0..119
 *
 * The boot-off flag travels so that a SYSTEM_RESET after a migration
 * returns to the source machine's boot configuration even if the
 * destination's vCPUs were created with other bits (seed 001).
 */
const struct ferry_vcpu_ops *ferry_guest_vcpu_ops(void);

#define FERRY_GUEST_STATE_SIZE	128

/* Power calls, as the guest program makes them (PSCI 0.2 names). */
enum ferry_psci_fn {
	FERRY_PSCI_CPU_ON,
	FERRY_PSCI_CPU_OFF,
	FERRY_PSCI_CPU_SUSPEND,
	FERRY_PSCI_AFFINITY_INFO,
	FERRY_PSCI_SYSTEM_OFF,
	FERRY_PSCI_SYSTEM_RESET,
	/*
	 * Not PSCI: an interrupt sent to `target` that ends its
	 * CPU_SUSPEND, or is kept pending (like a pending interrupt before
	 * WFI) if it is not suspended yet.  DENIED if `target` is off.
	 */
	FERRY_PSCI_WAKE,
	FERRY_PSCI_FN_COUNT
};

/* PSCI return values (PSCI 0.2, section 5.2.2). */
#define FERRY_PSCI_SUCCESS		0
#define FERRY_PSCI_NOT_SUPPORTED	(-1)
#define FERRY_PSCI_INVALID_PARAMETERS	(-2)
#define FERRY_PSCI_DENIED		(-3)
#define FERRY_PSCI_ALREADY_ON		(-4)
#define FERRY_PSCI_ON_PENDING		(-5)

/* AFFINITY_INFO results. */
#define FERRY_PSCI_AFFINITY_ON		0
#define FERRY_PSCI_AFFINITY_OFF		1
#define FERRY_PSCI_AFFINITY_ON_PENDING	2

/*
 * Make a power call on behalf of vCPU `caller`, exactly as its program
 * would, while the VM is paused or not started (-EBUSY otherwise).
 * `target` is used by CPU_ON, AFFINITY_INFO and WAKE.  *psci_ret gets the
 * PSCI result:
 *
 *   CPU_ON         SUCCESS; ALREADY_ON (target on or suspended);
 *                  ON_PENDING (target powered on but has not run yet);
 *                  INVALID_PARAMETERS (no such target)
 *   CPU_OFF        SUCCESS; DENIED for the last vCPU that is on (use
 *                  SYSTEM_OFF)
 *   CPU_SUSPEND    SUCCESS (suspended, or a pending wake-up consumed)
 *   AFFINITY_INFO  AFFINITY_ON / _OFF / _ON_PENDING; INVALID_PARAMETERS
 *   SYSTEM_OFF     SUCCESS: every vCPU off
 *   SYSTEM_RESET   SUCCESS: every vCPU back to the boot configuration
 *   WAKE           SUCCESS; DENIED (target off); INVALID_PARAMETERS
 *
 * The caller must be powered on (RUNNABLE), as a vCPU making a call is:
 * DENIED otherwise.  Returns 0, or -EINVAL for a bad caller or function.
 */
int ferry_guest_psci(struct ferry_guest *g, unsigned int caller,
		     enum ferry_psci_fn fn, unsigned int target,
		     int *psci_ret);

const char *ferry_guest_psci_fn_name(enum ferry_psci_fn fn);

struct ferry_guest_vcpu_stats {
	enum ferry_mp_state mp_state;
	uint64_t steps;
	uint64_t writes;		/* cells written */
	uint64_t reads;			/* cells read and checked */
	uint64_t bytes_dirtied;		/* writes * FERRY_CELL_SIZE */
	uint64_t read_errors;		/* cells failing a reader's check */
	uint32_t resets;		/* SYSTEM_RESETs seen */
};

struct ferry_guest_stats {
	unsigned int nr_vcpus;
	uint64_t steps, writes, reads, bytes_dirtied, read_errors;
	struct ferry_guest_vcpu_stats vcpu[FERRY_GUEST_MAX_VCPUS];
};

/* Counters as of now; any time, from any thread; never fails. */
void ferry_guest_stats(struct ferry_guest *g, struct ferry_guest_stats *st);

/* ---- verification --------------------------------------------------- */

/*
 * Check guest memory against the vCPUs' registers, reading through the
 * alias, as ferry-vm/verify.h says; the VM must be paused or not started
 * (-EBUSY).
 *
 * Cost: one XXH3 pass over memory (holes are skipped) plus the replay,
 * a few nanoseconds per write made (seqdirty: closed form), and 16 bytes
 * of working memory per cell of the largest vCPU slice.  Returns 0 when
 * the check ran (rep->ok is the verdict), -errno when it could not.
 *
 * SYSTEM_RESET does not touch memory or the write accounting: a reset
 * machine keeps its RAM, and each vCPU's write stream carries on where it
 * was, so verification holds across resets and migrations alike.
 */
int ferry_guest_verify(struct ferry_guest *g, struct ferry_verify_report *rep);

/*
 * XXH3-64 over all of guest memory through the alias (holes read as
 * zeroes).  Paused or not started, else -EBUSY.  Two VMs with the same
 * config and the same step counts have the same digest.
 */
int ferry_guest_digest(struct ferry_guest *g, uint64_t *digest);

#ifdef __cplusplus
}
#endif

#endif
