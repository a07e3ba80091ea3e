// SPDX-License-Identifier: MIT
/* migrig: one migration through a fault proxy, recovered, verified. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "migrig.h"
#include "ferry/error.h"

struct rig {
	const struct rig_opts *o;
	struct rig_result *r;
	struct ferry_listener *listener;
	struct faultproxy *proxy;
	struct ferry_guest_vm *src;
	struct ferry_guest_dest dd;
	struct ferry_migration *sm;
	/*
	 * The destination's migration: its thread sets it, main reads it.
	 * One that ended is kept (main may still look at it) and a new one
	 * starts on the next session, as a destination host that went on
	 * serving would: a source paused after its commit then hands the
	 * VM to it.
	 */
	struct ferry_migration *_Atomic dm;
	struct ferry_migration *old[8];
	unsigned int nr_old;
	pthread_mutex_t lock;		/* the events */
	atomic_bool stop;
	uint64_t deadline_ns;
};

static uint64_t rig_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void rig_opts_init(struct rig_opts *o)
{
	*o = (struct rig_opts){ .backing = FERRY_BACKING_SHMEM,
		.mem = 32 << 20, .vcpus = 3,
		.workload = "random,read=30,off=2@200", .warmup_ms = 100,
		.mode = FERRY_MODE_HYBRID, .channels = 2,
		.timeout_ms = 1000, .heartbeat_ms = 100 };
}

bool rig_saw(const struct rig_side *side, enum ferry_migrate_event_kind ev)
{
	for (unsigned int i = 0; i < side->nr_events; i++)
		if (side->events[i] == ev)
			return true;
	return false;
}

/* ---- events ------------------------------------------------------------- */

struct rig_ev_arg {
	struct rig *rig;
	struct rig_side *side;
};

static struct rig_ev_arg src_ev, dst_ev;

static void on_event(const struct ferry_migrate_event *ev, void *arg)
{
	struct rig_ev_arg *a = arg;

	pthread_mutex_lock(&a->rig->lock);
	if (a->side->nr_events < RIG_MAX_EVENTS)
		a->side->events[a->side->nr_events++] = ev->kind;
	if (ev->kind == FERRY_EVENT_DEST_RUNNING)
		a->side->running_owed = ev->owed;
	pthread_mutex_unlock(&a->rig->lock);
}

static void side_opts(const struct rig *rig, struct ferry_migrate_opts *mo,
		      struct rig_ev_arg *ev)
{
	ferry_migrate_opts_init(mo);
	mo->mode = rig->o->mode;
	mo->postcopy_at_once = rig->o->at_once;
	mo->timeout_ms = rig->o->timeout_ms;
	mo->heartbeat_ms = rig->o->heartbeat_ms;
	mo->event = on_event;
	mo->event_arg = ev;
}

/* ---- the destination: accept, start, hand new sessions over ------------- */

static bool ended(struct ferry_migration *m)
{
	return ferry_migrate_wait(m, 0) != -EINPROGRESS;
}

static void start_dest(struct rig *rig, struct ferry_session *s,
		       const struct ferry_migrate_opts *mo)
{
	struct ferry_migration *dm = NULL, *prev = atomic_load(&rig->dm);

	if (prev && rig->nr_old == sizeof(rig->old) / sizeof(rig->old[0])) {
		ferry_net_session_close(s);
		return;
	}
	if (prev)
		rig->old[rig->nr_old++] = prev;
	ferry_migrate_start_dest(s, ferry_guest_vm_dest_ops(), &rig->dd, mo,
				 &dm);
	atomic_store(&rig->dm, dm);
}

/*
 * A new session while a migration runs here: the source thinks the last
 * one lost; give it over once this side pauses too, or start afresh if
 * this side's ends meanwhile (it failed before the commit).
 */
