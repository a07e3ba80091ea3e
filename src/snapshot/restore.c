// SPDX-License-Identifier: MIT
/*
 * snap_restore: a VM from a snapshot file, eagerly or lazily, with the
 * post-copy page machinery (postcopy.h) and the file as the page source.
 *
 * Eager: every page is read, checked and stored into the memfds, the
 * mapper CONTINUEs them into the guest views in bulk (so the guest takes
 * no fault at all), and only then do the vCPUs resume.
 *
 * Lazy: the pages the file holds are owed; the vCPUs resume at once.
 *
 *   vCPU      fault thread         demand reader          fill reader
 *    |--fault-->|                      |                      |
 *    | (asleep) |--request: queue----->| pread, check sum,    | sweeps the
 *    |          |  (and hint) -------------------------------->| file; after
 *    |          |                      | postcopy_install     | a fault, the
 *    |<-----------------wake-----------|  (write, CONTINUE)   | pages just
 *    |          |                      |                      | after it first
 *
 * Whoever installs a page first wins; the other's copy is dropped.  When
 * nothing is owed any more the readers stop and the guest views are
 * unregistered.
 *
 * Working sets: with record_ws every request is a first touch of a page
 * not yet in place, noted in order (the fill reader waits, so that it
 * does not get there first).  A recorded set given to the next restore
 * is stored before the vCPUs resume, in file order, and mapped in bulk;
 * or, prefetch_async, filled first while they run.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "pages/postcopy.h"
#include "snapshot/snapshot.h"
#include "base/sys.h"

/* Pages read in one go: 2 MiB, or one huge page. */
#define READ_CHUNK	FERRY_HUGE_PAGE_SIZE
/* After a fault, the fill reader first fills this much after the page. */
#define NEAR_BYTES	(1UL << 20)

struct ferry_restore {
	struct snap_file *file;
	const struct ferry_dest_ops *ops;
	void *ops_arg;
	struct ferry_restore_opts opts;
	struct ferry_vm vm;
	bool vm_created;
	struct postcopy *pc;
	uint64_t **owed;		/* per region, until switchover */
	uint64_t start_ns;
	bool finished;
	int result;			/* of finish */

	/* What the loaders store before resume: set before they start,
	 * read-only after; next_span hands them out. */
	struct span *spans;
	size_t nr_spans, spans_cap;
	atomic_size_t next_span;

	struct snap_page *prefetch;	/* the working set given */
	/* While it is stored: its pages, per region, and zeroes to store
	 * for those of them that are zero pages.  Read-only meanwhile. */
	uint64_t **ws_maps;
	uint8_t *zero_buf;
	size_t nr_prefetch;
	/* First touches: the fault thread appends (request_page); read
	 * after finish has joined it. */
	struct snap_page *recorded;
	size_t nr_recorded, recorded_cap;

	/* Requests: the fault thread appends under qlock, the demand
	 * reader swaps the array out under qlock. */
	pthread_mutex_t qlock;
	struct snap_page *queue;
	size_t qlen, qcap;
	int demand_fd;			/* eventfd: the queue has entries */
	int fill_fd;			/* eventfd: the fill reader may start */
	int stop_fd;			/* eventfd: stop both readers */
	/* The last page requested (region + 1) << 32 | page, 0: none;
	 * the fault thread stores, the fill reader exchanges; relaxed. */
	_Atomic uint64_t hint;
	pthread_t demand_thread, fill_thread;
	bool demand_started, fill_started;
	uint8_t *demand_buf, *fill_buf;	/* READ_CHUNK each, one per reader */

	/* A reader's failure and its reason; under elock. */
	pthread_mutex_t elock;
	int err;
	char reason[400];

	/* Counters: written by the thread named, relaxed, read any time. */
	atomic_uint_fast64_t stored;		/* main: before resume */
	atomic_uint_fast64_t installed;		/* readers */
	atomic_uint_fast64_t zero, bytes_read;	/* any */
	atomic_uint_fast64_t demand_reads, filled;
	struct ferry_restore_stats stats;
};

/* ---- putting pages in place --------------------------------------------- */

