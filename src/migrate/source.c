// SPDX-License-Identifier: MIT
/*
 * source: the sending side of a live migration.
 *
 * One sender thread per bulk channel.  The main thread hands them jobs (a
 * round: send the pages of a bitmap; a push: send what post-copy still
 * owes) and waits for all of them at the end of each, so it alone writes
 * bulk channel 0's control records, between jobs.  In post-copy an urgent
 * thread answers page requests.
 *
 *   main        HEADER | round 0 | collect, round 1 | ... | pause
 *               precopy:  final round, VCPUs, SWITCHOVER, COMPLETE
 *               postcopy: STALE bitmaps, VCPUs, SWITCHOVER | wait resume
 *                         | push job + urgent thread | COMPLETE
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "ferry/dirty.h"
#include "ferry/stats.h"
#include "migrate/migrate.h"
#include "base/sys.h"

enum job { JOB_IDLE, JOB_ROUND, JOB_PUSH, JOB_EXIT };

struct source;

struct sender {
	struct source *src;
	unsigned int idx;
	struct ferry_wire_writer writer;
	struct ferry_wire_frame frame;
	uint32_t data_index[FERRY_WIRE_MAX_PAGES];
	uint32_t zero_index[FERRY_WIRE_MAX_ZERO];
	uint32_t nr_data, nr_zero, batch_region;
	pthread_t thread;
	bool started;
	int err;			/* written by this thread, read after
					 * the job is done (under src->lock) */
};

struct source {
	const struct ferry_vm *vm;
	struct ferry_session *session;
	const struct ferry_migrate_opts *opts;
	struct ferry_migrate_stats *stats;
	struct ferry_wire_stream stream;
	struct ferry_dirty *dirty;
	uint64_t **send_map;		/* per region: this job's pages */
	unsigned int nr_senders;
	struct sender *senders;

	/* Jobs: the main thread sets job and bumps gen under lock; each
	 * sender does it once and counts itself into done. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum job job;
	unsigned int gen, done;
	bool live;			/* the VM runs while this job reads */
	unsigned int round;

	/* Push hint: the region and page last requested (urgent thread
	 * writes, senders read; relaxed, a hint only). */
	atomic_uint hint_region;
	atomic_uint_fast64_t hint_page, hint_gen;

	/* Counters, any thread, relaxed. */
	atomic_uint_fast64_t bytes_sent, pages_sent, zero_pages, pushed,
			     requested, answered_owed;
	uint64_t owed;			/* pages owed when post-copy began */
	double rate_bps;		/* progress: the last rate seen */

	/* Urgent channel (post-copy): its thread and what it saw. */
	struct ferry_wire_reader urgent_reader;
	struct ferry_wire_writer urgent_writer;
	pthread_t urgent_thread;
	bool urgent_started;
	struct sender *urgent_sender;	/* the urgent thread's batches */
	uint8_t *urgent_buf;		/* and its receive buffer, touched
					 * before the pause */
	int urgent_err;			/* urgent thread; read after join */
	uint64_t start_ns;
};

/* ---- sending pages ---------------------------------------------------- */

/*
 * Where the source reads guest memory: the guest view, not the alias.  The
 * pages it sends exist and the guest has them mapped there already, while
 * the alias is mapped by nobody yet: reading through it would take a page
 * fault per 64 KiB (fault-around), which costs a third of the stream's
 * throughput here.  Reads do not disturb dirty tracking: async
 * write-protect only notes writes.
 */
static const uint8_t *source_view(const struct ferry_region *r)
{
	return r->guest;
}

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

static int send_frame(struct source *src, struct ferry_wire_writer *w,
		      struct ferry_wire_frame *f)
{
	ssize_t n = ferry_wire_send(w, f);

	if (n < 0)
		return (int)n;
	atomic_fetch_add_explicit(&src->bytes_sent, (uint64_t)n,
				  memory_order_relaxed);
	return 0;
}

static int flush_data(struct sender *s, bool live, uint64_t request_id,
		      struct ferry_wire_writer *w, struct ferry_wire_frame *f)
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
	ret = ferry_wire_enc_pages(f, &s->src->stream, &b);
	if (!ret)
		ret = send_frame(s->src, w, f);
	atomic_fetch_add_explicit(&s->src->pages_sent, s->nr_data,
				  memory_order_relaxed);
	s->nr_data = 0;
	return ret;
}

static int flush_zero(struct sender *s, struct ferry_wire_writer *w,
		      struct ferry_wire_frame *f)
{
	struct ferry_wire_batch b;
	int ret;

