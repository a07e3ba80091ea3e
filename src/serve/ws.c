// SPDX-License-Identifier: MIT
/*
 * serve ws: working sets of a served memory file, in the format of ferry's
 * own snapshots (snapshot/ws.c): entries are (region, page) of the list
 * the VMM sent, in the order the guest first touched them.
 *
 * What a set was recorded for is named by the layout it was recorded
 * against: the memory file's size and each region's offset, size and page
 * size.  Host addresses are not in it (they change with every restore).
 * Two snapshots of one layout are not told apart; that costs nothing but
 * time, since a set only orders what is installed first, and every byte
 * still comes from the file served.
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base/error.h"
#include "le.h"
#include "serve/serve.h"

#define WS_TAG	"ferry serve ws 1"

uint64_t serve_ws_layout_id(const struct serve_vm *vm)
{
	uint8_t buf[16 + 8 + 24 * FERRY_SERVE_MAX_REGIONS];
	size_t len = 16;

	memcpy(buf, WS_TAG, 16);
	le64_store(buf + len, vm->file->size);
	len += 8;
	for (unsigned int i = 0; i < vm->nr_regions; i++, len += 24) {
		le64_store(buf + len, vm->regions[i].r.offset);
		le64_store(buf + len + 8, vm->regions[i].r.size);
		le64_store(buf + len + 16, vm->regions[i].r.page_size);
	}
	return XXH3_64bits(buf, len);
}

static struct snap_ws_layout layout(const struct serve_vm *vm,
				    uint64_t *nr_pages)
{
	for (unsigned int i = 0; i < vm->nr_regions; i++)
		nr_pages[i] = vm->regions[i].nr_pages;
	return (struct snap_ws_layout){ .id = vm->layout_id,
		.nr_regions = vm->nr_regions, .nr_pages = nr_pages };
}

int serve_ws_load(struct serve_vm *vm, const char *path)
{
	uint64_t nr_pages[FERRY_SERVE_MAX_REGIONS];
	struct snap_ws_layout l = layout(vm, nr_pages);
	ssize_t n = snap_ws_load_layout(&l, path, &vm->prefetch);

	if (n < 0)
		return (int)n;
	vm->nr_prefetch = (size_t)n;
	return 0;
}

void serve_ws_record(struct serve_vm *vm, unsigned int region,
		     uint64_t page)
{
	pthread_mutex_lock(&vm->rec_lock);
	if (vm->recording && vm->nr_recorded == vm->recorded_cap) {
		size_t cap = vm->recorded_cap ? vm->recorded_cap * 2 : 4096;
		struct snap_page *p = realloc(vm->recorded, cap * sizeof(*p));

		if (p) {
			vm->recorded = p;
			vm->recorded_cap = cap;
		}
	}
	if (vm->recording && vm->nr_recorded < vm->recorded_cap) {
		vm->recorded[vm->nr_recorded++] = (struct snap_page){
			.region = region, .page = (uint32_t)page };
		serve_count(&vm->stats.ws_recorded, 1);
	}
	pthread_mutex_unlock(&vm->rec_lock);
}

/* The set given first (it was installed before any touch), then touches. */
static struct snap_page *joined(struct serve_vm *vm, struct snap_page *rec,
				size_t nr_rec)
{
	size_t nr = vm->nr_prefetch + nr_rec;
	struct snap_page *all = malloc(nr ? nr * sizeof(*all) : 1);

	if (!all)
		return NULL;
	if (vm->nr_prefetch)
		memcpy(all, vm->prefetch, vm->nr_prefetch * sizeof(*all));
	if (nr_rec)
		memcpy(all + vm->nr_prefetch, rec, nr_rec * sizeof(*all));
	return all;
}

int serve_ws_save(struct serve_vm *vm, const char *path)
{
	uint64_t nr_pages[FERRY_SERVE_MAX_REGIONS];
	struct snap_ws_layout l = layout(vm, nr_pages);
	struct snap_page *rec, *all;
	size_t nr_rec;
	int ret;

	pthread_mutex_lock(&vm->rec_lock);
	if (!vm->recording) {
		pthread_mutex_unlock(&vm->rec_lock);
		return 0;
	}
	__atomic_store_n(&vm->recording, false, __ATOMIC_RELAXED);
	rec = vm->recorded;
	nr_rec = vm->nr_recorded;
	vm->recorded = NULL;
	vm->nr_recorded = vm->recorded_cap = 0;
	pthread_mutex_unlock(&vm->rec_lock);
	all = joined(vm, rec, nr_rec);
	ret = all ? snap_ws_save_layout(&l, path, all, vm->nr_prefetch + nr_rec)
		  : ferry_fail(-ENOMEM, "out of memory");
	free(all);
	free(rec);
	if (ret)
		return ferry_fail_ctx(ret, "working set");
	serve_vm_note(vm, "working set of %zu pages written to %s",
		      vm->nr_prefetch + nr_rec, path);
	return 0;
}
