// SPDX-License-Identifier: MIT
/*
 * wire decoders: a record the reader accepted, checked field by field
 * against itself and the stream description, then a view into it.
 *
 * A decoder reads nothing of the payload that the header's lengths and
 * the meta checksum have not vouched for, and nothing past the fixed
 * fields that a length check has not bounded.
 */
#include <string.h>

#include "base/error.h"
#include "wire/check.h"
#include "wire/wire.h"

/* ---- taking a record apart ---- */

static struct wire_chk dec_chk(const struct ferry_wire_rec *rec)
{
	return (struct wire_chk){ .decoding = true, .nr = rec->nr };
}

static int misuse(const struct ferry_wire_rec *rec, const char *want)
{
	return ferry_fail(-EINVAL, "record %llu is %s, not %s",
			  (unsigned long long)rec->nr,
			  ferry_wire_type_name(rec->type), want);
}

/* The fixed fields at the start of the meta, which must be there. */
static int take_fixed(const struct wire_chk *ck,
		      const struct ferry_wire_rec *rec, void *fixed, size_t len)
{
	if (rec->meta_len < len)
		return wire_bad(ck, "%s of %u bytes, shorter than its %zu "
				"fixed bytes", ferry_wire_type_name(rec->type),
				rec->meta_len, len);
	memcpy(fixed, rec->meta, len);
	return 0;
}

/* A record of the expected type, with at least its fixed fields. */
static int take(const struct wire_chk *ck, const struct ferry_wire_rec *rec,
		enum ferry_wire_type type, void *fixed, size_t len)
{
	if (rec->type != type)
		return misuse(rec, ferry_wire_type_name(type));
	return take_fixed(ck, rec, fixed, len);
}

static int check_meta_len(const struct wire_chk *ck,
			  const struct ferry_wire_rec *rec, uint64_t want)
{
	if (rec->meta_len == want)
		return 0;
	return wire_bad(ck, "%s needs %llu bytes of meta, record has %u",
			ferry_wire_type_name(rec->type),
			(unsigned long long)want, rec->meta_len);
}

/* The zero padding between from and the next multiple of 8. */
static int check_pad(const struct wire_chk *ck,
		     const struct ferry_wire_rec *rec, uint64_t from)
{
	uint64_t to = wire_align8(from);

	if (!memcmp(rec->meta + from, wire_zeroes, to - from))
		return 0;
	return wire_bad(ck, "%s padding at byte %llu is not zero",
			ferry_wire_type_name(rec->type),
			(unsigned long long)from);
}

static int check_zero(const struct wire_chk *ck, const char *what,
		      uint64_t value)
{
	return value ? wire_bad(ck, "%s reserved field is %llu, not 0", what,
				(unsigned long long)value) : 0;
}

/* A record of fixed fields only, of the expected type and size. */
static int dec_fixed(const struct ferry_wire_rec *rec,
		     enum ferry_wire_type type, void *fixed, size_t len)
{
	struct wire_chk ck = dec_chk(rec);
	int ret;

	if (rec->type != type)
		return misuse(rec, ferry_wire_type_name(type));
	ret = check_meta_len(&ck, rec, len);
	if (!ret)
		memcpy(fixed, rec->meta, len);
	return ret;
}

/* A blob after the fixed fields: exact length, zero padding. */
static int dec_blob(const struct wire_chk *ck,
		    const struct ferry_wire_rec *rec, size_t fixed_len,
		    uint32_t blob_len, const void **blob)
{
	int ret = check_meta_len(ck, rec, fixed_len + wire_align8(blob_len));

	if (!ret)
		ret = check_pad(ck, rec, fixed_len + blob_len);
	*blob = rec->meta + fixed_len;
	return ret;
}

/* ---- one decoder per record type ---- */

static int region_from_wire(const struct wire_chk *ck, unsigned int i,
			    const struct wire_region *w,
			    struct ferry_wire_region *r)
{
	if (w->page_shift != 12 && w->page_shift != 21)
		return wire_bad(ck, "region %u: page size 2^%u (4 KiB or 2 "
				"MiB)", i, w->page_shift);
	*r = (struct ferry_wire_region){
		.backing = (enum ferry_backing)w->backing,
		.page_size = 1ULL << w->page_shift,
		.size = w->size,
		.nr_pages = w->size >> w->page_shift,
		.guest_base = w->guest_base,
	};
	return 0;
}

