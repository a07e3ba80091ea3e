// SPDX-License-Identifier: MIT
/*
 * Snapshots end to end: a workload VM saved to a file (paused or live),
 * restored eagerly and lazily (with a working set recorded, then
 * prefetched), cloned; each restore ends with the verifier and the vCPU
 * power states.  Seed 001's scenario through a file.  Truncated,
 * corrupted and hostile files are refused with a reason.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "ferry-vm/guest_vm.h"
#include "ferry/clone.h"
#include "ferry/restore.h"
#include "ferry/snapshot.h"
#include "guest_test.h"

#define R FERRY_MP_RUNNABLE
#define S FERRY_MP_STOPPED

/* vCPU 2 powers off early; the others write and read. */
#define SPEC		"random,read=30,off=2@200"
#define SPEC_VCPUS	3
#define SPEC_STEPS	1500
#define SPEC_MORE	3000

/* An unnamed file beside the others in /tmp: gone when closed. */
static int snap_fd(void)
{
	return open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
}

/* A source VM run to SPEC_STEPS and paused: its states and digest. */
struct src {
	struct tvm t;
	enum ferry_mp_state mp[FERRY_GUEST_MAX_VCPUS];
	uint64_t digest;
	unsigned int nr_vcpus;
};

static enum test_result make_src(struct test_ctx *ctx, struct src *s,
				 const char *spec, unsigned int vcpus,
				 uint64_t steps)
{
	const struct ferry_vcpu_ops *ops = ferry_guest_vcpu_ops();
	struct ferry_guest_config cfg;

	tvm_config(&cfg, vcpus, spec, steps);
	TRY(tvm_create(ctx, &s->t, &cfg));
	TRY(tvm_settle(ctx, &s->t));
	TRY(tvm_verify_ok(ctx, &s->t, NULL));
	s->nr_vcpus = vcpus;
	for (unsigned int i = 0; i < vcpus; i++)
		CHECK_OK(ctx, ops->get_mp_state(s->t.g, i, &s->mp[i]));
	CHECK_OK(ctx, ferry_guest_digest(s->t.g, &s->digest));
	return TEST_PASS;
}

static struct ferry_vm src_vm(struct src *s, uint8_t *desc, size_t len)
{
	struct ferry_guest_config cfg;
	ssize_t n;

	ferry_guest_get_config(s->t.g, &cfg);
	n = ferry_guest_config_encode(&cfg, desc, len);
	return (struct ferry_vm){ .mem = s->t.mem,
		.ops = ferry_guest_vcpu_ops(), .handle = s->t.g,
		.desc = desc, .desc_len = n > 0 ? (uint32_t)n : 0 };
}

static enum test_result save(struct test_ctx *ctx, struct src *s, int fd,
			     bool live, struct ferry_snapshot_stats *st)
{
	struct ferry_snapshot_opts o = { .live = live };
	uint8_t desc[512];
	struct ferry_vm vm = src_vm(s, desc, sizeof(desc));
	struct ferry_snapshot_stats local;

	CHECK_OK(ctx, ferry_snapshot_save(&vm, fd, &o, st ? st : &local));
	return TEST_PASS;
}

/* Verify and compare power states; the VM must be paused. */
static enum test_result check_guest(struct test_ctx *ctx,
				    struct ferry_guest *g,
				    const enum ferry_mp_state *want,
				    unsigned int nr)
{
	struct ferry_verify_report rep;

	CHECK_OK(ctx, ferry_guest_verify(g, &rep));
	tvm_dump_report(&rep);
	CHECK(ctx, rep.ok, "verifier: %llu lost, %llu torn, %llu duplicated, "
	      "%llu read errors (first cell %llu, %s)",
	      (unsigned long long)rep.lost, (unsigned long long)rep.torn,
	      (unsigned long long)rep.duplicated,
	      (unsigned long long)rep.read_errors,
	      rep.nr_bad ? (unsigned long long)rep.bad[0].cell : 0ULL,
	      rep.nr_bad ? ferry_verify_kind_name(rep.bad[0].kind) : "-");
	CHECK(ctx, rep.cells_written > 0, "nothing was written");
	for (unsigned int i = 0; i < nr; i++)
		CHECK(ctx, rep.vcpu[i].mp_state == want[i],
		      "vCPU %u is %s after restore, was %s", i,
		      ferry_vcpu_mp_state_name(rep.vcpu[i].mp_state),
		      ferry_vcpu_mp_state_name(want[i]));
	return TEST_PASS;
}

