// SPDX-License-Identifier: MIT
/*
 * verify: prove from guest memory and the vCPUs' registers that no write
 * was lost, torn or duplicated; and the memory digest.  For any VM: it
 * reads a cell map, the workload and the registers the VM collected.
 *
 * Both read through the alias only, and skip the memfds' holes (a hole is
 * a never-written cell), so they neither fault on a registered guest view
 * nor fill memory that was never written.
 *
 * Verification works one vCPU slice at a time: read every cell of the
 * slice (found[]), replay the vCPU's write stream for as many writes as
 * its registers say (expected[]), compare.  Working memory is 16 bytes
 * per cell of the largest slice.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ferry/clock.h"
#include "ferry/error.h"
#include "ferry/hist.h"
#include "verify.h"

#define FOUND_TORN	UINT64_MAX	/* found[] marker: not one write */
#define NO_OWNER	UINT32_MAX	/* cells past the working set */

/* The public report speaks of the workload's cells and vCPUs. */
_Static_assert(CELL_SIZE == FERRY_CELL_SIZE, "cell size");
_Static_assert(WL_MAX_VCPUS == FERRY_VERIFY_MAX_VCPUS, "vCPU count");

struct verify {
	const struct cell_map *map;
	struct ferry_verify_report *rep;
	uint64_t *found;		/* versions of the slice's cells */
	uint64_t *expected;		/* what replay says they must be */
};

static const char *const kind_names[] = {
	[FERRY_VERIFY_TORN] = "torn",
	[FERRY_VERIFY_LOST] = "lost",
	[FERRY_VERIFY_DUPLICATED] = "duplicated",
};

const char *ferry_verify_kind_name(enum ferry_verify_kind kind)
{
	if ((unsigned int)kind > FERRY_VERIFY_DUPLICATED)
		return "?";
	return kind_names[kind];
}

static void add_bad(struct ferry_verify_report *rep,
		    enum ferry_verify_kind kind, uint64_t cell, uint32_t owner,
		    uint64_t expected, uint64_t found)
{
	if (rep->nr_bad == FERRY_VERIFY_MAX_BAD)
		return;
	rep->bad[rep->nr_bad++] = (struct ferry_verify_bad){
		.kind = kind,
		.cell = cell,
		.vcpu = owner == NO_OWNER ? -1 : (int)owner,
		.expected = expected,
		.found = found,
	};
}

/* Cell by cell over the data in [first, first + nr); holes are empty. */
static void scan_cells(struct verify *vf, uint64_t first, uint64_t nr,
		       uint32_t owner)
{
	const struct cell_map *map = vf->map;
	uint64_t c = first, end = first + nr, start, stop;

	while (c < end) {
		cell_next_extent(map, c, &start, &stop);
		if (start >= end)
			return;
		if (stop > end)
			stop = end;
		cell_prefault_alias(map, start, stop);
		for (c = start; c < stop; c++) {
			uint64_t version;
			enum cell_status st = cell_inspect(cell_alias(map, c),
							   c, owner, &version);

			if (vf->found)
				vf->found[c - first] = st == CELL_TORN ?
						       FOUND_TORN : version;
			if (st == CELL_WHOLE)
				vf->rep->cells_written++;
			if (st != CELL_TORN)
				continue;
			vf->rep->torn++;
			add_bad(vf->rep, FERRY_VERIFY_TORN, c, owner, 0,
				version);
		}
	}
}

/* Torn cells get their expected version once replay knows it. */
static void fill_torn_expected(struct verify *vf, const struct wl_part *p)
{
	struct ferry_verify_report *rep = vf->rep;

	for (unsigned int i = 0; i < rep->nr_bad; i++) {
		struct ferry_verify_bad *b = &rep->bad[i];

		if (b->kind == FERRY_VERIFY_TORN && b->vcpu == (int)p->vcpu)
			b->expected = vf->expected[b->cell - p->first];
	}
}

static void compare_slice(struct verify *vf, const struct wl_part *p,
			  struct ferry_verify_vcpu *vv)
{
	struct ferry_verify_report *rep = vf->rep;

	for (uint64_t i = 0; i < p->nr; i++) {
		uint64_t found = vf->found[i], want = vf->expected[i];

		if (found == FOUND_TORN)
			continue;
		vv->mem_writes += found;
		if (found < want) {
			rep->lost += want - found;
			add_bad(rep, FERRY_VERIFY_LOST, p->first + i, p->vcpu,
				want, found);
		} else if (found > want) {
			rep->duplicated += found - want;
			add_bad(rep, FERRY_VERIFY_DUPLICATED, p->first + i,
				p->vcpu, want, found);
		}
	}
}

