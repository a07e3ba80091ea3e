// SPDX-License-Identifier: MIT
/*
 * minivmm: a very small virtual machine monitor that embeds libferry the
 * way a real one would.  docs/embedding.md walks through it.
 *
 *   - Its RAM is its own: one memfd, mapped MAP_SHARED by the VMM, laid
 *     out at guest-physical addresses with a hole (RAM_LOW at 0, RAM_HIGH
 *     above a gap), handed to ferry region by region.
 *   - Its vCPUs are its own: threads that write a pattern into RAM, with
 *     pause / resume / save / load / MP state behind struct ferry_vcpu_ops.
 *     vCPU 1 powers itself off after a while; that must survive each flow.
 *   - Its "disk" is a device thread that the kernel serves: when the vCPUs
 *     resume it pread()s a disk block into a guest buffer and pwrite()s a
 *     guest page out, both while ferry still owes those pages.
 *
 * This file is the machine and main(); flows.c is what it does with
 * ferry: a snapshot, a lazy restore of it into a second VMM instance
 * (its progress watched from a thread of the VMM's), then a migration of
 * that one to a third instance over a Unix socket session, cancelled
 * before switchover (the VM runs on here, untouched), and then post-copy
 * to the end, each side's progress printed from a thread of its own and
 * ferry's events as they come.  It checks its own memory after every
 * flow (every page against a replay of what the vCPUs wrote).  Exit
 * status 0 when every check passed.
 *
 * Build: cc minivmm.c flows.c $(pkg-config --cflags --libs ferry) -pthread
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <ferry/ferry.h>

#include "minivmm.h"

#define SLICE		900			/* pages each vCPU writes */
#define DISK_PAGES	16			/* the disk's buffer, at the top */
#define ROM_PAGE	1900			/* firmware: written once, at boot */
#define ROM_BYTE	0x5a
#define VCPU1_OFF_AT	200000			/* vCPU 1 powers off here */

/* ---- the machine -------------------------------------------------------- */

int fail(const char *what, int err)
{
	fprintf(stderr, "minivmm: %s: %s (%s)\n", what, strerror(-err),
		ferry_error_msg());
	return 1;
}

/* The host address of a dense RAM page index, through the VMM's map. */
static uint8_t *page_at(struct vm *vm, uint64_t index)
{
	return vm->ram + index * PAGE;
}

/* vCPU i, step s: which page of its slice, which word, what value. */
static uint64_t write_page(unsigned int i, uint64_t s)
{
	return i * SLICE + (s * 7919) % SLICE;
}

static void vcpu_step(struct vcpu *c)
{
	uint64_t s = atomic_load(&c->steps);
	uint64_t *word = (uint64_t *)page_at(c->vm, write_page(c->index, s)) +
			 s % (PAGE / 8);

	*word = (uint64_t)c->index << 56 | s;
	atomic_store(&c->steps, s + 1);
	if (c->index == 1 && s + 1 == VCPU1_OFF_AT)	/* PSCI CPU_OFF */
		atomic_store(&c->mp_state, FERRY_MP_STOPPED);
}

/* Park while paused or powered off; false when the VM quits. */
static bool vcpu_wait(struct vcpu *c)
{
	struct vm *vm = c->vm;
	bool parked = false;

	pthread_mutex_lock(&vm->lock);
	while (!vm->quit && (vm->pauses ||
	       atomic_load(&c->mp_state) != FERRY_MP_RUNNABLE)) {
		if (!parked)
			vm->parked++;
		parked = true;
		pthread_cond_broadcast(&vm->cond);
		pthread_cond_wait(&vm->cond, &vm->lock);
	}
	if (parked)
		vm->parked--;
	pthread_mutex_unlock(&vm->lock);
	return !vm->quit;
}

