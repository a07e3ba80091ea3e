// SPDX-License-Identifier: MIT
/*
 * Live migration end to end, source and destination in one process over
 * loopback: every mode on every backing with a dirtying workload, each
 * ending with the verifier and the vCPU power states as they were; and
 * the failures: a broken connection before switchover, a corrupt stream.
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/guest_vm.h"
#include "ferry/migrate.h"
#include "ferry/net.h"
#include "test.h"

struct mig {
	/* what to do */
	enum ferry_mode mode;
	const char *workload;
	unsigned int vcpus, channels;
	size_t mem;
	unsigned int warmup_ms;
	enum ferry_backing backing;
	/* what happened */
	struct ferry_listener *listener;
	struct ferry_guest_dest dd;
	struct ferry_migrate_stats src_stats, dst_stats;
	int dst_ret;
	char dst_reason[512];
};

static void *dest_main(void *arg)
{
	struct mig *m = arg;
	struct ferry_session *s = NULL;
	struct ferry_vm vm;
	int ret = ferry_net_accept(m->listener, 20000, &s);

	if (!ret)
		ret = ferry_migrate_recv(s, ferry_guest_dest_ops(), &m->dd,
					 NULL, &vm, &m->dst_stats);
	m->dst_ret = ret;
	snprintf(m->dst_reason, sizeof(m->dst_reason), "%s", ferry_errmsg());
	ferry_net_session_close(s);
	return NULL;
}

static void config(struct mig *m, struct ferry_guest_config *cfg)
{
	ferry_guest_config_init(cfg);
	cfg->nr_vcpus = m->vcpus;
	cfg->seed = 42;
	ferry_guest_config_set_workload(cfg, m->workload);
}

/* The source's MP states, read while it is paused for good. */
static void source_states(struct ferry_guest_vm *gv,
			  enum ferry_mp_state *states)
{
	for (unsigned int i = 0; i < gv->vm.ops->nr_vcpus(gv->guest); i++)
		gv->vm.ops->get_mp_state(gv->guest, i, &states[i]);
}

/* Run on at the destination, stop, verify, compare power states. */
static enum test_result check_dest(struct test_ctx *ctx, struct mig *m,
				   const enum ferry_mp_state *want)
{
	struct ferry_guest_vm *gv = m->dd.gv;
	struct ferry_verify_report rep;

	CHECK(ctx, gv, "no VM at the destination");
	usleep(200000);		/* the guest runs on, faulting pages in */
	CHECK_OK(ctx, ferry_guest_stop(gv->guest));
	CHECK_OK(ctx, ferry_guest_verify(gv->guest, &rep));
	CHECK(ctx, rep.ok, "verifier: %llu lost, %llu torn, %llu duplicated, "
	      "%llu read errors (first cell %llu, %s)",
	      (unsigned long long)rep.lost, (unsigned long long)rep.torn,
	      (unsigned long long)rep.duplicated,
	      (unsigned long long)rep.read_errors,
	      rep.nr_bad ? (unsigned long long)rep.bad[0].cell : 0ULL,
	      rep.nr_bad ? ferry_verify_kind_name(rep.bad[0].kind) : "-");
	for (unsigned int i = 0; i < m->vcpus; i++)
		CHECK(ctx, rep.vcpu[i].mp_state == want[i],
		      "vCPU %u is %s after migration, was %s", i,
		      ferry_mp_state_name(rep.vcpu[i].mp_state),
		      ferry_mp_state_name(want[i]));
	CHECK(ctx, rep.cells_written > 0, "the workload wrote nothing");
	return TEST_PASS;
}

static int connect_and_send(struct mig *m, struct ferry_guest_vm *gv,
			    const struct ferry_migrate_opts *o)
{
	struct ferry_session *s;
	int ret = ferry_net_connect(ferry_net_listener_addr(m->listener),
				    m->channels, NULL, &s);

	if (ret)
		return ret;
	ret = ferry_migrate_send(&gv->vm, s, o, &m->src_stats);
	ferry_net_session_close(s);
	return ret;
}

static enum test_result migrate_once(struct test_ctx *ctx, struct mig *m)
{
	enum ferry_mp_state want[FERRY_GUEST_MAX_VCPUS];
	struct ferry_guest_config cfg;
	struct ferry_migrate_opts o;
	struct ferry_guest_vm *src;
	pthread_t dest;
	enum test_result res;
	int ret;

