// SPDX-License-Identifier: MIT
/* vma: checking a mapping against /proc/self/maps. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "base/error.h"
#include "kernel/vma.h"

/* One line of /proc/self/maps. */
struct vma {
	uintptr_t start, end;
	char perms[5];
	uint64_t offset;
	unsigned int major, minor;
	uint64_t inode;
};

static bool vma_parse(const char *line, struct vma *v)
{
	return sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %4s %" SCNx64
		      " %x:%x %" SCNu64, &v->start, &v->end, v->perms,
		      &v->offset, &v->major, &v->minor, &v->inode) == 7;
}

/* Why this VMA cannot be the guest view of (st, offset at addr). */
static int vma_refuse(const struct vma *v, const struct stat *st,
		      uintptr_t addr, uint64_t offset, uintptr_t at)
{
	uint64_t want = offset + (at - addr);
	uint64_t has = v->offset + (at - v->start);
	bool same_file = v->inode == (uint64_t)st->st_ino &&
			 v->major == major(st->st_dev) &&
			 v->minor == minor(st->st_dev);

	if (!v->inode && v->perms[3] == 'p')
		return ferry_fail(-EINVAL, "%#lx is private anonymous memory: "
				  "post-copy cannot fill it (map the memfd "
				  "MAP_SHARED)", (unsigned long)at);
	if (!same_file)
		return ferry_fail(-EINVAL, "%#lx maps another file (%02x:%02x "
				  "inode %" PRIu64 ") than the memfd",
				  (unsigned long)at, v->major, v->minor,
				  v->inode);
	if (v->perms[3] != 's')
		return ferry_fail(-EINVAL, "%#lx maps the memfd MAP_PRIVATE: "
				  "the guest's writes would land in copies "
				  "ferry never sees (map it MAP_SHARED)",
				  (unsigned long)at);
	if (has != want)
		return ferry_fail(-EINVAL, "%#lx maps offset %#" PRIx64 " of "
				  "the memfd, not %#" PRIx64,
				  (unsigned long)at, has, want);
	if (v->perms[0] != 'r' || v->perms[1] != 'w')
		return ferry_fail(-EINVAL, "%#lx is mapped %s: the guest view "
				  "must be readable and writable",
				  (unsigned long)at, v->perms);
	return 0;
}

/*
 * Walk the VMAs in address order; `at` is the first byte of the range
 * not yet covered.  A VMA that starts past it leaves a hole.
 */
static int walk(FILE *maps, const struct stat *st, uintptr_t addr,
		uintptr_t end, uint64_t offset)
{
	uintptr_t at = addr;
	size_t cap = 0;
	char *line = NULL;
	struct vma v;
	int ret = 0;

	while (!ret && at < end && getline(&line, &cap, maps) > 0) {
		if (!vma_parse(line, &v) || v.end <= at)
			continue;
		if (v.start > at)
			break;
		ret = vma_refuse(&v, st, addr, offset, at);
		at = v.end;
	}
	free(line);
	if (!ret && at < end)
		ret = ferry_fail(-EINVAL, "%#lx is not mapped: the range "
				 "%#lx+%#lx must be mapped whole",
				 (unsigned long)at, (unsigned long)addr,
				 (unsigned long)(end - addr));
	return ret;
}

int vma_check_shared(const void *addr, size_t size, int fd, uint64_t offset)
{
	uintptr_t start = (uintptr_t)addr;
	struct stat st;
	FILE *maps;
	int ret;

	if (fstat(fd, &st))
		return ferry_fail(-errno, "fd %d: %s", fd, strerror(errno));
	maps = fopen("/proc/self/maps", "re");
	if (!maps)
		return ferry_fail(-errno, "/proc/self/maps: %s",
				  strerror(errno));
	ret = walk(maps, &st, start, start + size, offset);
	fclose(maps);
	return ret;
}
