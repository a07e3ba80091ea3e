/* SPDX-License-Identifier: MIT */
#ifndef FERRY_VMA_H
#define FERRY_VMA_H

/*
 * vma: what this process's address space holds at a range, read from
 * /proc/self/maps, to check a mapping a VMM hands in before ferry relies
 * on it.
 */
#include <stddef.h>
#include <stdint.h>

/*
 * 0 if every byte of [addr, addr + size) is mapped MAP_SHARED, readable
 * and writable, from the file behind `fd` (same device and inode) with
 * addr at file offset `offset`, VMA by VMA.  Otherwise -EINVAL with a
 * reason naming the first VMA that is not (a hole, private anonymous
 * memory, a private mapping of the file, another file, another offset,
 * missing permissions).
 */
int vma_check_shared(const void *addr, size_t size, int fd, uint64_t offset);

#endif
