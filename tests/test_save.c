// SPDX-License-Identifier: MIT
/*
 * Atomic snapshot saves: a save to a full filesystem (a small tmpfs this
 * test mounts, and unmounts after) fails and leaves nothing behind, and
 * the snapshot already at the path is untouched; a save that succeeds
 * replaces it whole.
 *
 * A save in flight, through its handle from another thread: a live save
 * cancelled while the guest's writes are held leaves the VM running
 * (every held write goes on, no page left write-protected), verified,
 * and no snapshot (nothing at the path; the descriptor's file emptied);
 * progress moves forward to DONE, and the image restores and verifies.
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include "ferry-vm/guest_vm.h"
#include "ferry/restore.h"
#include "ferry/snapshot.h"
#include "guest_test.h"

/* A VM whose every cell was written: as large a snapshot as its memory. */
static int full_vm(enum ferry_backing backing, uint64_t mem,
		   struct ferry_guest_vm **out)
{
	struct ferry_guest_config cfg;
	struct ferry_guest_stats st;
	int ret;

	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = 1;
	ferry_guest_config_set_workload(&cfg, "seqdirty");
	ret = ferry_guest_vm_create(&cfg, backing, mem, out);
	if (!ret)
		ret = ferry_guest_start((*out)->guest);
	for (int i = 0; !ret && i < 1000; i++) {
		ferry_guest_stats((*out)->guest, &st);
		if (st.writes * 4096 >= 2 * mem)
			break;
		usleep(5000);
	}
	return ret;
}

/* The file's bytes, hashed; its size in *size; 0 if it cannot be read. */
static uint64_t file_hash(const char *path, off_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	uint64_t h = 0;
	void *p;

	if (fd < 0 || fstat(fd, &sb) || !sb.st_size)
		goto out;
	p = malloc((size_t)sb.st_size);
	if (p && pread(fd, p, (size_t)sb.st_size, 0) == sb.st_size)
		h = XXH3_64bits(p, (size_t)sb.st_size);
	free(p);
	*size = sb.st_size;
out:
	if (fd >= 0)
		close(fd);
	return h;
}

/* Entries in dir but . and .. */
static int entries(const char *dir, char *first, size_t len)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (!n++)
			snprintf(first, len, "%s", e->d_name);
	}
	if (d)
		closedir(d);
	return n;
}

static uint64_t free_bytes(const char *dir)
{
	struct statvfs v;

	return statvfs(dir, &v) ? 0 : (uint64_t)v.f_bavail * v.f_frsize;
}

static enum test_result full_disk_checks(struct test_ctx *ctx,
					 const char *dir, const char *path)
{
	struct ferry_snapshot_opts o = { 0 };
	struct ferry_snapshot_stats st;
	struct ferry_snapshot_info info;
	struct ferry_guest_vm *small, *big;
	uint64_t h0, h1, free0;
	off_t size0 = 0, size1 = 0;
	char name[256];
	int fd, ret;

	CHECK_OK(ctx, full_vm(ctx->backing, 2 << 20, &small));
	CHECK_OK(ctx, full_vm(ctx->backing, 16 << 20, &big));
	CHECK_OK(ctx, ferry_snapshot_save_path(&small->vm, path, &o, &st));
	h0 = file_hash(path, &size0);
	free0 = free_bytes(dir);
	CHECK(ctx, h0 && entries(dir, name, sizeof(name)) == 1,
	      "the first save left %d entries", entries(dir, name,
						       sizeof(name)));
	/* 16 MiB of pages into what is left of 6 MiB. */
	ret = ferry_snapshot_save_path(&big->vm, path, &o, &st);
	CHECK(ctx, ret == -ENOSPC, "the save to a full disk returned %d (%s)",
	      ret, ferry_error_msg());
	CHECK_EQ(ctx, entries(dir, name, sizeof(name)), 1);
	CHECK(ctx, !strcmp(name, strrchr(path, '/') + 1), "left: %s", name);
	h1 = file_hash(path, &size1);
	CHECK(ctx, h1 == h0 && size1 == size0, "the previous snapshot "
	      "changed (%lld bytes, was %lld)", (long long)size1,
	      (long long)size0);
	CHECK_EQ(ctx, free_bytes(dir), free0);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(ctx, fd >= 0, "open %s", path);
	CHECK_OK(ctx, ferry_snapshot_info(fd, &info));
	close(fd);
	/* One that fits replaces it whole. */
	CHECK_OK(ctx, ferry_snapshot_save_path(&small->vm, path, &o, &st));
	CHECK(ctx, file_hash(path, &size1) && entries(dir, name,
						       sizeof(name)) == 1,
	      "the second save left %d entries", entries(dir, name,
							 sizeof(name)));
	ferry_guest_vm_destroy(small);
	ferry_guest_vm_destroy(big);
	return TEST_PASS;
}

