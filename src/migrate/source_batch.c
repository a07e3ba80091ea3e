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

/*
 * A record on a bulk channel, within the bandwidth limit; or on the
 * urgent channel, whose writer the link guards.  Counted either way, for
 * the progress report and for the destination's heartbeats to answer.
 */
int source_send_frame(struct source *src, struct ferry_wire_writer *w,
		      struct ferry_wire_frame *f)
{
	struct link *l = &src->link;
	bool urgent = w == &l->urgent_writer;
	uint64_t len = FERRY_WIRE_HDR_SIZE + (uint64_t)f->meta_len +
		       f->data_len;
	ssize_t n;
	int ret = 0;

	if (!urgent)
		ret = ratelimit_take(&src->m->rl, len, l->threads.stop_fd);
	if (ret)
		return ret;
	if (urgent)
		pthread_mutex_lock(&l->send_lock);
	n = ferry_wire_send(w, f);
	if (urgent)
		pthread_mutex_unlock(&l->send_lock);
	if (n < 0)
		return (int)n;
	atomic_fetch_add_explicit(&src->m->bytes_sent, (uint64_t)n,
				  memory_order_relaxed);
	link_sent(l, (uint64_t)n);
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
 * Pages in one PAGES record: as many as the format takes, but under a
 * bandwidth limit at most LIMITED_BATCH_BYTES, so the limit paces the
 * stream smoothly rather than a few MiB at a time.
 */
#define LIMITED_BATCH_BYTES	(256U << 10)

static uint32_t batch_max(struct source *src, const struct ferry_region *r)
{
	size_t max = FERRY_WIRE_MAX_DATA / r->page_size;

	if (ratelimit_get(&src->m->rl) && r->page_size < LIMITED_BATCH_BYTES)
		max = LIMITED_BATCH_BYTES / r->page_size;
	return (uint32_t)(max < FERRY_WIRE_MAX_PAGES ? max :
			  FERRY_WIRE_MAX_PAGES);
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
	if (s->nr_data >= batch_max(s->src, r))
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
