// SPDX-License-Identifier: MIT
/*
 * Every flow on the KVM VM: pre-copy, post-copy (with and without a live
 * pass: guest-mode faults served MINOR and MISSING), hybrid, snapshots
 * (paused and live), eager and lazy restore, working sets, clones, on
 * every backing, with a dirtying guest and a powered-off vCPU; each ends
 * with the verifier and the power states.  Seed 001's scenario through a
 * migration and through a snapshot restored in another process.  Skipped
 * with KVM's reason where it cannot run (scripts/kvm-nested runs them).
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/clone.h"
#include "ferry/migrate.h"
#include "ferry/net.h"
#include "ferry/restore.h"
#include "ferry/snapshot.h"
#include "kvm_test.h"

#define R	FERRY_MP_RUNNABLE
#define S	FERRY_MP_STOPPED

/* vCPU 2 powers off early and stays off; the others write and read. */
#define OFF_STEP	200
#define SPEC		"random,read=30,off=2@200"
#define SPEC_VCPUS	3
#define SPEC_STEPS	800
#define SPEC_MORE	1600

static const struct ferry_vcpu_ops *ops(void)
{
	return ferry_kvm_vcpu_ops();
}

static void source_states(struct ferry_kvm *k, enum ferry_mp_state *mp,
			  unsigned int nr)
{
	for (unsigned int i = 0; i < nr; i++)
		ops()->get_mp_state(k, i, &mp[i]);
}

/*
 * Until vCPU `vcpu` is off after its scripted CPU_OFF at step `at`, or
 * 60 s.  Off alone is not enough: it is off at boot too, until the boot
 * vCPU powers it on.
 */
static enum test_result wait_off(struct test_ctx *ctx, struct ferry_kvm *k,
				 unsigned int vcpu, uint64_t at)
{
	for (int i = 0; i < 6000; i++) {
		struct ferry_guest_stats st;
		enum ferry_mp_state mp;

		CHECK_OK(ctx, ops()->get_mp_state(k, vcpu, &mp));
		ferry_kvm_stats(k, &st);
		if (mp == S && st.vcpu[vcpu].steps >= at)
			return TEST_PASS;
		CHECK(ctx, !ferry_kvm_error(k)[0], "guest: %s",
		      ferry_kvm_error(k));
		usleep(10000);
	}
	FAIL(ctx, "vCPU %u never powered off", vcpu);
}

/*
 * How KVM maps the destination's memory once it has run on (after
 * post-copy on THP, ferry's view is huge again: -v shows it above), as
 * far as KVM shows it: with shadow paging, 4 KiB, the guest's own size.
 */
static void kvm_pages(struct ferry_kvm *k)
{
	struct ferry_kvm_pages p;

	if (ferry_kvm_page_sizes(k, &p))
		fprintf(stderr, "    KVM's mappings: %s\n", ferry_error_msg());
	else
		fprintf(stderr, "    KVM maps %llu pages of 4 KiB, %llu of "
			"2 MiB, %llu of 1 GiB\n",
			(unsigned long long)p.pages_4k,
			(unsigned long long)p.pages_2m,
			(unsigned long long)p.pages_1g);
}

/* Run on at a destination, stop at step boundaries, check. */
static enum test_result run_on_check(struct test_ctx *ctx,
				     struct ferry_kvm *k,
				     const enum ferry_mp_state *want,
				     unsigned int nr)
{
	usleep(200000);		/* the guest runs on, faulting pages in */
	CHECK_OK(ctx, ferry_kvm_stop(k));
	return kvt_check(ctx, k, want, nr);
}

/* ---- migration ---------------------------------------------------------- */

struct kmig {
	enum ferry_mode mode;
	bool at_once;
	struct ferry_kvm_dest dd;
	struct ferry_listener *listener;
	struct ferry_migrate_stats src_st, dst_st;
	int dst_ret;
	char dst_reason[512];
};

