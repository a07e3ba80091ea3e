// SPDX-License-Identifier: MIT
/*
 * Embedding: memory a VMM already has.  Its own mapping taken as the guest
 * view (and everything that cannot work refused with a reason), regions at
 * guest-physical addresses with a gap, offsets into one memfd, a
 * userfaultfd the VMM hands in; then pre-copy, post-copy, hybrid and lazy
 * restore with the vCPUs on the VMM's mapping and a region above the gap,
 * each ending with the verifier.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#include "ferry/restore.h"
#include "ferry/snapshot.h"
#include "guest_test.h"
#include "vmm_test.h"

/* ---- the VMM's mapping -------------------------------------------------- */

/*
 * The region's guest view is the VMM's mapping itself: what the VMM
 * writes there, ferry sees through the alias, and ferry leaves the
 * mapping alone when it is destroyed.
 */
static enum test_result mapped_region(struct test_ctx *ctx)
{
	struct vmm_ram ram;
	struct ferry_region *r;

	CHECK_OK(ctx, vmm_ram_create_gapped(&ram, ctx->backing));
	CHECK_EQ(ctx, ram.mem->nr_regions, 2);
	r = &ram.mem->regions[1];
	CHECK(ctx, r->guest == ram.map + VMM_LOW_SIZE, "guest view is not the "
	      "VMM's mapping");
	CHECK(ctx, !r->own_guest && ram.mem->regions[0].own_guest == false,
	      "ferry claims the VMM's mapping");
	CHECK(ctx, r->alias != r->guest, "no alias of ferry's own");
	CHECK_EQ(ctx, r->guest_base, VMM_HIGH_GPA);
	CHECK_EQ(ctx, r->offset, VMM_LOW_SIZE);
	CHECK_EQ(ctx, ram.mem->total_size, 2 * VMM_LOW_SIZE);
	for (size_t off = 0; off < ram.size; off += r->page_size)
		ram.map[off] = (uint8_t)(off / r->page_size + 3);
	CHECK_EQ(ctx, r->alias[0], (uint8_t)(VMM_LOW_SIZE / r->page_size + 3));
	CHECK(ctx, ferry_mem_find_gpa(ram.mem, VMM_LOW_SIZE) == NULL,
	      "a gpa in the gap has a region");
	CHECK(ctx, ferry_mem_find_gpa(ram.mem, VMM_HIGH_GPA + 5) == r,
	      "the gpa above the gap is not found");
	CHECK(ctx, ferry_mem_find(ram.mem, ram.map + VMM_LOW_SIZE) == r,
	      "the VMM's address is not found");
	ferry_mem_destroy(ram.mem);
	ram.mem = NULL;
	ram.map[ram.size - 1] = 9;	/* still mapped */
	vmm_ram_destroy(&ram);
	return TEST_PASS;
}

static enum test_result refused(struct test_ctx *ctx, struct ferry_mem *mem,
				struct ferry_region_spec spec, const char *what)
{
	int ret = ferry_mem_add_region_mapped(mem, &spec, NULL);

	CHECK(ctx, ret == -EINVAL, "%s: accepted (%d)", what, ret);
	CHECK(ctx, strstr(ferry_error_msg(), what), "reason '%s' does not say "
	      "'%s'", ferry_error_msg(), what);
	return TEST_PASS;
}

static void *map(size_t len, int flags, int fd, off_t off)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, off);

	return p == MAP_FAILED ? NULL : p;
}

/* Every mapping that cannot work is refused, with a reason. */
static enum test_result mapped_refusals(struct test_ctx *ctx)
{
	size_t mb = 1 << 20;
	int fd = memfd_create("vmm", MFD_CLOEXEC), other = memfd_create("o", 0);
	struct ferry_region_spec ok;
	struct ferry_mem *mem;
	uint8_t *shared, *anon, *priv, *foreign, *holed;

