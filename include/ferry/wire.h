/* SPDX-License-Identifier: MIT */
#ifndef FERRY_WIRE_H
#define FERRY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "ferry/mem.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * wire: the record stream that carries a VM between two hosts (live
 * migration) or into and out of a file (snapshot).  docs/wire.md gives the
 * byte layout of every record; this header is the API over it.
 *
 * A stream is a sequence of records, each a 32-byte header, then `meta`
 * (fixed fields, index arrays, checksums, blobs: covered by one checksum),
 * then `data` (page contents, PAGES only: covered by one checksum per page).
 *
 * Sending:   ferry_wire_enc_<type>() fills a frame with an iovec that points
 *            at the caller's memory (page data straight from guest memory,
 *            never copied), then ferry_wire_send() stamps the channel's
 *            record number and writes it.
 * Receiving: ferry_wire_recv() reads one record into a bounded buffer and
 *            verifies its header and meta checksums before returning it;
 *            ferry_wire_dec_<type>() then checks every count, index and
 *            length against the record and against the stream description
 *            (from the HEADER record) and returns a view into the buffer.
 *
 * Everything received is hostile until a decoder has accepted it: a bad
 * stream is -EBADMSG (-EPROTO for another format version, -E2BIG for a
 * record larger than the buffer, -EPIPE for a stream that ends inside a
 * record), with a reason naming the record, via ferry_error_msg().
 */

#define FERRY_WIRE_VERSION	2

/* Bounds.  A decoder refuses anything beyond them. */
#define FERRY_WIRE_HDR_SIZE	32		/* record header */
#define FERRY_WIRE_MAX_PAGES	512		/* pages in one PAGES record */
#define FERRY_WIRE_MAX_DATA	(4U << 20)	/* page data in one record */
#define FERRY_WIRE_MAX_ZERO	16384		/* indices in one ZERO_PAGES */
#define FERRY_WIRE_MAX_REGIONS	64
#define FERRY_WIRE_MAX_VCPUS	1024
#define FERRY_WIRE_MAX_DESC	(64U << 10)	/* guest description blob */
#define FERRY_WIRE_MAX_REGS	(64U << 10)	/* one vCPU's register blob */
#define FERRY_WIRE_MAX_MSG	1024		/* ERROR message bytes */
#define FERRY_WIRE_MAX_BITS	(1U << 23)	/* bits in one BITMAP record */
#define FERRY_WIRE_MAX_EXTENT	65536		/* pages in one PAGE_EXTENT */
#define FERRY_WIRE_MAX_META	((1U << 20) + 64)
#define FERRY_WIRE_MAX_OWED_BITMAPS (1U << 20)	/* BITMAPs after a RESUME */

/*
 * A receive buffer of this many bytes takes any record.  Allocate it
 * page-aligned: ferry_wire_recv() then puts page data on a page boundary.
 */
#define FERRY_WIRE_BUF_SIZE	(FERRY_WIRE_MAX_DATA + 8192)

enum ferry_wire_type {
	FERRY_WIRE_HEADER = 1,		/* stream description; always first */
	FERRY_WIRE_PAGES = 2,		/* a batch of pages of one region */
	FERRY_WIRE_ZERO_PAGES = 3,	/* pages that are all zero: indices only */
	FERRY_WIRE_BITMAP = 4,		/* DIRTY or STALE bits of part of a region */
	FERRY_WIRE_VCPU = 5,		/* one vCPU's MP state and registers */
	FERRY_WIRE_ROUND_END = 6,	/* end of a pre-copy round */
	FERRY_WIRE_SWITCHOVER = 7,	/* source paused; the mode that follows */
	FERRY_WIRE_COMPLETE = 8,	/* nothing more will follow */
	FERRY_WIRE_ERROR = 9,		/* the sender gives up, and why */
	FERRY_WIRE_PAGE_REQUEST = 10,	/* urgent: send me these pages now */
	FERRY_WIRE_PAGE_EXTENT = 11,	/* snapshot: pages stored at a file offset */
	FERRY_WIRE_ACCEPT = 12,		/* urgent: HEADER accepted, send */
	FERRY_WIRE_HEARTBEAT = 13,	/* urgent: alive, and what came in */
	FERRY_WIRE_REFETCH = 14,	/* urgent: these pages failed: again */
	FERRY_WIRE_RESUME = 15,		/* urgent: resume a paused migration */
	FERRY_WIRE_COMMIT = 16,		/* urgent: the VM is the dest's */
	FERRY_WIRE_TYPE_COUNT
};