static void give_session(struct rig *rig, struct ferry_session *s,
			 const struct ferry_migrate_opts *mo)
{
	uint64_t until = rig_now_ns() + (uint64_t)(3 * rig->o->timeout_ms +
						   1000) * 1000000;
	struct ferry_migration *dm = atomic_load(&rig->dm);
	struct ferry_progress p;

	do {
		ferry_migrate_progress(dm, &p);
		if (p.paused) {
			ferry_migrate_reconnect(dm, s);
			return;
		}
		if (ended(dm)) {
			start_dest(rig, s, mo);
			return;
		}
		usleep(20000);
	} while (rig_now_ns() < until && !rig->stop);
	ferry_net_session_close(s);
}

static void *dest_main(void *arg)
{
	struct rig *rig = arg;
	struct ferry_migrate_opts mo;
	uint64_t max_stall = 0;

	side_opts(rig, &mo, &dst_ev);
	while (!atomic_load(&rig->stop)) {
		struct ferry_migration *dm = atomic_load(&rig->dm);
		struct ferry_session *s;
		struct ferry_progress p;

		if (dm) {
			ferry_migrate_progress(dm, &p);
			if (p.stalled_ns > max_stall && !p.paused)
				max_stall = p.stalled_ns;
		}
		if (ferry_net_accept(rig->listener, 50, &s))
			continue;
		if (!dm || ended(dm))
			start_dest(rig, s, &mo);
		else
			give_session(rig, s, &mo);
	}
	rig->r->dst.max_stalled_ns = max_stall;
	return NULL;
}

/*
 * Two hosts (listen_addr set) are two network namespaces of the test's
 * own, joined by a private veth link: plain TCP there is what an
 * operator's --insecure says.  One host is loopback, plain by default.
 */
static const struct ferry_net_opts *rig_net(const struct rig *rig)
{
	static const struct ferry_net_opts two_hosts = { .insecure = true };

	return rig->o->listen_addr ? &two_hosts : NULL;
}

/* ---- the source: start, dial again while paused ------------------------- */

static int rig_dial(struct rig *rig, struct ferry_session **s)
{
	const char *to = rig->proxy ? faultproxy_addr(rig->proxy) :
				      ferry_net_listener_addr(rig->listener);

	return ferry_net_connect(to, rig->o->channels, rig_net(rig), s);
}

static int run_source(struct rig *rig)
{
	struct rig_side *side = &rig->r->src;
	struct ferry_migrate_opts mo;
	struct ferry_session *s;
	uint64_t next_try = 0;
	int ret;

	side_opts(rig, &mo, &src_ev);
	mo.bandwidth_bps = rig->o->bandwidth;
	ret = rig_dial(rig, &s);
	if (!ret)
		ret = ferry_migrate_start(&rig->src->vm, s, &mo, &rig->sm);
	if (ret)
		return ret;
	while ((ret = ferry_migrate_wait(rig->sm, 20)) == -EINPROGRESS) {
		struct ferry_progress p;
		uint64_t now = rig_now_ns();

		ferry_migrate_progress(rig->sm, &p);
		if (p.stalled_ns > side->max_stalled_ns && !p.paused)
			side->max_stalled_ns = p.stalled_ns;
		if (p.rate_bps > side->max_rate_bps)
			side->max_rate_bps = p.rate_bps;
		if (rig->o->tick)
			rig->o->tick(rig->sm, &p, rig->o->tick_arg);
		if (now > rig->deadline_ns)
			ferry_migrate_cancel(rig->sm);
		if (!p.paused || now < next_try)
			continue;
		next_try = now + 200 * 1000000ULL;
		if (!rig_dial(rig, &s))
			ferry_migrate_reconnect(rig->sm, s);
	}
	return ret;
}

/* ---- where the VM is, verified ------------------------------------------ */

static void side_result(struct ferry_migration *m, struct rig_side *side,
			int ret)
{
	side->ret = ret;
	snprintf(side->reason, sizeof(side->reason), "%s",
		 ret ? ferry_error_msg() : "");
	side->location = ferry_migrate_vm_location(m);
	ferry_migrate_get_stats(m, &side->stats);
}