	CHECK(ctx, fd >= 0 && other >= 0, "memfd_create: %s", strerror(errno));
	CHECK_EQ(ctx, ftruncate(fd, 4 * mb), 0);
	CHECK_EQ(ctx, ftruncate(other, 4 * mb), 0);
	shared = map(2 * mb, MAP_SHARED, fd, (off_t)mb);
	anon = map(mb, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	priv = map(mb, MAP_PRIVATE, fd, 0);
	foreign = map(mb, MAP_SHARED, other, 0);
	holed = map(3 * 4096, MAP_SHARED, fd, 0);
	CHECK(ctx, shared && anon && priv && foreign && holed, "mmap failed");
	CHECK_EQ(ctx, munmap(holed + 4096, 4096), 0);
	CHECK_OK(ctx, ferry_mem_create(&mem));
	ok = (struct ferry_region_spec){ .addr = shared, .size = mb,
		.memfd = fd, .offset = mb, .gpa = 0,
		.backing = FERRY_BACKING_SHMEM };
	struct ferry_region_spec s = ok;

	s.addr = anon, s.offset = 0;
	TRY(refused(ctx, mem, s, "private anonymous"));
	s = ok, s.addr = priv, s.offset = 0;
	TRY(refused(ctx, mem, s, "MAP_PRIVATE"));
	s = ok, s.addr = foreign, s.offset = 0;
	TRY(refused(ctx, mem, s, "another file"));
	s = ok, s.offset = 0;
	TRY(refused(ctx, mem, s, "offset"));
	s = ok, s.addr = holed, s.offset = 0, s.size = 3 * 4096;
	TRY(refused(ctx, mem, s, "not mapped"));
	s = ok, s.addr = shared + 100;
	TRY(refused(ctx, mem, s, "aligned"));
	s = ok, s.size = mb + 100;
	TRY(refused(ctx, mem, s, "multiple"));
	s = ok, s.offset = 3 * mb, s.addr = NULL;
	TRY(refused(ctx, mem, s, "NULL"));
	s = ok, s.addr = shared + mb, s.offset = 2 * mb, s.size = 4 * mb;
	TRY(refused(ctx, mem, s, "bytes"));
	s = ok, s.backing = FERRY_BACKING_HUGETLB;
	TRY(refused(ctx, mem, s, "hugetlb"));
	s = ok, s.gpa = 4096 + 1;
	TRY(refused(ctx, mem, s, "guest-physical"));
	CHECK_OK(ctx, ferry_mem_add_region_mapped(mem, &ok, NULL));
	s = ok, s.gpa = ok.gpa + mb / 2, s.addr = shared + mb,
	s.offset = 2 * mb;
	TRY(refused(ctx, mem, s, "overlaps region"));
	s = ok, s.gpa = 64 * mb;
	TRY(refused(ctx, mem, s, "overlaps region 0's views"));
	CHECK_EQ(ctx, mem->nr_regions, 1);
	ferry_mem_destroy(mem);
	close(fd);
	close(other);
	return TEST_PASS;
}

/*
 * Regions at explicit addresses are kept in guest-physical order; one
 * added by running total goes after the highest; an offset into the
 * memfd is honoured by every operation on the file.
 */
static enum test_result gpa_order(struct test_ctx *ctx)
{
	const uint64_t gpa[] = { 64 << 20, 0 };
	const uint64_t size[] = { 1 << 20, 1 << 20 };
	struct ferry_region *r, *added;
	struct vmm_ram ram;
	uint64_t map[8] = { 0 };

