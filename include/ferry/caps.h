/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CAPS_H
#define FERRY_CAPS_H

#include <stdbool.h>

#include "ferry/uffd.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * What this machine can run, probed for real (a THP collapse is attempted,
 * not inferred), with what to change where something is missing.  This is
 * what `ferry doctor` prints.
 */
enum ferry_cap {
	FERRY_CAP_MEM_SHMEM,		/* guest memory on 4 KiB shmem */
	FERRY_CAP_MEM_THP,		/* THP shmem with huge mappings */
	FERRY_CAP_MEM_HUGETLB,		/* hugetlbfs 2 MiB pages */
	FERRY_CAP_POSTCOPY_SHMEM,	/* MISSING + MINOR faults on shmem */
	FERRY_CAP_POSTCOPY_HUGETLB,	/* MISSING + MINOR faults on hugetlbfs */
	FERRY_CAP_DIRTY_TRACKING,	/* async WP + PAGEMAP_SCAN: pre-copy */
	FERRY_CAP_LIVE_SNAPSHOT,	/* synchronous WP on shared memory */
	FERRY_CAP_KERNEL_FAULTS,	/* a userfaultfd that reports the
					 * kernel's own faults on guest memory
					 * (KVM, read() into it), tried */
	FERRY_CAP_COUNT
};

struct ferry_cap_status {
	bool ok;
	char detail[256];	/* what was found */
	char fix[480];		/* what to change; "" when ok */
};

struct ferry_caps {
	char kernel[65];			/* uname -r */
	bool root;
	const struct ferry_uffd_caps *uffd;
	long unprivileged_userfaultfd;		/* the sysctl, -1 if absent */
	bool dev_userfaultfd;			/* /dev/userfaultfd exists */
	long hugetlb_total, hugetlb_free;	/* 2 MiB pool */
	char thp_shmem_enabled[64];		/* the bracketed setting */
	char thp_shmem_2m[64];			/* hugepages-2048kB/shmem_enabled */
	struct ferry_cap_status cap[FERRY_CAP_COUNT];
};

const char *ferry_caps_name(enum ferry_cap cap);

/* Probe everything; 0, or -errno if even the basics could not be read. */
int ferry_caps_probe(struct ferry_caps *caps);

#ifdef __cplusplus
}
#endif

#endif