/*
 * Record flag: the pages were read from a guest that was running, so a
 * page may have changed while it was being sent.  A page whose data no
 * longer matches its checksum is then reported torn rather than failing
 * the stream; without the flag a mismatch is -EBADMSG.  A torn page is
 * never installed, and never just dropped either: the reader cannot tell
 * a guest write from a byte changed in transit (which does not dirty the
 * page at the source, so it would not come again), so a migration asks
 * for it again (REFETCH).
 */
#define FERRY_WIRE_F_LIVE	(1U << 0)

enum ferry_wire_kind {
	FERRY_WIRE_MIGRATION = 1,
	FERRY_WIRE_SNAPSHOT = 2,
};

enum ferry_wire_bitmap_kind {
	FERRY_WIRE_BITMAP_DIRTY = 1,	/* written since the last send */
	FERRY_WIRE_BITMAP_STALE = 2,	/* destination copy out of date */
	FERRY_WIRE_BITMAP_OWED = 3,	/* after RESUME: still needed there */
};

enum ferry_wire_switch_mode {
	FERRY_WIRE_SWITCH_PRECOPY = 1,	/* the rest follows; resume after */
	FERRY_WIRE_SWITCH_POSTCOPY = 2,	/* resume now; fetch stale pages */
};

/* One region of the stream description. */
struct ferry_wire_region {
	enum ferry_backing backing;
	uint64_t page_size;	/* 4 KiB, or 2 MiB for hugetlb */
	uint64_t size;		/* bytes, a multiple of page_size */
	uint64_t nr_pages;	/* size / page_size, at most 2^32 */
	uint64_t guest_base;	/* guest-physical address of byte 0 */
};

/*
 * The stream description: what the HEADER record carries.  Regions are
 * sorted by guest_base and do not overlap.  `desc` is the VM config the
 * destination builds its VM from, opaque to ferry; after decoding it points
 * into the receive buffer (copy it before reusing the buffer).
 */
struct ferry_wire_stream {
	unsigned int version;
	enum ferry_wire_kind kind;
	uint64_t id;		/* migration: its random id, not 0; snapshot:
				 * 0.  ferry_wire_stream_init() sets 0 */
	unsigned int nr_vcpus;
	unsigned int nr_regions;
	struct ferry_wire_region regions[FERRY_WIRE_MAX_REGIONS];
	const void *desc;
	uint32_t desc_len;
};

/*
 * Fill a stream description from guest memory.  -EINVAL with a reason if
 * mem does not fit the format (too many regions, 2^32 pages or more).
 */
int ferry_wire_stream_init(struct ferry_wire_stream *stream,
			   const struct ferry_mem *mem,
			   enum ferry_wire_kind kind, unsigned int nr_vcpus,
			   const void *desc, uint32_t desc_len);

/* What ferry_wire_enc_pages() / enc_zero_pages() send. */
struct ferry_wire_batch {
	uint32_t region;
	uint32_t count;
	const uint32_t *index;	/* count page indices, strictly ascending */
	const void *base;	/* PAGES: page n is at base + n * page_size */
	uint64_t request_id;	/* the PAGE_REQUEST this answers; 0: pushed */
	bool live;		/* FERRY_WIRE_F_LIVE */
};

/* A decoded PAGES or ZERO_PAGES record; pointers into the record. */
struct ferry_wire_pages {
	uint32_t region;
	uint32_t count;
	size_t page_size;
	uint64_t request_id;
	bool live;
	const uint32_t *index;	/* strictly ascending, each < nr_pages */
	const uint8_t *data;	/* page i at data + i * page_size; NULL: zero */
	uint32_t nr_torn;	/* live pages that changed while being sent */
	uint64_t torn[FERRY_WIRE_MAX_PAGES / 64];
};

static inline bool ferry_wire_page_torn(const struct ferry_wire_pages *p,
					uint32_t i)
{
	return p->torn[i / 64] >> (i % 64) & 1;
}

