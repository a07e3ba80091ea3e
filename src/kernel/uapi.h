/* SPDX-License-Identifier: MIT */
#ifndef FERRY_UAPI_H
#define FERRY_UAPI_H

/*
 * Kernel interfaces newer than Debian 12's headers (Linux 6.1), defined in
 * this one place.  Values are the kernel's ABI; they never change.
 */
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <linux/types.h>
#include <sys/mman.h>

#ifndef UFFD_FEATURE_WP_UNPOPULATED		/* Linux 6.4 */
#define UFFD_FEATURE_WP_UNPOPULATED		(1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON			/* Linux 6.6 */
#define UFFD_FEATURE_POISON			(1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC			/* Linux 6.7 */
#define UFFD_FEATURE_WP_ASYNC			(1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE			/* Linux 6.8 */
#define UFFD_FEATURE_MOVE			(1 << 16)
#endif

#ifndef UFFDIO_POISON				/* Linux 6.6 */
#define _UFFDIO_POISON				(0x08)
struct uffdio_poison {
	struct uffdio_range range;
	__u64 mode;
	__s64 updated;
};
#define UFFDIO_POISON	_IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

#ifndef UFFDIO_CONTINUE_MODE_WP			/* Linux 6.3 */
#define UFFDIO_CONTINUE_MODE_WP			((__u64)1 << 1)
#endif

#ifndef MADV_COLLAPSE				/* Linux 6.1 */
#define MADV_COLLAPSE				25
#endif

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB				(21U << 26)
#endif

/* PAGEMAP_SCAN on /proc/pid/pagemap, Linux 6.7. */
#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED	(1 << 0)
#define PAGE_IS_WRITTEN		(1 << 1)
#define PAGE_IS_FILE		(1 << 2)
#define PAGE_IS_PRESENT		(1 << 3)
#define PAGE_IS_SWAPPED		(1 << 4)
#define PAGE_IS_PFNZERO		(1 << 5)
#define PAGE_IS_HUGE		(1 << 6)
#define PAGE_IS_SOFT_DIRTY	(1 << 7)

struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};

#define PM_SCAN_WP_MATCHING	(1 << 0)
#define PM_SCAN_CHECK_WPASYNC	(1 << 1)

struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end;
	__u64 vec;
	__u64 vec_len;
	__u64 max_pages;
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};

#define PAGEMAP_SCAN	_IOWR('f', 16, struct pm_scan_arg)
#endif

#endif
