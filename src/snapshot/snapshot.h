/* SPDX-License-Identifier: MIT */
#ifndef FERRY_SNAPSHOT_INTERNAL_H
#define FERRY_SNAPSHOT_INTERNAL_H

/*
 * The snapshot file, as save, restore and clones share it (the byte
 * layout is in docs/snapshot.md):
 *
 *   0           records: HEADER, VCPU x nr_vcpus, PAGE_EXTENT x k,
 *               COMPLETE, numbered 0, 1, 2, ... in that order
 *   records_end a hole up to
 *   data_start  the first multiple of 2 MiB: each extent's pages at its
 *               file_offset (a multiple of its region's page size),
 *               extents in ascending (region, page) and file order, none
 *               overlapping; an all-zero page is a hole, and its sum in
 *               the extent is the zero page's sum, so nobody reads it
 *
 * Records are written last, so a file whose save did not finish has no
 * valid HEADER and is refused.
 *
 * What both sides share is in file.c, reading (every record checked) in
 * file_read.c, writing (plan, records sealed) in file_write.c, working
 * sets in ws.c.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/snapshot.h"

#define SNAP_DATA_ALIGN		FERRY_HUGE_PAGE_SIZE

static inline uint64_t snap_round_up(uint64_t v, uint64_t to)
{
	return (v + to - 1) / to * to;
}

/* One run of pages of a region stored at file_offset. */
struct snap_extent {
	uint32_t region;
	uint32_t first_page;
	uint32_t count;
	uint64_t file_offset;
	uint64_t *sums;		/* count page sums (reading: in records) */
};

struct snap_vcpu {
	uint32_t mp_state;
	uint32_t regs_len;
	const uint8_t *regs;	/* in records */
};

struct snap_parser;

/* A snapshot opened for reading: every record has been checked. */
struct snap_file {
	int fd;
	uint64_t file_size;
	uint64_t file_blocks;		/* bytes allocated on disk */
	struct ferry_wire_stream stream;	/* desc points into records */
	struct snap_vcpu *vcpus;
	struct snap_extent *extents;
	size_t nr_extents;
	/* The extents of region i are [region_first[i], region_first[i+1]). */
	size_t region_first[FERRY_WIRE_MAX_REGIONS + 1];
	uint8_t *records;		/* file bytes [0, records_have);
					 * moves while the records are read */
	size_t records_cap, records_have;
	uint64_t records_end;
	uint64_t data_pages, zero_pages;	/* from COMPLETE */
	uint64_t id;			/* hash of every record header */
	uint64_t zero_sum[2];		/* of a zero 4 KiB and 2 MiB page */
	struct snap_parser *parser;	/* until the records are all read */
};

int snap_file_open(int fd, struct snap_file **out);

/*
 * The same in two halves: the HEADER and VCPU records (the stream and the
 * vCPUs are then valid), and the rest (extents, COMPLETE), which another
 * thread may read while the VM is built from the first half.  On failure
 * of the rest, close the file.
 */
int snap_file_open_head(int fd, struct snap_file **out);
int snap_file_open_rest(struct snap_file *f);
void snap_file_close(struct snap_file *f);

/* Binary search of extents [lo, hi) of one region: the page's, or NULL. */
struct snap_extent *snap_extent_search(struct snap_extent *x, size_t lo,
				       size_t hi, uint64_t page);

/* The extent holding a page, or NULL (the page is a hole). */
const struct snap_extent *snap_find(const struct snap_file *f,
				    unsigned int region, uint64_t page);

static inline size_t snap_page_size(const struct snap_file *f,
				    unsigned int region)
{
	return (size_t)f->stream.regions[region].page_size;
}

static inline uint64_t snap_page_offset(const struct snap_file *f,
					const struct snap_extent *e,
					uint64_t page)
{
	return e->file_offset + (page - e->first_page) *
	       snap_page_size(f, e->region);
}

/* The sum a zero page of this size has. */
uint64_t snap_zero_sum(size_t page_size);

static inline bool snap_page_is_zero(const struct snap_file *f,
				     const struct snap_extent *e,
				     uint64_t page)
{
	size_t ps = snap_page_size(f, e->region);

	return e->sums[page - e->first_page] ==
	       f->zero_sum[ps == FERRY_HUGE_PAGE_SIZE];
}

/*
 * Read len bytes at off.  A short read means the file shrank since it
 * was opened: -EBADMSG.
 */
int snap_read(const struct snap_file *f, void *buf, size_t len, uint64_t off);

