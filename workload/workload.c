// SPDX-License-Identifier: MIT
/*
 * workload: each vCPU's share of the workload (its slice, kv's key
 * layout) and the check of registers that come from outside.  The
 * generators, the step and the replay are in workload_gen.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <xxhash.h>

#include "ferry/error.h"
#include "le.h"
#include "workload.h"

#define KV_SIZE_SEED	0x6b762d73697a6573ULL	/* "kv-sizes" */
/* ---- kv layout -------------------------------------------------------- */

/*
 * Each key has a fixed value size, like most keys of a real cache: half
 * fit one cell, the rest take 2, 4 or 16 (64 KiB).
 */
static uint64_t kv_value_cells(const struct workload *wl, unsigned int vcpu,
			       uint64_t key)
{
	uint8_t buf[8];
	uint64_t roll;

	le64_store(buf, key);
	roll = XXH3_64bits_withSeed(buf, sizeof(buf),
				    workload_vcpu_seed(wl->seed, vcpu,
						       KV_SIZE_SEED));
	roll %= 100;
	if (roll < 50)
		return 1;
	if (roll < 80)
		return 2;
	if (roll < 95)
		return 4;
	return WL_MAX_VALUE_CELLS;
}

/* Keys packed end to end; the last one is cut to fit.  Returns the count. */
static uint64_t kv_lay_keys(const struct workload *wl, struct wl_part *p,
			    uint64_t *start)
{
	uint64_t key = 0, off = 0;

	while (off < p->nr) {
		uint64_t len = kv_value_cells(wl, p->vcpu, key);

		if (start)
			start[key] = off;
		off += len < p->nr - off ? len : p->nr - off;
		key++;
	}
	if (start)
		start[key] = p->nr;
	return key;
}

static int kv_part_init(const struct workload *wl, struct wl_part *p)
{
	p->nr_keys = kv_lay_keys(wl, p, NULL);
	p->key_start = malloc((p->nr_keys + 1) * sizeof(*p->key_start));
	if (!p->key_start)
		return ferry_error_set(-ENOMEM,
				       "out of memory for %llu kv keys",
				       (unsigned long long)p->nr_keys);
	kv_lay_keys(wl, p, p->key_start);
	return 0;
}

int workload_part_init(const struct workload *wl, unsigned int vcpu,
		       struct wl_part *part)
{
	uint64_t n = wl->nr_vcpus;

	*part = (struct wl_part){ .vcpu = vcpu };
	part->first = wl->ws_cells * vcpu / n;
	part->nr = wl->ws_cells * (vcpu + 1) / n - part->first;
	part->hot = part->nr * wl->hot_pct / 100;
	if (part->hot == 0)
		part->hot = 1;
	for (unsigned int i = 0; i < wl->nr_events; i++)
		if (wl->events[i].caller == vcpu)
			part->events[part->nr_events++] = wl->events[i];
	/* Stable: calls due at the same step keep the spec's order. */
	for (unsigned int i = 1; i < part->nr_events; i++) {
		struct wl_event ev = part->events[i];
		unsigned int j = i;

		for (; j > 0 && part->events[j - 1].step > ev.step; j--)
			part->events[j] = part->events[j - 1];
		part->events[j] = ev;
	}
	if (wl->kind == WL_KV && part->nr)
		return kv_part_init(wl, part);
	return 0;
}

void workload_part_fini(struct wl_part *part)
{
	free(part->key_start);
	part->key_start = NULL;
}

/* ---- hostile registers ------------------------------------------------- */

static uint64_t max_cells_per_step(const struct workload *wl,
				   const struct wl_part *p)
{
	if (wl->kind == WL_IDLE || p->nr == 0)
		return 0;
	return wl->kind == WL_KV ? WL_MAX_VALUE_CELLS : 1;
}

/* a <= b * k without overflow. */
static bool within(uint64_t a, uint64_t b, uint64_t k)
{
	return (unsigned __int128)a <= (unsigned __int128)b * k;
}

int workload_regs_check(const struct workload *wl, const struct wl_part *part,
			const struct wl_regs *r)
{
	uint64_t per_step = max_cells_per_step(wl, part);
	uint64_t pos = wl->kind == WL_SEQDIRTY && part->nr ?
		       r->writes % part->nr : 0;

	if (!within(r->writes, r->steps, per_step) ||
	    !within(r->reads, r->steps, per_step) ||
	    r->writes + r->reads < r->writes)
		return ferry_error_set(-EINVAL, "%llu writes and %llu reads "
				       "cannot come from %llu steps",
				       (unsigned long long)r->writes,
				       (unsigned long long)r->reads,
				       (unsigned long long)r->steps);
	if (r->read_errors > r->writes + r->reads)
		return ferry_error_set(-EINVAL,
				       "more read errors than accesses");
	if ((r->read_errors == 0) != (r->first_bad == WL_NO_CELL) ||
	    (r->first_bad != WL_NO_CELL &&
	     r->first_bad - part->first >= part->nr))
		return ferry_error_set(-EINVAL, "first bad cell %llu is not "
				       "one of this vCPU's",
				       (unsigned long long)r->first_bad);
	if (r->wgen_pos != pos)
		return ferry_error_set(-EINVAL, "write position %llu does not "
				       "follow from %llu writes",
				       (unsigned long long)r->wgen_pos,
				       (unsigned long long)r->writes);
	return 0;
}
