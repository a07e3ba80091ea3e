// SPDX-License-Identifier: MIT
/*
 * serve list: the regions a VMM described, against the memory file and
 * each other.  Every number is hostile: each is checked before it is used
 * in a sum, and sums are checked for overflow, so a region passes only if
 * it lies whole inside the file, at a place its page size allows, and
 * overlaps no other, neither in the VMM's address space nor in the file.
 */
#include <stdlib.h>

#include "base/error.h"
#include "ferry/mem.h"
#include "serve/serve.h"

/* Above every user address of x86-64 and arm64 (5-level / 52-bit). */
#define SERVE_USER_END	(1ULL << 57)

static const char *const field_names[] = {
	"base_host_virt_addr", "size", "offset",
};

static int has_fields(const struct serve_entry *e, unsigned int i)
{
	for (unsigned int f = 0; f < 3; f++)
		if (!(e->has & (1U << f)))
			return ferry_fail(-EINVAL, "region %u has no %s", i,
					  field_names[f]);
	return 0;
}

static bool page_size_served(uint64_t size)
{
	return size == SERVE_PAGE || size == FERRY_HUGE_PAGE_SIZE;
}

/* page_size, or page_size_kib (older VMMs), or 0: the probe finds it. */
static int resolve_page_size(struct serve_entry *e, unsigned int i)
{
	bool both = (e->has & SERVE_HAS_PAGE_SIZE) &&
		    (e->has & SERVE_HAS_PAGE_KIB);
	uint64_t ps;

	if (both && e->r.page_size != e->page_size_kib)
		return ferry_fail(-EINVAL, "region %u: page_size %llu and "
				  "page_size_kib %llu disagree", i,
				  (unsigned long long)e->r.page_size,
				  (unsigned long long)e->page_size_kib);
	if (!(e->has & SERVE_HAS_PAGE_SIZE))
		e->r.page_size = e->has & SERVE_HAS_PAGE_KIB ?
				 e->page_size_kib : 0;
	ps = e->r.page_size;
	if (!(e->has & (SERVE_HAS_PAGE_SIZE | SERVE_HAS_PAGE_KIB)) ||
	    page_size_served(ps))
		return 0;
	if (!(e->has & SERVE_HAS_PAGE_SIZE) && (ps == 4 || ps == 2048))
		return ferry_fail(-EINVAL, "region %u: page_size_kib %llu: "
				  "the field carries bytes despite its name "
				  "(4096 or 2097152)", i,
				  (unsigned long long)ps);
	return ferry_fail(-EINVAL, "region %u: page size %llu: the memory "
			  "file serves 4096 (anonymous memory) and 2097152 "
			  "(hugetlbfs)", i, (unsigned long long)ps);
}

int serve_region_check_aligned(const struct ferry_serve_region *r,
			       unsigned int i)
{
	uint64_t align = r->page_size ? r->page_size : SERVE_PAGE;

	if (!r->size || r->size % align)
		return ferry_fail(-EINVAL, "region %u: size %llu is not a "
				  "positive multiple of its %llu-byte pages",
				  i, (unsigned long long)r->size,
				  (unsigned long long)align);
	if (!r->base_host_virt_addr || r->base_host_virt_addr % align)
		return ferry_fail(-EINVAL, "region %u: address %#llx is not "
				  "a %llu-byte page's", i,
				  (unsigned long long)r->base_host_virt_addr,
				  (unsigned long long)align);
	if (r->base_host_virt_addr >= SERVE_USER_END ||
	    r->size > SERVE_USER_END - r->base_host_virt_addr)
		return ferry_fail(-EINVAL, "region %u: %#llx + %llu bytes "
				  "lies past any process's address space", i,
				  (unsigned long long)r->base_host_virt_addr,
				  (unsigned long long)r->size);
	if (r->size / align > UINT32_MAX)
		return ferry_fail(-EINVAL, "region %u: %llu pages, more than "
				  "2^32", i,
				  (unsigned long long)(r->size / align));
	return 0;
}

static int in_file(const struct ferry_serve_region *r, unsigned int i,
		   const struct serve_file *f)
{
	if (r->offset % SERVE_PAGE)
		return ferry_fail(-EINVAL, "region %u: file offset %llu is not "
				  "a multiple of 4096", i,
				  (unsigned long long)r->offset);
	if (r->offset > f->size || r->size > f->size - r->offset)
		return ferry_fail(-EINVAL, "region %u: bytes %llu + %llu of "
				  "the memory file lie past its end at %llu",
				  i, (unsigned long long)r->offset,
				  (unsigned long long)r->size,
				  (unsigned long long)f->size);
	return 0;
}

/* ---- overlaps ------------------------------------------------------------ */

struct span {
	uint64_t start, len;
	unsigned int region;
};

static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	return (x->start > y->start) - (x->start < y->start);
}

/* Sorted spans (none wraps: checked before), the first two that overlap. */
static int overlaps(const struct serve_list *l, bool in_file_space,
		    uint64_t *end)
{
	struct span s[FERRY_SERVE_MAX_REGIONS];

	for (unsigned int i = 0; i < l->nr; i++)
		s[i] = (struct span){
			in_file_space ? l->e[i].r.offset :
					l->e[i].r.base_host_virt_addr,
			l->e[i].r.size, i };
	qsort(s, l->nr, sizeof(s[0]), span_cmp);
	for (unsigned int i = 1; i < l->nr; i++)
		if (s[i - 1].start + s[i - 1].len > s[i].start)
			return ferry_fail(-EINVAL, "regions %u and %u overlap "
					  "in %s: %#llx + %llu and %#llx + "
					  "%llu",
					  s[i - 1].region, s[i].region,
					  in_file_space ? "the memory file" :
					  "the VMM's address space",
					  (unsigned long long)s[i - 1].start,
					  (unsigned long long)s[i - 1].len,
					  (unsigned long long)s[i].start,
					  (unsigned long long)s[i].len);
	*end = s[l->nr - 1].start + s[l->nr - 1].len;
	return 0;
}

int serve_list_check(struct serve_list *l, const struct serve_file *f)
{
	uint64_t end;
	int ret = 0;

	if (!l->nr)
		return ferry_fail(-EINVAL, "the list holds no region");
	for (unsigned int i = 0; i < l->nr && !ret; i++) {
		ret = has_fields(&l->e[i], i);
		if (!ret)
			ret = resolve_page_size(&l->e[i], i);
		if (!ret)
			ret = serve_region_check_aligned(&l->e[i].r, i);
		if (!ret)
			ret = in_file(&l->e[i].r, i, f);
	}
	if (!ret)
		ret = overlaps(l, false, &end);
	if (!ret)
		ret = overlaps(l, true, &end);
	/* A bigger file is another VM's memory: refused, not half-served. */
	if (!ret && end != f->size)
		ret = ferry_fail(-EINVAL, "the regions end at byte %llu of a "
				 "%llu-byte memory file: it is not this VM's "
				 "memory", (unsigned long long)end,
				 (unsigned long long)f->size);
	return ret;
}
