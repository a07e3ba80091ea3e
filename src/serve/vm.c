// SPDX-License-Identifier: MIT
/*
 * serve vm: one VMM's VM, from its checked list to its end.
 *
 *   SERVING     fault thread + fill thread (its working set, then the
 *               file's data, below the vCPUs)
 *      |  fill done: every page in place, regions unregistered
 *   HANDED_OFF  no thread: the server's loop reads its userfaultfd (a
 *               REMOVE may still come) until the VMM exits
 *      |  the VMM exits (its pidfd), or the server stops
 *   ENDED       figures kept, the rest freed
 *
 * A VMM whose list is refused is REFUSED from the start: no thread, the
 * server's loop poisons each fault it reads, so the VMM fails at its
 * first touch instead of waiting forever.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "ferry/clock.h"
#include "serve/serve.h"

static struct serve_vm *vm_alloc(struct ferry_serve *srv, uint64_t id,
				 struct serve_conn *c)
{
	struct serve_vm *vm = calloc(1, sizeof(*vm));

	if (!vm)
		return NULL;
	vm->srv = srv;
	vm->file = &srv->file;
	vm->id = id;
	vm->retry_fd = vm->fill_fd = -1;
	pthread_mutex_init(&vm->install_lock, NULL);
	pthread_mutex_init(&vm->rec_lock, NULL);
	pthread_mutex_init(&vm->news_lock, NULL);
	vm->uffd = (struct ferry_uffd){ .fd = -1,
					.via = FERRY_UFFD_VIA_SYSCALL };
	vm->pidfd = -1;
	vm->pid = c->pid;
	ferry_hist_init(&vm->stats.fault_latency);
	vm->stats.id = id;
	vm->stats.pid = c->pid;
	vm->start_ns = ferry_clock_now_ns();
	return vm;
}

/* The connection's descriptors are the VM's now. */
static void take_fds(struct serve_vm *vm, struct serve_conn *c)
{
	vm->uffd.fd = c->uffd;
	vm->pidfd = c->pidfd;
	c->uffd = c->pidfd = -1;
}

static int add_region(struct serve_vm *vm, const struct ferry_serve_region *e)
{
	struct serve_region *r = &vm->regions[vm->nr_regions++];

	r->r = *e;
	r->shift = (unsigned int)__builtin_ctzll(e->page_size);
	r->nr_pages = e->size >> r->shift;
	r->served = bitmap_alloc(r->nr_pages);
	r->removed = bitmap_alloc(r->nr_pages);
	if (!r->served || !r->removed)
		return ferry_fail(-ENOMEM, "out of memory for %llu pages",
				  (unsigned long long)r->nr_pages);
	vm->stats.guest_bytes += e->size;
	vm->stats.page_size = e->page_size;
	return 0;
}

static int open_fds(struct serve_vm *vm)
{
	vm->retry_fd = evfd_open();
	vm->fill_fd = evfd_open();
	if (vm->retry_fd < 0 || vm->fill_fd < 0)
		return ferry_fail(-EMFILE, "eventfd: %s", strerror(EMFILE));
	return 0;
}

/* The server's working set, if it has one for this layout. */
static void take_prefetch(struct serve_vm *vm, const char *path)
{
	if (path && serve_ws_load(vm, path))
		serve_vm_note(vm, "working set not used: %s",
			      ferry_error_msg());
}

int serve_vm_create(struct ferry_serve *srv, const struct serve_list *l,
		    struct serve_conn *c, uint64_t id, struct serve_vm **out)
{
	struct serve_vm *vm = vm_alloc(srv, id, c);
	int ret = vm ? open_fds(vm) : ferry_fail(-ENOMEM, "out of memory");

	for (unsigned int i = 0; !ret && i < l->nr; i++)
		ret = add_region(vm, &l->e[i].r);
	if (ret) {
		serve_vm_destroy(vm);
		return ret;
	}
	vm->stats.nr_regions = vm->nr_regions;
	vm->stats.state = vm->state = FERRY_SERVE_VM_SERVING;
	vm->remove_events = l->uffd_features & UFFD_FEATURE_EVENT_REMOVE;
	vm->uffd.features = l->uffd_features;
	vm->layout_id = serve_ws_layout_id(vm);
	take_prefetch(vm, srv->opts.prefetch_ws);
	take_fds(vm, c);
	*out = vm;
	return 0;
}