/* Run on to `steps`, settle, pause, verify. */
static enum test_result run_on(struct test_ctx *ctx, struct ferry_guest *g,
			       uint64_t steps, const enum ferry_mp_state *want,
			       unsigned int nr)
{
	CHECK_OK(ctx, ferry_guest_set_step_limit(g, steps));
	CHECK_OK(ctx, ferry_guest_wait_settled(g, 20000));
	CHECK_OK(ctx, ferry_guest_pause(g));
	return check_guest(ctx, g, want, nr);
}

static enum test_result restore(struct test_ctx *ctx, int fd,
				const struct ferry_restore_opts *o,
				struct ferry_guest_dest *dd,
				struct ferry_restore **rs)
{
	*dd = (struct ferry_guest_dest){ .keep_backing = true };
	CHECK_OK(ctx, ferry_restore_start(fd, ferry_guest_vm_dest_ops(), dd, o,
					  rs));
	CHECK(ctx, dd->gv, "no VM built");
	return TEST_PASS;
}

static void verbose_stats(const struct ferry_restore_stats *st)
{
	if (!getenv("FERRY_TEST_VERBOSE"))
		return;
	fprintf(stderr, "    restore: running after %.3f ms (open %.3f), "
		"%llu pages, %llu zero, %llu demand, %llu filled, %llu "
		"prefetched, faults %llu minor %llu missing\n",
		st->resume_ns / 1e6, st->open_ns / 1e6,
		(unsigned long long)st->pages,
		(unsigned long long)st->zero_pages,
		(unsigned long long)st->demand_reads,
		(unsigned long long)st->filled,
		(unsigned long long)st->prefetched,
		(unsigned long long)st->minor_faults,
		(unsigned long long)st->missing_faults);
}

/* ---- eager and lazy ----------------------------------------------------- */

/* Eager: the restored memory is the saved memory, bit for bit. */
static enum test_result same_memory(struct test_ctx *ctx,
				    struct ferry_guest *g, const struct src *s)
{
	uint64_t digest;

	CHECK_OK(ctx, ferry_guest_pause(g));
	CHECK_OK(ctx, ferry_guest_digest(g, &digest));
	CHECK(ctx, digest == s->digest, "restored memory differs from saved");
	TRY(check_guest(ctx, g, s->mp, s->nr_vcpus));
	CHECK_OK(ctx, ferry_guest_resume(g));
	return TEST_PASS;
}

/*
 * Save a VM that wrote, restore it.  Lazily, the guest runs on at once,
 * faulting pages in from the file; eagerly, it finds every page there.
 * Either way it runs on and verifies, each vCPU powered as it was.
 */
static enum test_result save_restore(struct test_ctx *ctx,
				     enum ferry_restore_mode mode)
{
	struct ferry_restore_opts o = { .mode = mode };
	struct ferry_restore_stats st;
	struct ferry_guest_dest dd;
	struct ferry_restore *rs;
	struct src s;
	int fd = snap_fd();

	CHECK(ctx, fd >= 0, "O_TMPFILE in /tmp: %s", strerror(errno));
	TRY(make_src(ctx, &s, SPEC, SPEC_VCPUS, SPEC_STEPS));
	TRY(save(ctx, &s, fd, false, NULL));
	TRY(restore(ctx, fd, &o, &dd, &rs));
	if (mode == FERRY_RESTORE_LAZY)
		CHECK_OK(ctx, ferry_guest_set_step_limit(dd.gv->guest,
							 SPEC_MORE));
	CHECK_OK(ctx, ferry_restore_finish(rs, &st));
	verbose_stats(&st);
	CHECK(ctx, st.pages > 0, "nothing was installed");
	if (mode == FERRY_RESTORE_EAGER)
		TRY(same_memory(ctx, dd.gv->guest, &s));
	TRY(run_on(ctx, dd.gv->guest, SPEC_MORE, s.mp, s.nr_vcpus));
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd.gv);
	tvm_destroy(&s.t);
	close(fd);
	return TEST_PASS;
}

static enum test_result eager(struct test_ctx *ctx)
{
	return save_restore(ctx, FERRY_RESTORE_EAGER);
}

static enum test_result lazy(struct test_ctx *ctx)
{
	return save_restore(ctx, FERRY_RESTORE_LAZY);
}

/*
 * Live: the workload dirties memory without a limit while it is saved.
 * The image is the one of the pause: restored, it verifies against the
 * registers saved then (a page saved after a later write would show as
 * a duplicated write), and runs on.
 */
static enum test_result live(struct test_ctx *ctx)
{
	struct ferry_restore_opts o = { .mode = FERRY_RESTORE_EAGER };
	struct ferry_snapshot_stats ss;
	struct ferry_guest_config cfg;
	struct ferry_guest_dest dd;
	struct ferry_restore *rs;
	struct src s = { .nr_vcpus = 2 };
	int fd = snap_fd();

