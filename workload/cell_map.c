// SPDX-License-Identifier: MIT
/* cell_map: guest memory's cells, and where its memfds hold data. */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cell_map.h"
#include "ferry/error.h"
#include "ferry/mem.h"

/*
 * Cells are numbered densely across the regions in guest-physical order:
 * a gap between regions (RAM below and above a hole) holds no cells.
 */
int cell_map_init(struct cell_map *map, const struct ferry_mem *mem)
{
	uint64_t first = 0;

	map->nr_cells = mem->total_size >> CELL_SHIFT;
	map->nr_regions = mem->nr_regions;
	map->regions = calloc(mem->nr_regions ? mem->nr_regions : 1,
			      sizeof(*map->regions));
	if (!map->regions)
		return ferry_error_set(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		const struct ferry_region *src = &mem->regions[i];
		struct cell_region *r = &map->regions[i];

		r->first = first;
		r->nr = src->size >> CELL_SHIFT;
		first += r->nr;
		r->offset = src->offset;
		r->guest = src->guest;
		r->alias = src->alias;
		/*
		 * A private view's own copies are not in the file: its holes
		 * say nothing, so no fd, and every cell is read.
		 */
		r->memfd = src->private_view ? -1 : src->memfd;
	}
	return 0;
}

void cell_map_fini(struct cell_map *map)
{
	free(map->regions);
	map->regions = NULL;
}

/*
 * One region's next data run, in cells relative to the region; false if
 * the region holds no data at or after `from`.
 */
static bool region_extent(const struct cell_region *r, uint64_t from,
			  uint64_t *start, uint64_t *end)
{
	off_t data, hole;

	data = lseek(r->memfd, (off_t)(r->offset + (from << CELL_SHIFT)),
		     SEEK_DATA);
	if (data < 0 && errno == ENXIO)
		return false;
	if (data < 0) {
		/* No SEEK_DATA here: read it all. */
		*start = from;
		*end = r->nr;
		return true;
	}
	hole = lseek(r->memfd, data, SEEK_HOLE);
	*start = ((uint64_t)data - r->offset) >> CELL_SHIFT;
	*end = hole < 0 ? r->nr : ((uint64_t)hole - r->offset + CELL_SIZE - 1)
				  >> CELL_SHIFT;
	if (*end > r->nr)
		*end = r->nr;
	return *start < *end;
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22		/* Linux 5.14 */
#endif

/*
 * Map a run of the alias in one call rather than one fault per page: a
 * verify pass over memory nobody has read through the alias yet is
 * several times faster.  Only a hint; a kernel without it faults as usual.
 */
void cell_prefault_alias(const struct cell_map *map, uint64_t start,
			 uint64_t end)
{
	const struct cell_region *r = cell_region_of(map, start);
	uint64_t last = r->first + r->nr;

	if (end > last)
		end = last;
	madvise((void *)cell_alias(map, start), (end - start) << CELL_SHIFT,
		MADV_POPULATE_READ);
}

void cell_next_extent(const struct cell_map *map, uint64_t cell,
		      uint64_t *start, uint64_t *end)
{
	for (unsigned int i = 0; i < map->nr_regions; i++) {
		const struct cell_region *r = &map->regions[i];
		uint64_t s, e;

		if (cell >= r->first + r->nr)
			continue;
		if (cell < r->first)
			cell = r->first;
		if (region_extent(r, cell - r->first, &s, &e)) {
			*start = r->first + s;
			*end = r->first + e;
			return;
		}
	}
	*start = *end = map->nr_cells;
}
