// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for the record parser and every decoder: the input is
 * a stream, decoded the way a destination would (HEADER first, then each
 * record against it).  Whatever a decoder accepts must keep its promises;
 * a broken one aborts, so the fuzzer reports it.  Build and run: see
 * fuzz/README.md.
 *
 * A fuzzer cannot forge 64-bit checksums, so unless the first input byte
 * is odd, the harness first recomputes every checksum in the input (page
 * sums, meta and header): its mutations then reach the decoders.
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ferry/wire.h"

static void check(int ok)
{
	if (!ok)
		abort();
}

static void check_pages(const struct ferry_wire_stream *s,
			const struct ferry_wire_rec *rec,
			const struct ferry_wire_pages *p)
{
	const struct ferry_wire_region *r = &s->regions[p->region];

	check(p->region < s->nr_regions && p->count);
	for (uint32_t i = 0; i < p->count; i++)
		check(p->index[i] < r->nr_pages &&
		      (!i || p->index[i] > p->index[i - 1]));
	check(!p->data || (p->data == rec->data &&
			   (uint64_t)p->count * p->page_size == rec->data_len));
}

static void decode(struct ferry_wire_stream *s, const struct ferry_wire_rec *rec)
{
	struct ferry_wire_pages p;
	struct ferry_wire_bitmap b;
	struct ferry_wire_vcpu v;
	struct ferry_wire_page_request q;
	struct ferry_wire_extent e;
	struct ferry_wire_error err;
	struct ferry_wire_round_end re;
	struct ferry_wire_complete c;
	enum ferry_wire_switch_mode mode;
	struct ferry_wire_accept acc;
	struct ferry_wire_resume res;
	struct ferry_wire_heartbeat hb;
	uint64_t id;

	switch (rec->type) {
	case FERRY_WIRE_HEADER:
		ferry_wire_dec_header(rec, s);
		break;
	case FERRY_WIRE_PAGES:
	case FERRY_WIRE_ZERO_PAGES:
		if (!ferry_wire_dec_pages(s, rec, &p))
			check_pages(s, rec, &p);
		if (!ferry_wire_dec_pages_tolerant(s, rec, &p))
			check_pages(s, rec, &p);
		break;
	case FERRY_WIRE_BITMAP:
		if (!ferry_wire_dec_bitmap(s, rec, &b))
			check((uint64_t)b.first_page + b.nr_bits <=
			      s->regions[b.region].nr_pages);
		break;
	case FERRY_WIRE_VCPU:
		if (!ferry_wire_dec_vcpu(s, rec, &v))
			check(v.index < s->nr_vcpus &&
			      v.regs_len <= rec->meta_len);
		break;
	case FERRY_WIRE_PAGE_REQUEST:
		if (!ferry_wire_dec_page_request(s, rec, &q))
			check((uint64_t)q.page + q.count <=
			      s->regions[q.region].nr_pages);
		break;
	case FERRY_WIRE_PAGE_EXTENT:
		if (!ferry_wire_dec_extent(s, rec, &e))
			check((uint64_t)e.first_page + e.count <=
			      s->regions[e.region].nr_pages);
		break;
	case FERRY_WIRE_ERROR:
		if (!ferry_wire_dec_error(rec, &err))
			check(strlen(err.msg) <= FERRY_WIRE_MAX_MSG);
		break;
	case FERRY_WIRE_ROUND_END:
		ferry_wire_dec_round_end(rec, &re);
		break;
	case FERRY_WIRE_SWITCHOVER:
		ferry_wire_dec_switchover(rec, &mode);
		break;
	case FERRY_WIRE_COMPLETE:
		ferry_wire_dec_complete(rec, &c);
		break;
	case FERRY_WIRE_REFETCH:
		if (!ferry_wire_dec_refetch(s, rec, &p))
			check_pages(s, rec, &p);
		break;
	case FERRY_WIRE_ACCEPT:
		if (!ferry_wire_dec_accept(rec, &acc))
			check(acc.id && acc.version);
		break;
	case FERRY_WIRE_RESUME:
		if (!ferry_wire_dec_resume(rec, &res))
			check(res.id && res.nr_bitmaps <=
			      FERRY_WIRE_MAX_OWED_BITMAPS);
		break;
	case FERRY_WIRE_HEARTBEAT:
		ferry_wire_dec_heartbeat(rec, &hb);
		break;
	case FERRY_WIRE_COMMIT:
		if (!ferry_wire_dec_commit(rec, &id))
			check(id != 0);
		break;
	default:
		abort();	/* the reader passed an unknown type */
	}
}

static uint32_t u32_at(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

/* The per-page sums of a PAGES record, taking page size = data / count. */
static void reseal_pages(uint8_t *meta, uint32_t meta_len, const uint8_t *data,
			 uint32_t data_len)
{
	uint32_t count = meta_len >= 16 ? u32_at(meta + 4) : 0;
	uint64_t sums = (16 + 4ULL * count + 7) & ~7ULL;

	if (!count || data_len % count || sums + 8ULL * count > meta_len)
		return;
	for (uint32_t i = 0; i < count; i++) {
		uint64_t sum = XXH3_64bits(data + (size_t)i * (data_len / count),
					   data_len / count);

		memcpy(meta + sums + 8 * i, &sum, 8);
	}
}

static void reseal(uint8_t *b, size_t len)
{
	for (size_t off = 0; off + 32 <= len;) {
		uint8_t *h = b + off;
		uint32_t meta_len = u32_at(h + 8), data_len = u32_at(h + 12);
		uint64_t sum;

		if (len - off - 32 < (uint64_t)meta_len + data_len)
			break;
		if (h[2] == FERRY_WIRE_PAGES)
			reseal_pages(h + 32, meta_len, h + 32 + meta_len,
				     data_len);
		sum = XXH3_64bits(h + 32, meta_len);
		memcpy(h + 16, &sum, 8);
		sum = XXH3_64bits(h, 24);
		memcpy(h + 24, &sum, 8);
		off += 32 + (size_t)meta_len + data_len;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct ferry_wire_stream s;
	struct ferry_wire_reader r;
	struct ferry_wire_rec rec;
	uint8_t *bytes;
	size_t off = 0;
	ssize_t n;

	if (!size)
		return 0;
	bytes = aligned_alloc(8, (size + 8) & ~(size_t)7);
	memcpy(bytes, data + 1, --size);	/* 8-byte aligned for the parser */
	if (!(data[0] & 1))
		reseal(bytes, size);
	memset(&s, 0, sizeof(s));
	ferry_wire_reader_init(&r, NULL);
	while ((n = ferry_wire_parse(&r, bytes + off, size - off, &rec)) > 0) {
		off += (size_t)n;
		decode(&s, &rec);
	}
	free(bytes);
	return 0;
}
