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
#include <sys/wait.h>
#include <unistd.h>

#include "ferry-vm/guest_vm.h"
#include "ferry/migrate.h"
#include "ferry/net.h"
#include "migrig.h"
#include "netns.h"
#include "rawpeer.h"
#include "test.h"

struct mig {
	/* what to do */
	enum ferry_mode mode;
	const char *workload;
	unsigned int vcpus, channels;
	size_t mem;
	unsigned int warmup_ms;
	bool at_once;			/* postcopy_at_once */
	enum ferry_backing backing;
	/* what happened */
	struct ferry_listener *listener;
	struct ferry_guest_dest dd;
	struct ferry_migrate_stats src_stats, dst_stats;
	struct ferry_hist latency;	/* the destination's demand faults */
	/* the source's progress calls: phases in order, and post-copy's */
	enum ferry_phase last_phase;
	unsigned int nr_progress, progress_disorder, nr_postcopy_progress;
	uint64_t postcopy_remaining, postcopy_requested;
	bool postcopy_backwards;
	int dst_ret;
	char dst_reason[512];
};

static void *dest_main(void *arg)
{
	struct mig *m = arg;
	struct ferry_session *s = NULL;
	struct ferry_migrate_opts o;
	struct ferry_vm vm;
	int ret = ferry_net_accept(m->listener, 20000, &s);

	ferry_migrate_opts_init(&o);
	o.fault_latency = &m->latency;
	if (!ret)
		ret = ferry_migrate_recv(s, ferry_guest_vm_dest_ops(), &m->dd,
					 &o, &vm, &m->dst_stats);
	m->dst_ret = ret;
	snprintf(m->dst_reason, sizeof(m->dst_reason), "%s", ferry_error_msg());
	ferry_net_session_close(s);
	return NULL;
}

/* Phases never go back; in post-copy, owed only shrinks, requests grow. */
static void on_progress(const struct ferry_progress *p, void *arg)
{
	struct mig *m = arg;

	if (m->nr_progress++ && p->phase < m->last_phase)
		m->progress_disorder++;
	m->last_phase = p->phase;
	if (p->phase != FERRY_PHASE_POSTCOPY)
		return;
	if (m->nr_postcopy_progress++ &&
	    (p->remaining > m->postcopy_remaining ||
	     p->pages_requested < m->postcopy_requested))
		m->postcopy_backwards = true;
	m->postcopy_remaining = p->remaining;
	m->postcopy_requested = p->pages_requested;
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
		      ferry_vcpu_mp_state_name(rep.vcpu[i].mp_state),
		      ferry_vcpu_mp_state_name(want[i]));
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
	ferry_hist_init(&m->latency);
	config(m, &cfg);
	CHECK_OK(ctx, ferry_guest_vm_create(&cfg, m->backing, m->mem, &src));
	CHECK_OK(ctx, ferry_guest_start(src->guest));
	usleep(m->warmup_ms * 1000);
	CHECK_OK(ctx, rig_wait_power_events(src, m->workload));
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL,
					      &m->listener));
	CHECK_EQ(ctx, pthread_create(&dest, NULL, dest_main, m), 0);
	ferry_migrate_opts_init(&o);
	o.mode = m->mode;
	o.progress = on_progress;
	o.progress_arg = m;
	o.progress_ms = 10;
	o.postcopy_at_once = m->at_once;
	ret = connect_and_send(m, src, &o);
	pthread_join(dest, NULL);
	ferry_net_listener_close(m->listener);
	CHECK(ctx, ret == 0, "source: %s (destination: %s)", ferry_error_msg(),
	      m->dst_ret ? m->dst_reason : "ok");
	CHECK(ctx, m->dst_ret == 0, "destination: %s", m->dst_reason);
	if (getenv("FERRY_TEST_VERBOSE"))
		fprintf(stderr, "    %s: %u rounds, %llu pages, %llu zero, "
			"%llu pushed; dest %llu minor %llu missing %llu "
			"requested, downtime %.3f ms\n",
			ferry_migrate_mode_name(m->src_stats.mode), m->src_stats.rounds,
			(unsigned long long)m->src_stats.pages_sent,
			(unsigned long long)m->src_stats.zero_pages,
			(unsigned long long)m->src_stats.pages_pushed,
			(unsigned long long)m->dst_stats.minor_faults,
			(unsigned long long)m->dst_stats.missing_faults,
			(unsigned long long)m->dst_stats.pages_requested,
			m->src_stats.downtime_ns / 1e6);
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
	CHECK(ctx, fault_counts_meaningless() ||
	      m.dst_stats.faults_per_installed_page < 0.01,
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
	/* The whole distribution is the one the percentiles came from. */
	CHECK_EQ(ctx, ferry_hist_count(&m.latency) > 0,
		 m.dst_stats.pages_requested > 0);
	CHECK_EQ(ctx, ferry_hist_percentile(&m.latency, 50),
		 m.dst_stats.fault_latency_p50_ns);
	CHECK_EQ(ctx, ferry_hist_max(&m.latency),
		 m.dst_stats.fault_latency_max_ns);
	/* Progress: in order, and post-copy's counts move one way. */
	CHECK_EQ(ctx, m.progress_disorder, 0);
	CHECK_EQ(ctx, m.last_phase, FERRY_PHASE_DONE);
	CHECK(ctx, m.nr_postcopy_progress > 0, "no post-copy progress call");
	CHECK(ctx, !m.postcopy_backwards, "post-copy progress went backwards");
	CHECK(ctx, m.postcopy_requested <= m.src_stats.pages_requested,
	      "progress saw %llu requests, the source %llu in all",
	      (unsigned long long)m.postcopy_requested,
	      (unsigned long long)m.src_stats.pages_requested);
	return TEST_PASS;
}

