// SPDX-License-Identifier: MIT
/*
 * wire checks: what encoders and decoders share (docs/wire.md has the
 * byte layout).
 *
 * Every check here runs on decoded fields, so an encoder and a decoder
 * share it: what an encoder accepts, a decoder accepts.  Record names and
 * the page checksum, which both directions use too, live here as well.
 */
#include <stdarg.h>
#include <stdio.h>

#include "base/error.h"
#include "wire/check.h"
#include "wire/sum.h"

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
	[FERRY_WIRE_ACCEPT] = "ACCEPT",
	[FERRY_WIRE_HEARTBEAT] = "HEARTBEAT",
	[FERRY_WIRE_REFETCH] = "REFETCH",
	[FERRY_WIRE_RESUME] = "RESUME",
	[FERRY_WIRE_COMMIT] = "COMMIT",
};

const uint8_t wire_zeroes[8];

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
	return wire_sum(page, page_size);
}

static int vbad(const struct wire_chk *ck, int err, const char *fmt,
		va_list ap)
{
	char msg[400];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (!ck->decoding)
		return ferry_fail(-EINVAL, "encoding: %s", msg);
	return ferry_fail(err, "record %llu: %s", (unsigned long long)ck->nr,
			  msg);
}

int wire_bad(const struct wire_chk *ck, const char *fmt, ...)
{
	va_list ap;
	int ret;

	va_start(ap, fmt);
	ret = vbad(ck, -EBADMSG, fmt, ap);
	va_end(ap);
	return ret;
}

int wire_bad_err(const struct wire_chk *ck, int err, const char *fmt, ...)
{
	va_list ap;
	int ret;

	va_start(ap, fmt);
	ret = vbad(ck, err, fmt, ap);
	va_end(ap);
	return ret;
}

/* ---- pages, counts, indices ---- */

int wire_check_region(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s, const char *what,
		      uint32_t region)
{
	if (region < s->nr_regions)
		return 0;
	return wire_bad(ck, "%s region %u beyond the stream's %u regions",
			what, region, s->nr_regions);
}

int wire_check_count(const struct wire_chk *ck, const char *what,
		     uint64_t count, uint64_t max)
{
	if (count && count <= max)
		return 0;
	return wire_bad(ck, "%s count %llu (1 to %llu allowed)", what,
			(unsigned long long)count, (unsigned long long)max);
}

/* Pages [first, first + count) lie inside the region (no wrap: u64). */
static int check_run(const struct wire_chk *ck,
		     const struct ferry_wire_stream *s, const char *what,
		     uint32_t region, uint64_t first, uint64_t count)
{
	const struct ferry_wire_region *r = &s->regions[region];

	if (first + count <= r->nr_pages)
		return 0;
	return wire_bad(ck, "%s pages [%llu, %llu) beyond region %u's %llu "
			"pages", what, (unsigned long long)first,
			(unsigned long long)(first + count), region,
			(unsigned long long)r->nr_pages);
}

int wire_check_batch_data(const struct wire_chk *ck,
			  const struct ferry_wire_stream *s, const char *what,
			  uint32_t region, uint32_t count)
{
	uint64_t bytes = (uint64_t)count * s->regions[region].page_size;

	if (bytes <= FERRY_WIRE_MAX_DATA)
		return 0;
	return wire_bad(ck, "%s of %u pages is %llu bytes of data (%u at "
			"most)", what, count, (unsigned long long)bytes,
			FERRY_WIRE_MAX_DATA);
}

int wire_check_indices(const struct wire_chk *ck,
		       const struct ferry_wire_stream *s, const char *what,
		       uint32_t region, const uint32_t *index, uint32_t count)
{
	uint64_t nr_pages = s->regions[region].nr_pages;

	for (uint32_t i = 0; i < count; i++) {
		if (index[i] >= nr_pages)
			return wire_bad(ck, "%s index %u beyond region %u's "
					"%llu pages", what, index[i], region,
					(unsigned long long)nr_pages);
		if (i && index[i] <= index[i - 1])
			return wire_bad(ck, "%s indices not ascending at %u "
					"(%u after %u)", what, i, index[i],
					index[i - 1]);
	}
	return 0;
}

/* ---- the stream description ---- */

