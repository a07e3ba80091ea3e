// SPDX-License-Identifier: MIT
/*
 * guest_state: the built-in vCPUs' register blobs (layout in
 * ferry-vm/guest.h) and the vCPU operations table.
 *
 * A blob is decoded into a struct vcpu_state and checked whole before
 * anything is written to the vCPU, so a bad blob changes nothing.
 */
#include <errno.h>
#include <string.h>
#include <xxhash.h>

#include "ferry/error.h"
#include "guest.h"
#include "le.h"
#include "psci.h"

#define STATE_MAGIC	0x50435646u	/* "FVCP" little-endian */
#define STATE_VERSION	1
#define STATE_SIZE	FERRY_GUEST_STATE_SIZE
#define STATE_CHECKED	(STATE_SIZE - 8)	/* bytes under the check */

#define FLAG_BOOT_OFF		(1u << 0)
#define FLAG_ON_PENDING		(1u << 1)
#define FLAG_WAKE_PENDING	(1u << 2)
#define FLAGS_KNOWN	(FLAG_BOOT_OFF | FLAG_ON_PENDING | FLAG_WAKE_PENDING)

enum state_offset {
	OFF_MAGIC = 0,
	OFF_VERSION = 4,
	OFF_ZERO1 = 6,
	OFF_LENGTH = 8,
	OFF_VCPU = 12,
	OFF_MACHINE = 16,
	OFF_MP_STATE = 24,
	OFF_FLAGS = 28,
	OFF_PC = 32,
	OFF_CURSOR = 36,
	OFF_RESETS = 40,
	OFF_ZERO2 = 44,
	OFF_STEPS = 48,
	OFF_WRITES = 56,
	OFF_READS = 64,
	OFF_READ_ERRORS = 72,
	OFF_FIRST_BAD = 80,
	OFF_OP_PRNG = 88,
	OFF_WGEN_PRNG = 96,
	OFF_WGEN_POS = 104,
	OFF_ZERO3 = 112,
	OFF_CHECK = 120,
};

struct vcpu_state {
	struct wl_regs regs;
	struct vcpu_power power;
	bool boot_off;
};

static uint32_t state_flags(const struct vcpu_state *s)
{
	return (s->boot_off ? FLAG_BOOT_OFF : 0) |
	       (s->power.on_pending ? FLAG_ON_PENDING : 0) |
	       (s->power.wake_pending ? FLAG_WAKE_PENDING : 0);
}

static void state_encode(const struct ferry_guest *g, unsigned int index,
			 const struct vcpu_state *s, uint8_t *b)
{
	memset(b, 0, STATE_SIZE);
	le32_store(b + OFF_MAGIC, STATE_MAGIC);
	le16_store(b + OFF_VERSION, STATE_VERSION);
	le32_store(b + OFF_LENGTH, STATE_SIZE);
	le32_store(b + OFF_VCPU, index);
	le64_store(b + OFF_MACHINE, g->machine_id);
	le32_store(b + OFF_MP_STATE, s->power.mp);
	le32_store(b + OFF_FLAGS, state_flags(s));
	le32_store(b + OFF_PC, s->power.pc);
	le32_store(b + OFF_CURSOR, s->power.script_cursor);
	le32_store(b + OFF_RESETS, s->power.resets);
	le64_store(b + OFF_STEPS, s->regs.steps);
	le64_store(b + OFF_WRITES, s->regs.writes);
	le64_store(b + OFF_READS, s->regs.reads);
	le64_store(b + OFF_READ_ERRORS, s->regs.read_errors);
	le64_store(b + OFF_FIRST_BAD, s->regs.first_bad);
	le64_store(b + OFF_OP_PRNG, s->regs.op_prng);
	le64_store(b + OFF_WGEN_PRNG, s->regs.wgen_prng);
	le64_store(b + OFF_WGEN_POS, s->regs.wgen_pos);
	le64_store(b + OFF_CHECK, XXH3_64bits(b, STATE_CHECKED));
}