static void *dest_main(void *arg)
{
	struct kmig *m = arg;
	struct ferry_session *s = NULL;
	struct ferry_migrate_opts o;
	struct ferry_vm vm;
	int ret = ferry_net_accept(m->listener, 60000, &s);

	ferry_migrate_opts_init(&o);
	o.timeout_ms = 60000;
	if (!ret)
		ret = ferry_migrate_recv(s, ferry_kvm_vm_dest_ops(), &m->dd, &o,
					 &vm, &m->dst_st);
	m->dst_ret = ret;
	snprintf(m->dst_reason, sizeof(m->dst_reason), "%s",
		 ferry_error_msg());
	ferry_net_session_close(s);
	return NULL;
}

static int send_vm(struct kmig *m, struct ferry_kvm_vm *kv)
{
	struct ferry_migrate_opts o;
	struct ferry_session *s;
	int ret = ferry_net_connect(ferry_net_listener_addr(m->listener), 2,
				    NULL, &s);

	if (ret)
		return ret;
	ferry_migrate_opts_init(&o);
	o.mode = m->mode;
	o.postcopy_at_once = m->at_once;
	/*
	 * At once, every page comes after the vCPUs resume: slowed to
	 * 4 MB/s (a second or so for what this guest wrote, a few with
	 * 2 MiB pages), the push leaves them pages to fault on from guest
	 * mode.
	 */
	o.bandwidth_bps = m->at_once ? 4000000 : 0;
	o.timeout_ms = 60000;
	ret = ferry_migrate_send(&kv->vm, s, &o, &m->src_st);
	ferry_net_session_close(s);
	return ret;
}

/* Migrate kv (running) over loopback into m->dd's VM. */
static enum test_result migrate(struct test_ctx *ctx, struct kmig *m,
				struct ferry_kvm_vm *kv)
{
	pthread_t dest;
	int ret;

	CHECK_OK(ctx, ferry_net_listener_open("127.0.0.1:0", NULL,
					      &m->listener));
	CHECK_EQ(ctx, pthread_create(&dest, NULL, dest_main, m), 0);
	ret = send_vm(m, kv);
	pthread_join(dest, NULL);
	ferry_net_listener_close(m->listener);
	CHECK(ctx, ret == 0, "source: %s (destination: %s)", ferry_error_msg(),
	      m->dst_ret ? m->dst_reason : "ok");
	CHECK(ctx, m->dst_ret == 0, "destination: %s", m->dst_reason);
	CHECK(ctx, m->dd.kv, "no VM at the destination");
	if (getenv("FERRY_TEST_VERBOSE"))
		fprintf(stderr, "    %s: %u rounds, %llu pages, downtime %.3f "
			"ms; dest %llu minor %llu missing faults, %llu KiB "
			"PMD-mapped in ferry's view\n",
			ferry_migrate_mode_name(m->src_st.mode),
			m->src_st.rounds,
			(unsigned long long)m->src_st.pages_sent,
			m->src_st.downtime_ns / 1e6,
			(unsigned long long)m->dst_st.minor_faults,
			(unsigned long long)m->dst_st.missing_faults,
			(unsigned long long)m->dst_st.pmd_mapped_bytes >> 10);
	return TEST_PASS;
}

static enum test_result migrate_mode(struct test_ctx *ctx, enum ferry_mode mode,
				     bool at_once)
{
	struct kmig m = { .mode = mode, .at_once = at_once,
			  .dd = { .keep_backing = true } };
	enum ferry_mp_state want[SPEC_VCPUS];
	struct ferry_kvm_vm *kv;

	KVM_OR_SKIP(ctx);
	TRY(kvt_create(ctx, &kv, SPEC_VCPUS, SPEC, 0, KVM_TEST_MEM));
	CHECK_OK(ctx, ferry_kvm_start(kv->kvm));
	TRY(wait_off(ctx, kv->kvm, 2, OFF_STEP));
	TRY(migrate(ctx, &m, kv));
	source_states(kv->kvm, want, SPEC_VCPUS);
	CHECK(ctx, want[2] == S && want[0] == R, "the source's states");
	TRY(run_on_check(ctx, m.dd.kv->kvm, want, SPEC_VCPUS));
	if (getenv("FERRY_TEST_VERBOSE"))
		kvm_pages(m.dd.kv->kvm);
	if (mode == FERRY_MODE_POSTCOPY && at_once)
		CHECK(ctx, m.dst_st.missing_faults > 0, "post-copy with no "
		      "live pass took no MISSING fault from guest mode");
	ferry_kvm_vm_destroy(m.dd.kv);
	ferry_kvm_vm_destroy(kv);
	return TEST_PASS;
}

