// SPDX-License-Identifier: MIT
/*
 * serve file: the memory file every VM is served from, mapped once,
 * read-only and shared, so that the page cache holds one copy of it
 * whatever the number of VMs; UFFDIO_COPY reads from that mapping.  Its
 * holes (SEEK_DATA / SEEK_HOLE) are known from the start: a page that
 * lies in one is installed as zeroes, never read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/sys.h"
#include "ferry/mem.h"
#include "serve/serve.h"

/* Each extent of data the file holds, as bits of 4 KiB. */
static int map_data(struct serve_file *f)
{
	off_t from = 0, data, hole;
	int ret;

	f->data = bitmap_alloc(f->size / SERVE_PAGE + 1);
	if (!f->data)
		return ferry_fail(-ENOMEM, "out of memory");
	while ((ret = sys_next_data(f->fd, from, (off_t)f->size, &data,
				    &hole)) > 0) {
		uint64_t first = (uint64_t)data / SERVE_PAGE;
		uint64_t end = ((uint64_t)hole + SERVE_PAGE - 1) / SERVE_PAGE;

		bitmap_set_range(f->data, first, end - first);
		from = hole;
	}
	if (ret == -EINVAL || ret == -EOPNOTSUPP)	/* no SEEK_DATA here */
		bitmap_set_range(f->data, 0, (f->size + SERVE_PAGE - 1) /
						SERVE_PAGE);
	else if (ret < 0)
		return ferry_fail(ret, "memory file: SEEK_DATA: %s",
				  strerror(-ret));
	return 0;
}

/* Zeroes never written (reads map the zero page) and a PROT_NONE twin. */
static int map_helpers(struct serve_file *f)
{
	int err;

	f->zeroes = sys_mmap(NULL, FERRY_HUGE_PAGE_SIZE, PROT_READ,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0,
			     &err);
	if (f->zeroes)
		f->unreadable = sys_mmap(NULL, FERRY_HUGE_PAGE_SIZE, PROT_NONE,
					 MAP_PRIVATE | MAP_ANONYMOUS |
					 MAP_NORESERVE, -1, 0, &err);
	return err ? ferry_fail(err, "mmap: %s", strerror(-err)) : 0;
}

static int check_fd(struct serve_file *f, int fd)
{
	struct stat st;

	if (fstat(fd, &st))
		return ferry_fail(-errno, "memory file: %s", strerror(errno));
	if (!S_ISREG(st.st_mode))
		return ferry_fail(-EINVAL, "the memory file is not a regular "
				  "file");
	if (st.st_size <= 0)
		return ferry_fail(-EINVAL, "the memory file is empty");
	if ((fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY)
		return ferry_fail(-EBADF, "the memory file is not open for "
				  "reading");
	f->fd = fd;
	f->size = (uint64_t)st.st_size;
	return 0;
}

int serve_file_open(struct serve_file *f, int fd, bool populate)
{
	int ret, err;

	memset(f, 0, sizeof(*f));
	f->fd = -1;
	ret = check_fd(f, fd);
	if (!ret) {
		f->map = sys_mmap(NULL, f->size, PROT_READ, MAP_SHARED |
				  (populate ? MAP_POPULATE : 0), fd, 0, &err);
		if (!f->map)
			ret = ferry_fail(err, "mapping the memory file: %s",
					 strerror(-err));
	}
	if (!ret)
		ret = map_data(f);
	if (!ret)
		ret = map_helpers(f);
	if (ret)
		serve_file_close(f);
	return ret;
}

void serve_file_close(struct serve_file *f)
{
	if (f->map)
		munmap((void *)f->map, f->size);
	if (f->zeroes)
		munmap((void *)f->zeroes, FERRY_HUGE_PAGE_SIZE);
	if (f->unreadable)
		munmap((void *)f->unreadable, FERRY_HUGE_PAGE_SIZE);
	free(f->data);
	memset(f, 0, sizeof(*f));
	f->fd = -1;
}

bool serve_file_has_data(const struct serve_file *f, uint64_t off,
			 uint64_t len)
{
	uint64_t first = off / SERVE_PAGE, end = (off + len) / SERVE_PAGE;

	for (uint64_t b = first; b < end; b++) {
		if (b % 64 == 0 && b + 64 <= end) {
			if (f->data[b / 64])
				return true;
			b += 63;
		} else if (bitmap_test(f->data, b)) {
			return true;
		}
	}
	return false;
}
