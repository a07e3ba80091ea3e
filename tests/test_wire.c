// SPDX-License-Identifier: MIT
/*
 * The record stream: every record type both ways, and a parser that holds
 * against hostile bytes (corruption, truncation, crafted fields with good
 * checksums, random mutation).  Records are crafted from the byte layout in
 * docs/wire.md, so these tests also hold the document to the code.
 */
#include <stdlib.h>
#include <sys/mman.h>
#include <xxhash.h>

#include "ferry/net.h"
#include "ferry/wire.h"
#include "test.h"

#define KIB		4096ULL
#define MIB2		(2ULL << 20)
#define R0_PAGES	8192ULL			/* region 0: shmem, 32 MiB */
#define R1_PAGES	4ULL			/* region 1: hugetlb, 8 MiB */
#define R1_BASE		(1ULL << 36)		/* past the largest region 0 */
#define BIG_PAGES	(1ULL << 23)		/* for the largest bitmap */

/* ---- a channel over a memory buffer ---- */

struct memchan {
	struct ferry_chan base;
	uint8_t *buf;
	size_t len, cap, pos, limit;	/* recv stops at limit */
};

static ssize_t mem_sendv(struct ferry_chan *chan, const struct iovec *iov,
			 int iovcnt)
{
	struct memchan *m = (struct memchan *)chan;
	size_t total = 0;

	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (m->len + total > m->cap) {
		m->cap = (m->len + total) * 2;
		m->buf = realloc(m->buf, m->cap);
		if (!m->buf)
			return -ENOMEM;
	}
	for (int i = 0; i < iovcnt; i++) {
		memcpy(m->buf + m->len, iov[i].iov_base, iov[i].iov_len);
		m->len += iov[i].iov_len;
	}
	m->limit = m->len;
	return (ssize_t)total;
}

static ssize_t mem_recv(struct ferry_chan *chan, void *buf, size_t len)
{
	struct memchan *m = (struct memchan *)chan;
	size_t n = m->limit - m->pos < len ? m->limit - m->pos : len;

	memcpy(buf, m->buf + m->pos, n);
	m->pos += n;
	return (ssize_t)n;
}

static int mem_shutdown(struct ferry_chan *chan)
{
	(void)chan;
	return 0;
}

static int mem_poll_fd(struct ferry_chan *chan)
{
	(void)chan;
	return -1;
}

static void mem_close(struct ferry_chan *chan)
{
	free(((struct memchan *)chan)->buf);
}

static const struct ferry_chan_ops mem_ops = {
	mem_sendv, mem_recv, mem_shutdown, mem_poll_fd, mem_close,
};

static void memchan_init(struct memchan *m)
{
	*m = (struct memchan){ .base = { .ops = &mem_ops, .name = "mem" } };
}

/* ---- a test stream ---- */

struct fixture {
	struct ferry_wire_stream stream;
	uint8_t *guest;			/* region 0, sparse */
	uint8_t *huge;			/* region 1 */
	size_t guest_len;
	struct ferry_wire_frame frame;
	struct ferry_wire_writer w;
	struct memchan chan;
	uint8_t *rbuf;			/* FERRY_WIRE_BUF_SIZE, page-aligned */
};

static const char desc[] = "vm: 2 vcpus, 40 MiB";

static void fill(uint8_t *p, size_t len, uint32_t seed)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = (i + 1) * 0x9e3779b97f4a7c15ULL ^ seed;

		memcpy(p + i, &v, 8);
	}
}

static void stream_desc(struct ferry_wire_stream *s, uint64_t r0_pages)
{
	*s = (struct ferry_wire_stream){
		.version = FERRY_WIRE_VERSION,
		.kind = FERRY_WIRE_MIGRATION,
		.id = 0x5eed0f0e,
		.nr_vcpus = 2,
		.nr_regions = 2,
		.desc = desc,
		.desc_len = sizeof(desc),
	};
	s->regions[0] = (struct ferry_wire_region){
		FERRY_BACKING_SHMEM, KIB, r0_pages * KIB, r0_pages, 0 };
	s->regions[1] = (struct ferry_wire_region){
		FERRY_BACKING_HUGETLB, MIB2, R1_PAGES * MIB2, R1_PAGES,
		R1_BASE };
}

static int fixture_init(struct fixture *fx, uint64_t r0_pages)
{
	memset(fx, 0, sizeof(*fx));
	stream_desc(&fx->stream, r0_pages);
	fx->guest_len = r0_pages * KIB;
	fx->guest = mmap(NULL, fx->guest_len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	fx->huge = aligned_alloc(4096, R1_PAGES * MIB2);
	fx->rbuf = aligned_alloc(4096, FERRY_WIRE_BUF_SIZE);
	if (fx->guest == MAP_FAILED || !fx->huge || !fx->rbuf)
		return -ENOMEM;
	fill(fx->guest, 1024 * KIB, 1);
	fill(fx->guest + fx->guest_len - 16 * KIB, 16 * KIB, 2);
	fill(fx->huge, R1_PAGES * MIB2, 3);
	memchan_init(&fx->chan);
	ferry_wire_writer_init(&fx->w, &fx->chan.base);
	return 0;
}

static void fixture_fini(struct fixture *fx)
{
	munmap(fx->guest, fx->guest_len);
	free(fx->huge);
	free(fx->rbuf);
	mem_close(&fx->chan.base);
}

static int send_frame(struct fixture *fx, int enc_ret)
{
	if (enc_ret)
		return enc_ret;
	return ferry_wire_send(&fx->w, &fx->frame) < 0 ? -EIO : 0;
}

static int send_batch(struct fixture *fx, enum ferry_wire_type type,
		      uint32_t region, const uint32_t *index, uint32_t count,
		      bool live)
{
	struct ferry_wire_batch b = {
		.region = region,
		.count = count,
		.index = index,
		.base = region ? fx->huge : fx->guest,
		.request_id = 7,
		.live = live,
	};

	if (type == FERRY_WIRE_PAGES)
		return send_frame(fx, ferry_wire_enc_pages(&fx->frame,
							   &fx->stream, &b));
	return send_frame(fx, ferry_wire_enc_zero_pages(&fx->frame,
							&fx->stream, &b));
}

static const uint32_t small_index[] = { 3, 4, 100 };
static const uint64_t bitmap_words[2] = { 0x8000000000000001ULL,
					  0xf0f0f0f0f0f0f0f0ULL };
static const uint8_t regs[64] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
static const uint64_t extent_sums[3] = { 11, 22, 33 };

static const uint32_t refetch_index[] = { 9, 4000, 8191 };

/* The records of recovery: ACCEPT ... COMMIT, with an OWED bitmap. */
static int send_recovery(struct fixture *fx)
{
	struct ferry_wire_frame *f = &fx->frame;
	struct ferry_wire_accept a = { FERRY_WIRE_VERSION, fx->stream.id };
	struct ferry_wire_heartbeat hb = { 41, 123456789 };
	struct ferry_wire_batch b = { .region = 0, .count = 3,
				      .index = refetch_index };
	struct ferry_wire_resume rs = { fx->stream.id, 5, 1 };
	struct ferry_wire_bitmap owed = { 0, FERRY_WIRE_BITMAP_OWED, 128, 64,
					  &bitmap_words[1] };
	int ret = 0;

	ret = ret ? ret : send_frame(fx, ferry_wire_enc_accept(f, &a));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_heartbeat(f, &hb));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_refetch(f,
					&fx->stream, &b));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_resume(f, &rs));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_bitmap(f,
					&fx->stream, &owed));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_commit(f,
					fx->stream.id));
	return ret;
}