	CHECK(ctx, fd >= 0, "O_TMPFILE in /tmp: %s", strerror(errno));
	tvm_config(&cfg, 2, "random,read=20", 0);
	TRY(tvm_create(ctx, &s.t, &cfg));
	CHECK_OK(ctx, ferry_guest_start(s.t.g));
	usleep(100000);
	TRY(save(ctx, &s, fd, true, &ss));
	if (getenv("FERRY_TEST_VERBOSE"))
		fprintf(stderr, "    live: pause %.3f ms, %llu writes held "
			"(max %.1f us), %llu pages, %llu zero\n",
			ss.pause_ns / 1e6,
			(unsigned long long)ss.held_writes,
			ss.held_max_ns / 1e3, (unsigned long long)ss.pages,
			(unsigned long long)ss.zero_pages);
	CHECK(ctx, ss.pages > 0, "nothing saved");
	/* The source ran on all along. */
	CHECK_OK(ctx, ferry_guest_pause(s.t.g));
	TRY(tvm_verify_ok(ctx, &s.t, NULL));
	TRY(restore(ctx, fd, &o, &dd, &rs));
	CHECK_OK(ctx, ferry_guest_pause(dd.gv->guest));
	TRY(check_guest(ctx, dd.gv->guest, (enum ferry_mp_state[]){ R, R },
			2));
	CHECK_OK(ctx, ferry_guest_resume(dd.gv->guest));
	usleep(50000);
	CHECK_OK(ctx, ferry_guest_pause(dd.gv->guest));
	TRY(check_guest(ctx, dd.gv->guest, (enum ferry_mp_state[]){ R, R },
			2));
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd.gv);
	tvm_destroy(&s.t);
	close(fd);
	return TEST_PASS;
}

/* ---- seed 001 ----------------------------------------------------------- */

/*
 * The VM the restore builds: the snapshot's machine, but its vCPUs
 * created with other power-off bits (vCPUs 0, 2, 3 off at boot).
 */
static int other_bits_create(void *arg, const struct ferry_wire_stream *s,
			     struct ferry_vm *vm)
{
	struct ferry_guest_vm **out = arg;
	struct ferry_guest_config cfg;
	int ret = ferry_guest_config_decode(s->desc, s->desc_len, &cfg);

	if (ret)
		return ret;
	cfg.boot_off_mask = 1ULL << 0 | 1ULL << 2 | 1ULL << 3;
	ret = ferry_guest_vm_create(&cfg, s->regions[0].backing,
				    s->regions[0].size, out);
	if (!ret)
		ret = ferry_guest_pause((*out)->guest);
	if (!ret)
		ret = ferry_guest_start((*out)->guest);
	if (!ret)
		*vm = (*out)->vm;
	return ret;
}

static void other_bits_discard(void *arg, struct ferry_vm *vm)
{
	struct ferry_guest_vm **gv = arg;

	(void)vm;
	ferry_guest_vm_destroy(*gv);
	*gv = NULL;
}

static const struct ferry_dest_ops other_bits = {
	.create = other_bits_create,
	.discard = other_bits_discard,
};

static enum test_result seed_restore(struct test_ctx *ctx, int fd,
				     enum ferry_restore_mode mode)
{
	struct ferry_restore_opts o = { .mode = mode };
	struct ferry_guest_vm *gv = NULL;
	struct ferry_guest_stats st;
	struct ferry_restore *rs;
	struct tvm t;

	CHECK_OK(ctx, ferry_restore_start(fd, &other_bits, &gv, &o, &rs));
	t = (struct tvm){ .mem = gv->mem, .g = gv->guest };
	/* Run: each vCPU has the power it had, and keeps it. */
	CHECK_OK(ctx, ferry_guest_set_step_limit(gv->guest, 3000));
	CHECK_OK(ctx, ferry_restore_finish(rs, NULL));
	TRY(run_on(ctx, gv->guest, 3000, (enum ferry_mp_state[]){ R, R, S, R },
		   4));
	ferry_guest_stats(gv->guest, &st);
	CHECK_EQ(ctx, st.vcpu[2].steps, 300);
	CHECK_EQ(ctx, st.vcpu[3].steps, 3000);
	/* SYSTEM_RESET: the source's boot configuration, not ours. */
	CHECK_OK(ctx, ferry_guest_vcpu_ops()->reset(gv->guest));
	TRY(tvm_expect_mp(ctx, &t, (enum ferry_mp_state[]){ R, S, S, S }));
	TRY(tvm_run_to(ctx, &t, 4000));
	TRY(tvm_expect_mp(ctx, &t, (enum ferry_mp_state[]){ R, R, R, R }));
	TRY(tvm_expect_steps(ctx, &t, 4000));
	TRY(tvm_verify_ok(ctx, &t, NULL));
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(gv);
	return TEST_PASS;
}

