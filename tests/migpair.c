// SPDX-License-Identifier: MIT
/* migpair: one verified live migration in this process; see migpair.h. */
#include <pthread.h>
#include <unistd.h>

#include "ferry-vm/guest_vm.h"
#include "migpair.h"

/* vCPU 2 powers off early and stays off; the others dirty memory. */
#define MIGPAIR_WORKLOAD	"random,read=30,off=2@200"
#define MIGPAIR_VCPUS		3

struct dest_side {
	struct migpair *m;
	struct ferry_guest_dest dd;
	int ret;
	char why[512];
};

static void *dest_main(void *arg)
{
	struct dest_side *d = arg;
	struct ferry_session *s = d->m->dst_session;
	struct ferry_migrate_stats stats;
	struct ferry_vm vm;
	int ret = s ? 0 : ferry_net_accept(d->m->listener, 20000, &s);

	if (!ret) {
		snprintf(d->m->dst_auth, sizeof(d->m->dst_auth), "%s",
			 s->auth);
		ret = ferry_migrate_recv(s, ferry_guest_vm_dest_ops(), &d->dd,
					 NULL, &vm, &stats);
	}
	d->ret = ret;
	snprintf(d->why, sizeof(d->why), "%s", ferry_error_msg());
	ferry_net_session_close(s);
	return NULL;
}

static int source_send(struct migpair *m, struct ferry_guest_vm *gv)
{
	struct ferry_migrate_stats stats;
	struct ferry_migrate_opts o;
	struct ferry_session *s = m->src_session;
	int ret = s ? 0 : ferry_net_connect(ferry_net_listener_addr(
		m->listener), m->channels, m->connect_opts, &s);

	ferry_migrate_opts_init(&o);
	o.mode = m->mode;
	if (!ret)
		ret = ferry_migrate_send(&gv->vm, s, &o, &stats);
	ferry_net_session_close(s);
	return ret;
}

static enum test_result verify_dest(struct test_ctx *ctx,
				    struct ferry_guest_vm *src,
				    struct ferry_guest_vm *dst)
{
	struct ferry_verify_report rep;
	enum ferry_mp_state want;

	usleep(100000);		/* the guest runs on at the destination */
	CHECK_OK(ctx, ferry_guest_stop(dst->guest));
	CHECK_OK(ctx, ferry_guest_verify(dst->guest, &rep));
	CHECK(ctx, rep.ok && rep.cells_written > 0, "verifier: %llu lost, "
	      "%llu torn, %llu duplicated, %llu written",
	      (unsigned long long)rep.lost, (unsigned long long)rep.torn,
	      (unsigned long long)rep.duplicated,
	      (unsigned long long)rep.cells_written);
	for (unsigned int i = 0; i < MIGPAIR_VCPUS; i++) {
		src->vm.ops->get_mp_state(src->guest, i, &want);
		CHECK(ctx, rep.vcpu[i].mp_state == want, "vCPU %u is %s, "
		      "was %s", i,
		      ferry_vcpu_mp_state_name(rep.vcpu[i].mp_state),
		      ferry_vcpu_mp_state_name(want));
	}
	return TEST_PASS;
}

static enum test_result run(struct test_ctx *ctx, struct migpair *m,
			    struct ferry_guest_vm *src)
{
	struct dest_side d = { .m = m, .dd = { .keep_backing = true } };
	enum test_result res;
	pthread_t thread;
	int ret;

	CHECK_EQ(ctx, pthread_create(&thread, NULL, dest_main, &d), 0);
	ret = source_send(m, src);
	pthread_join(thread, NULL);
	CHECK(ctx, !ret, "source: %s (destination: %s)", ferry_error_msg(),
	      d.ret ? d.why : "ok");
	CHECK(ctx, !d.ret, "destination: %s", d.why);
	res = verify_dest(ctx, src, d.dd.gv);
	ferry_guest_vm_destroy(d.dd.gv);
	return res;
}

enum test_result migpair_run(struct test_ctx *ctx, struct migpair *m)
{
	struct ferry_listener *own = NULL;
	struct ferry_guest_config cfg;
	struct ferry_guest_vm *src;
	enum test_result res;

	m->channels = m->channels ? m->channels : 2;
	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = MIGPAIR_VCPUS;
	cfg.seed = 42;
	ferry_guest_config_set_workload(&cfg, MIGPAIR_WORKLOAD);
	if (!m->src_session && !m->listener) {
		CHECK_OK(ctx, ferry_net_listener_open(m->listen_addr ?
			 m->listen_addr : "127.0.0.1:0", m->listen_opts, &own));
		m->listener = own;
	}
	CHECK_OK(ctx, ferry_guest_vm_create(&cfg, ctx->backing, m->mem ?
					    m->mem : 16 << 20, &src));
	CHECK_OK(ctx, ferry_guest_start(src->guest));
	usleep(100000);
	res = run(ctx, m, src);
	ferry_guest_vm_destroy(src);
	if (own) {
		ferry_net_listener_close(own);
		m->listener = NULL;
	}
	return res;
}
