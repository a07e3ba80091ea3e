// SPDX-License-Identifier: MIT
/*
 * dest: the receiving side of a live migration, the flow.  Read the
 * HEADER, build the VM it describes, receive until every bulk channel is
 * at SWITCHOVER, switch over; on any failure stop everything and tell the
 * source why.  dest_int.h says which file does what.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/dest_int.h"
#include "pages/postcopy.h"

static int alloc_tables(struct dest *d)
{
	unsigned int nr = d->stream.nr_regions;

	d->stale = calloc(nr ? nr : 1, sizeof(*d->stale));
	d->vcpus = calloc(d->stream.nr_vcpus ? d->stream.nr_vcpus : 1,
			  sizeof(*d->vcpus));
	if (!d->stale || !d->vcpus)
		return ferry_fail(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < nr; i++) {
		d->stale[i] = bitmap_alloc(d->stream.regions[i].nr_pages);
		if (!d->stale[i])
			return ferry_fail(-ENOMEM, "out of memory");
	}
	return 0;
}

static int check_vm(struct dest *d)
{
	const struct ferry_vm *vm = &d->vm;
	int ret = ferry_vcpu_ops_check(vm->ops);

	if (ret)
		return ret;
	if (vm->ops->nr_vcpus(vm->handle) != d->stream.nr_vcpus)
		return ferry_fail(-EINVAL, "the VM built here has %u vCPUs; "
				  "the stream carries %u",
				  vm->ops->nr_vcpus(vm->handle),
				  d->stream.nr_vcpus);
	if (vm->mem->nr_regions != d->stream.nr_regions)
		return ferry_fail(-EINVAL, "the VM built here has %u memory "
				  "regions; the stream carries %u",
				  vm->mem->nr_regions, d->stream.nr_regions);
	for (unsigned int i = 0; i < d->stream.nr_regions; i++)
		if (vm->mem->regions[i].page_size !=
		    d->stream.regions[i].page_size ||
		    vm->mem->regions[i].size != d->stream.regions[i].size)
			return ferry_fail(-EINVAL, "region %u here does not "
					  "match the source's", i);
	return 0;
}

static int prepare_all(struct dest *d)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->nr_receivers && !ret; i++)
		ret = dest_prepare_receiver(d, &d->receivers[i],
					    d->session->bulk[i], false);
	if (!ret)
		ret = dest_prepare_receiver(d, &d->urgent, d->session->urgent,
					    true);
	return ret;
}

static int setup(struct dest *d)
{
	int ret = prepare_all(d);

	if (!ret)
		ret = dest_read_header(d);
	if (!ret)
		ret = alloc_tables(d);
	if (!ret)
		ret = d->ops->create(d->ops_arg, &d->stream, &d->vm);
	if (ret)
		return ret;
	d->vm_created = true;
	ret = check_vm(d);
	if (!ret)
		ret = postcopy_create(d->vm.mem, &d->pc);
	return ret;
}

static int start_all(struct dest *d)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->nr_receivers && !ret; i++)
		ret = dest_start_receiver(d, &d->receivers[i]);
	return ret;
}

static void collect_stats(struct dest *d)
{
	struct ferry_migrate_stats *st = d->stats;
	struct receiver *all[FERRY_NET_MAX_BULK + 1];
	unsigned int n = 0;
	uint64_t faults = 0, bytes = 0;

	for (unsigned int i = 0; i < d->nr_receivers; i++)
		all[n++] = &d->receivers[i];
	all[n++] = &d->urgent;
	for (unsigned int i = 0; i < n; i++) {
		st->bytes_received += all[i]->bytes;
		st->pages_installed += all[i]->installed;
		bytes += all[i]->installed_bytes;
		faults += all[i]->faults.minor + all[i]->faults.major;
	}
	st->install_page_faults = faults;
	st->faults_per_installed_page = bytes ?
		(double)faults * 4096.0 / (double)bytes : 0;
	st->total_ns = ferry_clock_now_ns() - d->start_ns;
	if (d->vm_created) {
		st->guest_bytes = d->vm.mem->total_size;
		for (unsigned int i = 0; i < d->vm.mem->nr_regions; i++) {
			uint64_t b = 0;

			if (!ferry_mem_region_pmd_mapped(&d->vm.mem->regions[i], &b))
				st->pmd_mapped_bytes += b;
		}
	}
}

static int run(struct dest *d)
{
	int ret = setup(d);

	if (!ret)
		ret = start_all(d);
	if (!ret)
		ret = dest_wait_switchover(d);
	if (!ret)
		ret = dest_switchover(d);
	if (ret) {
		char why[512];

		/* Stop every thread: they may sit in I/O or wait on pages. */
		snprintf(why, sizeof(why), "%s", ferry_error_msg());
		dest_tell_source(d, ret, why);
		ferry_net_session_shutdown(d->session);
		threads_stop(&d->threads);
		postcopy_destroy(d->pc);
		d->pc = NULL;
		ferry_fail(ret, "%s", why);
		return ret;
	}
	threads_stop(&d->threads);	/* the source sends COMPLETE on every
					 * channel */
	return err_slot_get(&d->err);
}