static int send_controls(struct fixture *fx)
{
	struct ferry_wire_frame *f = &fx->frame;
	struct ferry_wire_page_request q = { 0, 8000, 4, 99 };
	struct ferry_wire_extent e = { 0, 16, 3, 1 << 20, extent_sums };
	struct ferry_wire_round_end r = { 3, 1234 };
	struct ferry_wire_complete c = { 5000, 600 };
	int ret = 0;

	ret = ret ? ret : send_frame(fx, ferry_wire_enc_round_end(f, &r));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_switchover(f,
					FERRY_WIRE_SWITCH_POSTCOPY));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_page_request(f,
					&fx->stream, &q));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_extent(f,
					&fx->stream, &e));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_error(f, -EIO,
					"disk on fire"));
	ret = ret ? ret : send_recovery(fx);
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_complete(f, &c));
	return ret;
}

/*
 * The small stream: one record of each type, 4 KiB pages only, so that
 * flipping every byte of it stays cheap.  `huge` adds a 2 MiB page.
 */
static int send_small(struct fixture *fx, bool huge)
{
	struct ferry_wire_bitmap bm = { 0, FERRY_WIRE_BITMAP_STALE, 64, 128,
					bitmap_words };
	struct ferry_wire_vcpu v = { 1, 3, sizeof(regs), regs };
	uint32_t one = 2;
	int ret;

	ret = send_frame(fx, ferry_wire_enc_header(&fx->frame, &fx->stream));
	ret = ret ? ret : send_batch(fx, FERRY_WIRE_PAGES, 0, small_index, 3,
				     false);
	ret = ret ? ret : send_batch(fx, FERRY_WIRE_ZERO_PAGES, 0,
				     small_index, 3, false);
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_bitmap(&fx->frame,
					&fx->stream, &bm));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_vcpu(&fx->frame,
					&fx->stream, &v));
	if (!ret && huge)
		ret = send_batch(fx, FERRY_WIRE_PAGES, 1, &one, 1, false);
	return ret ? ret : send_controls(fx);
}

/* ---- decoding a whole stream ---- */

union view {
	struct ferry_wire_pages pages;
	struct ferry_wire_bitmap bitmap;
	struct ferry_wire_vcpu vcpu;
	struct ferry_wire_round_end round;
	enum ferry_wire_switch_mode mode;
	struct ferry_wire_complete complete;
	struct ferry_wire_error error;
	struct ferry_wire_page_request req;
	struct ferry_wire_extent extent;
	struct ferry_wire_accept accept;
	struct ferry_wire_heartbeat heartbeat;
	struct ferry_wire_resume resume;
	uint64_t commit;
};

static int decode(struct ferry_wire_stream *s, const struct ferry_wire_rec *rec,
		  union view *v)
{
	switch (rec->type) {
	case FERRY_WIRE_HEADER:
		return ferry_wire_dec_header(rec, s);
	case FERRY_WIRE_PAGES:
	case FERRY_WIRE_ZERO_PAGES:
		return ferry_wire_dec_pages(s, rec, &v->pages);
	case FERRY_WIRE_BITMAP:
		return ferry_wire_dec_bitmap(s, rec, &v->bitmap);
	case FERRY_WIRE_VCPU:
		return ferry_wire_dec_vcpu(s, rec, &v->vcpu);
	case FERRY_WIRE_ROUND_END:
		return ferry_wire_dec_round_end(rec, &v->round);
	case FERRY_WIRE_SWITCHOVER:
		return ferry_wire_dec_switchover(rec, &v->mode);
	case FERRY_WIRE_COMPLETE:
		return ferry_wire_dec_complete(rec, &v->complete);
	case FERRY_WIRE_ERROR:
		return ferry_wire_dec_error(rec, &v->error);
	case FERRY_WIRE_PAGE_REQUEST:
		return ferry_wire_dec_page_request(s, rec, &v->req);
	case FERRY_WIRE_PAGE_EXTENT:
		return ferry_wire_dec_extent(s, rec, &v->extent);
	case FERRY_WIRE_ACCEPT:
		return ferry_wire_dec_accept(rec, &v->accept);
	case FERRY_WIRE_HEARTBEAT:
		return ferry_wire_dec_heartbeat(rec, &v->heartbeat);
	case FERRY_WIRE_REFETCH:
		return ferry_wire_dec_refetch(s, rec, &v->pages);
	case FERRY_WIRE_RESUME:
		return ferry_wire_dec_resume(rec, &v->resume);
	case FERRY_WIRE_COMMIT:
		return ferry_wire_dec_commit(rec, &v->commit);
	default:
		return -ENOSYS;	/* the reader let an unknown type through */
	}
}

#define BROKEN_PROMISE	(-10000)	/* a decoder accepted something bad */

static bool within(const void *p, size_t len, const struct ferry_wire_rec *rec)
{
	const uint8_t *b = p;

	return (b >= rec->meta && b + len <= rec->meta + rec->meta_len) ||
	       (b >= rec->data && b + len <= rec->data + rec->data_len);
}

static bool pages_sane(const struct ferry_wire_stream *s,
		       const struct ferry_wire_rec *rec,
		       const struct ferry_wire_pages *p)
{
	const struct ferry_wire_region *r = &s->regions[p->region];

	if (p->region >= s->nr_regions || !within(p->index, 4 * p->count, rec))
		return false;
	for (uint32_t i = 0; i < p->count; i++)
		if (p->index[i] >= r->nr_pages ||
		    (i && p->index[i] <= p->index[i - 1]))
			return false;
	return !p->data || (p->page_size == r->page_size &&
			    within(p->data, p->count * p->page_size, rec));
}

/* What every accepted view promises a caller about guest memory. */
static bool view_sane(const struct ferry_wire_stream *s,
		      const struct ferry_wire_rec *rec, const union view *v)
{
	switch (rec->type) {
	case FERRY_WIRE_PAGES:
	case FERRY_WIRE_ZERO_PAGES:
	case FERRY_WIRE_REFETCH:
		return pages_sane(s, rec, &v->pages);
	case FERRY_WIRE_BITMAP:
		return v->bitmap.region < s->nr_regions &&
		       (uint64_t)v->bitmap.first_page + v->bitmap.nr_bits <=
		       s->regions[v->bitmap.region].nr_pages &&
		       within(v->bitmap.words, (v->bitmap.nr_bits + 63) / 64 * 8,
			      rec);
	case FERRY_WIRE_VCPU:
		return v->vcpu.index < s->nr_vcpus &&
		       (!v->vcpu.regs_len ||
			within(v->vcpu.regs, v->vcpu.regs_len, rec));
	case FERRY_WIRE_PAGE_REQUEST:
		return v->req.region < s->nr_regions &&
		       (uint64_t)v->req.page + v->req.count <=
		       s->regions[v->req.region].nr_pages;
	default:
		return true;
	}
}