/* Framing: is this a version-1 state blob at all? */
static int check_frame(const uint8_t *b, size_t len)
{
	if (len < OFF_LENGTH + 4 || le32_load(b + OFF_MAGIC) != STATE_MAGIC)
		return ferry_error_set(-EBADMSG, "not a ferry vCPU state (%zu "
				       "bytes, bad magic)", len);
	if (le16_load(b + OFF_VERSION) != STATE_VERSION)
		return ferry_error_set(-EBADMSG, "vCPU state version %u; this "
				       "ferry reads version %u",
				       le16_load(b + OFF_VERSION),
				       STATE_VERSION);
	if (len != STATE_SIZE || le32_load(b + OFF_LENGTH) != STATE_SIZE)
		return ferry_error_set(-EBADMSG, "vCPU state of %zu bytes "
				       "(header says %u), want %d", len,
				       le32_load(b + OFF_LENGTH), STATE_SIZE);
	if (le64_load(b + OFF_CHECK) != XXH3_64bits(b, STATE_CHECKED))
		return ferry_error_set(-EBADMSG,
				       "vCPU state checksum mismatch");
	if (le16_load(b + OFF_ZERO1) || le32_load(b + OFF_ZERO2) ||
	    le64_load(b + OFF_ZERO3))
		return ferry_error_set(-EBADMSG,
				       "vCPU state: reserved bytes set");
	return 0;
}

/* Is this blob for this vCPU of this machine? */
static int check_identity(const struct ferry_guest *g, unsigned int index,
			  const uint8_t *b)
{
	if (le32_load(b + OFF_VCPU) != index)
		return ferry_error_set(-EINVAL, "state of vCPU %u cannot load "
				       "into vCPU %u", le32_load(b + OFF_VCPU),
				       index);
	if (le64_load(b + OFF_MACHINE) != g->machine_id)
		return ferry_error_set(-EINVAL, "vCPU state comes from a "
				       "different machine (workload, seed, "
				       "vCPU count or memory size differ)");
	return 0;
}

static int decode_power(const struct vcpu *v, const uint8_t *b,
			struct vcpu_state *s)
{
	uint32_t mp = le32_load(b + OFF_MP_STATE), flags, pc, cursor;

	flags = le32_load(b + OFF_FLAGS);
	pc = le32_load(b + OFF_PC);
	cursor = le32_load(b + OFF_CURSOR);
	if (!ferry_vcpu_mp_state_valid((int)mp) || (flags & ~FLAGS_KNOWN) ||
	    pc >= VCPU_PC_COUNT || cursor > v->part.nr_events)
		return ferry_error_set(-EINVAL, "vCPU state out of range: MP "
				       "state %u, flags %#x, position %u, "
				       "script %u of %u", mp, flags, pc, cursor,
				       v->part.nr_events);
	if ((flags & FLAG_ON_PENDING) && mp != FERRY_MP_RUNNABLE)
		return ferry_error_set(-EINVAL, "vCPU state: CPU_ON pending on "
				       "a vCPU that is not runnable");
	s->power = (struct vcpu_power){
		.mp = (enum ferry_mp_state)mp,
		.pc = (enum vcpu_pc)pc,
		.on_pending = flags & FLAG_ON_PENDING,
		.wake_pending = flags & FLAG_WAKE_PENDING,
		.script_cursor = cursor,
		.resets = le32_load(b + OFF_RESETS),
	};
	s->boot_off = flags & FLAG_BOOT_OFF;
	return 0;
}

static int state_decode(const struct vcpu *v, const uint8_t *b, size_t len,
			struct vcpu_state *s)
{
	int ret = check_frame(b, len);

	if (!ret)
		ret = check_identity(v->g, v->index, b);
	if (!ret)
		ret = decode_power(v, b, s);
	if (ret)
		return ret;
	s->regs = (struct wl_regs){
		.steps = le64_load(b + OFF_STEPS),
		.writes = le64_load(b + OFF_WRITES),
		.reads = le64_load(b + OFF_READS),
		.read_errors = le64_load(b + OFF_READ_ERRORS),
		.first_bad = le64_load(b + OFF_FIRST_BAD),
		.op_prng = le64_load(b + OFF_OP_PRNG),
		.wgen_prng = le64_load(b + OFF_WGEN_PRNG),
		.wgen_pos = le64_load(b + OFF_WGEN_POS),
	};
	return workload_regs_check(&v->g->wl, &v->part, &s->regs);
}

/* ---- the operations ---------------------------------------------------- */

