// SPDX-License-Identifier: MIT
/*
 * snapshot: what reading and writing the snapshot file share: buffers,
 * whole reads and writes at an offset, zero-page sums, finding the extent
 * that holds a page, checking pages and the VM against the file.  The
 * reading side (records checked) is file_read.c, the writing side (plan,
 * records sealed) file_write.c.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/io.h"
#include "base/sys.h"
#include "snapshot/snapshot.h"

/* ---- buffers and I/O ---------------------------------------------------- */

void *snap_buf_alloc(size_t len)
{
	size_t size = snap_round_up(len ? len : 1, SNAP_DATA_ALIGN);
	size_t span = size + SNAP_DATA_ALIGN;
	uint8_t *base, *start;
	int err;

	base = sys_mmap(NULL, span, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0,
			&err);
	if (!base)
		return NULL;
	start = (uint8_t *)snap_round_up((uintptr_t)base, SNAP_DATA_ALIGN);
	if (start > base)
		sys_munmap(base, (size_t)(start - base));
	sys_munmap(start + size, (size_t)(base + span - start - size));
	sys_madvise(start, size, MADV_HUGEPAGE);
	return start;
}

void snap_buf_free(void *buf, size_t len)
{
	if (buf)
		sys_munmap(buf, snap_round_up(len ? len : 1, SNAP_DATA_ALIGN));
}

static pthread_once_t zero_once = PTHREAD_ONCE_INIT;
static uint64_t zero_sums[2];

/*
 * Zeroes in .bss, never written: they take no memory (reading them maps
 * the shared zero page) and, unlike a mapping made here, cannot fail.
 */
static uint8_t zero_page[FERRY_HUGE_PAGE_SIZE];

static void zero_sums_init(void)
{
	zero_sums[0] = ferry_wire_page_sum(zero_page, 4096);
	zero_sums[1] = ferry_wire_page_sum(zero_page, FERRY_HUGE_PAGE_SIZE);
}

uint64_t snap_zero_sum(size_t page_size)
{
	pthread_once(&zero_once, zero_sums_init);
	return zero_sums[page_size == FERRY_HUGE_PAGE_SIZE];
}

int snap_read(const struct snap_file *f, void *buf, size_t len, uint64_t off)
{
	ssize_t n = io_pread_full(f->fd, buf, len, (off_t)off);

	if (n < 0)
		return ferry_fail((int)n, "reading the snapshot at %llu: %s",
				  (unsigned long long)off, strerror((int)-n));
	if ((size_t)n < len)
		return ferry_fail(-EBADMSG, "the snapshot ends at %llu, inside "
				  "page data (was it changed after it was "
				  "opened?)", (unsigned long long)(off + n));
	return 0;
}

int snap_write(int fd, const void *buf, size_t len, uint64_t off)
{
	int ret = io_pwrite_full(fd, buf, len, (off_t)off);

	if (ret)
		return ferry_fail(ret, "writing the snapshot at %llu: %s",
				  (unsigned long long)off, strerror(-ret));
	return 0;
}

/* ---- extents and checks ------------------------------------------------- */

struct snap_extent *snap_extent_search(struct snap_extent *x, size_t lo,
				       size_t hi, uint64_t page)
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
	return snap_extent_search(f->extents, f->region_first[region],
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