	if (!s->nr_zero)
		return 0;
	b = (struct ferry_wire_batch){ .region = s->batch_region,
		.count = s->nr_zero, .index = s->zero_index };
	ret = ferry_wire_enc_zero_pages(f, &s->src->stream, &b);
	if (!ret)
		ret = send_frame(s->src, w, f);
	atomic_fetch_add_explicit(&s->src->zero_pages, s->nr_zero,
				  memory_order_relaxed);
	s->nr_zero = 0;
	return ret;
}

static int flush(struct sender *s, bool live)
{
	int ret = flush_data(s, live, 0, &s->writer, &s->frame);

	if (!ret)
		ret = flush_zero(s, &s->writer, &s->frame);
	return ret;
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
		ret = flush(s, live);
	if (ret)
		return ret;
	s->batch_region = region;
	if (migrate_page_is_zero(source_view(r) + page * r->page_size,
				 r->page_size)) {
		s->zero_index[s->nr_zero++] = (uint32_t)page;
		if (s->nr_zero == FERRY_WIRE_MAX_ZERO)
			ret = flush_zero(s, &s->writer, &s->frame);
		return ret;
	}
	s->data_index[s->nr_data++] = (uint32_t)page;
	if (s->nr_data == FERRY_WIRE_MAX_PAGES || s->nr_data == max_data)
		ret = flush_data(s, live, 0, &s->writer, &s->frame);
	return ret;
}

