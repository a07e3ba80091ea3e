// SPDX-License-Identifier: MIT
/*
 * bench/snapshot: snapshots of the built-in VM (issue 5's targets).
 *
 *   1. A 4 GiB guest, every cell written (seqdirty), saved live (while it
 *      writes on) and paused; then restored lazily, RUNS times: the time
 *      from the start of the restore to the vCPUs running (target: under
 *      5 ms); and once eagerly.
 *   2. A 1 GiB guest running a hot/cold workload, saved; the time its
 *      vCPUs take for the next STEPS steps after a restore, against the
 *      same steps on fully resident memory (every page in place and
 *      mapped: an eager restore, then populated), and against the saved
 *      VM itself running them on: lazily, then with the working set
 *      recorded in one lazy restore and prefetched in the next (target:
 *      within 1.2x of resident); and the page-fault stalls (pages a vCPU
 *      waited for) with and without the working set (REAP reports 3.7x
 *      fewer).  On a host with shadow paging the first access to a page
 *      freshly mapped costs an exit, which even the resident VM pays and
 *      the saved VM does not; a prefetch pays it before the vCPUs
 *      resume, so compare the _total_s figures too.
 *   3. NR_CLONES clones of that snapshot, each running on: the memory
 *      they use (the snapshot once, plus each clone's copies) against one
 *      snapshot plus what they wrote (pages that differ from the
 *      snapshot), and against NR_CLONES separate restores.
 *
 * Figures (times in ms unless the key says otherwise):
 *   snapshot_dir_fs                       where the files live (tmpfs by
 *                                         default: FERRY_BENCH_SNAPDIR)
 *   snapshot_4g_fill_s, snapshot_4g_pages
 *   snapshot_live_canary_gbps             bench_canary_gbps, just before
 *   snapshot_live_save_ms                 the live save, start to end
 *   snapshot_live_pause_ms                vCPU states + write protection
 *   snapshot_live_held_ms                 guest writes held, in all
 *   snapshot_live_held_pct_of_save        that, over the save's duration
 *   snapshot_live_held_writes, snapshot_live_held_max_us,
 *   snapshot_live_held_p99_us, snapshot_live_gbps
 *   snapshot_4g_save_s, snapshot_4g_save_gbps, snapshot_4g_file_mib,
 *   snapshot_4g_disk_mib                  paused save
 *   restore_lazy_4g_first_resume_ms      the process's first restore
 *   restore_lazy_4g_resume_ms_min/_median/_max   start to vCPUs running
 *   restore_lazy_4g_open_ms_median        of which: records read, checked
 *   restore_eager_4g_resume_ms, restore_eager_4g_gbps
 *   ws_steps, ws_pages                    the workload after a restore,
 *                                         and its working set
 *   restore_resident_s_*                  STEPS on resident memory
 *   restore_lazy_s_*, restore_lazy_stalls
 *   restore_prefetch_s_*, restore_prefetch_resume_ms_median,
 *   restore_prefetch_stalls               working set loaded first
 *   restore_prefetch_async_s_*, restore_prefetch_async_resume_ms_median
 *   restore_*_total_s_median              from the start of the restore
 *                                         to the last of the STEPS
 *   restore_source_s                      the saved VM itself runs them
 *   restore_prefetch_ratio_source         prefetched over that
 *   restore_lazy_ratio_resident, restore_prefetch_ratio_resident,
 *   restore_prefetch_async_ratio_resident
 *   restore_ws_stall_reduction            lazy stalls / prefetched stalls
 *   clone_count, clone_start_ms_max, clone_shared_mib,
 *   clone_private_mib, clone_written_mib, clone_mem_mib,
 *   clone_separate_mib
 *   clone_mem_ratio                       clones' memory over one
 *                                         snapshot plus what they wrote
 */
#include <sys/statfs.h>
#include <linux/magic.h>

#include "bench.h"
#include "ferry-vm/guest_vm.h"
#include "ferry/snapshot.h"

#define BIG_SIZE	(4 * BENCH_GIB)
#define WS_SIZE		BENCH_GIB
#define RUNS		7
#define WS_RUNS		3
#define WS_WARM_STEPS	400000ULL	/* per vCPU, before the snapshot */
#define WS_STEPS	100000ULL	/* per vCPU, timed after a restore */
#define NR_CLONES	8
#define CLONE_STEPS	10000ULL
#define WS_SPEC		"hotcold,hot=10,hotw=90,read=50"

