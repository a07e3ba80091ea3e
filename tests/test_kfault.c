// SPDX-License-Identifier: MIT
/*
 * Kernel-mode faults: the kernel itself touching guest memory that has
 * not arrived, as KVM, vhost or a VMM's block backend do.  A helper thread
 * makes the syscalls through the guest view the moment ferry resumes the
 * vCPUs: pread() from a file into a guest page (the kernel writes it) and
 * pwrite() of a guest page to a file (the kernel reads it).  Each must
 * wait for its page and move the right bytes -- during post-copy, lazy
 * restore, a clone's start and a live save (where the kernel's write hits
 * a write-protected page) -- and the VM verifies afterwards.  The bytes
 * written are the page's own, so the guest's memory stays what its vCPUs
 * made it.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "ferry/clone.h"
#include "ferry/restore.h"
#include "ferry/snapshot.h"
#include "guest_test.h"
#include "vmm_test.h"

#define NR_TOUCH	32
#define STEPS		1500
#define MORE		3000
#define VCPUS		2
#define PAGE		4096UL

struct kfault {
	struct ferry_mem **mem;		/* where the pages are, at the hook */
	bool write_only;		/* live save: kernel writes only */
	uint64_t gpa[NR_TOUCH];
	int expect_fd;			/* page i's bytes at i * PAGE */
	int out_fd;			/* what the kernel read of page i */
	pthread_t helper;
	bool started;
	int err;			/* helper: first errno, 0 */
	unsigned int failed_at;
};

static int tmp_file(void)
{
	return open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
}

static uint8_t *view_of(struct ferry_mem *mem, uint64_t gpa, bool alias)
{
	struct ferry_region *r = ferry_mem_find_gpa(mem, gpa);

	return (alias ? r->alias : r->guest) + (gpa - r->guest_base);
}

/* The helper: one syscall per page, in the kernel, into the guest view. */
static void *touch(void *arg)
{
	struct kfault *k = arg;

	for (unsigned int i = 0; i < NR_TOUCH && !k->err; i++) {
		uint8_t *page = view_of(*k->mem, k->gpa[i], false);
		off_t at = (off_t)(i * PAGE);
		ssize_t n = k->write_only || i % 2 == 0 ?
			    pread(k->expect_fd, page, PAGE, at) :
			    pwrite(k->out_fd, page, PAGE, at);

		if (n != (ssize_t)PAGE) {
			k->err = n < 0 ? errno : EIO;
			k->failed_at = i;
		}
	}
	return NULL;
}

static void start_touching(void *arg)
{
	struct kfault *k = arg;

	k->started = pthread_create(&k->helper, NULL, touch, k) == 0;
}

/*
 * Pages the vCPUs wrote, from the top of memory down (far from where
 * background fills start), with their bytes as the source has them.
 */
static enum test_result pick_pages(struct test_ctx *ctx, struct kfault *k,
				   struct ferry_mem *src)
{
	unsigned int n = 0;

	k->expect_fd = tmp_file();
	k->out_fd = tmp_file();
	CHECK(ctx, k->expect_fd >= 0 && k->out_fd >= 0, "O_TMPFILE: %s",
	      strerror(errno));
	for (int i = (int)src->nr_regions - 1; i >= 0 && n < NR_TOUCH; i--) {
		struct ferry_region *r = &src->regions[i];

		for (size_t off = r->size; off >= 3 * PAGE && n < NR_TOUCH;
		     off -= 3 * PAGE) {
			uint64_t first;

			memcpy(&first, r->alias + off - PAGE, 8);
			if (!first)
				continue;
			k->gpa[n] = r->guest_base + off - PAGE;
			CHECK_EQ(ctx, pwrite(k->expect_fd, r->alias + off - PAGE,
					     PAGE, (off_t)(n * PAGE)), PAGE);
			n++;
		}
	}
	CHECK_EQ(ctx, n, NR_TOUCH);
	return TEST_PASS;
}

/* The helper finished without an error and every byte is right. */
static enum test_result check_touched(struct test_ctx *ctx, struct kfault *k,
				      struct ferry_mem *mem)
{
	uint8_t want[PAGE], got[PAGE];

	CHECK(ctx, k->started, "the vCPUs were never resumed");
	pthread_join(k->helper, NULL);
	CHECK(ctx, !k->err, "the kernel's access to page %u failed: %s",
	      k->failed_at, strerror(k->err));
	for (unsigned int i = 0; i < NR_TOUCH; i++) {
		CHECK_EQ(ctx, pread(k->expect_fd, want, PAGE,
				    (off_t)(i * PAGE)), PAGE);
		CHECK(ctx, !memcmp(view_of(mem, k->gpa[i], true), want, PAGE),
		      "page %u holds other bytes", i);
		if (k->write_only || i % 2 == 0)
			continue;
		CHECK_EQ(ctx, pread(k->out_fd, got, PAGE, (off_t)(i * PAGE)),
			 PAGE);
		CHECK(ctx, !memcmp(got, want, PAGE), "the kernel read other "
		      "bytes of page %u", i);
	}
	close(k->expect_fd);
	close(k->out_fd);
	return TEST_PASS;
}

