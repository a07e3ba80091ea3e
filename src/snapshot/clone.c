// SPDX-License-Identifier: MIT
/*
 * snap_clone: many VMs from one snapshot held once in shared memory.
 *
 * The source reads the file once into memfds (every page checked).  Each
 * clone maps them privately (ferry_mem_add_region_private) and registers
 * its views MISSING | MINOR with a userfaultfd of its own:
 *
 *   - a first touch of a page the snapshot holds is a minor fault: the
 *     page is in the shared file, CONTINUE maps it.  The mapping is
 *     private, so the kernel maps it read-only (seed 003: "For CONTINUE
 *     on a non-shared VMA, don't set VM_WRITE for CoW"), and the clone's
 *     first write copies that one page into the clone;
 *   - a touch of a hole is a missing fault: a zero page (hugetlbfs has
 *     none, so a private zeroed huge page), never a page of the shared
 *     file, which stays as the snapshot left it;
 *   - a mapper maps the rest in bulk meanwhile (the snapshot's pages
 *     CONTINUEd, holes as zero pages), so the clone soon takes no
 *     faults at all.
 *
 * Clean pages are shared by every clone; what a clone writes is its own.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "ferry/uffd.h"
#include "snapshot/snapshot.h"
#include "base/sys.h"

struct ferry_clone_source {
	struct snap_file *file;		/* stream, desc and vCPU states */
	struct ferry_mem *shared;	/* the snapshot's pages, once */
	uint64_t **data;		/* per region: pages with data */
	uint64_t pages;
};

struct ferry_clone {
	struct ferry_clone_source *src;
	const struct ferry_clone_ops *ops;
	void *ops_arg;
	struct ferry_mem *mem;		/* private views of src->shared */
	struct ferry_vm vm;
	bool vm_created;
	struct ferry_uffd uffd;
	bool registered;
	int stop_fd;			/* eventfd: stop both threads */
	pthread_t fault_thread, mapper_thread;
	bool fault_started, mapper_started;
	uint8_t *zero_page;		/* hugetlb holes are copies of it */
	atomic_int error;		/* first failure of either thread;
					 * they set it, anyone reads */
};

/* ---- the source --------------------------------------------------------- */

static int shared_mem(const struct ferry_wire_stream *s,
		      struct ferry_mem **out)
{
	int ret = ferry_mem_create(out);

	for (unsigned int i = 0; !ret && i < s->nr_regions; i++) {
		const struct ferry_wire_region *wr = &s->regions[i];
		struct ferry_region *r;

		ret = ferry_mem_add_region(*out, wr->backing, wr->size, &r);
		if (!ret && (r->size != wr->size ||
			     r->guest_base != wr->guest_base))
			ret = ferry_fail(-EINVAL, "region %u of the snapshot "
					 "does not lay out here", i);
	}
	return ret;
}