/*
 * No live pass: nothing before the pause, every page that exists owed
 * after it, and a good share of them the vCPUs ask for.
 */
static enum test_result postcopy_at_once(struct test_ctx *ctx)
{
	struct mig m = { .mode = FERRY_MODE_POSTCOPY, .workload = DIRTYING,
			 .vcpus = 3, .channels = 2, .mem = 32 << 20,
			 .warmup_ms = 100, .at_once = true };
	enum test_result res = migrate_once(ctx, &m);

	if (res != TEST_PASS)
		return res;
	CHECK_EQ(ctx, m.src_stats.mode, FERRY_MODE_POSTCOPY);
	CHECK_EQ(ctx, m.src_stats.rounds, 0);
	CHECK(ctx, m.src_stats.pages_pushed + m.src_stats.pages_requested > 0,
	      "nothing owed after the pause");
	CHECK_EQ(ctx, m.src_stats.pages_sent + m.src_stats.zero_pages,
		 m.src_stats.pages_pushed + m.src_stats.pages_requested);
	return TEST_PASS;
}

/* Only post-copy can skip the live pass; asked of hybrid, it is refused. */
static enum test_result at_once_needs_postcopy(struct test_ctx *ctx)
{
	struct ferry_guest_config cfg;
	struct ferry_migrate_opts o;
	struct ferry_guest_vm *src;
	struct mig m = { .workload = DIRTYING, .vcpus = 3, .channels = 1 };
	pthread_t dest;
	int ret;

	config(&m, &cfg);
	m.dd = (struct ferry_guest_dest){ .keep_backing = true };
	CHECK_OK(ctx, ferry_guest_vm_create(&cfg, ctx->backing, 8 << 20,
					    &src));
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL,
					      &m.listener));
	CHECK_EQ(ctx, pthread_create(&dest, NULL, dest_main, &m), 0);
	ferry_migrate_opts_init(&o);
	o.postcopy_at_once = true;
	ret = connect_and_send(&m, src, &o);
	pthread_join(dest, NULL);
	ferry_net_listener_close(m.listener);
	CHECK_EQ(ctx, ret, -EINVAL);
	CHECK(ctx, m.dst_ret != 0, "the destination got a VM");
	ferry_guest_vm_destroy(m.dd.gv);
	ferry_guest_vm_destroy(src);
	return TEST_PASS;
}

