// SPDX-License-Identifier: MIT
/*
 * snapshot: the snapshot file format.  Reading checks every record and
 * the layout before anything is used; writing plans where each run of
 * pages goes and seals the records once every page's sum is known.
 */
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "base/error.h"
#include "ferry/uffd.h"
#include "le.h"
#include "snapshot/snapshot.h"
#include "base/sys.h"

/* Records bigger than this are not a snapshot ferry wrote. */
#define SNAP_MAX_RECORDS	(4ULL << 30)
/* A buffer for the records, when the file does not say how long. */
#define SNAP_RECORDS_START	(16U << 10)
/* Read records in steps of at least this much. */
#define SNAP_READ_STEP		(1U << 20)

static size_t round_up(size_t v, size_t to)
{
	return (v + to - 1) / to * to;
}

/* ---- buffers and I/O ---------------------------------------------------- */

void *snap_buf_alloc(size_t len)
{
	size_t size = round_up(len ? len : 1, SNAP_DATA_ALIGN);
	size_t span = size + SNAP_DATA_ALIGN;
	uint8_t *base, *start;
	int err;

	base = sys_mmap(NULL, span, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0,
			&err);
	if (!base)
		return NULL;
	start = (uint8_t *)round_up((uintptr_t)base, SNAP_DATA_ALIGN);
	if (start > base)
		sys_munmap(base, (size_t)(start - base));
	sys_munmap(start + size, (size_t)(base + span - start - size));
	sys_madvise(start, size, MADV_HUGEPAGE);
	return start;
}

void snap_buf_free(void *buf, size_t len)
{
	if (buf)
		sys_munmap(buf, round_up(len ? len : 1, SNAP_DATA_ALIGN));
}

static pthread_once_t zero_once = PTHREAD_ONCE_INIT;
static uint64_t zero_sums[2];

/*
 * A read-only zero mapping, populated: the shared zero page behind every
 * 4 KiB, no memory allocated and no fault per page.
 */
static void zero_sums_init(void)
{
	static const uint8_t zero_4k[4096];
	const void *zero_2m;
	int err;

	zero_sums[0] = ferry_wire_page_sum(zero_4k, sizeof(zero_4k));
	zero_2m = sys_mmap(NULL, FERRY_HUGE_PAGE_SIZE, PROT_READ,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0,
			   &err);
	if (!zero_2m)
		abort();	/* 2 MiB of address space: nothing to do */
	zero_sums[1] = ferry_wire_page_sum(zero_2m, FERRY_HUGE_PAGE_SIZE);
	sys_munmap((void *)zero_2m, FERRY_HUGE_PAGE_SIZE);
}

uint64_t snap_zero_sum(size_t page_size)
{
	pthread_once(&zero_once, zero_sums_init);
	return zero_sums[page_size == FERRY_HUGE_PAGE_SIZE];
}

int snap_read(const struct snap_file *f, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = sys_pread(f->fd, (uint8_t *)buf + done, len - done,
				      (off_t)(off + done));

		if (n == -EINTR)
			continue;
		if (n < 0)
			return ferry_fail((int)n, "reading the snapshot at "
					  "%llu: %s",
					  (unsigned long long)(off + done),
					  strerror((int)-n));
		if (n == 0)
			return ferry_fail(-EBADMSG, "the snapshot ends at %llu, "
					  "inside page data (was it changed "
					  "after it was opened?)",
					  (unsigned long long)(off + done));
		done += (size_t)n;
	}
	return 0;
}

int snap_write(int fd, const void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = sys_pwrite(fd, (const uint8_t *)buf + done,
				       len - done, (off_t)(off + done));

		if (n == -EINTR)
			continue;
		if (n <= 0)
			return ferry_fail(n ? (int)n : -EIO, "writing the "
					  "snapshot at %llu: %s",
					  (unsigned long long)(off + done),
					  strerror(n ? (int)-n : EIO));
		done += (size_t)n;
	}
	return 0;
}

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

	*cap = round_up(*cap, SNAP_DATA_ALIGN);
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
	if (!ferry_mp_state_valid((int)v.mp_state))
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

/* Binary search of extents [lo, hi) of one region. */
static struct snap_extent *search(struct snap_extent *x, size_t lo, size_t hi,
				  uint64_t page)
{
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (page < x[mid].first_page)
			hi = mid;
		else if (page >= (uint64_t)x[mid].first_page + x[mid].count)
			lo = mid + 1;
		else
			return &x[mid];
	}
	return NULL;
}