static enum test_result precopy(struct test_ctx *ctx)
{
	return migrate_mode(ctx, FERRY_MODE_PRECOPY, false);
}

static enum test_result postcopy(struct test_ctx *ctx)
{
	return migrate_mode(ctx, FERRY_MODE_POSTCOPY, false);
}

static enum test_result postcopy_at_once(struct test_ctx *ctx)
{
	return migrate_mode(ctx, FERRY_MODE_POSTCOPY, true);
}

static enum test_result hybrid(struct test_ctx *ctx)
{
	return migrate_mode(ctx, FERRY_MODE_HYBRID, false);
}

/* ---- snapshots ---------------------------------------------------------- */

static int snap_fd(void)
{
	return open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
}

/* The most vCPUs a case's source has (seed 001's four). */
#define SRC_MAX_VCPUS	4

/*
 * A source run to `steps`, settled, paused, checked; with `in_config`,
 * its configuration's step limit is `steps` too, so that what is built
 * from its description (a clone) settles there as well.
 */
struct src {
	struct ferry_kvm_vm *kv;
	enum ferry_mp_state mp[SRC_MAX_VCPUS];
	uint64_t digest;
};

static enum test_result make_src_limited(struct test_ctx *ctx, struct src *s,
					 const char *spec, unsigned int vcpus,
					 uint64_t steps, bool in_config)
{
	CHECK(ctx, vcpus <= SRC_MAX_VCPUS, "%u vCPUs", vcpus);
	TRY(kvt_create(ctx, &s->kv, vcpus, spec, in_config ? steps : 0,
		       KVM_TEST_MEM));
	TRY(kvt_run_to(ctx, s->kv->kvm, steps));
	source_states(s->kv->kvm, s->mp, vcpus);
	TRY(kvt_check(ctx, s->kv->kvm, s->mp, vcpus));
	CHECK_OK(ctx, ferry_kvm_digest(s->kv->kvm, &s->digest));
	return TEST_PASS;
}

static enum test_result make_src(struct test_ctx *ctx, struct src *s,
				 const char *spec, unsigned int vcpus,
				 uint64_t steps)
{
	return make_src_limited(ctx, s, spec, vcpus, steps, false);
}

static enum test_result save(struct test_ctx *ctx, struct ferry_kvm_vm *kv,
			     int fd, bool live)
{
	struct ferry_snapshot_opts o = { .live = live };
	struct ferry_snapshot_stats st;

	CHECK_OK(ctx, ferry_snapshot_save(&kv->vm, fd, &o, &st));
	return TEST_PASS;
}

static enum test_result restore_run(struct test_ctx *ctx, int fd,
				    const struct ferry_restore_opts *o,
				    const enum ferry_mp_state *want,
				    struct ferry_restore_stats *st)
{
	struct ferry_kvm_dest dd = { .keep_backing = true };
	struct ferry_restore *rs;

	CHECK_OK(ctx, ferry_restore_start(fd, ferry_kvm_vm_dest_ops(), &dd, o,
					  &rs));
	CHECK(ctx, dd.kv, "no VM built");
	CHECK_OK(ctx, ferry_kvm_set_step_limit(dd.kv->kvm, SPEC_MORE));
	CHECK_OK(ctx, ferry_kvm_wait_settled(dd.kv->kvm, 120000));
	CHECK_OK(ctx, ferry_restore_finish(rs, st));
	CHECK_OK(ctx, ferry_kvm_pause(dd.kv->kvm));
	TRY(kvt_check(ctx, dd.kv->kvm, want, SPEC_VCPUS));
	ferry_restore_destroy(rs);
	ferry_kvm_vm_destroy(dd.kv);
	return TEST_PASS;
}