static char snap_dir[256];
static double ws_prefetch_s;	/* restore_prefetch_s_median */

/* tmpfs unless told otherwise: the disk here writes at a few 100 MB/s. */
static void pick_dir(void)
{
	const char *env = getenv("FERRY_BENCH_SNAPDIR");
	struct statfs sfs;

	snprintf(snap_dir, sizeof(snap_dir), "%s", env ? env : "/dev/shm");
	if (!env && (statfs(snap_dir, &sfs) ||
		     (uint64_t)sfs.f_bavail * (uint64_t)sfs.f_bsize <
		     BIG_SIZE + BENCH_GIB))
		snprintf(snap_dir, sizeof(snap_dir), "/tmp");
	if (statfs(snap_dir, &sfs))
		bench_die("%s: %s", snap_dir, strerror(errno));
	bench_put_text("snapshot", "dir_fs", sfs.f_type == TMPFS_MAGIC ?
		       "tmpfs" : sfs.f_type == EXT4_SUPER_MAGIC ? "ext4" :
		       "other");
}

/* An unnamed file: gone with the process. */
static int snap_file(void)
{
	int fd = open(snap_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd < 0)
		bench_die("O_TMPFILE in %s: %s", snap_dir, strerror(errno));
	return fd;
}

static double ms(uint64_t ns)
{
	return (double)ns / 1e6;
}

/*
 * A VM whose memory is mapped before it runs: a first touch costs a
 * page fault of tens of microseconds on this machine, and filling 4 GiB
 * that way would take the whole budget.
 */
static struct ferry_guest_vm *make_vm(uint64_t size, const char *spec,
				      uint64_t steps)
{
	struct ferry_guest_config cfg;
	struct ferry_guest_vm *gv;
	struct ferry_region *r;

	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = 2;
	cfg.seed = 5;
	cfg.step_limit = steps;
	bench_check(ferry_guest_config_set_workload(&cfg, spec), "spec");
	bench_check(ferry_guest_vm_create(&cfg, FERRY_BACKING_SHMEM, size,
					  &gv), "creating the VM");
	r = &gv->mem->regions[0];
	if (madvise(r->guest, r->size, MADV_POPULATE_WRITE))
		bench_die("MADV_POPULATE_WRITE: %s", strerror(errno));
	return gv;
}

static void run_to(struct ferry_guest *g, uint64_t steps)
{
	bench_check(ferry_guest_set_step_limit(g, steps), "step limit");
	bench_check(ferry_guest_wait_settled(g, 60000), "running");
}

static void save(struct ferry_guest_vm *gv, int fd, bool live,
		 struct ferry_snapshot_stats *st)
{
	struct ferry_snapshot_opts o = { .live = live };

	bench_check(ferry_snapshot_save(&gv->vm, fd, &o, st), "saving");
}

static struct ferry_restore *restore(int fd, struct ferry_guest_dest *dd,
				     const struct ferry_restore_opts *o)
{
	struct ferry_restore *rs;

	*dd = (struct ferry_guest_dest){ .keep_backing = true };
	bench_check(ferry_restore_start(fd, ferry_guest_vm_dest_ops(), dd, o,
					&rs), "restoring");
	return rs;
}

/* Throw a restore away, its pages in or not: the vCPUs stop first. */
static void abandon(struct ferry_restore *rs, struct ferry_guest_dest *dd)
{
	bench_check(ferry_guest_stop(dd->gv->guest), "stopping the vCPUs");
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd->gv);
}

/* ---- 1: 4 GiB ----------------------------------------------------------- */

static void live_save(struct ferry_guest_vm *gv, int fd)
{
	struct ferry_snapshot_stats st;

	/* seqdirty writes on, round and round, during the save. */
	bench_check(ferry_guest_set_step_limit(gv->guest, 0), "step limit");
	usleep(200000);
	bench_put("snapshot_live", "canary_gbps", bench_canary_gbps(), 2);
	save(gv, fd, true, &st);
	bench_put("snapshot_live", "save_ms", ms(st.total_ns), 1);
	bench_put("snapshot_live", "pause_ms", ms(st.pause_ns), 3);
	bench_put("snapshot_live", "held_ms", ms(st.held_total_ns), 3);
	bench_put("snapshot_live", "held_pct_of_save", st.total_ns ?
		  100.0 * (double)st.held_total_ns / (double)st.total_ns : 0,
		  2);
	bench_put("snapshot_live", "held_writes", (double)st.held_writes, 0);
	bench_put("snapshot_live", "held_max_us", st.held_max_ns / 1e3, 1);
	bench_put("snapshot_live", "held_p99_us", st.held_p99_ns / 1e3, 1);
	bench_put("snapshot_live", "gbps", bench_gbps(st.bytes, st.total_ns),
		  2);
}