/* Parse and decode every record of bytes: 0, or the first error. */
static int decode_bytes(const uint8_t *bytes, size_t len, unsigned int *nr)
{
	struct ferry_wire_stream s = { 0 };
	struct ferry_wire_reader r;
	struct ferry_wire_rec rec;
	union view v;
	size_t off = 0;
	ssize_t n;
	int ret;

	ferry_wire_reader_init(&r, NULL);
	*nr = 0;
	while ((n = ferry_wire_parse(&r, bytes + off, len - off, &rec)) > 0) {
		off += (size_t)n;
		ret = decode(&s, &rec, &v);
		if (ret)
			return ret;
		if (!view_sane(&s, &rec, &v))
			return BROKEN_PROMISE;
		++*nr;
	}
	return (int)n;
}

/* The stream the fixture's channel holds, as 8-byte aligned bytes. */
static uint8_t *stream_copy(const struct fixture *fx)
{
	uint8_t *copy = aligned_alloc(4096, (fx->chan.len + 4095) & ~4095UL);

	if (copy)
		memcpy(copy, fx->chan.buf, fx->chan.len);
	return copy;
}

/*
 * Recompute the checksums of the records in bytes, as far as their headers
 * reach: a record whose payload runs past the end gets a good header.
 */
static void reseal(uint8_t *bytes, size_t len)
{
	size_t off = 0;

	while (off + FERRY_WIRE_HDR_SIZE <= len) {
		uint8_t *h = bytes + off;
		uint32_t meta_len, data_len;
		uint64_t sum;

		memcpy(&meta_len, h + 8, 4);
		memcpy(&data_len, h + 12, 4);
		if (len - off - FERRY_WIRE_HDR_SIZE >= meta_len) {
			sum = XXH3_64bits(h + FERRY_WIRE_HDR_SIZE, meta_len);
			memcpy(h + 16, &sum, 8);
		}
		sum = XXH3_64bits(h, 24);
		memcpy(h + 24, &sum, 8);
		off += FERRY_WIRE_HDR_SIZE + (size_t)meta_len + data_len;
	}
}

/* Offset of the nth record (from 0) of type in bytes, or -1. */
static long find_record(const uint8_t *bytes, size_t len, unsigned int type,
			unsigned int nth)
{
	size_t off = 0;

	while (off + FERRY_WIRE_HDR_SIZE <= len) {
		uint32_t meta_len, data_len;

		memcpy(&meta_len, bytes + off + 8, 4);
		memcpy(&data_len, bytes + off + 12, 4);
		if (bytes[off + 2] == type && !nth--)
			return (long)off;
		off += FERRY_WIRE_HDR_SIZE + (size_t)meta_len + data_len;
	}
	return -1;
}

/* ---- round trip ---- */

static enum test_result check_header(struct test_ctx *ctx,
				     const struct ferry_wire_stream *want,
				     const struct ferry_wire_stream *got)
{
	CHECK_EQ(ctx, got->version, FERRY_WIRE_VERSION);
	CHECK_EQ(ctx, got->kind, want->kind);
	CHECK_EQ(ctx, got->nr_vcpus, want->nr_vcpus);
	CHECK_EQ(ctx, got->nr_regions, want->nr_regions);
	for (unsigned int i = 0; i < want->nr_regions; i++) {
		const struct ferry_wire_region *a = &want->regions[i];
		const struct ferry_wire_region *b = &got->regions[i];

		CHECK(ctx, a->backing == b->backing && a->page_size ==
		      b->page_size && a->size == b->size && a->nr_pages ==
		      b->nr_pages && a->guest_base == b->guest_base,
		      "region %u differs after the round trip", i);
	}
	CHECK_EQ(ctx, got->desc_len, want->desc_len);
	CHECK(ctx, !memcmp(got->desc, want->desc, want->desc_len), "desc");
	return TEST_PASS;
}

static enum test_result check_pages(struct test_ctx *ctx,
				    const struct ferry_wire_pages *p,
				    const uint8_t *base,
				    const uint32_t *index, uint32_t count)
{
	CHECK_EQ(ctx, p->count, count);
	CHECK_EQ(ctx, p->nr_torn, 0);
	for (uint32_t i = 0; i < count; i++) {
		CHECK_EQ(ctx, p->index[i], index[i]);
		CHECK(ctx, !memcmp(p->data + i * p->page_size,
				   base + (size_t)index[i] * p->page_size,
				   p->page_size),
		      "page %u (index %u) differs", i, index[i]);
	}
	return TEST_PASS;
}

/* The next record from the fixture's channel, decoded. */
static int next(struct fixture *fx, struct ferry_wire_reader *r,
		struct ferry_wire_stream *s, struct ferry_wire_rec *rec,
		union view *v)
{
	ssize_t n = ferry_wire_recv(r, fx->rbuf, FERRY_WIRE_BUF_SIZE, rec);

	if (n <= 0)
		return n ? (int)n : -ENODATA;
	return decode(s, rec, v);
}

#define NEXT(want)							\
	do {								\
		CHECK_OK(ctx, next(&fx, &r, &s, &rec, &v));		\
		CHECK(ctx, rec.type == (want), "record %llu is %s",	\
		      (unsigned long long)rec.nr,			\
		      ferry_wire_type_name(rec.type));			\
	} while (0)

static uint32_t *index_run(uint32_t first, uint32_t count, uint32_t step)
{
	uint32_t *index = malloc(count * sizeof(*index));

	for (uint32_t i = 0; index && i < count; i++)
		index[i] = first + i * step;
	return index;
}

/* The largest record of each kind, sent and read back. */
static int send_max(struct fixture *fx, uint32_t *idx, uint32_t *zero,
		    uint64_t *words, uint8_t *blob, uint64_t *sums)
{
	struct ferry_wire_frame *f = &fx->frame;
	const struct ferry_wire_stream *s = &fx->stream;
	struct ferry_wire_bitmap bm = { 0, FERRY_WIRE_BITMAP_DIRTY, 0,
					FERRY_WIRE_MAX_BITS, words };
	struct ferry_wire_vcpu v = { 1, 0, FERRY_WIRE_MAX_REGS, blob };
	struct ferry_wire_extent e = { 0, 0, FERRY_WIRE_MAX_EXTENT, 0, sums };
	uint32_t huge_index[2] = { 0, 3 };
	char msg[FERRY_WIRE_MAX_MSG + 100];
	int ret;

	memset(msg, 'x', sizeof(msg) - 1);
	msg[sizeof(msg) - 1] = '\0';
	ret = send_frame(fx, ferry_wire_enc_header(f, s));
	ret = ret ? ret : send_batch(fx, FERRY_WIRE_PAGES, 0, idx,
				     FERRY_WIRE_MAX_PAGES, false);
	ret = ret ? ret : send_batch(fx, FERRY_WIRE_PAGES, 1, huge_index, 2,
				     false);
	ret = ret ? ret : send_batch(fx, FERRY_WIRE_ZERO_PAGES, 0, zero,
				     FERRY_WIRE_MAX_ZERO, false);
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_bitmap(f, s, &bm));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_vcpu(f, s, &v));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_extent(f, s, &e));
	ret = ret ? ret : send_frame(fx, ferry_wire_enc_error(f, EIO, msg));
	return ret;
}

