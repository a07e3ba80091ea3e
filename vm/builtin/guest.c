// SPDX-License-Identifier: MIT
/* guest: the built-in workload VM's lifecycle and counters. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/error.h"
#include "guest.h"
#include "psci.h"

const char *ferry_guest_workload_help(void)
{
	return workload_help();
}

/* Every deadline (rate cap, idle tick, wait_settled) is CLOCK_MONOTONIC. */
static void cond_init_monotonic(pthread_cond_t *cond)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(cond, &attr);
	pthread_condattr_destroy(&attr);
}

static int vcpu_init(struct ferry_guest *g, unsigned int index)
{
	struct vcpu *v = &g->vcpus[index];
	int ret;

	v->g = g;
	v->index = index;
	atomic_init(&v->req, 0);
	cond_init_monotonic(&v->wake);
	ret = workload_part_init(&g->wl, index, &v->part);
	if (ret)
		return ret;
	workload_regs_boot(&g->wl, index, &v->regs);
	psci_boot_power(g, v);
	guest_publish(v);
	v->buf = aligned_alloc(64, CELL_SIZE);
	if (!v->buf)
		return ferry_error_set(-ENOMEM, "out of memory");
	return 0;
}

static void vcpu_fini(struct vcpu *v)
{
	if (!v->g)
		return;
	workload_part_fini(&v->part);
	free(v->buf);
	pthread_cond_destroy(&v->wake);
}

static int wrong_mem_size(uint64_t laid_out, uint64_t here)
{
	return ferry_error_set(-EINVAL, "the machine was laid out on %llu "
			       "MiB of memory; this one has %llu MiB",
			       (unsigned long long)laid_out >> 20,
			       (unsigned long long)here >> 20);
}

static int guest_layout(struct ferry_guest *g, struct ferry_mem *mem)
{
	uint64_t nr_cells;
	int ret;

	if (g->cfg.mem_size && g->cfg.mem_size != mem->total_size)
		return wrong_mem_size(g->cfg.mem_size, mem->total_size);
	if (!mem->total_size)
		return ferry_error_set(-EINVAL, "guest memory has no regions");
	g->cfg.mem_size = mem->total_size;
	ret = cell_map_init(&g->cells, mem);
	if (ret)
		return ret;
	nr_cells = g->cells.nr_cells;
	ret = workload_parse(g->cfg.workload, &g->wl);
	if (!ret)
		ret = workload_layout(&g->wl, g->nr_vcpus, nr_cells,
				      g->cfg.seed);
	g->machine_id = workload_fingerprint(&g->wl, nr_cells);
	return ret;
}

static int guest_alloc(const struct ferry_guest_config *cfg,
		       struct ferry_guest **out)
{
	struct ferry_guest *g = calloc(1, sizeof(*g));
	size_t size = cfg->nr_vcpus * sizeof(struct vcpu);

	if (!g)
		return ferry_error_set(-ENOMEM, "out of memory");
	g->vcpus = aligned_alloc(_Alignof(struct vcpu), size);
	if (!g->vcpus) {
		free(g);
		return ferry_error_set(-ENOMEM, "out of memory");
	}
	memset(g->vcpus, 0, size);
	g->cfg = *cfg;
	g->nr_vcpus = cfg->nr_vcpus;
	g->boot_off_mask = cfg->boot_off_mask;
	g->step_limit = cfg->step_limit;
	pthread_mutex_init(&g->lock, NULL);
	cond_init_monotonic(&g->quiesce);
	pthread_cond_init(&g->unpause, NULL);
	*out = g;
	return 0;
}

int ferry_guest_create(struct ferry_mem *mem,
		       const struct ferry_guest_config *cfg,
		       struct ferry_guest **out)
{
	struct ferry_guest *g = NULL;
	int ret = guest_config_check(cfg);

	if (!ret)
		ret = guest_alloc(cfg, &g);
	if (ret)
		return ret;
	g->mem = mem;
	ret = guest_layout(g, mem);
	for (unsigned int i = 0; !ret && i < g->nr_vcpus; i++)
		ret = vcpu_init(g, i);
	if (ret) {
		ferry_guest_destroy(g);
		return ret;
	}
	*out = g;
	return 0;
}

void ferry_guest_destroy(struct ferry_guest *g)
{
	if (!g)
		return;
	ferry_guest_stop(g);
	for (unsigned int i = 0; i < g->nr_vcpus; i++)
		vcpu_fini(&g->vcpus[i]);
	cell_map_fini(&g->cells);
	pthread_cond_destroy(&g->quiesce);
	pthread_cond_destroy(&g->unpause);
	pthread_mutex_destroy(&g->lock);
	free(g->vcpus);
	free(g);
}

void ferry_guest_get_config(const struct ferry_guest *g,
			    struct ferry_guest_config *cfg)
{
	struct ferry_guest *mut = (struct ferry_guest *)g;

	*cfg = g->cfg;
	pthread_mutex_lock(&mut->lock);
	cfg->step_limit = g->step_limit;
	cfg->boot_off_mask = g->boot_off_mask;
	pthread_mutex_unlock(&mut->lock);
}

static void vcpu_stats(struct vcpu *v, struct ferry_guest_vcpu_stats *st)
{
	memory_order o = memory_order_relaxed;

	st->mp_state = v->power.mp;
	st->resets = v->power.resets;
	st->steps = atomic_load_explicit(&v->pub_steps, o);
	st->writes = atomic_load_explicit(&v->pub_writes, o);
	st->reads = atomic_load_explicit(&v->pub_reads, o);
	st->read_errors = atomic_load_explicit(&v->pub_read_errors, o);
	st->bytes_dirtied = st->writes * CELL_SIZE;
}

void ferry_guest_stats(struct ferry_guest *g, struct ferry_guest_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->nr_vcpus = g->nr_vcpus;
	pthread_mutex_lock(&g->lock);
	for (unsigned int i = 0; i < g->nr_vcpus; i++) {
		struct ferry_guest_vcpu_stats *vs = &st->vcpu[i];

		vcpu_stats(&g->vcpus[i], vs);
		st->steps += vs->steps;
		st->writes += vs->writes;
		st->reads += vs->reads;
		st->read_errors += vs->read_errors;
	}
	pthread_mutex_unlock(&g->lock);
	st->bytes_dirtied = st->writes * CELL_SIZE;
}