/*
 * DIRTY or STALE bits for pages [first_page, first_page + nr_bits) of a
 * region.  Bit b of words[w] stands for page first_page + 64 * w + b.
 * first_page is a multiple of 64, so words OR straight into a region-wide
 * bitmap.  Bits past nr_bits in the last word are zero.
 */
struct ferry_wire_bitmap {
	uint32_t region;
	enum ferry_wire_bitmap_kind kind;
	uint32_t first_page;
	uint32_t nr_bits;
	const uint64_t *words;
};

/*
 * One vCPU.  mp_state is carried as is (the vCPU layer checks it; the KVM
 * values, KVM_MP_STATE_*); regs is the vCPU layer's opaque register blob.
 */
struct ferry_wire_vcpu {
	uint32_t index;		/* < the stream's nr_vcpus */
	uint32_t mp_state;
	uint32_t regs_len;	/* <= FERRY_WIRE_MAX_REGS */
	const void *regs;
};

struct ferry_wire_round_end {
	uint32_t round;
	uint64_t pages;		/* pages (data and zero) sent in the round */
};

struct ferry_wire_complete {
	uint64_t pages;		/* pages with data sent in the whole stream */
	uint64_t zero_pages;	/* zero pages sent in the whole stream */
};

/*
 * The sender's reason for giving up.  Decoding copies the message out and
 * NUL-terminates it; it is valid UTF-8 without control characters, safe to
 * print.
 */
struct ferry_wire_error {
	int err;		/* a positive errno */
	char msg[FERRY_WIRE_MAX_MSG + 1];
};

/*
 * The destination accepts a HEADER (ACCEPT) or resumes a paused migration
 * (RESUME, followed by `nr_bitmaps` BITMAP records of kind OWED on the
 * same channel, with `owed` bits set in all).
 */
struct ferry_wire_accept {
	uint32_t version;	/* the destination's FERRY_WIRE_VERSION */
	uint64_t id;		/* the HEADER's migration id, echoed */
};

struct ferry_wire_resume {
	uint64_t id;		/* the migration being resumed */
	uint64_t owed;		/* pages still owed, over every region */
	uint32_t nr_bitmaps;	/* OWED bitmaps that follow */
};

/* Alive; data_received: bytes of non-HEARTBEAT records received so far. */
struct ferry_wire_heartbeat {
	uint64_t seq;
	uint64_t data_received;
};

/* Pages [page, page + count) of one region, wanted now. */
struct ferry_wire_page_request {
	uint32_t region;
	uint32_t page;
	uint32_t count;		/* the reply fits one PAGES record */
	uint64_t request_id;	/* echoed in the reply; never 0 */
};

/*
 * Snapshot files: pages [first_page, first_page + count) of a region are
 * stored at file_offset (aligned to the region's page size), one checksum
 * per page in sums.  The file's size is the snapshot reader's to check.
 */
struct ferry_wire_extent {
	uint32_t region;
	uint32_t first_page;
	uint32_t count;
	uint64_t file_offset;
	const uint64_t *sums;	/* count ferry_wire_page_sum() values */
};

/* A record as received: header fields and views of meta and data. */
struct ferry_wire_rec {
	enum ferry_wire_type type;
	unsigned int flags;
	uint64_t nr;		/* channel-local record number, from 0 */
	const uint8_t *meta;
	uint32_t meta_len;
	const uint8_t *data;
	uint32_t data_len;
};

/*
 * A record ready to send: ferry_wire_enc_*() fill it, ferry_wire_send() or
 * ferry_wire_seal() finish it.  iov[0] is the record header; the rest
 * points into this frame and into the memory the encoder was given, which
 * must stay unchanged until the frame is sent (except the pages of a live
 * batch).  About 13 KiB: keep one per sending thread.
 */
#define FERRY_WIRE_FRAME_IOV	(FERRY_WIRE_MAX_PAGES + 8)

struct ferry_wire_frame {
	struct iovec iov[FERRY_WIRE_FRAME_IOV];
	int iovcnt;
	enum ferry_wire_type type;
	unsigned int flags;
	uint32_t meta_len;
	uint32_t data_len;
	uint64_t meta_sum;
	uint64_t hdr[FERRY_WIRE_HDR_SIZE / 8];
	uint64_t fixed[6];		/* the largest fixed part: HEADER */
	uint64_t table[FERRY_WIRE_MAX_PAGES];	/* page sums, region table */
};

