/* SPDX-License-Identifier: MIT */
#ifndef FERRY_WIRE_INTERNAL_H
#define FERRY_WIRE_INTERNAL_H

/*
 * The byte layouts of docs/wire.md as C structs.  Every field is naturally
 * aligned, so the structs have no padding and, on a little-endian host,
 * are the bytes on the wire.
 */
#include <stdint.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "the wire is little-endian: this host needs byte swapping");

#define WIRE_REC_MAGIC		0x5246		/* "FR" */
#define WIRE_STREAM_MAGIC	"FERRYSTR"	/* HEADER, first 8 bytes */

/* PAGES meta at FERRY_WIRE_MAX_PAGES: fixed, indices, sums. */
#define WIRE_PAGES_MAX_META	(16 + 4 * FERRY_WIRE_MAX_PAGES + \
				 8 * FERRY_WIRE_MAX_PAGES)

struct wire_rec_hdr {
	uint16_t magic;
	uint8_t type;
	uint8_t flags;
	uint32_t nr;		/* record number on the channel, mod 2^32 */
	uint32_t meta_len;
	uint32_t data_len;
	uint64_t meta_sum;	/* XXH3-64 of the meta */
	uint64_t head_sum;	/* XXH3-64 of the 24 bytes above */
};

/* The first 12 bytes of HEADER mean the same in every version. */
struct wire_header_start {
	char magic[8];
	uint16_t version;
	uint16_t kind;
};

struct wire_header {
	char magic[8];
	uint16_t version;
	uint16_t kind;
	uint32_t nr_regions;
	uint32_t nr_vcpus;
	uint32_t desc_len;
	uint64_t reserved;	/* no padding anywhere: every byte is set */
	uint64_t id;		/* migration id; 0 in a snapshot */
};

struct wire_region {
	uint32_t backing;
	uint32_t page_shift;
	uint64_t size;
	uint64_t guest_base;
};

struct wire_pages {		/* PAGES and ZERO_PAGES */
	uint32_t region;
	uint32_t count;
	uint64_t request_id;
};

struct wire_bitmap {
	uint32_t region;
	uint32_t kind;
	uint32_t first_page;
	uint32_t nr_bits;
};

struct wire_vcpu {
	uint32_t index;
	uint32_t mp_state;
	uint32_t regs_len;
	uint32_t reserved;
};

struct wire_round_end {
	uint32_t round;
	uint32_t reserved;
	uint64_t pages;
};

struct wire_switchover {
	uint32_t mode;
	uint32_t reserved;
};

struct wire_complete {
	uint64_t pages;
	uint64_t zero_pages;
};

struct wire_error {
	uint32_t err;
	uint32_t msg_len;
};

struct wire_request {
	uint32_t region;
	uint32_t page;
	uint32_t count;
	uint32_t reserved;
	uint64_t request_id;
};

struct wire_extent {
	uint32_t region;
	uint32_t first_page;
	uint32_t count;
	uint32_t reserved;
	uint64_t file_offset;
};

struct wire_accept {
	uint16_t version;
	uint16_t reserved0;
	uint32_t reserved1;
	uint64_t id;
};

struct wire_resume {
	uint64_t id;
	uint64_t owed;
	uint32_t nr_bitmaps;
	uint32_t reserved;
};

struct wire_heartbeat {
	uint64_t seq;
	uint64_t data_received;
};

struct wire_commit {
	uint64_t id;
};

_Static_assert(sizeof(struct wire_header) == 40, "layout");
_Static_assert(sizeof(struct wire_accept) == 16, "layout");
_Static_assert(sizeof(struct wire_resume) == 24, "layout");
_Static_assert(sizeof(struct wire_region) == 24, "layout");
_Static_assert(sizeof(struct wire_pages) == 16, "layout");
_Static_assert(sizeof(struct wire_request) == 24, "layout");
_Static_assert(sizeof(struct wire_extent) == 24, "layout");

#endif