static int data_maps(struct ferry_clone_source *src)
{
	const struct snap_file *f = src->file;

	src->data = calloc(f->stream.nr_regions, sizeof(*src->data));
	if (!src->data)
		return ferry_fail(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < f->stream.nr_regions; i++) {
		src->data[i] = bitmap_alloc(f->stream.regions[i].nr_pages);
		if (!src->data[i])
			return ferry_fail(-ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < f->nr_extents; i++) {
		const struct snap_extent *e = &f->extents[i];

		for (uint64_t p = e->first_page; p < e->first_page + e->count;
		     p++)
			if (!snap_page_is_zero(f, e, p))
				bitmap_set(src->data[e->region], p);
	}
	return 0;
}

int ferry_clone_source_create(int fd, struct ferry_clone_source **out)
{
	struct ferry_clone_source *src = calloc(1, sizeof(*src));
	int ret = src ? 0 : ferry_fail(-ENOMEM, "out of memory");

	if (!ret)
		ret = snap_file_open(fd, &src->file);
	if (!ret)
		ret = shared_mem(&src->file->stream, &src->shared);
	if (!ret)
		ret = snap_store_all(src->file, src->shared, &src->pages);
	if (!ret)
		ret = data_maps(src);
	if (ret) {
		ferry_clone_source_destroy(src);
		return ret;
	}
	*out = src;
	return 0;
}

void ferry_clone_source_destroy(struct ferry_clone_source *src)
{
	if (!src)
		return;
	for (unsigned int i = 0; src->data && i < src->file->stream.nr_regions;
	     i++)
		free(src->data[i]);
	free(src->data);
	ferry_mem_destroy(src->shared);
	snap_file_close(src->file);
	free(src);
}

const struct ferry_wire_stream *
ferry_clone_source_stream(const struct ferry_clone_source *src)
{
	return &src->file->stream;
}

uint64_t ferry_clone_source_bytes(const struct ferry_clone_source *src)
{
	uint64_t bytes = 0;

	for (unsigned int i = 0; i < src->shared->nr_regions; i++) {
		struct stat st;

		if (!fstat(src->shared->regions[i].memfd, &st))
			bytes += (uint64_t)st.st_blocks * 512;
	}
	return bytes;
}

/* ---- fault service ------------------------------------------------------ */

static void set_error(struct ferry_clone *c, int err)
{
	int none = 0;

	atomic_compare_exchange_strong(&c->error, &none, err);
}

/* -EEXIST: mapped already (by the mapper, or a racing fault): fine. */
static int map_one(struct ferry_clone *c, struct ferry_region *r,
		   uint64_t page, bool hole)
{
	uint8_t *addr = r->guest + page * r->page_size;
	ssize_t n;

	if (!hole)
		n = ferry_uffd_continue(&c->uffd, addr, r->page_size, 0);
	else if (r->backing == FERRY_BACKING_HUGETLB)
		n = ferry_uffd_copy(&c->uffd, addr, c->zero_page, r->page_size,
				    0);
	else
		n = ferry_uffd_zeropage(&c->uffd, addr, r->page_size, 0);
	if (n == -EEXIST)
		return ferry_uffd_wake(&c->uffd, addr, r->page_size);
	if (n == (ssize_t)r->page_size)
		return 0;
	return ferry_fail(n < 0 ? (int)n : -EIO, "clone: mapping page %llu: "
			  "%s", (unsigned long long)page,
			  strerror(n < 0 ? (int)-n : EIO));
}

static int handle_fault(void *arg, const struct uffd_msg *msg)
{
	struct ferry_clone *c = arg;
	void *addr = (void *)(uintptr_t)msg->arg.pagefault.address;
	struct ferry_region *r = ferry_mem_find(c->mem, addr);
	uint64_t page;

	if (!r)
		return ferry_fail(-EFAULT, "clone: fault at %p outside guest "
				  "memory", addr);
	page = (uint64_t)((uint8_t *)addr - r->guest) / r->page_size;
	return map_one(c, r, page,
		       ferry_uffd_fault_kind(msg) == FERRY_FAULT_MISSING);
}

static int drain(void *arg)
{
	struct ferry_clone *c = arg;

	return snap_uffd_drain(&c->uffd, handle_fault, c);
}

static void *fault_main(void *arg)
{
	struct ferry_clone *c = arg;
	int ret;

	sys_thread_boost(SYS_BOOST_URGENT);
	ret = snap_serve(c->uffd.fd, c->stop_fd, drain, c);
	if (ret)
		set_error(c, ret);
	return NULL;
}

static bool stop_requested(struct ferry_clone *c)
{
	struct pollfd pfd = { .fd = c->stop_fd, .events = POLLIN };

	return poll(&pfd, 1, 0) > 0;
}

/*
 * Map a run in bulk: the snapshot's pages CONTINUEd, holes as zero pages
 * (hugetlbfs has no zero page: its holes wait for a touch).  A page
 * mapped already (a fault got there first) is skipped.
 */
static int map_run(struct ferry_clone *c, struct ferry_region *r,
		   uint64_t page, uint64_t count, bool hole)
{
	uint64_t done = 0;

	while (done < count) {
		uint8_t *addr = r->guest + (page + done) * r->page_size;
		size_t len = (count - done) * r->page_size;
		ssize_t n = hole ? ferry_uffd_zeropage(&c->uffd, addr, len, 0) :
				   ferry_uffd_continue(&c->uffd, addr, len, 0);

		if (n < 0 && n != -EEXIST)
			return ferry_fail((int)n, "clone: mapping in bulk: %s",
					  strerror((int)-n));
		done += n > 0 ? (uint64_t)n / r->page_size : 1;
	}
	return 0;
}

/* Pages from p on like p (data or hole), at most 512. */
static uint64_t run_of(const uint64_t *map, uint64_t p, uint64_t nr)
{
	bool data = bitmap_test(map, p);
	uint64_t n = 1;

	while (p + n < nr && n < 512 && bitmap_test(map, p + n) == data)
		n++;
	return n;
}

static int map_region(struct ferry_clone *c, unsigned int i)
{
	struct ferry_region *r = &c->mem->regions[i];
	const uint64_t *map = c->src->data[i];
	bool zero_ok = r->backing != FERRY_BACKING_HUGETLB;

	for (uint64_t p = 0; p < r->nr_pages;) {
		uint64_t n = run_of(map, p, r->nr_pages);
		bool hole = !bitmap_test(map, p);
		int ret = hole && !zero_ok ? 0 : map_run(c, r, p, n, hole);

		if (ret)
			return ret;
		if (stop_requested(c))
			return -ECANCELED;
		p += n;
	}
	return 0;
}

static void *mapper_main(void *arg)
{
	struct ferry_clone *c = arg;
	int ret = 0;

	sys_thread_boost(SYS_BOOST_BULK);
	for (unsigned int i = 0; i < c->mem->nr_regions && !ret; i++)
		ret = map_region(c, i);
	if (ret && ret != -ECANCELED)
		set_error(c, ret);
	return NULL;
}

/* ---- clones ------------------------------------------------------------- */

static int private_mem(struct ferry_clone *c)
{
	struct ferry_mem *shared = c->src->shared;
	int ret = ferry_mem_create(&c->mem);

	for (unsigned int i = 0; !ret && i < shared->nr_regions; i++) {
		struct ferry_region *r = &shared->regions[i];

		ret = ferry_mem_add_region_private(c->mem, r->memfd,
						   r->backing, r->size, NULL);
	}
	return ret;
}

static uint64_t features(const struct ferry_mem *mem)
{
	uint64_t f = 0;

	for (unsigned int i = 0; i < mem->nr_regions; i++)
		f |= ferry_uffd_features_for(
			mem->regions[i].backing == FERRY_BACKING_HUGETLB,
			FERRY_UFFD_MISSING | FERRY_UFFD_MINOR);
	return f;
}

static int register_all(struct ferry_clone *c)
{
	int ret = ferry_uffd_open(&c->uffd, features(c->mem), 0, false);

	if (ret)
		return ferry_fail_ctx(ret, "clone");
	for (unsigned int i = 0; !ret && i < c->mem->nr_regions; i++)
		ret = ferry_uffd_register(&c->uffd, c->mem->regions[i].guest,
					  c->mem->regions[i].size,
					  FERRY_UFFD_MISSING | FERRY_UFFD_MINOR,
					  NULL);
	c->registered = true;
	return ret;
}

static int start_threads(struct ferry_clone *c)
{
	int ret;

	c->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->stop_fd < 0)
		return ferry_fail(-errno, "eventfd: %s", strerror(errno));
	ret = -pthread_create(&c->fault_thread, NULL, fault_main, c);
	c->fault_started = !ret;
	if (!ret) {
		ret = -pthread_create(&c->mapper_thread, NULL, mapper_main, c);
		c->mapper_started = !ret;
	}
	if (ret)
		return ferry_fail(ret, "clone: starting fault service: %s",
				  strerror(-ret));
	return 0;
}