static enum test_result full_disk(struct test_ctx *ctx)
{
	char dir[] = "/tmp/ferry-full-XXXXXX", path[64];
	enum test_result res;

	CHECK(ctx, mkdtemp(dir), "mkdtemp");
	if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=6m")) {
		rmdir(dir);
		SKIP(ctx, "cannot mount a tmpfs: %s", strerror(errno));
	}
	snprintf(path, sizeof(path), "%s/vm.snap", dir);
	res = full_disk_checks(ctx, dir, path);
	umount2(dir, MNT_DETACH);
	rmdir(dir);
	return res;
}

/* ---- a save in flight ---------------------------------------------------- */

/* A VM of 2 vCPUs that write (and read) without end, started. */
static int running_vm(enum ferry_backing backing,
		      struct ferry_guest_vm **out)
{
	struct ferry_guest_config cfg;
	int ret;

	tvm_config(&cfg, 2, "random,read=20", 0);
	ret = ferry_guest_vm_create(&cfg, backing, TVM_MEM_SIZE, out);
	if (!ret)
		ret = ferry_guest_start((*out)->guest);
	usleep(50000);
	return ret;
}

/*
 * vCPU ops whose resume, once armed, returns only when the test says: a
 * live save's vCPUs then run with every page write-protected and no
 * fault thread yet, so each write they make is held.
 */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool armed, resumed, go;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0 };

static int gated_resume(void *vm)
{
	int ret = ferry_guest_vcpu_ops()->resume(vm);

	pthread_mutex_lock(&gate.lock);
	if (gate.armed) {
		gate.resumed = true;
		pthread_cond_broadcast(&gate.cond);
		while (!gate.go)
			pthread_cond_wait(&gate.cond, &gate.lock);
		gate.armed = false;
	}
	pthread_mutex_unlock(&gate.lock);
	return ret;
}

static void gate_arm(void)
{
	pthread_mutex_lock(&gate.lock);
	gate.armed = true;
	gate.resumed = gate.go = false;
	pthread_mutex_unlock(&gate.lock);
}

static void gate_wait_resumed(void)
{
	pthread_mutex_lock(&gate.lock);
	while (!gate.resumed)
		pthread_cond_wait(&gate.cond, &gate.lock);
	pthread_mutex_unlock(&gate.lock);
}

static void gate_open(void)
{
	pthread_mutex_lock(&gate.lock);
	gate.go = true;
	pthread_cond_broadcast(&gate.cond);
	pthread_mutex_unlock(&gate.lock);
}

/* Steps that stood still for 100 ms: every vCPU waits (a held write). */
static bool stuck(struct ferry_guest *g)
{
	struct ferry_guest_stats a, b;

	for (int i = 0; i < 50; i++) {
		ferry_guest_stats(g, &a);
		usleep(100000);
		ferry_guest_stats(g, &b);
		if (a.steps == b.steps)
			return true;
	}
	return false;
}

/* Pages of guest memory write-protected (pagemap's bit 57), or -errno. */
static ssize_t protected_pages(const struct ferry_mem *mem)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ssize_t count = fd < 0 ? -errno : 0;
	uint64_t *e = NULL;

	for (unsigned int i = 0; count >= 0 && i < mem->nr_regions; i++) {
		const struct ferry_region *r = &mem->regions[i];
		size_t n = r->size / 4096;
		off_t at = (off_t)((uintptr_t)r->guest / 4096 * 8);
		uint64_t *grown = realloc(e, n * 8);

		if (!grown || pread(fd, grown, n * 8, at) != (ssize_t)(n * 8))
			count = -EIO;
		e = grown ? grown : e;
		for (size_t k = 0; count >= 0 && k < n; k++)
			count += !!(e[k] & (1ULL << 57));
	}
	free(e);
	if (fd >= 0)
		close(fd);
	return count;
}

/*
 * Cancelled after the pause, with the guest's writes held (its vCPUs
 * stand still): -ECANCELED with a reason, the phase FAILED.  To `path`,
 * or (path NULL) to fd.
 */
