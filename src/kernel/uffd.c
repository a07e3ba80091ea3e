// SPDX-License-Identifier: MIT
/*
 * uffd: every userfaultfd ioctl ferry issues goes through here.  Each
 * wrapper returns 0 / a count or -errno and never hides a partial result.
 */
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "base/error.h"
#include "ferry/uffd.h"
#include "base/sys.h"
#include "kernel/uapi.h"

struct feature_info {
	const char *name;
	const char *since;
};

static const struct feature_info features[FERRY_UFFD_F_COUNT] = {
	{ "PAGEFAULT_FLAG_WP", "5.7" },
	{ "EVENT_FORK", "4.11" },
	{ "EVENT_REMAP", "4.11" },
	{ "EVENT_REMOVE", "4.11" },
	{ "MISSING_HUGETLBFS", "4.11" },
	{ "MISSING_SHMEM", "4.11" },
	{ "EVENT_UNMAP", "4.11" },
	{ "SIGBUS", "4.14" },
	{ "THREAD_ID", "4.14" },
	{ "MINOR_HUGETLBFS", "5.13" },
	{ "MINOR_SHMEM", "5.14" },
	{ "EXACT_ADDRESS", "5.18" },
	{ "WP_HUGETLBFS_SHMEM", "5.19" },
	{ "WP_UNPOPULATED", "6.4" },
	{ "POISON", "6.6" },
	{ "WP_ASYNC", "6.7" },
	{ "MOVE", "6.8" },
};

static int feature_index(uint64_t bit)
{
	if (!bit || (bit & (bit - 1)))
		return -1;
	int i = __builtin_ctzll(bit);

	return i < FERRY_UFFD_F_COUNT ? i : -1;
}

const char *ferry_uffd_feature_name(uint64_t bit)
{
	int i = feature_index(bit);

	return i < 0 ? NULL : features[i].name;
}

const char *ferry_uffd_feature_since(uint64_t bit)
{
	int i = feature_index(bit);

	return i < 0 ? NULL : features[i].since;
}

uint64_t ferry_uffd_features_for(bool hugetlb, uint64_t modes)
{
	uint64_t f = 0;

	if (modes & FERRY_UFFD_MISSING)
		f |= hugetlb ? FERRY_UFFD_F_MISSING_HUGETLBFS :
			       FERRY_UFFD_F_MISSING_SHMEM;
	if (modes & FERRY_UFFD_MINOR)
		f |= hugetlb ? FERRY_UFFD_F_MINOR_HUGETLBFS :
			       FERRY_UFFD_F_MINOR_SHMEM;
	if (modes & FERRY_UFFD_WP)
		f |= FERRY_UFFD_F_PAGEFAULT_FLAG_WP |
		     FERRY_UFFD_F_WP_HUGETLBFS_SHMEM;
	return f;
}

void ferry_uffd_close(struct ferry_uffd *uffd)
{
	if (uffd->fd >= 0)
		close(uffd->fd);
	uffd->fd = -1;
}

static int check_ioctls(uint64_t modes, uint64_t ioctls)
{
	uint64_t cont = 1ULL << _UFFDIO_CONTINUE;
	uint64_t wp = 1ULL << _UFFDIO_WRITEPROTECT;

	if ((modes & FERRY_UFFD_MINOR) && !(ioctls & cont))
		return ferry_fail(-EPROTO, "MINOR range registered but the "
				  "kernel does not allow UFFDIO_CONTINUE on it");
	if (!(modes & FERRY_UFFD_MINOR) && (ioctls & cont))
		return ferry_fail(-EPROTO, "kernel reports UFFDIO_CONTINUE "
				  "on a range not registered MINOR");
	if ((modes & FERRY_UFFD_WP) && !(ioctls & wp))
		return ferry_fail(-EPROTO, "WP range registered but the "
				  "kernel does not allow UFFDIO_WRITEPROTECT");
	return 0;
}

static const char *mode_names(uint64_t modes, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s", modes & FERRY_UFFD_MISSING ? "MISSING|" : "",
		 modes & FERRY_UFFD_MINOR ? "MINOR|" : "",
		 modes & FERRY_UFFD_WP ? "WP|" : "");
	if (buf[0])
		buf[strlen(buf) - 1] = '\0';
	return buf;
}

int ferry_uffd_register(struct ferry_uffd *uffd, void *addr, size_t len,
			uint64_t modes, uint64_t *ioctls)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)addr, .len = len },
		.mode = modes,
	};
	char names[32];
	int ret = sys_ioctl(uffd->fd, UFFDIO_REGISTER, &reg);

	if (ret)
		return ferry_fail(ret, "registering %zu bytes at %p %s: %s",
				  len, addr, mode_names(modes, names,
							sizeof(names)),
				  strerror(-ret));
	if (ioctls)
		*ioctls = reg.ioctls;
	ret = check_ioctls(modes, reg.ioctls);
	if (ret)
		ferry_uffd_unregister(uffd, addr, len);
	return ret;
}

int ferry_uffd_unregister(struct ferry_uffd *uffd, void *addr, size_t len)
{
	struct uffdio_range range = { .start = (uintptr_t)addr, .len = len };
	int ret = sys_ioctl(uffd->fd, UFFDIO_UNREGISTER, &range);

	if (ret)
		return ferry_fail(ret, "unregistering %zu bytes at %p: %s",
				  len, addr, strerror(-ret));
	return 0;
}

enum mfill_op { MFILL_COPY, MFILL_ZEROPAGE, MFILL_CONTINUE };

/*
 * One ioctl.  Returns 0 or -errno; *done gets the bytes the kernel
 * installed, which it reports in the same field as an error (negative).
 */