static void stop_threads(struct ferry_clone *c)
{
	uint64_t one = 1;

	if (c->stop_fd >= 0 && write(c->stop_fd, &one, sizeof(one)) < 0)
		abort();	/* an eventfd write cannot fail here */
	if (c->fault_started)
		pthread_join(c->fault_thread, NULL);
	if (c->mapper_started)
		pthread_join(c->mapper_thread, NULL);
	c->fault_started = c->mapper_started = false;
}

static int build(struct ferry_clone *c)
{
	const struct snap_file *f = c->src->file;
	int ret = private_mem(c);

	if (!ret)
		ret = c->ops->create(c->ops_arg, &f->stream, c->mem, &c->vm);
	if (ret)
		return ret;
	c->vm_created = true;
	ret = snap_check_vm(f, &c->vm);
	if (!ret)
		ret = register_all(c);
	if (!ret)
		ret = start_threads(c);
	if (!ret)
		ret = snap_load_vcpus(f, &c->vm);
	if (!ret)
		ret = c->vm.ops->resume(c->vm.handle);
	return ret;
}

int ferry_clone_create(struct ferry_clone_source *src,
		       const struct ferry_clone_ops *ops, void *arg,
		       struct ferry_clone **out)
{
	struct ferry_clone *c;
	int ret;