/* The pages of one chunk whose bits are set (take: clear them, atomically). */
static int send_chunk(struct sender *s, unsigned int region, uint64_t chunk,
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

static uint64_t nr_chunks(const struct ferry_region *r)
{
	size_t per = migrate_chunk_pages(r);

	return (r->nr_pages + per - 1) / per;
}

static bool my_chunk(const struct sender *s, unsigned int region,
		     uint64_t chunk)
{
	return (chunk + region) % s->src->nr_senders == s->idx;
}

static int do_round(struct sender *s, bool live, unsigned int round)
{
	const struct ferry_mem *mem = s->src->vm->mem;
	struct ferry_wire_round_end re = { .round = round };
	int ret = 0;

	for (unsigned int i = 0; i < mem->nr_regions && !ret; i++)
		for (uint64_t c = 0; c < nr_chunks(&mem->regions[i]) && !ret;
		     c++)
			if (my_chunk(s, i, c))
				ret = send_chunk(s, i, c, false, live);
	if (!ret)
		ret = flush(s, live);
	if (!ret)
		ret = ferry_wire_enc_round_end(&s->frame, &re);
	if (!ret)
		ret = send_frame(s->src, &s->writer, &s->frame);
	return ret;
}

/*
 * Post-copy push: every owed page of this sender's chunks, starting at the
 * chunk of the latest request and jumping there again whenever a newer
 * request comes, so pages near where the guest faults arrive first.
 */
static uint64_t hint_chunk(struct sender *s, unsigned int *region)
{
	struct source *src = s->src;
	uint64_t page = atomic_load_explicit(&src->hint_page,
					     memory_order_relaxed);

	*region = atomic_load_explicit(&src->hint_region,
				       memory_order_relaxed);
	if (*region >= src->vm->mem->nr_regions)
		*region = 0;
	return page / migrate_chunk_pages(&src->vm->mem->regions[*region]);
}

/*
 * One pass over every chunk from (region, chunk).  With follow set, a newer
 * request moves the pass to its chunk, so the pass may skip chunks: only a
 * pass that does not follow covers them all.
 */
static int push_from(struct sender *s, unsigned int region, uint64_t chunk,
		     uint64_t *seen_gen, bool follow)
{
	const struct ferry_mem *mem = s->src->vm->mem;
	uint64_t total = 0, done = 0;
	int ret = 0;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		total += nr_chunks(&mem->regions[i]);
	while (done < total && !ret) {
		uint64_t gen = atomic_load_explicit(&s->src->hint_gen,
						    memory_order_relaxed);

		if (follow && gen != *seen_gen) {	/* a newer fault */
			*seen_gen = gen;
			ret = flush(s, false);
			chunk = hint_chunk(s, &region);
		}
		if (chunk >= nr_chunks(&mem->regions[region])) {
			chunk = 0;
			region = (region + 1) % mem->nr_regions;
		}
		if (!ret && my_chunk(s, region, chunk))
			ret = send_chunk(s, region, chunk, true, false);
		chunk++;
		done++;
	}
	return ret;
}

static int do_push(struct sender *s)
{
	uint64_t seen_gen = atomic_load(&s->src->hint_gen);
	unsigned int region;
	uint64_t chunk = hint_chunk(s, &region);
	int ret;

	/*
	 * First near the faults, then a pass that ignores them, which is the
	 * one that guarantees every owed page goes out: pages already taken
	 * cost it only a bit test.
	 */
	ret = push_from(s, region, chunk, &seen_gen, true);
	if (!ret)
		ret = push_from(s, 0, 0, &seen_gen, false);
	if (!ret)
		ret = flush(s, false);
	return ret;
}

static void *sender_main(void *arg)
{
	struct sender *s = arg;
	struct source *src = s->src;
	unsigned int gen = 0;

	/* A migration that converges beats one that leaves the vCPUs a
	 * little more CPU. */
	sys_thread_boost(SYS_BOOST_BULK);
	pthread_mutex_lock(&src->lock);
	for (;;) {
		enum job job;
		bool live;
		unsigned int round;
		int ret = 0;

		while (src->gen == gen)
			pthread_cond_wait(&src->cond, &src->lock);
		gen = src->gen;
		job = src->job;
		live = src->live;
		round = src->round;
		if (job == JOB_EXIT)
			break;
		pthread_mutex_unlock(&src->lock);
		if (job == JOB_ROUND)
			ret = do_round(s, live, round);
		else if (job == JOB_PUSH)
			ret = do_push(s);
		pthread_mutex_lock(&src->lock);
		if (ret && !s->err)
			s->err = ret;
		src->done++;
		pthread_cond_broadcast(&src->cond);
	}
	pthread_mutex_unlock(&src->lock);
	return NULL;
}

/* ---- the main thread's side of jobs ----------------------------------- */

static void report(struct source *src, enum ferry_phase phase,
		   uint64_t remaining, uint64_t *last_bytes, uint64_t *last_ns)
{
	const struct ferry_migrate_opts *o = src->opts;
	struct ferry_progress p = { .phase = phase, .round = src->round,
				    .remaining = remaining, .eta_s = -1 };
	uint64_t now = ferry_now_ns();

	if (!o->progress)
		return;
	p.bytes_sent = atomic_load(&src->bytes_sent);
	p.pages_requested = atomic_load(&src->requested);
	p.elapsed_ns = now - src->start_ns;
	if (phase == FERRY_PHASE_POSTCOPY) {	/* what is still owed now */
		uint64_t sent = atomic_load(&src->pushed) +
				atomic_load(&src->answered_owed);

		p.remaining = sent < src->owed ? src->owed - sent : 0;
	}
	if (now > *last_ns && *last_ns)
		p.rate_bps = (double)(p.bytes_sent - *last_bytes) * 1e9 /
			     (double)(now - *last_ns);
	else if (phase == FERRY_PHASE_DONE && p.elapsed_ns)
		p.rate_bps = (double)p.bytes_sent * 1e9 / (double)p.elapsed_ns;
	else	/* a round's start: no interval of its own yet */
		p.rate_bps = src->rate_bps;
	src->rate_bps = p.rate_bps;
	if (p.rate_bps > 0)
		p.eta_s = (double)remaining * 4096.0 / p.rate_bps;
	*last_bytes = p.bytes_sent;
	*last_ns = now;
	o->progress(&p, o->progress_arg);
}

static int senders_error(struct source *src)
{
	for (unsigned int i = 0; i < src->nr_senders; i++)
		if (src->senders[i].err)
			return src->senders[i].err;
	return 0;
}

/* Post a job to every sender and wait for all, reporting progress. */
static int run_job(struct source *src, enum job job, bool live,
		   enum ferry_phase phase, uint64_t remaining)
{
	uint64_t last_bytes = 0, last_ns = 0;
	int ret;

	if (job == JOB_ROUND)	/* each round's start, with its dirty set */
		report(src, phase, remaining, &last_bytes, &last_ns);
	pthread_mutex_lock(&src->lock);
	src->job = job;
	src->live = live;
	src->done = 0;
	src->gen++;
	pthread_cond_broadcast(&src->cond);
	while (src->done < src->nr_senders) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += (long)src->opts->progress_ms * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000L;
		ts.tv_nsec %= 1000000000L;
		if (pthread_cond_timedwait(&src->cond, &src->lock, &ts)) {
			pthread_mutex_unlock(&src->lock);
			report(src, phase, remaining, &last_bytes, &last_ns);
			pthread_mutex_lock(&src->lock);
		}
	}
	ret = senders_error(src);
	pthread_mutex_unlock(&src->lock);
	return ret;
}

