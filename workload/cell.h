/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CELL_H
#define FERRY_CELL_H

/*
 * cell: guest memory as self-verifying 4 KiB cells (the layout is in
 * ferry/guest.h).  A cell's whole content is a function of (cell index,
 * version, writer), so a reader can tell a whole write from a torn one
 * anywhere in the 4 KiB, and a copy of the right cell from a misplaced
 * one.
 */
#include <stdbool.h>
#include <stdint.h>

#include "ferry-vm/guest.h"
#include "ferry/mem.h"

#define CELL_SIZE		FERRY_CELL_SIZE
#define CELL_SHIFT		12
#define CELL_MAGIC		0x4c454346u	/* "FCEL" little-endian */
#define CELL_OFF_CHECK		0
#define CELL_OFF_VERSION	8
#define CELL_OFF_INDEX		16
#define CELL_OFF_WRITER		24
#define CELL_OFF_MAGIC		28
#define CELL_OFF_PAYLOAD	32

/* One region of guest memory, in cells.  Read-only once built. */
struct cell_region {
	uint64_t first;		/* index of its first cell */
	uint64_t nr;		/* cells in it */
	uint8_t *guest;		/* the vCPUs' view */
	uint8_t *alias;		/* ferry's view: verify, digest */
	int memfd;		/* for finding holes */
};

struct cell_map {
	uint64_t nr_cells;
	unsigned int nr_regions;
	struct cell_region *regions;
};

/* Cells of every region of mem, in guest-physical order. */
int cell_map_init(struct cell_map *map, const struct ferry_mem *mem);
void cell_map_fini(struct cell_map *map);

static inline const struct cell_region *
cell_region_of(const struct cell_map *map, uint64_t cell)
{
	const struct cell_region *r = map->regions;

	while (cell - r->first >= r->nr)
		r++;
	return r;
}

static inline uint8_t *cell_guest(const struct cell_map *map, uint64_t cell)
{
	const struct cell_region *r = cell_region_of(map, cell);

	return r->guest + ((cell - r->first) << CELL_SHIFT);
}

static inline const uint8_t *cell_alias(const struct cell_map *map,
					uint64_t cell)
{
	const struct cell_region *r = cell_region_of(map, cell);

	return r->alias + ((cell - r->first) << CELL_SHIFT);
}

/*
 * The next run of cells at or after `cell` that may hold data:
 * [*start, *end).  Holes in the memfd (never written, or punched) are
 * skipped without touching them; *start == map->nr_cells when no data is
 * left.  Where the file system cannot say, everything is data.
 */
void cell_next_extent(const struct cell_map *map, uint64_t cell,
		      uint64_t *start, uint64_t *end);

/*
 * Map the alias of cells [start, end) (one region's worth at most) in one
 * go, before reading them all.
 */
void cell_prefault_alias(const struct cell_map *map, uint64_t start,
			 uint64_t end);

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