/* The vCPU, or NULL with the reason recorded. */
static struct vcpu *vcpu_of(struct ferry_guest *g, unsigned int index)
{
	if (index < g->nr_vcpus)
		return &g->vcpus[index];
	ferry_error_set(-EINVAL, "no vCPU %u (the VM has %u)", index,
			g->nr_vcpus);
	return NULL;
}

static int not_paused(void)
{
	return ferry_error_set(-EBUSY, "the vCPUs must be paused first");
}

static ssize_t state_save(void *vm, unsigned int index, void *buf,
			  size_t len)
{
	struct ferry_guest *g = vm;
	struct vcpu *v = vcpu_of(g, index);
	struct vcpu_state s;

	if (!v)
		return -EINVAL;
	if (len < STATE_SIZE)
		return ferry_error_set(-ENOSPC,
				       "a vCPU state needs %d bytes, not %zu",
				       STATE_SIZE, len);
	pthread_mutex_lock(&g->lock);
	if (!guest_paused_locked(g)) {
		pthread_mutex_unlock(&g->lock);
		return not_paused();
	}
	s.regs = v->regs;
	s.power = v->power;
	s.boot_off = g->boot_off_mask >> index & 1;
	pthread_mutex_unlock(&g->lock);
	state_encode(g, index, &s, buf);
	return STATE_SIZE;
}

static void state_commit(struct ferry_guest *g, struct vcpu *v,
			 const struct vcpu_state *s)
{
	uint64_t bit = 1ULL << v->index;

	v->regs = s->regs;
	v->power = s->power;
	g->boot_off_mask = s->boot_off ? g->boot_off_mask | bit :
					 g->boot_off_mask & ~bit;
	guest_publish(v);
	guest_kick_all_locked(g);
}

static int state_load(void *vm, unsigned int index, const void *buf,
		      size_t len)
{
	struct ferry_guest *g = vm;
	struct vcpu *v = vcpu_of(g, index);
	struct vcpu_state s;
	int ret;

	if (!v)
		return -EINVAL;
	ret = state_decode(v, buf, len, &s);
	if (ret)
		return ret;
	pthread_mutex_lock(&g->lock);
	if (guest_paused_locked(g))
		state_commit(g, v, &s);
	else
		ret = not_paused();
	pthread_mutex_unlock(&g->lock);
	return ret;
}

static int get_mp(void *vm, unsigned int index, enum ferry_mp_state *state)
{
	struct ferry_guest *g = vm;
	struct vcpu *v = vcpu_of(g, index);

	if (!v)
		return -EINVAL;
	pthread_mutex_lock(&g->lock);
	*state = v->power.mp;
	pthread_mutex_unlock(&g->lock);
	return 0;
}

static int set_mp(void *vm, unsigned int index, enum ferry_mp_state state)
{
	struct ferry_guest *g = vm;
	struct vcpu *v = vcpu_of(g, index);
	int ret;

	if (!v)
		return -EINVAL;
	pthread_mutex_lock(&g->lock);
	if (guest_paused_locked(g))
		ret = psci_set_mp_state_locked(v, state);
	else
		ret = not_paused();
	pthread_mutex_unlock(&g->lock);
	return ret;
}

static int reset(void *vm)
{
	struct ferry_guest *g = vm;
	int ret = 0;

	pthread_mutex_lock(&g->lock);
	if (guest_paused_locked(g))
		psci_reset_locked(g);
	else
		ret = not_paused();
	pthread_mutex_unlock(&g->lock);
	return ret;
}

static int pause_vm(void *vm)
{
	return ferry_guest_pause(vm);
}

static int resume_vm(void *vm)
{
	return ferry_guest_resume(vm);
}

static unsigned int nr_vcpus(void *vm)
{
	return ((struct ferry_guest *)vm)->nr_vcpus;
}

static size_t state_size(void *vm)
{
	(void)vm;
	return STATE_SIZE;
}

static const struct ferry_vcpu_ops guest_ops = {
	.name = "ferry-guest",
	.pause = pause_vm,
	.resume = resume_vm,
	.nr_vcpus = nr_vcpus,
	.state_size = state_size,
	.save = state_save,
	.load = state_load,
	.get_mp_state = get_mp,
	.set_mp_state = set_mp,
	.reset = reset,
};

const struct ferry_vcpu_ops *ferry_guest_vcpu_ops(void)
{
	return &guest_ops;
}
