// SPDX-License-Identifier: MIT
/* cell: self-verifying 4 KiB cells of guest memory. */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "cell.h"
#include "base/error.h"
#include "le.h"

/* Seeds keep cell checks apart from every other use of XXH3 in ferry. */
#define CELL_CHECK_SEED		0x6665727279636b31ULL	/* ferryck1 */
#define CELL_PATTERN_SEED	0x6665727279706174ULL	/* ferrypat */
#define CELL_PATTERN_STEP	0x9e3779b97f4a7c15ULL

int cell_map_init(struct cell_map *map, const struct ferry_mem *mem)
{
	map->nr_cells = mem->total_size >> CELL_SHIFT;
	map->nr_regions = mem->nr_regions;
	map->regions = calloc(mem->nr_regions ? mem->nr_regions : 1,
			      sizeof(*map->regions));
	if (!map->regions)
		return ferry_fail(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		const struct ferry_region *src = &mem->regions[i];
		struct cell_region *r = &map->regions[i];

		r->first = src->guest_base >> CELL_SHIFT;
		r->nr = src->size >> CELL_SHIFT;
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

	data = lseek(r->memfd, (off_t)(from << CELL_SHIFT), SEEK_DATA);
	if (data < 0 && errno == ENXIO)
		return false;
	if (data < 0) {
		/* No SEEK_DATA here: read it all. */
		*start = from;
		*end = r->nr;
		return true;
	}
	hole = lseek(r->memfd, data, SEEK_HOLE);
	*start = (uint64_t)data >> CELL_SHIFT;
	*end = hole < 0 ? r->nr :
			  ((uint64_t)hole + CELL_SIZE - 1) >> CELL_SHIFT;
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

static uint64_t cell_check(const uint8_t *p)
{
	return XXH3_64bits_withSeed(p + CELL_OFF_VERSION,
				    CELL_SIZE - CELL_OFF_VERSION,
				    CELL_CHECK_SEED);
}

/*
 * The payload is an arithmetic sequence started from a hash of (cell,
 * version): every word differs between any two versions, so a torn mix
 * of two writes is caught wherever the tear is, and the loop is simple
 * enough for the compiler to vectorize.
 */
static void cell_fill(uint8_t *buf, uint64_t cell, uint64_t version)
{
	uint8_t key[16];
	uint64_t w;

	le64_store(key, cell);
	le64_store(key + 8, version);
	w = XXH3_64bits_withSeed(key, sizeof(key), CELL_PATTERN_SEED);
	for (size_t off = CELL_OFF_PAYLOAD; off < CELL_SIZE; off += 8) {
		le64_store(buf + off, w);
		w += CELL_PATTERN_STEP;
	}
}

void cell_build(uint8_t *buf, uint64_t cell, uint64_t version,
		uint32_t writer)
{
	le64_store(buf + CELL_OFF_VERSION, version);
	le64_store(buf + CELL_OFF_INDEX, cell);
	le32_store(buf + CELL_OFF_WRITER, writer);
	le32_store(buf + CELL_OFF_MAGIC, CELL_MAGIC);
	cell_fill(buf, cell, version);
	le64_store(buf + CELL_OFF_CHECK, cell_check(buf));
}

static bool header_is_of(const uint8_t *p, uint64_t cell, uint32_t owner)
{
	return le64_load(p + CELL_OFF_INDEX) == cell &&
	       le32_load(p + CELL_OFF_WRITER) == owner &&
	       le32_load(p + CELL_OFF_MAGIC) == CELL_MAGIC;
}

bool cell_rewrite(uint8_t *dst, uint8_t *buf, uint64_t cell,
		  uint32_t writer)
{
	uint64_t old = le64_load(dst + CELL_OFF_VERSION);
	bool sane = old == 0 || header_is_of(dst, cell, writer);

	cell_build(buf, cell, old + 1, writer);
	memcpy(dst, buf, CELL_SIZE);
	return sane;
}

static bool cell_is_zero(const uint8_t *p)
{
	uint64_t acc = 0;

	for (size_t off = 0; off < CELL_SIZE; off += 8)
		acc |= le64_load(p + off);
	return acc == 0;
}

enum cell_status cell_inspect(const uint8_t *p, uint64_t cell, uint32_t owner,
			      uint64_t *version)
{
	*version = le64_load(p + CELL_OFF_VERSION);
	if (*version == 0)
		return cell_is_zero(p) ? CELL_EMPTY : CELL_TORN;
	if (!header_is_of(p, cell, owner))
		return CELL_TORN;
	if (le64_load(p + CELL_OFF_CHECK) != cell_check(p))
		return CELL_TORN;
	return CELL_WHOLE;
}