static void paused_save(struct ferry_guest_vm *gv, int fd)
{
	struct ferry_snapshot_stats st;

	bench_check(ferry_guest_pause(gv->guest), "pause");
	save(gv, fd, false, &st);
	bench_put("snapshot_4g", "save_s", st.total_ns / 1e9, 2);
	bench_put("snapshot_4g", "save_gbps", bench_gbps(st.bytes,
							 st.total_ns), 2);
	bench_put("snapshot_4g", "pages", (double)st.pages, 0);
	bench_put("snapshot_4g", "file_mib", (double)st.file_size / BENCH_MIB,
		  1);
	bench_put("snapshot_4g", "disk_mib",
		  (double)st.file_blocks / BENCH_MIB, 1);
}

/*
 * The first restore of a process pays for memory it has not used yet
 * (on this host, memory the VM has not touched lately costs the
 * hypervisor a fault per page); it is reported alone, the rest as the
 * figure, as a restoring daemon would see them.
 */
static void lazy_4g(int fd)
{
	double resume[RUNS], open[RUNS];

	for (int i = -1; i < RUNS; i++) {
		struct ferry_restore_opts o = { .mode = FERRY_RESTORE_LAZY };
		struct ferry_restore_stats st;
		struct ferry_guest_dest dd;
		struct ferry_restore *rs = restore(fd, &dd, &o);

		/* Stats so far; nothing waits for the pages. */
		ferry_restore_stats(rs, &st);
		abandon(rs, &dd);
		if (i < 0) {
			bench_put("restore_lazy_4g", "first_resume_ms",
				  ms(st.resume_ns), 3);
			continue;
		}
		resume[i] = ms(st.resume_ns);
		open[i] = ms(st.open_ns);
	}
	bench_put_spread("restore_lazy_4g", "resume_ms", resume, RUNS);
	qsort(open, RUNS, sizeof(*open), bench_cmp_double);
	bench_put("restore_lazy_4g", "open_ms_median", open[RUNS / 2], 3);
}

static void eager_4g(int fd)
{
	struct ferry_restore_opts o = { .mode = FERRY_RESTORE_EAGER };
	struct ferry_restore_stats st;
	struct ferry_guest_dest dd;
	struct ferry_restore *rs = restore(fd, &dd, &o);

	bench_check(ferry_restore_finish(rs, &st), "eager restore");
	bench_put("restore_eager_4g", "resume_ms", ms(st.resume_ns), 1);
	bench_put("restore_eager_4g", "gbps",
		  bench_gbps(st.bytes_read, st.resume_ns), 2);
	abandon(rs, &dd);
}

static void big(void)
{
	uint64_t cells = BIG_SIZE / FERRY_CELL_SIZE, t0 = bench_now_ns();
	struct ferry_guest_vm *gv = make_vm(BIG_SIZE, "seqdirty", cells / 2);
	int fd = snap_file();

	bench_check(ferry_guest_start(gv->guest), "start");
	bench_check(ferry_guest_wait_settled(gv->guest, 60000), "filling");
	bench_put("snapshot_4g", "fill_s", (bench_now_ns() - t0) / 1e9, 2);
	live_save(gv, fd);
	paused_save(gv, fd);
	ferry_guest_vm_destroy(gv);
	lazy_4g(fd);
	eager_4g(fd);
	close(fd);
}

/* ---- 2: the working set ------------------------------------------------- */

struct ws_run {
	double secs;		/* STEPS after the vCPUs run */
	double total;		/* from the start of the restore, populating
				 * a resident VM left out */
	double resume_ms;
	uint64_t stalls;	/* pages a vCPU waited for */
};

/*
 * Fully resident: every page in place and mapped, zero pages too, as in
 * the VM that was saved: an eager restore, then populated.
 */
static void make_resident(struct ferry_guest_dest *dd)
{
	struct ferry_region *r = &dd->gv->mem->regions[0];

	bench_check(ferry_guest_pause(dd->gv->guest), "pause");
	if (madvise(r->guest, r->size, MADV_POPULATE_WRITE))
		bench_die("MADV_POPULATE_WRITE: %s", strerror(errno));
	bench_check(ferry_guest_resume(dd->gv->guest), "resume");
}

