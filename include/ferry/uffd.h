/* SPDX-License-Identifier: MIT */
#ifndef FERRY_UFFD_H
#define FERRY_UFFD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <linux/userfaultfd.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * userfaultfd: the one module that issues its ioctls.  Every function
 * returns 0 / a count, or -errno; none hides a partial result.
 */

/* How the descriptor was obtained. */
enum ferry_uffd_via {
	FERRY_UFFD_VIA_SYSCALL_USER,	/* userfaultfd(UFFD_USER_MODE_ONLY) */
	FERRY_UFFD_VIA_SYSCALL,		/* userfaultfd(0) */
	FERRY_UFFD_VIA_DEV,		/* /dev/userfaultfd USERFAULTFD_IOC_NEW */
	FERRY_UFFD_VIA_VMM,		/* handed in (ferry_uffd_adopt) */
};

/* "userfaultfd(UFFD_USER_MODE_ONLY)", ... for messages. */
const char *ferry_uffd_via_name(enum ferry_uffd_via via);

/* Feature bits, named as the kernel names them (src/uapi.h fills gaps). */
#define FERRY_UFFD_F_PAGEFAULT_FLAG_WP	(1ULL << 0)
#define FERRY_UFFD_F_EVENT_FORK		(1ULL << 1)
#define FERRY_UFFD_F_EVENT_REMAP	(1ULL << 2)
#define FERRY_UFFD_F_EVENT_REMOVE	(1ULL << 3)
#define FERRY_UFFD_F_MISSING_HUGETLBFS	(1ULL << 4)
#define FERRY_UFFD_F_MISSING_SHMEM	(1ULL << 5)
#define FERRY_UFFD_F_EVENT_UNMAP	(1ULL << 6)
#define FERRY_UFFD_F_SIGBUS		(1ULL << 7)
#define FERRY_UFFD_F_THREAD_ID		(1ULL << 8)
#define FERRY_UFFD_F_MINOR_HUGETLBFS	(1ULL << 9)
#define FERRY_UFFD_F_MINOR_SHMEM	(1ULL << 10)
#define FERRY_UFFD_F_EXACT_ADDRESS	(1ULL << 11)
#define FERRY_UFFD_F_WP_HUGETLBFS_SHMEM	(1ULL << 12)
#define FERRY_UFFD_F_WP_UNPOPULATED	(1ULL << 13)
#define FERRY_UFFD_F_POISON		(1ULL << 14)
#define FERRY_UFFD_F_WP_ASYNC		(1ULL << 15)
#define FERRY_UFFD_F_MOVE		(1ULL << 16)
#define FERRY_UFFD_F_COUNT		17

/* Register modes. */
#define FERRY_UFFD_MISSING	UFFDIO_REGISTER_MODE_MISSING
#define FERRY_UFFD_WP		UFFDIO_REGISTER_MODE_WP
#define FERRY_UFFD_MINOR	UFFDIO_REGISTER_MODE_MINOR

/* Flags for the install calls. */
#define FERRY_UFFD_DONTWAKE	(1U << 0)	/* leave the faulting thread asleep */
#define FERRY_UFFD_INSTALL_WP	(1U << 1)	/* map write-protected */

struct ferry_uffd {
	int fd;
	enum ferry_uffd_via via;
	uint64_t features;	/* what UFFDIO_API granted */
};

/* What this kernel offers, probed once per process and cached. */
struct ferry_uffd_caps {
	int open_err;			/* 0, or -errno: userfaultfd unusable */
	enum ferry_uffd_via via;	/* best way that worked */
	uint64_t features;		/* every feature the kernel reports */
	bool pagemap_scan;		/* PAGEMAP_SCAN ioctl on /proc/pid/pagemap */
	char open_reason[480];		/* why open failed, when it did */
	/*
	 * A descriptor that reports kernel-mode faults too (what guest
	 * memory needs): 0 and how it opens (FERRY_UFFD_VIA_SYSCALL or
	 * _DEV), or -errno with what to change in kernel_reason.
	 */
	int kernel_err;
	enum ferry_uffd_via kernel_via;
	char kernel_reason[320];
};

const struct ferry_uffd_caps *ferry_uffd_probe(void);

/* "MINOR_SHMEM", ... for one bit; NULL for an unknown bit. */
const char *ferry_uffd_feature_name(uint64_t bit);

/*
 * Kernel release that brought a feature (e.g. "5.13"), for error messages.
 */
const char *ferry_uffd_feature_since(uint64_t bit);

/*
 * Open a userfaultfd (O_CLOEXEC | O_NONBLOCK), then negotiate UFFDIO_API.
 * Every bit of `required` must be granted, or -EOPNOTSUPP with a reason
 * naming each missing feature and the release that brought it.  Bits of
 * `optional` are asked for when the kernel has them.
 *
 * `kernel_faults` asks for a descriptor that also reports faults the
 * kernel takes on the memory (KVM's vCPU faults, a read() or O_DIRECT
 * into it, vhost): the plain syscall, else /dev/userfaultfd.  The syscall
 * needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1, the device
 * read-write access; when neither works the call fails (-EPERM or
 * -EACCES) with a reason naming each of them and what to change.  Without
 * it the descriptor is user-mode-only where that works (a kernel access
 * to a page not yet there then fails with EFAULT instead of waiting): for
 * memory that nothing but user code touches.
 */
