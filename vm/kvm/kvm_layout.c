// SPDX-License-Identifier: MIT
/*
 * kvm_layout: the system region at guest-physical 0, and what a new
 * machine's boot writes into it (a destination gets it with the rest of
 * memory instead):
 *
 *   0x1000    GDT: kernel and user code and data, the TSS
 *   0x2000    TSS (rsp0: the exception stack below)
 *   0x3000    exception stack, 16 KiB
 *   0x8000    IDT: 32 exception gates to the image's stubs
 *   0x9000    the machine block (struct kg_machine)
 *   0x100000  the guest image (KG_IMAGE_BASE)
 *   0x200000  per vCPU: its block, a cell buffer, a 16 KiB stack
 *   then      kv's key tables, then the page tables (PML4 first)
 *
 * Everything is mapped 1:1 with 4 KiB pages, user-accessible but for the
 * descriptor tables, the exception stack and the page tables: KVM's
 * dirty log is exact at 4 KiB when the guest maps RAM at 4 KiB.
 */
#include <errno.h>
#include <string.h>

#include "ferry/error.h"
#include "kvm_int.h"
#include "le.h"

#define SYS_GDT		0x1000ULL
#define SYS_TSS		0x2000ULL
#define SYS_KSTACK	0x3000ULL
#define SYS_KSTACK_TOP	0x7000ULL
#define SYS_IDT		0x8000ULL
#define SYS_MACHINE	0x9000ULL
#define SYS_VCPUS	(KG_IMAGE_BASE + KG_IMAGE_MAX)
#define HUGE		(2ULL << 20)

#define PTE_P		1ULL
#define PTE_W		2ULL
#define PTE_U		4ULL

_Static_assert(sizeof(struct kg_machine) <= KG_IMAGE_BASE - SYS_MACHINE,
	       "machine block");
_Static_assert(sizeof(struct kg_vcpu) <= KG_PAGE, "vCPU block");

static uint64_t round_up(uint64_t v, uint64_t to)
{
	return (v + to - 1) / to * to;
}

const struct kg_image_header *kvm_image_header(void)
{
	return (const struct kg_image_header *)kvm_guest_image;
}

/* ---- the plan ----------------------------------------------------------- */

struct range {
	uint64_t start, end;
};

/* Distinct `unit`-sized chunks the sorted, disjoint ranges touch. */
static uint64_t chunks(const struct range *r, unsigned int n, uint64_t unit)
{
	uint64_t count = 0, last = UINT64_MAX;

	for (unsigned int i = 0; i < n; i++) {
		uint64_t first = r[i].start / unit, end = (r[i].end - 1) / unit;

		count += end - first + 1 - (first == last);
		last = end;
	}
	return count;
}

static uint64_t table_pages(uint64_t sys_size, uint64_t ram_size)
{
	struct range r[] = {
		{ KG_PAGE, sys_size },
		{ KG_CTL_GPA, KG_CTL_GPA + KG_PAGE },
		{ KG_MMIO_GPA, KG_MMIO_GPA + KG_MMIO_SIZE },
		{ KG_RAM_GPA, KG_RAM_GPA + ram_size },
	};

	return 1 + chunks(r, 4, 512ULL << 30) + chunks(r, 4, 1ULL << 30) +
	       chunks(r, 4, HUGE);
}

static uint64_t kv_bytes(const struct wl_part *p)
{
	return p->nr_keys ? round_up((p->nr_keys + 1) * 8, KG_PAGE) : 0;
}

int kvm_layout_plan(const struct ferry_guest_config *cfg,
		    const struct workload *wl, uint64_t ram_size,
		    struct kvm_layout *l)
{
	uint64_t kv = 0, pt = 0, before;
	struct wl_part part;
	int ret;