	CHECK_OK(ctx, vmm_ram_create(&ram, FERRY_BACKING_SHMEM, gpa, size, 2));
	CHECK_EQ(ctx, ram.mem->regions[0].guest_base, 0);
	CHECK_EQ(ctx, ram.mem->regions[1].guest_base, 64 << 20);
	r = ferry_mem_find_gpa(ram.mem, 0);
	CHECK_EQ(ctx, r->offset, 1 << 20);	/* the second in the file */
	r->guest[5 * 4096] = 1;
	CHECK_EQ(ctx, ferry_mem_region_populated(r, map), 1);
	CHECK_EQ(ctx, map[0], 1ULL << 5);
	CHECK_OK(ctx, ferry_mem_region_punch(r, 5 * 4096, 4096));
	CHECK_EQ(ctx, r->guest[5 * 4096], 0);
	CHECK_OK(ctx, ferry_mem_add_region(ram.mem, FERRY_BACKING_SHMEM,
					   1 << 20, &added));
	CHECK_EQ(ctx, added->guest_base, 65 << 20);
	CHECK_EQ(ctx, ram.mem->nr_regions, 3);
	CHECK_EQ(ctx, ferry_mem_add_region_at(ram.mem, FERRY_BACKING_SHMEM,
					      1 << 20, 64 << 20, NULL),
		 -EINVAL);
	vmm_ram_destroy(&ram);
	return TEST_PASS;
}

/* ---- a userfaultfd the VMM hands in ------------------------------------- */

static int vmm_uffd(int flags)
{
	return (int)syscall(SYS_userfaultfd, flags);
}

/*
 * Refused: not a userfaultfd, blocking, user-mode-only.  Accepted: one
 * that reports kernel faults, whether the VMM did UFFDIO_API or not; the
 * VMM's descriptor stays open after ferry is done with it.
 */
static enum test_result handed_in_uffd(struct test_ctx *ctx)
{
	struct uffdio_api api = { .api = UFFD_API };
	int blocking = vmm_uffd(O_CLOEXEC);
	int user = vmm_uffd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	int fresh = vmm_uffd(O_CLOEXEC | O_NONBLOCK);
	int done = vmm_uffd(O_CLOEXEC | O_NONBLOCK);
	struct ferry_mem *mem;

	CHECK(ctx, blocking >= 0 && user >= 0 && fresh >= 0 && done >= 0,
	      "userfaultfd: %s", strerror(errno));
	CHECK_EQ(ctx, ioctl(done, UFFDIO_API, &api), 0);
	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_EQ(ctx, ferry_mem_set_uffd(mem, 0), -EINVAL);
	CHECK_EQ(ctx, ferry_mem_set_uffd(mem, blocking), -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "O_NONBLOCK"), "%s",
	      ferry_error_msg());
	CHECK_EQ(ctx, ferry_mem_set_uffd(mem, user), -EINVAL);
	CHECK(ctx, strstr(ferry_error_msg(), "user-mode faults only"), "%s",
	      ferry_error_msg());
	CHECK_EQ(ctx, mem->vmm_uffd, -1);
	CHECK_OK(ctx, ferry_mem_set_uffd(mem, fresh));
	CHECK(ctx, mem->vmm_uffd >= 0 && mem->vmm_uffd != fresh, "not a dup");
	CHECK_OK(ctx, ferry_mem_set_uffd(mem, done));
	ferry_mem_destroy(mem);
	for (int fd = 0; fd < 4; fd++)
		CHECK(ctx, fcntl((int[]){ blocking, user, fresh, done }[fd],
				 F_GETFD) >= 0, "ferry closed the VMM's fd");
	close(blocking);
	close(user);
	close(fresh);
	close(done);
	return TEST_PASS;
}

/*
 * Out of descriptors is -EMFILE, not -ENOMEM: the error a call returns is
 * the one the kernel gave.
 */
static enum test_result errno_kept(struct test_ctx *ctx)
{
	struct rlimit was, low;
	struct ferry_uffd u;
	struct ferry_mem *mem;
	int lowest = dup(0), region, uffd;

	CHECK(ctx, lowest >= 0, "dup: %s", strerror(errno));
	close(lowest);
	ferry_uffd_probe();		/* probed once, before the limit */
	CHECK_OK(ctx, ferry_mem_create(&mem));
	CHECK_EQ(ctx, getrlimit(RLIMIT_NOFILE, &was), 0);
	low = (struct rlimit){ (rlim_t)lowest, was.rlim_max };
	CHECK_EQ(ctx, setrlimit(RLIMIT_NOFILE, &low), 0);
	region = ferry_mem_add_region(mem, FERRY_BACKING_SHMEM, 1 << 20, NULL);
	uffd = ferry_uffd_open(&u, 0, 0, true);
	CHECK_EQ(ctx, setrlimit(RLIMIT_NOFILE, &was), 0);
	CHECK_EQ(ctx, region, -EMFILE);
	CHECK_EQ(ctx, uffd, -EMFILE);
	ferry_mem_destroy(mem);
	return TEST_PASS;
}

