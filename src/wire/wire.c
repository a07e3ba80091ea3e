// SPDX-License-Identifier: MIT
/*
 * wire: the record stream, both ways (docs/wire.md has the byte layout).
 *
 * Every check below runs on the decoded fields, so an encoder and a decoder
 * share it: what an encoder accepts, a decoder accepts.  A decoder reads
 * nothing of the payload that the header's lengths and the meta checksum
 * have not vouched for, and nothing past the fixed fields that a length
 * check has not bounded.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/*
 * Every byte of page data is hashed once on each side, so the hash's speed
 * is the stream's: libxxhash's dispatcher picks AVX2 or AVX-512 at run time
 * (about 70 GB/s here, against 13 for the SSE2 baseline).  The sums are
 * the same whichever code computes them.
 */
#if defined(__x86_64__) && __has_include(<xxh_x86dispatch.h>)
#define XXH_DISPATCH_DISABLE_REPLACE
#include <xxh_x86dispatch.h>
#define sum64		XXH3_64bits_dispatch
#define sum64_update	XXH3_64bits_update_dispatch
#else
#define sum64		XXH3_64bits
#define sum64_update	XXH3_64bits_update
#endif

#include "base/error.h"
#include "ferry/net.h"
#include "ferry/wire.h"
#include "wire/wire.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "the wire is little-endian: this host needs byte swapping");
_Static_assert(sizeof(struct wire_rec_hdr) == FERRY_WIRE_HDR_SIZE, "hdr");
_Static_assert(WIRE_PAGES_MAX_META + FERRY_WIRE_HDR_SIZE <= 8192, "buf");
_Static_assert(FERRY_WIRE_MAX_META + FERRY_WIRE_HDR_SIZE <=
	       FERRY_WIRE_BUF_SIZE, "buf");

static const char *const type_names[FERRY_WIRE_TYPE_COUNT] = {
	[FERRY_WIRE_HEADER] = "HEADER",
	[FERRY_WIRE_PAGES] = "PAGES",
	[FERRY_WIRE_ZERO_PAGES] = "ZERO_PAGES",
	[FERRY_WIRE_BITMAP] = "BITMAP",
	[FERRY_WIRE_VCPU] = "VCPU",
	[FERRY_WIRE_ROUND_END] = "ROUND_END",
	[FERRY_WIRE_SWITCHOVER] = "SWITCHOVER",
	[FERRY_WIRE_COMPLETE] = "COMPLETE",
	[FERRY_WIRE_ERROR] = "ERROR",
	[FERRY_WIRE_PAGE_REQUEST] = "PAGE_REQUEST",
	[FERRY_WIRE_PAGE_EXTENT] = "PAGE_EXTENT",
};

static const uint8_t zeroes[8];

const char *ferry_wire_type_name(unsigned int type)
{
	static _Thread_local char unknown[24];

	if (type && type < FERRY_WIRE_TYPE_COUNT)
		return type_names[type];
	snprintf(unknown, sizeof(unknown), "type %u", type);
	return unknown;
}

uint64_t ferry_wire_page_sum(const void *page, size_t page_size)
{
	return sum64(page, page_size);
}

static uint32_t align8(uint64_t len)
{
	return (uint32_t)((len + 7) & ~7ULL);
}

/* "32 bytes", "12.5 KiB", "1.0 MiB": record sizes in reasons. */
static const char *fmt_size(char *buf, size_t len, uint64_t bytes)
{
	if (bytes < 1024)
		snprintf(buf, len, "%llu-byte", (unsigned long long)bytes);
	else if (bytes < (1 << 20))
		snprintf(buf, len, "%.1f KiB", bytes / 1024.0);
	else
		snprintf(buf, len, "%.1f MiB", bytes / 1048576.0);
	return buf;
}

/*
 * Checks report through here: a decoder names the record ("record 17:
 * ...") and fails -EBADMSG; an encoder fails -EINVAL, its caller's bug.
 */
struct chk {
	bool decoding;
	uint64_t nr;
};

static struct chk dec_chk(const struct ferry_wire_rec *rec)
{
	return (struct chk){ .decoding = true, .nr = rec->nr };
}

static const struct chk enc = { .decoding = false };

static int vbad(const struct chk *ck, int err, const char *fmt, va_list ap)
{
	char msg[400];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (!ck->decoding)
		return ferry_fail(-EINVAL, "encoding: %s", msg);
	return ferry_fail(err, "record %llu: %s", (unsigned long long)ck->nr,
			  msg);
}

__attribute__((format(printf, 2, 3)))
static int bad(const struct chk *ck, const char *fmt, ...)
{
	va_list ap;
	int ret;

	va_start(ap, fmt);
	ret = vbad(ck, -EBADMSG, fmt, ap);
	va_end(ap);
	return ret;
}

/* Same, with another errno when decoding (-EPROTO, -E2BIG). */
__attribute__((format(printf, 3, 4)))
static int bad_err(const struct chk *ck, int err, const char *fmt, ...)
{
	va_list ap;
	int ret;

	va_start(ap, fmt);
	ret = vbad(ck, err, fmt, ap);
	va_end(ap);
	return ret;
}

/* ---- checks shared by encoders and decoders ---- */

static int check_region(const struct chk *ck,
			const struct ferry_wire_stream *s, const char *what,
			uint32_t region)
{
	if (region < s->nr_regions)
		return 0;
	return bad(ck, "%s region %u beyond the stream's %u regions", what,
		   region, s->nr_regions);
}

static int check_count(const struct chk *ck, const char *what,
		       uint64_t count, uint64_t max)
{
	if (count && count <= max)
		return 0;
	return bad(ck, "%s count %llu (1 to %llu allowed)", what,
		   (unsigned long long)count, (unsigned long long)max);
}

/* Pages [first, first + count) lie inside the region (no wrap: u64). */
static int check_run(const struct chk *ck, const struct ferry_wire_stream *s,
		     const char *what, uint32_t region, uint64_t first,
		     uint64_t count)
{
	const struct ferry_wire_region *r = &s->regions[region];

	if (first + count <= r->nr_pages)
		return 0;
	return bad(ck, "%s pages [%llu, %llu) beyond region %u's %llu pages",
		   what, (unsigned long long)first,
		   (unsigned long long)(first + count), region,
		   (unsigned long long)r->nr_pages);
}

/* A reply to or a request for these pages must fit one PAGES record. */
static int check_batch_data(const struct chk *ck,
			    const struct ferry_wire_stream *s, const char *what,
			    uint32_t region, uint32_t count)
{
	uint64_t bytes = (uint64_t)count * s->regions[region].page_size;

	if (bytes <= FERRY_WIRE_MAX_DATA)
		return 0;
	return bad(ck, "%s of %u pages is %llu bytes of data (%u at most)",
		   what, count, (unsigned long long)bytes, FERRY_WIRE_MAX_DATA);
}

