// SPDX-License-Identifier: MIT
/*
 * kvm_vm: the KVM VM's lifecycle, its machine description, the
 * destination and clone ops, and the verifier's side.
 *
 * The description (what travels in a stream's HEADER, little-endian):
 *
 *   offset size field
 *        0    4 magic "FKVM"
 *        4    2 version (1)
 *        6    2 the guest ABI version (guest_abi.h)
 *        8    8 the system region's size
 *       16    8 the RAM's size
 *       24    4 length L of the guest config that follows
 *       28    4 zero
 *       32    L the machine as a built-in VM's config (ferry-vm/guest.h)
 *     32+L    8 XXH3-64 of bytes 0 .. 32+L-1
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "ferry/error.h"
#include "kvm_int.h"
#include "le.h"
#include "verify.h"

#define DESC_MAGIC	0x4d564b46u	/* "FKVM" little-endian */
#define DESC_VERSION	1
#define DESC_HEAD	32

static void cond_init_monotonic(pthread_cond_t *cond)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(cond, &attr);
	pthread_condattr_destroy(&attr);
}

static uint64_t vcpu_mask(unsigned int n)
{
	return n >= 64 ? ~0ULL : (1ULL << n) - 1;
}

/* ---- the machine -------------------------------------------------------- */

static int plan_workload(const struct ferry_guest_config *cfg,
			 uint64_t ram_size, struct workload *wl)
{
	int ret = workload_parse(cfg->workload, wl);

	if (!ret)
		ret = workload_layout(wl, cfg->nr_vcpus, ram_size >> CELL_SHIFT,
				      cfg->seed);
	return ret;
}

uint64_t kvm_machine_id(const struct ferry_kvm *k)
{
	uint8_t b[32];

	le64_store(b, KG_ABI_VERSION);
	le64_store(b + 8, workload_fingerprint(&k->wl, k->cells.nr_cells));
	le64_store(b + 16, k->layout.sys_size);
	le64_store(b + 24, k->layout.ram_size);
	return XXH3_64bits(b, sizeof(b));
}

static int vcpus_alloc(struct ferry_kvm *k)
{
	k->vcpus = calloc(k->nr_vcpus, sizeof(*k->vcpus));
	if (!k->vcpus)
		return ferry_error_set(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		struct kvcpu *v = &k->vcpus[i];

		v->k = k;
		v->index = i;
		v->fd = -1;
		v->boundary = true;
		cond_init_monotonic(&v->wake);
	}
	return kvm_parts_init(k);
}

static int lay_out(struct ferry_kvm *k)
{
	int ret = kvm_ram_view(k);

	if (!ret)
		ret = plan_workload(&k->cfg, k->ram.total_size, &k->wl);
	if (!ret)
		ret = kvm_layout_plan(&k->cfg, &k->wl, k->ram.total_size,
				      &k->layout);
	if (!ret && k->mem->regions[0].size != k->layout.sys_size)
		ret = ferry_error_set(-EINVAL, "a system region of %zu KiB; "
				      "this machine's is %llu KiB",
				      k->mem->regions[0].size >> 10,
				      (unsigned long long)
				      k->layout.sys_size >> 10);
	if (!ret && k->cfg.mem_size && k->cfg.mem_size != k->ram.total_size)
		ret = ferry_error_set(-EINVAL, "the machine has %llu MiB of "
				      "RAM; this memory %llu MiB",
				      (unsigned long long)k->cfg.mem_size >> 20,
				      (unsigned long long)
				      k->ram.total_size >> 20);
	k->cfg.mem_size = k->ram.total_size;
	return ret;
}

static void init_control(struct ferry_kvm *k)
{
	struct kg_control *c = k->ctl;
	int khz = kvm_ioctl(k->vcpus[0].fd, KVM_GET_TSC_KHZ, NULL);

	k->tsc_khz = khz > 0 ? (uint32_t)khz : 0;
	*c = (struct kg_control){ .step_limit = k->cfg.step_limit,
		.tsc_khz = k->tsc_khz,
		.rate_per_vcpu = k->wl.rate / k->nr_vcpus,
		.boot_off_mask = k->boot_off_mask, .nr_vcpus = k->nr_vcpus };
}