static void *vcpu_main(void *arg)
{
	struct vcpu *c = arg;

	while (vcpu_wait(c))
		for (int n = 0; n < 256 &&
		     atomic_load(&c->mp_state) == FERRY_MP_RUNNABLE; n++)
			vcpu_step(c);
	return NULL;
}

/* ---- the disk: the kernel touches guest memory -------------------------- */

/*
 * On resume, the disk completes one request: a block read from the image
 * into the guest's buffer (the kernel writes guest pages) and a guest
 * page written out (the kernel reads one).  Right after a lazy restore or
 * a post-copy switchover these pages are still owed; the kernel's access
 * waits for ferry to bring them in, as KVM's own would.
 */
static void *disk_main(void *arg)
{
	struct vm *vm = arg;
	uint8_t *buf = page_at(vm, NR_PAGES - DISK_PAGES);
	size_t len = DISK_PAGES * PAGE;

	if (pread(vm->disk_fd, buf, len, 0) != (ssize_t)len ||
	    pwrite(vm->disk_fd, page_at(vm, ROM_PAGE), PAGE, (off_t)len) !=
	    (ssize_t)PAGE)
		vm->disk_err = errno ? errno : EIO;
	return NULL;
}

static int disk_open(struct vm *vm)
{
	uint8_t block[PAGE];

	vm->disk_fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (vm->disk_fd < 0)
		return -errno;
	for (unsigned int i = 0; i < DISK_PAGES; i++) {
		memset(block, 0xd0 + i, sizeof(block));
		if (pwrite(vm->disk_fd, block, PAGE, (off_t)(i * PAGE)) != PAGE)
			return -errno;
	}
	return 0;
}

/* ---- vCPU operations, as ferry calls them ------------------------------- */

