// SPDX-License-Identifier: MIT
/* cell: the self-verifying 4 KiB cell format. */
#include <string.h>
#include <xxhash.h>

#include "cell.h"
#include "le.h"

/* Seeds keep cell checks apart from every other use of XXH3 in ferry. */
#define CELL_CHECK_SEED		0x6665727279636b31ULL	/* ferryck1 */
#define CELL_PATTERN_SEED	0x6665727279706174ULL	/* ferrypat */
#define CELL_PATTERN_STEP	0x9e3779b97f4a7c15ULL

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