/*
 * Seed 001 through a file: boot, the secondaries powered on, one powered
 * off, snapshot; restore (both ways) in a VM created with other
 * power-off bits; run; check the states; SYSTEM_RESET; check the boot
 * configuration.
 */
static enum test_result seed001(struct test_ctx *ctx)
{
	struct src s;
	int fd = snap_fd();

	CHECK(ctx, fd >= 0, "O_TMPFILE in /tmp: %s", strerror(errno));
	TRY(make_src(ctx, &s, "random,off=2@300", 4, 1000));
	for (unsigned int i = 0; i < 4; i++)
		CHECK_EQ(ctx, s.mp[i], i == 2 ? S : R);
	TRY(save(ctx, &s, fd, false, NULL));
	tvm_destroy(&s.t);
	TRY(tvm_restore_in_child(ctx, fd, FERRY_RESTORE_EAGER, seed_restore));
	TRY(tvm_restore_in_child(ctx, fd, FERRY_RESTORE_LAZY, seed_restore));
	close(fd);
	return TEST_PASS;
}

/* ---- working sets ------------------------------------------------------- */

static enum test_result ws_path(struct test_ctx *ctx, char *path, size_t len)
{
	int fd;

	snprintf(path, len, "/tmp/ferry-ws-XXXXXX");
	fd = mkstemp(path);
	CHECK(ctx, fd >= 0, "mkstemp: %s", strerror(errno));
	close(fd);
	return TEST_PASS;
}

/*
 * A lazy restore run on to SPEC_MORE steps and verified.  Recording, its
 * first touches are saved to `path`; prefetching from `path`, the same
 * steps touch the same pages (the workload is deterministic), all of
 * them loaded before the vCPUs resumed, so none is read on demand.
 */
static enum test_result ws_run(struct test_ctx *ctx, int fd, struct src *s,
			       const struct ferry_restore_opts *o,
			       const char *path)
{
	struct ferry_restore_stats st;
	struct ferry_guest_dest dd;
	struct ferry_restore *rs;

	TRY(restore(ctx, fd, o, &dd, &rs));
	CHECK_OK(ctx, ferry_guest_set_step_limit(dd.gv->guest, SPEC_MORE));
	CHECK_OK(ctx, ferry_guest_wait_settled(dd.gv->guest, 20000));
	CHECK_OK(ctx, ferry_restore_finish(rs, &st));
	verbose_stats(&st);
	if (o->record_ws) {
		CHECK(ctx, st.ws_recorded > 0 &&
		      st.ws_recorded == st.demand_reads,
		      "%llu first touches recorded, %llu pages read on demand",
		      (unsigned long long)st.ws_recorded,
		      (unsigned long long)st.demand_reads);
		CHECK_OK(ctx, ferry_restore_save_ws(rs, path));
	} else {
		CHECK(ctx, st.prefetched > 0, "nothing prefetched");
		CHECK(ctx, o->prefetch_async || st.demand_reads == 0,
		      "%llu pages read on demand after a prefetch",
		      (unsigned long long)st.demand_reads);
	}
	CHECK_OK(ctx, ferry_guest_pause(dd.gv->guest));
	TRY(check_guest(ctx, dd.gv->guest, s->mp, s->nr_vcpus));
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd.gv);
	return TEST_PASS;
}

/* A working set of another snapshot, or a damaged one, is refused. */
static enum test_result ws_refused(struct test_ctx *ctx, int fd,
				   const char *path)
{
	struct ferry_restore_opts o = { .mode = FERRY_RESTORE_LAZY,
					.prefetch_ws = path };
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct ferry_restore *rs;
	int wfd = open(path, O_RDWR);
	uint8_t byte;

	CHECK(ctx, wfd >= 0, "%s: %s", path, strerror(errno));
	CHECK_EQ(ctx, pread(wfd, &byte, 1, 30), 1);
	byte ^= 0x40;
	CHECK_EQ(ctx, pwrite(wfd, &byte, 1, 30), 1);
	close(wfd);
	CHECK_EQ(ctx, ferry_restore_start(fd, ferry_guest_vm_dest_ops(), &dd, &o,
					  &rs), -EBADMSG);
	CHECK(ctx, strstr(ferry_error_msg(), "checksum"), "reason: %s",
	      ferry_error_msg());
	CHECK(ctx, !dd.gv, "a VM was left behind");
	return TEST_PASS;
}

