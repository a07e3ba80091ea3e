// SPDX-License-Identifier: MIT
/*
 * workload_gen: the generators behind each step, the step itself and its
 * replay.  Pure computation on the caller's memory: no allocation, no
 * system call, no error reporting, so the same file is built into the
 * KVM guest image (guest/, freestanding) and into the host's VMs.
 *
 * A step either reads (op PRNG says so) or writes.  A write takes its
 * cells from the write generator: seqdirty walks the slice, random and
 * hotcold draw from wgen_prng, kv draws a key and writes its whole value.
 * Nothing but the generator's own state decides where a write goes.
 */
#include <xxhash.h>

#include "le.h"
#include "workload.h"

#define OP_SEED		0x6f702d70726e6721ULL	/* "op-prng!" */
#define WGEN_SEED	0x7767656e2d70726eULL	/* "wgen-prn" */
#define KV_SCATTER	2654435761ULL	/* a prime: spreads hot keys */

/* splitmix64: one add and a mix per draw, and any state is valid. */
static inline uint64_t prng_next(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0, without a division. */
static inline uint64_t prng_below(uint64_t *state, uint64_t n)
{
	return (uint64_t)(((unsigned __int128)prng_next(state) * n) >> 64);
}

uint64_t workload_vcpu_seed(uint64_t seed, unsigned int vcpu, uint64_t salt)
{
	uint8_t key[4];

	le32_store(key, vcpu);
	return XXH3_64bits_withSeed(key, sizeof(key), seed ^ salt);
}

void workload_regs_boot(const struct workload *wl, unsigned int vcpu,
			struct wl_regs *regs)
{
	*regs = (struct wl_regs){
		.first_bad = WL_NO_CELL,
		.op_prng = workload_vcpu_seed(wl->seed, vcpu, OP_SEED),
		.wgen_prng = workload_vcpu_seed(wl->seed, vcpu, WGEN_SEED),
	};
}

/* ---- where writes and reads go ----------------------------------------- */

/* Popular keys: the smaller of two draws, scattered over the slice. */
static uint64_t kv_pick(const struct wl_part *p, uint64_t *state)
{
	uint64_t a = prng_below(state, p->nr_keys);
	uint64_t b = prng_below(state, p->nr_keys);
	uint64_t rank = a < b ? a : b;

	return (uint64_t)(((unsigned __int128)rank * KV_SCATTER) % p->nr_keys);
}

static uint64_t hotcold_pick(const struct workload *wl,
			     const struct wl_part *p, uint64_t *state)
{
	bool hot = prng_below(state, 100) < wl->hotw_pct;

	if (hot || p->nr == p->hot)
		return prng_below(state, p->hot);
	return p->hot + prng_below(state, p->nr - p->hot);
}

/*
 * A run of cells drawn with the PRNG `state`: [*off, *off + len).  Reads
 * and writes of a workload draw alike, each from its own PRNG.
 */
static uint64_t draw(const struct workload *wl, const struct wl_part *p,
		     uint64_t *state, uint64_t *off)
{
	uint64_t key;

	switch (wl->kind) {
	case WL_HOTCOLD:
		*off = hotcold_pick(wl, p, state);
		return 1;
	case WL_KV:
		key = kv_pick(p, state);
		*off = p->key_start[key];
		return p->key_start[key + 1] - *off;
	default:
		*off = prng_below(state, p->nr);
		return 1;
	}
}

/* The next run of cells the write stream writes; seqdirty walks. */
static uint64_t wgen_next(const struct workload *wl, const struct wl_part *p,
			  struct wl_regs *r, uint64_t *off)
{
	if (wl->kind != WL_SEQDIRTY)
		return draw(wl, p, &r->wgen_prng, off);
	*off = r->wgen_pos;
	r->wgen_pos = r->wgen_pos + 1 == p->nr ? 0 : r->wgen_pos + 1;
	return 1;
}

/* ---- the step ---------------------------------------------------------- */

static void note_bad(struct wl_regs *r, uint64_t cell)
{
	r->read_errors++;
	if (r->first_bad == WL_NO_CELL)
		r->first_bad = cell;
}

static void read_cells(const struct wl_part *p, const struct cell_map *map,
		       struct wl_regs *r, uint64_t off, uint64_t len)
{
	for (uint64_t c = p->first + off; c < p->first + off + len; c++) {
		uint64_t version;

		r->reads++;
		if (cell_inspect(cell_guest(map, c), c, p->vcpu, &version) ==
		    CELL_TORN)
			note_bad(r, c);
	}
}

static void write_cells(const struct wl_part *p, const struct cell_map *map,
			struct wl_regs *r, uint64_t off, uint64_t len,
			uint8_t *buf)
{
	for (uint64_t c = p->first + off; c < p->first + off + len; c++) {
		r->writes++;
		if (!cell_rewrite(cell_guest(map, c), buf, c, p->vcpu))
			note_bad(r, c);
	}
}

unsigned int workload_step(const struct workload *wl,
			   const struct wl_part *part,
			   const struct cell_map *map, struct wl_regs *regs,
			   uint8_t *buf)
{
	uint64_t off, len;

	regs->steps++;
	if (wl->kind == WL_IDLE || part->nr == 0)
		return 0;
	if (prng_below(&regs->op_prng, 100) < wl->read_pct) {
		len = draw(wl, part, &regs->op_prng, &off);
		read_cells(part, map, regs, off, len);
		return 0;
	}
	len = wgen_next(wl, part, regs, &off);
	write_cells(part, map, regs, off, len, buf);
	return (unsigned int)len;
}

/* ---- replay ------------------------------------------------------------ */

/* seqdirty writes the slice round and round: count without walking. */
static void replay_seqdirty(const struct wl_part *p, uint64_t writes,
			    uint64_t *expected)
{
	uint64_t rounds = writes / p->nr, rest = writes % p->nr;

	for (uint64_t i = 0; i < p->nr; i++)
		expected[i] = rounds + (i < rest);
}

void workload_replay(const struct workload *wl, const struct wl_part *part,
		     uint64_t writes, uint64_t *expected)
{
	struct wl_regs r;
	uint64_t done = 0, off, len;

	if (wl->kind == WL_IDLE || part->nr == 0)
		return;
	if (wl->kind == WL_SEQDIRTY) {
		replay_seqdirty(part, writes, expected);
		return;
	}
	workload_regs_boot(wl, part->vcpu, &r);
	while (done < writes) {
		len = wgen_next(wl, part, &r, &off);
		for (uint64_t i = 0; i < len && done < writes; i++, done++)
			expected[off + i]++;
	}
}