/* ---- flows on the VMM's mapping ----------------------------------------- */

#define WORKLOAD	"random,read=30,off=2@200"
#define VCPUS		3

static void config(struct ferry_guest_config *cfg, uint64_t steps)
{
	ferry_guest_config_init(cfg);
	cfg->nr_vcpus = VCPUS;
	cfg->seed = 11;
	cfg->step_limit = steps;
	ferry_guest_config_set_workload(cfg, WORKLOAD);
}

/* Run on, stop, verify; power states as the source's; the gap kept. */
static enum test_result check_vm(struct test_ctx *ctx, struct vmm_vm *v,
				 const enum ferry_mp_state *want)
{
	struct ferry_verify_report rep;

	CHECK_EQ(ctx, v->ram.mem->nr_regions, 2);
	CHECK_EQ(ctx, v->ram.mem->regions[1].guest_base, VMM_HIGH_GPA);
	CHECK(ctx, !v->ram.mem->regions[1].own_guest, "not the VMM's view");
	usleep(100000);
	CHECK_OK(ctx, ferry_guest_stop(v->g));
	CHECK_OK(ctx, ferry_guest_verify(v->g, &rep));
	tvm_dump_report(&rep);
	CHECK(ctx, rep.ok, "verifier: %llu lost, %llu torn, %llu duplicated",
	      (unsigned long long)rep.lost, (unsigned long long)rep.torn,
	      (unsigned long long)rep.duplicated);
	CHECK(ctx, rep.cells_written > 0, "nothing was written");
	for (unsigned int i = 0; i < VCPUS; i++)
		CHECK(ctx, rep.vcpu[i].mp_state == want[i], "vCPU %u is %s, "
		      "was %s", i,
		      ferry_vcpu_mp_state_name(rep.vcpu[i].mp_state),
		      ferry_vcpu_mp_state_name(want[i]));
	return TEST_PASS;
}

static void states(struct vmm_vm *v, enum ferry_mp_state *mp)
{
	for (unsigned int i = 0; i < VCPUS; i++)
		v->vm.ops->get_mp_state(v->g, i, &mp[i]);
}

static enum test_result migrate(struct test_ctx *ctx, enum ferry_mode mode)
{
	enum ferry_mp_state want[VCPUS];
	struct ferry_guest_config cfg;
	struct ferry_migrate_opts o;
	struct vmm_vm src, dst = { 0 };
	char why[600];

	config(&cfg, 0);
	TRY(vmm_vm_create(ctx, &src, &cfg, ctx->backing));
	CHECK_OK(ctx, ferry_guest_start(src.g));
	usleep(100000);
	ferry_migrate_opts_init(&o);
	o.mode = mode;
	CHECK(ctx, !vmm_migrate(&src, &dst, &o, 2, why, sizeof(why)), "%s",
	      why);
	states(&src, want);
	TRY(check_vm(ctx, &dst, want));
	vmm_vm_destroy(&src);
	vmm_vm_destroy(&dst);
	return TEST_PASS;
}

static enum test_result precopy(struct test_ctx *ctx)
{
	return migrate(ctx, FERRY_MODE_PRECOPY);
}

static enum test_result postcopy(struct test_ctx *ctx)
{
	return migrate(ctx, FERRY_MODE_POSTCOPY);
}

static enum test_result hybrid(struct test_ctx *ctx)
{
	return migrate(ctx, FERRY_MODE_HYBRID);
}