	m->backing = ctx->backing;
	m->dd = (struct ferry_guest_dest){ .keep_backing = true };
	config(m, &cfg);
	CHECK_OK(ctx, ferry_guest_vm_create(&cfg, m->backing, m->mem, &src));
	CHECK_OK(ctx, ferry_guest_start(src->guest));
	usleep(m->warmup_ms * 1000);
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL,
					      &m->listener));
	CHECK_EQ(ctx, pthread_create(&dest, NULL, dest_main, m), 0);
	ferry_migrate_opts_init(&o);
	o.mode = m->mode;
	ret = connect_and_send(m, src, &o);
	pthread_join(dest, NULL);
	ferry_net_listener_close(m->listener);
	CHECK(ctx, ret == 0, "source: %s (destination: %s)", ferry_errmsg(),
	      m->dst_ret ? m->dst_reason : "ok");
	CHECK(ctx, m->dst_ret == 0, "destination: %s", m->dst_reason);
	source_states(src, want);
	res = check_dest(ctx, m, want);
	ferry_guest_vm_destroy(src);
	ferry_guest_vm_destroy(m->dd.gv);
	return res;
}

/*
 * vCPU 2 powers off early and stays off; the others dirty memory; vCPU 1
 * reads as well, so the destination sees read faults too.
 */
#define DIRTYING "random,read=30,off=2@200"

static enum test_result precopy(struct test_ctx *ctx)
{
	struct mig m = { .mode = FERRY_MODE_PRECOPY, .workload = DIRTYING,
			 .vcpus = 3, .channels = 2, .mem = 32 << 20,
			 .warmup_ms = 100 };
	enum test_result res = migrate_once(ctx, &m);

	if (res != TEST_PASS)
		return res;
	CHECK_EQ(ctx, m.src_stats.mode, FERRY_MODE_PRECOPY);
	CHECK(ctx, m.src_stats.rounds >= 2, "%u rounds", m.src_stats.rounds);
	CHECK(ctx, m.dst_stats.faults_per_installed_page < 0.01,
	      "%.4f faults per installed page on the receive path",
	      m.dst_stats.faults_per_installed_page);
	return TEST_PASS;
}

static enum test_result postcopy(struct test_ctx *ctx)
{
	struct mig m = { .mode = FERRY_MODE_POSTCOPY, .workload = DIRTYING,
			 .vcpus = 3, .channels = 2, .mem = 32 << 20,
			 .warmup_ms = 100 };
	enum test_result res = migrate_once(ctx, &m);

	if (res != TEST_PASS)
		return res;
	CHECK_EQ(ctx, m.src_stats.mode, FERRY_MODE_POSTCOPY);
	CHECK_EQ(ctx, m.dst_stats.mode, FERRY_MODE_POSTCOPY);
	return TEST_PASS;
}

static enum test_result hybrid(struct test_ctx *ctx)
{
	struct mig m = { .mode = FERRY_MODE_HYBRID, .workload = DIRTYING,
			 .vcpus = 3, .channels = 3, .mem = 32 << 20,
			 .warmup_ms = 100 };

	return migrate_once(ctx, &m);
}

/*
 * Post-copy serves both kinds of fault: a page the destination holds but
 * has not mapped yet (minor) and one it does not hold (missing: never
 * sent, or a hole).  After a short warm-up most of memory is still holes
 * that the random writes keep filling, and half the steps read.
 */
static enum test_result postcopy_both_kinds(struct test_ctx *ctx)
{
	struct mig m = { .mode = FERRY_MODE_POSTCOPY,
			 .workload = "random,read=50", .vcpus = 2,
			 .channels = 1, .mem = 64 << 20, .warmup_ms = 50 };
	enum test_result res = migrate_once(ctx, &m);

	if (res != TEST_PASS)
		return res;
	CHECK(ctx, m.dst_stats.minor_faults > 0, "no minor faults");
	CHECK(ctx, m.dst_stats.missing_faults > 0, "no missing faults");
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "migrate_precopy", precopy, B_ALL, FERRY_UFFD_F_WP_ASYNC,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 64, 60 },
	{ "migrate_postcopy", postcopy, B_ALL, FERRY_UFFD_F_WP_ASYNC,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR |
	  NEED_UFFD_MISSING, 64, 60 },
	{ "migrate_hybrid", hybrid, B_ALL, FERRY_UFFD_F_WP_ASYNC,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR |
	  NEED_UFFD_MISSING, 64, 60 },
	{ "migrate_postcopy_minor_and_missing", postcopy_both_kinds, B_ALL,
	  FERRY_UFFD_F_WP_ASYNC, NEED_UFFD_WP | NEED_PAGEMAP_SCAN |
	  NEED_UFFD_MINOR | NEED_UFFD_MISSING, 96, 60 },
};

TEST_SUITE(migrate, cases)