static enum test_result snap_restore(struct test_ctx *ctx, bool live)
{
	struct ferry_restore_opts eager = { .mode = FERRY_RESTORE_EAGER };
	struct ferry_restore_opts lazy = { .mode = FERRY_RESTORE_LAZY };
	struct ferry_restore_stats st;
	int fd = snap_fd();
	struct src s;

	KVM_OR_SKIP(ctx);
	CHECK(ctx, fd >= 0, "O_TMPFILE in /tmp: %s", strerror(errno));
	if (live) {
		/* Saved while the guest writes: the image of the pause. */
		TRY(kvt_create(ctx, &s.kv, SPEC_VCPUS, SPEC, 0, KVM_TEST_MEM));
		CHECK_OK(ctx, ferry_kvm_start(s.kv->kvm));
		TRY(wait_off(ctx, s.kv->kvm, 2, OFF_STEP));
		TRY(save(ctx, s.kv, fd, true));
		CHECK_OK(ctx, ferry_kvm_pause(s.kv->kvm));
		source_states(s.kv->kvm, s.mp, SPEC_VCPUS);
		s.mp[0] = s.mp[1] = R;
		s.mp[2] = S;
	} else {
		TRY(make_src(ctx, &s, SPEC, SPEC_VCPUS, SPEC_STEPS));
		TRY(save(ctx, s.kv, fd, false));
	}
	ferry_kvm_vm_destroy(s.kv);
	TRY(restore_run(ctx, fd, &eager, s.mp, &st));
	TRY(restore_run(ctx, fd, &lazy, s.mp, &st));
	CHECK(ctx, st.minor_faults + st.missing_faults > 0 || st.filled > 0,
	      "a lazy restore that served nothing");
	close(fd);
	return TEST_PASS;
}

static enum test_result snap_paused(struct test_ctx *ctx)
{
	return snap_restore(ctx, false);
}

static enum test_result snap_live(struct test_ctx *ctx)
{
	return snap_restore(ctx, true);
}

/* Record the first touches of a lazy restore, then prefetch them. */
static enum test_result working_set(struct test_ctx *ctx)
{
	struct ferry_restore_opts rec = { .mode = FERRY_RESTORE_LAZY,
					  .record_ws = true };
	struct ferry_restore_opts pre = { .mode = FERRY_RESTORE_LAZY };
	struct ferry_kvm_dest dd = { .keep_backing = true };
	struct ferry_restore_stats st;
	struct ferry_restore *rs;
	char path[] = "/tmp/ferry-kvm-ws-XXXXXX";
	int fd = snap_fd(), wsfd;
	struct src s;

	KVM_OR_SKIP(ctx);
	wsfd = mkstemp(path);
	CHECK(ctx, fd >= 0 && wsfd >= 0, "temporary files: %s",
	      strerror(errno));
	close(wsfd);
	TRY(make_src(ctx, &s, SPEC, SPEC_VCPUS, SPEC_STEPS));
	TRY(save(ctx, s.kv, fd, false));
	ferry_kvm_vm_destroy(s.kv);
	CHECK_OK(ctx, ferry_restore_start(fd, ferry_kvm_vm_dest_ops(), &dd,
					  &rec, &rs));
	CHECK_OK(ctx, ferry_kvm_set_step_limit(dd.kv->kvm, SPEC_MORE));
	CHECK_OK(ctx, ferry_kvm_wait_settled(dd.kv->kvm, 120000));
	CHECK_OK(ctx, ferry_kvm_pause(dd.kv->kvm));
	CHECK_OK(ctx, ferry_restore_finish(rs, &st));
	CHECK(ctx, st.ws_recorded > 0, "no first touch recorded");
	CHECK_OK(ctx, ferry_restore_save_ws(rs, path));
	TRY(kvt_check(ctx, dd.kv->kvm, s.mp, SPEC_VCPUS));
	ferry_restore_destroy(rs);
	ferry_kvm_vm_destroy(dd.kv);
	pre.prefetch_ws = path;
	TRY(restore_run(ctx, fd, &pre, s.mp, &st));
	CHECK(ctx, st.prefetched > 0, "nothing prefetched");
	unlink(path);
	close(fd);
	return TEST_PASS;
}