/* Check count pages read from extent e, from `page`; -EBADMSG naming it. */
int snap_check_pages(const struct snap_file *f, const struct snap_extent *e,
		     uint64_t page, uint64_t count, const void *data);

/* Does the VM built match the file's regions and vCPUs? */
int snap_check_vm(const struct snap_file *f, const struct ferry_vm *vm);

/* Load every vCPU's registers and power state (the VM is paused). */
int snap_load_vcpus(const struct snap_file *f, const struct ferry_vm *vm);

/* ---- writing ------------------------------------------------------------ */

/* Where each run of populated pages goes in the file. */
struct snap_plan {
	struct snap_extent *extents;
	size_t nr_extents;
	size_t region_first[FERRY_WIRE_MAX_REGIONS + 1];	/* as above */
	uint64_t *sums;			/* one per page of every extent */
	uint64_t head_len;		/* HEADER + VCPU records */
	uint64_t records_len;
	uint64_t data_start;
	uint64_t file_size;
	uint64_t nr_pages;		/* in extents */
};

/*
 * Cut the populated pages of every region into extents and place them:
 * head_len bytes of HEADER and VCPU records come first.
 */
int snap_plan_make(const struct ferry_mem *mem, uint64_t *const *populated,
		   uint64_t head_len, struct snap_plan *plan);
void snap_plan_free(struct snap_plan *plan);

/* The extent of the plan holding a page, or NULL. */
struct snap_extent *snap_plan_find(const struct snap_plan *plan,
				   unsigned int region, uint64_t page);

/*
 * HEADER and VCPU records, sealed as records 0..n, into *buf (malloc'd):
 * the vCPUs must be paused.
 */
int snap_encode_head(const struct ferry_vm *vm,
		     const struct ferry_wire_stream *stream, uint8_t **buf,
		     uint64_t *len);

/*
 * The PAGE_EXTENT records and COMPLETE after the head, written at offset
 * 0 once every page's sum is in the plan.
 */
int snap_write_records(int fd, const struct ferry_wire_stream *stream,
		       const uint8_t *head, const struct snap_plan *plan,
		       uint64_t data_pages, uint64_t zero_pages);

/* pwrite all of it; -errno with a reason. */
int snap_write(int fd, const void *buf, size_t len, uint64_t off);

/*
 * Anonymous memory for big buffers, 2 MiB-aligned and asking for huge
 * pages: a buffer's first touch would otherwise cost a page fault per
 * 4 KiB, on the paths timed (restore start, the fault path).
 */
void *snap_buf_alloc(size_t len);
void snap_buf_free(void *buf, size_t len);

/*
 * Read, check and store every page the file holds into `mem` (laid out
 * as the file says, nothing running on it): what a clone source holds.
 * *pages gets how many pages had data.
 */
int snap_store_all(struct snap_file *f, struct ferry_mem *mem,
		   uint64_t *pages);

/* ---- handles ------------------------------------------------------------ */

/*
 * A save's or a restore's waiter: until *ended, under `lock` (held),
 * for timeout_ms (< 0: no limit).  Returns *ended.
 */
bool snap_wait_ended(pthread_mutex_t *lock, pthread_cond_t *cond,
		     const bool *ended, int timeout_ms);

/* ---- working sets ------------------------------------------------------- */

/* A page of a region, as working sets list them. */
struct snap_page {
	uint32_t region;
	uint32_t page;
};

/*
 * Read a working set recorded for snapshot f (hostile bytes: size,
 * magic, version, checksum, snapshot id and every entry's bounds are
 * checked).  Returns how many entries, in *pages (malloc'd), or -errno.
 */
ssize_t snap_ws_load(const struct snap_file *f, const char *path,
		     struct snap_page **pages);

/* Write one, for snapshot f; replaces `path` whole (rename). */
int snap_ws_save(const struct snap_file *f, const char *path,
		 const struct snap_page *pages, size_t nr);

/*
 * The same for memory that is not a ferry snapshot (a VMM's memory file
 * served by serve/): what a working set is checked against, the id of
 * what it was recorded for and the pages of each region.
 */
struct snap_ws_layout {
	uint64_t id;
	unsigned int nr_regions;
	const uint64_t *nr_pages;	/* per region */
};

ssize_t snap_ws_load_layout(const struct snap_ws_layout *l, const char *path,
			    struct snap_page **pages);
int snap_ws_save_layout(const struct snap_ws_layout *l, const char *path,
			const struct snap_page *pages, size_t nr);
#endif