	if (!ops || !ops->create || !ops->destroy)
		return ferry_fail(-EINVAL, "a clone needs create and destroy "
				  "ops");
	c = calloc(1, sizeof(*c));
	if (!c)
		return ferry_fail(-ENOMEM, "out of memory");
	*c = (struct ferry_clone){ .src = src, .ops = ops, .ops_arg = arg,
				   .stop_fd = -1 };
	c->uffd.fd = -1;
	c->zero_page = sys_zalloc_aligned(4096, FERRY_HUGE_PAGE_SIZE);
	ret = c->zero_page ? build(c) : ferry_fail(-ENOMEM, "out of memory");
	if (ret) {
		ferry_clone_destroy(c);
		return ret;
	}
	*out = c;
	return 0;
}

const struct ferry_vm *ferry_clone_vm(const struct ferry_clone *c)
{
	return &c->vm;
}

/*
 * /proc/self/pagemap, one entry per 4 KiB of the view: present (bit 63),
 * a page of the file (61), mapped by this process only (56).  A page the
 * clone copied is present, not the file's, and its own; the zero page is
 * none of the last two.
 */
#define PM_PRESENT	(1ULL << 63)
#define PM_FILE		(1ULL << 61)
#define PM_EXCLUSIVE	(1ULL << 56)

static int count_region(int fd, const struct ferry_region *r,
			struct ferry_clone_mem *m)
{
	uint64_t entries[512];

	for (size_t off = 0; off < r->size; off += sizeof(entries) / 8 * 4096) {
		size_t n = (r->size - off) / 4096 < 512 ?
			   (r->size - off) / 4096 : 512;
		off_t at = (off_t)((uintptr_t)(r->guest + off) / 4096 * 8);

		if (sys_pread(fd, entries, n * 8, at) != (ssize_t)(n * 8))
			return ferry_fail(-EIO, "reading /proc/self/pagemap");
		for (size_t i = 0; i < n; i++) {
			uint64_t e = entries[i];

			if (!(e & PM_PRESENT))
				continue;
			if (e & PM_FILE)
				m->shared_mapped_bytes += 4096;
			else if (e & PM_EXCLUSIVE)
				m->private_bytes += 4096;
		}
	}
	return 0;
}

int ferry_clone_memory(const struct ferry_clone *c, struct ferry_clone_mem *m)
{
	int fd = sys_open("/proc/self/pagemap", O_RDONLY), ret = 0;

	memset(m, 0, sizeof(*m));
	if (fd < 0)
		return ferry_fail(fd, "/proc/self/pagemap: %s", strerror(-fd));
	for (unsigned int i = 0; !ret && i < c->mem->nr_regions; i++)
		ret = count_region(fd, &c->mem->regions[i], m);
	close(fd);
	return ret;
}

int ferry_clone_error(const struct ferry_clone *c)
{
	int err = atomic_load(&c->error);

	return err ? ferry_fail(err, "clone fault service: %s",
				strerror(-err)) : 0;
}

void ferry_clone_destroy(struct ferry_clone *c)
{
	if (!c)
		return;
	/* The vCPUs stop first: one may wait on a fault only we serve. */
	if (c->vm_created)
		c->ops->destroy(c->ops_arg, &c->vm);
	stop_threads(c);
	for (unsigned int i = 0; c->registered && i < c->mem->nr_regions; i++)
		ferry_uffd_unregister(&c->uffd, c->mem->regions[i].guest,
				      c->mem->regions[i].size);
	ferry_uffd_close(&c->uffd);
	if (c->stop_fd >= 0)
		close(c->stop_fd);
	ferry_mem_destroy(c->mem);
	free(c->zero_page);
	free(c);
}