static enum test_result round_trip_max(struct test_ctx *ctx)
{
	struct fixture fx;
	struct ferry_wire_reader r;
	struct ferry_wire_stream s;
	struct ferry_wire_rec rec;
	union view v;
	/* the last 256 pages of region 0 and 256 spread over the first MiB */
	uint32_t *idx = index_run(0, FERRY_WIRE_MAX_PAGES, 1);
	uint32_t *zero = index_run(7, FERRY_WIRE_MAX_ZERO, 500);
	uint32_t huge_index[2] = { 0, 3 };
	uint64_t *words = malloc(FERRY_WIRE_MAX_BITS / 8);
	uint8_t *blob = malloc(FERRY_WIRE_MAX_REGS);
	uint64_t *sums = malloc(FERRY_WIRE_MAX_EXTENT * 8);

	CHECK(ctx, idx && zero && words && blob && sums, "out of memory");
	CHECK_OK(ctx, fixture_init(&fx, BIG_PAGES));
	for (uint32_t i = 0; i < 256; i++) {
		idx[i] = i * 4;
		idx[256 + i] = (uint32_t)BIG_PAGES - 256 + i;
	}
	fill((uint8_t *)words, FERRY_WIRE_MAX_BITS / 8, 4);
	fill(blob, FERRY_WIRE_MAX_REGS, 5);
	fill((uint8_t *)sums, FERRY_WIRE_MAX_EXTENT * 8, 6);
	CHECK_OK(ctx, send_max(&fx, idx, zero, words, blob, sums));

	ferry_wire_reader_init(&r, &fx.chan.base);
	NEXT(FERRY_WIRE_HEADER);
	if (check_header(ctx, &fx.stream, &s))
		return TEST_FAIL;
	NEXT(FERRY_WIRE_PAGES);
	CHECK(ctx, (uintptr_t)v.pages.data % 4096 == 0, "data unaligned");
	if (check_pages(ctx, &v.pages, fx.guest, idx, FERRY_WIRE_MAX_PAGES))
		return TEST_FAIL;
	NEXT(FERRY_WIRE_PAGES);
	CHECK_EQ(ctx, v.pages.page_size, MIB2);
	CHECK_EQ(ctx, v.pages.request_id, 7);
	if (check_pages(ctx, &v.pages, fx.huge, huge_index, 2))
		return TEST_FAIL;
	NEXT(FERRY_WIRE_ZERO_PAGES);
	CHECK(ctx, v.pages.count == FERRY_WIRE_MAX_ZERO && !v.pages.data &&
	      !memcmp(v.pages.index, zero, 4 * FERRY_WIRE_MAX_ZERO),
	      "zero pages differ");
	NEXT(FERRY_WIRE_BITMAP);
	CHECK(ctx, v.bitmap.nr_bits == FERRY_WIRE_MAX_BITS &&
	      v.bitmap.kind == FERRY_WIRE_BITMAP_DIRTY &&
	      !memcmp(v.bitmap.words, words, FERRY_WIRE_MAX_BITS / 8),
	      "bitmap differs");
	NEXT(FERRY_WIRE_VCPU);
	CHECK(ctx, v.vcpu.index == 1 && v.vcpu.regs_len == FERRY_WIRE_MAX_REGS
	      && !memcmp(v.vcpu.regs, blob, FERRY_WIRE_MAX_REGS), "vcpu");
	NEXT(FERRY_WIRE_PAGE_EXTENT);
	CHECK(ctx, v.extent.count == FERRY_WIRE_MAX_EXTENT &&
	      !memcmp(v.extent.sums, sums, FERRY_WIRE_MAX_EXTENT * 8),
	      "extent differs");
	NEXT(FERRY_WIRE_ERROR);
	CHECK_EQ(ctx, strlen(v.error.msg), FERRY_WIRE_MAX_MSG);
	CHECK_EQ(ctx, ferry_wire_recv(&r, fx.rbuf, FERRY_WIRE_BUF_SIZE, &rec),
		 0);
	fixture_fini(&fx);
	return TEST_PASS;
}

#define NEXT_OF(fxp, rp, sp, want)					\
	do {								\
		CHECK_OK(ctx, next(fxp, rp, sp, &rec, &v));		\
		CHECK(ctx, rec.type == (want), "record %llu is %s",	\
		      (unsigned long long)rec.nr,			\
		      ferry_wire_type_name(rec.type));			\
	} while (0)

/* What send_recovery() sent, read back. */
static enum test_result check_recovery(struct test_ctx *ctx,
				       struct fixture *fx,
				       struct ferry_wire_reader *r,
				       struct ferry_wire_stream *s)
{
	struct ferry_wire_rec rec;
	union view v;

	NEXT_OF(fx, r, s, FERRY_WIRE_ACCEPT);
	CHECK(ctx, v.accept.version == FERRY_WIRE_VERSION &&
	      v.accept.id == fx->stream.id, "accept");
	NEXT_OF(fx, r, s, FERRY_WIRE_HEARTBEAT);
	CHECK(ctx, v.heartbeat.seq == 41 &&
	      v.heartbeat.data_received == 123456789, "heartbeat");
	NEXT_OF(fx, r, s, FERRY_WIRE_REFETCH);
	CHECK(ctx, v.pages.count == 3 && !v.pages.data &&
	      !v.pages.request_id && v.pages.index[2] == 8191, "refetch");
	NEXT_OF(fx, r, s, FERRY_WIRE_RESUME);
	CHECK(ctx, v.resume.id == fx->stream.id && v.resume.owed == 5 &&
	      v.resume.nr_bitmaps == 1, "resume");
	NEXT_OF(fx, r, s, FERRY_WIRE_BITMAP);
	CHECK(ctx, v.bitmap.kind == FERRY_WIRE_BITMAP_OWED &&
	      v.bitmap.first_page == 128 && v.bitmap.words[0] ==
	      bitmap_words[1], "owed bitmap");
	NEXT_OF(fx, r, s, FERRY_WIRE_COMMIT);
	CHECK_EQ(ctx, v.commit, fx->stream.id);
	return TEST_PASS;
}

static enum test_result round_trip_small(struct test_ctx *ctx)
{
	struct fixture fx;
	struct ferry_wire_reader r;
	struct ferry_wire_stream s;
	struct ferry_wire_rec rec;
	union view v;
	uint32_t one = 2;