/* Restore, time WS_STEPS more steps, finish; the VM is destroyed. */
static struct ws_run ws_once(int fd, const struct ferry_restore_opts *o,
			     const char *save_ws)
{
	struct ferry_restore_stats st;
	struct ferry_guest_dest dd;
	struct ferry_restore *rs = restore(fd, &dd, o);
	struct ferry_guest_stats gs;
	struct ws_run r;
	uint64_t t0;

	if (o->mode == FERRY_RESTORE_EAGER)
		make_resident(&dd);
	t0 = bench_now_ns();

	ferry_guest_stats(dd.gv->guest, &gs);
	run_to(dd.gv->guest, gs.vcpu[0].steps + WS_STEPS);
	r.secs = (bench_now_ns() - t0) / 1e9;
	bench_check(ferry_restore_finish(rs, &st), "restore");
	if (save_ws)
		bench_check(ferry_restore_save_ws(rs, save_ws), "saving ws");
	r.resume_ms = ms(st.resume_ns);
	r.total = r.secs + r.resume_ms / 1e3;
	r.stalls = st.demand_reads;
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd.gv);
	return r;
}

static double ws_series(const char *prefix, int fd,
			const struct ferry_restore_opts *o, uint64_t *stalls)
{
	double secs[WS_RUNS], resume[WS_RUNS], total[WS_RUNS], median;
	uint64_t st[WS_RUNS];
	char key[64];

	for (int i = 0; i < WS_RUNS; i++) {
		struct ws_run r = ws_once(fd, o, NULL);

		secs[i] = r.secs;
		total[i] = r.total;
		resume[i] = r.resume_ms;
		st[i] = r.stalls;
	}
	bench_put_spread(prefix, "s", secs, WS_RUNS);
	median = secs[WS_RUNS / 2];
	qsort(resume, WS_RUNS, sizeof(*resume), bench_cmp_double);
	snprintf(key, sizeof(key), "%s_resume_ms", prefix);
	bench_put(key, "median", resume[WS_RUNS / 2], 3);
	qsort(total, WS_RUNS, sizeof(*total), bench_cmp_double);
	snprintf(key, sizeof(key), "%s_total_s", prefix);
	bench_put(key, "median", total[WS_RUNS / 2], 3);
	qsort(st, WS_RUNS, sizeof(*st), bench_cmp_u64);
	*stalls = st[WS_RUNS / 2];
	return median;
}

static void working_set(int fd)
{
	struct ferry_restore_opts eager = { .mode = FERRY_RESTORE_EAGER };
	struct ferry_restore_opts lazy = { .mode = FERRY_RESTORE_LAZY };
	struct ferry_restore_opts rec = { .mode = FERRY_RESTORE_LAZY,
					  .record_ws = true };
	char path[300];
	struct ferry_restore_opts pre = { .mode = FERRY_RESTORE_LAZY,
					  .prefetch_ws = path };
	struct ferry_restore_opts async = pre;
	uint64_t stalls, lazy_stalls, pre_stalls, async_stalls;
	double res, lz, pf, as;
	struct ws_run r;

	snprintf(path, sizeof(path), "%s/ferry-bench-%d.ws", snap_dir,
		 (int)getpid());
	async.prefetch_async = true;
	bench_put("ws", "steps", (double)WS_STEPS, 0);
	res = ws_series("restore_resident", fd, &eager, &stalls);
	lz = ws_series("restore_lazy", fd, &lazy, &lazy_stalls);
	r = ws_once(fd, &rec, path);
	bench_put("ws", "pages", (double)r.stalls, 0);
	pf = ws_series("restore_prefetch", fd, &pre, &pre_stalls);
	ws_prefetch_s = pf;
	as = ws_series("restore_prefetch_async", fd, &async, &async_stalls);
	unlink(path);
	bench_put("restore_lazy", "stalls", (double)lazy_stalls, 0);
	bench_put("restore_prefetch", "stalls", (double)pre_stalls, 0);
	bench_put("restore_prefetch_async", "stalls", (double)async_stalls, 0);
	bench_put("restore_lazy", "ratio_resident", lz / res, 2);
	bench_put("restore_prefetch", "ratio_resident", pf / res, 2);
	bench_put("restore_prefetch_async", "ratio_resident", as / res, 2);
	bench_put("restore_ws", "stall_reduction",
		  (double)lazy_stalls / (double)(pre_stalls ? pre_stalls : 1),
		  1);
}