static enum test_result hybrid(struct test_ctx *ctx)
{
	struct mig m = { .mode = FERRY_MODE_HYBRID, .workload = DIRTYING,
			 .vcpus = 3, .channels = 3, .mem = 32 << 20,
			 .warmup_ms = 100 };

	enum test_result res = migrate_once(ctx, &m);

	if (res != TEST_PASS)
		return res;
	CHECK_EQ(ctx, m.progress_disorder, 0);
	CHECK_EQ(ctx, m.last_phase, FERRY_PHASE_DONE);
	CHECK(ctx, m.nr_progress >= m.src_stats.rounds + 2,
	      "%u progress calls for %u rounds", m.nr_progress,
	      m.src_stats.rounds);
	return TEST_PASS;
}

/* ---- two hosts: network namespaces joined by a shaped veth pair ---- */

struct far_result {
	int ret;
	char reason[400];
	struct ferry_migrate_stats stats;
	struct ferry_verify_report report;
};

/* The destination host: receive, run on, verify, report up the pipe. */
static void far_dest(struct netns_pair *ns, int fd)
{
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct far_result res = { 0 };
	struct ferry_listener *l = NULL;
	struct ferry_session *s = NULL;
	struct ferry_vm vm;

	res.ret = netns_enter(ns, 'b') ? -errno : 0;
	if (!res.ret)
		res.ret = ferry_net_listener_open(NETNS_ADDR_B ":7650",
			&(struct ferry_net_opts){ .insecure = true }, &l);
	if (!res.ret)
		res.ret = ferry_net_accept(l, 30000, &s);
	if (!res.ret)
		res.ret = ferry_migrate_recv(s, ferry_guest_vm_dest_ops(), &dd,
					     NULL, &vm, &res.stats);
	snprintf(res.reason, sizeof(res.reason), "%s", ferry_error_msg());
	ferry_net_session_close(s);
	ferry_net_listener_close(l);
	if (!res.ret) {
		usleep(200000);
		res.ret = ferry_guest_stop(dd.gv->guest);
		if (!res.ret)
			res.ret = ferry_guest_verify(dd.gv->guest, &res.report);
	}
	if (write(fd, &res, sizeof(res)) != sizeof(res))
		_exit(2);
	_exit(0);
}

/*
 * Let the source VM write `writes` cells first, so the first pass has
 * something to send whatever the speed of this machine's first touches.
 */
static void warm_up(struct ferry_guest *g, uint64_t writes)
{
	struct ferry_guest_stats st;

	for (int i = 0; i < 500; i++) {
		ferry_guest_stats(g, &st);
		if (st.writes >= writes)
			return;
		usleep(10000);
	}
}

/* Connect, retrying while the other host's listener comes up. */
static int far_connect(unsigned int channels, struct ferry_session **s)
{
	int ret = -ECONNREFUSED;

	for (int i = 0; i < 200 && ret == -ECONNREFUSED; i++) {
		ret = ferry_net_connect(NETNS_ADDR_B ":7650", channels,
			&(struct ferry_net_opts){ .insecure = true }, s);
		if (ret == -ECONNREFUSED)
			usleep(10000);
	}
	return ret;
}

static enum test_result far_check(struct test_ctx *ctx,
				  const struct far_result *res,
				  const enum ferry_mp_state *want,
				  unsigned int vcpus)
{
	const struct ferry_verify_report *rep = &res->report;

	CHECK(ctx, res->ret == 0, "destination: %s", res->reason);
	CHECK(ctx, rep->ok, "verifier at the destination: %llu lost, %llu "
	      "torn, %llu duplicated", (unsigned long long)rep->lost,
	      (unsigned long long)rep->torn,
	      (unsigned long long)rep->duplicated);
	for (unsigned int i = 0; i < vcpus; i++)
		CHECK(ctx, rep->vcpu[i].mp_state == want[i], "vCPU %u is %s, "
		      "was %s", i, ferry_vcpu_mp_state_name(rep->vcpu[i].mp_state),
		      ferry_vcpu_mp_state_name(want[i]));
	return TEST_PASS;
}