static enum test_result working_set(struct test_ctx *ctx)
{
	char path[64];
	struct src s;
	int fd = snap_fd();

	CHECK(ctx, fd >= 0, "O_TMPFILE in /tmp: %s", strerror(errno));
	TRY(ws_path(ctx, path, sizeof(path)));
	TRY(make_src(ctx, &s, SPEC, SPEC_VCPUS, SPEC_STEPS));
	TRY(save(ctx, &s, fd, false, NULL));
	TRY(ws_run(ctx, fd, &s, &(struct ferry_restore_opts){
		.mode = FERRY_RESTORE_LAZY, .record_ws = true }, path));
	TRY(ws_run(ctx, fd, &s, &(struct ferry_restore_opts){
		.mode = FERRY_RESTORE_LAZY, .prefetch_ws = path }, NULL));
	TRY(ws_run(ctx, fd, &s, &(struct ferry_restore_opts){
		.mode = FERRY_RESTORE_LAZY, .prefetch_ws = path,
		.prefetch_async = true }, NULL));
	TRY(ws_refused(ctx, fd, path));
	unlink(path);
	tvm_destroy(&s.t);
	close(fd);
	return TEST_PASS;
}

/* ---- clones ------------------------------------------------------------- */

static uint64_t clone_digest(struct test_ctx *ctx, struct ferry_clone *c)
{
	struct ferry_guest *g = ferry_clone_vm(c)->handle;
	uint64_t digest = 0;

	if (ferry_guest_pause(g) || ferry_guest_digest(g, &digest) ||
	    ferry_guest_resume(g))
		snprintf(ctx->reason, sizeof(ctx->reason), "%s",
			 ferry_error_msg());
	return digest;
}

static enum test_result clone_writes(struct test_ctx *ctx,
				     struct ferry_clone *c, struct src *s)
{
	struct ferry_guest *g = ferry_clone_vm(c)->handle;
	struct ferry_clone_mem m;

	TRY(run_on(ctx, g, SPEC_MORE, s->mp, s->nr_vcpus));
	CHECK_OK(ctx, ferry_clone_memory(c, &m));
	CHECK(ctx, m.private_bytes > 0, "the writing clone copied nothing");
	CHECK(ctx, m.private_bytes < s->t.mem->total_size,
	      "the writing clone copied %llu bytes of %llu",
	      (unsigned long long)m.private_bytes,
	      (unsigned long long)s->t.mem->total_size);
	return TEST_PASS;
}

/*
 * Writes in one clone are invisible in the others and in the snapshot
 * (a clone made afterwards still sees the snapshot's memory), and a
 * clone that does not write copies nothing.
 */
static enum test_result clones(struct test_ctx *ctx)
{
	const struct ferry_clone_ops *ops = ferry_guest_vm_clone_ops();
	struct ferry_clone_source *cs;
	struct ferry_clone *c[3];
	struct ferry_clone_mem m;
	struct src s;
	int fd = snap_fd();

	CHECK(ctx, fd >= 0, "O_TMPFILE in /tmp: %s", strerror(errno));
	TRY(make_src(ctx, &s, SPEC, SPEC_VCPUS, SPEC_STEPS));
	TRY(save(ctx, &s, fd, false, NULL));
	CHECK_OK(ctx, ferry_clone_source_create(fd, &cs));
	CHECK(ctx, ferry_clone_source_bytes(cs) > 0, "no shared memory");
	for (int i = 0; i < 2; i++)
		CHECK_OK(ctx, ferry_clone_create(cs, ops, NULL, &c[i]));
	TRY(clone_writes(ctx, c[0], &s));
	CHECK(ctx, clone_digest(ctx, c[1]) == s.digest,
	      "clone 1 sees clone 0's writes %s", ctx->reason);
	CHECK(ctx, clone_digest(ctx, c[0]) != s.digest,
	      "clone 0's writes went nowhere");
	CHECK_OK(ctx, ferry_clone_create(cs, ops, NULL, &c[2]));
	CHECK(ctx, clone_digest(ctx, c[2]) == s.digest,
	      "the shared snapshot changed %s", ctx->reason);
	/* Only holes it read (hugetlbfs has no shared zero page). */
	CHECK_OK(ctx, ferry_clone_memory(c[1], &m));
	CHECK(ctx, m.private_bytes <= s.t.mem->total_size -
	      ferry_clone_source_bytes(cs),
	      "an idle clone holds %llu bytes of its own",
	      (unsigned long long)m.private_bytes);
	CHECK_OK(ctx, ferry_guest_pause(ferry_clone_vm(c[1])->handle));
	TRY(check_guest(ctx, ferry_clone_vm(c[1])->handle, s.mp, s.nr_vcpus));
	for (int i = 0; i < 3; i++)
		CHECK_OK(ctx, ferry_clone_error(c[i]));
	for (int i = 0; i < 3; i++)
		ferry_clone_destroy(c[i]);
	ferry_clone_source_destroy(cs);
	tvm_destroy(&s.t);
	close(fd);
	return TEST_PASS;
}

