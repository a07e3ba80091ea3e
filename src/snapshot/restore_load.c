// SPDX-License-Identifier: MIT
/*
 * restore_load: pages read from the snapshot, checked against their sums
 * and put in place: stored into the memfds before the vCPUs resume
 * (postcopy_store: no fault, no mapping yet), installed after
 * (postcopy_install: written, CONTINUEd, the vCPU woken).
 *
 * Before resume this is the whole of an eager restore, or a lazy one's
 * working set: two loaders share the list of spans to store.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "snapshot/restore_int.h"

/* ---- putting pages in place --------------------------------------------- */

/* Atomic: two loaders may clear bits of one word (load_all). */
static void clear_owed(struct ferry_restore *rs, unsigned int region,
		       uint64_t first, uint64_t count)
{
	for (uint64_t p = first; p < first + count; p++)
		__atomic_fetch_and(&rs->owed[region][p / 64],
				   ~(1ULL << (p % 64)), __ATOMIC_RELAXED);
}

/*
 * A zero page the working set says the guest touches first is stored
 * as a page of zeroes, so it is mapped before the vCPUs run; left a hole
 * it would cost a fault at the first touch.
 */
static const uint8_t *zero_data(struct ferry_restore *rs,
				unsigned int region, uint64_t page)
{
	if (!rs->ws_maps || !bitmap_test(rs->ws_maps[region], page))
		return NULL;
	return rs->zero_buf;
}

/*
 * Before resume: store pages (data NULL: zero pages, left holes unless
 * the working set wants them), which are then no longer owed.
 */
static int put_store(struct ferry_restore *rs, unsigned int region,
		     uint64_t first, uint64_t count, const uint8_t *data)
{
	size_t ps = snap_page_size(rs->file, region);
	int ret = 0;

	if (!data && count == 1)
		data = zero_data(rs, region, first);

	for (uint64_t done = 0; data && done < count && !ret; done += 512) {
		uint64_t n = count - done < 512 ? count - done : 512;

		ret = postcopy_store(rs->pc, region, first + done, n,
				     data + done * ps);
	}
	if (!ret && rs->owed)
		clear_owed(rs, region, first, count);
	atomic_fetch_add_explicit(data ? &rs->stored : &rs->zero, count,
				  memory_order_relaxed);
	return ret;
}

int restore_put_install(struct ferry_restore *rs, unsigned int region,
			uint64_t first, uint64_t count, const uint8_t *data)
{
	size_t ps = snap_page_size(rs->file, region);
	uint64_t done = 0;

	for (uint64_t i = 0; i < count; i++) {
		int ret = postcopy_install(rs->pc, region, first + i,
					   data ? data + i * ps : NULL);

		if (ret < 0)
			return ret;
		done += (uint64_t)ret;
	}
	atomic_fetch_add_explicit(data ? &rs->installed : &rs->zero, done,
				  memory_order_relaxed);
	return (int)done;
}

/* Still to be put in place?  Before resume every page is. */
static bool wanted(struct ferry_restore *rs, restore_put_fn put,
		   unsigned int region, uint64_t page)
{
	return put == put_store ||
	       pagestate_get(&rs->pc->states[region], page) == PAGE_MISSING;
}

/* How many pages from i on are wanted, not zero, read in one go. */
static uint64_t data_run(struct ferry_restore *rs, restore_put_fn put,
			 const struct snap_extent *e, uint64_t first,
			 uint64_t i, uint64_t count)
{
	uint64_t n = 0;

	while (i + n < count && wanted(rs, put, e->region, first + i + n) &&
	       !snap_page_is_zero(rs->file, e, first + i + n))
		n++;
	return n;
}

/*
 * Pages [first, first + count) of extent e, at most READ_CHUNK: each run
 * of wanted pages read with one pread, checked against its sums, put in
 * place; zero pages are never read.  Returns pages put, or -errno.
 */
int restore_load_range(struct ferry_restore *rs, const struct snap_extent *e,
		       uint64_t first, uint64_t count, uint8_t *buf,
		       restore_put_fn put)
{
	size_t ps = snap_page_size(rs->file, e->region);
	uint64_t i = 0;
	int ret = 0, done = 0;

	while (i < count && ret >= 0) {
		uint64_t p = first + i, n;

		if (!wanted(rs, put, e->region, p)) {
			i++;
			continue;
		}
		if (snap_page_is_zero(rs->file, e, p)) {
			ret = put(rs, e->region, p, 1, NULL);
			done += ret > 0 ? ret : 0;
			i++;
			continue;
		}
		n = data_run(rs, put, e, first, i, count);
		ret = snap_read(rs->file, buf, n * ps,
				snap_page_offset(rs->file, e, p));
		if (!ret)
			ret = snap_check_pages(rs->file, e, p, n, buf);
		if (!ret)
			ret = put(rs, e->region, p, n, buf);
		atomic_fetch_add_explicit(&rs->bytes_read, n * ps,
					  memory_order_relaxed);
		done += ret > 0 ? ret : 0;
		i += n;
	}
	return ret < 0 ? ret : done;
}