static enum test_result cancel_held(struct test_ctx *ctx,
				    struct ferry_guest_vm *gv,
				    const char *path, int fd)
{
	struct ferry_snapshot_opts o = { .live = true };
	struct ferry_vcpu_ops ops = *ferry_guest_vcpu_ops();
	struct ferry_vm vm = gv->vm;
	struct ferry_snapshot_progress p;
	struct ferry_snapshot_save *sv;
	ssize_t prot;
	bool held;
	int ret;

	ops.resume = gated_resume;
	vm.ops = &ops;
	gate_arm();
	CHECK_OK(ctx, path ? ferry_snapshot_start_path(&vm, path, &o, &sv) :
		 ferry_snapshot_start(&vm, fd, &o, &sv));
	gate_wait_resumed();
	held = stuck(gv->guest);
	prot = protected_pages(gv->mem);
	ferry_snapshot_progress(sv, &p);
	ferry_snapshot_cancel(sv);
	gate_open();
	CHECK(ctx, held && prot > 0, "the vCPUs ran on (%zd pages "
	      "write-protected)", prot);
	CHECK(ctx, p.phase == FERRY_PHASE_SWITCHOVER, "while resuming: %s",
	      ferry_migrate_phase_name(p.phase));
	ret = ferry_snapshot_wait(sv, 20000);
	CHECK(ctx, ret == -ECANCELED && strstr(ferry_error_msg(),
	      "runs on as before"), "%d (%s)", ret, ferry_error_msg());
	ferry_snapshot_progress(sv, &p);
	CHECK(ctx, p.phase == FERRY_PHASE_FAILED, "after: %s",
	      ferry_migrate_phase_name(p.phase));
	ferry_snapshot_destroy(sv);
	return TEST_PASS;
}

/* Every vCPU steps on (the held writes went on); then it verifies. */
static enum test_result runs_on(struct test_ctx *ctx,
				struct ferry_guest_vm *gv)
{
	struct ferry_guest_stats a, b;
	struct ferry_verify_report rep;
	bool moved = false;

	ferry_guest_stats(gv->guest, &a);
	for (int i = 0; i < 500 && !moved; i++) {
		usleep(10000);
		ferry_guest_stats(gv->guest, &b);
		moved = true;
		for (unsigned int v = 0; v < a.nr_vcpus; v++)
			moved &= b.vcpu[v].steps > a.vcpu[v].steps;
	}
	CHECK(ctx, moved, "a vCPU stands still after the cancel");
	CHECK_EQ(ctx, protected_pages(gv->mem), 0);
	CHECK_OK(ctx, ferry_guest_pause(gv->guest));
	CHECK_OK(ctx, ferry_guest_verify(gv->guest, &rep));
	CHECK(ctx, rep.ok, "verifier: %llu lost, %llu torn, %llu duplicated",
	      (unsigned long long)rep.lost, (unsigned long long)rep.torn,
	      (unsigned long long)rep.duplicated);
	CHECK_OK(ctx, ferry_guest_resume(gv->guest));
	return TEST_PASS;
}

/* A snapshot restored eagerly and verified: the image of the pause. */
static enum test_result restores(struct test_ctx *ctx, int fd)
{
	struct ferry_restore_opts o = { .mode = FERRY_RESTORE_EAGER };
	struct ferry_guest_dest dd = { .keep_backing = true };
	struct ferry_verify_report rep;
	struct ferry_restore *rs;

	CHECK_OK(ctx, ferry_restore_start(fd, ferry_guest_vm_dest_ops(), &dd,
					  &o, &rs));
	CHECK_OK(ctx, ferry_restore_finish(rs, NULL));
	CHECK_OK(ctx, ferry_guest_pause(dd.gv->guest));
	CHECK_OK(ctx, ferry_guest_verify(dd.gv->guest, &rep));
	CHECK(ctx, rep.ok && rep.cells_written > 0, "restored: %llu lost, "
	      "%llu torn, %llu duplicated", (unsigned long long)rep.lost,
	      (unsigned long long)rep.torn,
	      (unsigned long long)rep.duplicated);
	ferry_restore_destroy(rs);
	ferry_guest_vm_destroy(dd.gv);
	return TEST_PASS;
}

static enum test_result cancel_live(struct test_ctx *ctx)
{
	char dir[] = "/tmp/ferry-cancel-XXXXXX", path[64], name[256];
	struct ferry_snapshot_opts o = { .live = true };
	struct ferry_snapshot_stats st;
	struct ferry_guest_vm *gv;
	struct stat sb;
	int fd;