/* Run on, pause, verify. */
static enum test_result run_verify(struct test_ctx *ctx, struct ferry_guest *g)
{
	struct ferry_verify_report rep;

	CHECK_OK(ctx, ferry_guest_set_step_limit(g, MORE));
	CHECK_OK(ctx, ferry_guest_wait_settled(g, 20000));
	CHECK_OK(ctx, ferry_guest_pause(g));
	CHECK_OK(ctx, ferry_guest_verify(g, &rep));
	tvm_dump_report(&rep);
	CHECK(ctx, rep.ok, "verifier: %llu lost, %llu torn, %llu duplicated, "
	      "%llu read errors", (unsigned long long)rep.lost,
	      (unsigned long long)rep.torn, (unsigned long long)rep.duplicated,
	      (unsigned long long)rep.read_errors);
	return TEST_PASS;
}

static enum test_result need_kernel_faults(struct test_ctx *ctx)
{
	const struct ferry_uffd_caps *c = ferry_uffd_probe();

	if (c->kernel_err)
		SKIP(ctx, "%s", c->kernel_reason);
	return TEST_PASS;
}

/* A source on the VMM's gapped mapping, run to STEPS and settled. */
static enum test_result source(struct test_ctx *ctx, struct vmm_vm *src)
{
	struct ferry_guest_config cfg;

	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = VCPUS;
	cfg.seed = 5;
	cfg.step_limit = STEPS;
	ferry_guest_config_set_workload(&cfg, "random,read=20");
	TRY(vmm_vm_create(ctx, src, &cfg, ctx->backing));
	src->vm.ops = ferry_guest_vcpu_ops();	/* only the other side hooks */
	CHECK_OK(ctx, ferry_guest_start(src->g));
	CHECK_OK(ctx, ferry_guest_wait_settled(src->g, 20000));
	CHECK_OK(ctx, ferry_guest_pause(src->g));
	return TEST_PASS;
}

static enum test_result save_to(struct test_ctx *ctx, struct vmm_vm *src,
				int fd)
{
	struct ferry_snapshot_opts o = { 0 };
	struct ferry_snapshot_stats st;

	CHECK_OK(ctx, ferry_snapshot_save(&src->vm, fd, &o, &st));
	return TEST_PASS;
}

/* ---- post-copy ---------------------------------------------------------- */

/* Every page is owed when the destination resumes. */
static enum test_result postcopy(struct test_ctx *ctx)
{
	struct vmm_vm src, dst = { .step_limit = STEPS };
	struct kfault k = { .mem = &dst.ram.mem };
	struct ferry_migrate_opts o;
	char why[600];

	TRY(need_kernel_faults(ctx));
	TRY(source(ctx, &src));
	TRY(pick_pages(ctx, &k, src.ram.mem));
	ferry_migrate_opts_init(&o);
	o.mode = FERRY_MODE_POSTCOPY;
	o.postcopy_at_once = true;
	vmm_hook_arm(start_touching, &k);
	CHECK(ctx, !vmm_migrate(&src, &dst, &o, 1, why, sizeof(why)), "%s",
	      why);
	TRY(check_touched(ctx, &k, dst.ram.mem));
	TRY(run_verify(ctx, dst.g));
	vmm_vm_destroy(&dst);
	vmm_vm_destroy(&src);
	return TEST_PASS;
}

/* ---- lazy restore ------------------------------------------------------- */

/*
 * Recording the working set holds the background reader back until
 * finish, so every page the helper touches is still in the file.
 */
static enum test_result lazy_restore(struct test_ctx *ctx)
{
	struct ferry_restore_opts o = { .mode = FERRY_RESTORE_LAZY,
					.record_ws = true };
	struct vmm_vm src, dst = { .step_limit = STEPS };
	struct kfault k = { .mem = &dst.ram.mem };
	struct ferry_restore_stats st;
	struct ferry_restore *rs;
	int fd = tmp_file();

	CHECK(ctx, fd >= 0, "O_TMPFILE: %s", strerror(errno));
	TRY(need_kernel_faults(ctx));
	TRY(source(ctx, &src));
	TRY(pick_pages(ctx, &k, src.ram.mem));
	TRY(save_to(ctx, &src, fd));
	vmm_hook_arm(start_touching, &k);
	CHECK_OK(ctx, ferry_restore_start(fd, &vmm_dest_ops, &dst, &o, &rs));
	TRY(check_touched(ctx, &k, dst.ram.mem));
	CHECK_OK(ctx, ferry_restore_finish(rs, &st));
	CHECK(ctx, st.minor_faults + st.missing_faults > 0, "no fault was "
	      "served: the pages were there before the kernel touched them");
	TRY(run_verify(ctx, dst.g));
	ferry_restore_destroy(rs);
	vmm_vm_destroy(&dst);
	vmm_vm_destroy(&src);
	close(fd);
	return TEST_PASS;
}

