/* SPDX-License-Identifier: MIT */
#ifndef FERRY_BITMAP_H
#define FERRY_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "base/sys.h"

/* Plain (non-atomic) bitmaps of 64-bit words. */

static inline size_t bitmap_words(size_t bits)
{
	return (bits + 63) / 64;
}

/* Zeroed and faulted in (see sys_zalloc). */
static inline uint64_t *bitmap_alloc(size_t bits)
{
	return sys_zalloc((bitmap_words(bits) + 1) * sizeof(uint64_t));
}

static inline bool bitmap_test(const uint64_t *map, size_t bit)
{
	return map[bit / 64] >> (bit % 64) & 1;
}

/* Set one bit; true if it was clear. */
static inline bool bitmap_set(uint64_t *map, size_t bit)
{
	uint64_t mask = 1ULL << (bit % 64);
	bool was_clear = !(map[bit / 64] & mask);

	map[bit / 64] |= mask;
	return was_clear;
}

static inline void bitmap_clear(uint64_t *map, size_t bit)
{
	map[bit / 64] &= ~(1ULL << (bit % 64));
}

/* Set [first, first + count); returns how many were clear. */
static inline size_t bitmap_set_range(uint64_t *map, size_t first,
				      size_t count)
{
	size_t newly = 0;

	for (size_t b = first; b < first + count; b++)
		newly += bitmap_set(map, b);
	return newly;
}

static inline size_t bitmap_weight(const uint64_t *map, size_t bits)
{
	size_t n = 0;

	for (size_t w = 0; w < bits / 64; w++)
		n += (size_t)__builtin_popcountll(map[w]);
	for (size_t b = bits / 64 * 64; b < bits; b++)
		n += bitmap_test(map, b);
	return n;
}

#endif
