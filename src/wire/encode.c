// SPDX-License-Identifier: MIT
/*
 * wire encoders: a frame per record, an iovec pointing at the caller's
 * memory (page data straight from guest memory, never copied) and the
 * meta checksum.  records.c seals the header and sends it.  Each encoder
 * first checks its input as a decoder would (check.c).
 */
#include <string.h>

#include "base/error.h"
#include "wire/check.h"
#include "wire/sum.h"
#include "wire/wire.h"

/* ---- frames ---- */

static const struct wire_chk enc = { .decoding = false };

_Static_assert(sizeof(struct wire_header) <=
	       sizeof(((struct ferry_wire_frame *)0)->fixed), "fixed");

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
	frame_meta(f, wire_zeroes, wire_align8(f->meta_len) - f->meta_len);
}

/*
 * Checksum the meta: every iov so far but the header.  The streaming state
 * comes from the library, whose layout it is (no struct on our stack).
 */
static int frame_seal_meta(struct ferry_wire_frame *f)
{
	XXH3_state_t *state;

	if (f->iovcnt == 2) {
		f->meta_sum = wire_sum(f->iov[1].iov_base, f->iov[1].iov_len);
		return 0;
	}
	state = XXH3_createState();
	if (!state)
		return ferry_fail(-ENOMEM, "encoding %s: out of memory",
				  ferry_wire_type_name(f->type));
	XXH3_64bits_reset(state);
	for (int i = 1; i < f->iovcnt; i++)
		wire_sum_update(state, f->iov[i].iov_base, f->iov[i].iov_len);
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

/* ---- one encoder per record type ---- */

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
		.id = s->id,
	};
	int ret = wire_check_stream(&enc, s);

	if (!ret)
		ret = wire_check_id(&enc, s);
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
	int ret = wire_check_region(&enc, s, what, b->region);

	if (!ret)
		ret = wire_check_count(&enc, what, b->count, max);
	if (!ret && max == FERRY_WIRE_MAX_PAGES)
		ret = wire_check_batch_data(&enc, s, what, b->region,
					    b->count);
	if (!ret)
		ret = wire_check_indices(&enc, s, what, b->region, b->index,
					 b->count);
	return ret;
}

static void start_batch(struct ferry_wire_frame *f, enum ferry_wire_type type,
			const struct ferry_wire_batch *b)
{
	struct wire_pages fx = {
		.region = b->region,
		.count = b->count,
		.request_id = type == FERRY_WIRE_REFETCH ? 0 : b->request_id,
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

int ferry_wire_enc_refetch(struct ferry_wire_frame *f,
			   const struct ferry_wire_stream *s,
			   const struct ferry_wire_batch *b)
{
	int ret = check_batch(s, b, "REFETCH", FERRY_WIRE_MAX_ZERO);

	if (ret)
		return ret;
	start_batch(f, FERRY_WIRE_REFETCH, b);
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
	int ret = wire_check_bitmap(&enc, s, b);

	if (!ret)
		ret = wire_check_bitmap_tail(&enc, b);
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
	int ret = wire_check_vcpu(&enc, s, v);

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

int ferry_wire_enc_switchover(struct ferry_wire_frame *f,
			      enum ferry_wire_switch_mode mode)
{
	struct wire_switchover fx = { .mode = mode };
	int ret = wire_check_mode(&enc, mode);

	if (ret)
		return ret;
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
		n = wire_utf8_seq(in + i, len - i);
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
		return wire_bad(&enc, "ERROR code %d is not an errno", err);
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
	int ret = wire_check_request(&enc, s, q);

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
	int ret = wire_check_extent(&enc, s, e);

	if (ret)
		return ret;
	return enc_blob(f, FERRY_WIRE_PAGE_EXTENT, &fx, sizeof(fx), e->sums,
			(size_t)e->count * sizeof(uint64_t));
}

int ferry_wire_enc_accept(struct ferry_wire_frame *f,
			  const struct ferry_wire_accept *a)
{
	struct wire_accept fx = { .version = (uint16_t)a->version,
				  .id = a->id };

	if (!a->id || !a->version || a->version > UINT16_MAX)
		return wire_bad(&enc, "ACCEPT of version %u, migration %llu",
				a->version, (unsigned long long)a->id);
	return enc_fixed(f, FERRY_WIRE_ACCEPT, &fx, sizeof(fx));
}

int ferry_wire_enc_resume(struct ferry_wire_frame *f,
			  const struct ferry_wire_resume *r)
{
	struct wire_resume fx = { .id = r->id, .owed = r->owed,
				  .nr_bitmaps = r->nr_bitmaps };
	int ret = wire_check_resume(&enc, r);

	return ret ? ret : enc_fixed(f, FERRY_WIRE_RESUME, &fx, sizeof(fx));
}

int ferry_wire_enc_heartbeat(struct ferry_wire_frame *f,
			     const struct ferry_wire_heartbeat *hb)
{
	struct wire_heartbeat fx = { .seq = hb->seq,
				     .data_received = hb->data_received };

	return enc_fixed(f, FERRY_WIRE_HEARTBEAT, &fx, sizeof(fx));
}

int ferry_wire_enc_commit(struct ferry_wire_frame *f, uint64_t id)
{
	struct wire_commit fx = { .id = id };

	if (!id)
		return wire_bad(&enc, "COMMIT of migration id 0");
	return enc_fixed(f, FERRY_WIRE_COMMIT, &fx, sizeof(fx));
}

/* ---- the stream description ---- */

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
		return wire_bad(&enc, "%u regions (%u at most)",
				mem->nr_regions, FERRY_WIRE_MAX_REGIONS);
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
	return wire_check_stream(&enc, s);
}