static int check_indices(const struct chk *ck,
			 const struct ferry_wire_stream *s, const char *what,
			 uint32_t region, const uint32_t *index,
			 uint32_t count)
{
	uint64_t nr_pages = s->regions[region].nr_pages;

	for (uint32_t i = 0; i < count; i++) {
		if (index[i] >= nr_pages)
			return bad(ck, "%s index %u beyond region %u's %llu "
				   "pages", what, index[i], region,
				   (unsigned long long)nr_pages);
		if (i && index[i] <= index[i - 1])
			return bad(ck, "%s indices not ascending at %u "
				   "(%u after %u)", what, i, index[i],
				   index[i - 1]);
	}
	return 0;
}

static int check_zero(const struct chk *ck, const char *what,
		      uint64_t value)
{
	return value ? bad(ck, "%s reserved field is %llu, not 0", what,
			   (unsigned long long)value) : 0;
}

static int check_backing(const struct chk *ck, unsigned int i,
			 const struct ferry_wire_region *r)
{
	size_t want;

	if ((unsigned int)r->backing >= FERRY_BACKING_COUNT)
		return bad(ck, "region %u: unknown backing %u", i,
			   (unsigned int)r->backing);
	want = ferry_backing_page_size(r->backing);
	if (r->page_size != want)
		return bad(ck, "region %u: page size %llu does not match %s "
			   "backing (%zu)", i,
			   (unsigned long long)r->page_size,
			   ferry_backing_name(r->backing), want);
	return 0;
}

static int check_extent_of(const struct chk *ck, unsigned int i,
			   const struct ferry_wire_region *r)
{
	if (!r->size || r->size % r->page_size ||
	    r->nr_pages != r->size / r->page_size)
		return bad(ck, "region %u: size %llu is not a whole number of "
			   "its %llu-byte pages", i,
			   (unsigned long long)r->size,
			   (unsigned long long)r->page_size);
	if (r->nr_pages > UINT32_MAX)
		return bad(ck, "region %u: %llu pages (2^32 at most)", i,
			   (unsigned long long)r->nr_pages);
	if (r->guest_base % r->page_size ||
	    r->guest_base + r->size < r->guest_base)
		return bad(ck, "region %u: guest base 0x%llx misaligned or "
			   "wrapping", i, (unsigned long long)r->guest_base);
	return 0;
}

/* Regions in ascending guest-physical order, none overlapping. */
static int check_order(const struct chk *ck, unsigned int i,
		       const struct ferry_wire_region *prev,
		       const struct ferry_wire_region *r)
{
	if (r->guest_base >= prev->guest_base + prev->size)
		return 0;
	return bad(ck, "region %u at 0x%llx overlaps or precedes region %u "
		   "[0x%llx, 0x%llx)", i, (unsigned long long)r->guest_base,
		   i - 1, (unsigned long long)prev->guest_base,
		   (unsigned long long)(prev->guest_base + prev->size));
}

static int check_regions(const struct chk *ck,
			 const struct ferry_wire_stream *s)
{
	const struct ferry_wire_region *r = s->regions;
	int ret = 0;

	for (unsigned int i = 0; i < s->nr_regions && !ret; i++) {
		ret = check_backing(ck, i, &r[i]);
		if (!ret)
			ret = check_extent_of(ck, i, &r[i]);
		if (!ret && i)
			ret = check_order(ck, i, &r[i - 1], &r[i]);
	}
	return ret;
}

/* The counts of a stream description; its regions are checked apart. */
static int check_counts(const struct chk *ck,
			const struct ferry_wire_stream *s)
{
	if (s->kind != FERRY_WIRE_MIGRATION && s->kind != FERRY_WIRE_SNAPSHOT)
		return bad(ck, "HEADER stream kind %u unknown", s->kind);
	if (!s->nr_regions || s->nr_regions > FERRY_WIRE_MAX_REGIONS)
		return bad(ck, "HEADER has %u regions (1 to %u allowed)",
			   s->nr_regions, FERRY_WIRE_MAX_REGIONS);
	if (!s->nr_vcpus || s->nr_vcpus > FERRY_WIRE_MAX_VCPUS)
		return bad(ck, "HEADER has %u vCPUs (1 to %u allowed)",
			   s->nr_vcpus, FERRY_WIRE_MAX_VCPUS);
	if (s->desc_len > FERRY_WIRE_MAX_DESC)
		return bad_err(ck, -E2BIG, "HEADER guest description of %u "
			       "bytes (%u at most)", s->desc_len,
			       FERRY_WIRE_MAX_DESC);
	return 0;
}

static int check_stream(const struct chk *ck,
			const struct ferry_wire_stream *s)
{
	int ret = check_counts(ck, s);

	return ret ? ret : check_regions(ck, s);
}

static int check_bitmap(const struct chk *ck,
			const struct ferry_wire_stream *s,
			const struct ferry_wire_bitmap *b)
{
	int ret = check_region(ck, s, "BITMAP", b->region);

	if (!ret && b->kind != FERRY_WIRE_BITMAP_DIRTY &&
	    b->kind != FERRY_WIRE_BITMAP_STALE)
		ret = bad(ck, "BITMAP kind %u unknown", b->kind);
	if (!ret)
		ret = check_count(ck, "BITMAP bit", b->nr_bits,
				  FERRY_WIRE_MAX_BITS);
	if (!ret && b->first_page % 64)
		ret = bad(ck, "BITMAP first page %u not a multiple of 64",
			  b->first_page);
	if (!ret)
		ret = check_run(ck, s, "BITMAP", b->region, b->first_page,
				b->nr_bits);
	return ret;
}

/* No set bit past nr_bits, so a reader may OR whole words. */
static int check_bitmap_tail(const struct chk *ck,
			     const struct ferry_wire_bitmap *b)
{
	uint32_t tail = b->nr_bits % 64;

	if (!tail || !(b->words[b->nr_bits / 64] >> tail))
		return 0;
	return bad(ck, "BITMAP has bits set past its %u bits", b->nr_bits);
}

static int check_vcpu(const struct chk *ck, const struct ferry_wire_stream *s,
		      const struct ferry_wire_vcpu *v)
{
	if (v->index >= s->nr_vcpus)
		return bad(ck, "VCPU index %u beyond the stream's %u vCPUs",
			   v->index, s->nr_vcpus);
	if (v->regs_len > FERRY_WIRE_MAX_REGS)
		return bad_err(ck, -E2BIG, "VCPU %u register blob of %u "
			       "bytes (%u at most)", v->index, v->regs_len,
			       FERRY_WIRE_MAX_REGS);
	return 0;
}