/* ---- setup and teardown ------------------------------------------------- */

static void dest_destroy(struct dest *d)
{
	for (unsigned int i = 0; d->stale && i < d->stream.nr_regions; i++)
		free(d->stale[i]);
	for (unsigned int i = 0; d->vcpus && i < d->stream.nr_vcpus; i++)
		free(d->vcpus[i].regs);
	for (unsigned int i = 0; d->receivers && i < d->nr_receivers; i++)
		free(d->receivers[i].buf);
	free(d->urgent.buf);
	free(d->stale);
	free(d->vcpus);
	free(d->desc);
	free(d->receivers);
	threads_fini(&d->threads);
	err_slot_fini(&d->err);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->urgent_lock);
	free(d);
}

static int dest_create(struct ferry_session *session,
		       const struct ferry_dest_ops *ops, void *arg,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_migrate_stats *stats, struct dest **out)
{
	struct dest *d = calloc(1, sizeof(*d));
	int ret;

	if (!d)
		return ferry_fail(-ENOMEM, "out of memory");
	*d = (struct dest){ .session = session, .ops = ops, .ops_arg = arg,
			    .opts = opts, .stats = stats,
			    .nr_receivers = session->nr_bulk,
			    .threads = { .stop_fd = -1 },
			    .start_ns = ferry_clock_now_ns() };
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
	pthread_mutex_init(&d->urgent_lock, NULL);
	err_slot_init(&d->err);
	ferry_wire_writer_init(&d->urgent_writer, session->urgent);
	d->receivers = calloc(d->nr_receivers, sizeof(*d->receivers));
	ret = d->receivers ? threads_init(&d->threads) :
			     ferry_fail(-ENOMEM, "out of memory");
	if (ret) {
		dest_destroy(d);
		return ret;
	}
	*out = d;
	return 0;
}

int ferry_migrate_recv(struct ferry_session *session,
		       const struct ferry_dest_ops *ops, void *arg,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_vm *vm, struct ferry_migrate_stats *stats)
{
	struct dest *d = NULL;
	int ret;

	if (!session || !session->nr_bulk || !session->urgent || !ops ||
	    !ops->create)
		return ferry_fail(-EINVAL, "receiving needs a session with a "
				  "bulk and an urgent channel, and a create op");
	memset(stats, 0, sizeof(*stats));
	ret = dest_create(session, ops, arg, opts, stats, &d);
	if (ret)
		return ret;
	ret = run(d);
	collect_stats(d);
	postcopy_destroy(d->pc);
	if (ret && d->vm_created && ops->discard)
		ops->discard(arg, &d->vm);
	else if (!ret)
		*vm = d->vm;
	dest_destroy(d);
	return ret;
}