const struct snap_extent *snap_find(const struct snap_file *f,
				    unsigned int region, uint64_t page)
{
	if (region >= f->stream.nr_regions)
		return NULL;
	return search(f->extents, f->region_first[region],
		      f->region_first[region + 1], page);
}

int snap_check_pages(const struct snap_file *f, const struct snap_extent *e,
		     uint64_t page, uint64_t count, const void *data)
{
	size_t ps = snap_page_size(f, e->region);

	for (uint64_t i = 0; i < count; i++) {
		const uint8_t *p = (const uint8_t *)data + i * ps;

		if (ferry_wire_page_sum(p, ps) ==
		    e->sums[page + i - e->first_page])
			continue;
		return ferry_fail(-EBADMSG, "snapshot page %llu of region %u "
				  "(file offset %llu) does not match its "
				  "checksum: the file is corrupt",
				  (unsigned long long)(page + i), e->region,
				  (unsigned long long)snap_page_offset(f, e,
								page + i));
	}
	return 0;
}

int snap_check_vm(const struct snap_file *f, const struct ferry_vm *vm)
{
	const struct ferry_wire_stream *s = &f->stream;
	int ret = ferry_vcpu_ops_check(vm->ops);

	if (ret)
		return ret;
	if (vm->ops->nr_vcpus(vm->handle) != s->nr_vcpus)
		return ferry_fail(-EINVAL, "the VM built has %u vCPUs; the "
				  "snapshot holds %u",
				  vm->ops->nr_vcpus(vm->handle), s->nr_vcpus);
	if (vm->mem->nr_regions != s->nr_regions)
		return ferry_fail(-EINVAL, "the VM built has %u memory regions; "
				  "the snapshot holds %u",
				  vm->mem->nr_regions, s->nr_regions);
	for (unsigned int i = 0; i < s->nr_regions; i++)
		if (vm->mem->regions[i].page_size != s->regions[i].page_size ||
		    vm->mem->regions[i].size != s->regions[i].size)
			return ferry_fail(-EINVAL, "region %u of the VM built "
					  "does not match the snapshot's", i);
	return 0;
}