static int check_request(const struct chk *ck,
			 const struct ferry_wire_stream *s,
			 const struct ferry_wire_page_request *q)
{
	const char *what = "PAGE_REQUEST";
	int ret = check_region(ck, s, what, q->region);

	if (!ret)
		ret = check_count(ck, what, q->count, FERRY_WIRE_MAX_PAGES);
	if (!ret)
		ret = check_run(ck, s, what, q->region, q->page, q->count);
	if (!ret)
		ret = check_batch_data(ck, s, what, q->region, q->count);
	if (!ret && !q->request_id)
		ret = bad(ck, "PAGE_REQUEST id is 0");
	return ret;
}

static int check_extent(const struct chk *ck,
			const struct ferry_wire_stream *s,
			const struct ferry_wire_extent *e)
{
	const char *what = "PAGE_EXTENT";
	int ret = check_region(ck, s, what, e->region);
	uint64_t page_size, bytes;

	if (!ret)
		ret = check_count(ck, what, e->count, FERRY_WIRE_MAX_EXTENT);
	if (!ret)
		ret = check_run(ck, s, what, e->region, e->first_page,
				e->count);
	if (ret)
		return ret;
	page_size = s->regions[e->region].page_size;
	bytes = e->count * page_size;
	if (e->file_offset % page_size || e->file_offset > INT64_MAX - bytes)
		return bad(ck, "PAGE_EXTENT file offset %llu misaligned or "
			   "beyond any file", (unsigned long long)e->file_offset);
	return 0;
}

static bool utf8_cont(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return false;
	return true;
}

/* Bytes in the UTF-8 sequence at p (at most left), or 0 if invalid. */
static size_t utf8_seq(const uint8_t *p, size_t left)
{
	size_t n;

	if (p[0] >= 0x20 && p[0] < 0x7f)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4;
	else
		return 0;	/* control characters, DEL, stray bytes */
	if (n > left || !utf8_cont(p + 1, n - 1))
		return 0;
	if ((n == 3 && p[0] == 0xe0 && p[1] < 0xa0) ||
	    (n == 4 && p[0] == 0xf0 && p[1] < 0x90) ||
	    (n == 4 && p[0] == 0xf4 && p[1] > 0x8f))
		return 0;	/* overlong, or beyond U+10FFFF */
	return n;
}

/* Printable UTF-8: a peer's message may end up on a terminal. */
static int check_text(const struct chk *ck, const uint8_t *text, size_t len)
{
	for (size_t i = 0, n; i < len; i += n) {
		n = utf8_seq(text + i, len - i);
		if (!n)
			return bad(ck, "ERROR message byte %zu (0x%02x) is not "
				   "printable UTF-8", i, text[i]);
	}
	return 0;
}

/* ---- encoding ---- */

static void frame_start(struct ferry_wire_frame *f, enum ferry_wire_type type,
			const void *fixed, size_t len)
{
	f->type = type;
	f->flags = 0;
	f->data_len = 0;
	memcpy(f->fixed, fixed, len);
	f->iov[0] = (struct iovec){ f->hdr, FERRY_WIRE_HDR_SIZE };
	f->iov[1] = (struct iovec){ f->fixed, len };
	f->iovcnt = 2;
	f->meta_len = (uint32_t)len;
}

static void frame_meta(struct ferry_wire_frame *f, const void *p, size_t len)
{
	if (!len)
		return;
	f->iov[f->iovcnt++] = (struct iovec){ (void *)p, len };
	f->meta_len += (uint32_t)len;
}

static void frame_pad(struct ferry_wire_frame *f)
{
	frame_meta(f, zeroes, align8(f->meta_len) - f->meta_len);
}

/*
 * Checksum the meta: every iov so far but the header.  The streaming state
 * comes from the library, whose layout it is (no struct on our stack).
 */
static int frame_seal_meta(struct ferry_wire_frame *f)
{
	XXH3_state_t *state;

	if (f->iovcnt == 2) {
		f->meta_sum = sum64(f->iov[1].iov_base, f->iov[1].iov_len);
		return 0;
	}
	state = XXH3_createState();
	if (!state)
		return ferry_fail(-ENOMEM, "encoding %s: out of memory",
				  ferry_wire_type_name(f->type));
	XXH3_64bits_reset(state);
	for (int i = 1; i < f->iovcnt; i++)
		sum64_update(state, f->iov[i].iov_base, f->iov[i].iov_len);
	f->meta_sum = XXH3_64bits_digest(state);
	XXH3_freeState(state);
	return 0;
}

/* Page data, one iov per run of consecutive pages. */
static void frame_data(struct ferry_wire_frame *f, const uint8_t *p,
		       size_t len, bool extend)
{
	if (extend)
		f->iov[f->iovcnt - 1].iov_len += len;
	else
		f->iov[f->iovcnt++] = (struct iovec){ (void *)p, len };
	f->data_len += (uint32_t)len;
}

/* A record of fixed fields only. */
static int enc_fixed(struct ferry_wire_frame *f, enum ferry_wire_type type,
		     const void *fixed, size_t len)
{
	frame_start(f, type, fixed, len);
	return frame_seal_meta(f);
}

/* Fixed fields, then a blob, padded to 8 bytes. */
static int enc_blob(struct ferry_wire_frame *f, enum ferry_wire_type type,
		    const void *fixed, size_t len, const void *blob,
		    size_t blob_len)
{
	frame_start(f, type, fixed, len);
	frame_meta(f, blob, blob_len);
	frame_pad(f);
	return frame_seal_meta(f);
}

ssize_t ferry_wire_seal(struct ferry_wire_frame *f, uint64_t nr)
{
	struct wire_rec_hdr h = {
		.magic = WIRE_REC_MAGIC,
		.type = (uint8_t)f->type,
		.flags = (uint8_t)f->flags,
		.nr = (uint32_t)nr,
		.meta_len = f->meta_len,
		.data_len = f->data_len,
		.meta_sum = f->meta_sum,
	};

	h.head_sum = sum64(&h, offsetof(struct wire_rec_hdr, head_sum));
	memcpy(f->hdr, &h, sizeof(h));
	return (ssize_t)FERRY_WIRE_HDR_SIZE + f->meta_len + f->data_len;
}

static uint32_t page_shift(uint64_t page_size)
{
	return (uint32_t)__builtin_ctzll(page_size);
}

static void put_regions(struct ferry_wire_frame *f,
			const struct ferry_wire_stream *s)
{
	struct wire_region *out = (struct wire_region *)f->table;

	for (unsigned int i = 0; i < s->nr_regions; i++)
		out[i] = (struct wire_region){
			.backing = s->regions[i].backing,
			.page_shift = page_shift(s->regions[i].page_size),
			.size = s->regions[i].size,
			.guest_base = s->regions[i].guest_base,
		};
	frame_meta(f, out, s->nr_regions * sizeof(*out));
}

