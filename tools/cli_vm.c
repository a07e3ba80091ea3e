// SPDX-License-Identifier: MIT
/*
 * cli_vm: the VM a command runs, built-in or KVM (--vm), behind one set
 * of calls: start, stop, verify, counters, and the destination's and a
 * clone's VM, whose kind the stream's description says.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "ferry/error.h"

static const char *kind_name(enum cli_vm_kind kind)
{
	return kind == CLI_VM_KVM ? "kvm" : "builtin";
}

int cli_vm_choose(const char *cmd, enum cli_vm_kind asked,
		  enum cli_vm_kind *kind, char *why, size_t len)
{
	bool kvm = ferry_kvm_usable();

	if (asked == CLI_VM_KVM && !kvm) {
		fprintf(stderr, "ferry %s: --vm kvm: %s (ferry doctor says "
			"more; --vm builtin runs without KVM)\n", cmd,
			ferry_error_msg());
		return 2;
	}
	if (asked == CLI_VM_BUILTIN) {
		*kind = CLI_VM_BUILTIN;
		snprintf(why, len, "builtin (--vm builtin)");
	} else if (kvm) {
		*kind = CLI_VM_KVM;
		snprintf(why, len, "kvm");
	} else {
		*kind = CLI_VM_BUILTIN;
		snprintf(why, len, "builtin (%s)", ferry_error_msg());
	}
	return 0;
}

void cli_vm_of(struct cli_vm *vm, const struct ferry_vm *fv)
{
	bool kvm = fv->ops == ferry_kvm_vcpu_ops();

	vm->kind = kvm ? CLI_VM_KVM : CLI_VM_BUILTIN;
	vm->kvm = kvm ? fv->handle : NULL;
	vm->guest = kvm ? NULL : fv->handle;
	vm->vm = fv;
}

static void name_vm(struct cli_vm *vm, const char *why)
{
	if (vm->kind == CLI_VM_KVM)
		snprintf(vm->name, sizeof(vm->name), "kvm (%s)",
			 ferry_kvm_describe(vm->kvm));
	else
		snprintf(vm->name, sizeof(vm->name), "%s", why);
}

static int create(const struct cli_guest *g,
		  const struct ferry_guest_config *cfg, struct cli_vm *vm)
{
	int ret;

	if (vm->kind == CLI_VM_KVM) {
		ret = ferry_kvm_vm_create(cfg, g->backing, g->mem_size,
					  &vm->kv);
		if (!ret)
			cli_vm_of(vm, &vm->kv->vm);
		if (!ret)
			ret = ferry_kvm_start(vm->kvm);
		return ret;
	}
	ret = ferry_guest_vm_create(cfg, g->backing, g->mem_size, &vm->gv);
	if (!ret)
		cli_vm_of(vm, &vm->gv->vm);
	if (!ret)
		ret = ferry_guest_start(vm->guest);
	return ret;
}

int cli_start_vm(const char *cmd, const struct cli_guest *g,
		 const struct ferry_guest_config *given, struct cli_vm *vm,
		 struct ferry_hugetlb_resv *resv)
{
	struct ferry_guest_config cfg;
	char why[256];
	int ret;

	*vm = (struct cli_vm){ .kind = CLI_VM_BUILTIN };
	if (given) {
		cfg = *given;
	} else {
		ferry_guest_config_init(&cfg);
		cfg.nr_vcpus = (unsigned int)g->vcpus;
		cfg.seed = g->seed;
	}
	if (ferry_guest_config_set_workload(&cfg, g->workload))
		return cli_bad(cmd, "--workload", g->workload, "too long");
	if (cli_guest_check(cmd, g) ||
	    cli_vm_choose(cmd, g->vm, &vm->kind, why, sizeof(why)))
		return 2;
	/* A KVM VM's system region: its page tables, its image, stacks. */
	ret = cli_hugetlb_reserve(g->backing, g->mem_size +
				  (vm->kind == CLI_VM_KVM ?
				   g->mem_size / 256 + (8ULL << 20) : 0), resv);
	if (!ret)
		ret = create(g, &cfg, vm);
	if (!ret)
		ret = ferry_hugetlb_settle(resv);
	if (ret) {
		cli_error(vm->kind == CLI_VM_KVM ? "building the KVM VM" :
			  "building the VM (ferry run --help lists the "
			  "workloads)", ret);
		return 2;
	}
	name_vm(vm, why);
	return 0;
}

void cli_free_vm(struct cli_vm *vm, struct ferry_hugetlb_resv *resv)
{
	ferry_guest_vm_destroy(vm->gv);
	ferry_kvm_vm_destroy(vm->kv);
	*vm = (struct cli_vm){ .kind = vm->kind };
	cli_hugetlb_release(resv);
}

int cli_vm_stop(struct cli_vm *vm)
{
	return vm->kvm ? ferry_kvm_stop(vm->kvm) : ferry_guest_stop(vm->guest);
}

