// SPDX-License-Identifier: MIT
/*
 * file_write: a snapshot's writing side.  The plan says where each run of
 * populated pages goes before any is written; the records (HEADER and
 * VCPU first, then PAGE_EXTENT and COMPLETE once every page's sum is
 * known) are encoded, sealed in order and written last, at offset 0.
 */
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "snapshot/snapshot.h"

/* ---- writing ------------------------------------------------------------ */

/* Runs of set bits from `page` on: the next run's start and length. */
static bool next_run(const uint64_t *map, size_t nr, size_t *page,
		     size_t *len)
{
	size_t p = *page, n = 0;

	while (p < nr && !(map[p / 64] >> (p % 64) & 1))
		p += map[p / 64] >> (p % 64) ? 1 : 64 - p % 64;
	if (p >= nr)
		return false;
	while (p + n < nr && (map[(p + n) / 64] >> ((p + n) % 64) & 1))
		n++;
	*page = p;
	*len = n;
	return true;
}

/*
 * Runs of populated pages joined across holes of up to this much: a hole
 * inside an extent costs a sum (8 bytes) and no file space, and a sparse
 * guest (a random workload leaves holes everywhere) then takes a few big
 * extents, not one per run: fewer records, fewer writes and reads, and
 * one write-protect call per extent for a live save.
 */
#define SNAP_GAP_BYTES		(128U << 10)

/* The next span from *page: runs joined across holes of <= gap pages. */
static bool next_span(const uint64_t *map, size_t nr, size_t gap,
		      size_t *page, size_t *len)
{
	size_t start, end, p, l;

	if (!next_run(map, nr, page, &l))
		return false;
	start = *page;
	end = start + l;
	for (p = end; next_run(map, nr, &p, &l) && p - end <= gap; p = end)
		end = p + l;
	*page = start;
	*len = end - start;
	return true;
}

/* Count extents and pages, or (extents != NULL) fill them in. */
static size_t cut_extents(const struct ferry_mem *mem,
			  uint64_t *const *populated, struct snap_plan *plan,
			  struct snap_extent *extents)
{
	size_t n = 0;

	plan->nr_pages = 0;
	for (unsigned int r = 0; r < mem->nr_regions; r++) {
		size_t page = 0, len;
		size_t gap = SNAP_GAP_BYTES / mem->regions[r].page_size;

		plan->region_first[r] = n;
		while (next_span(populated[r], mem->regions[r].nr_pages, gap,
				 &page, &len)) {
			for (size_t at = 0; at < len;
			     at += FERRY_WIRE_MAX_EXTENT, n++) {
				size_t c = len - at < FERRY_WIRE_MAX_EXTENT ?
					   len - at : FERRY_WIRE_MAX_EXTENT;

				if (extents)
					extents[n] = (struct snap_extent){
						.region = r,
						.first_page =
							(uint32_t)(page + at),
						.count = (uint32_t)c };
				plan->nr_pages += c;
			}
			page += len;
		}
	}
	plan->region_first[mem->nr_regions] = n;
	return n;
}

/* Records first, then each extent's data at its region's alignment. */
static void place_extents(const struct ferry_mem *mem, struct snap_plan *plan)
{
	uint64_t off, *sums = plan->sums;

	plan->records_len = plan->head_len + 48;	/* COMPLETE */
	for (size_t i = 0; i < plan->nr_extents; i++)
		plan->records_len += FERRY_WIRE_HDR_SIZE + 24 +
				     8ULL * plan->extents[i].count;
	plan->data_start = snap_round_up(plan->records_len, SNAP_DATA_ALIGN);
	off = plan->data_start;
	for (size_t i = 0; i < plan->nr_extents; i++) {
		struct snap_extent *e = &plan->extents[i];
		size_t ps = mem->regions[e->region].page_size;

		off = snap_round_up(off, ps);
		e->file_offset = off;
		e->sums = sums;
		sums += e->count;
		off += (uint64_t)e->count * ps;
	}
	plan->file_size = plan->nr_extents ? off : plan->records_len;
}

int snap_plan_make(const struct ferry_mem *mem, uint64_t *const *populated,
		   uint64_t head_len, struct snap_plan *plan)
{
	*plan = (struct snap_plan){ .head_len = head_len };
	plan->nr_extents = cut_extents(mem, populated, plan, NULL);
	plan->extents = calloc(plan->nr_extents ? plan->nr_extents : 1,
			       sizeof(*plan->extents));
	plan->sums = calloc(plan->nr_pages ? plan->nr_pages : 1,
			    sizeof(*plan->sums));
	if (!plan->extents || !plan->sums) {
		snap_plan_free(plan);
		return ferry_fail(-ENOMEM, "out of memory");
	}
	cut_extents(mem, populated, plan, plan->extents);
	place_extents(mem, plan);
	return 0;
}