static int start_senders(struct source *src)
{
	for (unsigned int i = 0; i < src->nr_senders; i++) {
		struct sender *s = &src->senders[i];
		int ret;

		s->src = src;
		s->idx = i;
		ferry_wire_writer_init(&s->writer, src->session->bulk[i]);
		ret = -pthread_create(&s->thread, NULL, sender_main, s);
		if (ret)
			return ferry_fail(ret, "starting sender %u: %s", i,
					  strerror(-ret));
		s->started = true;
	}
	return 0;
}

static void stop_senders(struct source *src)
{
	pthread_mutex_lock(&src->lock);
	src->job = JOB_EXIT;
	src->gen++;
	pthread_cond_broadcast(&src->cond);
	pthread_mutex_unlock(&src->lock);
	for (unsigned int i = 0; i < src->nr_senders; i++)
		if (src->senders[i].started)
			pthread_join(src->senders[i].thread, NULL);
}

/* ---- rounds ------------------------------------------------------------ */

static void clear_maps(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		memset(src->send_map[i], 0,
		       bitmap_words(mem->regions[i].nr_pages) * 8);
}

static uint64_t count_maps(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;
	uint64_t n = 0;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		n += bitmap_weight(src->send_map[i], mem->regions[i].nr_pages);
	return n;
}

/* Round 0's pages: those that exist.  Holes are never read. */
static int map_populated(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;

	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		ssize_t n = ferry_region_populated(&mem->regions[i],
						   src->send_map[i]);

		if (n < 0)
			return (int)n;
	}
	return 0;
}

/* OR the pages written since the last collect into the send maps. */
static int map_dirty(struct source *src)
{
	for (unsigned int i = 0; src->dirty && i < src->vm->mem->nr_regions;
	     i++) {
		ssize_t n = ferry_dirty_collect(src->dirty, i,
						src->send_map[i]);

		if (n < 0)
			return (int)n;
	}
	return 0;
}

static int round_trip(struct source *src, bool live, double *bps)
{
	uint64_t before = atomic_load(&src->bytes_sent), t0 = ferry_now_ns();
	int ret = run_job(src, JOB_ROUND, live, live ? FERRY_PHASE_PRECOPY :
			  FERRY_PHASE_SWITCHOVER, count_maps(src));
	uint64_t ns = ferry_now_ns() - t0;

	if (!ret && ns)
		*bps = (double)(atomic_load(&src->bytes_sent) - before) * 1e9 /
		       (double)ns;
	src->stats->rounds++;
	src->round++;
	return ret;
}

/*
 * Pre-copy rounds while the VM runs.  Returns the mode to switch over in,
 * with the pages still to send in the send maps.
 */
static int precopy(struct source *src, enum ferry_mode *switch_mode)
{
	const struct ferry_migrate_opts *o = src->opts;
	uint64_t prev = UINT64_MAX, dirty, page = 4096;
	double bps = 0, est_ms;
	int ret;

	if (!src->dirty) {	/* nothing can tell what changed: all later */
		*switch_mode = FERRY_MODE_POSTCOPY;
		return 0;
	}
	clear_maps(src);
	ret = map_populated(src);
	for (;;) {
		if (!ret)
			ret = round_trip(src, true, &bps);
		if (ret)
			return ret;
		clear_maps(src);
		ret = map_dirty(src);
		if (ret)
			return ret;
		dirty = count_maps(src);
		if (o->mode == FERRY_MODE_POSTCOPY) {
			*switch_mode = FERRY_MODE_POSTCOPY;
			return 0;
		}
		if (src->vm->mem->nr_regions)
			page = src->vm->mem->regions[0].page_size;
		est_ms = bps > 0 ? (double)(dirty * page) * 1e3 / bps : 1e9;
		if (est_ms <= o->max_downtime_ms) {
			*switch_mode = FERRY_MODE_PRECOPY;
			return 0;
		}
		/* Not converging: the dirty set stopped shrinking by 10%. */
		if (src->round >= o->max_rounds ||
		    (src->round >= 2 && dirty * 10 > prev * 9)) {
			*switch_mode = o->mode == FERRY_MODE_HYBRID ?
				       FERRY_MODE_POSTCOPY : FERRY_MODE_PRECOPY;
			return 0;
		}
		prev = dirty;
	}
}

/* ---- switchover --------------------------------------------------------- */