static int op_pause(void *arg)
{
	struct vm *vm = arg;

	pthread_mutex_lock(&vm->lock);
	vm->pauses++;
	while (vm->started && vm->parked < NR_VCPUS)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static int op_resume(void *arg)
{
	struct vm *vm = arg;
	bool io;

	pthread_mutex_lock(&vm->lock);
	if (!vm->pauses) {
		pthread_mutex_unlock(&vm->lock);
		return ferry_error_set(-EINVAL, "%s: resume without pause",
				       vm->name);
	}
	io = --vm->pauses == 0 && vm->disk_pending;
	vm->disk_pending &= !io;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	if (io && pthread_create(&vm->disk, NULL, disk_main, vm))
		return ferry_error_set(-EAGAIN, "%s: no disk thread", vm->name);
	vm->disk_ran |= io;
	return 0;
}

static unsigned int op_nr_vcpus(void *arg)
{
	(void)arg;
	return NR_VCPUS;
}

/* The register blob: magic, vCPU index, MP state, steps. */
struct blob {
	char magic[4];			/* "MVM1" */
	uint32_t index;
	uint32_t mp_state;
	uint32_t zero;
	uint64_t steps;
};

static size_t op_state_size(void *arg)
{
	(void)arg;
	return sizeof(struct blob);
}

static ssize_t op_save(void *arg, unsigned int i, void *buf, size_t len)
{
	struct vm *vm = arg;
	struct blob b = { .magic = "MVM1", .index = i };

	if (i >= NR_VCPUS)
		return ferry_error_set(-EINVAL, "no vCPU %u", i);
	if (len < sizeof(b))
		return ferry_error_set(-ENOSPC, "%zu bytes for a vCPU", len);
	b.mp_state = (uint32_t)atomic_load(&vm->vcpu[i].mp_state);
	b.steps = atomic_load(&vm->vcpu[i].steps);
	memcpy(buf, &b, sizeof(b));
	return sizeof(b);
}

/* Every byte is hostile: check it all before changing anything. */
static int op_load(void *arg, unsigned int i, const void *buf, size_t len)
{
	struct vm *vm = arg;
	struct blob b;

	if (len != sizeof(b))
		return ferry_error_set(-EBADMSG, "vCPU blob of %zu bytes", len);
	memcpy(&b, buf, sizeof(b));
	if (memcmp(b.magic, "MVM1", 4) || b.zero)
		return ferry_error_set(-EBADMSG, "not a minivmm vCPU");
	if (i >= NR_VCPUS || b.index != i ||
	    !ferry_vcpu_mp_state_valid((int)b.mp_state))
		return ferry_error_set(-EINVAL, "vCPU %u: blob of vCPU %u, "
				       "MP state %u", i, b.index, b.mp_state);
	atomic_store(&vm->vcpu[i].steps, b.steps);
	atomic_store(&vm->vcpu[i].mp_state, (int)b.mp_state);
	return 0;
}

static int op_get_mp(void *arg, unsigned int i, enum ferry_mp_state *st)
{
	struct vm *vm = arg;

	if (i >= NR_VCPUS)
		return ferry_error_set(-EINVAL, "no vCPU %u", i);
	*st = (enum ferry_mp_state)atomic_load(&vm->vcpu[i].mp_state);
	return 0;
}

static int op_set_mp(void *arg, unsigned int i, enum ferry_mp_state st)
{
	struct vm *vm = arg;

	if (i >= NR_VCPUS || !ferry_vcpu_mp_state_valid((int)st))
		return ferry_error_set(-EINVAL, "vCPU %u: MP state %d", i, st);
	atomic_store(&vm->vcpu[i].mp_state, (int)st);
	return 0;
}

/* Boot configuration: vCPU 0 on, the others off; RAM kept. */
static int op_reset(void *arg)
{
	struct vm *vm = arg;

	for (int i = 0; i < NR_VCPUS; i++)
		atomic_store(&vm->vcpu[i].mp_state,
			     i ? FERRY_MP_STOPPED : FERRY_MP_RUNNABLE);
	return 0;
}

static const struct ferry_vcpu_ops minivmm_ops = {
	.name = "minivmm",
	.pause = op_pause,
	.resume = op_resume,
	.nr_vcpus = op_nr_vcpus,
	.state_size = op_state_size,
	.save = op_save,
	.load = op_load,
	.get_mp_state = op_get_mp,
	.set_mp_state = op_set_mp,
	.reset = op_reset,
};

/* ---- RAM ---------------------------------------------------------------- */

/*
 * The VMM maps its memfd itself; ferry gets each region of it with its
 * guest-physical address, checks the mapping is what it says, and maps
 * only an alias of its own.  The VMM's vCPUs and devices keep using
 * vm->ram: that is the mapping ferry registers with userfaultfd.
 */
static int ram_create(struct vm *vm)
{
	const struct ferry_region_spec regions[] = {
		{ .addr = vm->ram, .size = RAM_LOW, .memfd = vm->memfd,
		  .offset = 0, .gpa = 0, .backing = FERRY_BACKING_SHMEM },
		{ .addr = vm->ram + RAM_LOW, .size = RAM_HIGH,
		  .memfd = vm->memfd, .offset = RAM_LOW,
		  .gpa = RAM_LOW + RAM_GAP, .backing = FERRY_BACKING_SHMEM },
	};
	int ret;

	vm->memfd = memfd_create("minivmm-ram", MFD_CLOEXEC);
	if (vm->memfd < 0 || ftruncate(vm->memfd, RAM_SIZE))
		return ferry_error_set(-errno, "RAM: %s", strerror(errno));
	vm->ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		       vm->memfd, 0);
	if (vm->ram == MAP_FAILED)
		return ferry_error_set(-errno, "mmap: %s", strerror(errno));
	ret = ferry_mem_create(&vm->mem);
	for (int i = 0; !ret && i < 2; i++) {
		struct ferry_region_spec r = regions[i];

		r.memfd = vm->memfd;
		r.addr = vm->ram + r.offset;
		ret = ferry_mem_add_region_mapped(vm->mem, &r, NULL);
	}
	return ret;
}