static int check_backing(const struct wire_chk *ck, unsigned int i,
			 const struct ferry_wire_region *r)
{
	size_t want;

	if ((unsigned int)r->backing >= FERRY_BACKING_COUNT)
		return wire_bad(ck, "region %u: unknown backing %u", i,
				(unsigned int)r->backing);
	want = ferry_mem_backing_page_size(r->backing);
	if (r->page_size != want)
		return wire_bad(ck, "region %u: page size %llu does not match "
				"%s backing (%zu)", i,
				(unsigned long long)r->page_size,
				ferry_mem_backing_name(r->backing), want);
	return 0;
}

static int check_extent_of(const struct wire_chk *ck, unsigned int i,
			   const struct ferry_wire_region *r)
{
	if (!r->size || r->size % r->page_size ||
	    r->nr_pages != r->size / r->page_size)
		return wire_bad(ck, "region %u: size %llu is not a whole "
				"number of its %llu-byte pages", i,
				(unsigned long long)r->size,
				(unsigned long long)r->page_size);
	if (r->nr_pages > UINT32_MAX)
		return wire_bad(ck, "region %u: %llu pages (2^32 at most)", i,
				(unsigned long long)r->nr_pages);
	if (r->guest_base % r->page_size ||
	    r->guest_base + r->size < r->guest_base)
		return wire_bad(ck, "region %u: guest base 0x%llx misaligned "
				"or wrapping", i,
				(unsigned long long)r->guest_base);
	return 0;
}

/* Regions in ascending guest-physical order, none overlapping. */
static int check_order(const struct wire_chk *ck, unsigned int i,
		       const struct ferry_wire_region *prev,
		       const struct ferry_wire_region *r)
{
	if (r->guest_base >= prev->guest_base + prev->size)
		return 0;
	return wire_bad(ck, "region %u at 0x%llx overlaps or precedes region "
			"%u [0x%llx, 0x%llx)", i,
			(unsigned long long)r->guest_base, i - 1,
			(unsigned long long)prev->guest_base,
			(unsigned long long)(prev->guest_base + prev->size));
}

