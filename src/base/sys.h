/* SPDX-License-Identifier: MIT */
#ifndef FERRY_SYS_H
#define FERRY_SYS_H

/*
 * Thin syscall wrappers that turn errno into a -errno return at the lowest
 * layer, so nothing above them reads errno.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline int sys_ret(long r)
{
	return r < 0 ? -errno : (int)r;
}

static inline ssize_t sys_ssize(ssize_t r)
{
	return r < 0 ? -errno : r;
}

static inline int sys_ioctl(int fd, unsigned long req, void *arg)
{
	return sys_ret(ioctl(fd, req, arg));
}

static inline int sys_userfaultfd(int flags)
{
	return sys_ret(syscall(SYS_userfaultfd, flags));
}

static inline int sys_open(const char *path, int flags)
{
	return sys_ret(open(path, flags | O_CLOEXEC));
}

static inline int sys_memfd_create(const char *name, unsigned int flags)
{
	return sys_ret(memfd_create(name, flags));
}

static inline int sys_ftruncate(int fd, off_t len)
{
	return sys_ret(ftruncate(fd, len));
}

static inline int sys_fallocate(int fd, int mode, off_t off, off_t len)
{
	return sys_ret(fallocate(fd, mode, off, len));
}

static inline int sys_madvise(void *addr, size_t len, int advice)
{
	return sys_ret(madvise(addr, len, advice));
}

static inline int sys_munmap(void *addr, size_t len)
{
	return sys_ret(munmap(addr, len));
}

/* mmap that returns -errno in *err and NULL on failure. */
static inline void *sys_mmap(void *addr, size_t len, int prot, int flags,
			     int fd, off_t off, int *err)
{
	void *p = mmap(addr, len, prot, flags, fd, off);

	if (p == MAP_FAILED) {
		*err = -errno;
		return NULL;
	}
	*err = 0;
	return p;
}

static inline ssize_t sys_pread(int fd, void *buf, size_t len, off_t off)
{
	return sys_ssize(pread(fd, buf, len, off));
}

static inline ssize_t sys_pwrite(int fd, const void *buf, size_t len,
				 off_t off)
{
	return sys_ssize(pwrite(fd, buf, len, off));
}

static inline ssize_t sys_read(int fd, void *buf, size_t len)
{
	return sys_ssize(read(fd, buf, len));
}

static inline ssize_t sys_write(int fd, const void *buf, size_t len)
{
	return sys_ssize(write(fd, buf, len));
}

/*
 * Zeroed memory whose pages are already faulted in: calloc's large
 * allocations come as untouched mappings, and their first use would take
 * a page fault per 4 KiB (expensive on some hosts) on a hot path: the
 * fault path, the downtime.  Free with free().
 */
void *sys_zalloc(size_t len);
void *sys_zalloc_aligned(size_t align, size_t len);

/*
 * Raise the calling thread's CPU priority when allowed (CAP_SYS_NICE), so
 * that on a host short of CPUs a running vCPU does not delay the threads
 * migration depends on.  Two levels: the urgent path a faulting vCPU
 * waits on (fault service, page requests and replies) above the bulk
 * path (rounds, pushes), both above vCPUs.  Best effort: nothing happens
 * without the capability.
 */
enum sys_boost { SYS_BOOST_BULK = -5, SYS_BOOST_URGENT = -15 };

void sys_thread_boost(enum sys_boost level);

/* Read a whole small file (sysfs, procfs) into buf, NUL-terminated. */
/*
 * The next data extent of a file at or after `from`, cut at `limit`:
 * [*data, *hole).  1 when there is one, 0 when only holes are left,
 * -errno (SEEK_DATA / SEEK_HOLE refused) otherwise.
 */
int sys_next_data(int fd, off_t from, off_t limit, off_t *data, off_t *hole);

ssize_t sys_read_file(const char *path, char *buf, size_t len);

/* Write a string to a small file (a sysctl). */
int sys_write_file(const char *path, const char *text);

/* A decimal number from a small file. */
int sys_read_long(const char *path, long *value);

#endif