static void describe(struct ferry_kvm *k)
{
	struct ferry_kvm_info info;

	ferry_kvm_probe(&info);
	k->backend = info.backend;
	snprintf(k->describe, sizeof(k->describe), "KVM, %s%s%s%s",
		 ferry_kvm_backend_name(info.backend),
		 k->has_sregs2 ? "" : "; SREGS (no SREGS2)",
		 k->has_manual_protect ? "" :
		 "; dirty log without manual protect",
		 k->tsc_khz ? "" : "; no TSC frequency");
}

/* Every vCPU as the boot configuration says; fresh: entry registers too. */
static int boot_power(struct ferry_kvm *k, bool fresh)
{
	int ret = 0;

	pthread_mutex_lock(&k->lock);
	if (fresh) {
		kvm_reset_locked(k);
		for (unsigned int i = 0; i < k->nr_vcpus; i++)
			k->vcpus[i].resets = 0;
	} else {
		for (unsigned int i = 0; i < k->nr_vcpus; i++)
			k->vcpus[i].power = k->boot_off_mask >> i & 1 ?
					    FERRY_MP_STOPPED :
					    FERRY_MP_RUNNABLE;
	}
	for (unsigned int i = 0; !ret && i < k->nr_vcpus; i++)
		ret = kvm_vcpu_sync_locked(&k->vcpus[i]);
	pthread_mutex_unlock(&k->lock);
	return ret;
}

static int open_vm(struct ferry_kvm *k)
{
	int ret = kvm_open_dev(&k->dev_fd);

	if (ret)
		return ret;
	k->vm_fd = kvm_ioctl(k->dev_fd, KVM_CREATE_VM, NULL);
	if (k->vm_fd < 0) {
		ret = k->vm_fd;
		k->vm_fd = -1;
		return ferry_error_set(ret, "KVM_CREATE_VM: %s",
				       strerror(-ret));
	}
	ret = kvm_vm_setup(k);
	if (!ret)
		ret = kvm_slots_add(k);
	if (!ret)
		ret = kvm_vcpus_create(k);
	return ret;
}

int kvm_create(struct ferry_mem *mem, const struct ferry_guest_config *cfg,
	       bool fresh, struct ferry_kvm **out)
{
	struct ferry_kvm *k = calloc(1, sizeof(*k));
	int ret;

	if (!k)
		return ferry_error_set(-ENOMEM, "out of memory");
	k->dev_fd = k->vm_fd = -1;
	k->mem = mem;
	k->cfg = *cfg;
	k->nr_vcpus = cfg->nr_vcpus;
	k->boot_off_mask = cfg->boot_off_mask & vcpu_mask(cfg->nr_vcpus);
	pthread_mutex_init(&k->lock, NULL);
	cond_init_monotonic(&k->quiesce);
	pthread_mutex_init(&k->dirty_lock, NULL);
	ret = lay_out(k);
	if (!ret)
		ret = vcpus_alloc(k);
	if (!ret)
		ret = open_vm(k);
	if (!ret) {
		k->machine_id = kvm_machine_id(k);
		init_control(k);
		ret = fresh ? kvm_layout_write(k) : 0;
	}
	if (!ret)
		ret = boot_power(k, fresh);
	if (!ret)
		ret = kvm_dirty_init(k);
	if (ret) {
		kvm_destroy(k);
		return ret;
	}
	describe(k);
	*out = k;
	return 0;
}

void kvm_destroy(struct ferry_kvm *k)
{
	if (!k)
		return;
	if (k->vcpus)
		kvm_threads_stop(k);
	kvm_dirty_fini(k);
	if (k->vcpus) {
		kvm_vcpus_destroy(k);
		for (unsigned int i = 0; i < k->nr_vcpus; i++) {
			workload_part_fini(&k->vcpus[i].part);
			pthread_cond_destroy(&k->vcpus[i].wake);
		}
	}
	if (k->ctl)
		munmap(k->ctl, KG_PAGE);
	if (k->vm_fd >= 0)
		close(k->vm_fd);
	if (k->dev_fd >= 0)
		close(k->dev_fd);
	cell_map_fini(&k->cells);
	pthread_cond_destroy(&k->quiesce);
	pthread_mutex_destroy(&k->lock);
	free(k->vcpus);
	free(k);
}

