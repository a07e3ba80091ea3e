// SPDX-License-Identifier: MIT
/* The built-in VM on RAM a "VMM" maps itself: see vmm_test.h. */
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vmm_test.h"

static size_t align_of(enum ferry_backing backing)
{
	return backing == FERRY_BACKING_SHMEM ? 4096 : FERRY_HUGE_PAGE_SIZE;
}

/* A MAP_SHARED mapping of the whole memfd, aligned for huge pages. */
static int map_ram(struct vmm_ram *ram, size_t align)
{
	uint8_t *base = mmap(NULL, ram->size + align, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint8_t *at;

	if (base == MAP_FAILED)
		return ferry_error_set(-errno, "reserving: %s", strerror(errno));
	at = (uint8_t *)(((uintptr_t)base + align - 1) & ~(align - 1));
	ram->map = mmap(at, ram->size, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_FIXED, ram->memfd, 0);
	if (ram->map == MAP_FAILED) {
		ram->map = NULL;
		munmap(base, ram->size + align);
		return ferry_error_set(-errno, "mmap: %s", strerror(errno));
	}
	if (at > base)
		munmap(base, (size_t)(at - base));
	munmap(at + ram->size, (size_t)(base + align - at));
	return 0;
}

static int open_ram(struct vmm_ram *ram, enum ferry_backing backing)
{
	unsigned int flags = MFD_CLOEXEC;

	if (backing == FERRY_BACKING_HUGETLB)
		flags |= MFD_HUGETLB | (21U << 26);	/* MFD_HUGE_2MB */
	ram->memfd = memfd_create("vmm-ram", flags);
	if (ram->memfd < 0)
		return ferry_error_set(-errno, "memfd_create: %s",
				       strerror(errno));
	if (ftruncate(ram->memfd, (off_t)ram->size))
		return ferry_error_set(-errno, "ftruncate: %s",
				       strerror(errno));
	return map_ram(ram, align_of(backing));
}

int vmm_ram_create(struct vmm_ram *ram, enum ferry_backing backing,
		   const uint64_t *gpa, const uint64_t *size, unsigned int nr)
{
	uint64_t offset = 0;
	int ret;

	*ram = (struct vmm_ram){ .memfd = -1 };
	for (unsigned int i = 0; i < nr; i++)
		ram->size += size[i];
	ret = open_ram(ram, backing);
	if (!ret)
		ret = ferry_mem_create(&ram->mem);
	for (unsigned int i = 0; !ret && i < nr; i++) {
		struct ferry_region_spec spec = {
			.addr = ram->map + offset, .size = size[i],
			.memfd = ram->memfd, .offset = offset, .gpa = gpa[i],
			.backing = backing,
		};

		ret = ferry_mem_add_region_mapped(ram->mem, &spec, NULL);
		offset += size[i];
	}
	if (ret)
		vmm_ram_destroy(ram);
	return ret;
}

int vmm_ram_create_gapped(struct vmm_ram *ram, enum ferry_backing backing)
{
	const uint64_t gpa[] = { 0, VMM_HIGH_GPA };
	const uint64_t size[] = { VMM_LOW_SIZE, VMM_LOW_SIZE };

	return vmm_ram_create(ram, backing, gpa, size, 2);
}

void vmm_ram_destroy(struct vmm_ram *ram)
{
	ferry_mem_destroy(ram->mem);
	ram->mem = NULL;
	if (ram->map)
		munmap(ram->map, ram->size);
	ram->map = NULL;
	if (ram->memfd >= 0)
		close(ram->memfd);
	ram->memfd = -1;
}

static int vm_build(struct vmm_vm *v, const struct ferry_guest_config *cfg)
{
	struct ferry_guest_config used;
	ssize_t len;
	int ret = ferry_guest_create(v->ram.mem, cfg, &v->g);

	if (ret)
		return ret;
	ferry_guest_get_config(v->g, &used);
	len = ferry_guest_config_encode(&used, v->desc, sizeof(v->desc));
	if (len < 0)
		return (int)len;
	v->vm = (struct ferry_vm){ .mem = v->ram.mem, .ops = &vmm_hooked_ops,
		.handle = v->g, .desc = v->desc, .desc_len = (uint32_t)len };
	return 0;
}

enum test_result vmm_vm_create(struct test_ctx *ctx, struct vmm_vm *v,
			       const struct ferry_guest_config *cfg,
			       enum ferry_backing backing)
{
	memset(v, 0, sizeof(*v));
	CHECK_OK(ctx, vmm_ram_create_gapped(&v->ram, backing));
	CHECK_OK(ctx, vm_build(v, cfg));
	return TEST_PASS;
}

void vmm_vm_destroy(struct vmm_vm *v)
{
	ferry_guest_destroy(v->g);
	v->g = NULL;
	vmm_ram_destroy(&v->ram);
}

/* ---- destination -------------------------------------------------------- */

static int dest_ram(struct vmm_vm *v, const struct ferry_wire_stream *s)
{
	uint64_t gpa[16], size[16];

	if (s->nr_regions > 16)
		return ferry_error_set(-EINVAL, "%u regions", s->nr_regions);
	for (unsigned int i = 0; i < s->nr_regions; i++) {
		gpa[i] = s->regions[i].guest_base;
		size[i] = s->regions[i].size;
	}
	return vmm_ram_create(&v->ram, s->regions[0].backing, gpa, size,
			      s->nr_regions);
}

static int dest_create(void *arg, const struct ferry_wire_stream *stream,
		       struct ferry_vm *vm)
{
	struct vmm_vm *v = arg;
	struct ferry_guest_config cfg;
	int ret;

	ret = ferry_guest_config_decode(stream->desc, stream->desc_len, &cfg);
	if (ret)
		return ret;
	cfg.step_limit = v->step_limit;
	ret = dest_ram(v, stream);
	if (!ret)
		ret = vm_build(v, &cfg);
	if (!ret)
		ret = ferry_guest_pause(v->g);
	if (!ret)
		ret = ferry_guest_start(v->g);
	if (ret) {
		vmm_vm_destroy(v);
		return ret;
	}
	*vm = v->vm;
	return 0;
}

static void dest_discard(void *arg, struct ferry_vm *vm)
{
	(void)vm;
	vmm_vm_destroy(arg);
}

const struct ferry_dest_ops vmm_dest_ops = {
	.create = dest_create,
	.discard = dest_discard,
};

/* ---- a migration over loopback ----------------------------------------- */

struct receiver {
	struct ferry_listener *listener;
	struct vmm_vm *vm;
	int ret;
	char reason[256];
};

static void *receive(void *arg)
{
	struct receiver *r = arg;
	struct ferry_session *s = NULL;
	struct ferry_migrate_stats st;
	struct ferry_vm vm;
	int ret = ferry_net_accept(r->listener, 20000, &s);

	if (!ret)
		ret = ferry_migrate_recv(s, &vmm_dest_ops, r->vm, NULL, &vm,
					 &st);
	r->ret = ret;
	snprintf(r->reason, sizeof(r->reason), "%s", ferry_error_msg());
	ferry_net_session_close(s);
	return NULL;
}

static int send_to(struct receiver *r, struct vmm_vm *src,
		   const struct ferry_migrate_opts *opts, unsigned int channels)
{
	struct ferry_migrate_stats st;
	struct ferry_session *s;
	int ret = ferry_net_connect(ferry_net_listener_addr(r->listener),
				    channels, NULL, &s);

	if (ret)
		return ret;
	ret = ferry_migrate_send(&src->vm, s, opts, &st);
	ferry_net_session_close(s);
	return ret;
}

int vmm_migrate(struct vmm_vm *src, struct vmm_vm *dst,
		const struct ferry_migrate_opts *opts, unsigned int channels,
		char *reason, size_t len)
{
	struct receiver r = { .vm = dst };
	pthread_t thread;
	int ret = ferry_net_listener_open("127.0.0.1:0", NULL, &r.listener);

	if (ret || (ret = -pthread_create(&thread, NULL, receive, &r))) {
		snprintf(reason, len, "listening: %s", ferry_error_msg());
		ferry_net_listener_close(r.listener);
		return ret;
	}
	ret = send_to(&r, src, opts, channels);
	snprintf(reason, len, "source: %s", ret ? ferry_error_msg() : "ok");
	pthread_join(thread, NULL);
	ferry_net_listener_close(r.listener);
	if (r.ret)
		snprintf(reason + strlen(reason), len - strlen(reason),
			 "; destination: %s", r.reason);
	return ret ? ret : r.ret;
}

/* ---- the resume hook ---------------------------------------------------- */

static void (*hook_fn)(void *arg);
static void *hook_arg;

void vmm_hook_arm(void (*fn)(void *arg), void *arg)
{
	hook_arg = arg;
	__atomic_store_n(&hook_fn, fn, __ATOMIC_RELEASE);
}

static int hooked_resume(void *vm)
{
	void (*fn)(void *) = __atomic_exchange_n(&hook_fn, NULL,
						 __ATOMIC_ACQ_REL);
	int ret = ferry_guest_vcpu_ops()->resume(vm);

	if (fn && !ret)
		fn(hook_arg);
	return ret;
}

static int p_pause(void *vm)
{
	return ferry_guest_vcpu_ops()->pause(vm);
}

static unsigned int p_nr(void *vm)
{
	return ferry_guest_vcpu_ops()->nr_vcpus(vm);
}

static size_t p_size(void *vm)
{
	return ferry_guest_vcpu_ops()->state_size(vm);
}

static ssize_t p_save(void *vm, unsigned int i, void *buf, size_t len)
{
	return ferry_guest_vcpu_ops()->save(vm, i, buf, len);
}

static int p_load(void *vm, unsigned int i, const void *buf, size_t len)
{
	return ferry_guest_vcpu_ops()->load(vm, i, buf, len);
}

static int p_get(void *vm, unsigned int i, enum ferry_mp_state *st)
{
	return ferry_guest_vcpu_ops()->get_mp_state(vm, i, st);
}

static int p_set(void *vm, unsigned int i, enum ferry_mp_state st)
{
	return ferry_guest_vcpu_ops()->set_mp_state(vm, i, st);
}

static int p_reset(void *vm)
{
	return ferry_guest_vcpu_ops()->reset(vm);
}

const struct ferry_vcpu_ops vmm_hooked_ops = {
	.name = "ferry-guest (hooked)",
	.pause = p_pause,
	.resume = hooked_resume,
	.nr_vcpus = p_nr,
	.state_size = p_size,
	.save = p_save,
	.load = p_load,
	.get_mp_state = p_get,
	.set_mp_state = p_set,
	.reset = p_reset,
};