	CHECK_OK(ctx, fixture_init(&fx, R0_PAGES));
	CHECK_OK(ctx, send_small(&fx, true));
	ferry_wire_reader_init(&r, &fx.chan.base);
	NEXT(FERRY_WIRE_HEADER);
	if (check_header(ctx, &fx.stream, &s))
		return TEST_FAIL;
	NEXT(FERRY_WIRE_PAGES);
	CHECK(ctx, !v.pages.live && v.pages.request_id == 7, "pages fields");
	if (check_pages(ctx, &v.pages, fx.guest, small_index, 3))
		return TEST_FAIL;
	NEXT(FERRY_WIRE_ZERO_PAGES);
	CHECK(ctx, v.pages.count == 3 && v.pages.index[2] == 100, "zero");
	NEXT(FERRY_WIRE_BITMAP);
	CHECK(ctx, v.bitmap.first_page == 64 && v.bitmap.nr_bits == 128 &&
	      v.bitmap.kind == FERRY_WIRE_BITMAP_STALE &&
	      !memcmp(v.bitmap.words, bitmap_words, 16), "bitmap");
	NEXT(FERRY_WIRE_VCPU);
	CHECK(ctx, v.vcpu.index == 1 && v.vcpu.mp_state == 3 &&
	      v.vcpu.regs_len == 64 && !memcmp(v.vcpu.regs, regs, 64), "vcpu");
	NEXT(FERRY_WIRE_PAGES);
	if (check_pages(ctx, &v.pages, fx.huge, &one, 1))
		return TEST_FAIL;
	NEXT(FERRY_WIRE_ROUND_END);
	CHECK(ctx, v.round.round == 3 && v.round.pages == 1234, "round");
	NEXT(FERRY_WIRE_SWITCHOVER);
	CHECK_EQ(ctx, v.mode, FERRY_WIRE_SWITCH_POSTCOPY);
	NEXT(FERRY_WIRE_PAGE_REQUEST);
	CHECK(ctx, v.req.region == 0 && v.req.page == 8000 && v.req.count == 4
	      && v.req.request_id == 99, "page request");
	NEXT(FERRY_WIRE_PAGE_EXTENT);
	CHECK(ctx, v.extent.first_page == 16 && v.extent.count == 3 &&
	      v.extent.file_offset == 1 << 20 && v.extent.sums[2] == 33,
	      "extent");
	NEXT(FERRY_WIRE_ERROR);
	CHECK(ctx, v.error.err == EIO && !strcmp(v.error.msg, "disk on fire"),
	      "error: %d %s", v.error.err, v.error.msg);
	if (check_recovery(ctx, &fx, &r, &s))
		return TEST_FAIL;
	NEXT(FERRY_WIRE_COMPLETE);
	CHECK(ctx, v.complete.pages == 5000 && v.complete.zero_pages == 600,
	      "complete");
	CHECK_EQ(ctx, rec.nr, 17);
	CHECK_EQ(ctx, ferry_wire_recv(&r, fx.rbuf, FERRY_WIRE_BUF_SIZE, &rec),
		 0);
	fixture_fini(&fx);
	return TEST_PASS;
}

/* Pages go out straight from guest memory: one iovec per run. */
static enum test_result pages_from_guest(struct test_ctx *ctx)
{
	static const uint32_t index[] = { 0, 1, 2, 10, 11, 63 };
	struct ferry_wire_stream s;
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	struct ferry_region *reg;
	struct ferry_mem *mem;
	int data_iovs = 0;

	CHECK(ctx, f, "out of memory");
	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_OK(ctx, ferry_mem_add_region(mem, FERRY_BACKING_SHMEM,
					   64 * KIB, &reg));
	fill(reg->alias, reg->size, 9);
	CHECK_OK(ctx, ferry_wire_stream_init(&s, mem, FERRY_WIRE_SNAPSHOT, 1,
					     NULL, 0));
	CHECK_EQ(ctx, s.regions[0].nr_pages, 64);
	CHECK_OK(ctx, ferry_wire_enc_pages(f, &s, &(struct ferry_wire_batch){
		.count = 6, .index = index, .base = reg->alias }));
	for (int i = 0; i < f->iovcnt; i++) {
		uint8_t *p = f->iov[i].iov_base;

		if (p >= reg->alias && p < reg->alias + reg->size)
			data_iovs++;
	}
	CHECK_EQ(ctx, data_iovs, 3);
	CHECK_EQ(ctx, f->data_len, 6 * KIB);
	CHECK(ctx, f->iov[f->iovcnt - 1].iov_base == reg->alias + 63 * KIB,
	      "the last run does not point into guest memory");
	ferry_mem_destroy(mem);
	free(f);
	return TEST_PASS;
}

/* A guest write between checksum and send tears a page of a live batch. */
static enum test_result live_torn_page(struct test_ctx *ctx)
{
	struct fixture fx;
	struct ferry_wire_reader r;
	struct ferry_wire_stream s;
	struct ferry_wire_rec rec;
	union view v;
	static const uint32_t index[] = { 5, 6, 7, 8 };

	CHECK_OK(ctx, fixture_init(&fx, R0_PAGES));
	CHECK_OK(ctx, send_frame(&fx, ferry_wire_enc_header(&fx.frame,
							    &fx.stream)));
	for (int live = 1; live >= 0; live--) {
		struct ferry_wire_batch b = { 0, 4, index, fx.guest, 0, live };

		CHECK_OK(ctx, ferry_wire_enc_pages(&fx.frame, &fx.stream, &b));
		fx.guest[7 * KIB + 100] ^= 0x40;	/* the guest writes */
		CHECK(ctx, ferry_wire_send(&fx.w, &fx.frame) > 0, "send");
	}
	ferry_wire_reader_init(&r, &fx.chan.base);
	NEXT(FERRY_WIRE_HEADER);
	NEXT(FERRY_WIRE_PAGES);
	CHECK(ctx, v.pages.live && v.pages.nr_torn == 1, "torn %u",
	      v.pages.nr_torn);
	for (uint32_t i = 0; i < 4; i++)
		CHECK_EQ(ctx, ferry_wire_page_torn(&v.pages, i), i == 2);
	CHECK_EQ(ctx, next(&fx, &r, &s, &rec, &v), -EBADMSG);
	CHECK(ctx, strstr(ferry_error_msg(), "record 2: PAGES page 2 (index 7) "
			  "checksum mismatch"), "reason: %s", ferry_error_msg());
	/* A migration takes the record and asks for the page again. */
	CHECK_OK(ctx, ferry_wire_dec_pages_tolerant(&s, &rec, &v.pages));
	CHECK(ctx, !v.pages.live && v.pages.nr_torn == 1 &&
	      ferry_wire_page_torn(&v.pages, 2), "tolerant: %u torn",
	      v.pages.nr_torn);
	fixture_fini(&fx);
	return TEST_PASS;
}

/* ---- hostile input ---- */

static int small_stream(struct fixture *fx, bool huge, uint8_t **bytes,
			size_t *len)
{
	int ret = fixture_init(fx, R0_PAGES);

	if (!ret)
		ret = send_small(fx, huge);
	*len = fx->chan.len;
	*bytes = ret ? NULL : stream_copy(fx);
	return ret ? ret : *bytes ? 0 : -ENOMEM;
}

static bool corruption_reason(const char *why)
{
	return strstr(why, "checksum mismatch") || strstr(why, "magic");
}

/* Each byte flipped three ways: always -EBADMSG, the checksum's doing. */
static enum test_result corrupt_every_byte(struct test_ctx *ctx)
{
	static const uint8_t masks[] = { 0x01, 0x80, 0xff };
	struct fixture fx;
	uint8_t *bytes, *copy;
	unsigned int nr, all;
	size_t len;
	int ret;

	CHECK_OK(ctx, small_stream(&fx, false, &bytes, &len));
	copy = aligned_alloc(4096, (len + 4095) & ~4095UL);
	CHECK_OK(ctx, decode_bytes(bytes, len, &all));
	CHECK_EQ(ctx, all, 17);
	for (size_t pos = 0; pos < len; pos++) {
		for (unsigned int m = 0; m < sizeof(masks); m++) {
			memcpy(copy, bytes, len);
			copy[pos] ^= masks[m];
			ret = decode_bytes(copy, len, &nr);
			CHECK(ctx, ret == -EBADMSG && corruption_reason(
			      ferry_error_msg()), "byte %zu ^ 0x%02x: %d after %u "
			      "records: %s", pos, masks[m], ret, nr,
			      ferry_error_msg());
		}
	}
	free(copy);
	free(bytes);
	fixture_fini(&fx);
	return TEST_PASS;
}