static int verify(struct ferry_guest *g, struct rig_result *r)
{
	int ret = ferry_guest_stop(g);

	if (!ret)
		ret = ferry_guest_verify(g, &r->rep);
	r->verified = !ret;
	if (ret)
		snprintf(r->why, sizeof(r->why), "verify: %s",
			 ferry_error_msg());
	return ret;
}

/* The destination has it: run on, stop, verify, compare power states. */
static int verify_dest(struct rig *rig)
{
	struct ferry_guest_vm *src = rig->src, *dst = rig->dd.gv;
	unsigned int n = src->vm.ops->nr_vcpus(src->guest);
	int ret;

	usleep(200000);
	ret = verify(dst->guest, rig->r);
	rig->r->at_dest = true;
	rig->r->states_ok = !ret;
	for (unsigned int i = 0; !ret && i < n; i++) {
		enum ferry_mp_state want;

		src->vm.ops->get_mp_state(src->guest, i, &want);
		rig->r->states_ok &= rig->r->rep.vcpu[i].mp_state == want;
	}
	return ret;
}

/*
 * The migration did not complete: the source holds the VM, running (the
 * commit never came) or paused as at switchover.  Either way it is whole.
 */
static int verify_source(struct rig *rig)
{
	return verify(rig->src->guest, rig->r);
}

/* Wait for the destination; a paused one is cancelled (the rig gives up). */
static int finish_dest(struct rig *rig)
{
	int ret;

	if (!rig->dm)
		return -ENOTCONN;
	ret = ferry_migrate_wait(rig->dm, (int)(3 * rig->o->timeout_ms) +
				 2000);
	if (ret == -EINPROGRESS) {
		ferry_migrate_cancel(rig->dm);
		ret = ferry_migrate_wait(rig->dm, -1);
	}
	return ret;
}

int rig_wait_power_events(struct ferry_guest_vm *gv, const char *workload)
{
	const char *off = strstr(workload, "off=2@");
	unsigned long step = off ? strtoul(off + 6, NULL, 10) : 0;

	for (int i = 0; off && i < 4000; i++) {
		struct ferry_guest_stats st;
		enum ferry_mp_state mp;

		ferry_guest_stats(gv->guest, &st);
		gv->vm.ops->get_mp_state(gv->guest, 2, &mp);
		if (st.vcpu[2].steps >= step && mp == FERRY_MP_STOPPED)
			return 0;
		usleep(5000);
	}
	return off ? -ETIMEDOUT : 0;
}

/* On the destination's host, when there are two. */
static int open_listener(struct rig *rig)
{
	const struct rig_opts *o = rig->o;
	int ret = o->enter_dest ? o->enter_dest(o->enter_arg) : 0;

	if (!ret)
		ret = ferry_net_listener_open(o->listen_addr ? o->listen_addr :
					      "127.0.0.1:0", rig_net(rig),
					      &rig->listener);
	if (o->enter_src && o->enter_src(o->enter_arg) && !ret)
		ret = -EIO;
	return ret;
}

static int setup(struct rig *rig)
{
	const struct rig_opts *o = rig->o;
	struct ferry_guest_config cfg;
	int ret;

	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = o->vcpus;
	cfg.seed = 42;
	ret = ferry_guest_config_set_workload(&cfg, o->workload);
	if (!ret)
		ret = ferry_guest_vm_create(&cfg, o->backing, o->mem,
					    &rig->src);
	if (!ret)
		ret = ferry_guest_start(rig->src->guest);
	if (!ret) {
		usleep(o->warmup_ms * 1000);
		ret = rig_wait_power_events(rig->src, o->workload);
	}
	if (!ret)
		ret = open_listener(rig);
	if (!ret && !o->enter_dest)
		ret = faultproxy_start("127.0.0.1:0",
				       ferry_net_listener_addr(rig->listener),
				       &rig->proxy);
	for (unsigned int i = 0; !ret && rig->proxy && i < o->nr_rules; i++)
		ret = faultproxy_add(rig->proxy, &o->rules[i]);
	if (ret)
		snprintf(rig->r->why, sizeof(rig->r->why), "setup: %s",
			 ferry_error_msg());
	return ret;
}