int snap_load_vcpus(const struct snap_file *f, const struct ferry_vm *vm)
{
	for (unsigned int i = 0; i < f->stream.nr_vcpus; i++) {
		const struct snap_vcpu *v = &f->vcpus[i];
		int ret = vm->ops->load(vm->handle, i, v->regs, v->regs_len);

		if (!ret)
			ret = vm->ops->set_mp_state(vm->handle, i,
					(enum ferry_mp_state)v->mp_state);
		if (ret)
			return ferry_fail_ctx(ret, "loading vCPU %u", i);
	}
	return 0;
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

/* ---- writing ------------------------------------------------------------ */

/* Runs of set bits from `page` on: the next run's start and length. */
static bool next_run(const uint64_t *map, size_t nr, size_t *page,
		     size_t *len)
{
	size_t p = *page, n = 0;

	while (p < nr && !(map[p / 64] >> (p % 64) & 1))
		p += map[p / 64] >> (p % 64) ? 1 : 64 - p % 64;
	if (p >= nr)
		return false;
	while (p + n < nr && (map[(p + n) / 64] >> ((p + n) % 64) & 1))
		n++;
	*page = p;
	*len = n;
	return true;
}

/*
 * Runs of populated pages joined across holes of up to this much: a hole
 * inside an extent costs a sum (8 bytes) and no file space, and a sparse
 * guest (a random workload leaves holes everywhere) then takes a few big
 * extents, not one per run: fewer records, fewer writes and reads, and
 * one write-protect call per extent for a live save.
 */
#define SNAP_GAP_BYTES		(128U << 10)

/* The next span from *page: runs joined across holes of <= gap pages. */
static bool next_span(const uint64_t *map, size_t nr, size_t gap,
		      size_t *page, size_t *len)
{
	size_t start, end, p, l;

	if (!next_run(map, nr, page, &l))
		return false;
	start = *page;
	end = start + l;
	for (p = end; next_run(map, nr, &p, &l) && p - end <= gap; p = end)
		end = p + l;
	*page = start;
	*len = end - start;
	return true;
}

/* Count extents and pages, or (extents != NULL) fill them in. */
static size_t cut_extents(const struct ferry_mem *mem,
			  uint64_t *const *populated, struct snap_plan *plan,
			  struct snap_extent *extents)
{
	size_t n = 0;

	plan->nr_pages = 0;
	for (unsigned int r = 0; r < mem->nr_regions; r++) {
		size_t page = 0, len;
		size_t gap = SNAP_GAP_BYTES / mem->regions[r].page_size;

		plan->region_first[r] = n;
		while (next_span(populated[r], mem->regions[r].nr_pages, gap,
				 &page, &len)) {
			for (size_t at = 0; at < len;
			     at += FERRY_WIRE_MAX_EXTENT, n++) {
				size_t c = len - at < FERRY_WIRE_MAX_EXTENT ?
					   len - at : FERRY_WIRE_MAX_EXTENT;

				if (extents)
					extents[n] = (struct snap_extent){
						.region = r,
						.first_page =
							(uint32_t)(page + at),
						.count = (uint32_t)c };
				plan->nr_pages += c;
			}
			page += len;
		}
	}
	plan->region_first[mem->nr_regions] = n;
	return n;
}

/* Records first, then each extent's data at its region's alignment. */
static void place_extents(const struct ferry_mem *mem, struct snap_plan *plan)
{
	uint64_t off, *sums = plan->sums;

	plan->records_len = plan->head_len + 48;	/* COMPLETE */
	for (size_t i = 0; i < plan->nr_extents; i++)
		plan->records_len += FERRY_WIRE_HDR_SIZE + 24 +
				     8ULL * plan->extents[i].count;
	plan->data_start = round_up(plan->records_len, SNAP_DATA_ALIGN);
	off = plan->data_start;
	for (size_t i = 0; i < plan->nr_extents; i++) {
		struct snap_extent *e = &plan->extents[i];
		size_t ps = mem->regions[e->region].page_size;

		off = round_up(off, ps);
		e->file_offset = off;
		e->sums = sums;
		sums += e->count;
		off += (uint64_t)e->count * ps;
	}
	plan->file_size = plan->nr_extents ? off : plan->records_len;
}

int snap_plan_make(const struct ferry_mem *mem, uint64_t *const *populated,
		   uint64_t head_len, struct snap_plan *plan)
{
	*plan = (struct snap_plan){ .head_len = head_len };
	plan->nr_extents = cut_extents(mem, populated, plan, NULL);
	plan->extents = calloc(plan->nr_extents ? plan->nr_extents : 1,
			       sizeof(*plan->extents));
	plan->sums = calloc(plan->nr_pages ? plan->nr_pages : 1,
			    sizeof(*plan->sums));
	if (!plan->extents || !plan->sums) {
		snap_plan_free(plan);
		return ferry_fail(-ENOMEM, "out of memory");
	}
	cut_extents(mem, populated, plan, plan->extents);
	place_extents(mem, plan);
	return 0;
}

void snap_plan_free(struct snap_plan *plan)
{
	free(plan->extents);
	free(plan->sums);
	plan->extents = NULL;
	plan->sums = NULL;
}

struct snap_extent *snap_plan_find(const struct snap_plan *plan,
				   unsigned int region, uint64_t page)
{
	return search(plan->extents, plan->region_first[region],
		      plan->region_first[region + 1], page);
}

/* Seal a frame as record `nr` and copy it to buf + *len. */
static void put_frame(struct ferry_wire_frame *f, uint64_t nr, uint8_t *buf,
		      uint64_t *len)
{
	ferry_wire_seal(f, nr);
	for (int i = 0; i < f->iovcnt; i++) {
		memcpy(buf + *len, f->iov[i].iov_base, f->iov[i].iov_len);
		*len += f->iov[i].iov_len;
	}
}

static uint64_t head_size(const struct ferry_wire_stream *s, size_t regs)
{
	uint64_t header = FERRY_WIRE_HDR_SIZE + 24 + 24ULL * s->nr_regions +
			  round_up(s->desc_len, 8);

	return header + s->nr_vcpus * (FERRY_WIRE_HDR_SIZE + 16 +
				       round_up(regs, 8));
}

static int encode_vcpus(const struct ferry_vm *vm,
			const struct ferry_wire_stream *s,
			struct ferry_wire_frame *f, uint8_t *blob, size_t cap,
			uint8_t *buf, uint64_t *len)
{
	for (unsigned int i = 0; i < s->nr_vcpus; i++) {
		ssize_t n = vm->ops->save(vm->handle, i, blob, cap);
		enum ferry_mp_state mp;
		struct ferry_wire_vcpu v;
		int ret;

		if (n < 0)
			return ferry_fail_ctx((int)n, "saving vCPU %u", i);
		ret = vm->ops->get_mp_state(vm->handle, i, &mp);
		v = (struct ferry_wire_vcpu){ .index = i, .mp_state = mp,
			.regs_len = (uint32_t)n, .regs = blob };
		if (!ret)
			ret = ferry_wire_enc_vcpu(f, s, &v);
		if (ret)
			return ret;
		put_frame(f, 1 + i, buf, len);
	}
	return 0;
}

int snap_encode_head(const struct ferry_vm *vm,
		     const struct ferry_wire_stream *s, uint8_t **buf,
		     uint64_t *len)
{
	size_t cap = vm->ops->state_size(vm->handle);
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	uint8_t *blob = malloc(cap ? cap : 1);
	int ret = -ENOMEM;

	*len = 0;
	*buf = malloc(head_size(s, cap));
	if (!f || !blob || !*buf)
		goto out;
	ret = ferry_wire_enc_header(f, s);
	if (!ret) {
		put_frame(f, 0, *buf, len);
		ret = encode_vcpus(vm, s, f, blob, cap, *buf, len);
	}
out:
	free(f);
	free(blob);
	if (ret == -ENOMEM)
		ferry_fail(ret, "out of memory");
	if (ret) {
		free(*buf);
		*buf = NULL;
	}
	return ret;
}

static int encode_tail(const struct ferry_wire_stream *s,
		       const struct snap_plan *plan,
		       struct ferry_wire_frame *f, uint8_t *buf, uint64_t *len,
		       const struct ferry_wire_complete *c)
{
	uint64_t nr = 1 + s->nr_vcpus;
	int ret = 0;

	for (size_t i = 0; i < plan->nr_extents && !ret; i++) {
		const struct snap_extent *e = &plan->extents[i];
		struct ferry_wire_extent we = { .region = e->region,
			.first_page = e->first_page, .count = e->count,
			.file_offset = e->file_offset, .sums = e->sums };

		ret = ferry_wire_enc_extent(f, s, &we);
		if (!ret)
			put_frame(f, nr++, buf, len);
	}
	if (!ret)
		ret = ferry_wire_enc_complete(f, c);
	if (!ret)
		put_frame(f, nr, buf, len);
	return ret;
}

int snap_write_records(int fd, const struct ferry_wire_stream *s,
		       const uint8_t *head, const struct snap_plan *plan,
		       uint64_t data_pages, uint64_t zero_pages)
{
	struct ferry_wire_complete c = { .pages = data_pages,
					 .zero_pages = zero_pages };
	struct ferry_wire_frame *f = malloc(sizeof(*f));
	uint8_t *buf = malloc(plan->records_len);
	uint64_t len = plan->head_len;
	int ret = -ENOMEM;

	if (f && buf) {
		memcpy(buf, head, plan->head_len);
		ret = encode_tail(s, plan, f, buf, &len, &c);
	} else {
		ferry_fail(ret, "out of memory");
	}
	/* The plan sized the records; a mismatch is a bug here. */
	if (!ret && len != plan->records_len)
		abort();
	if (!ret)
		ret = snap_write(fd, buf, len, 0);
	free(f);
	free(buf);
	return ret;
}

/* ---- service threads ---------------------------------------------------- */

int snap_serve(int fd, int stop_fd, int (*handle)(void *arg), void *arg)
{
	struct pollfd pfd[2] = {
		{ .fd = fd, .events = POLLIN },
		{ .fd = stop_fd, .events = POLLIN },
	};

	for (;;) {
		int ret = poll(pfd, 2, -1);

		if (ret < 0 && errno == EINTR)
			continue;
		if (ret < 0)
			return ferry_fail(-errno, "poll: %s", strerror(errno));
		if (pfd[1].revents)
			return 0;
		ret = handle(arg);
		if (ret)
			return ret;
	}
}

int snap_uffd_drain(struct ferry_uffd *uffd,
		    int (*fault)(void *arg, const struct uffd_msg *msg),
		    void *arg)
{
	struct uffd_msg msgs[32];
	ssize_t n = ferry_uffd_read(uffd, msgs, 32);
	int ret = 0;

	if (n == -EAGAIN)
		return 0;
	if (n < 0)
		return ferry_fail((int)n, "reading userfaultfd: %s",
				  strerror((int)-n));
	for (ssize_t i = 0; i < n && !ret; i++)
		if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
			ret = fault(arg, &msgs[i]);
	return ret;
}
