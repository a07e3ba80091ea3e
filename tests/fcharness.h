/* SPDX-License-Identifier: MIT */
#ifndef FERRY_FCHARNESS_H
#define FERRY_FCHARNESS_H

/*
 * A Firecracker-like VMM for serve-faults' tests and benchmark, written
 * against the kernel only (none of libferry), so that it checks the
 * server rather than agrees with it.  What Firecracker does on a snapshot
 * load with a memory backend of type "Uffd", the harness does:
 *
 *   - guest memory: anonymous private mappings (MAP_HUGETLB for 2 MiB
 *     pages), 2 MiB-aligned, one or two regions with a gap between them
 *     (x86's MMIO gap);
 *   - a userfaultfd (O_CLOEXEC | O_NONBLOCK, UFFD_FEATURE_EVENT_REMOVE),
 *     every region registered MISSING;
 *   - connect to the handler's socket, then one sendmsg(): the JSON list
 *     of regions (today's fields, the older page_size_kib alone, or no
 *     page size at all) with the userfaultfd as SCM_RIGHTS; the socket is
 *     kept open until exit;
 *   - then the vCPUs: threads that touch pages and check every byte
 *     against the memory file's pattern.
 *
 * The memory file (the "snapshot") is written by the harness from a
 * pattern: guest memory as one flat file, with holes (pages never
 * written: a sparse file) and pages of data that are all zero.
 *
 * A VM runs in a forked child (it exits, is killed, takes SIGBUS, as a
 * VMM would); what it found comes back through shared memory.
 */
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define FCH_MAX_REGIONS	2
#define FCH_HUGE	(2UL << 20)

/* ---- the memory file ----------------------------------------------------- */

struct fch_memfile {
	int fd;
	uint64_t size;
	uint64_t seed;
};

/* Written whole; 0 or -errno. */
int fch_memfile_create(struct fch_memfile *m, uint64_t size, uint64_t seed);
void fch_memfile_close(struct fch_memfile *m);

/* What byte `off` of guest memory must read (0 in holes and zero pages). */
uint8_t fch_expected(const struct fch_memfile *m, uint64_t off);

/* Is the 4 KiB page at `off` a hole of the file? */
bool fch_is_hole(const struct fch_memfile *m, uint64_t off);

/* How many pages of page_size hold data (not all hole) in [0, size). */
uint64_t fch_data_pages(const struct fch_memfile *m, uint64_t page_size);

/* ---- a VM ---------------------------------------------------------------- */

enum fch_format {
	FCH_JSON_CURRENT,	/* page_size and page_size_kib, in bytes */
	FCH_JSON_KIB,		/* page_size_kib only (Firecracker 1.7-1.10) */
	FCH_JSON_NONE,		/* no page size (older still) */
	FCH_JSON_RAW,		/* raw: sent as it is */
};

/* A VM's make-up; zeroes: two regions of 4 KiB pages, today's JSON. */
struct fch_vm_opts {
	bool hugetlb;
	unsigned int nr_regions;	/* 1 or 2; 0: 2 */
	enum fch_format format;
	const char *raw;		/* FCH_JSON_RAW: these bytes */
	size_t raw_len;			/* 0: strlen(raw) */
	bool no_fd;			/* send no descriptor */
	bool two_fds;			/* send the uffd twice */
	bool in_pieces;			/* the list in 3 writes, 50 ms apart */
	size_t pad;			/* spaces before the list's ']' */
	unsigned int threads;		/* vCPUs touching; 0: 2 */
	/* Touch and check only these pages of region 0, in this order
	 * (NULL: every page of every region). */
	const uint32_t *order;
	size_t order_len;
	/* Before handing over, wait until the parent says go. */
	bool hold;
	/* Before touching, wait until the parent says go (fch_vm_go; a VM
	 * that holds too wants two). */
	bool wait_go;
	/* After checking, discard (MADV_DONTNEED) pages of region 0 and
	 * check they read zero: some never touched, some touched. */
	bool remove;
	/* Exit (without checking) after touching this many pages. */
	uint64_t exit_after;
	/* Touch a page of region 0 at this offset first, expecting to die
	 * there (SIGBUS): a refused list, an unservable page. */
	bool touch_and_die;
	uint64_t die_offset;
	/* The page size the list claims (0: the memory's). */
	uint64_t claim_page_size;
	/*
	 * Hand over with this instead (a VMM linked with a library): the
	 * regions as base, size, offset, page size quads.  Returns the
	 * connected socket or -errno.
	 */
	int (*hand_over)(const char *sock, int uffd, const uint64_t *quads,
			 unsigned int nr);
};

/* What a VM found, in memory shared with the parent. */
struct fch_result {
	int stage;			/* how far it got (FCH_STAGE_*) */
	int err;			/* errno of what failed, or 0 */
	char why[200];			/* what failed */
	uint64_t pages_checked, bad_bytes;
	uint64_t first_bad_off;
	uint64_t removed_checked;
	uint64_t sent_ns;		/* the list sent */
	uint64_t first_touch_ns;	/* first page in place, after sent */
	uint64_t touched_ns;		/* every page of `order` touched */
	uint64_t minor_faults;		/* the VM's own, while touching */
	int bus_code;			/* touch_and_die: SIGBUS's si_code, */
	bool bus_at_page;		/* and whether it came at that page */
	int go_fd;			/* the parent writes, the VM reads */
};

/*
 * A VM that touch_and_die took SIGBUS: its exit status (its handler
 * notes what it was told and exits, so that a sanitizer's handler cannot
 * stand in the way).  A poisoned page gives BUS_MCEERR_AR, or BUS_ADRERR
 * on a kernel without CONFIG_MEMORY_FAILURE.
 */
#define FCH_EXIT_SIGBUS	77

enum {
	FCH_STAGE_START,
	FCH_STAGE_SENT,			/* list and descriptor sent */
	FCH_STAGE_TOUCHED,		/* every page wanted touched */
	FCH_STAGE_CHECKED,		/* every byte checked */
	FCH_STAGE_DONE,
};

struct fch_vm {
	pid_t pid;
	struct fch_result *res;		/* shared, the parent unmaps it */
};

/*
 * Fork a VM that connects to `sock`; 0 or -errno.  Fork while the caller
 * runs no other thread (before the server's starts; `hold` is for that):
 * a child forked beside running threads may find a lock of theirs taken
 * forever (the sanitizers' allocators).
 */
int fch_vm_spawn(struct fch_vm *vm, const char *sock,
		 const struct fch_memfile *m, const struct fch_vm_opts *o);

/* Let a VM spawned with wait_go touch. */
void fch_vm_go(struct fch_vm *vm);

/*
 * Wait up to timeout_ms for it to end (then kill it): its wait status,
 * or -ETIMEDOUT.
 */
int fch_vm_wait(struct fch_vm *vm, int timeout_ms);

/* The result page unmapped.  After fch_vm_wait. */
void fch_vm_release(struct fch_vm *vm);

/* Monotonic nanoseconds. */
uint64_t fch_now_ns(void);

#endif