/*
 * Migrate post-copy from host a to host b over the shaped link.  The
 * link's limits keep the background push from outrunning the guest, so
 * the destination serves demand faults of both kinds: stale pages it
 * holds (minor) and pages it does not (missing).  hotcold: the hot set is
 * stale at switchover and touched at once; the cold writes land in holes.
 */
static enum test_result far_migrate(struct test_ctx *ctx, const char *shape)
{
	enum ferry_mp_state want[FERRY_GUEST_MAX_VCPUS];
	struct mig m = { .workload = "hotcold,hot=2,hotw=90,read=30,off=2@100",
			 .vcpus = 3, .mem = 128 << 20 };
	struct netns_pair ns = { 0 };
	struct ferry_guest_config cfg;
	struct ferry_migrate_opts o;
	struct ferry_guest_vm *src;
	struct ferry_session *s;
	struct far_result res;
	enum test_result tr;
	char why[200];
	int fds[2], ret;
	pid_t child;

	if (netns_setup(&ns, shape, why, sizeof(why)))
		SKIP(ctx, "%s", why);
	CHECK_EQ(ctx, pipe(fds), 0);
	child = fork();
	if (child == 0)
		far_dest(&ns, fds[1]);
	close(fds[1]);
	CHECK_EQ(ctx, netns_enter(&ns, 'a'), 0);
	config(&m, &cfg);
	CHECK_OK(ctx, ferry_guest_vm_create(&cfg, ctx->backing, m.mem, &src));
	CHECK_OK(ctx, ferry_guest_start(src->guest));
	warm_up(src->guest, 3000);
	CHECK_OK(ctx, rig_wait_power_events(src, m.workload));
	ferry_migrate_opts_init(&o);
	o.mode = FERRY_MODE_POSTCOPY;
	ret = far_connect(1, &s);
	if (!ret)
		ret = ferry_migrate_send(&src->vm, s, &o, &m.src_stats);
	snprintf(why, sizeof(why), "%s", ferry_error_msg());
	ferry_net_session_close(s);
	source_states(src, want);
	CHECK_EQ(ctx, read(fds[0], &res, sizeof(res)), sizeof(res));
	waitpid(child, NULL, 0);
	netns_teardown(&ns);
	CHECK(ctx, ret == 0, "source: %s (destination: %s)", why,
	      res.ret ? res.reason : "ok");
	tr = far_check(ctx, &res, want, m.vcpus);
	if (tr != TEST_PASS)
		return tr;
	/*
	 * Both kinds on 4 KiB pages.  A 2 MiB hugetlb page that is written
	 * often is torn in the live pass (it changed while being sent), so
	 * it arrives later as a missing page rather than a stale one: there
	 * the demand faults are checked, not their kinds.
	 */
	CHECK(ctx, res.stats.pages_requested > 0 &&
	      (ctx->backing == FERRY_BACKING_HUGETLB ||
	       (res.stats.minor_faults > 0 && res.stats.missing_faults > 0)),
	      "faults served: %llu minor, %llu missing (%llu requested, %llu "
	      "pushed)", (unsigned long long)res.stats.minor_faults,
	      (unsigned long long)res.stats.missing_faults,
	      (unsigned long long)res.stats.pages_requested,
	      (unsigned long long)m.src_stats.pages_pushed);
	ferry_guest_vm_destroy(src);
	return TEST_PASS;
}

static enum test_result far_tbf(struct test_ctx *ctx)
{
	return far_migrate(ctx, "tbf rate 1gbit burst 128kb latency 100ms");
}

