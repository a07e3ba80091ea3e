/* SPDX-License-Identifier: MIT */
#ifndef FERRY_VM_VERIFY_H
#define FERRY_VM_VERIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/vcpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The workload's verdict on guest memory, for any VM that runs ferry's
 * workload (the built-in VM: ferry_guest_verify() in ferry-vm/guest.h).
 *
 * Memory is self-verifying.  It is seen as 4 KiB cells; each vCPU owns a
 * contiguous slice of the working set and is the only one to write it.
 * Every write rewrites a whole cell:
 *
 *   offset  size  field (little-endian)
 *        0     8  check: XXH3-64 of bytes 8..4095 (seeded, see cell.c)
 *        8     8  version: how many times the cell has been written
 *       16     8  cell index (guest-physical address / 4096)
 *       24     4  writer: the vCPU that owns the cell
 *       28     4  magic "FCEL"
 *       32  4064  payload: a pattern derived from (cell, version)
 *
 * and a never-written cell is all zeroes (a hole is a valid never-written
 * cell).  The version is the cell's old version + 1, read from the cell as
 * the vCPU writes it, so the sum of the versions in a vCPU's slice equals
 * the number of writes in its registers.  The workload also reads cells
 * and checks each one as it reads it; a failed check is counted in the
 * reader's registers, never a crash.
 *
 * The verifier checks memory against the vCPUs' registers:
 *
 *   1. every cell is whole: its check matches its bytes, its index and
 *      writer are its own, a never-written cell is all zeroes (torn);
 *   2. per vCPU, the sum of the versions in its slice against the writes
 *      in its registers;
 *   3. each vCPU's write stream is replayed from its boot state for as
 *      many writes as its registers say, giving every cell's expected
 *      version: a cell holding less lost writes, one holding more holds
 *      writes the vCPU has not made (they will be applied twice).
 */

#define FERRY_CELL_SIZE		4096
#define FERRY_VERIFY_MAX_VCPUS	64	/* most vCPUs the workload runs on */

enum ferry_verify_kind {
	FERRY_VERIFY_TORN,	/* a cell that is not one whole write */
	FERRY_VERIFY_LOST,	/* older than the writes its owner made */
	FERRY_VERIFY_DUPLICATED, /* newer than the writes its owner made */
};

struct ferry_verify_bad {
	enum ferry_verify_kind kind;
	uint64_t cell;		/* index; gpa = cell * FERRY_CELL_SIZE */
	int vcpu;		/* owner; -1: outside the working set */
	uint64_t expected;	/* version replay says the cell must hold */
	uint64_t found;		/* version in memory (torn: as read) */
};

#define FERRY_VERIFY_MAX_BAD	16

struct ferry_verify_vcpu {
	enum ferry_mp_state mp_state;
	uint64_t steps;
	uint64_t writes;	/* in the vCPU's registers */
	uint64_t mem_writes;	/* sum of the versions in its slice */
	uint64_t read_errors;	/* from its registers */
	uint64_t first_bad_read; /* cell, or UINT64_MAX */
};

struct ferry_verify_report {
	bool ok;		/* nothing lost, torn, duplicated, misread */
	uint64_t cells;		/* cells in memory */
	uint64_t cells_written;	/* cells holding a version */
	uint64_t lost;		/* writes missing from memory */
	uint64_t torn;		/* cells */
	uint64_t duplicated;	/* writes in memory that no vCPU made yet */
	uint64_t read_errors;	/* sum over vCPUs */
	unsigned int nr_bad;	/* entries in bad[], first found first */
	struct ferry_verify_bad bad[FERRY_VERIFY_MAX_BAD];
	unsigned int nr_vcpus;
	struct ferry_verify_vcpu vcpu[FERRY_VERIFY_MAX_VCPUS];
	uint64_t scan_ns;	/* time spent reading memory */
	uint64_t replay_ns;	/* time spent replaying the write streams */
};

/* "torn", "lost", "duplicated"; "?" for anything else. */
const char *ferry_verify_kind_name(enum ferry_verify_kind kind);

#ifdef __cplusplus
}
#endif

#endif
