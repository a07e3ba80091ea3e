// SPDX-License-Identifier: MIT
/*
 * file_read: a snapshot opened for reading.  Every record is checked, and
 * the layout (extents in order, none overlapping, inside the file, clear
 * of the records) before anything is used: the bytes are hostile.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "base/error.h"
#include "base/sys.h"
#include "le.h"
#include "snapshot/snapshot.h"

/* Records bigger than this are not a snapshot ferry wrote. */
#define SNAP_MAX_RECORDS	(4ULL << 30)
/* A buffer for the records, when the file does not say how long. */
#define SNAP_RECORDS_START	(16U << 10)
/* Read records in steps of at least this much. */
#define SNAP_READ_STEP		(1U << 20)

/* ---- reading records ---------------------------------------------------- */

/*
 * The records' buffer: heap memory (a process that restores again gets
 * memory already faulted in: a fault costs tens of microseconds on some
 * hosts, and 4 GiB of guest take 8 MiB of records), in 2 MiB pages that
 * ask for THP, so that memory that is new costs a fault per 2 MiB.
 */
static uint8_t *records_alloc(size_t *cap)
{
	uint8_t *p;

	*cap = snap_round_up(*cap, SNAP_DATA_ALIGN);
	p = aligned_alloc(SNAP_DATA_ALIGN, *cap);
	if (p)
		sys_madvise(p, *cap, MADV_HUGEPAGE);
	return p;
}

/* Pointers into the records follow them when the buffer moves. */
static const void *moved(const void *ptr, uintptr_t from, const uint8_t *to)
{
	return ptr ? to + ((uintptr_t)ptr - from) : NULL;
}

static void rebase(struct snap_file *f, uintptr_t from)
{
	f->stream.desc = moved(f->stream.desc, from, f->records);
	for (unsigned int i = 0; f->vcpus && i < f->stream.nr_vcpus; i++)
		f->vcpus[i].regs = moved(f->vcpus[i].regs, from, f->records);
	for (size_t i = 0; i < f->nr_extents; i++)
		f->extents[i].sums = (uint64_t *)moved(f->extents[i].sums,
						       from, f->records);
}

/*
 * Room for file bytes [0, end): the buffer doubles, up to the file's
 * size, and what points into it moves with it.
 */
static int grow(struct snap_file *f, uint64_t end)
{
	uint64_t limit = f->file_size < SNAP_MAX_RECORDS ? f->file_size :
			 SNAP_MAX_RECORDS;
	uint64_t want = f->records_cap * 2 > end ? f->records_cap * 2 : end;
	uintptr_t from = (uintptr_t)f->records;
	size_t cap;
	uint8_t *p;

	if (end > limit)
		return ferry_fail(-EBADMSG, "snapshot records run past %llu "
				  "MiB: not a snapshot ferry wrote",
				  (unsigned long long)limit >> 20);
	cap = (size_t)(want < limit ? want : limit);
	p = records_alloc(&cap);
	if (!p)
		return ferry_fail(-ENOMEM, "out of memory");
	memcpy(p, f->records, f->records_have);
	free(f->records);
	f->records = p;
	f->records_cap = cap;
	rebase(f, from);
	return 0;
}

/* Make file bytes [0, end) readable in f->records, reading ahead. */
static int ensure(struct snap_file *f, uint64_t end)
{
	uint64_t want;
	int ret;

	if (end <= f->records_have)
		return 0;
	if (end > f->file_size)
		return -EPIPE;
	if (end > f->records_cap && (ret = grow(f, end)))
		return ret;
	want = end - f->records_have < SNAP_READ_STEP ?
	       f->records_have + SNAP_READ_STEP : end;
	if (want > f->file_size)
		want = f->file_size;
	if (want > f->records_cap)
		want = f->records_cap;
	if (snap_read(f, f->records + f->records_have,
		      (size_t)(want - f->records_have), f->records_have))
		return -EPIPE;
	f->records_have = (size_t)want;
	return 0;
}

static int truncated(const struct snap_file *f, uint64_t off)
{
	return ferry_fail(-EBADMSG, "snapshot truncated: the file is %llu "
			  "bytes and ends inside the record at %llu",
			  (unsigned long long)f->file_size,
			  (unsigned long long)off);
}