static enum test_result far_netem(struct test_ctx *ctx)
{
	if (!netns_have_netem())
		SKIP(ctx, "tc has no netem: the kernel lacks "
		     "CONFIG_NET_SCH_NETEM (rate-only shaping is tested by "
		     "migrate_netns_tbf_1gbit)");
	return far_migrate(ctx, "netem rate 1gbit delay 1ms");
}

/*
 * A destination that accepts the HEADER, reads a few records and then
 * drops the session.
 */
static void *crashing_dest_main(void *arg)
{
	struct mig *m = arg;
	struct ferry_wire_rec rec;
	struct rawpeer p;

	m->dst_ret = rawpeer_accept_session(&p, m->listener, 20000);
	if (m->dst_ret)
		return NULL;
	m->dst_ret = rawpeer_read_header(&p, 10000);
	if (!m->dst_ret)
		m->dst_ret = rawpeer_accept(&p, 0);
	for (int i = 0; !m->dst_ret && i < 3; i++)
		if (rawpeer_next(&p, p.s->bulk[0], &p.bulk0, 10000, &rec) <= 0)
			m->dst_ret = -EPIPE;
	rawpeer_fini(&p);
	return NULL;
}

/*
 * The connection breaks before switchover: the source reports it, and its
 * VM keeps running, untouched: it makes progress and verifies.
 */
static enum test_result broken_before_switchover(struct test_ctx *ctx)
{
	struct mig m = { .mode = FERRY_MODE_HYBRID, .workload = DIRTYING,
			 .vcpus = 3, .channels = 2, .mem = 32 << 20 };
	struct ferry_verify_report before, after;
	struct ferry_guest_config cfg;
	struct ferry_guest_vm *src;
	pthread_t dest;
	int ret;

	config(&m, &cfg);
	CHECK_OK(ctx, ferry_guest_vm_create(&cfg, ctx->backing, m.mem, &src));
	CHECK_OK(ctx, ferry_guest_start(src->guest));
	usleep(50000);
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL,
					      &m.listener));
	CHECK_EQ(ctx, pthread_create(&dest, NULL, crashing_dest_main, &m), 0);
	ret = connect_and_send(&m, src, NULL);
	pthread_join(dest, NULL);
	ferry_net_listener_close(m.listener);
	CHECK(ctx, ret == -EPIPE || ret == -ECONNRESET,
	      "send returned %d (%s), want a broken connection", ret,
	      ferry_error_msg());
	/* Still running: steps go on. */
	CHECK_OK(ctx, ferry_guest_pause(src->guest));
	CHECK_OK(ctx, ferry_guest_verify(src->guest, &before));
	CHECK_OK(ctx, ferry_guest_resume(src->guest));
	usleep(100000);
	CHECK_OK(ctx, ferry_guest_stop(src->guest));
	CHECK_OK(ctx, ferry_guest_verify(src->guest, &after));
	CHECK(ctx, after.ok, "source VM fails verification after the break: "
	      "%llu lost, %llu torn", (unsigned long long)after.lost,
	      (unsigned long long)after.torn);
	CHECK(ctx, after.vcpu[0].steps > before.vcpu[0].steps,
	      "the source VM stopped making progress");
	CHECK_EQ(ctx, after.vcpu[2].mp_state, FERRY_MP_STOPPED);
	ferry_guest_vm_destroy(src);
	return TEST_PASS;
}

/* Raw bytes for the destination: a real HEADER, then `tail`. */
struct bad_stream {
	const void *tail;
	size_t tail_len;
	bool corrupt_next;	/* flip a byte in a real PAGES record */
	bool other_version;	/* the HEADER says version 1 */
};

/* A PAGES record of page 0 with one byte of its data flipped on the way. */
static int send_corrupt_pages(struct rawpeer *p)
{
	static uint8_t page[4 << 20];
	uint32_t index = 0;
	struct ferry_wire_batch b = { .region = 0, .count = 1,
				      .index = &index, .base = page };
	int ret = ferry_wire_enc_pages(&p->frame, &p->stream, &b);

	page[100] ^= 0x40;	/* after the checksum was taken */
	if (!ret)
		ret = (int)ferry_wire_send(&p->bulk0_w, &p->frame);
	return ret < 0 ? ret : 0;
}