/* The destination's memory registered through the VMM's own userfaultfd. */
static int dest_create_uffd(void *arg, const struct ferry_wire_stream *s,
			    struct ferry_vm *vm)
{
	struct vmm_vm *v = arg;
	int fd, ret = vmm_dest_ops.create(arg, s, vm);

	if (ret)
		return ret;
	fd = vmm_uffd(O_CLOEXEC | O_NONBLOCK);
	ret = fd < 0 ? -errno : ferry_mem_set_uffd(v->ram.mem, fd);
	if (fd >= 0)
		close(fd);	/* ferry keeps a duplicate */
	if (ret)
		vmm_dest_ops.discard(arg, vm);
	return ret;
}

static const struct ferry_dest_ops dest_with_uffd = {
	.create = dest_create_uffd,
	.discard = NULL,
};

/*
 * A snapshot of the VM on the VMM's mapping, restored lazily onto another
 * such mapping (the gap kept), its faults served through a userfaultfd
 * the VMM handed in; it runs on and verifies.
 */
static enum test_result lazy_restore(struct test_ctx *ctx)
{
	struct ferry_restore_opts ro = { .mode = FERRY_RESTORE_LAZY };
	struct ferry_snapshot_opts so = { 0 };
	struct ferry_dest_ops ops = dest_with_uffd;
	enum ferry_mp_state want[VCPUS];
	struct ferry_snapshot_stats ss;
	struct ferry_restore_stats rst;
	struct ferry_guest_config cfg;
	struct vmm_vm src, dst = { .step_limit = 3000 };
	struct ferry_restore *rs;
	int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	CHECK(ctx, fd >= 0, "O_TMPFILE: %s", strerror(errno));
	ops.discard = vmm_dest_ops.discard;
	config(&cfg, 1500);
	TRY(vmm_vm_create(ctx, &src, &cfg, ctx->backing));
	CHECK_OK(ctx, ferry_guest_start(src.g));
	CHECK_OK(ctx, ferry_guest_wait_settled(src.g, 20000));
	CHECK_OK(ctx, ferry_snapshot_save(&src.vm, fd, &so, &ss));
	CHECK_OK(ctx, ferry_guest_pause(src.g));
	states(&src, want);
	CHECK_OK(ctx, ferry_restore_start(fd, &ops, &dst, &ro, &rs));
	CHECK(ctx, dst.ram.mem->vmm_uffd >= 0, "no handed-in userfaultfd");
	CHECK_OK(ctx, ferry_restore_finish(rs, &rst));
	CHECK(ctx, rst.minor_faults + rst.missing_faults > 0,
	      "no fault went through the VMM's userfaultfd");
	CHECK_OK(ctx, ferry_guest_wait_settled(dst.g, 20000));
	TRY(check_vm(ctx, &dst, want));
	ferry_restore_destroy(rs);
	vmm_vm_destroy(&dst);
	vmm_vm_destroy(&src);
	close(fd);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "embed_mapped_region", mapped_region, B_ALL, 0, 0, 0, 0 },
	{ "embed_mapped_refusals", mapped_refusals, 0, 0, 0, 0, 0 },
	{ "embed_gpa_order", gpa_order, 0, 0, 0, 0, 0 },
	{ "embed_handed_in_uffd", handed_in_uffd, 0, 0, NEED_ROOT, 0, 0 },
	{ "embed_errno_kept", errno_kept, 0, 0, 0, 0, 0 },
	{ "embed_precopy", precopy, B_SHMEM | B_HUGETLB, 0,
	  NEED_PAGEMAP_SCAN, 0, 0 },
	{ "embed_postcopy", postcopy, B_SHMEM | B_THP | B_HUGETLB, 0,
	  NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
	{ "embed_hybrid", hybrid, B_SHMEM, 0,
	  NEED_PAGEMAP_SCAN | NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
	{ "embed_lazy_restore", lazy_restore, B_ALL, 0,
	  NEED_UFFD_MISSING | NEED_UFFD_MINOR, 0, 0 },
};

TEST_SUITE(embed, cases)