int ferry_wire_enc_header(struct ferry_wire_frame *f,
			  const struct ferry_wire_stream *s)
{
	struct wire_header fx = {
		.magic = WIRE_STREAM_MAGIC,
		.version = FERRY_WIRE_VERSION,
		.kind = (uint16_t)s->kind,
		.nr_regions = s->nr_regions,
		.nr_vcpus = s->nr_vcpus,
		.desc_len = s->desc_len,
	};
	int ret = check_stream(&enc, s);

	if (ret)
		return ret;
	frame_start(f, FERRY_WIRE_HEADER, &fx, sizeof(fx));
	put_regions(f, s);
	frame_meta(f, s->desc, s->desc_len);
	frame_pad(f);
	return frame_seal_meta(f);
}

static int check_batch(const struct ferry_wire_stream *s,
		       const struct ferry_wire_batch *b, const char *what,
		       uint32_t max)
{
	int ret = check_region(&enc, s, what, b->region);

	if (!ret)
		ret = check_count(&enc, what, b->count, max);
	if (!ret && max == FERRY_WIRE_MAX_PAGES)
		ret = check_batch_data(&enc, s, what, b->region, b->count);
	if (!ret)
		ret = check_indices(&enc, s, what, b->region, b->index,
				    b->count);
	return ret;
}

static void start_batch(struct ferry_wire_frame *f, enum ferry_wire_type type,
			const struct ferry_wire_batch *b)
{
	struct wire_pages fx = {
		.region = b->region,
		.count = b->count,
		.request_id = b->request_id,
	};

	frame_start(f, type, &fx, sizeof(fx));
	frame_meta(f, b->index, (size_t)b->count * sizeof(uint32_t));
	frame_pad(f);
}

int ferry_wire_enc_zero_pages(struct ferry_wire_frame *f,
			      const struct ferry_wire_stream *s,
			      const struct ferry_wire_batch *b)
{
	int ret = check_batch(s, b, "ZERO_PAGES", FERRY_WIRE_MAX_ZERO);

	if (ret)
		return ret;
	start_batch(f, FERRY_WIRE_ZERO_PAGES, b);
	return frame_seal_meta(f);
}

int ferry_wire_enc_pages(struct ferry_wire_frame *f,
			 const struct ferry_wire_stream *s,
			 const struct ferry_wire_batch *b)
{
	int ret = check_batch(s, b, "PAGES", FERRY_WIRE_MAX_PAGES);
	size_t page_size;
	const uint8_t *base = b->base;

	if (ret)
		return ret;
	page_size = s->regions[b->region].page_size;
	start_batch(f, FERRY_WIRE_PAGES, b);
	for (uint32_t i = 0; i < b->count; i++)
		f->table[i] = ferry_wire_page_sum(base + (size_t)b->index[i] *
						  page_size, page_size);
	frame_meta(f, f->table, (size_t)b->count * sizeof(uint64_t));
	ret = frame_seal_meta(f);
	for (uint32_t i = 0; !ret && i < b->count; i++)
		frame_data(f, base + (size_t)b->index[i] * page_size,
			   page_size, i && b->index[i] == b->index[i - 1] + 1);
	f->flags = b->live ? FERRY_WIRE_F_LIVE : 0;
	return ret;
}

int ferry_wire_enc_bitmap(struct ferry_wire_frame *f,
			  const struct ferry_wire_stream *s,
			  const struct ferry_wire_bitmap *b)
{
	struct wire_bitmap fx = {
		.region = b->region,
		.kind = b->kind,
		.first_page = b->first_page,
		.nr_bits = b->nr_bits,
	};
	int ret = check_bitmap(&enc, s, b);

	if (!ret)
		ret = check_bitmap_tail(&enc, b);
	if (ret)
		return ret;
	return enc_blob(f, FERRY_WIRE_BITMAP, &fx, sizeof(fx), b->words,
			(b->nr_bits + 63) / 64 * sizeof(uint64_t));
}

int ferry_wire_enc_vcpu(struct ferry_wire_frame *f,
			const struct ferry_wire_stream *s,
			const struct ferry_wire_vcpu *v)
{
	struct wire_vcpu fx = {
		.index = v->index,
		.mp_state = v->mp_state,
		.regs_len = v->regs_len,
	};
	int ret = check_vcpu(&enc, s, v);

	if (ret)
		return ret;
	return enc_blob(f, FERRY_WIRE_VCPU, &fx, sizeof(fx), v->regs,
			v->regs_len);
}

int ferry_wire_enc_round_end(struct ferry_wire_frame *f,
			     const struct ferry_wire_round_end *r)
{
	struct wire_round_end fx = { .round = r->round, .pages = r->pages };

	return enc_fixed(f, FERRY_WIRE_ROUND_END, &fx, sizeof(fx));
}

static bool mode_known(uint32_t mode)
{
	return mode == FERRY_WIRE_SWITCH_PRECOPY ||
	       mode == FERRY_WIRE_SWITCH_POSTCOPY;
}

int ferry_wire_enc_switchover(struct ferry_wire_frame *f,
			      enum ferry_wire_switch_mode mode)
{
	struct wire_switchover fx = { .mode = mode };

	if (!mode_known(mode))
		return bad(&enc, "SWITCHOVER mode %u unknown", mode);
	return enc_fixed(f, FERRY_WIRE_SWITCHOVER, &fx, sizeof(fx));
}

int ferry_wire_enc_complete(struct ferry_wire_frame *f,
			    const struct ferry_wire_complete *c)
{
	struct wire_complete fx = {
		.pages = c->pages,
		.zero_pages = c->zero_pages,
	};

	return enc_fixed(f, FERRY_WIRE_COMPLETE, &fx, sizeof(fx));
}

/*
 * Copy at most FERRY_WIRE_MAX_MSG bytes of msg, each byte that is not part
 * of printable UTF-8 turned into '?', so an error always gets through.
 */
static uint32_t copy_text(char *out, const char *msg)
{
	size_t len = strnlen(msg, FERRY_WIRE_MAX_MSG), n;
	const uint8_t *in = (const uint8_t *)msg;

	for (size_t i = 0; i < len; i += n) {
		n = utf8_seq(in + i, len - i);
		if (n)
			memcpy(out + i, in + i, n);
		else
			out[i] = '?', n = 1;
	}
	return (uint32_t)len;
}

int ferry_wire_enc_error(struct ferry_wire_frame *f, int err,
			 const char *msg)
{
	struct wire_error fx = { .err = (uint32_t)(err < 0 ? -err : err) };
	char *text = (char *)f->table;

	if (!fx.err || fx.err > 4095)
		return bad(&enc, "ERROR code %d is not an errno", err);
	fx.msg_len = copy_text(text, msg);
	return enc_blob(f, FERRY_WIRE_ERROR, &fx, sizeof(fx), text,
			fx.msg_len);
}