/* Record boundaries of bytes, ends[i] = end of record i. */
static unsigned int boundaries(const uint8_t *bytes, size_t len,
			       size_t *ends, unsigned int max)
{
	struct ferry_wire_reader r;
	struct ferry_wire_rec rec;
	unsigned int nr = 0;
	size_t off = 0;
	ssize_t n;

	ferry_wire_reader_init(&r, NULL);
	while (nr < max &&
	       (n = ferry_wire_parse(&r, bytes + off, len - off, &rec)) > 0)
		ends[nr++] = off += (size_t)n;
	return nr;
}

/* Read the channel dry: records read, and the last return. */
static ssize_t drain(struct fixture *fx, unsigned int *nr)
{
	struct ferry_wire_reader r;
	struct ferry_wire_rec rec;
	ssize_t n;

	ferry_wire_reader_init(&r, &fx->chan.base);
	fx->chan.pos = 0;
	*nr = 0;
	while ((n = ferry_wire_recv(&r, fx->rbuf, FERRY_WIRE_BUF_SIZE,
				    &rec)) > 0)
		++*nr;
	return n;
}

/* A stream cut at every length ends cleanly, or fails -EPIPE, never more. */
static enum test_result truncate_every_length(struct test_ctx *ctx)
{
	struct fixture fx;
	size_t ends[24], len;
	unsigned int nr_ends, nr, whole = 0;
	uint8_t *bytes;
	ssize_t n;

	CHECK_OK(ctx, small_stream(&fx, false, &bytes, &len));
	nr_ends = boundaries(bytes, len, ends, 24);
	CHECK_EQ(ctx, nr_ends, 17);
	for (size_t cut = 0; cut <= len; cut++) {
		bool boundary = whole < nr_ends && cut == ends[whole];

		fx.chan.limit = cut;
		n = drain(&fx, &nr);
		CHECK_EQ(ctx, nr, whole + boundary);
		if (boundary || !cut)
			CHECK(ctx, n == 0, "cut at %zu: %zd: %s", cut, n,
			      ferry_error_msg());
		else
			CHECK(ctx, n == -EPIPE && strstr(ferry_error_msg(),
			      "stream ended inside a"), "cut at %zu: %zd: %s",
			      cut, n, ferry_error_msg());
		whole += boundary;
	}
	fx.chan.limit = len - 1;
	CHECK_EQ(ctx, drain(&fx, &nr), -EPIPE);
	CHECK(ctx, strstr(ferry_error_msg(), "record 16: stream ended inside a "
			  "48-byte COMPLETE record (47 of 48 bytes)"),
	      "reason: %s", ferry_error_msg());
	fx.chan.limit = ends[0] + 10;
	CHECK_EQ(ctx, drain(&fx, &nr), -EPIPE);
	CHECK(ctx, strstr(ferry_error_msg(), "record 1: stream ended inside a "
			  "record header (10 of 32 bytes)"),
	      "reason: %s", ferry_error_msg());
	free(bytes);
	fixture_fini(&fx);
	return TEST_PASS;
}

/* A field of a record of the small stream, set to a hostile value. */
struct patch {
	unsigned int type;	/* the record's type */
	bool in_header;		/* offset in the record header, else meta */
	unsigned int offset;
	unsigned int size;	/* 1, 2, 4 or 8 bytes */
	uint64_t value;
	int err;
	const char *reason;	/* the reason must contain this */
};

#define H FERRY_WIRE_HEADER
#define P FERRY_WIRE_PAGES
#define Z FERRY_WIRE_ZERO_PAGES
#define B FERRY_WIRE_BITMAP
#define V FERRY_WIRE_VCPU

