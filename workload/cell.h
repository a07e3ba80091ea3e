/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CELL_H
#define FERRY_CELL_H

/*
 * cell: the self-verifying 4 KiB cell format (the layout is in
 * ferry-vm/verify.h).  A cell's whole content is a function of (cell
 * index, version, writer), so a reader can tell a whole write from a torn
 * one anywhere in the 4 KiB, and a copy of the right cell from a
 * misplaced one.
 *
 * Pure computation on one cell's bytes: no allocation, no system call,
 * so the same code runs on host threads and in a freestanding guest.
 * Where the cells of guest memory are is cell_map.h's business.
 */
#include <stdbool.h>
#include <stdint.h>

#define CELL_SIZE		4096	/* FERRY_CELL_SIZE */
#define CELL_SHIFT		12
#define CELL_MAGIC		0x4c454346u	/* "FCEL" little-endian */
#define CELL_OFF_CHECK		0
#define CELL_OFF_VERSION	8
#define CELL_OFF_INDEX		16
#define CELL_OFF_WRITER		24
#define CELL_OFF_MAGIC		28
#define CELL_OFF_PAYLOAD	32

/* Build the image of version `version` of `cell` in buf (CELL_SIZE). */
void cell_build(uint8_t *buf, uint64_t cell, uint64_t version,
		uint32_t writer);

/*
 * Write the next version of `cell` at dst (its guest view), building it
 * in buf first so the check covers what was meant, not what landed.  The
 * old version comes from dst's header.  Returns false when that header is
 * not a whole-looking header of this cell (the old content was damaged);
 * the write happens either way.
 */
bool cell_rewrite(uint8_t *dst, uint8_t *buf, uint64_t cell,
		  uint32_t writer);

enum cell_status {
	CELL_EMPTY,		/* never written: all zeroes */
	CELL_WHOLE,		/* one whole write of this cell by `owner` */
	CELL_TORN,		/* anything else */
};

/*
 * Judge the cell at p.  *version gets the version its header claims
 * (whatever the verdict).
 */
enum cell_status cell_inspect(const uint8_t *p, uint64_t cell, uint32_t owner,
			      uint64_t *version);

#endif