int ferry_wire_enc_page_request(struct ferry_wire_frame *f,
				const struct ferry_wire_stream *s,
				const struct ferry_wire_page_request *q)
{
	struct wire_request fx = {
		.region = q->region,
		.page = q->page,
		.count = q->count,
		.request_id = q->request_id,
	};
	int ret = check_request(&enc, s, q);

	if (ret)
		return ret;
	return enc_fixed(f, FERRY_WIRE_PAGE_REQUEST, &fx, sizeof(fx));
}

int ferry_wire_enc_extent(struct ferry_wire_frame *f,
			  const struct ferry_wire_stream *s,
			  const struct ferry_wire_extent *e)
{
	struct wire_extent fx = {
		.region = e->region,
		.first_page = e->first_page,
		.count = e->count,
		.file_offset = e->file_offset,
	};
	int ret = check_extent(&enc, s, e);

	if (ret)
		return ret;
	return enc_blob(f, FERRY_WIRE_PAGE_EXTENT, &fx, sizeof(fx), e->sums,
			(size_t)e->count * sizeof(uint64_t));
}

static void region_from_mem(struct ferry_wire_region *out,
			    const struct ferry_region *r)
{
	*out = (struct ferry_wire_region){
		.backing = r->backing,
		.page_size = r->page_size,
		.size = r->size,
		.nr_pages = r->nr_pages,
		.guest_base = r->guest_base,
	};
}

int ferry_wire_stream_init(struct ferry_wire_stream *s,
			   const struct ferry_mem *mem,
			   enum ferry_wire_kind kind, unsigned int nr_vcpus,
			   const void *desc, uint32_t desc_len)
{
	if (mem->nr_regions > FERRY_WIRE_MAX_REGIONS)
		return bad(&enc, "%u regions (%u at most)", mem->nr_regions,
			   FERRY_WIRE_MAX_REGIONS);
	*s = (struct ferry_wire_stream){
		.version = FERRY_WIRE_VERSION,
		.kind = kind,
		.nr_vcpus = nr_vcpus,
		.nr_regions = mem->nr_regions,
		.desc = desc,
		.desc_len = desc_len,
	};
	for (unsigned int i = 0; i < mem->nr_regions; i++)
		region_from_mem(&s->regions[i], &mem->regions[i]);
	return check_stream(&enc, s);
}

/* ---- records in and out ---- */

void ferry_wire_writer_init(struct ferry_wire_writer *w,
			    struct ferry_chan *chan)
{
	*w = (struct ferry_wire_writer){ .chan = chan };
}

void ferry_wire_reader_init(struct ferry_wire_reader *r,
			    struct ferry_chan *chan)
{
	*r = (struct ferry_wire_reader){ .chan = chan };
}

ssize_t ferry_wire_send(struct ferry_wire_writer *w,
			struct ferry_wire_frame *f)
{
	ssize_t len = ferry_wire_seal(f, w->next_nr);
	ssize_t n = ferry_chan_sendv(w->chan, f->iov, f->iovcnt);

	if (n < 0)
		return ferry_fail_ctx((int)n, "sending record %llu (%s)",
				      (unsigned long long)w->next_nr,
				      ferry_wire_type_name(f->type));
	w->next_nr++;
	return len;
}

static struct chk rd_chk(const struct ferry_wire_reader *r)
{
	return (struct chk){ .decoding = true, .nr = r->next_nr };
}

static int check_flags(const struct chk *ck, const struct wire_rec_hdr *h)
{
	unsigned int allowed = h->type == FERRY_WIRE_PAGES ?
			       FERRY_WIRE_F_LIVE : 0;

	if (!(h->flags & ~allowed))
		return 0;
	return bad(ck, "flags 0x%x not valid on a %s record", h->flags,
		   ferry_wire_type_name(h->type));
}

static int check_lengths(const struct chk *ck, const struct wire_rec_hdr *h)
{
	const char *name = ferry_wire_type_name(h->type);

	if (h->meta_len % 8)
		return bad(ck, "%s meta length %u not a multiple of 8", name,
			   h->meta_len);
	if (h->meta_len > FERRY_WIRE_MAX_META)
		return bad_err(ck, -E2BIG, "%s meta of %u bytes (%u at most)",
			       name, h->meta_len, FERRY_WIRE_MAX_META);
	if (h->data_len && h->type != FERRY_WIRE_PAGES)
		return bad(ck, "%s record carries %u bytes of page data",
			   name, h->data_len);
	if (h->data_len > FERRY_WIRE_MAX_DATA)
		return bad_err(ck, -E2BIG, "%s data of %u bytes (%u at most)",
			       name, h->data_len, FERRY_WIRE_MAX_DATA);
	if (h->data_len && h->meta_len > WIRE_PAGES_MAX_META)
		return bad(ck, "PAGES meta of %u bytes (%u at most)",
			   h->meta_len, WIRE_PAGES_MAX_META);
	return 0;
}

/*
 * The header checksum first: once it holds, the lengths can be trusted
 * enough to read that many bytes (a flipped length would otherwise make the
 * reader wait for bytes that never come).
 */
static int check_hdr(const struct ferry_wire_reader *r,
		     const struct wire_rec_hdr *h)
{
	struct chk ck = rd_chk(r);
	uint64_t sum = sum64(h, offsetof(struct wire_rec_hdr, head_sum));

	if (h->magic != WIRE_REC_MAGIC)
		return bad(&ck, "bad record magic 0x%04x: not a ferry stream, "
			   "or out of step", h->magic);
	if (sum != h->head_sum)
		return bad(&ck, "header checksum mismatch");
	if (!h->type || h->type >= FERRY_WIRE_TYPE_COUNT)
		return bad(&ck, "unknown record type %u", h->type);
	if (h->nr != (uint32_t)r->next_nr)
		return bad(&ck, "arrived numbered %u (records lost, repeated "
			   "or out of order)", h->nr);
	if (check_flags(&ck, h))
		return -EBADMSG;
	return check_lengths(&ck, h);
}

static int truncated(const struct ferry_wire_reader *r,
		     const struct wire_rec_hdr *h, uint64_t got)
{
	uint64_t total = FERRY_WIRE_HDR_SIZE + (uint64_t)h->meta_len +
			 h->data_len;
	char size[32];

	return ferry_fail(-EPIPE, "record %llu: stream ended inside a %s %s "
			  "record (%llu of %llu bytes)",
			  (unsigned long long)r->next_nr,
			  fmt_size(size, sizeof(size), total),
			  ferry_wire_type_name(h->type),
			  (unsigned long long)got, (unsigned long long)total);
}