static int send_vcpus(struct source *src)
{
	const struct ferry_vm *vm = src->vm;
	struct sender *s0 = &src->senders[0];
	unsigned int n = vm->ops->nr_vcpus(vm->handle);
	size_t cap = vm->ops->state_size(vm->handle);
	uint8_t *blob = malloc(cap ? cap : 1);
	int ret = blob ? 0 : -ENOMEM;

	for (unsigned int i = 0; i < n && !ret; i++) {
		enum ferry_mp_state mp;
		ssize_t len = vm->ops->save(vm->handle, i, blob, cap);
		struct ferry_wire_vcpu v;

		if (len < 0) {
			ret = ferry_fail_ctx((int)len, "saving vCPU %u", i);
			break;
		}
		ret = vm->ops->get_mp_state(vm->handle, i, &mp);
		v = (struct ferry_wire_vcpu){ .index = i, .mp_state = mp,
			.regs_len = (uint32_t)len, .regs = blob };
		if (!ret)
			ret = ferry_wire_enc_vcpu(&s0->frame, &src->stream, &v);
		if (!ret)
			ret = send_frame(src, &s0->writer, &s0->frame);
	}
	free(blob);
	return ret;
}

/* Any bit set in [first, first + count)?  first is a multiple of 64. */
static bool any_bit(const uint64_t *map, uint64_t first, uint64_t count)
{
	for (uint64_t w = first / 64; w < (first + count + 63) / 64; w++)
		if (map[w])
			return true;
	return false;
}

/*
 * The stale bitmap in windows of 32768 pages, leaving out those with
 * nothing owed: what crosses the wire in the downtime grows with the stale
 * set, not with guest memory.
 */
#define STALE_WINDOW	32768U

static int send_stale_window(struct source *src, unsigned int region,
			     uint64_t first, uint64_t pages)
{
	struct sender *s0 = &src->senders[0];
	struct ferry_wire_bitmap b = {
		.region = region, .kind = FERRY_WIRE_BITMAP_STALE,
		.first_page = (uint32_t)first,
		.nr_bits = (uint32_t)(pages - first < STALE_WINDOW ?
				      pages - first : STALE_WINDOW),
		.words = src->send_map[region] + first / 64,
	};
	int ret;

	if (!any_bit(src->send_map[region], first, b.nr_bits))
		return 0;
	ret = ferry_wire_enc_bitmap(&s0->frame, &src->stream, &b);
	if (!ret)
		ret = send_frame(src, &s0->writer, &s0->frame);
	return ret;
}

static int send_stale(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;
	int ret = 0;

	for (unsigned int i = 0; i < mem->nr_regions && !ret; i++)
		for (uint64_t first = 0; first < mem->regions[i].nr_pages &&
		     !ret; first += STALE_WINDOW)
			ret = send_stale_window(src, i, first,
						mem->regions[i].nr_pages);
	return ret;
}

/* One control record on every bulk channel: the senders are idle. */
static int send_all(struct source *src,
		    int (*enc)(struct ferry_wire_frame *f, void *arg),
		    void *arg)
{
	for (unsigned int i = 0; i < src->nr_senders; i++) {
		struct sender *s = &src->senders[i];
		int ret = enc(&s->frame, arg);

		if (!ret)
			ret = send_frame(src, &s->writer, &s->frame);
		if (ret)
			return ret;
	}
	return 0;
}

static int enc_switchover(struct ferry_wire_frame *f, void *arg)
{
	return ferry_wire_enc_switchover(f, *(enum ferry_wire_switch_mode *)arg);
}

static int enc_complete(struct ferry_wire_frame *f, void *arg)
{
	return ferry_wire_enc_complete(f, arg);
}

static int send_complete(struct source *src)
{
	struct ferry_wire_complete c = {
		.pages = atomic_load(&src->pages_sent),
		.zero_pages = atomic_load(&src->zero_pages),
	};

	return send_all(src, enc_complete, &c);
}

/* Read the destination's next urgent record, of type `want`. */
static int urgent_expect(struct source *src, void *buf,
			 enum ferry_wire_type want, struct ferry_wire_rec *rec)
{
	struct ferry_wire_error e;
	ssize_t n = ferry_wire_recv(&src->urgent_reader, buf,
				    FERRY_WIRE_BUF_SIZE, rec);

	if (n == 0)
		return ferry_fail(-EPIPE, "the destination closed the "
				  "urgent channel");
	if (n < 0)
		return (int)n;
	if (rec->type == FERRY_WIRE_ERROR && !ferry_wire_dec_error(rec, &e))
		return ferry_fail(-(e.err ? e.err : EIO), "the destination "
				  "gave up: %s", e.msg);
	if (rec->type != want)
		return ferry_fail(-EBADMSG, "expected %s from the destination, "
				  "got %s", ferry_wire_type_name(want),
				  ferry_wire_type_name(rec->type));
	return 0;
}

static int wait_resumed(struct source *src, void *buf)
{
	struct ferry_wire_rec rec;
	enum ferry_wire_switch_mode mode;
	int ret = urgent_expect(src, buf, FERRY_WIRE_SWITCHOVER, &rec);

	if (!ret)
		ret = ferry_wire_dec_switchover(&rec, &mode);
	return ret;
}