static const struct patch patches[] = {
	{ P, 0, 0, 4, 5, -EBADMSG,
	  "record 1: PAGES region 5 beyond the stream's 2 regions" },
	{ P, 0, 16, 4, 9000, -EBADMSG,
	  "record 1: PAGES index 9000 beyond region 0's 8192 pages" },
	{ P, 0, 4, 4, 0x80000001, -EBADMSG,
	  "PAGES count 2147483649 (1 to 512 allowed)" },
	{ P, 0, 4, 4, 0, -EBADMSG, "PAGES count 0" },
	{ P, 0, 4, 4, 2, -EBADMSG, "PAGES of 2 pages of 4096 bytes needs" },
	{ P, 0, 20, 4, 3, -EBADMSG, "PAGES indices not ascending at 1" },
	{ P, 0, 28, 4, 1, -EBADMSG, "PAGES padding at byte 28 is not zero" },
	{ P, 0, 32, 8, 1234, -EBADMSG,
	  "PAGES page 0 (index 3) checksum mismatch" },
	{ Z, 0, 4, 4, 0xffffffff, -EBADMSG,
	  "ZERO_PAGES count 4294967295 (1 to 16384 allowed)" },
	{ Z, 0, 24, 4, 8192, -EBADMSG,
	  "ZERO_PAGES index 8192 beyond region 0's 8192 pages" },
	{ B, 0, 8, 4, 8128, -EBADMSG,
	  "BITMAP pages [8128, 8256) beyond region 0's 8192 pages" },
	{ B, 0, 8, 4, 65, -EBADMSG, "BITMAP first page 65 not a multiple" },
	{ B, 0, 12, 4, 100, -EBADMSG, "BITMAP has bits set past its 100" },
	{ B, 0, 12, 4, 0xffffffff, -EBADMSG, "BITMAP bit count 4294967295" },
	{ B, 0, 4, 4, 9, -EBADMSG, "BITMAP kind 9 unknown" },
	{ V, 0, 0, 4, 2, -EBADMSG,
	  "record 4: VCPU index 2 beyond the stream's 2 vCPUs" },
	{ V, 0, 8, 4, 0xfffffff0, -E2BIG,
	  "VCPU 1 register blob of 4294967280 bytes (65536 at most)" },
	{ V, 0, 8, 4, 100, -EBADMSG, "VCPU needs 120 bytes of meta" },
	{ V, 0, 12, 4, 1, -EBADMSG, "VCPU reserved field is 1" },
	{ H, 0, 8, 2, 3, -EPROTO,
	  "record 0: stream is format version 3; this ferry reads version 2" },
	{ H, 0, 8, 2, 1, -EPROTO,
	  "record 0: stream is format version 1; this ferry reads version 2" },
	{ H, 0, 0, 1, 'X', -EBADMSG, "HEADER magic wrong" },
	{ H, 0, 10, 2, 9, -EBADMSG, "HEADER stream kind 9 unknown" },
	{ H, 0, 12, 4, 65, -EBADMSG, "HEADER has 65 regions (1 to 64" },
	{ H, 0, 16, 4, 0, -EBADMSG, "HEADER has 0 vCPUs" },
	{ H, 0, 20, 4, 0x7fffffff, -E2BIG,
	  "HEADER guest description of 2147483647 bytes (65536 at most)" },
	{ H, 0, 20, 4, 30, -EBADMSG, "HEADER needs 120 bytes of meta" },
	{ H, 0, 28, 4, 1, -EBADMSG, "HEADER reserved field is 4294967296" },
	{ H, 0, 32, 8, 0, -EBADMSG, "HEADER of a migration with id 0" },
	{ H, 0, 10, 2, 2, -EBADMSG, "HEADER of a snapshot with id" },
	{ H, 0, 40, 4, 7, -EBADMSG, "region 0: unknown backing 7" },
	{ H, 0, 44, 4, 21, -EBADMSG,
	  "region 0: page size 2097152 does not match shmem backing" },
	{ H, 0, 44, 4, 40, -EBADMSG, "region 0: page size 2^40" },
	{ H, 0, 48, 8, (32 << 20) + 1, -EBADMSG,
	  "region 0: size 33554433 is not a whole number" },
	{ H, 0, 48, 8, 0, -EBADMSG, "region 0: size 0 is not" },
	{ H, 0, 80, 8, 16 << 20, -EBADMSG,
	  "region 1 at 0x1000000 overlaps or precedes region 0" },
	{ H, 0, 80, 8, 0xffffffffffe00000ULL, -EBADMSG,
	  "region 1: guest base 0xffffffffffe00000 misaligned or wrapping" },
	{ H, 1, 2, 1, 77, -EBADMSG, "record 0: unknown record type 77" },
	{ P, 1, 3, 1, 0x80, -EBADMSG, "flags 0x80 not valid on a PAGES" },
	{ V, 1, 3, 1, 1, -EBADMSG, "flags 0x1 not valid on a VCPU record" },
	{ P, 1, 4, 4, 42, -EBADMSG,
	  "record 1: arrived numbered 42 (records lost" },
	{ P, 1, 8, 4, 0x7ffffff8, -E2BIG,
	  "PAGES meta of 2147483640 bytes (1048640 at most)" },
	{ P, 1, 8, 4, 36, -EBADMSG, "PAGES meta length 36 not a multiple" },
	{ P, 1, 12, 4, 256 << 20, -E2BIG, "PAGES data of 268435456 bytes" },
	{ V, 1, 12, 4, 4096, -EBADMSG,
	  "VCPU record carries 4096 bytes of page data" },
	{ P, 1, 12, 4, 3 * 4096 + 8, -EBADMSG,
	  "needs 56 meta and 12288 data bytes, record has 56 and 12296" },
	{ FERRY_WIRE_ROUND_END, 0, 4, 4, 1, -EBADMSG,
	  "ROUND_END reserved field is 1" },
	{ FERRY_WIRE_SWITCHOVER, 0, 0, 4, 7, -EBADMSG,
	  "SWITCHOVER mode 7 unknown" },
	{ FERRY_WIRE_PAGE_REQUEST, 0, 4, 4, 8191, -EBADMSG,
	  "PAGE_REQUEST pages [8191, 8195) beyond region 0's 8192 pages" },
	{ FERRY_WIRE_PAGE_REQUEST, 0, 0, 4, 2, -EBADMSG,
	  "PAGE_REQUEST region 2 beyond" },
	{ FERRY_WIRE_PAGE_REQUEST, 0, 16, 8, 0, -EBADMSG,
	  "PAGE_REQUEST id is 0" },
	{ FERRY_WIRE_PAGE_REQUEST, 0, 8, 4, 513, -EBADMSG,
	  "PAGE_REQUEST count 513" },
	{ FERRY_WIRE_PAGE_EXTENT, 0, 16, 8, 4095, -EBADMSG,
	  "PAGE_EXTENT file offset 4095 misaligned" },
	{ FERRY_WIRE_PAGE_EXTENT, 0, 16, 8, 0x7ffffffffffff000ULL, -EBADMSG,
	  "beyond any file" },
	{ FERRY_WIRE_PAGE_EXTENT, 0, 8, 4, 0x10000000, -EBADMSG,
	  "PAGE_EXTENT count 268435456" },
	{ FERRY_WIRE_PAGE_EXTENT, 0, 8, 4, 4, -EBADMSG,
	  "PAGE_EXTENT needs 56 bytes of meta, record has 48" },
	{ FERRY_WIRE_ERROR, 0, 8, 1, 0x1b, -EBADMSG,
	  "ERROR message byte 0 (0x1b) is not printable UTF-8" },
	{ FERRY_WIRE_ERROR, 0, 9, 1, 0xc0, -EBADMSG,
	  "ERROR message byte 1 (0xc0) is not printable" },
	{ FERRY_WIRE_ERROR, 0, 0, 4, 0, -EBADMSG, "ERROR code 0" },
	{ FERRY_WIRE_ERROR, 0, 4, 4, 5000, -EBADMSG,
	  "message length 5000 out of range" },
	{ FERRY_WIRE_COMPLETE, 1, 8, 4, 8, -EBADMSG,
	  "COMPLETE needs 16 bytes of meta, record has 8" },
	{ FERRY_WIRE_ACCEPT, 0, 8, 8, 0, -EBADMSG,
	  "ACCEPT of version 2, migration 0" },
	{ FERRY_WIRE_ACCEPT, 0, 2, 2, 1, -EBADMSG,
	  "ACCEPT reserved field is 1" },
	{ FERRY_WIRE_HEARTBEAT, 1, 8, 4, 8, -EBADMSG,
	  "HEARTBEAT needs 16 bytes of meta, record has 8" },
	{ FERRY_WIRE_REFETCH, 0, 8, 8, 7, -EBADMSG,
	  "REFETCH reserved field is 7" },
	{ FERRY_WIRE_REFETCH, 0, 20, 4, 9, -EBADMSG,
	  "REFETCH indices not ascending at 1" },
	{ FERRY_WIRE_REFETCH, 0, 24, 4, 8192, -EBADMSG,
	  "REFETCH index 8192 beyond region 0's 8192 pages" },
	{ FERRY_WIRE_RESUME, 0, 0, 8, 0, -EBADMSG, "RESUME of migration id 0" },
	{ FERRY_WIRE_RESUME, 0, 16, 4, 0, -EBADMSG,
	  "RESUME owes 5 pages in no bitmap" },
	{ FERRY_WIRE_RESUME, 0, 16, 4, 0x7fffffff, -EBADMSG,
	  "RESUME announces 2147483647 bitmaps" },
	{ FERRY_WIRE_RESUME, 0, 20, 4, 1, -EBADMSG,
	  "RESUME reserved field is 1" },
	{ FERRY_WIRE_COMMIT, 0, 0, 8, 0, -EBADMSG, "COMMIT of migration id 0" },
};

static int apply(uint8_t *bytes, size_t len, const struct patch *p)
{
	long off = find_record(bytes, len, p->type, 0);

	if (off < 0)
		return -ENOENT;
	off += p->in_header ? 0 : FERRY_WIRE_HDR_SIZE;
	memcpy(bytes + off + p->offset, &p->value, p->size);
	reseal(bytes, len);
	return 0;
}

/* Good checksums over bad fields: each refused, for the right reason. */
static enum test_result crafted_fields(struct test_ctx *ctx)
{
	struct fixture fx;
	uint8_t *bytes, *copy;
	unsigned int nr;
	size_t len;
	int ret;

