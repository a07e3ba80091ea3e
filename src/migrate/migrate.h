/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_INTERNAL_H
#define FERRY_MIGRATE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/migrate.h"

/*
 * Pages travel in 2 MiB chunks spread round-robin over the bulk channels,
 * and a page always takes the same channel: each channel's order then
 * keeps the versions of a page in order without any cross-channel
 * barrier but the SWITCHOVER one.
 */
#define MIGRATE_CHUNK_BYTES	(2UL << 20)

static inline size_t migrate_chunk_pages(const struct ferry_region *r)
{
	return r->page_size >= MIGRATE_CHUNK_BYTES ? 1 :
	       MIGRATE_CHUNK_BYTES / r->page_size;
}

static inline unsigned int migrate_chan_of(const struct ferry_region *r,
					   unsigned int region, uint64_t page,
					   unsigned int nr_bulk)
{
	return (unsigned int)((page / migrate_chunk_pages(r) + region) %
			      nr_bulk);
}

/* All zero?  Reads the page once, a word at a time. */
bool migrate_page_is_zero(const void *page, size_t len);

/* Atomic test-and-clear of one bit of a shared bitmap. */
bool migrate_bit_take(uint64_t *map, uint64_t bit);

#endif