/*
 * What the destination says on the urgent channel before it gives up:
 * the first record of `type` (skipping heartbeats), or -errno.
 */
static int urgent_says(struct rawpeer *p, enum ferry_wire_type type,
		       struct ferry_wire_rec *rec)
{
	int ret;

	do
		ret = rawpeer_next(p, p->s->urgent, &p->urgent, 10000, rec);
	while (ret > 0 && ret != (int)type);
	return ret == (int)type ? 0 : ret < 0 ? ret : -ENOMSG;
}

/* The source side of refuse_stream: its HEADER, then the bad part. */
static enum test_result bad_source(struct test_ctx *ctx, struct rawpeer *p,
				   struct ferry_guest_vm *src,
				   const struct bad_stream *bs)
{
	struct ferry_wire_rec rec;
	struct ferry_wire_error e;

	CHECK_OK(ctx, ferry_wire_stream_init(&p->stream, src->mem,
		 FERRY_WIRE_MIGRATION, src->vm.ops->nr_vcpus(src->guest),
		 src->desc, src->vm.desc_len));
	p->stream.id = 0xfeed;
	if (bs->other_version) {
		CHECK_OK(ctx, rawpeer_send_header_version(p, &p->stream, 1));
		/* Refused with a reason the source can print. */
		CHECK_OK(ctx, urgent_says(p, FERRY_WIRE_ERROR, &rec));
		CHECK_OK(ctx, ferry_wire_dec_error(&rec, &e));
		CHECK(ctx, e.err == EPROTO && strstr(e.msg, "version 1"),
		      "ERROR %d: %s", e.err, e.msg);
		return TEST_PASS;
	}
	CHECK_OK(ctx, ferry_wire_enc_header(&p->frame, &p->stream));
	CHECK(ctx, ferry_wire_send(&p->bulk0_w, &p->frame) > 0, "header");
	CHECK_OK(ctx, urgent_says(p, FERRY_WIRE_ACCEPT, &rec));
	if (bs->corrupt_next) {
		struct ferry_wire_pages pg;

		CHECK_OK(ctx, send_corrupt_pages(p));
		/* Not installed, not dropped: asked for again. */
		CHECK_OK(ctx, urgent_says(p, FERRY_WIRE_REFETCH, &rec));
		CHECK_OK(ctx, ferry_wire_dec_refetch(&p->stream, &rec, &pg));
		CHECK(ctx, pg.count == 1 && pg.index[0] == 0, "REFETCH %u",
		      pg.count);
	}
	if (bs->tail_len) {
		struct iovec iov = { (void *)bs->tail, bs->tail_len };

		ferry_chan_sendv(p->s->bulk[0], &iov, 1);
	}
	return TEST_PASS;
}

static enum test_result refuse_stream(struct test_ctx *ctx,
				      struct bad_stream *bs, int want_err,
				      const char *want_reason)
{
	struct mig m = { .vcpus = 2, .workload = "random", .channels = 1,
			 .mem = 8 << 20 };
	struct ferry_guest_config cfg;
	struct ferry_guest_vm *src;
	struct ferry_session *s;
	enum test_result res;
	struct rawpeer p;
	pthread_t dest;

	m.dd = (struct ferry_guest_dest){ .keep_backing = true };
	config(&m, &cfg);
	CHECK_OK(ctx, ferry_guest_vm_create(&cfg, ctx->backing, m.mem, &src));
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL,
					      &m.listener));
	CHECK_EQ(ctx, pthread_create(&dest, NULL, dest_main, &m), 0);
	CHECK_OK(ctx, ferry_net_connect(ferry_net_listener_addr(m.listener),
					1, NULL, &s));
	CHECK_OK(ctx, rawpeer_init(&p, s));
	res = bad_source(ctx, &p, src, bs);
	/* Bulk 0's stream ends here; the destination ends the session. */
	ferry_chan_shutdown(s->bulk[0]);
	pthread_join(dest, NULL);
	rawpeer_fini(&p);
	ferry_net_listener_close(m.listener);
	if (res != TEST_PASS)
		return res;
	CHECK_EQ(ctx, m.dst_ret, want_err);
	CHECK(ctx, strstr(m.dst_reason, want_reason), "reason '%s' does not "
	      "say '%s'", m.dst_reason, want_reason);
	CHECK(ctx, m.dd.gv == NULL, "the destination kept a half VM");
	ferry_guest_vm_destroy(src);
	return TEST_PASS;
}

