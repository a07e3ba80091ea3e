// SPDX-License-Identifier: MIT
/* guest_vm: the built-in VM as a migration source or destination. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ferry-vm/guest_vm.h"
#include "ferry/error.h"

static int fill_vm(struct ferry_guest_vm *gv)
{
	struct ferry_guest_config cfg;
	ssize_t len;

	ferry_guest_get_config(gv->guest, &cfg);
	len = ferry_guest_config_encode(&cfg, gv->desc, sizeof(gv->desc));
	if (len < 0)
		return (int)len;
	gv->vm = (struct ferry_vm){ .mem = gv->mem,
		.ops = ferry_guest_vcpu_ops(), .handle = gv->guest,
		.desc = gv->desc, .desc_len = (uint32_t)len };
	return 0;
}

/* Build the VM on memory that exists already. */
static int build(struct ferry_mem *mem, const struct ferry_guest_config *cfg,
		 struct ferry_guest_vm **out)
{
	struct ferry_guest_vm *gv = calloc(1, sizeof(*gv));
	int ret;

	if (!gv) {
		ferry_mem_destroy(mem);
		return ferry_error_set(-ENOMEM, "out of memory");
	}
	gv->mem = mem;
	ret = ferry_guest_create(mem, cfg, &gv->guest);
	if (!ret)
		ret = fill_vm(gv);
	if (ret) {
		ferry_guest_vm_destroy(gv);
		return ret;
	}
	*out = gv;
	return 0;
}

int ferry_guest_vm_create(const struct ferry_guest_config *cfg,
			  enum ferry_backing backing, uint64_t mem_size,
			  struct ferry_guest_vm **out)
{
	struct ferry_mem *mem;
	int ret = ferry_mem_create(&mem);

	if (!ret)
		ret = ferry_mem_add_region(mem, backing, mem_size, NULL);
	if (ret) {
		ferry_mem_destroy(mem);
		return ret;
	}
	return build(mem, cfg, out);
}

void ferry_guest_vm_destroy(struct ferry_guest_vm *gv)
{
	if (!gv)
		return;
	ferry_guest_destroy(gv->guest);
	ferry_mem_destroy(gv->mem);
	free(gv);
}

static int dest_create(void *arg, const struct ferry_wire_stream *stream,
		       struct ferry_vm *vm)
{
	struct ferry_guest_dest *dd = arg;
	struct ferry_guest_config cfg;
	struct ferry_mem *mem;
	int ret;

	ret = ferry_guest_config_decode(stream->desc, stream->desc_len, &cfg);
	if (ret)
		return ferry_error_prefix(ret,
					  "the source's machine description");
	if (cfg.nr_vcpus != stream->nr_vcpus || !stream->nr_regions)
		return ferry_error_set(-EINVAL, "the machine description does "
				       "not match the stream (%u vCPUs, %u)",
				       cfg.nr_vcpus, stream->nr_vcpus);
	ret = ferry_migrate_mem_create(stream, dd->keep_backing ?
				       stream->regions[0].backing :
				       dd->backing, &mem);
	if (!ret)
		ret = build(mem, &cfg, &dd->gv);
	if (!ret)
		ret = ferry_guest_pause(dd->gv->guest);
	if (!ret)
		ret = ferry_guest_start(dd->gv->guest);
	if (ret) {
		ferry_guest_vm_destroy(dd->gv);
		dd->gv = NULL;
		return ret;
	}
	*vm = dd->gv->vm;
	return 0;
}

static void dest_discard(void *arg, struct ferry_vm *vm)
{
	struct ferry_guest_dest *dd = arg;

	(void)vm;
	ferry_guest_vm_destroy(dd->gv);
	dd->gv = NULL;
}

static const struct ferry_dest_ops guest_dest_ops = {
	.create = dest_create,
	.discard = dest_discard,
};

const struct ferry_dest_ops *ferry_guest_vm_dest_ops(void)
{
	return &guest_dest_ops;
}

static int clone_create(void *arg, const struct ferry_wire_stream *stream,
			struct ferry_mem *mem, struct ferry_vm *vm)
{
	struct ferry_guest_config cfg;
	struct ferry_guest *g;
	int ret;

	(void)arg;
	ret = ferry_guest_config_decode(stream->desc, stream->desc_len, &cfg);
	if (ret)
		return ferry_error_prefix(ret,
					  "the snapshot's machine description");
	if (cfg.nr_vcpus != stream->nr_vcpus)
		return ferry_error_set(-EINVAL, "the machine description does "
				       "not match the snapshot (%u vCPUs, %u)",
				       cfg.nr_vcpus, stream->nr_vcpus);
	ret = ferry_guest_create(mem, &cfg, &g);
	if (ret)
		return ret;
	ret = ferry_guest_pause(g);
	if (!ret)
		ret = ferry_guest_start(g);
	if (ret) {
		ferry_guest_destroy(g);
		return ret;
	}
	*vm = (struct ferry_vm){ .mem = mem, .ops = ferry_guest_vcpu_ops(),
		.handle = g, .desc = stream->desc,
		.desc_len = stream->desc_len };
	return 0;
}

static void clone_destroy(void *arg, struct ferry_vm *vm)
{
	(void)arg;
	ferry_guest_destroy(vm->handle);
}

static const struct ferry_clone_ops guest_clone_ops = {
	.create = clone_create,
	.destroy = clone_destroy,
};

const struct ferry_clone_ops *ferry_guest_vm_clone_ops(void)
{
	return &guest_clone_ops;
}