static int truncated_hdr(const struct ferry_wire_reader *r, uint64_t got)
{
	return ferry_fail(-EPIPE, "record %llu: stream ended inside a record "
			  "header (%llu of %u bytes)",
			  (unsigned long long)r->next_nr,
			  (unsigned long long)got, FERRY_WIRE_HDR_SIZE);
}

/* Verify the meta checksum, then hand the record out. */
static int accept_rec(struct ferry_wire_reader *r,
		      const struct wire_rec_hdr *h, const uint8_t *meta,
		      const uint8_t *data, struct ferry_wire_rec *rec)
{
	struct chk ck = rd_chk(r);

	if (sum64(meta, h->meta_len) != h->meta_sum)
		return bad(&ck, "%s record checksum mismatch",
			   ferry_wire_type_name(h->type));
	*rec = (struct ferry_wire_rec){
		.type = h->type,
		.flags = h->flags,
		.nr = r->next_nr++,
		.meta = meta,
		.meta_len = h->meta_len,
		.data = data,
		.data_len = h->data_len,
	};
	return 0;
}

static int check_buf(const void *buf, size_t cap)
{
	if ((uintptr_t)buf % 8 || cap < FERRY_WIRE_HDR_SIZE)
		return ferry_fail(-EINVAL, "record buffer %p of %zu bytes: "
				  "needs 8-byte alignment and %u bytes", buf,
				  cap, FERRY_WIRE_HDR_SIZE);
	return 0;
}

/* Where recv puts page data: the first page boundary after the meta. */
static size_t data_offset(const struct wire_rec_hdr *h)
{
	size_t end = FERRY_WIRE_HDR_SIZE + (size_t)h->meta_len;

	return h->data_len ? (end + 4095) & ~(size_t)4095 : end;
}

static int check_fits(const struct ferry_wire_reader *r,
		      const struct wire_rec_hdr *h, size_t cap)
{
	size_t need = data_offset(h) + h->data_len;
	struct chk ck = rd_chk(r);
	char size[32], room[32];

	if (need <= cap)
		return 0;
	return bad_err(&ck, -E2BIG, "%s %s record does not fit the %s "
		       "receive buffer", fmt_size(size, sizeof(size), need),
		       ferry_wire_type_name(h->type),
		       fmt_size(room, sizeof(room), cap));
}

/* Exactly len bytes, or -EPIPE naming the record; got counts progress. */
static int read_part(struct ferry_wire_reader *r,
		     const struct wire_rec_hdr *h, void *buf, size_t len,
		     uint64_t *got)
{
	ssize_t n = len ? ferry_chan_recv(r->chan, buf, len) : 0;

	if (n < 0)
		return ferry_fail_ctx((int)n, "receiving record %llu",
				      (unsigned long long)r->next_nr);
	*got += (uint64_t)n;
	return (size_t)n == len ? 0 : truncated(r, h, *got);
}

static ssize_t read_hdr(struct ferry_wire_reader *r, void *buf,
			struct wire_rec_hdr *h)
{
	ssize_t n = ferry_chan_recv(r->chan, buf, FERRY_WIRE_HDR_SIZE);

	if (n < 0)
		return ferry_fail_ctx((int)n, "receiving record %llu",
				      (unsigned long long)r->next_nr);
	if (n > 0 && n < FERRY_WIRE_HDR_SIZE)
		return truncated_hdr(r, (uint64_t)n);
	memcpy(h, buf, sizeof(*h));
	return n;
}

ssize_t ferry_wire_recv(struct ferry_wire_reader *r, void *buf, size_t cap,
			struct ferry_wire_rec *rec)
{
	uint8_t *meta = (uint8_t *)buf + FERRY_WIRE_HDR_SIZE, *data;
	struct wire_rec_hdr h;
	uint64_t got = FERRY_WIRE_HDR_SIZE;
	ssize_t n = check_buf(buf, cap);

	if (!n)
		n = read_hdr(r, buf, &h);
	if (n <= 0)
		return n;
	if ((n = check_hdr(r, &h)) || (n = check_fits(r, &h, cap)))
		return n;
	data = (uint8_t *)buf + data_offset(&h);
	if ((n = read_part(r, &h, meta, h.meta_len, &got)) ||
	    (n = read_part(r, &h, data, h.data_len, &got)) ||
	    (n = accept_rec(r, &h, meta, data, rec)))
		return n;
	return (ssize_t)got;
}

ssize_t ferry_wire_parse(struct ferry_wire_reader *r, const void *bytes,
			 size_t len, struct ferry_wire_rec *rec)
{
	const uint8_t *meta = (const uint8_t *)bytes + FERRY_WIRE_HDR_SIZE;
	struct wire_rec_hdr h;
	uint64_t total;
	int ret;

	if (!len)
		return 0;
	if ((ret = check_buf(bytes, FERRY_WIRE_HDR_SIZE)))
		return ret;
	if (len < FERRY_WIRE_HDR_SIZE)
		return truncated_hdr(r, len);
	memcpy(&h, bytes, sizeof(h));
	if ((ret = check_hdr(r, &h)))
		return ret;
	total = FERRY_WIRE_HDR_SIZE + (uint64_t)h.meta_len + h.data_len;
	if (len < total)
		return truncated(r, &h, len);
	ret = accept_rec(r, &h, meta, meta + h.meta_len, rec);
	return ret ? ret : (ssize_t)total;
}

/* ---- decoding ---- */

static int misuse(const struct ferry_wire_rec *rec, const char *want)
{
	return ferry_fail(-EINVAL, "record %llu is %s, not %s",
			  (unsigned long long)rec->nr,
			  ferry_wire_type_name(rec->type), want);
}

/* The fixed fields at the start of the meta, which must be there. */
static int take_fixed(const struct chk *ck, const struct ferry_wire_rec *rec,
		      void *fixed, size_t len)
{
	if (rec->meta_len < len)
		return bad(ck, "%s of %u bytes, shorter than its %zu fixed "
			   "bytes", ferry_wire_type_name(rec->type),
			   rec->meta_len, len);
	memcpy(fixed, rec->meta, len);
	return 0;
}

/* A record of the expected type, with at least its fixed fields. */
static int take(const struct chk *ck, const struct ferry_wire_rec *rec,
		enum ferry_wire_type type, void *fixed, size_t len)
{
	if (rec->type != type)
		return misuse(rec, ferry_wire_type_name(type));
	return take_fixed(ck, rec, fixed, len);
}

static int check_meta_len(const struct chk *ck,
			  const struct ferry_wire_rec *rec, uint64_t want)
{
	if (rec->meta_len == want)
		return 0;
	return bad(ck, "%s needs %llu bytes of meta, record has %u",
		   ferry_wire_type_name(rec->type), (unsigned long long)want,
		   rec->meta_len);
}