/*
 * The magic and the version first, from the 12 bytes every version
 * shares: a stream of another version is named as such, whatever its
 * layout past them.
 */
static int header_start(const struct wire_chk *ck,
			const struct ferry_wire_rec *rec)
{
	struct wire_header_start st;
	int ret = take_fixed(ck, rec, &st, sizeof(st));

	if (ret)
		return ret;
	if (memcmp(st.magic, WIRE_STREAM_MAGIC, sizeof(st.magic)))
		return wire_bad(ck, "HEADER magic wrong: not a ferry stream");
	if (st.version != FERRY_WIRE_VERSION)
		return wire_bad_err(ck, -EPROTO, "stream is format version "
				    "%u; this ferry reads version %u",
				    st.version, FERRY_WIRE_VERSION);
	return 0;
}

static int header_fixed(const struct wire_chk *ck, const struct wire_header *fx,
			struct ferry_wire_stream *s)
{
	int ret = check_zero(ck, "HEADER", fx->reserved);

	if (ret)
		return ret;
	*s = (struct ferry_wire_stream){
		.version = fx->version,
		.kind = (enum ferry_wire_kind)fx->kind,
		.id = fx->id,
		.nr_vcpus = fx->nr_vcpus,
		.nr_regions = fx->nr_regions,
		.desc_len = fx->desc_len,
	};
	ret = wire_check_counts(ck, s);
	return ret ? ret : wire_check_id(ck, s);
}

/*
 * Decoded into a copy: other decoders trust the stream description, so the
 * caller's is only written once every field of it has passed.
 */
int ferry_wire_dec_header(const struct ferry_wire_rec *rec,
			  struct ferry_wire_stream *out)
{
	struct wire_chk ck = dec_chk(rec);
	const struct wire_region *table;
	struct ferry_wire_stream s;
	struct wire_header fx;
	size_t fixed_len;
	int ret;

	if (rec->type != FERRY_WIRE_HEADER)
		return misuse(rec, "HEADER");
	if ((ret = header_start(&ck, rec)) ||
	    (ret = take_fixed(&ck, rec, &fx, sizeof(fx))) ||
	    (ret = header_fixed(&ck, &fx, &s)))
		return ret;
	fixed_len = sizeof(fx) + fx.nr_regions * sizeof(*table);
	ret = dec_blob(&ck, rec, fixed_len, fx.desc_len, &s.desc);
	table = (const struct wire_region *)(rec->meta + sizeof(fx));
	for (unsigned int i = 0; i < s.nr_regions && !ret; i++)
		ret = region_from_wire(&ck, i, &table[i], &s.regions[i]);
	if (!ret)
		ret = wire_check_regions(&ck, &s);
	if (!ret)
		*out = s;
	return ret;
}

static int pages_fixed(const struct wire_chk *ck,
		       const struct ferry_wire_stream *s,
		       const struct ferry_wire_rec *rec,
		       struct ferry_wire_pages *p)
{
	bool zero = rec->type != FERRY_WIRE_PAGES;
	const char *what = ferry_wire_type_name(rec->type);
	struct wire_pages fx;
	int ret = take_fixed(ck, rec, &fx, sizeof(fx));