/* ---- the urgent channel (post-copy) ------------------------------------- */

static int answer_request(struct source *src, struct sender *u,
			  const struct ferry_wire_page_request *req)
{
	struct ferry_region *r = &src->vm->mem->regions[req->region];
	int ret;

	u->nr_data = u->nr_zero = 0;
	u->batch_region = req->region;
	for (uint32_t i = 0; i < req->count; i++) {
		uint64_t p = (uint64_t)req->page + i;

		if (migrate_bit_take(src->send_map[req->region], p))
			atomic_fetch_add_explicit(&src->answered_owed, 1,
						  memory_order_relaxed);
		if (migrate_page_is_zero(source_view(r) + p * r->page_size,
					 r->page_size))
			u->zero_index[u->nr_zero++] = (uint32_t)p;
		else
			u->data_index[u->nr_data++] = (uint32_t)p;
	}
	ret = flush_data(u, false, req->request_id, &src->urgent_writer,
			 &u->frame);
	if (!ret && u->nr_zero) {
		struct ferry_wire_batch b = { .region = req->region,
			.count = u->nr_zero, .index = u->zero_index,
			.request_id = req->request_id };

		ret = ferry_wire_enc_zero_pages(&u->frame, &src->stream, &b);
		if (!ret)
			ret = send_frame(src, &src->urgent_writer, &u->frame);
		u->nr_zero = 0;
	}
	atomic_store_explicit(&src->hint_region, req->region,
			      memory_order_relaxed);
	atomic_store_explicit(&src->hint_page, req->page,
			      memory_order_relaxed);
	atomic_fetch_add_explicit(&src->hint_gen, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&src->requested, req->count,
				  memory_order_relaxed);
	return ret;
}

static int serve_urgent(struct source *src, struct sender *u, void *buf)
{
	struct ferry_wire_page_request req;
	struct ferry_wire_rec rec;

	for (;;) {
		ssize_t n = ferry_wire_recv(&src->urgent_reader, buf,
					    FERRY_WIRE_BUF_SIZE, &rec);
		int ret;

		if (n == 0)
			return ferry_fail(-EPIPE, "the destination closed the "
					  "urgent channel before completing");
		if (n < 0)
			return (int)n;
		if (rec.type == FERRY_WIRE_COMPLETE)
			return 0;
		if (rec.type != FERRY_WIRE_PAGE_REQUEST)
			return ferry_fail(-EBADMSG, "unexpected %s on the "
					  "urgent channel",
					  ferry_wire_type_name(rec.type));
		ret = ferry_wire_dec_page_request(&src->stream, &rec, &req);
		if (!ret)
			ret = answer_request(src, u, &req);
		if (ret)
			return ret;
	}
}

static void *urgent_main(void *arg)
{
	struct source *src = arg;

	sys_thread_boost(SYS_BOOST_URGENT);
	src->urgent_err = serve_urgent(src, src->urgent_sender,
				       src->urgent_buf);
	if (src->urgent_err)	/* wake the pushers: the session is over */
		ferry_net_session_shutdown(src->session);
	return NULL;
}

/* ---- the whole migration ------------------------------------------------ */

static int switch_precopy(struct source *src, void *buf)
{
	enum ferry_wire_switch_mode m = FERRY_WIRE_SWITCH_PRECOPY;
	double bps;
	int ret = map_dirty(src);

	if (!ret)
		ret = round_trip(src, false, &bps);
	if (!ret)
		ret = send_vcpus(src);
	if (!ret)
		ret = send_all(src, enc_switchover, &m);
	if (!ret)
		ret = send_complete(src);
	if (!ret)
		ret = wait_resumed(src, buf);
	return ret;
}

static int switch_postcopy(struct source *src, void *buf)
{
	enum ferry_wire_switch_mode m = FERRY_WIRE_SWITCH_POSTCOPY;
	int ret = src->dirty ? map_dirty(src) : map_populated(src);

	if (!ret)
		ret = send_stale(src);
	if (!ret)
		ret = send_vcpus(src);
	if (!ret)
		ret = send_all(src, enc_switchover, &m);
	if (!ret)
		ret = wait_resumed(src, buf);
	return ret;
}