static int mfill_once(int fd, enum mfill_op op, uintptr_t dst,
		      uintptr_t src, size_t len, uint64_t mode, size_t *done)
{
	union {
		struct uffdio_copy copy;
		struct uffdio_zeropage zero;
		struct uffdio_continue cont;
	} u;
	__s64 result;
	int ret;

	memset(&u, 0, sizeof(u));
	switch (op) {
	case MFILL_COPY:
		u.copy = (struct uffdio_copy){ dst, src, len, mode, 0 };
		ret = sys_ioctl(fd, UFFDIO_COPY, &u.copy);
		result = u.copy.copy;
		break;
	case MFILL_ZEROPAGE:
		u.zero.range = (struct uffdio_range){ dst, len };
		u.zero.mode = mode;
		ret = sys_ioctl(fd, UFFDIO_ZEROPAGE, &u.zero);
		result = u.zero.zeropage;
		break;
	default:
		u.cont.range = (struct uffdio_range){ dst, len };
		u.cont.mode = mode;
		ret = sys_ioctl(fd, UFFDIO_CONTINUE, &u.cont);
		result = u.cont.mapped;
		break;
	}
	*done = result > 0 ? (size_t)result : 0;
	if (*done > len)	/* a kernel that wrote nonsense: trust nothing */
		*done = 0;
	return ret;
}

#define MFILL_MAX_RETRIES 1000

static ssize_t mfill(struct ferry_uffd *uffd, enum mfill_op op, void *dst,
		     const void *src, size_t len, uint64_t mode)
{
	uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
	size_t total = 0, done;
	int ret = 0, retries = 0;

	while (total < len) {
		ret = mfill_once(uffd->fd, op, d + total,
				 src ? s + total : 0, len - total, mode, &done);
		total += done;
		if (ret == 0 || (ret == -EAGAIN && done))
			continue;
		if (ret == -EAGAIN && ++retries < MFILL_MAX_RETRIES) {
			sched_yield();	/* mm is changing (fork, mremap) */
			continue;
		}
		break;
	}
	if (total)
		return (ssize_t)total;
	return ret;
}

static uint64_t copy_mode(unsigned int flags)
{
	return (flags & FERRY_UFFD_DONTWAKE ? UFFDIO_COPY_MODE_DONTWAKE : 0) |
	       (flags & FERRY_UFFD_INSTALL_WP ? UFFDIO_COPY_MODE_WP : 0);
}

ssize_t ferry_uffd_copy(struct ferry_uffd *uffd, void *dst, const void *src,
			size_t len, unsigned int flags)
{
	return mfill(uffd, MFILL_COPY, dst, src, len, copy_mode(flags));
}

ssize_t ferry_uffd_zeropage(struct ferry_uffd *uffd, void *dst, size_t len,
			    unsigned int flags)
{
	uint64_t mode = flags & FERRY_UFFD_DONTWAKE ?
			UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0;

	return mfill(uffd, MFILL_ZEROPAGE, dst, NULL, len, mode);
}

ssize_t ferry_uffd_continue(struct ferry_uffd *uffd, void *dst, size_t len,
			    unsigned int flags)
{
	uint64_t mode =
		(flags & FERRY_UFFD_DONTWAKE ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0) |
		(flags & FERRY_UFFD_INSTALL_WP ? UFFDIO_CONTINUE_MODE_WP : 0);

	return mfill(uffd, MFILL_CONTINUE, dst, NULL, len, mode);
}

int ferry_uffd_writeprotect(struct ferry_uffd *uffd, void *addr, size_t len,
			    bool wp, unsigned int flags)
{
	struct uffdio_writeprotect req = {
		.range = { .start = (uintptr_t)addr, .len = len },
		.mode = (wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0) |
			(flags & FERRY_UFFD_DONTWAKE ?
			 UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0),
	};

	int ret = sys_ioctl(uffd->fd, UFFDIO_WRITEPROTECT, &req);

	if (ret)
		return ferry_fail(ret, "%s %zu bytes at %p: %s",
				  wp ? "write-protecting" : "un-protecting",
				  len, addr, strerror(-ret));
	return 0;
}

int ferry_uffd_poison(struct ferry_uffd *uffd, void *addr, size_t len)
{
	struct uffdio_poison req = {
		.range = { .start = (uintptr_t)addr, .len = len },
	};
	int ret;

	/*
	 * EAGAIN: the address space is changing under the call (an event
	 * the registrant must read first); a few tries, then the caller
	 * hears -EAGAIN and comes back later.
	 */
	for (int i = 0; i < 10; i++) {
		ret = sys_ioctl(uffd->fd, UFFDIO_POISON, &req);
		if (ret != -EAGAIN)
			break;
		sched_yield();
	}
	if (ret == -EAGAIN)
		return ret;
	if (ret)
		return ferry_fail(ret, "poisoning %zu bytes at %p: %s", len,
				  addr, strerror(-ret));
	return 0;
}

int ferry_uffd_wake(struct ferry_uffd *uffd, void *addr, size_t len)
{
	struct uffdio_range range = { .start = (uintptr_t)addr, .len = len };
	int ret = sys_ioctl(uffd->fd, UFFDIO_WAKE, &range);

	if (ret)
		return ferry_fail(ret, "waking %zu bytes at %p: %s", len, addr,
				  strerror(-ret));
	return 0;
}

ssize_t ferry_uffd_read(struct ferry_uffd *uffd, struct uffd_msg *msgs,
			size_t max)
{
	ssize_t n;

	do {
		n = sys_read(uffd->fd, msgs, max * sizeof(*msgs));
	} while (n == -EINTR);
	if (n < 0)
		return n;
	return n / (ssize_t)sizeof(*msgs);
}
