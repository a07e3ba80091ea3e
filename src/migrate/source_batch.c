// SPDX-License-Identifier: MIT
/* source_batch: a sender's batches of pages, sent as PAGES records. */
#include "base/bitmap.h"
#include "base/sys.h"
#include "migrate/source_int.h"

/*
 * The first round also sends pages the guest never touched here (received
 * by an earlier migration, written by the VMM through its own mapping):
 * map the chunk's runs of pages in bulk first, a hundred times cheaper on
 * some hosts than a fault per page.  Only pages in the map: they exist, so
 * nothing is allocated.  Best effort: a failure only costs the faults.
 */
static void map_runs(const struct ferry_region *r, const uint64_t *map,
		     uint64_t first, uint64_t end)
{
	uint64_t p = first;

	while (p < end) {
		uint64_t run = 0;

		while (p < end && !bitmap_test(map, p))
			p++;
		while (p + run < end && bitmap_test(map, p + run))
			run++;
		if (run)
			sys_madvise((void *)(source_view(r) + p * r->page_size),
				    run * r->page_size, MADV_POPULATE_READ);
		p += run;
	}
}

int source_send_frame(struct source *src, struct ferry_wire_writer *w,
		      struct ferry_wire_frame *f)
{
	ssize_t n = ferry_wire_send(w, f);

	if (n < 0)
		return (int)n;
	atomic_fetch_add_explicit(&src->bytes_sent, (uint64_t)n,
				  memory_order_relaxed);
	return 0;
}

static int flush_data(struct sender *s, struct ferry_wire_writer *w,
		      bool live, uint64_t request_id)
{
	struct ferry_region *r;
	struct ferry_wire_batch b;
	int ret;

	if (!s->nr_data)
		return 0;
	r = &s->src->vm->mem->regions[s->batch_region];
	b = (struct ferry_wire_batch){ .region = s->batch_region,
		.count = s->nr_data, .index = s->data_index,
		.base = source_view(r),
		.request_id = request_id, .live = live };
	ret = ferry_wire_enc_pages(&s->frame, &s->src->stream, &b);
	if (!ret)
		ret = source_send_frame(s->src, w, &s->frame);
	atomic_fetch_add_explicit(&s->src->pages_sent, s->nr_data,
				  memory_order_relaxed);
	s->nr_data = 0;
	return ret;
}

static int flush_zero(struct sender *s, struct ferry_wire_writer *w,
		      uint64_t request_id)
{
	struct ferry_wire_batch b;
	int ret;

	if (!s->nr_zero)
		return 0;
	b = (struct ferry_wire_batch){ .region = s->batch_region,
		.count = s->nr_zero, .index = s->zero_index,
		.request_id = request_id };
	ret = ferry_wire_enc_zero_pages(&s->frame, &s->src->stream, &b);
	if (!ret)
		ret = source_send_frame(s->src, w, &s->frame);
	atomic_fetch_add_explicit(&s->src->zero_pages, s->nr_zero,
				  memory_order_relaxed);
	s->nr_zero = 0;
	return ret;
}

int sender_flush_to(struct sender *s, struct ferry_wire_writer *w, bool live,
		    uint64_t request_id)
{
	int ret = flush_data(s, w, live, request_id);

	if (!ret)
		ret = flush_zero(s, w, request_id);
	return ret;
}

int sender_flush(struct sender *s, bool live)
{
	return sender_flush_to(s, &s->writer, live, 0);
}

/*
 * Add one page to the sender's batches; a batch is sent when full, or
 * when the region changes or the index would go backwards (the pushes
 * wrap around).
 */
static int add_page(struct sender *s, unsigned int region, uint64_t page,
		    bool live)
{
	struct ferry_region *r = &s->src->vm->mem->regions[region];
	size_t max_data = FERRY_WIRE_MAX_DATA / r->page_size;
	uint32_t *last = s->nr_data ? &s->data_index[s->nr_data - 1] :
		s->nr_zero ? &s->zero_index[s->nr_zero - 1] : NULL;
	int ret = 0;

	if ((s->nr_data || s->nr_zero) &&
	    (region != s->batch_region || (last && page <= *last)))
		ret = sender_flush(s, live);
	if (ret)
		return ret;
	s->batch_region = region;
	if (migrate_page_is_zero(source_view(r) + page * r->page_size,
				 r->page_size)) {
		s->zero_index[s->nr_zero++] = (uint32_t)page;
		if (s->nr_zero == FERRY_WIRE_MAX_ZERO)
			ret = flush_zero(s, &s->writer, 0);
		return ret;
	}
	s->data_index[s->nr_data++] = (uint32_t)page;
	if (s->nr_data == FERRY_WIRE_MAX_PAGES || s->nr_data == max_data)
		ret = flush_data(s, &s->writer, live, 0);
	return ret;
}

int sender_send_chunk(struct sender *s, unsigned int region, uint64_t chunk,
		      bool take, bool live)
{
	struct ferry_region *r = &s->src->vm->mem->regions[region];
	uint64_t *map = s->src->send_map[region];
	size_t per = migrate_chunk_pages(r);
	uint64_t first = chunk * per, end = first + per;
	int ret = 0;

	if (end > r->nr_pages)
		end = r->nr_pages;
	if (s->src->round == 0)
		map_runs(r, map, first, end);
	for (uint64_t p = first; p < end && !ret; p++) {
		if (take ? !migrate_bit_take(map, p) : !bitmap_test(map, p))
			continue;
		ret = add_page(s, region, p, live);
		if (!ret && take)
			atomic_fetch_add_explicit(&s->src->pushed, 1,
						  memory_order_relaxed);
	}
	return ret;
}

uint64_t source_nr_chunks(const struct ferry_region *r)
{
	size_t per = migrate_chunk_pages(r);

	return (r->nr_pages + per - 1) / per;
}

bool sender_owns_chunk(const struct sender *s, unsigned int region,
		       uint64_t chunk)
{
	return (chunk + region) % s->src->nr_senders == s->idx;
}
