// SPDX-License-Identifier: MIT
/*
 * uffd: every userfaultfd ioctl ferry issues goes through here.  Each
 * wrapper returns 0 / a count or -errno and never hides a partial result.
 */
#include <pthread.h>
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

/* One way of getting a descriptor; O_NONBLOCK so readers poll. */
static int open_via(enum ferry_uffd_via via)
{
	int flags = O_CLOEXEC | O_NONBLOCK, fd, devfd;

	switch (via) {
	case FERRY_UFFD_VIA_SYSCALL_USER:
		return sys_userfaultfd(flags | UFFD_USER_MODE_ONLY);
	case FERRY_UFFD_VIA_SYSCALL:
		return sys_userfaultfd(flags);
	case FERRY_UFFD_VIA_DEV:
		devfd = sys_open("/dev/userfaultfd", O_RDWR);
		if (devfd < 0)
			return devfd;
		fd = sys_ret(ioctl(devfd, USERFAULTFD_IOC_NEW, flags));
		close(devfd);
		return fd;
	}
	return -EINVAL;
}

static int api_handshake(int fd, uint64_t want, uint64_t *granted)
{
	struct uffdio_api api = { .api = UFFD_API, .features = want };
	int ret = sys_ioctl(fd, UFFDIO_API, &api);

	if (ret)
		return ret;
	*granted = api.features;
	return 0;
}

static struct ferry_uffd_caps caps;
static pthread_once_t caps_once = PTHREAD_ONCE_INIT;

static bool probe_pagemap_scan(void)
{
	struct pm_scan_arg arg = { .size = sizeof(arg) };
	int fd = sys_open("/proc/self/pagemap", O_RDONLY), ret;

	if (fd < 0)
		return false;
	ret = sys_ioctl(fd, PAGEMAP_SCAN, &arg);
	close(fd);
	return ret >= 0;
}

static void probe_once(void)
{
	static const enum ferry_uffd_via order[] = {
		FERRY_UFFD_VIA_SYSCALL_USER, FERRY_UFFD_VIA_SYSCALL,
		FERRY_UFFD_VIA_DEV,
	};
	int fd = -ENOSYS, errs[3];

	for (unsigned int i = 0; i < 3; i++) {
		fd = errs[i] = open_via(order[i]);
		if (fd >= 0) {
			caps.via = order[i];
			break;
		}
	}
	if (fd < 0) {
		caps.open_err = fd;
		snprintf(caps.open_reason, sizeof(caps.open_reason),
			 "userfaultfd(): %s; /dev/userfaultfd: %s "
			 "(set vm.unprivileged_userfaultfd=1 or run as root)",
			 strerror(-errs[1]), strerror(-errs[2]));
	} else {
		caps.open_err = api_handshake(fd, 0, &caps.features);
		if (caps.open_err)
			snprintf(caps.open_reason, sizeof(caps.open_reason),
				 "UFFDIO_API: %s", strerror(-caps.open_err));
		close(fd);
	}
	caps.pagemap_scan = probe_pagemap_scan();
}

const struct ferry_uffd_caps *ferry_uffd_probe(void)
{
	pthread_once(&caps_once, probe_once);
	return &caps;
}

static int missing_features(uint64_t missing)
{
	char msg[400];
	size_t off = 0;

	off += snprintf(msg, sizeof(msg), "this kernel's userfaultfd lacks");
	for (int i = 0; i < 64 && off < sizeof(msg); i++) {
		uint64_t bit = 1ULL << i;

		if (missing & bit)
			off += snprintf(msg + off, sizeof(msg) - off,
					" %s (Linux %s)",
					ferry_uffd_feature_name(bit) ?: "?",
					ferry_uffd_feature_since(bit) ?: "?");
	}
	return ferry_fail(-EOPNOTSUPP, "%s", msg);
}

int ferry_uffd_open(struct ferry_uffd *uffd, uint64_t required,
		    uint64_t optional, bool kernel_faults)
{
	const struct ferry_uffd_caps *c = ferry_uffd_probe();
	enum ferry_uffd_via via = c->via;
	uint64_t want;
	int fd, ret;

	uffd->fd = -1;
	if (c->open_err)
		return ferry_fail(c->open_err, "%s", c->open_reason);
	if (required & ~c->features)
		return missing_features(required & ~c->features);
	if (kernel_faults && via == FERRY_UFFD_VIA_SYSCALL_USER)
		via = FERRY_UFFD_VIA_SYSCALL;
	fd = open_via(via);
	if (fd < 0 && via == FERRY_UFFD_VIA_SYSCALL)
		fd = open_via(via = FERRY_UFFD_VIA_DEV);
	if (fd < 0)
		return ferry_fail(fd, "opening userfaultfd: %s", strerror(-fd));
	want = required | (optional & c->features);
	ret = api_handshake(fd, want, &uffd->features);
	if (ret) {
		close(fd);
		return ferry_fail(ret, "UFFDIO_API for features %#llx: %s",
				  (unsigned long long)want, strerror(-ret));
	}
	uffd->fd = fd;
	uffd->via = via;
	return 0;
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