	*l = (struct kvm_layout){ .gdt = SYS_GDT, .tss = SYS_TSS,
		.idt = SYS_IDT, .kstack_top = SYS_KSTACK_TOP,
		.machine = SYS_MACHINE, .vcpus = SYS_VCPUS,
		.vcpu_stride = 2 * KG_PAGE + KVM_VCPU_STACK,
		.ram_size = ram_size };
	for (unsigned int i = 0; i < cfg->nr_vcpus; i++) {
		ret = workload_part_init(wl, i, &part);
		if (ret)
			return ret;
		kv += kv_bytes(&part);
		workload_part_fini(&part);
	}
	l->kv_tables = kv ? l->vcpus + cfg->nr_vcpus * l->vcpu_stride : 0;
	before = l->vcpus + cfg->nr_vcpus * l->vcpu_stride + kv;
	/* The tables map the region they are in: grow until they fit. */
	do {
		pt = table_pages(round_up(before + pt * KG_PAGE, HUGE),
				 ram_size);
		l->sys_size = round_up(before + pt * KG_PAGE, HUGE);
	} while (table_pages(l->sys_size, ram_size) > pt);
	l->page_tables = before;
	l->page_tables_size = pt * KG_PAGE;
	if (l->sys_size >= KG_CTL_GPA)
		return ferry_error_set(-EINVAL, "a system region of %llu MiB "
				       "does not fit below the control page",
				       (unsigned long long)l->sys_size >> 20);
	return 0;
}

/* ---- writing it --------------------------------------------------------- */

struct writer {
	uint8_t *sys;		/* the system region, VMM's view */
	uint64_t pml4;		/* guest address of the PML4 */
	uint64_t next_table;	/* guest address of the next free table */
};

static uint64_t *table_at(struct writer *w, uint64_t gpa)
{
	return (uint64_t *)(w->sys + gpa);
}

static uint64_t *next_level(struct writer *w, uint64_t *entry)
{
	if (!*entry) {
		*entry = w->next_table | PTE_P | PTE_W | PTE_U;
		w->next_table += KG_PAGE;
	}
	return table_at(w, *entry & ~0xfffULL);
}

static void map_range(struct writer *w, uint64_t start, uint64_t end,
		      uint64_t flags)
{
	for (uint64_t va = start; va < end; va += KG_PAGE) {
		uint64_t *t = table_at(w, w->pml4);

		t = next_level(w, &t[va >> 39 & 511]);
		t = next_level(w, &t[va >> 30 & 511]);
		t = next_level(w, &t[va >> 21 & 511]);
		t[va >> 12 & 511] = va | flags;
	}
}

static bool supervisor_only(const struct kvm_layout *l, uint64_t va)
{
	return (va >= SYS_GDT && va < SYS_MACHINE) ||
	       (va >= l->page_tables &&
		va < l->page_tables + l->page_tables_size);
}

static int write_page_tables(struct ferry_kvm *k, uint8_t *sys)
{
	const struct kvm_layout *l = &k->layout;
	struct writer w = { .sys = sys, .pml4 = l->page_tables,
			    .next_table = l->page_tables + KG_PAGE };

	for (uint64_t va = KG_PAGE; va < l->sys_size; va += KG_PAGE)
		map_range(&w, va, va + KG_PAGE, PTE_P | PTE_W |
			  (supervisor_only(l, va) ? 0 : PTE_U));
	map_range(&w, KG_CTL_GPA, KG_CTL_GPA + KG_PAGE, PTE_P | PTE_U);
	map_range(&w, KG_MMIO_GPA, KG_MMIO_GPA + KG_MMIO_SIZE,
		  PTE_P | PTE_W | PTE_U);
	for (unsigned int i = 0; i < k->ram.nr_regions; i++) {
		const struct ferry_region *r = &k->ram.regions[i];

		map_range(&w, r->guest_base, r->guest_base + r->size,
			  PTE_P | PTE_W | PTE_U);
	}
	if (w.next_table > l->page_tables + l->page_tables_size)
		return ferry_error_set(-EINVAL, "page tables overran their "
				       "%llu KiB", (unsigned long long)
				       l->page_tables_size >> 10);
	return 0;
}

static void write_gdt(const struct kvm_layout *l, uint8_t *sys)
{
	uint8_t *g = sys + l->gdt;
	uint64_t tss = l->tss, limit = 0x67;

	le64_store(g + 0x08, 0x00209a0000000000ULL);	/* kernel code, L */
	le64_store(g + 0x10, 0x00cf92000000ffffULL);	/* kernel data */
	le64_store(g + 0x18, 0x0020fa0000000000ULL);	/* user code, L */
	le64_store(g + 0x20, 0x00cff2000000ffffULL);	/* user data */
	le64_store(g + 0x28, (limit & 0xffff) | (tss & 0xffffff) << 16 |
		   0x8bULL << 40 | ((tss >> 24) & 0xff) << 56);
	le64_store(g + 0x30, tss >> 32);
	/* TSS: rsp0 at 4; no I/O bitmap (its offset past the limit). */
	le64_store(sys + l->tss + 4, l->kstack_top);
	le16_store(sys + l->tss + 0x66, 0x68);
}

