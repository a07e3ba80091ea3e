/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CELL_MAP_H
#define FERRY_CELL_MAP_H

/*
 * cell_map: where guest memory's cells are, region by region, in the
 * vCPUs' view and in the alias that verify and digest read.  Finding a
 * cell is pure arithmetic (the inline helpers below); building the map
 * from a struct ferry_mem, skipping the memfds' holes and prefaulting the
 * alias are the host's side (cell_map.c).
 */
#include <stdint.h>

#include "cell.h"

struct ferry_mem;

/* One region of guest memory, in cells.  Read-only once built. */
struct cell_region {
	uint64_t first;		/* index of its first cell */
	uint64_t nr;		/* cells in it */
	uint8_t *guest;		/* the vCPUs' view */
	uint8_t *alias;		/* ferry's view: verify, digest */
	int memfd;		/* for finding holes; -1: read every cell */
	uint64_t offset;	/* of the region's first cell in the memfd */
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

#endif