static void teardown(struct rig *rig)
{
	ferry_migrate_destroy(rig->sm);
	ferry_migrate_destroy(rig->dm);
	for (unsigned int i = 0; i < rig->nr_old; i++)
		ferry_migrate_destroy(rig->old[i]);
	faultproxy_stop(rig->proxy);
	ferry_net_listener_close(rig->listener);
	ferry_guest_vm_destroy(rig->dd.gv);
	ferry_guest_vm_destroy(rig->src);
	pthread_mutex_destroy(&rig->lock);
}

int rig_run(const struct rig_opts *o, struct rig_result *r)
{
	struct rig rig = { .o = o, .r = r, .dd = { .keep_backing = true } };
	pthread_t dest;
	int ret;

	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&rig.lock, NULL);
	src_ev = (struct rig_ev_arg){ &rig, &r->src };
	dst_ev = (struct rig_ev_arg){ &rig, &r->dst };
	rig.deadline_ns = rig_now_ns() +
			  (uint64_t)(o->budget_ms ? o->budget_ms : 60000) *
			  1000000;
	ret = setup(&rig);
	if (!ret && pthread_create(&dest, NULL, dest_main, &rig))
		ret = -EAGAIN;
	if (ret) {
		teardown(&rig);
		return ret;
	}
	ret = run_source(&rig);
	if (rig.sm)
		side_result(rig.sm, &r->src, ret);
	else
		r->src.ret = ret;
	/* The destination ends by itself, or is cancelled if paused. */
	while (!rig.dm && rig_now_ns() < rig.deadline_ns && r->src.ret == 0)
		usleep(10000);
	ret = finish_dest(&rig);
	atomic_store(&rig.stop, true);
	pthread_join(dest, NULL);
	if (rig.dm)
		side_result(rig.dm, &r->dst, ret);
	else
		r->dst.ret = ret;
	r->fired = rig.proxy ? faultproxy_fired(rig.proxy) : 0;
	/*
	 * A destination that completed holds the VM whole, whatever the
	 * source heard; else the source does.  A source that heard every
	 * page confirmed while the destination failed would be a lie.
	 */
	if (!r->dst.ret)
		ret = verify_dest(&rig);
	else if (r->src.ret)
		ret = verify_source(&rig);
	else
		ret = -EPROTO;
	if (ret == -EPROTO)
		snprintf(r->why, sizeof(r->why), "the source completed, the "
			 "destination failed: %s", r->dst.reason);
	teardown(&rig);
	return ret;
}

/* ---- two hosts ---------------------------------------------------------- */

static int enter_b(void *arg)
{
	return netns_enter(&((struct rig_flap *)arg)->ns, 'b');
}

static int enter_a(void *arg)
{
	return netns_enter(&((struct rig_flap *)arg)->ns, 'a');
}

int rig_flap_enter_source(struct rig_flap *f)
{
	return enter_a(f);
}

/* Once the VM runs at the destination: the link down for down_ms. */
static void flap_tick(struct ferry_migration *sm,
		      const struct ferry_progress *p, void *arg)
{
	struct rig_flap *f = arg;

	(void)sm;
	if (f->done || p->location != FERRY_VM_SPLIT)
		return;
	f->done = true;
	netns_link(&f->ns, false);
	usleep(f->down_ms * 1000);
	netns_link(&f->ns, true);
}

void rig_flap_opts(struct rig_opts *o, struct rig_flap *f,
		   const char *listen_addr)
{
	o->listen_addr = listen_addr;
	o->enter_dest = enter_b;
	o->enter_src = enter_a;
	o->enter_arg = f;
	o->tick = flap_tick;
	o->tick_arg = f;
	f->done = false;
}
