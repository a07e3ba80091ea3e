/* SPDX-License-Identifier: MIT */
#ifndef FERRY_IO_H
#define FERRY_IO_H

/*
 * Whole transfers on descriptors: retry EINTR and short counts until
 * every byte has moved, so no caller writes the loop again.  Each
 * returns -errno from the failing call; the caller words the reason.
 */
#include <stddef.h>
#include <sys/types.h>

/* Read len bytes: len, fewer only when the file ends first, or -errno. */
ssize_t io_read_full(int fd, void *buf, size_t len);

/* Write every byte: 0, or -errno (a write that makes no progress: -EIO). */
int io_write_full(int fd, const void *buf, size_t len);

/* pread len bytes at off: len, fewer at the end of the file, or -errno. */
ssize_t io_pread_full(int fd, void *buf, size_t len, off_t off);

/* pwrite every byte at off: 0, or -errno (-EIO when none moves). */
int io_pwrite_full(int fd, const void *buf, size_t len, off_t off);

#endif