/* ---- damaged and hostile files ------------------------------------------ */

static enum test_result copy_file(struct test_ctx *ctx, int from, int to,
				  off_t len)
{
	static uint8_t buf[1 << 16];

	CHECK_OK(ctx, ftruncate(to, 0) ? -errno : 0);
	for (off_t off = 0; off < len;) {
		off_t data = lseek(from, off, SEEK_DATA);
		ssize_t n;

		if (data < 0 || data >= len)
			break;
		n = pread(from, buf, (size_t)(len - data) < sizeof(buf) ?
			  (size_t)(len - data) : sizeof(buf), data);
		CHECK(ctx, n > 0, "reading the snapshot: %s", strerror(errno));
		CHECK_EQ(ctx, pwrite(to, buf, (size_t)n, data), n);
		off = data + n;
	}
	CHECK_OK(ctx, ftruncate(to, len) ? -errno : 0);
	return TEST_PASS;
}

/* Refused with -EBADMSG, nothing built, and the reason says `why`. */
static enum test_result refused(struct test_ctx *ctx, int fd,
				enum ferry_restore_mode mode, const char *why,
				const char *what)
{
	struct ferry_restore_opts o = { .mode = mode };
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct ferry_restore *rs = NULL;
	int ret = ferry_restore_start(fd, ferry_guest_vm_dest_ops(), &dd, &o, &rs);

	CHECK(ctx, ret == -EBADMSG, "%s: restore returned %d (%s)", what, ret,
	      ferry_error_msg());
	CHECK(ctx, !why || strstr(ferry_error_msg(), why),
	      "%s: reason '%s' does not say '%s'", what, ferry_error_msg(), why);
	CHECK(ctx, !dd.gv, "%s: a VM was left behind", what);
	return TEST_PASS;
}

/*
 * Walk the record headers: where the first PAGE_EXTENT starts (0: none)
 * and where the records end (after COMPLETE).
 */
static uint64_t walk(int fd, bool want_extent)
{
	uint8_t hdr[32];

	for (uint64_t off = 0; pread(fd, hdr, 32, (off_t)off) == 32;) {
		uint32_t meta, data;

		if (want_extent && hdr[2] == FERRY_WIRE_PAGE_EXTENT)
			return off;
		memcpy(&meta, hdr + 8, 4);
		memcpy(&data, hdr + 12, 4);
		off += 32 + (uint64_t)meta + data;
		if (!want_extent && hdr[2] == FERRY_WIRE_COMPLETE)
			return off;
	}
	return 0;
}

static uint64_t records_end(int fd)
{
	return walk(fd, false);
}

/* Cut the file anywhere in its records or data: refused. */
static enum test_result truncated(struct test_ctx *ctx, int good, int bad)
{
	struct stat st;
	uint64_t recs = records_end(good);
	off_t cuts[] = { 0, 7, 31, 32, 100, (off_t)recs / 2, (off_t)recs - 1,
			 (off_t)recs, 0, 0 };

	CHECK_OK(ctx, fstat(good, &st) ? -errno : 0);
	cuts[8] = st.st_size / 2 + 4096;
	cuts[9] = st.st_size - 1;
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		char what[64];

		snprintf(what, sizeof(what), "cut at %lld", (long long)cuts[i]);
		TRY(copy_file(ctx, good, bad, cuts[i]));
		TRY(refused(ctx, bad, FERRY_RESTORE_LAZY, NULL, what));
	}
	return TEST_PASS;
}

/* One byte changed anywhere in the records: a checksum catches it. */
static enum test_result flipped(struct test_ctx *ctx, int good, int bad)
{
	struct stat st;
	uint64_t recs = records_end(good);

	CHECK_OK(ctx, fstat(good, &st) ? -errno : 0);
	for (uint64_t off = 0; off < recs; off += recs / 23 + 1) {
		char what[64];
		uint8_t b;

		snprintf(what, sizeof(what), "byte %llu flipped",
			 (unsigned long long)off);
		TRY(copy_file(ctx, good, bad, st.st_size));
		CHECK_EQ(ctx, pread(bad, &b, 1, (off_t)off), 1);
		b ^= 0x10;
		CHECK_EQ(ctx, pwrite(bad, &b, 1, (off_t)off), 1);
		TRY(refused(ctx, bad, FERRY_RESTORE_EAGER, NULL, what));
	}
	return TEST_PASS;
}