/* ---- the description ---------------------------------------------------- */

static ssize_t desc_encode(const struct ferry_kvm *k, uint8_t *b, size_t len)
{
	struct ferry_guest_config cfg;
	ssize_t n;

	ferry_kvm_get_config(k, &cfg);
	if (len < DESC_HEAD + 8)
		return -ENOSPC;
	n = ferry_guest_config_encode(&cfg, b + DESC_HEAD,
				      len - DESC_HEAD - 8);
	if (n < 0)
		return n;
	memset(b, 0, DESC_HEAD);
	le32_store(b, DESC_MAGIC);
	le16_store(b + 4, DESC_VERSION);
	le16_store(b + 6, KG_ABI_VERSION);
	le64_store(b + 8, k->layout.sys_size);
	le64_store(b + 16, k->layout.ram_size);
	le32_store(b + 24, (uint32_t)n);
	le64_store(b + DESC_HEAD + n, XXH3_64bits(b, DESC_HEAD + (size_t)n));
	return DESC_HEAD + n + 8;
}

bool ferry_kvm_desc_is_kvm(const void *desc, size_t len)
{
	return desc && len >= 4 && le32_load(desc) == DESC_MAGIC;
}

static int desc_decode(const void *buf, size_t len,
		       struct ferry_guest_config *cfg)
{
	const uint8_t *b = buf;
	uint32_t n;
	int ret;

	if (!ferry_kvm_desc_is_kvm(buf, len) || len < DESC_HEAD + 8)
		return ferry_error_set(-EBADMSG, "not a KVM VM's description");
	n = le32_load(b + 24);
	if (le16_load(b + 4) != DESC_VERSION || n != len - DESC_HEAD - 8 ||
	    le32_load(b + 28))
		return ferry_error_set(-EBADMSG, "a KVM VM description of %zu "
				       "bytes, version %u, config of %u",
				       len, le16_load(b + 4), n);
	if (le64_load(b + len - 8) != XXH3_64bits(b, len - 8))
		return ferry_error_set(-EBADMSG, "KVM VM description checksum "
				       "mismatch");
	if (le16_load(b + 6) != KG_ABI_VERSION)
		return ferry_error_set(-EINVAL, "a guest of ABI version %u; "
				       "this ferry runs version %d",
				       le16_load(b + 6), KG_ABI_VERSION);
	ret = ferry_guest_config_decode(b + DESC_HEAD, n, cfg);
	if (ret)
		return ferry_error_prefix(ret, "the KVM VM's machine");
	if (cfg->mem_size != le64_load(b + 16))
		return ferry_error_set(-EINVAL, "the KVM VM description's RAM "
				       "sizes differ");
	return 0;
}

/* ---- the VM as an endpoint ---------------------------------------------- */

static int fill_vm(struct ferry_kvm_vm *kv)
{
	ssize_t len = desc_encode(kv->kvm, kv->desc, sizeof(kv->desc));

	if (len < 0)
		return (int)len;
	kv->vm = (struct ferry_vm){ .mem = kv->mem,
		.ops = ferry_kvm_vcpu_ops(), .handle = kv->kvm,
		.desc = kv->desc, .desc_len = (uint32_t)len };
	return 0;
}

static int build(struct ferry_mem *mem, const struct ferry_guest_config *cfg,
		 bool fresh, struct ferry_kvm_vm **out)
{
	struct ferry_kvm_vm *kv = calloc(1, sizeof(*kv));
	int ret;

	if (!kv) {
		kvm_mem_destroy(mem);
		return ferry_error_set(-ENOMEM, "out of memory");
	}
	kv->mem = mem;
	ret = kvm_create(mem, cfg, fresh, &kv->kvm);
	if (!ret)
		ret = fill_vm(kv);
	if (ret) {
		ferry_kvm_vm_destroy(kv);
		return ret;
	}
	*out = kv;
	return 0;
}

static int check_config(const struct ferry_guest_config *cfg,
			enum ferry_backing backing, uint64_t mem_size)
{
	ssize_t n = ferry_guest_config_encode(cfg, NULL, 0);