int serve_vm_create_refused(struct ferry_serve *srv, struct serve_conn *c,
			    uint64_t id, const char *reason,
			    struct serve_vm **out)
{
	struct serve_vm *vm = vm_alloc(srv, id, c);

	if (!vm)
		return ferry_fail(-ENOMEM, "out of memory");
	take_fds(vm, c);
	vm->stats.state = vm->state = FERRY_SERVE_VM_REFUSED;
	snprintf(vm->stats.reason, sizeof(vm->stats.reason), "%s", reason);
	*out = vm;
	return 0;
}

int serve_vm_start(struct serve_vm *vm)
{
	int ret = faultsvc_create(&serve_fault_ops, vm, &vm->svc);

	if (!ret)
		ret = faultsvc_start(vm->svc, &vm->uffd, vm->retry_fd);
	if (!ret)
		vm->threads_running = true;
	if (!ret)
		ret = faultsvc_spawn(vm->svc, serve_fill_main, vm, "fill");
	if (ret)
		serve_vm_stop_threads(vm);
	return ret;
}

void serve_vm_finish(struct serve_vm *vm)
{
	__atomic_store_n(&vm->finish, true, __ATOMIC_RELEASE);
	evfd_signal(vm->fill_fd);
}

void serve_vm_stop_threads(struct serve_vm *vm)
{
	if (!vm->threads_running)
		return;
	faultsvc_stop(vm->svc);
	vm->threads_running = false;
	__atomic_store_n(&vm->end_ns, ferry_clock_now_ns(), __ATOMIC_RELAXED);
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

void serve_vm_destroy(struct serve_vm *vm)
{
	if (!vm)
		return;
	serve_vm_stop_threads(vm);
	faultsvc_destroy(vm->svc);
	ferry_uffd_close(&vm->uffd);
	close_fd(&vm->pidfd);
	close_fd(&vm->retry_fd);
	close_fd(&vm->fill_fd);
	for (unsigned int i = 0; i < vm->nr_regions; i++) {
		free(vm->regions[i].served);
		free(vm->regions[i].removed);
	}
	free(vm->pending);
	free(vm->recorded);
	free(vm->prefetch);
	pthread_mutex_destroy(&vm->install_lock);
	pthread_mutex_destroy(&vm->rec_lock);
	pthread_mutex_destroy(&vm->news_lock);
	free(vm);
}

/* ---- figures and news ---------------------------------------------------- */

uint64_t serve_vm_serving_ns(const struct serve_vm *vm)
{
	uint64_t end = __atomic_load_n(&vm->end_ns, __ATOMIC_RELAXED);

	return (end ? end : ferry_clock_now_ns()) - vm->start_ns;
}

static uint64_t load(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

void serve_vm_stats(struct serve_vm *vm, struct ferry_serve_vm_stats *out)
{
	const struct ferry_serve_vm_stats *s = &vm->stats;

	memcpy(out, s, offsetof(struct ferry_serve_vm_stats, faults));
	out->state = __atomic_load_n(&vm->state, __ATOMIC_RELAXED);
	out->faults = load(&s->faults);
	out->copies = load(&s->copies);
	out->zero_pages = load(&s->zero_pages);
	out->bytes_copied = load(&s->bytes_copied);
	out->prefetched = load(&s->prefetched);
	out->filled = load(&s->filled);
	out->races = load(&s->races);
	out->deferred = load(&s->deferred);
	out->removes = load(&s->removes);
	out->removed_pages = load(&s->removed_pages);
	out->poisoned = load(&s->poisoned);
	out->ws_recorded = load(&s->ws_recorded);
	out->serving_ns = serve_vm_serving_ns(vm);
	ferry_hist_init(&out->fault_latency);
	ferry_hist_add(&out->fault_latency, &s->fault_latency);
	out->fault_latency_p50_ns = ferry_hist_percentile(&out->fault_latency,
							  50);
	out->fault_latency_p99_ns = ferry_hist_percentile(&out->fault_latency,
							  99);
	out->fault_latency_max_ns = ferry_hist_max(&out->fault_latency);
	memcpy(out->reason, s->reason, sizeof(out->reason));
}