static int postcopy_push(struct source *src)
{
	int ret = -pthread_create(&src->urgent_thread, NULL, urgent_main, src);

	if (ret)
		return ferry_fail(ret, "starting the urgent thread: %s",
				  strerror(-ret));
	src->urgent_started = true;
	ret = run_job(src, JOB_PUSH, false, FERRY_PHASE_POSTCOPY, src->owed);
	if (ret)	/* the urgent thread may sit in recv: wake it */
		ferry_net_session_shutdown(src->session);
	pthread_join(src->urgent_thread, NULL);
	src->urgent_started = false;
	if (!ret)
		ret = src->urgent_err;
	if (!ret)
		ret = send_complete(src);
	if (!ret) {	/* and on the urgent channel, which ends it too */
		struct sender *s0 = &src->senders[0];
		struct ferry_wire_complete c = { 0 };

		ret = ferry_wire_enc_complete(&s0->frame, &c);
		if (!ret)
			ret = send_frame(src, &src->urgent_writer, &s0->frame);
	}
	return ret;
}

static int source_alloc(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;

	src->nr_senders = src->session->nr_bulk;
	src->senders = sys_zalloc(src->nr_senders * sizeof(*src->senders));
	src->urgent_sender = sys_zalloc(sizeof(*src->urgent_sender));
	src->urgent_buf = sys_zalloc_aligned(4096, FERRY_WIRE_BUF_SIZE);
	if (!src->senders || !src->urgent_sender || !src->urgent_buf)
		return -ENOMEM;
	src->urgent_sender->src = src;
	src->send_map = calloc(mem->nr_regions ? mem->nr_regions : 1,
			       sizeof(*src->send_map));
	if (!src->senders || !src->send_map)
		return -ENOMEM;
	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		src->send_map[i] = bitmap_alloc(mem->regions[i].nr_pages);
		if (!src->send_map[i])
			return -ENOMEM;
	}
	return 0;
}

static void source_free(struct source *src)
{
	for (unsigned int i = 0; src->send_map &&
	     i < src->vm->mem->nr_regions; i++)
		free(src->send_map[i]);
	free(src->send_map);
	free(src->senders);
	free(src->urgent_sender);
	free(src->urgent_buf);
}

static int send_header(struct source *src)
{
	const struct ferry_vm *vm = src->vm;
	struct sender *s0 = &src->senders[0];
	int ret = ferry_wire_stream_init(&src->stream, vm->mem,
			FERRY_WIRE_MIGRATION, vm->ops->nr_vcpus(vm->handle),
			vm->desc, vm->desc_len);

	if (!ret)
		ret = ferry_wire_enc_header(&s0->frame, &src->stream);
	if (!ret)
		ret = send_frame(src, &s0->writer, &s0->frame);
	return ret;
}

/*
 * Dirty tracking, or none: without async write-protect (before Linux 6.7)
 * the migration is post-copy only, every page sent once after the pause.
 */
static int arm_dirty(struct source *src)
{
	int ret;

	if (src->opts->postcopy_at_once) {	/* no live pass to track */
		src->dirty = NULL;
		return 0;
	}
	ret = ferry_dirty_start(src->vm->mem, &src->dirty);

	if (ret == -EOPNOTSUPP && src->opts->mode == FERRY_MODE_POSTCOPY) {
		src->dirty = NULL;
		return 0;
	}
	return ret;
}

static void fill_stats(struct source *src, enum ferry_mode mode,
		       uint64_t pause_ns, uint64_t resumed_ns)
{
	struct ferry_migrate_stats *st = src->stats;

	st->mode = mode;
	st->downtime_ns = resumed_ns > pause_ns ? resumed_ns - pause_ns : 0;
	st->total_ns = ferry_now_ns() - src->start_ns;
	st->bytes_sent = atomic_load(&src->bytes_sent);
	st->pages_sent = atomic_load(&src->pages_sent);
	st->zero_pages = atomic_load(&src->zero_pages);
	st->pages_pushed = atomic_load(&src->pushed);
	st->pages_requested = atomic_load(&src->requested);
	st->guest_bytes = src->vm->mem->total_size;
}

static void notify_progress(struct source *src, enum ferry_phase phase)
{
	uint64_t b = 0, t = 0;

	report(src, phase, 0, &b, &t);
}

/*
 * Pause, switch over, and (post-copy) serve the rest.  If the destination
 * never confirmed it runs the VM, the VM runs here again.
 */
