// SPDX-License-Identifier: MIT
/*
 * save_pages: a save's page I/O, below the sweep and the fault thread
 * that both use it: pages copied out of guest memory, summed, and
 * written to the file where the plan puts them.
 */
#include <stdatomic.h>
#include <string.h>

#include "base/error.h"
#include "base/io.h"
#include "migrate/migrate.h"
#include "snapshot/save_int.h"

/*
 * Copy pages out of guest memory.  From the memfd with pread: no page
 * faults in this process.  A private view's own copies are not in the
 * file, so those are read through the view (a read never trips the
 * write protection).
 */
int saver_copy_out(struct ferry_region *r, uint64_t first, uint64_t count,
		   uint8_t *buf)
{
	size_t off = (size_t)first * r->page_size, len = count * r->page_size;
	ssize_t n;

	if (r->private_view) {
		memcpy(buf, r->alias + off, len);
		return 0;
	}
	n = io_pread_full(r->memfd, buf, len, (off_t)(r->offset + off));
	if (n >= 0 && (size_t)n < len)
		n = -EIO;	/* the memfd is shorter than its region */
	if (n < 0)
		return ferry_fail((int)n, "reading guest memory: %s",
				  strerror((int)-n));
	return 0;
}

/* Sum each page, write the runs that are not all zero. */
int saver_store_run(struct saver *sv, struct snap_extent *e, uint64_t first,
		    uint64_t count, const uint8_t *buf)
{
	size_t ps = sv->vm->mem->regions[e->region].page_size;
	uint64_t zero = snap_zero_sum(ps), run = 0, nr_zero = 0;
	int ret = 0;

	for (uint64_t i = 0; i <= count && !ret; i++) {
		bool is_zero = i < count &&
			       migrate_page_is_zero(buf + i * ps, ps);

		if (i < count)
			e->sums[first + i - e->first_page] = is_zero ? zero :
				ferry_wire_page_sum(buf + i * ps, ps);
		nr_zero += is_zero;
		if (i < count && !is_zero) {
			run++;
			continue;
		}
		if (run)
			ret = snap_write(sv->fd, buf + (i - run) * ps,
					 run * ps, e->file_offset +
					 (first + i - run - e->first_page) * ps);
		run = 0;
	}
	atomic_fetch_add_explicit(&sv->pages, count - nr_zero,
				  memory_order_relaxed);
	atomic_fetch_add_explicit(&sv->zero_pages, nr_zero,
				  memory_order_relaxed);
	atomic_fetch_add_explicit(&sv->bytes, (count - nr_zero) * ps,
				  memory_order_relaxed);
	return ret;
}