int wire_check_regions(const struct wire_chk *ck,
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
int wire_check_counts(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s)
{
	if (s->kind != FERRY_WIRE_MIGRATION && s->kind != FERRY_WIRE_SNAPSHOT)
		return wire_bad(ck, "HEADER stream kind %u unknown", s->kind);
	if (!s->nr_regions || s->nr_regions > FERRY_WIRE_MAX_REGIONS)
		return wire_bad(ck, "HEADER has %u regions (1 to %u allowed)",
				s->nr_regions, FERRY_WIRE_MAX_REGIONS);
	if (!s->nr_vcpus || s->nr_vcpus > FERRY_WIRE_MAX_VCPUS)
		return wire_bad(ck, "HEADER has %u vCPUs (1 to %u allowed)",
				s->nr_vcpus, FERRY_WIRE_MAX_VCPUS);
	if (s->desc_len > FERRY_WIRE_MAX_DESC)
		return wire_bad_err(ck, -E2BIG, "HEADER guest description of "
				    "%u bytes (%u at most)", s->desc_len,
				    FERRY_WIRE_MAX_DESC);
	return 0;
}

int wire_check_stream(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s)
{
	int ret = wire_check_counts(ck, s);

	return ret ? ret : wire_check_regions(ck, s);
}

/*
 * A migration names itself (the destination resumes only the migration
 * it holds); a snapshot is not a migration and names nothing.
 */
int wire_check_id(const struct wire_chk *ck, const struct ferry_wire_stream *s)
{
	if (s->kind == FERRY_WIRE_MIGRATION && !s->id)
		return wire_bad(ck, "HEADER of a migration with id 0");
	if (s->kind == FERRY_WIRE_SNAPSHOT && s->id)
		return wire_bad(ck, "HEADER of a snapshot with id %llu, not 0",
				(unsigned long long)s->id);
	return 0;
}

int wire_check_resume(const struct wire_chk *ck,
		      const struct ferry_wire_resume *r)
{
	if (!r->id)
		return wire_bad(ck, "RESUME of migration id 0");
	if (r->nr_bitmaps > FERRY_WIRE_MAX_OWED_BITMAPS)
		return wire_bad(ck, "RESUME announces %u bitmaps (%u at most)",
				r->nr_bitmaps, FERRY_WIRE_MAX_OWED_BITMAPS);
	if (r->owed && !r->nr_bitmaps)
		return wire_bad(ck, "RESUME owes %llu pages in no bitmap",
				(unsigned long long)r->owed);
	return 0;
}

/* ---- one check per record type ---- */

int wire_check_bitmap(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s,
		      const struct ferry_wire_bitmap *b)
{
	int ret = wire_check_region(ck, s, "BITMAP", b->region);

	if (!ret && b->kind != FERRY_WIRE_BITMAP_DIRTY &&
	    b->kind != FERRY_WIRE_BITMAP_STALE &&
	    b->kind != FERRY_WIRE_BITMAP_OWED)
		ret = wire_bad(ck, "BITMAP kind %u unknown", b->kind);
	if (!ret)
		ret = wire_check_count(ck, "BITMAP bit", b->nr_bits,
				       FERRY_WIRE_MAX_BITS);
	if (!ret && b->first_page % 64)
		ret = wire_bad(ck, "BITMAP first page %u not a multiple of 64",
			       b->first_page);
	if (!ret)
		ret = check_run(ck, s, "BITMAP", b->region, b->first_page,
				b->nr_bits);
	return ret;
}

int wire_check_bitmap_tail(const struct wire_chk *ck,
			   const struct ferry_wire_bitmap *b)
{
	uint32_t tail = b->nr_bits % 64;

	if (!tail || !(b->words[b->nr_bits / 64] >> tail))
		return 0;
	return wire_bad(ck, "BITMAP has bits set past its %u bits",
			b->nr_bits);
}

int wire_check_vcpu(const struct wire_chk *ck,
		    const struct ferry_wire_stream *s,
		    const struct ferry_wire_vcpu *v)
{
	if (v->index >= s->nr_vcpus)
		return wire_bad(ck, "VCPU index %u beyond the stream's %u "
				"vCPUs", v->index, s->nr_vcpus);
	if (v->regs_len > FERRY_WIRE_MAX_REGS)
		return wire_bad_err(ck, -E2BIG, "VCPU %u register blob of %u "
				    "bytes (%u at most)", v->index,
				    v->regs_len, FERRY_WIRE_MAX_REGS);
	return 0;
}

int wire_check_mode(const struct wire_chk *ck, uint32_t mode)
{
	if (mode == FERRY_WIRE_SWITCH_PRECOPY ||
	    mode == FERRY_WIRE_SWITCH_POSTCOPY)
		return 0;
	return wire_bad(ck, "SWITCHOVER mode %u unknown", mode);
}

int wire_check_request(const struct wire_chk *ck,
		       const struct ferry_wire_stream *s,
		       const struct ferry_wire_page_request *q)
{
	const char *what = "PAGE_REQUEST";
	int ret = wire_check_region(ck, s, what, q->region);

	if (!ret)
		ret = wire_check_count(ck, what, q->count,
				       FERRY_WIRE_MAX_PAGES);
	if (!ret)
		ret = check_run(ck, s, what, q->region, q->page, q->count);
	if (!ret)
		ret = wire_check_batch_data(ck, s, what, q->region, q->count);
	if (!ret && !q->request_id)
		ret = wire_bad(ck, "PAGE_REQUEST id is 0");
	return ret;
}

int wire_check_extent(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s,
		      const struct ferry_wire_extent *e)
{
	const char *what = "PAGE_EXTENT";
	int ret = wire_check_region(ck, s, what, e->region);
	uint64_t page_size, bytes;

	if (!ret)
		ret = wire_check_count(ck, what, e->count,
				       FERRY_WIRE_MAX_EXTENT);
	if (!ret)
		ret = check_run(ck, s, what, e->region, e->first_page,
				e->count);
	if (ret)
		return ret;
	page_size = s->regions[e->region].page_size;
	bytes = e->count * page_size;
	if (e->file_offset % page_size || e->file_offset > INT64_MAX - bytes)
		return wire_bad(ck, "PAGE_EXTENT file offset %llu misaligned "
				"or beyond any file",
				(unsigned long long)e->file_offset);
	return 0;
}

/* ---- text ---- */

static bool utf8_cont(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return false;
	return true;
}

size_t wire_utf8_seq(const uint8_t *p, size_t left)
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

int wire_check_text(const struct wire_chk *ck, const uint8_t *text,
		    size_t len)
{
	for (size_t i = 0, n; i < len; i += n) {
		n = wire_utf8_seq(text + i, len - i);
		if (!n)
			return wire_bad(ck, "ERROR message byte %zu (0x%02x) "
					"is not printable UTF-8", i, text[i]);
	}
	return 0;
}