/*
 * The record at `off`.  A parse of what is there says whether the header
 * is sound (-EPIPE: sound, the rest is not read yet); only then are its
 * lengths used to read the rest.
 */
static ssize_t next_record(struct snap_file *f, struct ferry_wire_reader *rd,
			   uint64_t off, struct ferry_wire_rec *rec)
{
	const uint8_t *hdr;
	uint64_t total;
	ssize_t n;

	if (ensure(f, off + FERRY_WIRE_HDR_SIZE))
		return off == 0 && f->file_size == 0 ?
		       ferry_fail(-EBADMSG, "the snapshot file is empty") :
		       truncated(f, off);
	hdr = f->records + off;
	n = ferry_wire_parse(rd, hdr, f->records_have - off, rec);
	if (n != -EPIPE)
		return n;
	total = FERRY_WIRE_HDR_SIZE + (uint64_t)le32_load(hdr + 8) +
		le32_load(hdr + 12);
	if (ensure(f, off + total))
		return truncated(f, off);
	return ferry_wire_parse(rd, hdr, f->records_have - off, rec);
}

enum parse_phase { P_HEADER, P_VCPUS, P_EXTENTS, P_DONE };

/* Where reading the records is; kept between the two halves of open. */
struct snap_parser {
	struct snap_file *f;
	struct ferry_wire_reader rd;
	uint64_t off;			/* of the next record */
	enum parse_phase phase;
	unsigned int vcpus_seen;
	bool *seen;
	size_t extents_cap;
	uint64_t pages;			/* in extents */
	uint64_t data_end;		/* end of the last extent's data */
};


static int misplaced(const struct ferry_wire_rec *rec)
{
	return ferry_fail(-EBADMSG, "snapshot record %llu: %s has no place "
			  "here", (unsigned long long)rec->nr,
			  ferry_wire_type_name(rec->type));
}

static int take_header(struct snap_parser *p, const struct ferry_wire_rec *rec)
{
	struct snap_file *f = p->f;
	int ret;

	if (rec->type != FERRY_WIRE_HEADER)
		return ferry_fail(-EBADMSG, "not a ferry snapshot: the file "
				  "starts with %s, not HEADER",
				  ferry_wire_type_name(rec->type));
	ret = ferry_wire_dec_header(rec, &f->stream);
	if (ret)
		return ret;
	if (f->stream.kind != FERRY_WIRE_SNAPSHOT)
		return ferry_fail(-EBADMSG, "this is a migration stream, not "
				  "a snapshot");
	f->vcpus = calloc(f->stream.nr_vcpus, sizeof(*f->vcpus));
	p->seen = calloc(f->stream.nr_vcpus, sizeof(*p->seen));
	if (!f->vcpus || !p->seen)
		return ferry_fail(-ENOMEM, "out of memory");
	p->phase = P_VCPUS;
	return 0;
}

static int take_vcpu(struct snap_parser *p, const struct ferry_wire_rec *rec)
{
	struct ferry_wire_vcpu v;
	int ret = ferry_wire_dec_vcpu(&p->f->stream, rec, &v);

	if (ret)
		return ret;
	if (p->seen[v.index])
		return ferry_fail(-EBADMSG, "snapshot record %llu: vCPU %u "
				  "saved twice", (unsigned long long)rec->nr,
				  v.index);
	if (!ferry_vcpu_mp_state_valid((int)v.mp_state))
		return ferry_fail(-EBADMSG, "snapshot record %llu: vCPU %u in "
				  "MP state %u, not one ferry knows",
				  (unsigned long long)rec->nr, v.index,
				  v.mp_state);
	p->seen[v.index] = true;
	p->f->vcpus[v.index] = (struct snap_vcpu){ .mp_state = v.mp_state,
		.regs_len = v.regs_len, .regs = v.regs };
	if (++p->vcpus_seen == p->f->stream.nr_vcpus)
		p->phase = P_EXTENTS;
	return 0;
}

/*
 * Extents come in ascending (region, page) order and ascending file
 * order, none overlapping another in either: a page has one place in the
 * file, and a file range holds one run of pages.
 */