/*
 * Clones: private mappings of one shared snapshot under MINOR; each runs
 * on, writing its own copies, and is verified; the snapshot stays.  A
 * clone resumes as it is made, with the step limit of the source's
 * configuration (SPEC_STEPS, where the snapshot was taken): until told
 * otherwise it only settles, writing nothing.
 */
static enum test_result clones(struct test_ctx *ctx)
{
	struct ferry_clone_source *cs;
	struct ferry_clone *c[2];
	struct ferry_clone_mem cm;
	struct ferry_kvm *k0, *k1;
	uint64_t digest;
	int fd = snap_fd();
	struct src s;

	KVM_OR_SKIP(ctx);
	CHECK(ctx, fd >= 0, "O_TMPFILE in /tmp: %s", strerror(errno));
	TRY(make_src_limited(ctx, &s, SPEC, SPEC_VCPUS, SPEC_STEPS, true));
	TRY(save(ctx, s.kv, fd, false));
	ferry_kvm_vm_destroy(s.kv);
	CHECK_OK(ctx, ferry_clone_source_create(fd, &cs));
	for (int i = 0; i < 2; i++)
		CHECK_OK(ctx, ferry_clone_create(cs, ferry_kvm_vm_clone_ops(),
						 NULL, &c[i]));
	k0 = ferry_clone_vm(c[0])->handle;
	k1 = ferry_clone_vm(c[1])->handle;
	TRY(kvt_settle(ctx, k0, SPEC_MORE));
	TRY(kvt_check(ctx, k0, s.mp, SPEC_VCPUS));
	CHECK_OK(ctx, ferry_clone_memory(c[0], &cm));
	CHECK(ctx, cm.private_bytes > 0, "clone 0 wrote no page of its own");
	/* Clone 1 only settled: it still holds the snapshot. */
	TRY(kvt_settle(ctx, k1, SPEC_STEPS));
	CHECK_OK(ctx, ferry_kvm_digest(k1, &digest));
	CHECK(ctx, digest == s.digest, "clone 1 sees clone 0's writes");
	TRY(kvt_check(ctx, k1, s.mp, SPEC_VCPUS));
	for (int i = 0; i < 2; i++) {
		CHECK_OK(ctx, ferry_clone_error(c[i]));
		ferry_clone_destroy(c[i]);
	}
	ferry_clone_source_destroy(cs);
	close(fd);
	return TEST_PASS;
}

/* ---- seed 001 ----------------------------------------------------------- */

/*
 * Run on, then SYSTEM_RESET: the source's boot configuration (vCPU 0
 * on), whatever the destination created; the boot vCPU powers the others
 * on again.
 */
static enum test_result seed_after(struct test_ctx *ctx, struct ferry_kvm *k)
{
	struct ferry_guest_stats st;

	TRY(kvt_settle(ctx, k, 1500));
	TRY(kvt_check(ctx, k, (enum ferry_mp_state[]){ R, R, S, R }, 4));
	ferry_kvm_stats(k, &st);
	for (unsigned int i = 0; i < 4; i++)
		CHECK_EQ(ctx, st.vcpu[i].steps, i == 2 ? 300 : 1500);
	CHECK_OK(ctx, ops()->reset(k));
	TRY(kvt_expect_mp(ctx, k, (enum ferry_mp_state[]){ R, S, S, S }, 4));
	TRY(kvt_run_to(ctx, k, 2000));
	TRY(kvt_check(ctx, k, (enum ferry_mp_state[]){ R, R, R, R }, 4));
	ferry_kvm_stats(k, &st);
	for (unsigned int i = 0; i < 4; i++)
		CHECK_EQ(ctx, st.vcpu[i].steps, 2000);
	return TEST_PASS;
}

/* The destination's vCPUs created with other power-off bits. */
#define OTHER_BITS	(1ULL << 0 | 1ULL << 2 | 1ULL << 3)