static void verify_slice(struct verify *vf, const struct workload *wl,
			 const struct verify_vcpu *vc)
{
	const struct wl_part *p = vc->part;
	uint64_t t0 = ferry_clock_now_ns(), t1;

	memset(vf->found, 0, p->nr * sizeof(*vf->found));
	memset(vf->expected, 0, p->nr * sizeof(*vf->expected));
	scan_cells(vf, p->first, p->nr, p->vcpu);
	t1 = ferry_clock_now_ns();
	workload_replay(wl, p, vc->regs.writes, vf->expected);
	vf->rep->scan_ns += t1 - t0;
	vf->rep->replay_ns += ferry_clock_now_ns() - t1;
	fill_torn_expected(vf, p);
	compare_slice(vf, p, &vf->rep->vcpu[p->vcpu]);
}

static void report_vcpu(struct ferry_verify_vcpu *vv,
			const struct verify_vcpu *vc)
{
	vv->mp_state = vc->mp_state;
	vv->steps = vc->regs.steps;
	vv->writes = vc->regs.writes;
	vv->read_errors = vc->regs.read_errors;
	vv->first_bad_read = vc->regs.first_bad;
}

static uint64_t largest_slice(const struct verify_vcpu *vcpus,
			      unsigned int nr_vcpus)
{
	uint64_t most = 1;

	for (unsigned int i = 0; i < nr_vcpus; i++)
		if (vcpus[i].part->nr > most)
			most = vcpus[i].part->nr;
	return most;
}

static int verify_run(struct verify *vf, const struct workload *wl,
		      const struct verify_vcpu *vcpus, unsigned int nr_vcpus)
{
	uint64_t most = largest_slice(vcpus, nr_vcpus), t0;

	vf->found = malloc(most * sizeof(*vf->found));
	vf->expected = malloc(most * sizeof(*vf->expected));
	if (!vf->found || !vf->expected) {
		free(vf->found);
		free(vf->expected);
		return ferry_error_set(-ENOMEM,
				       "verify: no memory for %llu cells",
				       (unsigned long long)most);
	}
	for (unsigned int i = 0; i < nr_vcpus; i++)
		verify_slice(vf, wl, &vcpus[i]);
	free(vf->found);
	free(vf->expected);
	vf->found = vf->expected = NULL;
	/* Past the working set nothing is ever written. */
	t0 = ferry_clock_now_ns();
	scan_cells(vf, wl->ws_cells, vf->map->nr_cells - wl->ws_cells,
		   NO_OWNER);
	vf->rep->scan_ns += ferry_clock_now_ns() - t0;
	return 0;
}

int verify_memory(const struct cell_map *map, const struct workload *wl,
		  const struct verify_vcpu *vcpus, unsigned int nr_vcpus,
		  struct ferry_verify_report *rep)
{
	struct verify vf = { .map = map, .rep = rep };
	int ret;

	if (nr_vcpus > FERRY_VERIFY_MAX_VCPUS)
		return ferry_error_set(-EINVAL, "verify: %u vCPUs, at most %d",
				       nr_vcpus, FERRY_VERIFY_MAX_VCPUS);
	memset(rep, 0, sizeof(*rep));
	rep->cells = map->nr_cells;
	rep->nr_vcpus = nr_vcpus;
	for (unsigned int i = 0; i < nr_vcpus; i++) {
		report_vcpu(&rep->vcpu[i], &vcpus[i]);
		rep->read_errors += vcpus[i].regs.read_errors;
	}
	ret = verify_run(&vf, wl, vcpus, nr_vcpus);
	if (ret)
		return ret;
	rep->ok = !rep->lost && !rep->torn && !rep->duplicated &&
		  !rep->read_errors;
	return 0;
}

/* ---- digest ------------------------------------------------------------ */

static void hash_zero_cells(XXH3_state_t *st, uint64_t cells)
{
	static const uint8_t zeroes[64 * CELL_SIZE];
	uint64_t bytes = cells * CELL_SIZE;

	while (bytes) {
		size_t n = bytes < sizeof(zeroes) ? bytes : sizeof(zeroes);

		XXH3_64bits_update(st, zeroes, n);
		bytes -= n;
	}
}

static void hash_memory(const struct cell_map *map, XXH3_state_t *st)
{
	uint64_t c = 0, start, stop;

	while (c < map->nr_cells) {
		cell_next_extent(map, c, &start, &stop);
		hash_zero_cells(st, start - c);
		if (start < stop) {
			cell_prefault_alias(map, start, stop);
			XXH3_64bits_update(st, cell_alias(map, start),
					   (stop - start) * CELL_SIZE);
		}
		c = stop;
	}
}

int verify_digest(const struct cell_map *map, uint64_t *digest)
{
	XXH3_state_t *st = XXH3_createState();

	if (!st)
		return ferry_error_set(-ENOMEM, "out of memory");
	XXH3_64bits_reset(st);
	hash_memory(map, st);
	*digest = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	return 0;
}