	if (!ret)
		ret = wire_check_region(ck, s, what, fx.region);
	if (!ret)
		ret = wire_check_count(ck, what, fx.count, zero ?
				       FERRY_WIRE_MAX_ZERO :
				       FERRY_WIRE_MAX_PAGES);
	if (!ret && rec->type == FERRY_WIRE_REFETCH)
		ret = check_zero(ck, "REFETCH", fx.request_id);
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
static int pages_lengths(const struct wire_chk *ck,
			 const struct ferry_wire_rec *rec,
			 const struct ferry_wire_pages *p)
{
	bool zero = rec->type != FERRY_WIRE_PAGES;
	uint64_t indices = sizeof(struct wire_pages) + 4ULL * p->count;
	uint64_t meta = wire_align8(indices) + (zero ? 0 : 8ULL * p->count);
	uint64_t data = zero ? 0 : p->count * (uint64_t)p->page_size;

	if (meta != rec->meta_len || data != rec->data_len)
		return wire_bad(ck, "%s of %u pages of %zu bytes needs %llu "
				"meta and %llu data bytes, record has %u and "
				"%u", ferry_wire_type_name(rec->type),
				p->count, p->page_size,
				(unsigned long long)meta,
				(unsigned long long)data, rec->meta_len,
				rec->data_len);
	return check_pad(ck, rec, indices);
}

/*
 * Every page against its sum: a mismatch is torn if live (or the caller
 * tolerates it), else fatal.
 */
static int pages_verify(const struct wire_chk *ck,
			const struct ferry_wire_rec *rec,
			struct ferry_wire_pages *p, bool tolerant)
{
	uint32_t sums_at = wire_align8(sizeof(struct wire_pages) +
				       4 * p->count);
	const uint64_t *sums = (const uint64_t *)(rec->meta + sums_at);

	for (uint32_t i = 0; i < p->count; i++) {
		if (ferry_wire_page_sum(p->data + i * p->page_size,
					p->page_size) == sums[i])
			continue;
		if (!p->live && !tolerant)
			return wire_bad(ck, "PAGES page %u (index %u) checksum "
					"mismatch", i, p->index[i]);
		p->torn[i / 64] |= 1ULL << (i % 64);
		p->nr_torn++;
	}
	return 0;
}

/* PAGES, ZERO_PAGES and REFETCH share their fixed part and indices. */
static int dec_batch(const struct ferry_wire_stream *s,
		     const struct ferry_wire_rec *rec,
		     struct ferry_wire_pages *p)
{
	struct wire_chk ck = dec_chk(rec);
	int ret;

	if ((ret = pages_fixed(&ck, s, rec, p)) ||
	    (ret = pages_lengths(&ck, rec, p)))
		return ret;
	p->index = (const uint32_t *)(rec->meta + sizeof(struct wire_pages));
	return wire_check_indices(&ck, s, ferry_wire_type_name(rec->type),
				  p->region, p->index, p->count);
}

static int dec_pages(const struct ferry_wire_stream *s,
		     const struct ferry_wire_rec *rec,
		     struct ferry_wire_pages *p, bool tolerant)
{
	struct wire_chk ck = dec_chk(rec);
	int ret;

	if (rec->type != FERRY_WIRE_PAGES && rec->type != FERRY_WIRE_ZERO_PAGES)
		return misuse(rec, "PAGES or ZERO_PAGES");
	ret = dec_batch(s, rec, p);
	if (ret || rec->type == FERRY_WIRE_ZERO_PAGES)
		return ret;
	p->data = rec->data;
	return pages_verify(&ck, rec, p, tolerant);
}

int ferry_wire_dec_pages(const struct ferry_wire_stream *s,
			 const struct ferry_wire_rec *rec,
			 struct ferry_wire_pages *p)
{
	return dec_pages(s, rec, p, false);
}

int ferry_wire_dec_pages_tolerant(const struct ferry_wire_stream *s,
				  const struct ferry_wire_rec *rec,
				  struct ferry_wire_pages *p)
{
	return dec_pages(s, rec, p, true);
}

int ferry_wire_dec_refetch(const struct ferry_wire_stream *s,
			   const struct ferry_wire_rec *rec,
			   struct ferry_wire_pages *p)
{
	if (rec->type != FERRY_WIRE_REFETCH)
		return misuse(rec, "REFETCH");
	return dec_batch(s, rec, p);
}

int ferry_wire_dec_bitmap(const struct ferry_wire_stream *s,
			  const struct ferry_wire_rec *rec,
			  struct ferry_wire_bitmap *b)
{
	struct wire_chk ck = dec_chk(rec);
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
	if ((ret = wire_check_bitmap(&ck, s, b)) ||
	    (ret = check_meta_len(&ck, rec, sizeof(fx) +
				  (fx.nr_bits + 63ULL) / 64 * 8)))
		return ret;
	return wire_check_bitmap_tail(&ck, b);
}

int ferry_wire_dec_vcpu(const struct ferry_wire_stream *s,
			const struct ferry_wire_rec *rec,
			struct ferry_wire_vcpu *v)
{
	struct wire_chk ck = dec_chk(rec);
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
	if ((ret = wire_check_vcpu(&ck, s, v)))
		return ret;
	return dec_blob(&ck, rec, sizeof(fx), fx.regs_len, &v->regs);
}

int ferry_wire_dec_round_end(const struct ferry_wire_rec *rec,
			     struct ferry_wire_round_end *r)
{
	struct wire_chk ck = dec_chk(rec);
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
	struct wire_chk ck = dec_chk(rec);
	struct wire_switchover fx;
	int ret = dec_fixed(rec, FERRY_WIRE_SWITCHOVER, &fx, sizeof(fx));

