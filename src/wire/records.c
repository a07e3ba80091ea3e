// SPDX-License-Identifier: MIT
/*
 * wire records: the 32-byte header that frames every record, and records
 * in and out of a channel (or out of memory, for a mapped file).
 *
 * A reader trusts nothing: the header checksum holds before its lengths
 * are used, the lengths are bounded before anything is read, and the meta
 * checksum holds before a decoder sees the record.
 */
#include <stdio.h>
#include <string.h>

#include "base/error.h"
#include "ferry/net.h"
#include "wire/check.h"
#include "wire/sum.h"
#include "wire/wire.h"

_Static_assert(sizeof(struct wire_rec_hdr) == FERRY_WIRE_HDR_SIZE, "hdr");
_Static_assert(WIRE_PAGES_MAX_META + FERRY_WIRE_HDR_SIZE <= 8192, "buf");
_Static_assert(FERRY_WIRE_MAX_META + FERRY_WIRE_HDR_SIZE <=
	       FERRY_WIRE_BUF_SIZE, "buf");

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

/* ---- out ---- */

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

	h.head_sum = wire_sum(&h, offsetof(struct wire_rec_hdr, head_sum));
	memcpy(f->hdr, &h, sizeof(h));
	return (ssize_t)FERRY_WIRE_HDR_SIZE + f->meta_len + f->data_len;
}

void ferry_wire_writer_init(struct ferry_wire_writer *w,
			    struct ferry_chan *chan)
{
	*w = (struct ferry_wire_writer){ .chan = chan };
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

/* ---- in ---- */

void ferry_wire_reader_init(struct ferry_wire_reader *r,
			    struct ferry_chan *chan)
{
	*r = (struct ferry_wire_reader){ .chan = chan };
}

static struct wire_chk rd_chk(const struct ferry_wire_reader *r)
{
	return (struct wire_chk){ .decoding = true, .nr = r->next_nr };
}

static int check_flags(const struct wire_chk *ck,
		       const struct wire_rec_hdr *h)
{
	unsigned int allowed = h->type == FERRY_WIRE_PAGES ?
			       FERRY_WIRE_F_LIVE : 0;

	if (!(h->flags & ~allowed))
		return 0;
	return wire_bad(ck, "flags 0x%x not valid on a %s record", h->flags,
			ferry_wire_type_name(h->type));
}

static int check_lengths(const struct wire_chk *ck,
			 const struct wire_rec_hdr *h)
{
	const char *name = ferry_wire_type_name(h->type);

	if (h->meta_len % 8)
		return wire_bad(ck, "%s meta length %u not a multiple of 8",
				name, h->meta_len);
	if (h->meta_len > FERRY_WIRE_MAX_META)
		return wire_bad_err(ck, -E2BIG, "%s meta of %u bytes (%u at "
				    "most)", name, h->meta_len,
				    FERRY_WIRE_MAX_META);
	if (h->data_len && h->type != FERRY_WIRE_PAGES)
		return wire_bad(ck, "%s record carries %u bytes of page data",
				name, h->data_len);
	if (h->data_len > FERRY_WIRE_MAX_DATA)
		return wire_bad_err(ck, -E2BIG, "%s data of %u bytes (%u at "
				    "most)", name, h->data_len,
				    FERRY_WIRE_MAX_DATA);
	if (h->data_len && h->meta_len > WIRE_PAGES_MAX_META)
		return wire_bad(ck, "PAGES meta of %u bytes (%u at most)",
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
	struct wire_chk ck = rd_chk(r);
	uint64_t sum = wire_sum(h, offsetof(struct wire_rec_hdr, head_sum));

	if (h->magic != WIRE_REC_MAGIC)
		return wire_bad(&ck, "bad record magic 0x%04x: not a ferry "
				"stream, or out of step", h->magic);
	if (sum != h->head_sum)
		return wire_bad(&ck, "header checksum mismatch");
	if (!h->type || h->type >= FERRY_WIRE_TYPE_COUNT)
		return wire_bad(&ck, "unknown record type %u", h->type);
	if (h->nr != (uint32_t)r->next_nr)
		return wire_bad(&ck, "arrived numbered %u (records lost, "
				"repeated or out of order)", h->nr);
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
	struct wire_chk ck = rd_chk(r);

	if (wire_sum(meta, h->meta_len) != h->meta_sum)
		return wire_bad(&ck, "%s record checksum mismatch",
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
	struct wire_chk ck = rd_chk(r);
	char size[32], room[32];

	if (need <= cap)
		return 0;
	return wire_bad_err(&ck, -E2BIG, "%s %s record does not fit the %s "
			    "receive buffer",
			    fmt_size(size, sizeof(size), need),
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
