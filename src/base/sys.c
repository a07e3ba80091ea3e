// SPDX-License-Identifier: MIT
/* sys: small-file helpers for procfs and sysfs. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "base/sys.h"

/*
 * From this size on, whole 2 MiB pages that ask for THP: touching one
 * costs one fault instead of 512 (tens of microseconds each on some
 * hosts), so a 4 GiB guest's page state comes up in a millisecond, not
 * forty.  The rounding wastes at most half of what it rounds.  Memory
 * the allocator hands back again is already faulted in: zeroing it is
 * all it costs.
 */
#define ZALLOC_HUGE	(1UL << 20)
#define ZALLOC_HUGE_PAGE (2UL << 20)

void *sys_zalloc_aligned(size_t align, size_t len)
{
	bool huge = len >= ZALLOC_HUGE;
	void *p;

	if (huge && align < ZALLOC_HUGE_PAGE)
		align = ZALLOC_HUGE_PAGE;
	len = len ? (len + align - 1) / align * align : align;
	p = aligned_alloc(align, len);
	if (p && huge)
		madvise(p, len, MADV_HUGEPAGE);
	if (p)
		memset(p, 0, len);
	return p;
}

void *sys_zalloc(size_t len)
{
	return sys_zalloc_aligned(64, len);
}

void sys_thread_boost(enum sys_boost level)
{
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), (int)level))
		errno = 0;	/* not allowed: run at the default */
}

ssize_t sys_read_file(const char *path, char *buf, size_t len)
{
	ssize_t n = 0, total = 0;
	int fd = sys_open(path, O_RDONLY);

	if (fd < 0)
		return fd;
	while ((size_t)total + 1 < len) {
		n = sys_read(fd, buf + total, len - 1 - (size_t)total);
		if (n == -EINTR)
			continue;
		if (n <= 0)
			break;
		total += n;
	}
	close(fd);
	if (n < 0)
		return n;
	buf[total] = '\0';
	return total;
}

int sys_write_file(const char *path, const char *text)
{
	size_t len = strlen(text);
	ssize_t n;
	int fd = sys_open(path, O_WRONLY);

	if (fd < 0)
		return fd;
	n = sys_write(fd, text, len);
	close(fd);
	if (n < 0)
		return (int)n;
	return (size_t)n == len ? 0 : -EIO;
}

int sys_read_long(const char *path, long *value)
{
	char buf[64], *end;
	ssize_t n = sys_read_file(path, buf, sizeof(buf));

	if (n < 0)
		return (int)n;
	errno = 0;
	*value = strtol(buf, &end, 10);
	if (end == buf || errno)
		return -EINVAL;
	return 0;
}

int sys_next_data(int fd, off_t from, off_t limit, off_t *data, off_t *hole)
{
	*data = lseek(fd, from, SEEK_DATA);
	if ((*data < 0 && errno == ENXIO) || *data >= limit)
		return 0;
	if (*data < 0)
		return -errno;
	*hole = lseek(fd, *data, SEEK_HOLE);
	if (*hole < 0)
		return -errno;
	if (*hole > limit)
		*hole = limit;
	return 1;
}
