// SPDX-License-Identifier: MIT
/*
 * restore_fill: a lazy restore after the vCPUs resume.  Two readers put
 * the pages the file holds in place while the guest runs:
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
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/error.h"
#include "base/sys.h"
#include "snapshot/restore_int.h"

/* After a fault, the fill reader first fills this much after the page. */
#define NEAR_BYTES	(1UL << 20)

/* ---- the demand reader ------------------------------------------------- */

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
	if (!ret)
		evfd_signal(rs->demand_fd);
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

const struct postcopy_ops restore_file_ops = { .request = request_page };

static int serve(struct ferry_restore *rs, const struct snap_page *req)
{
	const struct snap_extent *e = snap_find(rs->file, req->region,
						req->page);
	int ret;

	if (!e)		/* owed pages are all in extents */
		return ferry_fail(-EPROTO, "page %u of region %u was requested "
				  "but the snapshot does not hold it",
				  req->page, req->region);
	ret = restore_load_range(rs, e, req->page, 1, rs->demand_buf,
				 restore_put_install);
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

static int serve_queue(struct ferry_restore *rs)
{
	struct snap_page *reqs;
	size_t n;
	int ret = 0;

	evfd_drain(rs->demand_fd);
	n = take_queue(rs, &reqs);
	for (size_t i = 0; i < n && !ret; i++)
		ret = serve(rs, &reqs[i]);
	free(reqs);
	return ret;
}

/*
 * Beside the fault thread on the urgent path: a vCPU waits for each page
 * it reads.  Requests wait in the queue until the readers stop.
 */
static void *demand_main(void *arg)
{
	struct ferry_restore *rs = arg;
	int ret;

	sys_thread_boost(SYS_BOOST_URGENT);
	while ((ret = evfd_wait(rs->demand_fd, rs->readers.stop_fd, -1)) > 0)
		if ((ret = serve_queue(rs)))
			break;
	atomic_store(&rs->demand_up, false);
	if (ret < 0) {
		err_slot_set(&rs->err, ret);
		evfd_signal(rs->wake_fd);
	}
	return NULL;
}

/* ---- the fill reader ---------------------------------------------------- */

static bool stopping(struct ferry_restore *rs)
{
	return threads_stopping(&rs->readers) || atomic_load(&rs->halt) ||
	       postcopy_done(rs->pc);
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
	return restore_load_span(rs, e, page, end - page, rs->fill_buf,
				 restore_put_install);
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
			ret = restore_load_range(rs, e, p, end - p < chunk ?
						 end - p : chunk, rs->fill_buf,
						 restore_put_install);
		installed += ret > 0 ? (uint64_t)ret : 0;
	}
	atomic_fetch_add_explicit(&rs->filled, installed,
				  memory_order_relaxed);
	return ret < 0 ? ret : 0;
}

/* A working-set page that is zero is installed as one (see zero_data). */
static int put_install_ws(struct ferry_restore *rs, unsigned int region,
			  uint64_t first, uint64_t count, const uint8_t *data)
{
	return restore_put_install(rs, region, first, count, data ? data :
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
			ret = restore_load_span(rs, e, p[i].page, k,
						rs->fill_buf, put_install_ws);
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
	return evfd_wait(rs->fill_fd, rs->readers.stop_fd, -1) > 0;
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
	if (ret && ret != -ECANCELED) {
		err_slot_set(&rs->err, ret);
		evfd_signal(rs->wake_fd);
	}
	return NULL;
}

/* ---- starting and stopping ---------------------------------------------- */

int restore_readers_start(struct ferry_restore *rs)
{
	int ret;

	/* Up from now: it serves what was queued before it ran. */
	atomic_store(&rs->demand_up, true);
	ret = threads_start(&rs->readers, demand_main, rs, "demand reader");
	if (ret)
		atomic_store(&rs->demand_up, false);
	if (!ret)
		ret = threads_start(&rs->readers, fill_main, rs,
				    "fill reader");
	return ret;
}

void restore_readers_stop(struct ferry_restore *rs)
{
	threads_stop(&rs->readers);
}

/* Not once a cancel was asked: nothing more is to be read. */
int ferry_restore_fill(struct ferry_restore *rs)
{
	if (!restore_cancelled(rs))
		evfd_signal(rs->fill_fd);
	return 0;
}