/* ---- a VMM instance ----------------------------------------------------- */

/* RAM, devices, vCPUs created paused (as a destination needs them). */
int vm_create(struct vm *vm, const char *name)
{
	int ret;

	memset(vm, 0, sizeof(*vm));
	vm->name = name;
	vm->memfd = vm->disk_fd = -1;
	vm->created = true;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	vm->pauses = 1;
	op_reset(vm);
	ret = ram_create(vm);
	if (!ret)
		ret = disk_open(vm);
	for (int i = 0; !ret && i < NR_VCPUS; i++) {
		vm->vcpu[i].vm = vm;
		vm->vcpu[i].index = (unsigned int)i;
		ret = -pthread_create(&vm->vcpu[i].thread, NULL, vcpu_main,
				      &vm->vcpu[i]);
	}
	vm->started = !ret;
	return ret;
}

struct ferry_vm vm_handle(struct vm *vm)
{
	return (struct ferry_vm){ .mem = vm->mem, .ops = &minivmm_ops,
				  .handle = vm, .desc = "minivmm",
				  .desc_len = 7 };
}

void vm_destroy(struct vm *vm)
{
	if (!vm->created)
		return;
	pthread_mutex_lock(&vm->lock);
	vm->quit = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	for (int i = 0; vm->started && i < NR_VCPUS; i++)
		pthread_join(vm->vcpu[i].thread, NULL);
	ferry_mem_destroy(vm->mem);	/* leaves the VMM's mapping alone */
	if (vm->ram && vm->ram != MAP_FAILED)
		munmap(vm->ram, RAM_SIZE);
	if (vm->memfd >= 0)
		close(vm->memfd);
	if (vm->disk_ran && !vm->disk_joined)
		pthread_join(vm->disk, NULL);
	if (vm->disk_fd >= 0)
		close(vm->disk_fd);
	vm->created = false;
}

/* ---- checking memory ---------------------------------------------------- */

/*
 * Replay every vCPU's writes from step 0 and compare every page of RAM
 * (through the VMM's mapping: ferry must have brought every page) with
 * it, and the disk's buffer with the disk.  The VM must be paused.
 */
int vm_check(struct vm *vm, const char *flow)
{
	uint8_t *want = calloc(NR_PAGES, PAGE), block[PAGE];
	int bad = 0;

	if (!want)
		return fail("check", -ENOMEM);
	for (unsigned int i = 0; i < NR_VCPUS; i++)
		for (uint64_t s = 0; s < atomic_load(&vm->vcpu[i].steps); s++)
			((uint64_t *)(want + write_page(i, s) * PAGE))
				[s % (PAGE / 8)] = (uint64_t)i << 56 | s;
	memset(want + ROM_PAGE * PAGE, ROM_BYTE, PAGE);
	for (uint64_t p = 0; p < NR_PAGES - DISK_PAGES; p++)
		bad += memcmp(page_at(vm, p), want + p * PAGE, PAGE) != 0;
	for (unsigned int i = 0; i < DISK_PAGES; i++) {
		memset(block, vm->disk_ran ? 0xd0 + i : 0, sizeof(block));
		bad += memcmp(page_at(vm, NR_PAGES - DISK_PAGES + i), block,
			      PAGE) != 0;
	}
	free(want);
	printf("minivmm: %-13s vCPU steps %llu, %llu (vCPU 1 %s), %s\n", flow,
	       (unsigned long long)atomic_load(&vm->vcpu[0].steps),
	       (unsigned long long)atomic_load(&vm->vcpu[1].steps),
	       ferry_vcpu_mp_state_name(atomic_load(&vm->vcpu[1].mp_state)),
	       bad ? "MEMORY WRONG" : "memory checked");
	if (bad)
		fprintf(stderr, "minivmm: %s: %d pages differ\n", flow, bad);
	return bad != 0;
}

