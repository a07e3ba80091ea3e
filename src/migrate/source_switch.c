// SPDX-License-Identifier: MIT
/*
 * source_switch: the downtime.  Pause the vCPUs, send what is left (pre-
 * copy) or the stale bitmap (post-copy), the vCPU states and SWITCHOVER on
 * every bulk channel, and wait for the destination to say it is ready to
 * run the VM.  If anything fails before it does, the VM runs here again.
 */
#include <stdlib.h>

#include "base/error.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/source_int.h"

static int send_vcpus(struct source *src)
{
	const struct ferry_vm *vm = src->vm;
	struct sender *s0 = &src->senders[0];
	unsigned int n = vm->ops->nr_vcpus(vm->handle);
	size_t cap = vm->ops->state_size(vm->handle);
	uint8_t *blob = malloc(cap ? cap : 1);
	int ret = blob ? 0 : -ENOMEM;

	for (unsigned int i = 0; i < n && !ret; i++) {
		enum ferry_mp_state mp;
		ssize_t len = vm->ops->save(vm->handle, i, blob, cap);
		struct ferry_wire_vcpu v;

		if (len < 0) {
			ret = ferry_fail_ctx((int)len, "saving vCPU %u", i);
			break;
		}
		ret = vm->ops->get_mp_state(vm->handle, i, &mp);
		v = (struct ferry_wire_vcpu){ .index = i, .mp_state = mp,
			.regs_len = (uint32_t)len, .regs = blob };
		if (!ret)
			ret = ferry_wire_enc_vcpu(&s0->frame, &src->stream, &v);
		if (!ret)
			ret = source_send_frame(src, &s0->writer, &s0->frame);
	}
	free(blob);
	return ret;
}

/* Any bit set in [first, first + count)?  first is a multiple of 64. */
static bool any_bit(const uint64_t *map, uint64_t first, uint64_t count)
{
	for (uint64_t w = first / 64; w < (first + count + 63) / 64; w++)
		if (map[w])
			return true;
	return false;
}

/*
 * The stale bitmap in windows of 32768 pages, leaving out those with
 * nothing owed: what crosses the wire in the downtime grows with the stale
 * set, not with guest memory.
 */
#define STALE_WINDOW	32768U

static int send_stale_window(struct source *src, unsigned int region,
			     uint64_t first, uint64_t pages)
{
	struct sender *s0 = &src->senders[0];
	struct ferry_wire_bitmap b = {
		.region = region, .kind = FERRY_WIRE_BITMAP_STALE,
		.first_page = (uint32_t)first,
		.nr_bits = (uint32_t)(pages - first < STALE_WINDOW ?
				      pages - first : STALE_WINDOW),
		.words = src->send_map[region] + first / 64,
	};
	int ret;

	if (!any_bit(src->send_map[region], first, b.nr_bits))
		return 0;
	ret = ferry_wire_enc_bitmap(&s0->frame, &src->stream, &b);
	if (!ret)
		ret = source_send_frame(src, &s0->writer, &s0->frame);
	return ret;
}

static int send_stale(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;
	int ret = 0;

	for (unsigned int i = 0; i < mem->nr_regions && !ret; i++)
		for (uint64_t first = 0; first < mem->regions[i].nr_pages &&
		     !ret; first += STALE_WINDOW)
			ret = send_stale_window(src, i, first,
						mem->regions[i].nr_pages);
	return ret;
}

/* One control record on every bulk channel: the senders are idle. */
static int send_all(struct source *src,
		    int (*enc)(struct ferry_wire_frame *f, void *arg),
		    void *arg)
{
	for (unsigned int i = 0; i < src->nr_senders; i++) {
		struct sender *s = &src->senders[i];
		int ret = enc(&s->frame, arg);

		if (!ret)
			ret = source_send_frame(src, &s->writer, &s->frame);
		if (ret)
			return ret;
	}
	return 0;
}

static int enc_switchover(struct ferry_wire_frame *f, void *arg)
{
	return ferry_wire_enc_switchover(f, *(enum ferry_wire_switch_mode *)arg);
}

static int enc_complete(struct ferry_wire_frame *f, void *arg)
{
	return ferry_wire_enc_complete(f, arg);
}

int source_send_complete(struct source *src)
{
	struct ferry_wire_complete c = {
		.pages = atomic_load(&src->pages_sent),
		.zero_pages = atomic_load(&src->zero_pages),
	};

	return send_all(src, enc_complete, &c);
}

/*
 * The last dirty set, added to what the send maps hold: the vCPUs are
 * paused, so a peek (nothing protected again) sees all of it.
 */
static int map_last(struct source *src)
{
	ssize_t n = source_map_dirty(src, false);

	return n < 0 ? (int)n : 0;
}

static int switch_precopy(struct source *src)
{
	enum ferry_wire_switch_mode m = FERRY_WIRE_SWITCH_PRECOPY;
	double bps;
	int ret = map_last(src);

	if (!ret)
		ret = source_round(src, false, &bps);
	if (!ret)
		ret = send_vcpus(src);
	if (!ret)
		ret = send_all(src, enc_switchover, &m);
	if (!ret)
		ret = source_send_complete(src);
	return ret;
}

static int switch_postcopy(struct source *src)
{
	enum ferry_wire_switch_mode m = FERRY_WIRE_SWITCH_POSTCOPY;
	/* With no live pass (no dirty tracker), every page that exists. */
	int ret = src->dirty ? 0 : source_map_populated(src);

	if (!ret)
		ret = map_last(src);
	if (!ret)
		ret = send_stale(src);
	if (!ret)
		ret = send_vcpus(src);
	if (!ret)
		ret = send_all(src, enc_switchover, &m);
	return ret;
}

/*
 * The switchover failed before READY: undo this pause.  A first
 * migration's VM runs here again; a handover's stays paused, as the
 * earlier commit left it.
 */
static int undo_pause(struct source *src, int ret)
{
	const struct ferry_vm *vm = src->vm;

	vm->ops->resume(vm->handle);
	if (src->handover)
		return ferry_fail_ctx(ret, "switchover (the VM stays paused "
				      "here, whole)");
	atomic_store(&src->vm_paused, false);
	if (ret == -ECANCELED || mig_cancelled(src->m))
		return mig_cancel_error(src->m, "the VM runs here");
	return ferry_fail_ctx(ret, "switchover (the VM runs here again)");
}

int source_switchover(struct source *src, enum ferry_mode mode,
		      uint64_t *pause_ns)
{
	const struct ferry_vm *vm = src->vm;
	int ret = vm->ops->pause(vm->handle);

	if (ret)
		return ferry_fail_ctx(ret, "pausing the vCPUs");
	*pause_ns = ferry_clock_now_ns();
	atomic_store(&src->vm_paused, true);
	mig_set_phase(src->m, FERRY_PHASE_SWITCHOVER);
	mig_event(src->m, FERRY_EVENT_SWITCHOVER, 0, 0);
	ret = mode == FERRY_MODE_PRECOPY ? switch_precopy(src) :
					   switch_postcopy(src);
	if (!ret)
		ret = source_wait_flag(src, &src->ready);
	return ret ? undo_pause(src, ret) : 0;
}