	if (n < 0)
		return (int)n;
	if (!mem_size || mem_size % ferry_mem_backing_page_size(backing))
		return ferry_error_set(-EINVAL, "%llu bytes of RAM: a multiple "
				       "of the %s page size, please",
				       (unsigned long long)mem_size,
				       ferry_mem_backing_name(backing));
	if (cfg->mem_size && cfg->mem_size != mem_size)
		return ferry_error_set(-EINVAL, "the config says %llu bytes "
				       "of RAM, not %llu",
				       (unsigned long long)cfg->mem_size,
				       (unsigned long long)mem_size);
	return 0;
}

int ferry_kvm_vm_create(const struct ferry_guest_config *cfg,
			enum ferry_backing backing, uint64_t mem_size,
			struct ferry_kvm_vm **out)
{
	struct ferry_guest_config c = *cfg;
	struct kvm_layout l;
	struct workload wl;
	struct ferry_mem *mem;
	int ret = check_config(cfg, backing, mem_size);

	if (!ret)
		ret = plan_workload(cfg, mem_size, &wl);
	if (!ret)
		ret = kvm_layout_plan(cfg, &wl, mem_size, &l);
	if (!ret)
		ret = kvm_mem_create(&l, backing, &mem);
	if (ret)
		return ret;
	c.mem_size = mem_size;
	return build(mem, &c, true, out);
}

void ferry_kvm_vm_destroy(struct ferry_kvm_vm *kv)
{
	if (!kv)
		return;
	kvm_destroy(kv->kvm);
	kvm_mem_destroy(kv->mem);
	free(kv);
}

static int dest_create(void *arg, const struct ferry_wire_stream *stream,
		       struct ferry_vm *vm)
{
	struct ferry_kvm_dest *dd = arg;
	struct ferry_guest_config cfg;
	struct ferry_mem *mem;
	int ret = desc_decode(stream->desc, stream->desc_len, &cfg);

	if (!ret && (cfg.nr_vcpus != stream->nr_vcpus || !stream->nr_regions))
		ret = ferry_error_set(-EINVAL, "the KVM VM description does "
				      "not match the stream (%u vCPUs, %u)",
				      cfg.nr_vcpus, stream->nr_vcpus);
	if (!ret && dd->boot_off_set)
		cfg.boot_off_mask = dd->boot_off_mask &
				    vcpu_mask(cfg.nr_vcpus);
	if (!ret)
		ret = kvm_mem_create_as(stream, dd->keep_backing ?
					stream->regions[0].backing :
					dd->backing, &mem);
	if (!ret)
		ret = build(mem, &cfg, false, &dd->kv);
	if (!ret)
		ret = ferry_kvm_pause(dd->kv->kvm);
	if (!ret)
		ret = ferry_kvm_start(dd->kv->kvm);
	if (ret) {
		ferry_kvm_vm_destroy(dd->kv);
		dd->kv = NULL;
		return ret;
	}
	*vm = dd->kv->vm;
	return 0;
}

static void dest_discard(void *arg, struct ferry_vm *vm)
{
	struct ferry_kvm_dest *dd = arg;

	(void)vm;
	ferry_kvm_vm_destroy(dd->kv);
	dd->kv = NULL;
}

static const struct ferry_dest_ops kvm_dest_ops = {
	.create = dest_create,
	.discard = dest_discard,
};

const struct ferry_dest_ops *ferry_kvm_vm_dest_ops(void)
{
	return &kvm_dest_ops;
}

static int clone_create(void *arg, const struct ferry_wire_stream *stream,
			struct ferry_mem *mem, struct ferry_vm *vm)
{
	struct ferry_guest_config cfg;
	struct ferry_kvm *k;
	int ret = desc_decode(stream->desc, stream->desc_len, &cfg);

	(void)arg;
	if (!ret && cfg.nr_vcpus != stream->nr_vcpus)
		ret = ferry_error_set(-EINVAL, "the KVM VM description does "
				      "not match the snapshot");
	if (!ret)
		ret = kvm_create(mem, &cfg, false, &k);
	if (ret)
		return ret;
	ret = ferry_kvm_pause(k);
	if (!ret)
		ret = ferry_kvm_start(k);
	if (ret) {
		kvm_destroy(k);
		return ret;
	}
	*vm = (struct ferry_vm){ .mem = mem, .ops = ferry_kvm_vcpu_ops(),
		.handle = k, .desc = stream->desc,
		.desc_len = stream->desc_len };
	return 0;
}