static enum test_result seed_src(struct test_ctx *ctx, struct src *s)
{
	/*
	 * The limit in the configuration too: what is built from the
	 * description (the destination, the restored VM) settles at 1000
	 * as it resumes, and runs on to exactly 1500 when told.
	 */
	TRY(make_src_limited(ctx, s, "random,off=2@300", 4, 1000, true));
	for (unsigned int i = 0; i < 4; i++)
		CHECK_EQ(ctx, s->mp[i], i == 2 ? S : R);
	return TEST_PASS;
}

static enum test_result seed001_migrate(struct test_ctx *ctx)
{
	struct kmig m = { .mode = FERRY_MODE_PRECOPY,
		.dd = { .keep_backing = true, .boot_off_set = true,
			.boot_off_mask = OTHER_BITS } };
	struct src s;

	KVM_OR_SKIP(ctx);
	TRY(seed_src(ctx, &s));
	CHECK_OK(ctx, ferry_kvm_resume(s.kv->kvm));	/* settled: idle */
	TRY(migrate(ctx, &m, s.kv));
	TRY(seed_after(ctx, m.dd.kv->kvm));
	ferry_kvm_vm_destroy(m.dd.kv);
	ferry_kvm_vm_destroy(s.kv);
	return TEST_PASS;
}

static const struct ferry_dest_ops *dest_ops(void)
{
	return ferry_kvm_vm_dest_ops();
}

/* The restore, run in a process of its own (tvm_restore_in_child). */
static enum test_result seed_restore(struct test_ctx *ctx, int fd,
				     enum ferry_restore_mode mode)
{
	struct ferry_restore_opts o = { .mode = mode };
	struct ferry_kvm_dest dd = { .keep_backing = true,
		.boot_off_set = true, .boot_off_mask = OTHER_BITS };
	struct ferry_restore *rs;

	CHECK_OK(ctx, ferry_restore_start(fd, dest_ops(), &dd, &o, &rs));
	CHECK_OK(ctx, ferry_restore_finish(rs, NULL));
	TRY(seed_after(ctx, dd.kv->kvm));
	ferry_restore_destroy(rs);
	ferry_kvm_vm_destroy(dd.kv);
	return TEST_PASS;
}

static enum test_result seed001_snapshot(struct test_ctx *ctx)
{
	int fd = snap_fd();
	struct src s;

	KVM_OR_SKIP(ctx);
	CHECK(ctx, fd >= 0, "O_TMPFILE in /tmp: %s", strerror(errno));
	TRY(seed_src(ctx, &s));
	TRY(save(ctx, s.kv, fd, false));
	ferry_kvm_vm_destroy(s.kv);
	TRY(tvm_restore_in_child(ctx, fd, FERRY_RESTORE_EAGER, seed_restore));
	TRY(tvm_restore_in_child(ctx, fd, FERRY_RESTORE_LAZY, seed_restore));
	close(fd);
	return TEST_PASS;
}

#define NEED_LAZY	(NEED_UFFD_MISSING | NEED_UFFD_MINOR)

static const struct test_case cases[] = {
	{ "kvm_precopy", precopy, B_ALL, 0, 0, 0, 300 },
	{ "kvm_postcopy", postcopy, B_ALL, 0, NEED_LAZY, 0, 300 },
	{ "kvm_postcopy_at_once", postcopy_at_once, B_ALL, 0, NEED_LAZY, 0,
	  300 },
	{ "kvm_hybrid", hybrid, B_ALL, 0, NEED_LAZY, 0, 300 },
	{ "kvm_snapshot", snap_paused, B_ALL, 0, NEED_LAZY, 0, 300 },
	{ "kvm_snapshot_live", snap_live, B_ALL, 0, NEED_LAZY | NEED_UFFD_WP,
	  0, 300 },
	{ "kvm_working_set", working_set, B_ALL, 0, NEED_LAZY, 0, 300 },
	{ "kvm_clones", clones, B_ALL, 0, NEED_LAZY, 96, 300 },
	{ "kvm_seed001_migrate", seed001_migrate, B_SHMEM, 0, 0, 0, 300 },
	{ "kvm_seed001_snapshot", seed001_snapshot, B_SHMEM, 0, NEED_LAZY, 0,
	  300 },
};

TEST_SUITE(kvm_flows, cases)