static int check_order(struct snap_parser *p, const struct ferry_wire_rec *rec,
		       const struct ferry_wire_extent *e)
{
	const struct snap_file *f = p->f;
	const struct snap_extent *last = f->nr_extents ?
		&f->extents[f->nr_extents - 1] : NULL;
	uint64_t len = (uint64_t)e->count * snap_page_size(f, e->region);

	if (last && (e->region < last->region ||
		     (e->region == last->region &&
		      e->first_page < (uint64_t)last->first_page + last->count)))
		return ferry_fail(-EBADMSG, "snapshot record %llu: extent of "
				  "region %u page %u overlaps or precedes "
				  "the one before", (unsigned long long)rec->nr,
				  e->region, e->first_page);
	if (e->file_offset < p->data_end)
		return ferry_fail(-EBADMSG, "snapshot record %llu: extent data "
				  "at %llu overlaps the extent before",
				  (unsigned long long)rec->nr,
				  (unsigned long long)e->file_offset);
	if (e->file_offset + len > f->file_size)
		return ferry_fail(-EBADMSG, "snapshot truncated: region %u "
				  "pages %u+%u lie at %llu+%llu, past the "
				  "file's end at %llu", e->region,
				  e->first_page, e->count,
				  (unsigned long long)e->file_offset,
				  (unsigned long long)len,
				  (unsigned long long)f->file_size);
	p->data_end = e->file_offset + len;
	return 0;
}

static int take_extent(struct snap_parser *p, const struct ferry_wire_rec *rec)
{
	struct snap_file *f = p->f;
	struct ferry_wire_extent e;
	int ret = ferry_wire_dec_extent(&f->stream, rec, &e);

	if (!ret)
		ret = check_order(p, rec, &e);
	if (ret)
		return ret;
	if (f->nr_extents == p->extents_cap) {
		size_t cap = p->extents_cap ? p->extents_cap * 2 : 64;
		struct snap_extent *x = realloc(f->extents,
						cap * sizeof(*x));

		if (!x)
			return ferry_fail(-ENOMEM, "out of memory");
		f->extents = x;
		p->extents_cap = cap;
	}
	/* The sums stay in the records buffer; nothing writes them. */
	f->extents[f->nr_extents++] = (struct snap_extent){
		.region = e.region, .first_page = e.first_page,
		.count = e.count, .file_offset = e.file_offset,
		.sums = (uint64_t *)e.sums };
	p->pages += e.count;
	return 0;
}

static int take_complete(struct snap_parser *p, const struct ferry_wire_rec *rec)
{
	struct ferry_wire_complete c;
	int ret = ferry_wire_dec_complete(rec, &c);

	if (ret)
		return ret;
	if (c.pages > p->pages || c.zero_pages != p->pages - c.pages)
		return ferry_fail(-EBADMSG, "snapshot record %llu: COMPLETE "
				  "counts %llu + %llu pages, the extents %llu",
				  (unsigned long long)rec->nr,
				  (unsigned long long)c.pages,
				  (unsigned long long)c.zero_pages,
				  (unsigned long long)p->pages);
	p->f->data_pages = c.pages;
	p->f->zero_pages = c.zero_pages;
	p->phase = P_DONE;
	return 0;
}

static int take(struct snap_parser *p, const struct ferry_wire_rec *rec)
{
	switch (p->phase) {
	case P_HEADER:
		return take_header(p, rec);
	case P_VCPUS:
		return rec->type == FERRY_WIRE_VCPU ? take_vcpu(p, rec) :
		       rec->type == FERRY_WIRE_PAGE_EXTENT ||
		       rec->type == FERRY_WIRE_COMPLETE ?
		       ferry_fail(-EBADMSG, "snapshot record %llu: %s before "
				  "every vCPU's state (%u of %u)",
				  (unsigned long long)rec->nr,
				  ferry_wire_type_name(rec->type),
				  p->vcpus_seen, p->f->stream.nr_vcpus) :
		       misplaced(rec);
	case P_EXTENTS:
		if (rec->type == FERRY_WIRE_PAGE_EXTENT)
			return take_extent(p, rec);
		return rec->type == FERRY_WIRE_COMPLETE ?
		       take_complete(p, rec) : misplaced(rec);
	default:
		return misplaced(rec);
	}
}

/* The extents of each region, and data clear of the records. */
static int index_extents(struct snap_file *f)
{
	size_t e = 0;

	if (f->nr_extents && f->extents[0].file_offset < f->records_end)
		return ferry_fail(-EBADMSG, "snapshot page data at %llu "
				  "overlaps the records, which end at %llu",
				  (unsigned long long)f->extents[0].file_offset,
				  (unsigned long long)f->records_end);
	for (unsigned int r = 0; r <= f->stream.nr_regions; r++) {
		while (e < f->nr_extents && f->extents[e].region < r)
			e++;
		f->region_first[r] = e;
	}
	return 0;
}

