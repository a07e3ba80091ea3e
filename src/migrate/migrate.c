// SPDX-License-Identifier: MIT
/* migrate: what the source and the destination share. */
#include <stdatomic.h>
#include <string.h>

#include "base/error.h"
#include "migrate/migrate.h"

static const char *const mode_names[] = {
	[FERRY_MODE_PRECOPY] = "precopy",
	[FERRY_MODE_POSTCOPY] = "postcopy",
	[FERRY_MODE_HYBRID] = "hybrid",
};

static const char *const phase_names[] = {
	[FERRY_PHASE_SETUP] = "setup",
	[FERRY_PHASE_PRECOPY] = "pre-copy",
	[FERRY_PHASE_SWITCHOVER] = "switchover",
	[FERRY_PHASE_POSTCOPY] = "post-copy",
	[FERRY_PHASE_DONE] = "done",
	[FERRY_PHASE_FAILED] = "failed",
};

const char *ferry_migrate_mode_name(enum ferry_mode mode)
{
	return (unsigned int)mode <= FERRY_MODE_HYBRID ? mode_names[mode] : "?";
}

int ferry_migrate_mode_parse(const char *name, enum ferry_mode *mode)
{
	for (int m = FERRY_MODE_PRECOPY; m <= FERRY_MODE_HYBRID; m++) {
		if (strcmp(name, mode_names[m]) == 0) {
			*mode = (enum ferry_mode)m;
			return 0;
		}
	}
	return ferry_fail(-EINVAL, "unknown mode '%s' (precopy, postcopy, "
			  "hybrid)", name);
}

const char *ferry_migrate_phase_name(enum ferry_phase phase)
{
	return (unsigned int)phase <= FERRY_PHASE_FAILED ?
	       phase_names[phase] : "?";
}

void ferry_migrate_opts_init(struct ferry_migrate_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->mode = FERRY_MODE_HYBRID;
	opts->max_downtime_ms = 50;
	opts->max_rounds = 30;
	opts->progress_ms = 100;
}

bool migrate_page_is_zero(const void *page, size_t len)
{
	const uint64_t *w = page;
	uint64_t acc = 0;

	/* Eight words per step: the compiler vectorizes the OR. */
	for (size_t i = 0; i < len / 8; i += 8) {
		for (int j = 0; j < 8; j++)
			acc |= w[i + (size_t)j];
		if (acc)
			return false;
	}
	return true;
}

bool migrate_bit_take(uint64_t *map, uint64_t bit)
{
	_Atomic uint64_t *word = (_Atomic uint64_t *)&map[bit / 64];
	uint64_t mask = 1ULL << (bit % 64);

	if (!(atomic_load_explicit(word, memory_order_relaxed) & mask))
		return false;
	return atomic_fetch_and(word, ~mask) & mask;
}

static bool same_page_size(enum ferry_backing a, enum ferry_backing b)
{
	return ferry_mem_backing_page_size(a) == ferry_mem_backing_page_size(b);
}

int ferry_migrate_mem_create(const struct ferry_wire_stream *stream,
			     enum ferry_backing backing,
			     struct ferry_mem **out)
{
	struct ferry_mem *mem;
	int ret = ferry_mem_create(&mem);

	for (unsigned int i = 0; !ret && i < stream->nr_regions; i++) {
		const struct ferry_wire_region *wr = &stream->regions[i];
		struct ferry_region *r;

		if (!same_page_size(wr->backing, backing)) {
			ret = ferry_fail(-EINVAL, "the source's region %u is "
					 "%s (%llu-byte pages); it cannot live "
					 "on %s here: use --backing %s", i,
					 ferry_mem_backing_name(wr->backing),
					 (unsigned long long)wr->page_size,
					 ferry_mem_backing_name(backing),
					 ferry_mem_backing_name(wr->backing));
			break;
		}
		ret = ferry_mem_add_region_at(mem, backing, wr->size,
					      wr->guest_base, &r);
		if (!ret && (r->size != wr->size ||
			     r->guest_base != wr->guest_base))
			ret = ferry_fail(-EINVAL, "region %u does not lay out "
					 "as the source's", i);
	}
	if (ret) {
		ferry_mem_destroy(mem);
		return ret;
	}
	*out = mem;
	return 0;
}