static void clone_destroy(void *arg, struct ferry_vm *vm)
{
	(void)arg;
	kvm_destroy(vm->handle);
}

static const struct ferry_clone_ops kvm_clone_ops = {
	.create = clone_create,
	.destroy = clone_destroy,
};

const struct ferry_clone_ops *ferry_kvm_vm_clone_ops(void)
{
	return &kvm_clone_ops;
}

/* ---- what the VM says of itself ----------------------------------------- */

void ferry_kvm_get_config(const struct ferry_kvm *k,
			  struct ferry_guest_config *cfg)
{
	struct ferry_kvm *mut = (struct ferry_kvm *)k;

	*cfg = k->cfg;
	pthread_mutex_lock(&mut->lock);
	cfg->step_limit = k->ctl->step_limit;
	cfg->boot_off_mask = k->boot_off_mask;
	pthread_mutex_unlock(&mut->lock);
}

const char *ferry_kvm_describe(const struct ferry_kvm *k)
{
	return k->describe;
}

const char *ferry_kvm_error(struct ferry_kvm *k)
{
	pthread_mutex_lock(&k->lock);
	memcpy(k->error_copy, k->error, sizeof(k->error));
	pthread_mutex_unlock(&k->lock);
	return k->error_copy;
}

/* A vCPU's block, as the guest keeps it, through the alias. */
static const volatile struct kg_vcpu *block_of(const struct ferry_kvm *k,
					       const struct kvcpu *v)
{
	return (const volatile struct kg_vcpu *)(k->mem->regions[0].alias +
						 v->block);
}

void ferry_kvm_stats(struct ferry_kvm *k, struct ferry_guest_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->nr_vcpus = k->nr_vcpus;
	pthread_mutex_lock(&k->lock);
	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		const volatile struct kg_vcpu *b = block_of(k, &k->vcpus[i]);
		struct ferry_guest_vcpu_stats *vs = &st->vcpu[i];

		vs->mp_state = k->vcpus[i].power;
		vs->resets = k->vcpus[i].resets;
		vs->steps = b->regs.steps;
		vs->writes = b->regs.writes;
		vs->reads = b->regs.reads;
		vs->read_errors = b->regs.read_errors;
		vs->bytes_dirtied = vs->writes * CELL_SIZE;
		st->steps += vs->steps;
		st->writes += vs->writes;
		st->reads += vs->reads;
		st->read_errors += vs->read_errors;
	}
	pthread_mutex_unlock(&k->lock);
	st->bytes_dirtied = st->writes * CELL_SIZE;
}

static int collect_vcpus(struct ferry_kvm *k, struct verify_vcpu *vcpus)
{
	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		const struct kvcpu *v = &k->vcpus[i];

		if ((k->started && !v->quiescent) || !v->boundary)
			return ferry_error_set(-EBUSY, "verify: vCPU %u is %s; "
					       "settle the VM or stop it from "
					       "running first", i, v->boundary ?
					       "running" : "in the middle of a "
					       "step");
		vcpus[i] = (struct verify_vcpu){ .part = &v->part,
			.mp_state = v->power };
		memcpy(&vcpus[i].regs, (const void *)&block_of(k, v)->regs,
		       sizeof(vcpus[i].regs));
	}
	return 0;
}

int ferry_kvm_verify(struct ferry_kvm *k, struct ferry_verify_report *rep)
{
	struct verify_vcpu vcpus[FERRY_VERIFY_MAX_VCPUS];
	int ret;

	pthread_mutex_lock(&k->lock);
	ret = collect_vcpus(k, vcpus);
	pthread_mutex_unlock(&k->lock);
	if (ret)
		return ret;
	return verify_memory(&k->cells, &k->wl, vcpus, k->nr_vcpus, rep);
}

int ferry_kvm_digest(struct ferry_kvm *k, uint64_t *digest)
{
	bool parked;

	pthread_mutex_lock(&k->lock);
	parked = kvm_parked_locked(k);
	pthread_mutex_unlock(&k->lock);
	if (!parked)
		return ferry_error_set(-EBUSY, "the digest needs the VM "
				       "paused");
	return verify_digest(&k->cells, digest);
}