/*
 * A changed page: eager refuses the file before anything runs; lazy
 * finds it when the page is read, and the restore fails.
 */
static enum test_result bad_page(struct test_ctx *ctx, int good, int bad)
{
	struct ferry_restore_opts o = { .mode = FERRY_RESTORE_LAZY };
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct ferry_restore *rs;
	off_t start = (off_t)(records_end(good) + (2 << 20) - 1) &
		      ~(off_t)((2 << 20) - 1);
	off_t data = lseek(good, start, SEEK_DATA);
	struct ferry_guest_stats gs[2];
	struct stat st;
	uint8_t b;

	CHECK(ctx, data > 0, "no page data");
	CHECK_OK(ctx, fstat(good, &st) ? -errno : 0);
	TRY(copy_file(ctx, good, bad, st.st_size));
	CHECK_EQ(ctx, pread(bad, &b, 1, data + 100), 1);
	b ^= 1;
	CHECK_EQ(ctx, pwrite(bad, &b, 1, data + 100), 1);
	TRY(refused(ctx, bad, FERRY_RESTORE_EAGER, "checksum", "bad page"));
	CHECK_OK(ctx, ferry_restore_start(bad, ferry_guest_vm_dest_ops(), &dd, &o,
					  &rs));
	CHECK_OK(ctx, ferry_guest_set_step_limit(dd.gv->guest, 0));
	CHECK_EQ(ctx, ferry_restore_finish(rs, NULL), -EBADMSG);
	CHECK(ctx, strstr(ferry_error_msg(), "checksum"), "reason: %s",
	      ferry_error_msg());
	/* Failed closed: the vCPUs were stopped before it let go. */
	ferry_guest_stats(dd.gv->guest, &gs[0]);
	usleep(50000);
	ferry_guest_stats(dd.gv->guest, &gs[1]);
	CHECK(ctx, gs[0].steps == gs[1].steps, "the VM runs on after its "
	      "restore failed");
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd.gv);
	return TEST_PASS;
}

/*
 * Rewrite the first extent's fixed fields and seal it again, as a
 * hostile writer would: every checksum right, the contents wrong.
 */
static enum test_result forge(struct test_ctx *ctx, int fd, uint64_t off,
			      uint32_t first_page, uint32_t count,
			      uint64_t file_offset)
{
	uint8_t hdr[32], *meta;
	uint32_t meta_len;
	uint64_t sum;

	CHECK_EQ(ctx, pread(fd, hdr, 32, (off_t)off), 32);
	memcpy(&meta_len, hdr + 8, 4);
	meta = malloc(meta_len);
	CHECK(ctx, meta, "out of memory");
	CHECK_EQ(ctx, pread(fd, meta, meta_len, (off_t)off + 32), meta_len);
	memcpy(meta + 4, &first_page, 4);
	memcpy(meta + 8, &count, 4);
	memcpy(meta + 16, &file_offset, 8);
	sum = XXH3_64bits(meta, meta_len);
	memcpy(hdr + 16, &sum, 8);
	sum = XXH3_64bits(hdr, 24);
	memcpy(hdr + 24, &sum, 8);
	CHECK_EQ(ctx, pwrite(fd, hdr, 32, (off_t)off), 32);
	CHECK_EQ(ctx, pwrite(fd, meta, meta_len, (off_t)off + 32), meta_len);
	free(meta);
	return TEST_PASS;
}

/*
 * Well-sealed lies: pages beyond the region, data past the end of the
 * file or over the records.  None is installed: restore never writes
 * outside guest memory, nor reads outside the file's data.
 */
static enum test_result hostile(struct test_ctx *ctx, int good, int bad,
				size_t nr_pages)
{
	uint64_t ext = walk(good, true);
	uint8_t fixed[24];
	uint32_t first, count;
	uint64_t at;
	struct stat st;

	CHECK(ctx, ext, "no extent record");
	CHECK_OK(ctx, fstat(good, &st) ? -errno : 0);
	CHECK_EQ(ctx, pread(good, fixed, 24, (off_t)ext + 32), 24);
	memcpy(&first, fixed + 4, 4);
	memcpy(&count, fixed + 8, 4);
	memcpy(&at, fixed + 16, 8);
	TRY(copy_file(ctx, good, bad, st.st_size));
	TRY(forge(ctx, bad, ext, (uint32_t)nr_pages - count + 1, count, at));
	TRY(refused(ctx, bad, FERRY_RESTORE_EAGER, "beyond", "pages past "
		    "the region"));
	TRY(copy_file(ctx, good, bad, st.st_size));
	TRY(forge(ctx, bad, ext, first, count,
		  (uint64_t)st.st_size / 4096 * 4096));
	TRY(refused(ctx, bad, FERRY_RESTORE_EAGER, "past the file",
		    "data past the end"));
	TRY(copy_file(ctx, good, bad, st.st_size));
	TRY(forge(ctx, bad, ext, first, count, 0));
	TRY(refused(ctx, bad, FERRY_RESTORE_EAGER, "records", "data over "
		    "the records"));
	return TEST_PASS;
}

