// SPDX-License-Identifier: MIT
/*
 * The KVM guest image, without KVM: the very bytes libferry-vm.a loads
 * into a guest are mapped here at their link address and their step code
 * is called on host memory laid out as the VMM lays it out in the guest.
 * The same config and step counts must leave the same memory as the
 * built-in VM (the same digest), and the verifier must pass on it.
 */
#include <stdlib.h>
#include <sys/mman.h>

#include "cell_map.h"
#include "guest_abi.h"
#include "guest_test.h"
#include "verify.h"
#include "workload.h"

extern const uint8_t kvm_guest_image[], kvm_guest_image_end[];

#define STEPS		3000
#define NR_VCPUS	3

struct host_guest {
	struct ferry_mem *mem;
	struct cell_map map;
	struct kg_machine m;
	struct kg_vcpu v[NR_VCPUS];
	uint8_t *bufs;
	void *image;
};

/* The image at its link address, bss zeroed; its header. */
static enum test_result map_image(struct test_ctx *ctx, struct host_guest *h,
				  const struct kg_image_header **hdr)
{
	size_t len = (size_t)(kvm_guest_image_end - kvm_guest_image);
	const struct kg_image_header *img =
		(const struct kg_image_header *)kvm_guest_image;

	CHECK(ctx, img->magic == KG_IMAGE_MAGIC, "the image's magic");
	CHECK(ctx, img->image_end > KG_IMAGE_BASE &&
	      img->image_end <= KG_IMAGE_BASE + KG_IMAGE_MAX,
	      "image end %#llx", (unsigned long long)img->image_end);
	h->image = mmap((void *)KG_IMAGE_BASE, KG_IMAGE_MAX,
			PROT_READ | PROT_WRITE | PROT_EXEC,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			-1, 0);
	CHECK(ctx, h->image == (void *)KG_IMAGE_BASE, "mapping the image at "
	      "%#llx: %s", (unsigned long long)KG_IMAGE_BASE, strerror(errno));
	memcpy(h->image, kvm_guest_image, len);
	*hdr = h->image;
	return TEST_PASS;
}

/* What kvm_layout.c writes into the guest, with host addresses. */
static enum test_result lay_out(struct test_ctx *ctx, struct host_guest *h,
				const struct ferry_guest_config *cfg)
{
	CHECK_OK(ctx, ferry_mem_create(&h->mem));
	CHECK_OK(ctx, ferry_mem_add_region(h->mem, FERRY_BACKING_SHMEM,
					   TVM_MEM_SIZE, NULL));
	CHECK_OK(ctx, cell_map_init(&h->map, h->mem));
	CHECK_OK(ctx, workload_parse(cfg->workload, &h->m.wl));
	CHECK_OK(ctx, workload_layout(&h->m.wl, NR_VCPUS, h->map.nr_cells,
				      cfg->seed));
	h->m.magic = KG_MACHINE_MAGIC;
	h->m.nr_vcpus = NR_VCPUS;
	h->m.map = h->map;
	h->bufs = aligned_alloc(4096, NR_VCPUS * 4096);
	CHECK(ctx, h->bufs, "out of memory");
	for (unsigned int i = 0; i < NR_VCPUS; i++) {
		struct kg_vcpu *v = &h->v[i];

		CHECK_OK(ctx, workload_part_init(&h->m.wl, i, &v->part));
		workload_regs_boot(&h->m.wl, i, &v->regs);
		v->index = i;
		v->waiting_gen = KG_NO_GEN;
		v->buf = (uint64_t)(uintptr_t)(h->bufs + i * 4096);
	}
	return TEST_PASS;
}

static void host_guest_fini(struct host_guest *h)
{
	for (unsigned int i = 0; i < NR_VCPUS; i++)
		workload_part_fini(&h->v[i].part);
	free(h->bufs);
	cell_map_fini(&h->map);
	ferry_mem_destroy(h->mem);
	if (h->image)
		munmap(h->image, KG_IMAGE_MAX);
}

/* The built-in VM's digest for the same machine and steps. */
static enum test_result builtin_digest(struct test_ctx *ctx,
				       const struct ferry_guest_config *cfg,
				       uint64_t *digest)
{
	struct tvm t;

	TRY(tvm_create(ctx, &t, cfg));
	TRY(tvm_settle(ctx, &t));
	TRY(tvm_expect_steps(ctx, &t, STEPS));
	TRY(tvm_verify_ok(ctx, &t, NULL));
	CHECK_OK(ctx, ferry_guest_digest(t.g, digest));
	tvm_destroy(&t);
	return TEST_PASS;
}

static enum test_result same_memory(struct test_ctx *ctx, const char *spec)
{
	const struct kg_image_header *hdr = NULL;
	struct host_guest h = { 0 };
	struct ferry_guest_config cfg;
	struct verify_vcpu vv[NR_VCPUS];
	struct ferry_verify_report rep;
	uint64_t want, got;
	enum test_result res;

	tvm_config(&cfg, NR_VCPUS, spec, STEPS);
	cfg.boot_off_mask = 0;		/* every vCPU runs STEPS steps */
	TRY(builtin_digest(ctx, &cfg, &want));
	res = lay_out(ctx, &h, &cfg);
	if (res == TEST_PASS)
		res = map_image(ctx, &h, &hdr);
	if (res != TEST_PASS) {
		host_guest_fini(&h);
		return res;
	}
	for (unsigned int i = 0; i < NR_VCPUS; i++) {
		((kg_run_steps_fn)(uintptr_t)hdr->run_steps)(&h.m, &h.v[i],
							      STEPS);
		vv[i] = (struct verify_vcpu){ .part = &h.v[i].part,
			.regs = h.v[i].regs, .mp_state = FERRY_MP_RUNNABLE };
	}
	CHECK_OK(ctx, verify_digest(&h.map, &got));
	CHECK_OK(ctx, verify_memory(&h.map, &h.m.wl, vv, NR_VCPUS, &rep));
	host_guest_fini(&h);
	CHECK(ctx, rep.ok && rep.cells_written, "the verifier on the guest "
	      "image's memory: %llu lost, %llu torn, %llu duplicated",
	      (unsigned long long)rep.lost, (unsigned long long)rep.torn,
	      (unsigned long long)rep.duplicated);
	CHECK(ctx, got == want, "%s: the guest image leaves digest %#llx, the "
	      "built-in VM %#llx", spec, (unsigned long long)got,
	      (unsigned long long)want);
	return TEST_PASS;
}

static enum test_result image_random(struct test_ctx *ctx)
{
	return same_memory(ctx, "random,read=30");
}

static enum test_result image_kv(struct test_ctx *ctx)
{
	return same_memory(ctx, "kv");
}

static enum test_result image_seqdirty(struct test_ctx *ctx)
{
	return same_memory(ctx, "seqdirty,ws=4M");
}

static enum test_result image_hotcold(struct test_ctx *ctx)
{
	return same_memory(ctx, "hotcold,read=10");
}

static const struct test_case cases[] = {
	{ "kvm_image_random", image_random, B_SHMEM, 0, 0, 0, 60 },
	{ "kvm_image_kv", image_kv, B_SHMEM, 0, 0, 0, 60 },
	{ "kvm_image_seqdirty", image_seqdirty, B_SHMEM, 0, 0, 0, 60 },
	{ "kvm_image_hotcold", image_hotcold, B_SHMEM, 0, 0, 0, 60 },
};

TEST_SUITE(kvm_image, cases)