/* The zero padding between from and the next multiple of 8. */
static int check_pad(const struct chk *ck, const struct ferry_wire_rec *rec,
		     uint64_t from)
{
	uint64_t to = align8(from);

	if (!memcmp(rec->meta + from, zeroes, to - from))
		return 0;
	return bad(ck, "%s padding at byte %llu is not zero",
		   ferry_wire_type_name(rec->type), (unsigned long long)from);
}

/* A record of fixed fields only, of the expected type and size. */
static int dec_fixed(const struct ferry_wire_rec *rec,
		     enum ferry_wire_type type, void *fixed, size_t len)
{
	struct chk ck = dec_chk(rec);
	int ret;

	if (rec->type != type)
		return misuse(rec, ferry_wire_type_name(type));
	ret = check_meta_len(&ck, rec, len);
	if (!ret)
		memcpy(fixed, rec->meta, len);
	return ret;
}

/* A blob after the fixed fields: exact length, zero padding. */
static int dec_blob(const struct chk *ck, const struct ferry_wire_rec *rec,
		    size_t fixed_len, uint32_t blob_len, const void **blob)
{
	int ret = check_meta_len(ck, rec, fixed_len + align8(blob_len));

	if (!ret)
		ret = check_pad(ck, rec, fixed_len + blob_len);
	*blob = rec->meta + fixed_len;
	return ret;
}

static int region_from_wire(const struct chk *ck, unsigned int i,
			    const struct wire_region *w,
			    struct ferry_wire_region *r)
{
	if (w->page_shift != 12 && w->page_shift != 21)
		return bad(ck, "region %u: page size 2^%u (4 KiB or 2 MiB)", i,
			   w->page_shift);
	*r = (struct ferry_wire_region){
		.backing = (enum ferry_backing)w->backing,
		.page_size = 1ULL << w->page_shift,
		.size = w->size,
		.nr_pages = w->size >> w->page_shift,
		.guest_base = w->guest_base,
	};
	return 0;
}

static int header_fixed(const struct chk *ck, const struct wire_header *fx,
			struct ferry_wire_stream *s)
{
	if (memcmp(fx->magic, WIRE_STREAM_MAGIC, sizeof(fx->magic)))
		return bad(ck, "HEADER magic wrong: not a ferry stream");
	if (fx->version != FERRY_WIRE_VERSION)
		return bad_err(ck, -EPROTO, "stream is format version %u; this "
			       "ferry reads version %u", fx->version,
			       FERRY_WIRE_VERSION);
	*s = (struct ferry_wire_stream){
		.version = fx->version,
		.kind = (enum ferry_wire_kind)fx->kind,
		.nr_vcpus = fx->nr_vcpus,
		.nr_regions = fx->nr_regions,
		.desc_len = fx->desc_len,
	};
	return check_counts(ck, s);
}

/*
 * Decoded into a copy: other decoders trust the stream description, so the
 * caller's is only written once every field of it has passed.
 */
int ferry_wire_dec_header(const struct ferry_wire_rec *rec,
			  struct ferry_wire_stream *out)
{
	struct chk ck = dec_chk(rec);
	const struct wire_region *table;
	struct ferry_wire_stream s;
	struct wire_header fx;
	size_t fixed_len;
	int ret;

	if ((ret = take(&ck, rec, FERRY_WIRE_HEADER, &fx, sizeof(fx))) ||
	    (ret = header_fixed(&ck, &fx, &s)))
		return ret;
	fixed_len = sizeof(fx) + fx.nr_regions * sizeof(*table);
	ret = dec_blob(&ck, rec, fixed_len, fx.desc_len, &s.desc);
	table = (const struct wire_region *)(rec->meta + sizeof(fx));
	for (unsigned int i = 0; i < s.nr_regions && !ret; i++)
		ret = region_from_wire(&ck, i, &table[i], &s.regions[i]);
	if (!ret)
		ret = check_regions(&ck, &s);
	if (!ret)
		*out = s;
	return ret;
}

static int pages_fixed(const struct chk *ck,
		       const struct ferry_wire_stream *s,
		       const struct ferry_wire_rec *rec,
		       struct ferry_wire_pages *p)
{
	bool zero = rec->type == FERRY_WIRE_ZERO_PAGES;
	const char *what = ferry_wire_type_name(rec->type);
	struct wire_pages fx;
	int ret = take_fixed(ck, rec, &fx, sizeof(fx));

	if (!ret)
		ret = check_region(ck, s, what, fx.region);
	if (!ret)
		ret = check_count(ck, what, fx.count, zero ?
				  FERRY_WIRE_MAX_ZERO : FERRY_WIRE_MAX_PAGES);
	if (ret)
		return ret;
	*p = (struct ferry_wire_pages){
		.region = fx.region,
		.count = fx.count,
		.page_size = s->regions[fx.region].page_size,
		.request_id = fx.request_id,
		.live = rec->flags & FERRY_WIRE_F_LIVE,
	};
	return 0;
}

/* Meta: fixed, indices, padding, [sums]; data: count pages (PAGES). */
static int pages_lengths(const struct chk *ck,
			 const struct ferry_wire_rec *rec,
			 const struct ferry_wire_pages *p)
{
	bool zero = rec->type == FERRY_WIRE_ZERO_PAGES;
	uint64_t indices = sizeof(struct wire_pages) + 4ULL * p->count;
	uint64_t meta = align8(indices) + (zero ? 0 : 8ULL * p->count);
	uint64_t data = zero ? 0 : p->count * (uint64_t)p->page_size;

	if (meta != rec->meta_len || data != rec->data_len)
		return bad(ck, "%s of %u pages of %zu bytes needs %llu meta "
			   "and %llu data bytes, record has %u and %u",
			   ferry_wire_type_name(rec->type), p->count,
			   p->page_size, (unsigned long long)meta,
			   (unsigned long long)data, rec->meta_len,
			   rec->data_len);
	return check_pad(ck, rec, indices);
}

/* Every page against its sum: a mismatch is torn if live, else fatal. */
static int pages_verify(const struct chk *ck, const struct ferry_wire_rec *rec,
			struct ferry_wire_pages *p)
{
	const uint64_t *sums = (const uint64_t *)(rec->meta +
			       align8(sizeof(struct wire_pages) + 4 * p->count));

	for (uint32_t i = 0; i < p->count; i++) {
		if (ferry_wire_page_sum(p->data + i * p->page_size,
					p->page_size) == sums[i])
			continue;
		if (!p->live)
			return bad(ck, "PAGES page %u (index %u) checksum "
				   "mismatch", i, p->index[i]);
		p->torn[i / 64] |= 1ULL << (i % 64);
		p->nr_torn++;
	}
	return 0;
}