/* ---- 3: clones ---------------------------------------------------------- */

/* Bytes of a clone's memory that differ from the snapshot's. */
static uint64_t written(struct ferry_clone *c, struct ferry_guest_vm *src)
{
	const struct ferry_region *a = &ferry_clone_vm(c)->mem->regions[0];
	const struct ferry_region *b = &src->mem->regions[0];
	uint64_t bytes = 0;

	for (size_t off = 0; off < a->size; off += 4096)
		if (memcmp(a->alias + off, b->alias + off, 4096))
			bytes += 4096;
	return bytes;
}

static void clones(int fd, struct ferry_guest_vm *src)
{
	struct ferry_clone *c[NR_CLONES];
	struct ferry_clone_source *cs;
	uint64_t priv = 0, wrote = 0, shared, max_ns = 0;

	bench_check(ferry_clone_source_create(fd, &cs), "clone source");
	for (int i = 0; i < NR_CLONES; i++) {
		uint64_t t0 = bench_now_ns();

		bench_check(ferry_clone_create(cs, ferry_guest_vm_clone_ops(),
					       NULL, &c[i]), "clone");
		if (bench_now_ns() - t0 > max_ns)
			max_ns = bench_now_ns() - t0;
	}
	for (int i = 0; i < NR_CLONES; i++) {
		struct ferry_guest *g = ferry_clone_vm(c[i])->handle;
		struct ferry_guest_stats gs;

		ferry_guest_stats(g, &gs);
		run_to(g, gs.vcpu[0].steps + CLONE_STEPS * (1 + i % 4));
	}
	for (int i = 0; i < NR_CLONES; i++) {
		struct ferry_clone_mem m;

		bench_check(ferry_guest_pause(ferry_clone_vm(c[i])->handle),
			    "pause");
		bench_check(ferry_clone_memory(c[i], &m), "clone memory");
		priv += m.private_bytes;
		wrote += written(c[i], src);
	}
	shared = ferry_clone_source_bytes(cs);
	bench_put("clone", "count", NR_CLONES, 0);
	bench_put("clone", "start_ms_max", ms(max_ns), 3);
	bench_put("clone", "shared_mib", (double)shared / BENCH_MIB, 1);
	bench_put("clone", "private_mib", (double)priv / BENCH_MIB, 1);
	bench_put("clone", "written_mib", (double)wrote / BENCH_MIB, 1);
	bench_put("clone", "mem_mib", (double)(shared + priv) / BENCH_MIB, 1);
	bench_put("clone", "separate_mib",
		  (double)shared * NR_CLONES / BENCH_MIB, 1);
	bench_put("clone", "mem_ratio",
		  (double)(shared + priv) / (double)(shared + wrote), 3);
	for (int i = 0; i < NR_CLONES; i++)
		ferry_clone_destroy(c[i]);
	ferry_clone_source_destroy(cs);
}

static void hotcold(void)
{
	struct ferry_guest_vm *gv = make_vm(WS_SIZE, WS_SPEC, WS_WARM_STEPS);
	int fd = snap_file();
	double source;
	uint64_t t0;

	bench_check(ferry_guest_start(gv->guest), "start");
	bench_check(ferry_guest_wait_settled(gv->guest, 60000), "warming");
	bench_check(ferry_guest_pause(gv->guest), "pause");
	save(gv, fd, false, &(struct ferry_snapshot_stats){ 0 });
	working_set(fd);
	clones(fd, gv);
	/*
	 * The VM that was saved runs the same steps on its own memory, which
	 * its vCPUs have touched before (see restore_source_s).
	 */
	t0 = bench_now_ns();
	bench_check(ferry_guest_resume(gv->guest), "resume");
	run_to(gv->guest, WS_WARM_STEPS + WS_STEPS);
	source = (bench_now_ns() - t0) / 1e9;
	bench_put("restore_source", "s", source, 3);
	bench_put("restore_prefetch", "ratio_source", ws_prefetch_s / source,
		  2);
	ferry_guest_vm_destroy(gv);
	close(fd);
}

int main(int argc, char **argv)
{
	uint64_t t0 = bench_now_ns();

	bench_start(argc, argv, "snapshot", 170);
	pick_dir();
	big();
	hotcold();
	bench_finish(t0);
	return 0;
}