/*
 * The same snapshot with its holes written out as zeroes (a copy by a
 * tool that does not keep holes): the reader cannot learn the records'
 * length from the first hole and grows its buffer; it restores the same.
 */
static enum test_result dense(struct test_ctx *ctx, int good, int bad,
			      uint64_t digest)
{
	struct ferry_restore_opts o = { .mode = FERRY_RESTORE_EAGER };
	struct ferry_guest_dest dd = { .keep_backing = true };
	static uint8_t buf[1 << 16];
	struct ferry_restore *rs;
	struct stat st;
	uint64_t d;

	CHECK_OK(ctx, fstat(good, &st) ? -errno : 0);
	CHECK_OK(ctx, ftruncate(bad, 0) ? -errno : 0);
	for (off_t off = 0; off < st.st_size; off += (off_t)sizeof(buf)) {
		ssize_t n = pread(good, buf, sizeof(buf), off);

		CHECK(ctx, n > 0, "reading: %s", strerror(errno));
		CHECK_EQ(ctx, pwrite(bad, buf, (size_t)n, off), n);
	}
	CHECK_EQ(ctx, lseek(bad, 0, SEEK_HOLE), st.st_size);
	CHECK_OK(ctx, ferry_restore_start(bad, ferry_guest_vm_dest_ops(), &dd, &o,
					  &rs));
	CHECK_OK(ctx, ferry_restore_finish(rs, NULL));
	CHECK_OK(ctx, ferry_guest_pause(dd.gv->guest));
	CHECK_OK(ctx, ferry_guest_digest(dd.gv->guest, &d));
	CHECK(ctx, d == digest, "a dense copy restores other memory");
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd.gv);
	return TEST_PASS;
}

static enum test_result damaged(struct test_ctx *ctx)
{
	struct src s;
	int good = snap_fd(), bad = snap_fd();
	struct ferry_snapshot_info info;

	CHECK(ctx, good >= 0 && bad >= 0, "O_TMPFILE: %s", strerror(errno));
	TRY(make_src(ctx, &s, SPEC, SPEC_VCPUS, SPEC_STEPS));
	TRY(save(ctx, &s, good, false, NULL));
	CHECK_OK(ctx, ferry_snapshot_info(good, &info));
	CHECK(ctx, info.pages > 0 && info.file_blocks < info.file_size,
	      "%llu pages, %llu of %llu bytes allocated: not sparse",
	      (unsigned long long)info.pages,
	      (unsigned long long)info.file_blocks,
	      (unsigned long long)info.file_size);
	TRY(truncated(ctx, good, bad));
	TRY(flipped(ctx, good, bad));
	TRY(bad_page(ctx, good, bad));
	TRY(hostile(ctx, good, bad, s.t.mem->regions[0].nr_pages));
	TRY(dense(ctx, good, bad, s.digest));
	tvm_destroy(&s.t);
	close(good);
	close(bad);
	return TEST_PASS;
}

#define NEED_LAZY	(NEED_UFFD_MISSING | NEED_UFFD_MINOR)

static const struct test_case snapshot_cases[] = {
	{ "snap_eager", eager, B_ALL, 0, NEED_LAZY, 0, 60 },
	{ "snap_lazy", lazy, B_ALL, 0, NEED_LAZY, 0, 60 },
	{ "snap_live", live, B_ALL, 0, NEED_LAZY | NEED_UFFD_WP, 0, 60 },
	{ "snap_seed001", seed001, B_ALL, 0, NEED_LAZY, 0, 60 },
	{ "snap_working_set", working_set, B_ALL, 0, NEED_LAZY, 0, 60 },
	{ "snap_clones", clones, B_ALL, 0, NEED_LAZY, 96, 60 },
	{ "snap_damaged", damaged, B_SHMEM, 0, NEED_LAZY, 0, 60 },
};

TEST_SUITE(snapshot, snapshot_cases);