	CHECK_OK(ctx, small_stream(&fx, true, &bytes, &len));
	copy = aligned_alloc(4096, (len + 4095) & ~4095UL);
	CHECK_OK(ctx, decode_bytes(bytes, len, &nr));
	for (size_t i = 0; i < sizeof(patches) / sizeof(patches[0]); i++) {
		const struct patch *p = &patches[i];

		memcpy(copy, bytes, len);
		CHECK_OK(ctx, apply(copy, len, p));
		ferry_error_clear();
		ret = decode_bytes(copy, len, &nr);
		CHECK(ctx, ret == p->err && strstr(ferry_error_msg(), p->reason),
		      "patch %zu (%s): %d (%s), want %d (%s)", i,
		      ferry_wire_type_name(p->type), ret, ferry_error_msg(),
		      p->err, p->reason);
	}
	free(copy);
	free(bytes);
	fixture_fini(&fx);
	return TEST_PASS;
}

/* A record larger than the buffer: -E2BIG before a byte of it is read. */
static enum test_result oversized(struct test_ctx *ctx)
{
	struct fixture fx;
	struct ferry_wire_reader r;
	struct ferry_wire_rec rec;
	uint32_t one = 1;

	CHECK_OK(ctx, fixture_init(&fx, R0_PAGES));
	CHECK_OK(ctx, send_batch(&fx, FERRY_WIRE_PAGES, 1, &one, 1, false));
	ferry_wire_reader_init(&r, &fx.chan.base);
	CHECK_EQ(ctx, ferry_wire_recv(&r, fx.rbuf, 1 << 20, &rec), -E2BIG);
	CHECK(ctx, strstr(ferry_error_msg(), "record 0: 2.0 MiB PAGES record "
			  "does not fit the 1.0 MiB receive buffer"),
	      "reason: %s", ferry_error_msg());
	CHECK_EQ(ctx, fx.chan.pos, FERRY_WIRE_HDR_SIZE);
	fixture_fini(&fx);
	return TEST_PASS;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Values that make counts and lengths interesting. */
static const uint32_t edgy[] = {
	0, 1, 2, 7, 8, 63, 64, 511, 512, 513, 4095, 4096, 8191, 8192, 16384,
	65536, 1 << 20, 0x7fffffff, 0x80000000, 0xfffffff8, 0xffffffff,
};

static void mutate(uint8_t *b, size_t len, uint64_t *seed)
{
	uint64_t x = xorshift(seed);
	size_t pos = (x >> 8) % len;

	switch (x % 4) {
	case 0:
		b[pos] ^= (uint8_t)(1 << (x >> 60 & 7));
		break;
	case 1:
		b[pos] = (uint8_t)(x >> 40);
		break;
	default:
		pos &= ~3UL;
		if (pos + 4 <= len)
			memcpy(b + pos, &edgy[(x >> 32) % (sizeof(edgy) / 4)],
			       4);
	}
}

/*
 * 20 000 mutated streams, most of them resealed so the decoders, not the
 * checksums, must refuse them.  Nothing may crash (the sanitized build
 * watches reads), and whatever a decoder accepts must keep its promises.
 */
static enum test_result random_mutation(struct test_ctx *ctx)
{
	struct fixture fx;
	uint64_t seed = 0x5eed5eedULL;
	unsigned int nr, accepted = 0, refused = 0;
	uint8_t *bytes, *copy;
	size_t len, cut;
	int ret;

	CHECK_OK(ctx, small_stream(&fx, false, &bytes, &len));
	copy = aligned_alloc(4096, (len + 4095) & ~4095UL);
	for (int iter = 0; iter < 20000; iter++) {
		memcpy(copy, bytes, len);
		for (uint64_t m = xorshift(&seed) % 4 + 1; m--;)
			mutate(copy, len, &seed);
		cut = xorshift(&seed) % 8 ? len : xorshift(&seed) % len;
		if (xorshift(&seed) % 8)
			reseal(copy, cut);
		ret = decode_bytes(copy, cut, &nr);
		CHECK(ctx, ret != BROKEN_PROMISE && ret != -ENOSYS,
		      "iteration %d: record %u decoded to a bad view", iter,
		      nr);
		CHECK(ctx, ret <= 0, "iteration %d: %d", iter, ret);
		ret ? refused++ : accepted++;
	}
	CHECK(ctx, refused > 10000 && accepted, "%u of 20000 refused, %u "
	      "accepted", refused, accepted);
	free(copy);
	free(bytes);
	fixture_fini(&fx);
	return TEST_PASS;
}

/* Encoders refuse what a decoder would refuse. */
static enum test_result encoder_checks(struct test_ctx *ctx)
{
	static const uint32_t unsorted[] = { 5, 4 }, beyond[] = { 8192 };
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	struct ferry_wire_stream s;
	struct ferry_wire_vcpu v = { 2, 0, 0, NULL };
	struct ferry_wire_batch b = { .count = 2, .index = unsorted };

	CHECK(ctx, f, "out of memory");
	stream_desc(&s, R0_PAGES);
	CHECK_EQ(ctx, ferry_wire_enc_zero_pages(f, &s, &b), -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "encoding: ZERO_PAGES indices not "
			  "ascending at 1 (4 after 5)"), "%s", ferry_error_msg());
	b = (struct ferry_wire_batch){ .count = 1, .index = beyond };
	CHECK_EQ(ctx, ferry_wire_enc_zero_pages(f, &s, &b), -EINVAL);
	CHECK_EQ(ctx, ferry_wire_enc_vcpu(f, &s, &v), -EINVAL);
	b.index = unsorted;
	b.count = 3;
	b.region = 1;
	CHECK_EQ(ctx, ferry_wire_enc_pages(f, &s, &b), -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "PAGES of 3 pages is 6291456 bytes"),
	      "%s", ferry_error_msg());
	s.regions[1].guest_base = 0;
	CHECK_EQ(ctx, ferry_wire_enc_header(f, &s), -EINVAL);
	CHECK_EQ(ctx, ferry_wire_enc_switchover(f, 0), -EINVAL);
	CHECK_OK(ctx, ferry_wire_enc_error(f, ENOSPC, "bad\x1b[31m\n!\xc0"));
	CHECK(ctx, !memcmp(f->iov[2].iov_base, "bad?[31m?!?", 11), "%.*s",
	      (int)f->iov[2].iov_len, (char *)f->iov[2].iov_base);
	free(f);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "wire_round_trip", round_trip_small, 0, 0, 0, 0, 0 },
	{ "wire_round_trip_max", round_trip_max, 0, 0, 0, 0, 0 },
	{ "wire_pages_from_guest", pages_from_guest, 0, 0, 0, 0, 0 },
	{ "wire_live_torn_page", live_torn_page, 0, 0, 0, 0, 0 },
	{ "wire_corrupt_every_byte", corrupt_every_byte, 0, 0, 0, 0, 0 },
	{ "wire_truncate_every_length", truncate_every_length, 0, 0, 0, 0, 0 },
	{ "wire_crafted_fields", crafted_fields, 0, 0, 0, 0, 0 },
	{ "wire_oversized", oversized, 0, 0, 0, 0, 0 },
	{ "wire_random_mutation", random_mutation, 0, 0, 0, 0, 0 },
	{ "wire_encoder_checks", encoder_checks, 0, 0, 0, 0, 0 },
};

TEST_SUITE(wire, cases)
