// SPDX-License-Identifier: MIT
/*
 * The KVM guest: ferry's workload, one loop per vCPU, at CPL3.
 *
 * Built freestanding (no libc) from the same workload sources as the
 * built-in VM: the VMM lays the workload, each vCPU's part and the cell
 * map out in guest memory (vm/kvm/guest_abi.h), and this code only
 * steps.  Between steps it reads the control page (the step limit, a
 * request to park) and makes its power calls; every call is one MMIO
 * exit.  A read cell that fails its check is counted in the registers
 * and named to the VMM, which stops this vCPU.
 */
#include "guest_abi.h"

/*
 * A call is an exit: everything this vCPU wrote to its block and to
 * memory before it is there for the VMM to read (a compiler barrier on
 * each side; x86 keeps the stores in order).
 */
#define barrier()	__asm__ volatile("" ::: "memory")

static inline uint64_t call_load(enum kg_call fn, uint64_t arg)
{
	uint64_t v;

	barrier();
	v = *(volatile uint64_t *)(KG_MMIO_GPA + fn * KG_CALL_STRIDE +
				   arg * 8);
	barrier();
	return v;
}

static inline void call_store(enum kg_call fn, uint64_t value)
{
	barrier();
	*(volatile uint64_t *)(KG_MMIO_GPA + fn * KG_CALL_STRIDE) = value;
	barrier();
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

#define PSCI_ALREADY_ON		(-4)
#define PSCI_ON_PENDING		(-5)
#define NAP_IDLE_NS		1000000ULL	/* the idle workload's tick */
#define NAP_MIN_NS		1000000ULL	/* shortest throttle sleep */

static const volatile struct kg_control *control(const struct kg_machine *m)
{
	return (const volatile struct kg_control *)m->ctl;
}

static enum kg_call event_call(enum wl_event_kind kind)
{
	switch (kind) {
	case WL_EV_OFF:
		return KG_CALL_CPU_OFF;
	case WL_EV_SUSPEND:
		return KG_CALL_CPU_SUSPEND;
	case WL_EV_ON:
		return KG_CALL_CPU_ON;
	case WL_EV_WAKE:
		return KG_CALL_WAKE;
	case WL_EV_RESET:
		return KG_CALL_SYSTEM_RESET;
	default:
		return KG_CALL_SYSTEM_OFF;
	}
}

/*
 * The scripted call at the cursor, if due.  The cursor moves on before
 * the call, as in the built-in VM: a CPU_OFF does not return (the vCPU
 * is off when the exit is answered, and a later CPU_ON enters it afresh),
 * and must not fire again then.  A CPU_ON whose target is still on stays
 * at the cursor until the power generation moves (every power change
 * bumps it), as the built-in VM retries on every kick.
 */
static int fire_due_event(const struct kg_machine *m, struct kg_vcpu *v)
{
	const volatile struct kg_control *ctl = control(m);
	const struct wl_event *ev;
	uint64_t gen;
	int64_t ret;

	if (v->cursor >= v->part.nr_events)
		return 0;
	ev = &v->part.events[v->cursor];
	if (ev->step > v->regs.steps)
		return 0;
	gen = ctl->power_gen;
	if (v->waiting_gen == gen)
		return 0;
	v->waiting_gen = KG_NO_GEN;
	v->cursor++;
	ret = (int64_t)call_load(event_call(ev->kind), ev->target);
	if (ev->kind == WL_EV_ON &&
	    (ret == PSCI_ALREADY_ON || ret == PSCI_ON_PENDING)) {
		v->cursor--;
		v->waiting_gen = gen;
		return 0;
	}
	return 1;
}

/* The lowest vCPU on at boot powers the others on. */
static void boot_program(const struct kg_machine *m)
{
	uint64_t mask = control(m)->boot_off_mask;

	for (uint32_t i = 0; i < m->nr_vcpus; i++)
		if (mask >> i & 1)
			call_load(KG_CALL_CPU_ON, i);
}

/* Token bucket on the TSC: sleep (a NAP call) once over the cap. */
static void throttle(const struct kg_machine *m, struct kg_vcpu *v,
		     unsigned int cells)
{
	const volatile struct kg_control *ctl = control(m);
	uint64_t rate = ctl->rate_per_vcpu, khz = ctl->tsc_khz, now;
	int64_t burst = (int64_t)(rate / 100);	/* 10 ms of writes */
	unsigned __int128 gained;

	v->tokens -= (int64_t)cells * CELL_SIZE;
	if (v->tokens >= 0 || !khz)
		return;
	now = rdtsc();
	if (now > v->tokens_tsc) {	/* a migration may move the TSC */
		gained = (unsigned __int128)(now - v->tokens_tsc) * rate /
			 (khz * 1000);
		v->tokens += gained > (unsigned __int128)burst * 2 ?
			     burst * 2 : (int64_t)gained;
	}
	v->tokens_tsc = now;
	if (v->tokens > burst)
		v->tokens = burst;
	if (v->tokens < 0) {
		uint64_t ns = (uint64_t)(-v->tokens) * 1000000000ULL / rate;

		call_store(KG_CALL_NAP, ns > NAP_MIN_NS ? ns : NAP_MIN_NS);
	}
}

static void step(const struct kg_machine *m, struct kg_vcpu *v)
{
	uint64_t errors = v->regs.read_errors;
	unsigned int cells = workload_step(&m->wl, &v->part, &m->map,
					   &v->regs, (uint8_t *)v->buf);

	if (v->regs.read_errors != errors)
		call_store(KG_CALL_BAD_CELL, v->regs.first_bad);
	if (m->wl.kind == WL_IDLE)
		call_store(KG_CALL_NAP, NAP_IDLE_NS);
	else if (control(m)->rate_per_vcpu && cells)
		throttle(m, v, cells);
}

__attribute__((noreturn, used)) static void
kg_main(const struct kg_machine *m, struct kg_vcpu *v, uint64_t boot)
{
	const volatile struct kg_control *ctl = control(m);

	if (boot)
		boot_program(m);
	for (;;) {
		uint64_t limit = ctl->step_limit;

		if (ctl->park)
			call_load(KG_CALL_PARK, 0);
		else if (limit && v->regs.steps >= limit)
			call_load(KG_CALL_SETTLE, 0);
		else if (!fire_due_event(m, v))
			step(m, v);
	}
}

/* For the host's test: n steps as the loop runs them, without calls. */
__attribute__((used)) static void
kg_run_steps(const struct kg_machine *m, struct kg_vcpu *v, uint64_t n)
{
	while (n--)
		workload_step(&m->wl, &v->part, &m->map, &v->regs,
			      (uint8_t *)v->buf);
}

extern char kg_stubs[], kg_image_end[];

__attribute__((section(".header"), used))
static const struct kg_image_header header = {
	.magic = KG_IMAGE_MAGIC,
	.abi_version = KG_ABI_VERSION,
	.header_size = sizeof(struct kg_image_header),
	.entry = (uint64_t)kg_main,
	.run_steps = (uint64_t)kg_run_steps,
	.stubs = (uint64_t)kg_stubs,
	.image_end = (uint64_t)kg_image_end,
};
