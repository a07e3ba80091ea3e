// SPDX-License-Identifier: MIT
/*
 * uffd_open: getting a userfaultfd (the syscall, /dev/userfaultfd, or a
 * VMM's), negotiating its features, and finding out whether it reports the
 * faults the kernel itself takes on guest memory.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/uffd.h"
#include "kernel/uapi.h"

/* Set by the kernel once UFFDIO_API is done; shown in fdinfo. */
#define UFFD_FEATURE_INITIALIZED	(1ULL << 31)

/*
 * Features that change what a fault does or add events a reader must
 * answer: ferry's fault loop handles none of them, so a handed-in
 * descriptor that has them is refused.
 */
#define CHANGES_FAULTS	(FERRY_UFFD_F_SIGBUS | FERRY_UFFD_F_WP_ASYNC | \
			 FERRY_UFFD_F_EVENT_FORK | FERRY_UFFD_F_EVENT_REMAP | \
			 FERRY_UFFD_F_EVENT_REMOVE | FERRY_UFFD_F_EVENT_UNMAP)

const char *ferry_uffd_via_name(enum ferry_uffd_via via)
{
	switch (via) {
	case FERRY_UFFD_VIA_SYSCALL_USER:
		return "userfaultfd(UFFD_USER_MODE_ONLY)";
	case FERRY_UFFD_VIA_SYSCALL:
		return "userfaultfd(2)";
	case FERRY_UFFD_VIA_DEV:
		return "/dev/userfaultfd";
	case FERRY_UFFD_VIA_VMM:
		return "handed in by the VMM";
	}
	return "?";
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
	case FERRY_UFFD_VIA_VMM:
		break;
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

/*
 * What to change when neither way to a kernel-fault descriptor works,
 * from the errors each gave.  The syscall without UFFD_USER_MODE_ONLY
 * needs CAP_SYS_PTRACE unless the sysctl allows everyone; the device
 * needs read-write access to it (Linux 6.1).
 */
static int kernel_open_failed(int sys_err, int dev_err, char *out,
			      size_t len)
{
	long sysctl = -1;
	char dev[120];

	sys_read_long("/proc/sys/vm/unprivileged_userfaultfd", &sysctl);
	if (dev_err == -ENOENT)
		snprintf(dev, sizeof(dev), "missing (Linux 6.1 brought it)");
	else
		snprintf(dev, sizeof(dev), "%s (give this user read-write "
			 "access to it: chmod, an ACL or its group)",
			 strerror(-dev_err));
	snprintf(out, len, "no userfaultfd that reports kernel-mode faults: "
		 "userfaultfd(2): %s (needs CAP_SYS_PTRACE, or sysctl "
		 "vm.unprivileged_userfaultfd=1, now %ld); /dev/userfaultfd: %s",
		 strerror(-sys_err), sysctl, dev);
	return sys_err == -EPERM || dev_err == -ENOENT ? sys_err : dev_err;
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

/*
 * A kernel-fault descriptor: the syscall, else the device.  Tried afresh
 * at each open (privileges can differ from the probe's: a process that
 * dropped them), *reason filled when both fail.
 */
static int open_kernel(enum ferry_uffd_via *via, char *reason, size_t len)
{
	int sys_fd = open_via(FERRY_UFFD_VIA_SYSCALL), dev_fd;

	if (sys_fd >= 0) {
		*via = FERRY_UFFD_VIA_SYSCALL;
		return sys_fd;
	}
	dev_fd = open_via(FERRY_UFFD_VIA_DEV);
	if (dev_fd >= 0) {
		*via = FERRY_UFFD_VIA_DEV;
		return dev_fd;
	}
	return kernel_open_failed(sys_fd, dev_fd, reason, len);
}

static void probe_once(void)
{
	int fd = open_kernel(&caps.kernel_via, caps.kernel_reason,
			     sizeof(caps.kernel_reason));

	caps.kernel_err = fd < 0 ? fd : 0;
	caps.via = caps.kernel_via;
	if (fd < 0) {
		fd = open_via(FERRY_UFFD_VIA_SYSCALL_USER);
		caps.via = FERRY_UFFD_VIA_SYSCALL_USER;
	}
	if (fd < 0) {
		caps.open_err = fd;
		snprintf(caps.open_reason, sizeof(caps.open_reason),
			 "userfaultfd(UFFD_USER_MODE_ONLY): %s; %s",
			 strerror(-fd), caps.kernel_reason);
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

static int open_fd(bool kernel_faults, enum ferry_uffd_via *via)
{
	char reason[320];
	int fd;

	if (kernel_faults) {
		fd = open_kernel(via, reason, sizeof(reason));
		return fd < 0 ? ferry_fail(fd, "%s", reason) : fd;
	}
	fd = open_via(*via = FERRY_UFFD_VIA_SYSCALL_USER);
	if (fd < 0)
		fd = open_kernel(via, reason, sizeof(reason));
	return fd < 0 ? ferry_fail(fd, "opening userfaultfd: %s",
				   strerror(-fd)) : fd;
}

int ferry_uffd_open(struct ferry_uffd *uffd, uint64_t required,
		    uint64_t optional, bool kernel_faults)
{
	const struct ferry_uffd_caps *c = ferry_uffd_probe();
	enum ferry_uffd_via via;
	uint64_t want;
	int fd, ret;

	uffd->fd = -1;
	if (c->open_err)
		return ferry_fail(c->open_err, "%s", c->open_reason);
	if (required & ~c->features)
		return missing_features(required & ~c->features);
	fd = open_fd(kernel_faults, &via);
	if (fd < 0)
		return fd;
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

/*
 * The "API:" line of a userfaultfd's fdinfo: "API:\t<api>:<features>:
 * <ioctls>", features as the kernel keeps them (bit 31: initialized).
 * -EINVAL when fd is not a userfaultfd.
 */
static int fdinfo_features(int fd, uint64_t *features)
{
	char path[64], buf[512], *api;
	unsigned long long version, f;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	n = sys_read_file(path, buf, sizeof(buf));
	if (n < 0)
		return ferry_fail((int)n, "fd %d: %s", fd, strerror((int)-n));
	api = strstr(buf, "\nAPI:");
	if (!api || sscanf(api + 5, "%llx:%llx", &version, &f) != 2)
		return ferry_fail(-EINVAL, "fd %d is not a userfaultfd", fd);
	*features = f;
	return 0;
}

/* Negotiate on a fresh descriptor, or read what was negotiated. */
static int adopt_features(struct ferry_uffd *uffd, uint64_t required,
			  uint64_t optional, uint64_t now)
{
	const struct ferry_uffd_caps *c = ferry_uffd_probe();
	int ret;

	if (!(now & UFFD_FEATURE_INITIALIZED)) {
		if (required & ~c->features)
			return missing_features(required & ~c->features);
		ret = api_handshake(uffd->fd, required |
				    (optional & c->features), &uffd->features);
		if (ret)
			return ferry_fail(ret, "UFFDIO_API on the VMM's "
					  "userfaultfd: %s", strerror(-ret));
		return 0;
	}
	uffd->features = now & ~UFFD_FEATURE_INITIALIZED;
	if (uffd->features & CHANGES_FAULTS)
		return ferry_fail(-EINVAL, "the VMM's userfaultfd was given "
				  "features %#llx that change what a fault "
				  "does (SIGBUS, WP_ASYNC, EVENT_*): ferry "
				  "cannot serve faults on it",
				  (unsigned long long)(uffd->features &
						       CHANGES_FAULTS));
	if (required & ~uffd->features)
		return ferry_fail_ctx(missing_features(required &
						       ~uffd->features),
				      "the VMM's userfaultfd");
	return 0;
}

int ferry_uffd_adopt(struct ferry_uffd *uffd, int fd, uint64_t required,
		     uint64_t optional)
{
	uint64_t now;
	int flags, ret;

	uffd->fd = -1;
	ret = fdinfo_features(fd, &now);
	if (ret)
		return ret;
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || !(flags & O_NONBLOCK))
		return ferry_fail(-EINVAL, "the VMM's userfaultfd %d is "
				  "blocking: open it with O_NONBLOCK", fd);
	uffd->fd = sys_ret(fcntl(fd, F_DUPFD_CLOEXEC, 0));
	if (uffd->fd < 0)
		return ferry_fail(uffd->fd, "dup of userfaultfd %d: %s", fd,
				  strerror(-uffd->fd));
	uffd->via = FERRY_UFFD_VIA_VMM;
	ret = adopt_features(uffd, required, optional, now);
	if (ret)
		ferry_uffd_close(uffd);
	return ret;
}

/* ---- does it report kernel-mode faults? ------------------------------- */

struct kernel_touch {
	int pipe_w;
	const void *page;
	int done_fd;
	int err;		/* written by the helper before done_fd */
};

/* The kernel reads the page (copy_from_user): a kernel-mode fault. */
static void *touch_from_kernel(void *arg)
{
	struct kernel_touch *t = arg;

	t->err = write(t->pipe_w, t->page, 1) == 1 ? 0 : -errno;
	eventfd_write(t->done_fd, 1);
	return NULL;
}

/* Wait for the helper to finish or its fault to arrive; serve the fault. */
static int watch_touch(struct ferry_uffd *uffd, struct kernel_touch *t)
{
	struct pollfd pfd[2] = { { uffd->fd, POLLIN, 0 },
				 { t->done_fd, POLLIN, 0 } };
	struct uffd_msg msg;

	for (;;) {
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			return -errno;
		if ((pfd[0].revents & POLLIN) &&
		    ferry_uffd_read(uffd, &msg, 1) == 1 &&
		    msg.event == UFFD_EVENT_PAGEFAULT) {
			ssize_t n = ferry_uffd_zeropage(uffd, (void *)t->page,
							4096, 0);

			return n == 4096 || n == -EEXIST ? 1 : (int)n;
		}
		if (pfd[1].revents & POLLIN)
			return 0;
	}
}

static int trial(struct ferry_uffd *uffd, void *page, int pipe_w)
{
	struct kernel_touch t = { .pipe_w = pipe_w, .page = page };
	pthread_t helper;
	int ret;

	t.done_fd = eventfd(0, EFD_CLOEXEC);
	if (t.done_fd < 0)
		return -errno;
	ret = -pthread_create(&helper, NULL, touch_from_kernel, &t);
	if (!ret) {
		ret = watch_touch(uffd, &t);
		if (ret < 0)	/* the helper may still wait: let it go */
			ferry_uffd_zeropage(uffd, page, 4096, 0);
		pthread_join(helper, NULL);
		if (ret == 0 && t.err != -EFAULT)
			ret = t.err ? t.err : -EPROTO;
	}
	close(t.done_fd);
	return ret;
}

int ferry_uffd_reports_kernel_faults(struct ferry_uffd *uffd)
{
	int pipes[2], err, ret;
	void *page = sys_mmap(NULL, 4096, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, &err);

	if (!page)
		return ferry_fail(err, "a scratch page: %s", strerror(-err));
	ret = sys_ret(pipe2(pipes, O_CLOEXEC | O_NONBLOCK));
	if (ret)
		goto err_unmap;
	ret = ferry_uffd_register(uffd, page, 4096, FERRY_UFFD_MISSING, NULL);
	if (!ret) {
		ret = trial(uffd, page, pipes[1]);
		ferry_uffd_unregister(uffd, page, 4096);
	}
	close(pipes[0]);
	close(pipes[1]);
err_unmap:
	sys_munmap(page, 4096);
	return ret < 0 ? ferry_fail(ret, "trying a kernel-mode fault: %s",
				    strerror(-ret)) : ret;
}