/* Per-channel, per-direction record numbering.  One thread at a time. */
struct ferry_chan;

struct ferry_wire_writer {
	struct ferry_chan *chan;
	uint64_t next_nr;
};

struct ferry_wire_reader {
	struct ferry_chan *chan;	/* NULL when parsing from memory */
	uint64_t next_nr;
};

void ferry_wire_writer_init(struct ferry_wire_writer *w,
			    struct ferry_chan *chan);
void ferry_wire_reader_init(struct ferry_wire_reader *r,
			    struct ferry_chan *chan);

/* "PAGES", ..., or "type 77" (in a static buffer) for an unknown one. */
const char *ferry_wire_type_name(unsigned int type);

/* The per-page checksum of PAGES and PAGE_EXTENT: XXH3-64 of the page. */
uint64_t ferry_wire_page_sum(const void *page, size_t page_size);

/*
 * Encoders.  Each checks its input as a decoder would and returns 0, or
 * -EINVAL with a reason (the stream it would make would be refused).  The
 * ones that take a stream check regions, pages and vCPUs against it.
 */
int ferry_wire_enc_header(struct ferry_wire_frame *f,
			  const struct ferry_wire_stream *stream);

/*
 * A batch of pages sent from guest memory: one iovec per run of
 * consecutive pages, and a checksum per page taken now.
 */
int ferry_wire_enc_pages(struct ferry_wire_frame *f,
			 const struct ferry_wire_stream *stream,
			 const struct ferry_wire_batch *batch);

/* Pages that are all zero: batch->base is unused. */
int ferry_wire_enc_zero_pages(struct ferry_wire_frame *f,
			      const struct ferry_wire_stream *stream,
			      const struct ferry_wire_batch *batch);

int ferry_wire_enc_bitmap(struct ferry_wire_frame *f,
			  const struct ferry_wire_stream *stream,
			  const struct ferry_wire_bitmap *bitmap);
int ferry_wire_enc_vcpu(struct ferry_wire_frame *f,
			const struct ferry_wire_stream *stream,
			const struct ferry_wire_vcpu *vcpu);
int ferry_wire_enc_round_end(struct ferry_wire_frame *f,
			     const struct ferry_wire_round_end *round);
int ferry_wire_enc_switchover(struct ferry_wire_frame *f,
			      enum ferry_wire_switch_mode mode);
int ferry_wire_enc_complete(struct ferry_wire_frame *f,
			    const struct ferry_wire_complete *complete);

/* err: a positive or negative errno; msg is cut to FERRY_WIRE_MAX_MSG. */
int ferry_wire_enc_error(struct ferry_wire_frame *f, int err,
			 const char *msg);
int ferry_wire_enc_page_request(struct ferry_wire_frame *f,
				const struct ferry_wire_stream *stream,
				const struct ferry_wire_page_request *req);
int ferry_wire_enc_extent(struct ferry_wire_frame *f,
			  const struct ferry_wire_stream *stream,
			  const struct ferry_wire_extent *extent);
int ferry_wire_enc_accept(struct ferry_wire_frame *f,
			  const struct ferry_wire_accept *accept);
int ferry_wire_enc_resume(struct ferry_wire_frame *f,
			  const struct ferry_wire_resume *resume);
int ferry_wire_enc_heartbeat(struct ferry_wire_frame *f,
			     const struct ferry_wire_heartbeat *hb);
int ferry_wire_enc_commit(struct ferry_wire_frame *f, uint64_t id);

/* Pages to send again: batch->base and request_id are unused. */
int ferry_wire_enc_refetch(struct ferry_wire_frame *f,
			   const struct ferry_wire_stream *stream,
			   const struct ferry_wire_batch *batch);

/*
 * Finish a frame as record number `nr` of its channel: fill the header and
 * its checksum.  For writers that place records themselves (a snapshot
 * file); ferry_wire_send() does it for a channel.  Returns the record's
 * length in bytes.
 */
ssize_t ferry_wire_seal(struct ferry_wire_frame *f, uint64_t nr);

/* Seal as the channel's next record and send it whole.  Bytes, or -errno. */
ssize_t ferry_wire_send(struct ferry_wire_writer *w,
			struct ferry_wire_frame *f);

