// SPDX-License-Identifier: MIT
/*
 * serve probe: the descriptor a VMM sent, against what it says.
 *
 * What the VMM asked of the kernel is in the descriptor's fdinfo ("API:
 * <api>:<features>:<ioctls>", the features of its context), since a
 * second UFFDIO_API cannot tell (it fails on an initialised descriptor).
 * Whether each region is registered, and at which page size, is found
 * by trying: UFFDIO_COPY from a source no copy can read fails with
 *
 *   EFAULT   the page is missing in a range registered here, of
 *            pages of at least this length (the copy failed reading)
 *   EEXIST   the page is there already (registered: it was served)
 *   EINVAL   the length or address is not a page's of that range
 *            (4 KiB into hugetlb)
 *   ENOENT   nothing registered there
 *
 * and never installs anything: the source is read before a page is.
 */
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/mem.h"
#include "serve/serve.h"

#define PROBE_RETRIES		100000

/*
 * Without /proc (a handler in a jail may have none): a userfaultfd
 * refuses an empty range (EINVAL), anything else the request (ENOTTY).
 */
static int uffd_by_ioctl(int fd)
{
	struct uffdio_range empty = { 0, 0 };
	int ret = sys_ioctl(fd, UFFDIO_WAKE, &empty);

	if (ret != -EINVAL)
		return ferry_fail(-EBADF, "the descriptor sent is not a "
				  "userfaultfd (UFFDIO_WAKE: %s)",
				  strerror(-ret));
	return 0;
}