/* A page whose data fails its sum: asked for again; never installed. */
static enum test_result corrupt_stream(struct test_ctx *ctx)
{
	struct bad_stream bs = { .corrupt_next = true };

	return refuse_stream(ctx, &bs, -EPIPE, "closed the channel");
}

static enum test_result truncated_stream(struct test_ctx *ctx)
{
	static const uint8_t half_header[20] = { 0x46, 0x52, 2 };
	struct bad_stream bs = { .tail = half_header,
				 .tail_len = sizeof(half_header) };

	return refuse_stream(ctx, &bs, -EPIPE, "ended");
}

static enum test_result garbage_stream(struct test_ctx *ctx)
{
	static uint8_t junk[4096];
	struct bad_stream bs = { .tail = junk, .tail_len = sizeof(junk) };

	memset(junk, 0xa5, sizeof(junk));
	return refuse_stream(ctx, &bs, -EBADMSG, "record");
}

/* A source of another format version: refused, with the reason, at once. */
static enum test_result other_version_source(struct test_ctx *ctx)
{
	struct bad_stream bs = { .other_version = true };

	return refuse_stream(ctx, &bs, -EPROTO, "format version 1");
}

/* The destination side: a raw peer that answers the HEADER as told. */
struct raw_dest {
	struct ferry_listener *listener;
	bool refuse;		/* ERROR(EPROTO), as another version would */
	bool pages_seen;	/* anything but the HEADER on bulk 0 */
	int ret;
};

static void *raw_dest_main(void *arg)
{
	struct raw_dest *rd = arg;
	struct ferry_wire_rec rec;
	struct rawpeer p;

	rd->ret = rawpeer_accept_session(&p, rd->listener, 20000);
	if (rd->ret)
		return NULL;
	rd->ret = rawpeer_read_header(&p, 10000);
	if (!rd->ret && rd->refuse)
		rd->ret = rawpeer_error(&p, EPROTO, "stream is format version "
					"2; this ferry reads version 3");
	/* Silent (or refusing): no guest memory may come now. */
	if (!rd->ret)
		rd->pages_seen = rawpeer_next(&p, p.s->bulk[0], &p.bulk0, 3000,
					      &rec) > 0;
	rawpeer_fini(&p);
	return NULL;
}

/*
 * Version before memory: a source sends its HEADER and no page until the
 * destination accepts it.  One that refuses is heard (the reason is the
 * source's error); one that never answers, nor heartbeats, is a stall.
 * The VM runs on here either way.
 */
static enum test_result waits_for_accept(struct test_ctx *ctx, bool refuse)
{
	struct mig m = { .workload = "random", .vcpus = 2, .channels = 1,
			 .mem = 8 << 20 };
	struct raw_dest rd = { .refuse = refuse };
	struct ferry_verify_report rep;
	struct ferry_guest_config cfg;
	struct ferry_migrate_opts o;
	struct ferry_guest_vm *src;
	pthread_t dest;
	int ret;