static void write_idt(const struct kvm_layout *l, uint8_t *sys)
{
	uint64_t stubs = kvm_image_header()->stubs;

	for (int v = 0; v < 32; v++) {
		uint64_t off = stubs + (uint64_t)v * 16;
		uint8_t *e = sys + l->idt + v * 16;

		le64_store(e, (off & 0xffff) | (uint64_t)KG_SEL_KCODE << 16 |
			   0x8eULL << 40 | ((off >> 16) & 0xffff) << 48);
		le64_store(e + 8, off >> 32);
	}
}

static void write_machine(struct ferry_kvm *k, uint8_t *sys)
{
	struct kg_machine *m = (struct kg_machine *)(sys + k->layout.machine);

	memset(m, 0, sizeof(*m));
	m->magic = KG_MACHINE_MAGIC;
	m->nr_vcpus = k->nr_vcpus;
	m->wl = k->wl;
	m->map.nr_cells = k->cells.nr_cells;
	m->map.nr_regions = k->cells.nr_regions;
	m->map.regions = (struct cell_region *)(uintptr_t)
		(k->layout.machine + offsetof(struct kg_machine, regions));
	for (unsigned int i = 0; i < k->cells.nr_regions; i++)
		m->regions[i] = (struct cell_region){
			.first = k->cells.regions[i].first,
			.nr = k->cells.regions[i].nr,
			.guest = (uint8_t *)(uintptr_t)
				 k->ram.regions[i].guest_base,
			.memfd = -1 };
	m->ctl = KG_CTL_GPA;
}

static void write_vcpus(struct ferry_kvm *k, uint8_t *sys)
{
	uint64_t kv = k->layout.kv_tables;

	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		struct kvcpu *v = &k->vcpus[i];
		struct kg_vcpu *b = (struct kg_vcpu *)(sys + v->block);

		memset(b, 0, sizeof(*b));
		workload_regs_boot(&k->wl, i, &b->regs);
		b->waiting_gen = KG_NO_GEN;
		b->index = i;
		b->buf = v->block + KG_PAGE;
		b->part = v->part;
		b->part.key_start = NULL;
		if (v->part.nr_keys) {
			memcpy(sys + kv, v->part.key_start,
			       (v->part.nr_keys + 1) * 8);
			b->part.key_start = (uint64_t *)(uintptr_t)kv;
			kv += kv_bytes(&v->part);
		}
	}
}

static int write_image(uint8_t *sys)
{
	const struct kg_image_header *h = kvm_image_header();
	size_t len = (size_t)(kvm_guest_image_end - kvm_guest_image);

	if (h->magic != KG_IMAGE_MAGIC || h->abi_version != KG_ABI_VERSION ||
	    h->image_end > KG_IMAGE_BASE + KG_IMAGE_MAX ||
	    len > KG_IMAGE_MAX)
		return ferry_error_set(-EINVAL, "the guest image built in is "
				       "not one this VM can load");
	memcpy(sys + KG_IMAGE_BASE, kvm_guest_image, len);
	return 0;
}

int kvm_layout_write(struct ferry_kvm *k)
{
	uint8_t *sys = k->mem->regions[0].guest;
	int ret = write_image(sys);

	if (ret)
		return ret;
	write_gdt(&k->layout, sys);
	write_idt(&k->layout, sys);
	write_machine(k, sys);
	write_vcpus(k, sys);
	return write_page_tables(k, sys);
}

int kvm_parts_init(struct ferry_kvm *k)
{
	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		int ret = workload_part_init(&k->wl, i, &k->vcpus[i].part);

		if (ret)
			return ret;
		k->vcpus[i].block = KVM_VCPU_BLOCK(&k->layout, i);
	}
	return 0;
}