/* A stretch of one extent, in chunks. */
int restore_load_span(struct ferry_restore *rs, const struct snap_extent *e,
		      uint64_t first, uint64_t count, uint8_t *buf,
		      restore_put_fn put)
{
	uint64_t chunk = READ_CHUNK / snap_page_size(rs->file, e->region);
	int done = 0;

	for (uint64_t at = 0; at < count; at += chunk) {
		int ret = restore_load_range(rs, e, first + at,
					     count - at < chunk ? count - at :
					     chunk, buf, put);

		if (ret < 0)
			return ret;
		done += ret;
	}
	return done;
}

/* ---- before resume: everything (eager), or the working set -------------- */

/* Set bits [first, first + count), whole words where it can. */
static void set_range(uint64_t *map, uint64_t first, uint64_t count)
{
	uint64_t p = first, end = first + count;

	for (; p < end && p % 64; p++)
		bitmap_set(map, p);
	for (; p + 64 <= end; p += 64)
		map[p / 64] = ~0ULL;
	for (; p < end; p++)
		bitmap_set(map, p);
}

/* Owed: every page some extent holds. */
int restore_alloc_owed(struct ferry_restore *rs)
{
	const struct ferry_wire_stream *s = &rs->file->stream;

	rs->owed = calloc(s->nr_regions, sizeof(*rs->owed));
	if (!rs->owed)
		return ferry_fail(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < s->nr_regions; i++) {
		rs->owed[i] = bitmap_alloc(s->regions[i].nr_pages);
		if (!rs->owed[i])
			return ferry_fail(-ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < rs->file->nr_extents; i++) {
		const struct snap_extent *e = &rs->file->extents[i];

		set_range(rs->owed[e->region], e->first_page, e->count);
	}
	return 0;
}

/*
 * Before resume, pages are stored by two loaders (this thread and one
 * more: reading, checking and storing are all CPU work), taking spans
 * from a shared list: every chunk of every extent (eager), or the
 * working set's pages (prefetch).
 */
struct span {
	const struct snap_extent *e;
	uint64_t first;
	uint64_t count;		/* at most READ_CHUNK */
};

struct loader {
	struct ferry_restore *rs;
	uint8_t *buf;
};

static int add_span(struct ferry_restore *rs, const struct snap_extent *e,
		    uint64_t first, uint64_t count)
{
	if (rs->nr_spans == rs->spans_cap) {
		size_t cap = rs->spans_cap ? rs->spans_cap * 2 : 256;
		struct span *x = realloc(rs->spans, cap * sizeof(*x));

		if (!x)
			return ferry_fail(-ENOMEM, "out of memory");
		rs->spans = x;
		rs->spans_cap = cap;
	}
	rs->spans[rs->nr_spans++] = (struct span){ .e = e, .first = first,
						   .count = count };
	return 0;
}

static void *loader_main(void *arg)
{
	struct loader *l = arg;
	struct ferry_restore *rs = l->rs;

	for (;;) {
		size_t i = atomic_fetch_add(&rs->next_span, 1);
		int ret;

		if (i >= rs->nr_spans)
			break;
		ret = restore_check_cancel(rs);
		if (!ret)
			ret = restore_load_range(rs, rs->spans[i].e,
						 rs->spans[i].first,
						 rs->spans[i].count, l->buf,
						 put_store);
		if (ret < 0) {
			err_slot_set(&rs->err, ret);
			/* The other loader runs out of spans at once. */
			atomic_store(&rs->next_span, rs->nr_spans);
			break;
		}
	}
	return NULL;
}

static int load_spans(struct ferry_restore *rs)
{
	struct loader l[2] = { { .rs = rs, .buf = rs->fill_buf },
			       { .rs = rs, .buf = rs->demand_buf } };
	pthread_t helper;
	bool two = rs->nr_spans > 1 &&
		   !pthread_create(&helper, NULL, loader_main, &l[1]);

	loader_main(&l[0]);
	if (two)
		pthread_join(helper, NULL);
	return err_slot_get(&rs->err);
}

int restore_load_all(struct ferry_restore *rs)
{
	int ret = 0;

	for (size_t i = 0; i < rs->file->nr_extents && !ret; i++) {
		const struct snap_extent *e = &rs->file->extents[i];
		uint64_t per = READ_CHUNK / snap_page_size(rs->file, e->region);
		uint64_t end = (uint64_t)e->first_page + e->count;

		for (uint64_t p = e->first_page; p < end && !ret; p += per)
			ret = add_span(rs, e, p, end - p < per ? end - p : per);
	}
	return ret ? ret : load_spans(rs);
}

int snap_store_all(struct snap_file *f, struct ferry_mem *mem,
		   uint64_t *pages)
{
	struct ferry_restore *rs = calloc(1, sizeof(*rs));
	int ret = rs ? 0 : ferry_fail(-ENOMEM, "out of memory");

	if (!ret) {
		rs->file = f;
		err_slot_init(&rs->err);
		rs->fill_buf = snap_buf_alloc(READ_CHUNK);
		rs->demand_buf = snap_buf_alloc(READ_CHUNK);
		ret = rs->fill_buf && rs->demand_buf ?
		      postcopy_create(mem, &rs->pc) :
		      ferry_fail(-ENOMEM, "out of memory");
	}
	if (!ret)
		ret = restore_load_all(rs);
	if (rs) {
		*pages = atomic_load(&rs->stored);
		postcopy_destroy(rs->pc);
		snap_buf_free(rs->fill_buf, READ_CHUNK);
		snap_buf_free(rs->demand_buf, READ_CHUNK);
		free(rs->spans);
		err_slot_fini(&rs->err);
	}
	free(rs);
	return ret;
}

/* The working set as bitmaps: sorted, without duplicates. */
static int ws_bitmaps(struct ferry_restore *rs, uint64_t ***maps)
{
	const struct ferry_wire_stream *s = &rs->file->stream;

	*maps = calloc(s->nr_regions, sizeof(**maps));
	if (!*maps)
		return ferry_fail(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < s->nr_regions; i++) {
		(*maps)[i] = bitmap_alloc(s->regions[i].nr_pages);
		if (!(*maps)[i])
			return ferry_fail(-ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < rs->nr_prefetch; i++)
		bitmap_set((*maps)[rs->prefetch[i].region],
			   rs->prefetch[i].page);
	return 0;
}

/*
 * The working set's pages in one chunk of extent e: a dense stretch goes
 * as one span (the pages between come along: one read and one write
 * beat a call per page), a sparse one run by run.
 */
static int ws_chunk(struct ferry_restore *rs, const struct snap_extent *e,
		    const uint64_t *map, uint64_t first, uint64_t end)
{
	uint64_t lo = end, hi = first, n = 0;
	int ret = 0;

	for (uint64_t p = first; p < end; p++) {
		if (!bitmap_test(map, p))
			continue;
		lo = p < lo ? p : lo;
		hi = p + 1;
		n++;
	}
	if (!n || n * 4 >= hi - lo)
		return n ? add_span(rs, e, lo, hi - lo) : 0;
	for (uint64_t p = lo; p < hi && !ret;) {
		uint64_t len = 0;

		while (p + len < hi && bitmap_test(map, p + len))
			len++;
		if (len)
			ret = add_span(rs, e, p, len);
		p += len ? len : 1;
	}
	return ret;
}

static int ws_extent(struct ferry_restore *rs, const struct snap_extent *e,
		     const uint64_t *map)
{
	uint64_t per = READ_CHUNK / snap_page_size(rs->file, e->region);
	uint64_t end = (uint64_t)e->first_page + e->count;
	int ret = 0;

	for (uint64_t p = e->first_page; p < end && !ret; p += per)
		ret = ws_chunk(rs, e, map, p, end - p < per ? end : p + per);
	return ret;
}

int restore_store_ws(struct ferry_restore *rs)
{
	unsigned int nr = rs->file->stream.nr_regions;
	uint64_t **maps = NULL;
	int ret = ws_bitmaps(rs, &maps);

	for (size_t i = 0; !ret && i < rs->file->nr_extents; i++) {
		const struct snap_extent *e = &rs->file->extents[i];

		ret = ws_extent(rs, e, maps[e->region]);
	}
	rs->ws_maps = maps;
	if (!ret)
		ret = load_spans(rs);
	rs->ws_maps = NULL;
	for (unsigned int i = 0; maps && i < nr; i++)
		free(maps[i]);
	free(maps);
	return ret;
}

/*
 * Until the mapper has CONTINUEd every page stored, so the guest takes
 * no fault on them.  It maps in one sweep, never stopping while pages
 * remain PRESENT; it fails only with fault service itself.
 */
int restore_wait_mapped(struct ferry_restore *rs, uint64_t pages)
{
	struct timespec pause = { .tv_nsec = 100000 };
	struct postcopy_stats ps;

	for (;;) {
		int err = postcopy_error(rs->pc);

		if (err)
			return ferry_fail_ctx(err, "mapping pages");
		err = restore_check_cancel(rs);
		if (err)
			return err;
		postcopy_get_stats(rs->pc, &ps);
		if (ps.bulk_mapped + ps.local_maps >= pages)
			return 0;
		nanosleep(&pause, NULL);
	}
}