static int parse_until(struct snap_file *f, enum parse_phase until)
{
	struct snap_parser *p = f->parser;
	int ret = 0;

	while (!ret && p->phase < until) {
		struct ferry_wire_rec rec;
		ssize_t n = next_record(f, &p->rd, p->off, &rec);

		if (n < 0)
			return (int)n;
		f->id = XXH3_64bits_withSeed(f->records + p->off,
					     FERRY_WIRE_HDR_SIZE, f->id);
		p->off += (uint64_t)n;
		ret = take(p, &rec);
	}
	return ret;
}

static void free_parser(struct snap_file *f)
{
	if (f->parser)
		free(f->parser->seen);
	free(f->parser);
	f->parser = NULL;
}

static int file_size(struct snap_file *f)
{
	struct stat st;

	if (fstat(f->fd, &st))
		return ferry_fail(-errno, "fstat of the snapshot: %s",
				  strerror(errno));
	if (!S_ISREG(st.st_mode))
		return ferry_fail(-EINVAL, "a snapshot is a regular file");
	f->file_size = (uint64_t)st.st_size;
	f->file_blocks = (uint64_t)st.st_blocks * 512;
	return 0;
}

/*
 * The records' size, if the file says: they end where its first hole
 * starts (the save writes them in one go, then the data from 2 MiB on).
 * A file without the hole starts small and grows.
 */
static size_t records_hint(const struct snap_file *f)
{
	off_t hole = lseek(f->fd, 0, SEEK_HOLE);
	uint64_t cap = hole > 0 && (uint64_t)hole < f->file_size ?
		       (uint64_t)hole : SNAP_RECORDS_START;

	if (cap > f->file_size)
		cap = f->file_size;
	return (size_t)(cap ? cap : 8);
}

static int open_file(struct snap_file *f)
{
	int ret = file_size(f);

	if (ret)
		return ret;
	f->records_cap = records_hint(f);
	f->records = records_alloc(&f->records_cap);
	f->parser = calloc(1, sizeof(*f->parser));
	if (!f->records || !f->parser)
		return ferry_fail(-ENOMEM, "out of memory");
	f->parser->f = f;
	ferry_wire_reader_init(&f->parser->rd, NULL);
	return parse_until(f, P_EXTENTS);
}

int snap_file_open_head(int fd, struct snap_file **out)
{
	struct snap_file *f = calloc(1, sizeof(*f));
	int ret;

	if (!f)
		return ferry_fail(-ENOMEM, "out of memory");
	f->fd = fd;
	f->zero_sum[0] = snap_zero_sum(4096);
	f->zero_sum[1] = snap_zero_sum(FERRY_HUGE_PAGE_SIZE);
	ret = open_file(f);
	if (ret) {
		snap_file_close(f);
		return ret;
	}
	*out = f;
	return 0;
}

int snap_file_open_rest(struct snap_file *f)
{
	int ret = parse_until(f, P_DONE);

	f->records_end = f->parser->off;
	free_parser(f);
	return ret ? ret : index_extents(f);
}

int snap_file_open(int fd, struct snap_file **out)
{
	int ret = snap_file_open_head(fd, out);

	if (!ret && (ret = snap_file_open_rest(*out))) {
		snap_file_close(*out);
		*out = NULL;
	}
	return ret;
}

void snap_file_close(struct snap_file *f)
{
	if (!f)
		return;
	free_parser(f);
	free(f->records);
	free(f->vcpus);
	free(f->extents);
	free(f);
}

int ferry_snapshot_info(int fd, struct ferry_snapshot_info *info)
{
	struct snap_file *f;
	int ret = snap_file_open(fd, &f);

	if (ret)
		return ret;
	*info = (struct ferry_snapshot_info){
		.stream = f->stream, .pages = f->data_pages,
		.zero_pages = f->zero_pages, .extents = f->nr_extents,
		.file_size = f->file_size, .file_blocks = f->file_blocks,
		.id = f->id };
	info->stream.desc = NULL;
	snap_file_close(f);
	return 0;
}