/* The disk's I/O at resume ended well, and the page it wrote out too. */
int disk_check(struct vm *vm, const char *flow)
{
	uint8_t out[PAGE], rom[PAGE];

	pthread_join(vm->disk, NULL);
	vm->disk_joined = true;
	if (vm->disk_err) {
		fprintf(stderr, "minivmm: %s: the disk's I/O into guest memory "
			"failed: %s\n", flow, strerror(vm->disk_err));
		return 1;
	}
	memset(rom, ROM_BYTE, sizeof(rom));
	if (pread(vm->disk_fd, out, PAGE, DISK_PAGES * PAGE) != PAGE ||
	    memcmp(out, rom, PAGE)) {
		fprintf(stderr, "minivmm: %s: the page written out differs\n",
			flow);
		return 1;
	}
	return 0;
}

int vm_pause(struct vm *vm)
{
	return op_pause(vm);
}

int vm_resume(struct vm *vm)
{
	return op_resume(vm);
}

uint64_t vm_steps(struct vm *vm)
{
	uint64_t steps = 0;

	for (int i = 0; i < NR_VCPUS; i++)
		steps += atomic_load(&vm->vcpu[i].steps);
	return steps;
}

/* ---- destination: build the VM a stream describes ----------------------- */

/*
 * A destination (or a restore) calls back here with the source's region
 * table; this VMM always has the same layout, so it checks that the
 * stream's matches it rather than trusting it.
 */
static int dest_create(void *arg, const struct ferry_wire_stream *stream,
		       struct ferry_vm *out)
{
	struct vm *vm = arg;
	int ret;

	if (stream->nr_regions != 2 || stream->nr_vcpus != NR_VCPUS ||
	    stream->regions[1].guest_base != RAM_LOW + RAM_GAP)
		return ferry_error_set(-EINVAL, "not a minivmm machine");
	ret = vm_create(vm, vm->name);
	if (ret)
		return ret;
	vm->disk_pending = true;	/* I/O the moment the vCPUs run */
	*out = vm_handle(vm);
	return 0;
}

static void dest_discard(void *arg, struct ferry_vm *out)
{
	(void)out;
	vm_destroy(arg);
}

const struct ferry_dest_ops dest_ops = {
	.create = dest_create,
	.discard = dest_discard,
};

/* ---- main --------------------------------------------------------------- */

static void run_for(struct vm *vm, unsigned int ms)
{
	op_resume(vm);
	usleep(ms * 1000);
	op_pause(vm);
}

int main(void)
{
	struct vm a = { 0 }, b = { .name = "vm-b" }, c = { .name = "vm-c" };
	int fd, failed;

	if (vm_create(&a, "vm-a"))
		return fail("creating the VM", -errno);
	memset(page_at(&a, ROM_PAGE), ROM_BYTE, PAGE);	/* firmware */
	op_set_mp(&a, 1, FERRY_MP_RUNNABLE);		/* vCPU 0's CPU_ON */
	run_for(&a, 100);
	fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		return fail("snapshot file", -errno);
	failed = snapshot(&a, fd);
	vm_destroy(&a);
	if (!failed)
		failed = lazy_restore(&b, fd);
	close(fd);
	if (!failed) {
		run_for(&b, 50);
		failed = vm_check(&b, "ran on");
	}
	if (!failed)
		failed = migrate_cancelled(&b, &c);
	if (!failed)
		failed = migrate(&b, &c);
	if (!failed) {
		run_for(&c, 50);
		failed = vm_check(&c, "ran on");
	}
	if (!failed && atomic_load(&c.vcpu[1].mp_state) != FERRY_MP_STOPPED)
		failed = fail("vCPU 1 should be off", -EINVAL);
	vm_destroy(&b);
	vm_destroy(&c);
	printf("minivmm: %s\n", failed ? "FAILED" : "every flow checked");
	return failed;
}