	config(&m, &cfg);
	CHECK_OK(ctx, ferry_guest_vm_create(&cfg, ctx->backing, m.mem, &src));
	CHECK_OK(ctx, ferry_guest_start(src->guest));
	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL,
					      &rd.listener));
	m.listener = rd.listener;
	CHECK_EQ(ctx, pthread_create(&dest, NULL, raw_dest_main, &rd), 0);
	ferry_migrate_opts_init(&o);
	o.timeout_ms = 1000;
	o.heartbeat_ms = 100;
	ret = connect_and_send(&m, src, &o);
	pthread_join(dest, NULL);
	ferry_net_listener_close(rd.listener);
	CHECK_EQ(ctx, rd.ret, 0);
	CHECK(ctx, !rd.pages_seen, "the source sent more than its HEADER");
	if (refuse)
		CHECK(ctx, ret == -EPROTO && strstr(ferry_error_msg(),
		      "reads version 3"), "send: %d (%s)", ret,
		      ferry_error_msg());
	else
		CHECK(ctx, ret == -ETIMEDOUT && strstr(ferry_error_msg(),
		      "no progress"), "send: %d (%s)", ret, ferry_error_msg());
	CHECK_OK(ctx, ferry_guest_stop(src->guest));
	CHECK_OK(ctx, ferry_guest_verify(src->guest, &rep));
	CHECK(ctx, rep.ok, "the source VM fails verification");
	ferry_guest_vm_destroy(src);
	return TEST_PASS;
}

static enum test_result refused_header(struct test_ctx *ctx)
{
	return waits_for_accept(ctx, true);
}

static enum test_result silent_dest(struct test_ctx *ctx)
{
	return waits_for_accept(ctx, false);
}

static const struct test_case cases[] = {
	{ "migrate_precopy", precopy, B_ALL, FERRY_UFFD_F_WP_ASYNC,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 64, 60 },
	{ "migrate_postcopy", postcopy, B_ALL, FERRY_UFFD_F_WP_ASYNC,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR |
	  NEED_UFFD_MISSING, 64, 60 },
	{ "migrate_postcopy_at_once", postcopy_at_once, B_ALL, 0,
	  NEED_UFFD_MINOR | NEED_UFFD_MISSING, 64, 60 },
	{ "migrate_postcopy_at_once_refused_in_hybrid", at_once_needs_postcopy,
	  B_SHMEM, 0, 0, 8, 30 },
	{ "migrate_hybrid", hybrid, B_ALL, FERRY_UFFD_F_WP_ASYNC,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR |
	  NEED_UFFD_MISSING, 64, 60 },
	{ "migrate_netns_tbf_1gbit_postcopy", far_tbf, B_ALL,
	  FERRY_UFFD_F_WP_ASYNC, NEED_ROOT | NEED_NETNS | NEED_UFFD_WP |
	  NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR | NEED_UFFD_MISSING, 160, 90 },
	{ "migrate_netns_netem_1gbit_1ms_postcopy", far_netem, B_SHMEM,
	  FERRY_UFFD_F_WP_ASYNC, NEED_ROOT | NEED_NETNS | NEED_UFFD_WP |
	  NEED_PAGEMAP_SCAN | NEED_UFFD_MINOR | NEED_UFFD_MISSING, 0, 90 },
	{ "migrate_broken_before_switchover_source_runs_on",
	  broken_before_switchover, B_SHMEM | B_HUGETLB, FERRY_UFFD_F_WP_ASYNC,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 64, 60 },
	{ "migrate_refuses_corrupt_page", corrupt_stream, B_SHMEM, 0, 0, 0,
	  30 },
	{ "migrate_refuses_truncated_stream", truncated_stream, B_SHMEM, 0, 0,
	  0, 30 },
	{ "migrate_refuses_garbage", garbage_stream, B_SHMEM, 0, 0, 0, 30 },
	{ "migrate_dest_refuses_other_version", other_version_source, B_SHMEM,
	  0, 0, 0, 30 },
	{ "migrate_source_hears_refusal", refused_header, B_SHMEM, 0, 0, 0,
	  30 },
	{ "migrate_no_page_before_accept", silent_dest, B_SHMEM, 0, 0, 0, 30 },
};

TEST_SUITE(migrate, cases)