int cli_vm_pause(struct cli_vm *vm)
{
	return vm->kvm ? ferry_kvm_pause(vm->kvm) :
	       ferry_guest_pause(vm->guest);
}

int cli_vm_verify(struct cli_vm *vm, struct ferry_verify_report *rep)
{
	int ret;

	if (!vm->kvm)
		return ferry_guest_verify(vm->guest, rep);
	ret = ferry_kvm_verify(vm->kvm, rep);
	if (!ret && ferry_kvm_error(vm->kvm)[0])
		fprintf(stderr, "ferry: the guest stopped: %s\n",
			ferry_kvm_error(vm->kvm));
	return ret;
}

void cli_vm_stats(struct cli_vm *vm, struct ferry_guest_stats *st)
{
	if (vm->kvm)
		ferry_kvm_stats(vm->kvm, st);
	else
		ferry_guest_stats(vm->guest, st);
}

int cli_vm_wait_settled(struct cli_vm *vm, int timeout_ms)
{
	return vm->kvm ? ferry_kvm_wait_settled(vm->kvm, timeout_ms) :
	       ferry_guest_wait_settled(vm->guest, timeout_ms);
}

int cli_vm_set_step_limit(struct cli_vm *vm, uint64_t limit)
{
	return vm->kvm ? ferry_kvm_set_step_limit(vm->kvm, limit) :
	       ferry_guest_set_step_limit(vm->guest, limit);
}

/* ---- the destination's VM ----------------------------------------------- */

void cli_dest_init(struct cli_dest *cd, const struct cli_guest *g)
{
	*cd = (struct cli_dest){
		.dd = { .backing = g->backing,
			.keep_backing = !g->backing_set },
		.kd = { .backing = g->backing,
			.keep_backing = !g->backing_set },
		.asked = g->vm,
		.resv = CLI_RESV_INIT,
	};
}

/* The stream's kind, and whether --vm allows it. */
static int stream_kind(struct cli_dest *cd, const struct ferry_wire_stream *s)
{
	bool kvm = ferry_kvm_desc_is_kvm(s->desc, s->desc_len);

	cd->vm.kind = kvm ? CLI_VM_KVM : CLI_VM_BUILTIN;
	if (cd->asked != CLI_VM_DEFAULT && cd->asked != cd->vm.kind)
		return ferry_error_set(-EINVAL, "the source's VM is %s; "
				       "--vm %s cannot run it",
				       kind_name(cd->vm.kind),
				       kind_name(cd->asked));
	if (kvm && !ferry_kvm_usable())
		return ferry_error_prefix(-EOPNOTSUPP, "the source's VM is a "
					  "KVM guest");
	return 0;
}

static int dest_build(struct cli_dest *cd, const struct ferry_wire_stream *s,
		      struct ferry_vm *vm)
{
	int ret;

	if (cd->vm.kind == CLI_VM_KVM) {
		ret = ferry_kvm_vm_dest_ops()->create(&cd->kd, s, vm);
		cd->vm.kv = cd->kd.kv;
		if (!ret) {
			cli_vm_of(&cd->vm, &cd->kd.kv->vm);
			name_vm(&cd->vm, "kvm");
		}
		return ret;
	}
	ret = ferry_guest_vm_dest_ops()->create(&cd->dd, s, vm);
	cd->vm.gv = cd->dd.gv;
	if (!ret) {
		cli_vm_of(&cd->vm, &cd->dd.gv->vm);
		name_vm(&cd->vm, "builtin");
	}
	return ret;
}

static int dest_create(void *arg, const struct ferry_wire_stream *s,
		       struct ferry_vm *vm)
{
	struct cli_dest *cd = arg;
	enum ferry_backing b = cd->dd.keep_backing ? s->regions[0].backing :
						     cd->dd.backing;
	int ret = stream_kind(cd, s);

	if (!ret)
		ret = cli_hugetlb_reserve(b, cli_stream_bytes(s), &cd->resv);
	if (!ret)
		ret = dest_build(cd, s, vm);
	/* Mapped: the pages are lent to this memory, the sysctl goes back. */
	if (!ret)
		ret = ferry_hugetlb_settle(&cd->resv);
	return ret;
}

static void dest_discard(void *arg, struct ferry_vm *vm)
{
	struct cli_dest *cd = arg;

	if (cd->vm.kind == CLI_VM_KVM)
		ferry_kvm_vm_dest_ops()->discard(&cd->kd, vm);
	else
		ferry_guest_vm_dest_ops()->discard(&cd->dd, vm);
	cd->vm = (struct cli_vm){ .kind = cd->vm.kind };
}

static const struct ferry_dest_ops dest_ops = {
	.create = dest_create,
	.discard = dest_discard,
};

const struct ferry_dest_ops *cli_dest_ops(void)
{
	return &dest_ops;
}

const struct ferry_clone_ops *cli_clone_ops(const struct ferry_wire_stream *s)
{
	return ferry_kvm_desc_is_kvm(s->desc, s->desc_len) ?
	       ferry_kvm_vm_clone_ops() : ferry_guest_vm_clone_ops();
}