void snap_plan_free(struct snap_plan *plan)
{
	free(plan->extents);
	free(plan->sums);
	plan->extents = NULL;
	plan->sums = NULL;
}

struct snap_extent *snap_plan_find(const struct snap_plan *plan,
				   unsigned int region, uint64_t page)
{
	return snap_extent_search(plan->extents, plan->region_first[region],
				  plan->region_first[region + 1], page);
}

/* Seal a frame as record `nr` and copy it to buf + *len. */
static void put_frame(struct ferry_wire_frame *f, uint64_t nr, uint8_t *buf,
		      uint64_t *len)
{
	ferry_wire_seal(f, nr);
	for (int i = 0; i < f->iovcnt; i++) {
		memcpy(buf + *len, f->iov[i].iov_base, f->iov[i].iov_len);
		*len += f->iov[i].iov_len;
	}
}

static uint64_t head_size(const struct ferry_wire_stream *s, size_t regs)
{
	uint64_t header = FERRY_WIRE_HDR_SIZE + 40 + 24ULL * s->nr_regions +
			  snap_round_up(s->desc_len, 8);

	return header + s->nr_vcpus * (FERRY_WIRE_HDR_SIZE + 16 +
				       snap_round_up(regs, 8));
}

static int encode_vcpus(const struct ferry_vm *vm,
			const struct ferry_wire_stream *s,
			struct ferry_wire_frame *f, uint8_t *blob, size_t cap,
			uint8_t *buf, uint64_t *len)
{
	for (unsigned int i = 0; i < s->nr_vcpus; i++) {
		ssize_t n = vm->ops->save(vm->handle, i, blob, cap);
		enum ferry_mp_state mp;
		struct ferry_wire_vcpu v;
		int ret;

		if (n < 0)
			return ferry_fail_ctx((int)n, "saving vCPU %u", i);
		ret = vm->ops->get_mp_state(vm->handle, i, &mp);
		v = (struct ferry_wire_vcpu){ .index = i, .mp_state = mp,
			.regs_len = (uint32_t)n, .regs = blob };
		if (!ret)
			ret = ferry_wire_enc_vcpu(f, s, &v);
		if (ret)
			return ret;
		put_frame(f, 1 + i, buf, len);
	}
	return 0;
}

int snap_encode_head(const struct ferry_vm *vm,
		     const struct ferry_wire_stream *s, uint8_t **buf,
		     uint64_t *len)
{
	size_t cap = vm->ops->state_size(vm->handle);
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	uint8_t *blob = malloc(cap ? cap : 1);
	int ret = -ENOMEM;

	*len = 0;
	*buf = malloc(head_size(s, cap));
	if (!f || !blob || !*buf)
		goto out;
	ret = ferry_wire_enc_header(f, s);
	if (!ret) {
		put_frame(f, 0, *buf, len);
		ret = encode_vcpus(vm, s, f, blob, cap, *buf, len);
	}
out:
	free(f);
	free(blob);
	if (ret == -ENOMEM)
		ferry_fail(ret, "out of memory");
	if (ret) {
		free(*buf);
		*buf = NULL;
	}
	return ret;
}

static int encode_tail(const struct ferry_wire_stream *s,
		       const struct snap_plan *plan,
		       struct ferry_wire_frame *f, uint8_t *buf, uint64_t *len,
		       const struct ferry_wire_complete *c)
{
	uint64_t nr = 1 + s->nr_vcpus;
	int ret = 0;

	for (size_t i = 0; i < plan->nr_extents && !ret; i++) {
		const struct snap_extent *e = &plan->extents[i];
		struct ferry_wire_extent we = { .region = e->region,
			.first_page = e->first_page, .count = e->count,
			.file_offset = e->file_offset, .sums = e->sums };

		ret = ferry_wire_enc_extent(f, s, &we);
		if (!ret)
			put_frame(f, nr++, buf, len);
	}
	if (!ret)
		ret = ferry_wire_enc_complete(f, c);
	if (!ret)
		put_frame(f, nr, buf, len);
	return ret;
}

int snap_write_records(int fd, const struct ferry_wire_stream *s,
		       const uint8_t *head, const struct snap_plan *plan,
		       uint64_t data_pages, uint64_t zero_pages)
{
	struct ferry_wire_complete c = { .pages = data_pages,
					 .zero_pages = zero_pages };
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	uint8_t *buf = malloc(plan->records_len);
	uint64_t len = plan->head_len;
	int ret = -ENOMEM;

	if (f && buf) {
		memcpy(buf, head, plan->head_len);
		ret = encode_tail(s, plan, f, buf, &len, &c);
	} else {
		ferry_fail(ret, "out of memory");
	}
	/* The plan sized the records; a mismatch is a bug here. */
	if (!ret && len != plan->records_len)
		abort();
	if (!ret)
		ret = snap_write(fd, buf, len, 0);
	free(f);
	free(buf);
	return ret;
}
