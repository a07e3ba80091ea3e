/* SPDX-License-Identifier: MIT */
#ifndef FERRY_FAULTS_H
#define FERRY_FAULTS_H

#include <stdint.h>

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
enum ferry_faults_scope {
	FERRY_FAULTS_PROCESS,
	FERRY_FAULTS_THREAD,
};

struct ferry_faults {
	enum ferry_faults_scope scope;
	uint64_t minor, major, vmstat_pgfault;	/* at start, then deltas */
};

int ferry_faults_start(struct ferry_faults *f, enum ferry_faults_scope scope);

/* Turns the start values into the deltas since start. */
int ferry_faults_stop(struct ferry_faults *f);

/* (minor + major) / pages; 0 pages gives 0. */
double ferry_faults_per_page(const struct ferry_faults *f, uint64_t pages);

/* /proc/vmstat's pgfault, or -errno. */
int ferry_vmstat_read(const char *key, uint64_t *value);

#endif