int ferry_wire_dec_pages(const struct ferry_wire_stream *s,
			 const struct ferry_wire_rec *rec,
			 struct ferry_wire_pages *p)
{
	struct chk ck = dec_chk(rec);
	int ret;

	if (rec->type != FERRY_WIRE_PAGES && rec->type != FERRY_WIRE_ZERO_PAGES)
		return misuse(rec, "PAGES or ZERO_PAGES");
	if ((ret = pages_fixed(&ck, s, rec, p)) ||
	    (ret = pages_lengths(&ck, rec, p)))
		return ret;
	p->index = (const uint32_t *)(rec->meta + sizeof(struct wire_pages));
	ret = check_indices(&ck, s, ferry_wire_type_name(rec->type),
			    p->region, p->index, p->count);
	if (ret || rec->type == FERRY_WIRE_ZERO_PAGES)
		return ret;
	p->data = rec->data;
	return pages_verify(&ck, rec, p);
}

int ferry_wire_dec_bitmap(const struct ferry_wire_stream *s,
			  const struct ferry_wire_rec *rec,
			  struct ferry_wire_bitmap *b)
{
	struct chk ck = dec_chk(rec);
	struct wire_bitmap fx;
	int ret;

	if ((ret = take(&ck, rec, FERRY_WIRE_BITMAP, &fx, sizeof(fx))))
		return ret;
	*b = (struct ferry_wire_bitmap){
		.region = fx.region,
		.kind = (enum ferry_wire_bitmap_kind)fx.kind,
		.first_page = fx.first_page,
		.nr_bits = fx.nr_bits,
		.words = (const uint64_t *)(rec->meta + sizeof(fx)),
	};
	if ((ret = check_bitmap(&ck, s, b)) ||
	    (ret = check_meta_len(&ck, rec, sizeof(fx) +
				  (fx.nr_bits + 63ULL) / 64 * 8)))
		return ret;
	return check_bitmap_tail(&ck, b);
}

int ferry_wire_dec_vcpu(const struct ferry_wire_stream *s,
			const struct ferry_wire_rec *rec,
			struct ferry_wire_vcpu *v)
{
	struct chk ck = dec_chk(rec);
	struct wire_vcpu fx;
	int ret;

	if ((ret = take(&ck, rec, FERRY_WIRE_VCPU, &fx, sizeof(fx))) ||
	    (ret = check_zero(&ck, "VCPU", fx.reserved)))
		return ret;
	*v = (struct ferry_wire_vcpu){
		.index = fx.index,
		.mp_state = fx.mp_state,
		.regs_len = fx.regs_len,
	};
	if ((ret = check_vcpu(&ck, s, v)))
		return ret;
	return dec_blob(&ck, rec, sizeof(fx), fx.regs_len, &v->regs);
}

int ferry_wire_dec_round_end(const struct ferry_wire_rec *rec,
			     struct ferry_wire_round_end *r)
{
	struct chk ck = dec_chk(rec);
	struct wire_round_end fx = { 0 };
	int ret = dec_fixed(rec, FERRY_WIRE_ROUND_END, &fx, sizeof(fx));

	if (!ret)
		ret = check_zero(&ck, "ROUND_END", fx.reserved);
	*r = (struct ferry_wire_round_end){ fx.round, fx.pages };
	return ret;
}

int ferry_wire_dec_switchover(const struct ferry_wire_rec *rec,
			      enum ferry_wire_switch_mode *mode)
{
	struct chk ck = dec_chk(rec);
	struct wire_switchover fx;
	int ret = dec_fixed(rec, FERRY_WIRE_SWITCHOVER, &fx, sizeof(fx));

	if (ret)
		return ret;
	if (!mode_known(fx.mode))
		return bad(&ck, "SWITCHOVER mode %u unknown", fx.mode);
	*mode = (enum ferry_wire_switch_mode)fx.mode;
	return check_zero(&ck, "SWITCHOVER", fx.reserved);
}

int ferry_wire_dec_complete(const struct ferry_wire_rec *rec,
			    struct ferry_wire_complete *c)
{
	struct wire_complete fx = { 0 };
	int ret = dec_fixed(rec, FERRY_WIRE_COMPLETE, &fx, sizeof(fx));

	*c = (struct ferry_wire_complete){ fx.pages, fx.zero_pages };
	return ret;
}

int ferry_wire_dec_error(const struct ferry_wire_rec *rec,
			 struct ferry_wire_error *e)
{
	struct chk ck = dec_chk(rec);
	struct wire_error fx;
	const void *msg;
	int ret;

	if ((ret = take(&ck, rec, FERRY_WIRE_ERROR, &fx, sizeof(fx))))
		return ret;
	if (!fx.err || fx.err > 4095 || fx.msg_len > FERRY_WIRE_MAX_MSG)
		return bad(&ck, "ERROR code %u or message length %u out of "
			   "range", fx.err, fx.msg_len);
	if ((ret = dec_blob(&ck, rec, sizeof(fx), fx.msg_len, &msg)) ||
	    (ret = check_text(&ck, msg, fx.msg_len)))
		return ret;
	e->err = (int)fx.err;
	memcpy(e->msg, msg, fx.msg_len);
	e->msg[fx.msg_len] = '\0';
	return 0;
}

int ferry_wire_dec_page_request(const struct ferry_wire_stream *s,
				const struct ferry_wire_rec *rec,
				struct ferry_wire_page_request *q)
{
	struct chk ck = dec_chk(rec);
	struct wire_request fx;
	int ret = dec_fixed(rec, FERRY_WIRE_PAGE_REQUEST, &fx, sizeof(fx));

	if (ret || (ret = check_zero(&ck, "PAGE_REQUEST", fx.reserved)))
		return ret;
	*q = (struct ferry_wire_page_request){
		.region = fx.region,
		.page = fx.page,
		.count = fx.count,
		.request_id = fx.request_id,
	};
	return check_request(&ck, s, q);
}

int ferry_wire_dec_extent(const struct ferry_wire_stream *s,
			  const struct ferry_wire_rec *rec,
			  struct ferry_wire_extent *e)
{
	struct chk ck = dec_chk(rec);
	struct wire_extent fx;
	int ret;

	if ((ret = take(&ck, rec, FERRY_WIRE_PAGE_EXTENT, &fx, sizeof(fx))) ||
	    (ret = check_zero(&ck, "PAGE_EXTENT", fx.reserved)))
		return ret;
	*e = (struct ferry_wire_extent){
		.region = fx.region,
		.first_page = fx.first_page,
		.count = fx.count,
		.file_offset = fx.file_offset,
		.sums = (const uint64_t *)(rec->meta + sizeof(fx)),
	};
	if ((ret = check_extent(&ck, s, e)))
		return ret;
	return check_meta_len(&ck, rec, sizeof(fx) + 8ULL * fx.count);
}