static int switchover(struct source *src, enum ferry_mode mode, void *buf)
{
	const struct ferry_vm *vm = src->vm;
	uint64_t pause_ns, resumed_ns;
	int ret;

	notify_progress(src, FERRY_PHASE_SWITCHOVER);
	ret = vm->ops->pause(vm->handle);
	if (ret)
		return ferry_fail_ctx(ret, "pausing the vCPUs");
	pause_ns = ferry_now_ns();
	ret = mode == FERRY_MODE_PRECOPY ? switch_precopy(src, buf) :
					   switch_postcopy(src, buf);
	resumed_ns = ferry_now_ns();
	if (ret) {
		vm->ops->resume(vm->handle);
		return ferry_fail_ctx(ret, "switchover (the VM runs here "
				      "again)");
	}
	ferry_dirty_stop(src->dirty);
	src->dirty = NULL;
	if (mode == FERRY_MODE_POSTCOPY) {
		src->owed = count_maps(src);
		notify_progress(src, FERRY_PHASE_POSTCOPY);
		ret = postcopy_push(src);
		if (ret)
			return ferry_fail_ctx(ret, "post-copy (the VM runs at "
					      "the destination)");
	}
	fill_stats(src, mode, pause_ns, resumed_ns);
	notify_progress(src, FERRY_PHASE_DONE);
	return 0;
}

static int check_args(const struct ferry_vm *vm, struct ferry_session *s)
{
	int ret = ferry_vcpu_ops_check(vm->ops);

	if (ret)
		return ret;
	if (!s || !s->nr_bulk || !s->urgent)
		return ferry_fail(-EINVAL, "the session needs a bulk and an "
				  "urgent channel");
	if (!vm->mem || !vm->mem->nr_regions)
		return ferry_fail(-EINVAL, "the VM has no memory");
	return 0;
}

/*
 * The channels broke: if the destination said why on the urgent channel
 * before it closed, that is the reason to give.
 */
static int peer_reason(struct source *src, void *buf, int err)
{
	struct pollfd pfd = {
		.fd = ferry_chan_poll_fd(src->session->urgent), .events = POLLIN,
	};
	struct ferry_wire_error e;
	struct ferry_wire_rec rec;
	char ours[256];

	if (err != -EPIPE && err != -ECONNRESET)
		return err;
	snprintf(ours, sizeof(ours), "%s", ferry_errmsg());
	if (poll(&pfd, 1, 200) != 1 ||
	    ferry_wire_recv(&src->urgent_reader, buf, FERRY_WIRE_BUF_SIZE,
			    &rec) <= 0 ||
	    rec.type != FERRY_WIRE_ERROR || ferry_wire_dec_error(&rec, &e))
		return ferry_fail(err, "%s", ours);
	return ferry_fail(err, "the destination gave up: %s", e.msg);
}

static int migrate(struct source *src, void *buf)
{
	enum ferry_mode mode = FERRY_MODE_PRECOPY;
	int ret = start_senders(src);

	notify_progress(src, FERRY_PHASE_SETUP);
	if (!ret)
		ret = send_header(src);
	if (!ret)
		ret = arm_dirty(src);
	if (!ret)
		ret = precopy(src, &mode);
	if (ret)
		ret = peer_reason(src, buf, ret);
	if (!ret)
		ret = switchover(src, mode, buf);
	if (ret)	/* wake senders blocked on a dead peer */
		ferry_net_session_shutdown(src->session);
	stop_senders(src);
	ferry_dirty_stop(src->dirty);
	return ret;
}

int ferry_migrate_send(const struct ferry_vm *vm,
		       struct ferry_session *session,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_migrate_stats *stats)
{
	struct ferry_migrate_opts defaults;
	struct source *src;
	void *buf;
	int ret = check_args(vm, session);

	if (ret)
		return ret;
	if (!opts) {
		ferry_migrate_opts_init(&defaults);
		opts = &defaults;
	}
	if (opts->postcopy_at_once && opts->mode != FERRY_MODE_POSTCOPY)
		return ferry_fail(-EINVAL, "postcopy_at_once needs mode "
				  "postcopy, not %s", ferry_mode_name(opts->mode));
	memset(stats, 0, sizeof(*stats));
	src = calloc(1, sizeof(*src));
	buf = sys_zalloc_aligned(4096, FERRY_WIRE_BUF_SIZE);
	if (!src || !buf) {
		free(src);
		free(buf);
		return ferry_fail(-ENOMEM, "out of memory");
	}
	*src = (struct source){ .vm = vm, .session = session, .opts = opts,
				.stats = stats, .start_ns = ferry_now_ns() };
	pthread_mutex_init(&src->lock, NULL);
	pthread_cond_init(&src->cond, NULL);
	ferry_wire_reader_init(&src->urgent_reader, session->urgent);
	ferry_wire_writer_init(&src->urgent_writer, session->urgent);
	ret = source_alloc(src);
	if (ret)
		ret = ferry_fail(ret, "out of memory");
	else
		ret = migrate(src, buf);
	source_free(src);
	pthread_cond_destroy(&src->cond);
	pthread_mutex_destroy(&src->lock);
	free(src);
	free(buf);
	return ret;
}