	if (ret || (ret = wire_check_mode(&ck, fx.mode)))
		return ret;
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
	struct wire_chk ck = dec_chk(rec);
	struct wire_error fx;
	const void *msg;
	int ret;

	if ((ret = take(&ck, rec, FERRY_WIRE_ERROR, &fx, sizeof(fx))))
		return ret;
	if (!fx.err || fx.err > 4095 || fx.msg_len > FERRY_WIRE_MAX_MSG)
		return wire_bad(&ck, "ERROR code %u or message length %u out "
				"of range", fx.err, fx.msg_len);
	if ((ret = dec_blob(&ck, rec, sizeof(fx), fx.msg_len, &msg)) ||
	    (ret = wire_check_text(&ck, msg, fx.msg_len)))
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
	struct wire_chk ck = dec_chk(rec);
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
	return wire_check_request(&ck, s, q);
}

int ferry_wire_dec_extent(const struct ferry_wire_stream *s,
			  const struct ferry_wire_rec *rec,
			  struct ferry_wire_extent *e)
{
	struct wire_chk ck = dec_chk(rec);
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
	if ((ret = wire_check_extent(&ck, s, e)))
		return ret;
	return check_meta_len(&ck, rec, sizeof(fx) + 8ULL * fx.count);
}

int ferry_wire_dec_accept(const struct ferry_wire_rec *rec,
			  struct ferry_wire_accept *a)
{
	struct wire_chk ck = dec_chk(rec);
	struct wire_accept fx;
	int ret = dec_fixed(rec, FERRY_WIRE_ACCEPT, &fx, sizeof(fx));

	if (ret || (ret = check_zero(&ck, "ACCEPT", fx.reserved0)) ||
	    (ret = check_zero(&ck, "ACCEPT", fx.reserved1)))
		return ret;
	if (!fx.id || !fx.version)
		return wire_bad(&ck, "ACCEPT of version %u, migration %llu",
				fx.version, (unsigned long long)fx.id);
	*a = (struct ferry_wire_accept){ .version = fx.version, .id = fx.id };
	return 0;
}

int ferry_wire_dec_resume(const struct ferry_wire_rec *rec,
			  struct ferry_wire_resume *r)
{
	struct wire_chk ck = dec_chk(rec);
	struct wire_resume fx;
	int ret = dec_fixed(rec, FERRY_WIRE_RESUME, &fx, sizeof(fx));

	if (ret || (ret = check_zero(&ck, "RESUME", fx.reserved)))
		return ret;
	*r = (struct ferry_wire_resume){ .id = fx.id, .owed = fx.owed,
					 .nr_bitmaps = fx.nr_bitmaps };
	return wire_check_resume(&ck, r);
}

int ferry_wire_dec_heartbeat(const struct ferry_wire_rec *rec,
			     struct ferry_wire_heartbeat *hb)
{
	struct wire_heartbeat fx = { 0 };
	int ret = dec_fixed(rec, FERRY_WIRE_HEARTBEAT, &fx, sizeof(fx));

	*hb = (struct ferry_wire_heartbeat){ fx.seq, fx.data_received };
	return ret;
}

int ferry_wire_dec_commit(const struct ferry_wire_rec *rec, uint64_t *id)
{
	struct wire_chk ck = dec_chk(rec);
	struct wire_commit fx;
	int ret = dec_fixed(rec, FERRY_WIRE_COMMIT, &fx, sizeof(fx));

	if (ret)
		return ret;
	if (!fx.id)
		return wire_bad(&ck, "COMMIT of migration id 0");
	*id = fx.id;
	return 0;
}