int serve_uffd_check(int fd)
{
	char path[64], link[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return uffd_by_ioctl(fd);
	link[n] = '\0';
	if (strcmp(link, "anon_inode:[userfaultfd]"))
		return ferry_fail(-EBADF, "the descriptor sent is %s, not a "
				  "userfaultfd", link);
	return 0;
}

int serve_uffd_features(int uffd, uint64_t *features)
{
	char path[64], buf[1024];
	unsigned long long api, feat;
	ssize_t n;
	const char *line;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", uffd);
	n = sys_read_file(path, buf, sizeof(buf));
	if (n == -ENOENT)
		return -ENOENT;		/* no /proc here: unknown */
	if (n < 0)
		return ferry_fail((int)n, "%s: %s", path, strerror((int)-n));
	line = strstr(buf, "\nAPI:");
	if (!line || sscanf(line + 5, "%llx:%llx", &api, &feat) != 2)
		return ferry_fail(-EPROTO, "%s has no API line", path);
	*features = feat;
	return 0;
}

/* A second UFFDIO_API succeeds only on a descriptor never initialised. */
static int initialised(int uffd)
{
	struct uffdio_api api = { .api = UFFD_API };

	if (sys_ioctl(uffd, UFFDIO_API, &api) == 0)
		return ferry_fail(-EINVAL, "the userfaultfd sent was never "
				  "initialised (UFFDIO_API): nothing is "
				  "registered on it");
	return 0;
}

/*
 * What the VMM asked for.  Without /proc it cannot be read: it is taken
 * to have REMOVE events (the fill then keeps out of a batch being read,
 * which costs little and is right either way).
 */
static int features(int uffd, struct serve_list *l)
{
	int ret = serve_uffd_features(uffd, &l->uffd_features);

	if (ret != -ENOENT)
		return ret;
	l->uffd_features = UFFD_FEATURE_EVENT_REMOVE;
	snprintf(l->note, sizeof(l->note), "no /proc here: the features the "
		 "VMM asked of its userfaultfd were not checked");
	return 1;
}

static int check_features(struct serve_list *l)
{
	static const struct {
		uint64_t bit;
		const char *name;
	} refused[] = {
		{ UFFD_FEATURE_SIGBUS, "SIGBUS (faults would never reach a "
				       "handler)" },
		{ UFFD_FEATURE_EVENT_FORK, "EVENT_FORK" },
		{ UFFD_FEATURE_EVENT_REMAP, "EVENT_REMAP" },
	};

	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		if (l->uffd_features & refused[i].bit)
			return ferry_fail(-EINVAL, "the VMM asked its "
					  "userfaultfd for %s, which this "
					  "handler does not serve",
					  refused[i].name);
	if (!(l->uffd_features & UFFD_FEATURE_EVENT_REMOVE))
		snprintf(l->note, sizeof(l->note), "the userfaultfd reports "
			 "no REMOVE events: a page the VMM discards and "
			 "touches again gets the file's data back");
	return 0;
}

/* Readers poll it: a blocking one polls as always readable (POLLERR). */
static int make_nonblocking(int uffd)
{
	int flags = fcntl(uffd, F_GETFL);

	if (flags < 0)
		return ferry_fail(-errno, "fcntl: %s", strerror(errno));
	if (!(flags & O_NONBLOCK) && fcntl(uffd, F_SETFL, flags | O_NONBLOCK))
		return ferry_fail(-errno, "fcntl: %s", strerror(errno));
	return 0;
}

/* ---- page sizes, by trying ----------------------------------------------- */

/*
 * A REMOVE waits to be read (copies fail with EAGAIN until it is): read
 * what is pending, for the VM to take over.
 */
static int read_early(int uffd, struct serve_list *l)
{
	struct ferry_uffd u = { .fd = uffd };
	ssize_t n;

	if (l->nr_early == SERVE_MAX_EARLY)
		return ferry_fail(-ENOBUFS, "more than %d userfaultfd messages "
				  "came before the list was checked",
				  SERVE_MAX_EARLY);
	n = ferry_uffd_read(&u, l->early + l->nr_early,
			    SERVE_MAX_EARLY - l->nr_early);
	if (n > 0)
		l->nr_early += (size_t)n;
	return n < 0 && n != -EAGAIN ? ferry_fail((int)n, "reading the "
						  "userfaultfd: %s",
						  strerror((int)-n)) : 0;
}

/* One copy that cannot succeed: its errno (or read_early's failure). */
static int try_copy(int uffd, uint64_t addr, uint64_t len, const void *src,
		    struct serve_list *l)
{
	struct uffdio_copy copy = { .dst = addr, .src = (uintptr_t)src,
				    .len = len };
	int ret = -EAGAIN;

	for (int i = 0; i < PROBE_RETRIES && ret == -EAGAIN; i++) {
		ret = sys_ioctl(uffd, UFFDIO_COPY, &copy);
		if (ret != -EAGAIN)	/* EAGAIN: the mm is changing */
			break;
		ret = read_early(uffd, l);
		if (ret)
			return ret;
		ret = -EAGAIN;
		sched_yield();
	}
	return ret;
}

static bool registered(int err)
{
	return err == -EFAULT || err == -EEXIST;
}

/* The page size registered at addr: 0 with *page_size, or -errno. */
static int page_size_at(int uffd, uint64_t addr, const struct serve_file *f,
			struct serve_list *l, uint64_t *page_size)
{
	uint64_t huge = FERRY_HUGE_PAGE_SIZE;
	int err = try_copy(uffd, addr, SERVE_PAGE, f->unreadable, l);

	if (registered(err)) {
		*page_size = SERVE_PAGE;
		return 0;
	}
	if (err == -EINVAL) {
		err = try_copy(uffd, addr & ~(huge - 1), huge, f->unreadable,
			       l);
		if (registered(err)) {
			*page_size = huge;
			return 0;
		}
	}
	if (err == -ESRCH)
		return ferry_fail(err, "the VMM is gone");
	if (err == -ENOBUFS)
		return err;		/* read_early's, with its reason */
	if (err == -ENOENT || err == -EINVAL)
		return ferry_fail(-ENOENT, "%#llx is not registered with the "
				  "userfaultfd sent (at 4 KiB or 2 MiB pages)",
				  (unsigned long long)addr);
	return ferry_fail(err, "probing %#llx: %s", (unsigned long long)addr,
			  strerror(-err));
}

/* The region's first and last pages: registered, at the same size. */
static int probe_region(int uffd, struct serve_list *l, unsigned int i,
			const struct serve_file *f)
{
	struct ferry_serve_region *r = &l->e[i].r;
	uint64_t first, last, unit = r->page_size ? r->page_size : SERVE_PAGE;
	int ret = page_size_at(uffd, r->base_host_virt_addr, f, l, &first);

	if (!ret)
		ret = page_size_at(uffd, r->base_host_virt_addr + r->size -
				   unit, f, l, &last);
	if (ret)
		return ferry_fail_ctx(ret, "region %u", i);
	if (first != last)
		return ferry_fail(-EINVAL, "region %u is registered with "
				  "%llu-byte pages at its start and %llu-byte "
				  "ones at its end", i,
				  (unsigned long long)first,
				  (unsigned long long)last);
	if (r->page_size && r->page_size != first)
		return ferry_fail(-EINVAL, "region %u says %llu-byte pages, "
				  "but its memory has %llu-byte ones", i,
				  (unsigned long long)r->page_size,
				  (unsigned long long)first);
	if (r->page_size)
		return 0;
	r->page_size = first;		/* an older VMM: said nothing */
	return serve_region_check_aligned(r, i);
}

int serve_probe(int uffd, struct serve_list *l, const struct serve_file *f)
{
	int ret = serve_uffd_check(uffd);

	if (!ret)
		ret = initialised(uffd);
	if (!ret)
		ret = features(uffd, l);
	if (!ret)
		ret = check_features(l);
	else if (ret == 1)
		ret = 0;
	if (!ret)
		ret = make_nonblocking(uffd);
	for (unsigned int i = 0; i < l->nr && !ret; i++)
		ret = probe_region(uffd, l, i, f);
	return ret;
}