/*
 * Read the channel's next record into buf (cap bytes, 8-byte aligned;
 * FERRY_WIRE_BUF_SIZE takes any record), check the header checksum, the
 * record number and the bounds, then read meta and data and check the meta
 * checksum.  Data lands at the first page boundary after the meta (relative
 * to buf).  Returns the record's length on the wire, 0 when the stream ends
 * cleanly between records, or -errno: -EBADMSG, -E2BIG, -EPIPE when the
 * stream ends inside a record, or the channel's error.
 */
ssize_t ferry_wire_recv(struct ferry_wire_reader *r, void *buf, size_t cap,
			struct ferry_wire_rec *rec);

/*
 * The same on bytes in memory (a mapped snapshot file, a fuzzer's input):
 * rec points into `bytes`, which must be 8-byte aligned.  Returns the
 * bytes the record takes, 0 if len is 0, or -errno as ferry_wire_recv().
 */
ssize_t ferry_wire_parse(struct ferry_wire_reader *r, const void *bytes,
			 size_t len, struct ferry_wire_rec *rec);

/*
 * Decoders.  Each takes a record the reader returned, checks it is of its
 * type (-EINVAL if not: a caller bug), then checks every field and length
 * (-EBADMSG with "record N: ..." if one is wrong) and fills a view.
 * ferry_wire_dec_pages() takes PAGES and ZERO_PAGES and verifies each
 * page's checksum: a mismatch is -EBADMSG, or a torn page if live.
 */
int ferry_wire_dec_header(const struct ferry_wire_rec *rec,
			  struct ferry_wire_stream *stream);
int ferry_wire_dec_pages(const struct ferry_wire_stream *stream,
			 const struct ferry_wire_rec *rec,
			 struct ferry_wire_pages *pages);
int ferry_wire_dec_bitmap(const struct ferry_wire_stream *stream,
			  const struct ferry_wire_rec *rec,
			  struct ferry_wire_bitmap *bitmap);
int ferry_wire_dec_vcpu(const struct ferry_wire_stream *stream,
			const struct ferry_wire_rec *rec,
			struct ferry_wire_vcpu *vcpu);
int ferry_wire_dec_round_end(const struct ferry_wire_rec *rec,
			     struct ferry_wire_round_end *round);
int ferry_wire_dec_switchover(const struct ferry_wire_rec *rec,
			      enum ferry_wire_switch_mode *mode);
int ferry_wire_dec_complete(const struct ferry_wire_rec *rec,
			    struct ferry_wire_complete *complete);
int ferry_wire_dec_error(const struct ferry_wire_rec *rec,
			 struct ferry_wire_error *error);
int ferry_wire_dec_page_request(const struct ferry_wire_stream *stream,
				const struct ferry_wire_rec *rec,
				struct ferry_wire_page_request *req);
int ferry_wire_dec_extent(const struct ferry_wire_stream *stream,
			  const struct ferry_wire_rec *rec,
			  struct ferry_wire_extent *extent);

/*
 * PAGES as ferry_wire_dec_pages(), but a page whose data does not match
 * its sum is reported in torn[], live or not, instead of failing the
 * record: the header and meta checksums vouch for the record's framing,
 * so only that page's data is in doubt, and a migration fetches it again
 * (docs/migration.md) rather than end over one page.
 */
int ferry_wire_dec_pages_tolerant(const struct ferry_wire_stream *stream,
				  const struct ferry_wire_rec *rec,
				  struct ferry_wire_pages *pages);
int ferry_wire_dec_accept(const struct ferry_wire_rec *rec,
			  struct ferry_wire_accept *accept);
int ferry_wire_dec_resume(const struct ferry_wire_rec *rec,
			  struct ferry_wire_resume *resume);
int ferry_wire_dec_heartbeat(const struct ferry_wire_rec *rec,
			     struct ferry_wire_heartbeat *hb);
int ferry_wire_dec_commit(const struct ferry_wire_rec *rec, uint64_t *id);

/* REFETCH: the same view as ZERO_PAGES (data NULL, request_id 0). */
int ferry_wire_dec_refetch(const struct ferry_wire_stream *stream,
			   const struct ferry_wire_rec *rec,
			   struct ferry_wire_pages *pages);

#ifdef __cplusplus
}
#endif

#endif
