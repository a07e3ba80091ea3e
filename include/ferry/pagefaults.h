/* SPDX-License-Identifier: MIT */
#ifndef FERRY_PAGEFAULTS_H
#define FERRY_PAGEFAULTS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Fault accounting (seed 000: one fault, not two, for the first write to a
 * shared page).  Bracket a piece of work with start/stop and read how many
 * page faults it cost, per page installed.
 *
 *   minor/major  getrusage(): faults taken by this process (RUSAGE_SELF) or
 *                by the calling thread only (RUSAGE_THREAD)
 *   vmstat       /proc/vmstat pgfault: every fault on the machine, so it
 *                also counts other processes; a cross-check, not the figure
 */
enum ferry_pagefaults_scope {
	FERRY_PAGEFAULTS_PROCESS,
	FERRY_PAGEFAULTS_THREAD,
};

struct ferry_pagefaults {
	enum ferry_pagefaults_scope scope;
	uint64_t minor, major, vmstat_pgfault;	/* at start, then deltas */
};

int ferry_pagefaults_start(struct ferry_pagefaults *f,
			   enum ferry_pagefaults_scope scope);

/* Turns the start values into the deltas since start. */
int ferry_pagefaults_stop(struct ferry_pagefaults *f);

/* (minor + major) / pages; 0 pages gives 0. */
double ferry_pagefaults_per_page(const struct ferry_pagefaults *f,
				 uint64_t pages);

/* /proc/vmstat's pgfault, or -errno. */
int ferry_pagefaults_vmstat(const char *key, uint64_t *value);

#ifdef __cplusplus
}
#endif

#endif