static void set_error(struct ferry_restore *rs, int err)
{
	pthread_mutex_lock(&rs->elock);
	if (!rs->err) {
		rs->err = err;
		snprintf(rs->reason, sizeof(rs->reason), "%s", ferry_errmsg());
	}
	pthread_mutex_unlock(&rs->elock);
}

static int reader_error(struct ferry_restore *rs)
{
	int err;

	pthread_mutex_lock(&rs->elock);
	err = rs->err ? ferry_fail(rs->err, "%s", rs->reason) : 0;
	pthread_mutex_unlock(&rs->elock);
	return err;
}

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

/* After resume: install page by page (data NULL: zero pages). */
static int put_install(struct ferry_restore *rs, unsigned int region,
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

typedef int (*put_fn)(struct ferry_restore *rs, unsigned int region,
		      uint64_t first, uint64_t count, const uint8_t *data);

/* Still to be put in place?  Before resume every page is. */
static bool wanted(struct ferry_restore *rs, put_fn put, unsigned int region,
		   uint64_t page)
{
	return put == put_store ||
	       pagestate_get(&rs->pc->states[region], page) == PAGE_MISSING;
}

/* How many pages from i on are wanted, not zero, read in one go. */
static uint64_t data_run(struct ferry_restore *rs, put_fn put,
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
static int load_range(struct ferry_restore *rs, const struct snap_extent *e,
		      uint64_t first, uint64_t count, uint8_t *buf, put_fn put)
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
static int load_span(struct ferry_restore *rs, const struct snap_extent *e,
		     uint64_t first, uint64_t count, uint8_t *buf, put_fn put)
{
	uint64_t chunk = READ_CHUNK / snap_page_size(rs->file, e->region);
	int done = 0;

	for (uint64_t at = 0; at < count; at += chunk) {
		int ret = load_range(rs, e, first + at, count - at < chunk ?
				     count - at : chunk, buf, put);

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
static int alloc_owed(struct ferry_restore *rs)
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
	int err;
	char reason[256];
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
		ret = load_range(rs, rs->spans[i].e, rs->spans[i].first,
				 rs->spans[i].count, l->buf, put_store);
		if (ret < 0) {
			l->err = ret;
			snprintf(l->reason, sizeof(l->reason), "%s",
				 ferry_errmsg());
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
	for (int i = 0; i < 2; i++)
		if (l[i].err)
			return ferry_fail(l[i].err, "%s", l[i].reason);
	return 0;
}

static int load_all(struct ferry_restore *rs)
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
		rs->fill_buf = snap_buf_alloc(READ_CHUNK);
		rs->demand_buf = snap_buf_alloc(READ_CHUNK);
		ret = rs->fill_buf && rs->demand_buf ?
		      postcopy_create(mem, &rs->pc) :
		      ferry_fail(-ENOMEM, "out of memory");
	}
	if (!ret)
		ret = load_all(rs);
	if (rs) {
		*pages = atomic_load(&rs->stored);
		postcopy_destroy(rs->pc);
		snap_buf_free(rs->fill_buf, READ_CHUNK);
		snap_buf_free(rs->demand_buf, READ_CHUNK);
		free(rs->spans);
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

static int store_ws(struct ferry_restore *rs)
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
static int wait_mapped(struct ferry_restore *rs, uint64_t pages)
{
	struct timespec pause = { .tv_nsec = 100000 };
	struct postcopy_stats ps;

	for (;;) {
		int err = postcopy_error(rs->pc);

		if (err)
			return ferry_fail(err, "mapping pages: %s",
					  strerror(-err));
		postcopy_get_stats(rs->pc, &ps);
		if (ps.bulk_mapped + ps.local_maps >= pages)
			return 0;
		nanosleep(&pause, NULL);
	}
}

/* ---- after resume: the readers ------------------------------------------ */

static uint64_t pack(unsigned int region, uint64_t page)
{
	return (uint64_t)(region + 1) << 32 | page;
}

static int record(struct ferry_restore *rs, unsigned int region,
		  uint64_t page)
{
	if (rs->nr_recorded == rs->recorded_cap) {
		size_t cap = rs->recorded_cap ? rs->recorded_cap * 2 : 4096;
		struct snap_page *p = realloc(rs->recorded, cap * sizeof(*p));

		if (!p)
			return ferry_fail(-ENOMEM, "out of memory");
		rs->recorded = p;
		rs->recorded_cap = cap;
	}
	rs->recorded[rs->nr_recorded++] = (struct snap_page){
		.region = region, .page = (uint32_t)page };
	return 0;
}

static int enqueue(struct ferry_restore *rs, unsigned int region,
		   uint64_t page)
{
	uint64_t one = 1;
	int ret = 0;

	pthread_mutex_lock(&rs->qlock);
	if (rs->qlen == rs->qcap) {
		size_t cap = rs->qcap ? rs->qcap * 2 : 256;
		struct snap_page *q = realloc(rs->queue, cap * sizeof(*q));

		if (q) {
			rs->queue = q;
			rs->qcap = cap;
		}
	}
	if (rs->qlen < rs->qcap)
		rs->queue[rs->qlen++] = (struct snap_page){
			.region = region, .page = (uint32_t)page };
	else
		ret = ferry_fail(-ENOMEM, "out of memory");
	pthread_mutex_unlock(&rs->qlock);
	if (!ret && write(rs->demand_fd, &one, sizeof(one)) < 0)
		abort();	/* an eventfd write cannot fail here */
	return ret;
}

/* The fault thread asks for a page the file holds (postcopy_ops). */
static int request_page(void *arg, unsigned int region, uint64_t page)
{
	struct ferry_restore *rs = arg;
	int ret = rs->opts.record_ws ? record(rs, region, page) : 0;

	if (!ret)
		ret = enqueue(rs, region, page);
	atomic_store_explicit(&rs->hint, pack(region, page),
			      memory_order_relaxed);
	return ret;
}

static const struct postcopy_ops file_ops = { .request = request_page };

static int serve(struct ferry_restore *rs, const struct snap_page *req)
{
	const struct snap_extent *e = snap_find(rs->file, req->region,
						req->page);
	int ret;

	if (!e)		/* owed pages are all in extents */
		return ferry_fail(-EPROTO, "page %u of region %u was requested "
				  "but the snapshot does not hold it",
				  req->page, req->region);
	ret = load_range(rs, e, req->page, 1, rs->demand_buf, put_install);
	if (ret > 0)
		atomic_fetch_add_explicit(&rs->demand_reads, 1,
					  memory_order_relaxed);
	return ret < 0 ? ret : 0;
}

/* Take every queued request; the caller frees *out. */
static size_t take_queue(struct ferry_restore *rs, struct snap_page **out)
{
	size_t n;

	pthread_mutex_lock(&rs->qlock);
	*out = rs->queue;
	n = rs->qlen;
	rs->queue = NULL;
	rs->qlen = rs->qcap = 0;
	pthread_mutex_unlock(&rs->qlock);
	return n;
}

static int serve_queue(void *arg)
{
	struct ferry_restore *rs = arg;
	struct snap_page *reqs;
	uint64_t count;
	size_t n;
	int ret = 0;

	if (read(rs->demand_fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		return ferry_fail(-errno, "eventfd: %s", strerror(errno));
	n = take_queue(rs, &reqs);
	for (size_t i = 0; i < n && !ret; i++)
		ret = serve(rs, &reqs[i]);
	free(reqs);
	return ret;
}

static void *demand_main(void *arg)
{
	struct ferry_restore *rs = arg;
	int ret;

	sys_thread_boost(SYS_BOOST_URGENT);
	ret = snap_serve(rs->demand_fd, rs->stop_fd, serve_queue, rs);
	if (ret)
		set_error(rs, ret);
	return NULL;
}

static bool stopping(struct ferry_restore *rs)
{
	struct pollfd pfd = { .fd = rs->stop_fd, .events = POLLIN };

	return poll(&pfd, 1, 0) > 0 || postcopy_done(rs->pc);
}

/* The pages just after the last one a vCPU faulted on, first. */
static int fill_near(struct ferry_restore *rs)
{
	uint64_t h = atomic_exchange_explicit(&rs->hint, 0,
					      memory_order_relaxed);
	unsigned int region = (unsigned int)(h >> 32) - 1;
	uint64_t page = (h & 0xffffffffULL) + 1, end, want;
	const struct snap_extent *e;

	if (!h || !(e = snap_find(rs->file, region, page)))
		return 0;
	end = (uint64_t)e->first_page + e->count;
	want = NEAR_BYTES / snap_page_size(rs->file, region);
	if (want == 0)
		want = 1;
	if (end - page > want)
		end = page + want;
	return load_span(rs, e, page, end - page, rs->fill_buf, put_install);
}

static int fill_extent(struct ferry_restore *rs, const struct snap_extent *e)
{
	uint64_t chunk = READ_CHUNK / snap_page_size(rs->file, e->region);
	uint64_t end = (uint64_t)e->first_page + e->count;
	uint64_t installed = 0;
	int ret = 0;

	for (uint64_t p = e->first_page; p < end && ret >= 0; p += chunk) {
		if (stopping(rs))
			return -ECANCELED;
		ret = fill_near(rs);
		installed += ret > 0 ? (uint64_t)ret : 0;
		if (ret >= 0)
			ret = load_range(rs, e, p, end - p < chunk ?
					 end - p : chunk, rs->fill_buf,
					 put_install);
		installed += ret > 0 ? (uint64_t)ret : 0;
	}
	atomic_fetch_add_explicit(&rs->filled, installed,
				  memory_order_relaxed);
	return ret < 0 ? ret : 0;
}

/* The working set first (prefetch_async), in the order it was touched. */
/* A working-set page that is zero is installed as one (see zero_data). */
static int put_install_ws(struct ferry_restore *rs, unsigned int region,
			  uint64_t first, uint64_t count, const uint8_t *data)
{
	return put_install(rs, region, first, count, data ? data :
			   rs->zero_buf);
}

static int page_cmp(const void *a, const void *b)
{
	const struct snap_page *x = a, *y = b;

	if (x->region != y->region)
		return x->region < y->region ? -1 : 1;
	return (x->page > y->page) - (x->page < y->page);
}

/* Sorted pages from i on: how many are consecutive in one extent. */
static size_t run_in(const struct snap_page *p, size_t i, size_t n,
		     const struct snap_extent *e)
{
	size_t k = 1;

	while (i + k < n && p[i + k].region == p[i].region &&
	       p[i + k].page == p[i].page + k &&
	       p[i + k].page < (uint64_t)e->first_page + e->count)
		k++;
	return k;
}

/* One batch of the working set, sorted: a read per run of pages. */
static int fill_batch(struct ferry_restore *rs, struct snap_page *p,
		      size_t n)
{
	int ret = 0, done = 0;

	qsort(p, n, sizeof(*p), page_cmp);
	for (size_t i = 0; i < n && ret >= 0;) {
		const struct snap_extent *e = snap_find(rs->file, p[i].region,
							p[i].page);
		size_t k = e ? run_in(p, i, n, e) : 1;

		if (e)
			ret = load_span(rs, e, p[i].page, k, rs->fill_buf,
					put_install_ws);
		done += ret > 0 ? ret : 0;
		i += k;
	}
	atomic_fetch_add_explicit(&rs->filled, (uint64_t)done,
				  memory_order_relaxed);
	return ret < 0 ? ret : 0;
}

/*
 * The working set first (prefetch_async): in the order it was touched,
 * a batch at a time, each batch read in file order.
 */
#define WS_BATCH	256

static int fill_ws(struct ferry_restore *rs)
{
	struct snap_page batch[WS_BATCH];
	int ret = 0;

	for (size_t i = 0; i < rs->nr_prefetch && !ret; i += WS_BATCH) {
		size_t n = rs->nr_prefetch - i < WS_BATCH ?
			   rs->nr_prefetch - i : WS_BATCH;

		if (stopping(rs))
			return -ECANCELED;
		memcpy(batch, rs->prefetch + i, n * sizeof(*batch));
		ret = fill_batch(rs, batch, n);
	}
	return ret;
}

/*
 * Until the restore says (at once), or, recording, until the caller says:
 * first touches must come from the guest.
 */
static bool wait_fill(struct ferry_restore *rs)
{
	struct pollfd pfd[2] = {
		{ .fd = rs->fill_fd, .events = POLLIN },
		{ .fd = rs->stop_fd, .events = POLLIN },
	};

	while (poll(pfd, 2, -1) < 0)
		if (errno != EINTR)
			return false;
	return !pfd[1].revents;
}

/*
 * Below the vCPUs: once the working set is in, they have what they need
 * for a while, and the rest must not take their CPU (a vCPU that does
 * touch a page not in yet still has it read at once, on demand).
 */
#define FILL_NICE	10

static void fill_below_vcpus(void)
{
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), FILL_NICE))
		errno = 0;	/* best effort */
}

static void *fill_main(void *arg)
{
	struct ferry_restore *rs = arg;
	int ret = 0;

	sys_thread_boost(SYS_BOOST_BULK);
	if (!wait_fill(rs))
		return NULL;
	if (rs->opts.prefetch_async)
		ret = fill_ws(rs);
	if (rs->nr_prefetch)
		fill_below_vcpus();
	for (size_t i = 0; !ret && i < rs->file->nr_extents; i++)
		ret = fill_extent(rs, &rs->file->extents[i]);
	if (ret && ret != -ECANCELED)
		set_error(rs, ret);
	return NULL;
}

static int start_thread(pthread_t *t, void *(*fn)(void *), void *arg,
			bool *started)
{
	int ret = -pthread_create(t, NULL, fn, arg);

	if (ret)
		return ferry_fail(ret, "starting a reader: %s",
				  strerror(-ret));
	*started = true;
	return 0;
}

static void stop_readers(struct ferry_restore *rs)
{
	uint64_t one = 1;

	if (rs->stop_fd >= 0 && write(rs->stop_fd, &one, sizeof(one)) < 0)
		abort();
	if (rs->demand_started)
		pthread_join(rs->demand_thread, NULL);
	if (rs->fill_started)
		pthread_join(rs->fill_thread, NULL);
	rs->demand_started = rs->fill_started = false;
}

/* ---- the restore -------------------------------------------------------- */

/* What was not stored before resume is owed (prefetched pages are not). */
static int switchover(struct ferry_restore *rs)
{
	int ret = 0;

	for (unsigned int i = 0; i < rs->file->stream.nr_regions && !ret; i++)
		ret = postcopy_owe(rs->pc, i, rs->owed[i]);
	return ret;
}

/*
 * Eager: everything stored, then mapped in bulk, then fault service is
 * over before the vCPUs run: they find plain, complete memory.  Where
 * userfaultfd cannot CONTINUE on this memory, the guest's first touch of
 * each page is an ordinary fault instead.
 */
static int restore_eager(struct ferry_restore *rs)
{
	int ret = load_all(rs);

	if (!ret)
		ret = switchover(rs);
	if (!ret)
		ret = postcopy_start(rs->pc, &file_ops, rs);
	if (ret == -EOPNOTSUPP) {
		rs->finished = true;
		return 0;
	}
	if (!ret)
		ret = wait_mapped(rs, atomic_load(&rs->stored));
	if (!ret)
		ret = postcopy_finish(rs->pc);
	rs->finished = true;
	return ret;
}

static int start_readers(struct ferry_restore *rs)
{
	int ret = start_thread(&rs->demand_thread, demand_main, rs,
			       &rs->demand_started);

	if (!ret)
		ret = start_thread(&rs->fill_thread, fill_main, rs,
				   &rs->fill_started);
	return ret;
}

/*
 * Touch every page of the working set through the guest view, a write
 * that changes nothing (the vCPUs are paused, and nothing else writes
 * them yet).  Mapping a page does not make its first access cheap
 * everywhere: under shadow paging (a PVM-style host, like the one these
 * figures come from) that access costs an exit to the hypervisor, some
 * microseconds.  Paid here, once per page, it is not paid by a vCPU
 * in the first seconds after resume, and the set is what the guest
 * touches first.  Where first accesses are cheap this costs about a TLB
 * miss a page.  (A second thread does not help: those exits go one at a
 * time.)
 */
static void warm_ws(struct ferry_restore *rs)
{
	for (size_t i = 0; i < rs->nr_prefetch; i++) {
		const struct snap_page *p = &rs->prefetch[i];
		struct ferry_region *r = &rs->vm.mem->regions[p->region];
		uint8_t *page = r->guest + (size_t)p->page * r->page_size;

		for (size_t off = 0; off < r->page_size; off += 4096)
			__atomic_fetch_or(page + off, 0, __ATOMIC_RELAXED);
	}
}

/* Everything that must be done before the vCPUs resume. */
static int restore_lazy(struct ferry_restore *rs)
{
	uint64_t t0 = ferry_now_ns();
	int ret = 0;

	if (rs->nr_prefetch) {
		rs->zero_buf = snap_buf_alloc(READ_CHUNK);
		ret = rs->zero_buf ? 0 : ferry_fail(-ENOMEM, "out of memory");
	}
	if (!ret && rs->nr_prefetch && !rs->opts.prefetch_async)
		ret = store_ws(rs);
	if (!ret)
		ret = switchover(rs);
	if (!ret)
		ret = snap_load_vcpus(rs->file, &rs->vm);
	if (!ret)
		ret = postcopy_start(rs->pc, &file_ops, rs);
	if (!ret && rs->nr_prefetch && !rs->opts.prefetch_async)
		ret = wait_mapped(rs, atomic_load(&rs->stored));
	if (!ret && rs->nr_prefetch && !rs->opts.prefetch_async)
		warm_ws(rs);
	rs->stats.prefetch_ns = rs->nr_prefetch ? ferry_now_ns() - t0 : 0;
	return ret;
}

static int load_ws(struct ferry_restore *rs)
{
	ssize_t n;

	if (!rs->opts.prefetch_ws)
		return 0;
	if (rs->opts.mode != FERRY_RESTORE_LAZY)
		return ferry_fail(-EINVAL, "a working set is for a lazy "
				  "restore");
	n = snap_ws_load(rs->file, rs->opts.prefetch_ws, &rs->prefetch);
	if (n < 0)
		return (int)n;
	rs->nr_prefetch = (size_t)n;
	return 0;
}

/*
 * The extent records, read and checked while the VM is being built, and
 * what they make owed.
 */
static void *rest_main(void *arg)
{
	struct ferry_restore *rs = arg;
	int ret = snap_file_open_rest(rs->file);

	if (!ret)
		ret = alloc_owed(rs);
	if (ret)
		set_error(rs, ret);
	rs->stats.open_ns = ferry_now_ns() - rs->start_ns;
	return NULL;
}

/*
 * The VM needs only the HEADER and VCPU records: it is built (and its
 * page state allocated) on this thread while another reads the extents,
 * the bulk of the records for a big guest.  Without that thread, one
 * after the other.
 */
static int build(struct ferry_restore *rs)
{
	pthread_t rest;
	bool parallel = !pthread_create(&rest, NULL, rest_main, rs);
	int ret;

	if (!parallel)
		rest_main(rs);
	ret = rs->ops->create(rs->ops_arg, &rs->file->stream, &rs->vm);
	rs->vm_created = !ret;
	if (!ret)
		ret = snap_check_vm(rs->file, &rs->vm);
	if (!ret)
		ret = postcopy_create(rs->vm.mem, &rs->pc);
	if (parallel)
		pthread_join(rest, NULL);
	if (ret)
		return ret;
	return reader_error(rs);
}

static int prepare(struct ferry_restore *rs, int fd)
{
	int ret = snap_file_open_head(fd, &rs->file);

	if (!ret)
		ret = build(rs);
	if (!ret)
		ret = load_ws(rs);
	return ret;
}

static int run(struct ferry_restore *rs, int fd)
{
	bool lazy = rs->opts.mode == FERRY_RESTORE_LAZY;
	int ret = prepare(rs, fd);

	if (!ret)
		ret = lazy ? restore_lazy(rs) : restore_eager(rs);
	if (!ret && !lazy)
		ret = snap_load_vcpus(rs->file, &rs->vm);
	if (!ret)
		ret = rs->vm.ops->resume(rs->vm.handle);
	rs->stats.resume_ns = ferry_now_ns() - rs->start_ns;
	/*
	 * The readers start once the vCPUs run: making threads takes a
	 * while here, and a request made meanwhile waits in the queue.
	 */
	if (!ret && lazy)
		ret = start_readers(rs);
	if (!ret && lazy && !rs->opts.record_ws)
		ret = ferry_restore_fill(rs);
	return ret;
}

static int init(struct ferry_restore *rs)
{
	pthread_mutex_init(&rs->qlock, NULL);
	pthread_mutex_init(&rs->elock, NULL);
	rs->demand_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	rs->fill_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	rs->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	rs->demand_buf = snap_buf_alloc(READ_CHUNK);
	rs->fill_buf = snap_buf_alloc(READ_CHUNK);
	if (rs->demand_fd < 0 || rs->fill_fd < 0 || rs->stop_fd < 0 ||
	    !rs->demand_buf || !rs->fill_buf)
		return ferry_fail(-ENOMEM, "out of memory or descriptors");
	return 0;
}

static void free_restore(struct ferry_restore *rs)
{
	stop_readers(rs);
	postcopy_destroy(rs->pc);
	for (unsigned int i = 0; rs->owed && i < rs->file->stream.nr_regions;
	     i++)
		free(rs->owed[i]);
	free(rs->owed);
	snap_file_close(rs->file);
	snap_buf_free(rs->demand_buf, READ_CHUNK);
	snap_buf_free(rs->fill_buf, READ_CHUNK);
	free(rs->prefetch);
	snap_buf_free(rs->zero_buf, READ_CHUNK);
	free(rs->spans);
	free(rs->recorded);
	free(rs->queue);
	for (int *fd = &rs->demand_fd; fd <= &rs->stop_fd; fd++)
		if (*fd >= 0)
			close(*fd);
	pthread_mutex_destroy(&rs->qlock);
	pthread_mutex_destroy(&rs->elock);
	free(rs);
}

int ferry_restore_start(int fd, const struct ferry_dest_ops *ops, void *arg,
			const struct ferry_restore_opts *opts,
			struct ferry_restore **out)
{
	struct ferry_restore *rs;
	int ret;

	if (!ops || !ops->create || !opts)
		return ferry_fail(-EINVAL, "restoring needs dest ops with "
				  "create, and options");
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return ferry_fail(-ENOMEM, "out of memory");
	*rs = (struct ferry_restore){ .ops = ops, .ops_arg = arg,
		.opts = *opts, .start_ns = ferry_now_ns(), .demand_fd = -1,
		.fill_fd = -1, .stop_fd = -1 };
	rs->stats.mode = opts->mode;
	ret = init(rs);
	if (!ret)
		ret = run(rs, fd);
	if (ret) {
		char why[sizeof(rs->reason)];

		snprintf(why, sizeof(why), "%s", ferry_errmsg());
		stop_readers(rs);
		postcopy_destroy(rs->pc);
		rs->pc = NULL;
		if (rs->vm_created && ops->discard)
			ops->discard(arg, &rs->vm);
		free_restore(rs);
		return ferry_fail(ret, "%s", why);
	}
	*out = rs;
	return 0;
}

const struct ferry_vm *ferry_restore_vm(const struct ferry_restore *rs)
{
	return &rs->vm;
}

int ferry_restore_fill(struct ferry_restore *rs)
{
	uint64_t one = 1;

	if (write(rs->fill_fd, &one, sizeof(one)) < 0)
		return ferry_fail(-errno, "eventfd: %s", strerror(errno));
	return 0;
}

int ferry_restore_wait(struct ferry_restore *rs, int timeout_ms)
{
	struct pollfd pfd = { .fd = postcopy_done_fd(rs->pc),
			      .events = POLLIN };
	uint64_t deadline = ferry_now_ns() + (uint64_t)timeout_ms * 1000000;
	int ret;

	if (rs->finished)
		return rs->result;
	ret = ferry_restore_fill(rs);
	while (!ret) {
		int err = postcopy_error(rs->pc);

		ret = reader_error(rs);
		if (!ret && err)
			ret = ferry_fail(err, "fault service failed: %s",
					 strerror(-err));
		if (ret || poll(&pfd, 1, 10) > 0 || postcopy_done(rs->pc))
			break;
		if (timeout_ms >= 0 && ferry_now_ns() > deadline)
			return ferry_fail(-ETIMEDOUT, "pages still owed after "
					  "%d ms", timeout_ms);
	}
	return ret;
}

static void fill_stats(const struct ferry_restore *rs,
		       struct ferry_restore_stats *s)
{
	struct postcopy_stats ps;

	postcopy_get_stats(rs->pc, &ps);
	s->pages = atomic_load(&rs->stored) + atomic_load(&rs->installed);
	s->zero_pages = atomic_load(&rs->zero);
	s->bytes_read = atomic_load(&rs->bytes_read);
	s->prefetched = rs->nr_prefetch;
	s->demand_reads = atomic_load(&rs->demand_reads);
	s->filled = atomic_load(&rs->filled);
	s->minor_faults = ps.minor_faults;
	s->missing_faults = ps.missing_faults;
	s->fault_latency_p50_ns = ferry_hist_percentile(&rs->pc->fault_latency,
							50);
	s->fault_latency_p99_ns = ferry_hist_percentile(&rs->pc->fault_latency,
							99);
	s->fault_latency_max_ns = ferry_hist_max(&rs->pc->fault_latency);
	s->ws_recorded = rs->nr_recorded;
	s->guest_bytes = rs->vm.mem->total_size;
}

static uint64_t pmd_mapped(struct ferry_restore *rs)
{
	uint64_t bytes = 0;

	for (unsigned int i = 0; i < rs->vm.mem->nr_regions; i++) {
		uint64_t b = 0;

		if (!ferry_region_pmd_mapped(&rs->vm.mem->regions[i], &b))
			bytes += b;
	}
	return bytes;
}

int ferry_restore_finish(struct ferry_restore *rs,
			 struct ferry_restore_stats *stats)
{
	if (!rs->finished) {
		int ret = ferry_restore_wait(rs, -1), err;

		stop_readers(rs);
		err = postcopy_finish(rs->pc);
		rs->result = ret ? ret : err;
		rs->finished = true;
		rs->stats.total_ns = ferry_now_ns() - rs->start_ns;
	} else if (!rs->stats.total_ns) {
		rs->stats.total_ns = rs->stats.resume_ns;
	}
	fill_stats(rs, &rs->stats);
	rs->stats.pmd_mapped_bytes = pmd_mapped(rs);
	if (stats)
		*stats = rs->stats;
	return rs->result;
}

int ferry_restore_save_ws(struct ferry_restore *rs, const char *path)
{
	size_t n = rs->nr_prefetch + rs->nr_recorded;
	struct snap_page *all;
	int ret;

	if (!rs->opts.record_ws || !rs->finished)
		return ferry_fail(-EINVAL, "only a finished restore that "
				  "recorded has a working set to save");
	all = malloc(n ? n * sizeof(*all) : 1);
	if (!all)
		return ferry_fail(-ENOMEM, "out of memory");
	if (rs->nr_prefetch)
		memcpy(all, rs->prefetch, rs->nr_prefetch * sizeof(*all));
	if (rs->nr_recorded)
		memcpy(all + rs->nr_prefetch, rs->recorded,
		       rs->nr_recorded * sizeof(*all));
	ret = snap_ws_save(rs->file, path, all, n);
	free(all);
	return ret;
}

void ferry_restore_stats(const struct ferry_restore *rs,
			 struct ferry_restore_stats *stats)
{
	*stats = rs->stats;
	fill_stats(rs, stats);
}

void ferry_restore_destroy(struct ferry_restore *rs)
{
	if (!rs)
		return;
	stop_readers(rs);
	free_restore(rs);
}