/* ---- clones ------------------------------------------------------------- */

static struct ferry_mem *clone_mem;

static int clone_create(void *arg, const struct ferry_wire_stream *stream,
			struct ferry_mem *mem, struct ferry_vm *vm)
{
	int ret = ferry_guest_vm_clone_ops()->create(arg, stream, mem, vm);

	if (ret)
		return ret;
	clone_mem = mem;
	vm->ops = &vmm_hooked_ops;
	return ferry_guest_set_step_limit(vm->handle, STEPS);
}

static void clone_destroy(void *arg, struct ferry_vm *vm)
{
	ferry_guest_vm_clone_ops()->destroy(arg, vm);
}

static const struct ferry_clone_ops hooked_clone_ops = {
	.create = clone_create,
	.destroy = clone_destroy,
};

static enum test_result clone_start(struct test_ctx *ctx)
{
	struct kfault k = { .mem = &clone_mem };
	struct ferry_clone_source *cs;
	struct ferry_clone *c;
	struct vmm_vm src;
	int fd = tmp_file();

	CHECK(ctx, fd >= 0, "O_TMPFILE: %s", strerror(errno));
	TRY(need_kernel_faults(ctx));
	TRY(source(ctx, &src));
	TRY(pick_pages(ctx, &k, src.ram.mem));
	TRY(save_to(ctx, &src, fd));
	CHECK_OK(ctx, ferry_clone_source_create(fd, &cs));
	vmm_hook_arm(start_touching, &k);
	CHECK_OK(ctx, ferry_clone_create(cs, &hooked_clone_ops, NULL, &c));
	TRY(check_touched(ctx, &k, clone_mem));
	CHECK_OK(ctx, ferry_clone_error(c));
	TRY(run_verify(ctx, ferry_clone_vm(c)->handle));
	ferry_clone_destroy(c);
	ferry_clone_source_destroy(cs);
	vmm_vm_destroy(&src);
	close(fd);
	return TEST_PASS;
}

/* ---- live save ---------------------------------------------------------- */

/*
 * The kernel writes guest pages while they are write-protected for the
 * save: each write waits until its page is saved, then lands.  The file
 * restores to a VM that verifies, and so does the source.
 */
static enum test_result live_save(struct test_ctx *ctx)
{
	struct ferry_snapshot_opts so = { .live = true };
	struct ferry_restore_opts ro = { .mode = FERRY_RESTORE_EAGER };
	struct vmm_vm src, dst = { .step_limit = STEPS };
	struct ferry_snapshot_stats st;
	struct ferry_restore *rs;
	struct kfault k = { .write_only = true };
	int fd = tmp_file();

	CHECK(ctx, fd >= 0, "O_TMPFILE: %s", strerror(errno));
	TRY(need_kernel_faults(ctx));
	TRY(source(ctx, &src));
	TRY(pick_pages(ctx, &k, src.ram.mem));
	k.mem = &src.ram.mem;
	src.vm.ops = &vmm_hooked_ops;
	vmm_hook_arm(start_touching, &k);
	CHECK_OK(ctx, ferry_snapshot_save(&src.vm, fd, &so, &st));
	TRY(check_touched(ctx, &k, src.ram.mem));
	if (getenv("FERRY_TEST_VERBOSE"))
		fprintf(stderr, "    held writes %llu\n",
			(unsigned long long)st.held_writes);
	CHECK_OK(ctx, ferry_guest_resume(src.g));	/* paused by source() */
	TRY(run_verify(ctx, src.g));
	CHECK_OK(ctx, ferry_restore_start(fd, &vmm_dest_ops, &dst, &ro, &rs));
	CHECK_OK(ctx, ferry_restore_finish(rs, NULL));
	TRY(run_verify(ctx, dst.g));
	ferry_restore_destroy(rs);
	vmm_vm_destroy(&dst);
	vmm_vm_destroy(&src);
	close(fd);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "kfault_postcopy", postcopy, B_SHMEM | B_HUGETLB, 0,
	  NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
	{ "kfault_lazy_restore", lazy_restore, B_ALL, 0,
	  NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
	{ "kfault_clone", clone_start, B_SHMEM | B_HUGETLB, 0,
	  NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
	{ "kfault_live_save", live_save, B_SHMEM | B_HUGETLB, 0,
	  NEED_UFFD_WP, 0, 0 },
};

TEST_SUITE(kfault, cases)