	CHECK(ctx, mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	snprintf(path, sizeof(path), "%s/vm.snap", dir);
	CHECK_OK(ctx, running_vm(ctx->backing, &gv));
	TRY(cancel_held(ctx, gv, path, -1));
	CHECK_EQ(ctx, entries(dir, name, sizeof(name)), 0);
	TRY(runs_on(ctx, gv));
	fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	CHECK(ctx, fd >= 0, "O_TMPFILE: %s", strerror(errno));
	CHECK_OK(ctx, ftruncate(fd, 1 << 20) ? -errno : 0);
	TRY(cancel_held(ctx, gv, NULL, fd));
	CHECK(ctx, !fstat(fd, &sb) && sb.st_size == 0, "the file keeps %lld "
	      "bytes", (long long)sb.st_size);
	TRY(runs_on(ctx, gv));
	/* Let be, a save of the same VM completes, and restores. */
	CHECK_OK(ctx, ferry_snapshot_save(&gv->vm, fd, &o, &st));
	CHECK_OK(ctx, ferry_guest_pause(gv->guest));
	TRY(restores(ctx, fd));
	close(fd);
	rmdir(dir);
	ferry_guest_vm_destroy(gv);
	return TEST_PASS;
}

/* ---- progress from another thread --------------------------------------- */

struct sampler {
	struct ferry_snapshot_save *sv;
	pthread_t thread;
	struct ferry_snapshot_progress last;
	unsigned int samples;
	char wrong[200];
};

static void judge(struct sampler *sm, const struct ferry_snapshot_progress *a,
		  const struct ferry_snapshot_progress *b)
{
	if (sm->wrong[0])
		return;
	if (b->phase < a->phase || b->pages_saved < a->pages_saved ||
	    b->bytes_written < a->bytes_written ||
	    b->held_writes < a->held_writes || (a->pages && b->pages !=
	    a->pages) || (b->pages && b->pages_saved > b->pages))
		snprintf(sm->wrong, sizeof(sm->wrong), "%s %llu/%llu saved, "
			 "then %s %llu/%llu", ferry_migrate_phase_name(a->phase),
			 (unsigned long long)a->pages_saved,
			 (unsigned long long)a->pages,
			 ferry_migrate_phase_name(b->phase),
			 (unsigned long long)b->pages_saved,
			 (unsigned long long)b->pages);
}

static void *sampler_main(void *arg)
{
	struct sampler *sm = arg;
	struct ferry_snapshot_progress p;

	ferry_snapshot_progress(sm->sv, &sm->last);
	do {
		ferry_snapshot_progress(sm->sv, &p);
		judge(sm, &sm->last, &p);
		sm->last = p;
		sm->samples++;
		usleep(200);
	} while (p.phase < FERRY_PHASE_DONE);
	return NULL;
}

static enum test_result save_progress(struct test_ctx *ctx)
{
	struct ferry_snapshot_opts o = { .live = true };
	struct ferry_snapshot_stats st;
	struct ferry_guest_vm *gv;
	struct sampler sm = { 0 };
	int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	CHECK(ctx, fd >= 0, "O_TMPFILE: %s", strerror(errno));
	CHECK_OK(ctx, running_vm(ctx->backing, &gv));
	CHECK_OK(ctx, ferry_snapshot_start(&gv->vm, fd, &o, &sm.sv));
	CHECK(ctx, !pthread_create(&sm.thread, NULL, sampler_main, &sm),
	      "no sampler thread");
	CHECK_OK(ctx, ferry_snapshot_wait(sm.sv, 20000));
	pthread_join(sm.thread, NULL);
	CHECK_OK(ctx, ferry_snapshot_get_stats(sm.sv, &st));
	CHECK(ctx, !sm.wrong[0], "backwards: %s", sm.wrong);
	CHECK(ctx, sm.last.phase == FERRY_PHASE_DONE && sm.last.pages > 0 &&
	      sm.last.pages_saved == sm.last.pages && sm.last.eta_s == 0,
	      "at the end: %s, %llu of %llu saved",
	      ferry_migrate_phase_name(sm.last.phase),
	      (unsigned long long)sm.last.pages_saved,
	      (unsigned long long)sm.last.pages);
	CHECK_EQ(ctx, st.pages + st.zero_pages, sm.last.pages_saved);
	CHECK_EQ(ctx, st.bytes, sm.last.bytes_written);
	CHECK_EQ(ctx, st.held_writes, sm.last.held_writes);
	ferry_snapshot_destroy(sm.sv);
	CHECK_OK(ctx, ferry_guest_pause(gv->guest));
	TRY(restores(ctx, fd));
	ferry_guest_vm_destroy(gv);
	close(fd);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "save_full_disk_leaves_nothing", full_disk, B_SHMEM, 0, NEED_ROOT,
	  0, 60 },
	{ "save_cancel_live_leaves_vm_running", cancel_live, B_ALL, 0,
	  NEED_UFFD_WP | NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 60 },
	{ "save_progress", save_progress, B_SHMEM, 0,
	  NEED_UFFD_WP | NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 60 },
};

TEST_SUITE(save, cases)
