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
 * Both are the fault service's threads (pages/faultsvc.h, mapper.h), with
 * the clone's handler and policy.  Clean pages are shared by every clone;
 * what a clone writes is its own.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/sys.h"
#include "ferry/clone.h"
#include "pages/faultsvc.h"
#include "pages/mapper.h"
#include "pages/uffdmem.h"
#include "snapshot/snapshot.h"

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
	struct uffdmem um;		/* the private views, MISSING|MINOR */
	struct faultsvc *svc;		/* the fault thread and the mapper,
					 * and the first failure of either */
	struct mapper mapper;
};

/* ---- the source --------------------------------------------------------- */

static int shared_mem(const struct ferry_wire_stream *s,
		      struct ferry_mem **out)
{
	int ret = ferry_mem_create(out);

	for (unsigned int i = 0; !ret && i < s->nr_regions; i++) {
		const struct ferry_wire_region *wr = &s->regions[i];
		struct ferry_region *r;

		ret = ferry_mem_add_region_at(*out, wr->backing, wr->size,
					      wr->guest_base, &r);
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

/* A minor fault is on a page of the shared file, a missing one on a hole. */
static int handle_fault(void *arg, const struct uffd_msg *msg)
{
	struct ferry_clone *c = arg;
	unsigned int idx;
	uint64_t page;
	int ret = uffdmem_locate(&c->um, msg, &idx, &page);

	if (!ret)
		ret = uffdmem_map_page(&c->um, idx, page,
				       ferry_uffd_fault_kind(msg) ==
				       FERRY_FAULT_MISSING);
	return ret ? ferry_fail_ctx(ret, "clone") : 0;
}

static const struct faultsvc_ops fault_ops = { .fault = handle_fault };

/* Pages from p on like p (data or hole), at most 512. */
static uint64_t run_of(const uint64_t *map, uint64_t p, uint64_t nr)
{
	bool data = bitmap_test(map, p);
	uint64_t n = 1;

	while (p + n < nr && n < 512 && bitmap_test(map, p + n) == data)
		n++;
	return n;
}

/*
 * The mapper's policy: the snapshot's pages CONTINUEd, holes as zero
 * pages (hugetlbfs has no zero page: its holes wait for a touch).
 */
static uint64_t next_run(void *arg, unsigned int idx, uint64_t page,
			 enum mapper_how *how)
{
	struct ferry_clone *c = arg;
	const struct ferry_region *r = &c->mem->regions[idx];
	const uint64_t *map = c->src->data[idx];

	if (bitmap_test(map, page))
		*how = MAPPER_CONTINUE;
	else
		*how = r->backing == FERRY_BACKING_HUGETLB ? MAPPER_SKIP :
							     MAPPER_ZERO;
	return run_of(map, page, r->nr_pages);
}

static const struct mapper_policy map_policy = { .next_run = next_run };

/* ---- clones ------------------------------------------------------------- */

static int private_mem(struct ferry_clone *c)
{
	struct ferry_mem *shared = c->src->shared;
	int ret = ferry_mem_create(&c->mem);

	for (unsigned int i = 0; !ret && i < shared->nr_regions; i++) {
		struct ferry_region *r = &shared->regions[i];

		ret = ferry_mem_add_region_private(c->mem, r->memfd,
						   r->backing, r->size,
						   r->guest_base, NULL);
	}
	return ret;
}

static int start_service(struct ferry_clone *c)
{
	int ret = uffdmem_init(&c->um, c->mem);

	if (!ret)
		ret = uffdmem_open(&c->um, FERRY_UFFD_MISSING |
				   FERRY_UFFD_MINOR, UFFDMEM_KERNEL_FAULTS);
	if (!ret)
		ret = faultsvc_create(&fault_ops, c, &c->svc);
	if (!ret)
		ret = faultsvc_start(c->svc, &c->um.uffd, -1);
	mapper_init(&c->mapper, &c->um, &map_policy, c);
	if (!ret)
		ret = mapper_start(&c->mapper, c->svc);
	return ret ? ferry_fail_ctx(ret, "clone") : 0;
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
		ret = start_service(c);
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
	*c = (struct ferry_clone){ .src = src, .ops = ops, .ops_arg = arg };
	c->um.uffd.fd = -1;
	ret = build(c);
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
	int err = c->svc ? faultsvc_error(c->svc) : 0;

	return err ? ferry_fail_ctx(err, "clone fault service") : 0;
}

void ferry_clone_destroy(struct ferry_clone *c)
{
	if (!c)
		return;
	/* The vCPUs stop first: one may wait on a fault only we serve. */
	if (c->vm_created)
		c->ops->destroy(c->ops_arg, &c->vm);
	faultsvc_destroy(c->svc);
	uffdmem_close(&c->um);
	ferry_mem_destroy(c->mem);
	free(c);
}
