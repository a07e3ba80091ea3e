/* SPDX-License-Identifier: MIT */
#ifndef FERRY_WORKLOAD_VERIFY_H
#define FERRY_WORKLOAD_VERIFY_H

/*
 * verify: the verifier behind every VM that runs the workload.  It knows
 * guest memory (a cell map), the workload, and each vCPU's slice and
 * registers; nothing of how a VM runs its vCPUs.  The VM's part is to
 * stop them and collect their registers (ferry_guest_verify for the
 * built-in VM).  The checks and the report are in ferry-vm/verify.h.
 */
#include <stdint.h>

#include "ferry-vm/verify.h"
#include "workload.h"

/* What the verifier needs of one vCPU, as of the pause. */
struct verify_vcpu {
	const struct wl_part *part;	/* its slice */
	struct wl_regs regs;		/* its registers */
	enum ferry_mp_state mp_state;	/* for the report only */
};

/*
 * Check memory, read through map's alias, against vCPUs[0 .. nr_vcpus),
 * vCPU i being the workload's vCPU i; nothing may write memory meanwhile.
 * Fills *rep whole.  Returns 0 when the check ran (rep->ok is the
 * verdict), -ENOMEM with a reason when it could not.
 */
int verify_memory(const struct cell_map *map, const struct workload *wl,
		  const struct verify_vcpu *vcpus, unsigned int nr_vcpus,
		  struct ferry_verify_report *rep);

/* XXH3-64 over all of memory through the alias, holes read as zeroes. */
int verify_digest(const struct cell_map *map, uint64_t *digest);

#endif