int ferry_uffd_open(struct ferry_uffd *uffd, uint64_t required,
		    uint64_t optional, bool kernel_faults);

/*
 * Use a userfaultfd someone else opened (a VMM's): `fd` is duplicated
 * (the caller keeps and closes its own).  If UFFDIO_API was not done on
 * it yet, it is done here with `required` and what the kernel has of
 * `optional`; if it was, the features granted then are read from
 * /proc/self/fdinfo and must include `required` (-EOPNOTSUPP naming what
 * is missing).  -EINVAL when fd is not a userfaultfd, is blocking (it
 * must be O_NONBLOCK: ferry polls it) or was granted features that change
 * what a fault does (SIGBUS, WP_ASYNC, EVENT_*).
 */
int ferry_uffd_adopt(struct ferry_uffd *uffd, int fd, uint64_t required,
		     uint64_t optional);

/*
 * Does this descriptor report faults the kernel takes in kernel mode?
 * Tried for real: a scratch page registered MISSING, a write() to a pipe
 * from it in a helper thread, and either the fault arrives (1: served with
 * a zero page) or the write fails with EFAULT (0: user-mode-only).  The
 * descriptor must be idle (nobody else reading it).  -errno if the trial
 * could not run.
 */
int ferry_uffd_reports_kernel_faults(struct ferry_uffd *uffd);

/*
 * The features a memory kind needs for `modes` (FERRY_UFFD_MISSING | MINOR |
 * WP): MISSING_SHMEM / MINOR_SHMEM / WP_HUGETLBFS_SHMEM on shmem, the
 * HUGETLBFS ones on hugetlbfs.
 */
uint64_t ferry_uffd_features_for(bool hugetlb, uint64_t modes);

/* Close; fd -1 is fine. */
void ferry_uffd_close(struct ferry_uffd *uffd);

static inline bool ferry_uffd_has(const struct ferry_uffd *uffd, uint64_t f)
{
	return (uffd->features & f) == f;
}

/*
 * Register [addr, addr+len) with `modes` (FERRY_UFFD_MISSING | MINOR | WP).
 * *ioctls (optional) gets the kernel's bitmask of range ioctls allowed
 * (1 << _UFFDIO_COPY, ...).  The wrapper checks it: a MINOR range must
 * allow CONTINUE, and CONTINUE is never reported for a range without MINOR
 * (the seed's rule); a violation is -EPROTO.
 */
int ferry_uffd_register(struct ferry_uffd *uffd, void *addr, size_t len,
			uint64_t modes, uint64_t *ioctls);
int ferry_uffd_unregister(struct ferry_uffd *uffd, void *addr, size_t len);

/*
 * The install calls return how many bytes were installed.
 *
 * - On EAGAIN with partial progress (the mm changed under us), the rest is
 *   retried inside the call.
 * - When the first page is already there, -EEXIST (a benign race for the
 *   caller: somebody else installed it).  If some pages were installed
 *   before one that exists, the count so far is returned; calling again on
 *   the remainder reports the -EEXIST.
 * - Any other error after partial progress likewise returns the count; the
 *   error comes back on the next call.  Errors are never counted as
 *   progress: the kernel reports them in the same field as the count, as a
 *   negative number, and the wrapper separates the two.
 */
ssize_t ferry_uffd_copy(struct ferry_uffd *uffd, void *dst, const void *src,
			size_t len, unsigned int flags);
ssize_t ferry_uffd_zeropage(struct ferry_uffd *uffd, void *dst, size_t len,
			    unsigned int flags);
ssize_t ferry_uffd_continue(struct ferry_uffd *uffd, void *dst, size_t len,
			    unsigned int flags);

/* Write-protect (wp = true) or un-protect a range. */
int ferry_uffd_writeprotect(struct ferry_uffd *uffd, void *addr, size_t len,
			    bool wp, unsigned int flags);

/*
 * Mark a range that cannot be served as poisoned (UFFDIO_POISON, Linux
 * 6.6): an access to it takes SIGBUS instead of waiting for a page that
 * will never come.  -EEXIST if a page is there already.
 */
int ferry_uffd_poison(struct ferry_uffd *uffd, void *addr, size_t len);

/* Wake threads waiting on faults in a range. */
int ferry_uffd_wake(struct ferry_uffd *uffd, void *addr, size_t len);

/*
 * Read up to `max` events.  Returns how many, or -EAGAIN when none is
 * pending (the fd is non-blocking: poll it).
 */
ssize_t ferry_uffd_read(struct ferry_uffd *uffd, struct uffd_msg *msgs,
			size_t max);

/* What a page-fault message says. */
enum ferry_fault_kind {
	FERRY_FAULT_MISSING,
	FERRY_FAULT_MINOR,
	FERRY_FAULT_WP,
};

static inline enum ferry_fault_kind
ferry_uffd_fault_kind(const struct uffd_msg *msg)
{
	if (msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)
		return FERRY_FAULT_WP;
	if (msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR)
		return FERRY_FAULT_MINOR;
	return FERRY_FAULT_MISSING;
}

static inline bool ferry_uffd_fault_is_write(const struct uffd_msg *msg)
{
	return msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
}

#ifdef __cplusplus
}
#endif

#endif
