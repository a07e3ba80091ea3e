/* SPDX-License-Identifier: MIT */
#ifndef FERRY_WIRE_CHECK_H
#define FERRY_WIRE_CHECK_H

/*
 * The checks encoders and decoders share, on decoded fields: what an
 * encoder accepts, a decoder accepts.  Each returns 0, or fails through
 * wire_bad() with a reason naming the field.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/wire.h"

/*
 * Who checks: a decoder names the record ("record 17: ...") and fails
 * -EBADMSG; an encoder fails -EINVAL, its caller's bug.
 */
struct wire_chk {
	bool decoding;
	uint64_t nr;		/* decoding: the record's number */
};

/* Record a reason as ck words it: -EBADMSG decoding, -EINVAL encoding. */
__attribute__((format(printf, 2, 3)))
int wire_bad(const struct wire_chk *ck, const char *fmt, ...);

/* Same, with another errno when decoding (-EPROTO, -E2BIG). */
__attribute__((format(printf, 3, 4)))
int wire_bad_err(const struct wire_chk *ck, int err, const char *fmt, ...);

/* Padding: meta is a multiple of 8 bytes, padded with these. */
extern const uint8_t wire_zeroes[8];

static inline uint32_t wire_align8(uint64_t len)
{
	return (uint32_t)((len + 7) & ~7ULL);
}

/* Bytes in the printable UTF-8 sequence at p (at most left), or 0. */
size_t wire_utf8_seq(const uint8_t *p, size_t left);

/* `what` names the record in reasons ("PAGES", "BITMAP"). */
int wire_check_region(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s, const char *what,
		      uint32_t region);
int wire_check_count(const struct wire_chk *ck, const char *what,
		     uint64_t count, uint64_t max);

/* A reply to or a request for these pages must fit one PAGES record. */
int wire_check_batch_data(const struct wire_chk *ck,
			  const struct ferry_wire_stream *s, const char *what,
			  uint32_t region, uint32_t count);

/* Each index inside the region, strictly ascending. */
int wire_check_indices(const struct wire_chk *ck,
		       const struct ferry_wire_stream *s, const char *what,
		       uint32_t region, const uint32_t *index, uint32_t count);

/* A stream description: its counts, its regions, or both. */
int wire_check_counts(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s);
int wire_check_regions(const struct wire_chk *ck,
		       const struct ferry_wire_stream *s);
int wire_check_stream(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s);

/* HEADER: a migration's id is not 0, a snapshot's is. */
int wire_check_id(const struct wire_chk *ck,
		  const struct ferry_wire_stream *s);
int wire_check_resume(const struct wire_chk *ck,
		      const struct ferry_wire_resume *r);

int wire_check_bitmap(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s,
		      const struct ferry_wire_bitmap *b);

/* No set bit past nr_bits, so a reader may OR whole words. */
int wire_check_bitmap_tail(const struct wire_chk *ck,
			   const struct ferry_wire_bitmap *b);

int wire_check_vcpu(const struct wire_chk *ck,
		    const struct ferry_wire_stream *s,
		    const struct ferry_wire_vcpu *v);
int wire_check_mode(const struct wire_chk *ck, uint32_t mode);
int wire_check_request(const struct wire_chk *ck,
		       const struct ferry_wire_stream *s,
		       const struct ferry_wire_page_request *q);
int wire_check_extent(const struct wire_chk *ck,
		      const struct ferry_wire_stream *s,
		      const struct ferry_wire_extent *e);

/* An ERROR message: printable UTF-8, it may end up on a terminal. */
int wire_check_text(const struct wire_chk *ck, const uint8_t *text,
		    size_t len);

#endif
