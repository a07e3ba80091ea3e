// SPDX-License-Identifier: MIT
/*
 * source: the sending side of a live migration, the flow.  Set up, send
 * the HEADER, arm dirty tracking, pre-copy, switch over, and in post-copy
 * push the rest; then account.  source_int.h says which file does what.
 */
#include <stdlib.h>
#include <string.h>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "ferry/hist.h"
#include "migrate/source_int.h"

static int send_header(struct source *src)
{
	const struct ferry_vm *vm = src->vm;
	struct sender *s0 = &src->senders[0];
	int ret = ferry_wire_stream_init(&src->stream, vm->mem,
			FERRY_WIRE_MIGRATION, vm->ops->nr_vcpus(vm->handle),
			vm->desc, vm->desc_len);

	if (!ret)
		ret = ferry_wire_enc_header(&s0->frame, &src->stream);
	if (!ret)
		ret = source_send_frame(src, &s0->writer, &s0->frame);
	return ret;
}

/*
 * Dirty tracking, or none: without async write-protect (before Linux 6.7)
 * the migration is post-copy only, every page sent once after the pause.
 */
static int arm_dirty(struct source *src)
{
	int ret;

	if (src->opts->postcopy_at_once) {	/* no live pass to track */
		src->dirty = NULL;
		return 0;
	}
	ret = ferry_dirty_start(src->vm->mem, &src->dirty);

	if (ret == -EOPNOTSUPP && src->opts->mode == FERRY_MODE_POSTCOPY) {
		src->dirty = NULL;
		return 0;
	}
	return ret;
}

static void fill_stats(struct source *src, enum ferry_mode mode,
		       uint64_t downtime_ns)
{
	struct ferry_migrate_stats *st = src->stats;

	st->mode = mode;
	st->downtime_ns = downtime_ns;
	st->total_ns = ferry_clock_now_ns() - src->start_ns;
	st->bytes_sent = atomic_load(&src->bytes_sent);
	st->pages_sent = atomic_load(&src->pages_sent);
	st->zero_pages = atomic_load(&src->zero_pages);
	st->pages_pushed = atomic_load(&src->pushed);
	st->pages_requested = atomic_load(&src->requested);
	st->guest_bytes = src->vm->mem->total_size;
}

/* Switch over and, in post-copy, serve the rest. */
static int finish(struct source *src, enum ferry_mode mode)
{
	uint64_t downtime_ns;
	int ret;

	source_notify_progress(src, FERRY_PHASE_SWITCHOVER);
	ret = source_switchover(src, mode, &downtime_ns);
	if (ret)
		return ret;
	ferry_dirty_stop(src->dirty);
	src->dirty = NULL;
	if (mode == FERRY_MODE_POSTCOPY) {
		src->owed = source_count_maps(src);
		source_notify_progress(src, FERRY_PHASE_POSTCOPY);
		ret = source_postcopy(src);
		if (ret)
			return ferry_fail_ctx(ret, "post-copy (the VM runs at "
					      "the destination)");
	}
	fill_stats(src, mode, downtime_ns);
	source_notify_progress(src, FERRY_PHASE_DONE);
	return 0;
}

static int migrate(struct source *src)
{
	enum ferry_mode mode = FERRY_MODE_PRECOPY;
	int ret = source_start_senders(src);

	source_notify_progress(src, FERRY_PHASE_SETUP);
	if (!ret)
		ret = send_header(src);
	if (!ret)
		ret = arm_dirty(src);
	if (!ret)
		ret = source_precopy(src, &mode);
	if (ret)
		ret = source_peer_reason(src, ret);
	if (!ret)
		ret = finish(src, mode);
	if (ret)	/* wake senders blocked on a dead peer */
		ferry_net_session_shutdown(src->session);
	source_stop_senders(src);
	ferry_dirty_stop(src->dirty);
	return ret;
}

/* ---- setup and teardown ------------------------------------------------- */

static void source_destroy(struct source *src)
{
	for (unsigned int i = 0; src->send_map &&
	     i < src->vm->mem->nr_regions; i++)
		free(src->send_map[i]);
	free(src->send_map);
	free(src->senders);
	free(src->urgent_sender);
	free(src->urgent_buf);
	free(src->main_buf);
	threads_fini(&src->urgent_thread);
	threads_fini(&src->sender_threads);
	err_slot_fini(&src->urgent_err);
	err_slot_fini(&src->sender_err);
	pthread_cond_destroy(&src->cond);
	pthread_mutex_destroy(&src->lock);
	free(src);
}

/* Buffers and maps, faulted in now: none of it may cost the downtime. */
static int source_alloc(struct source *src)
{
	const struct ferry_mem *mem = src->vm->mem;

	src->nr_senders = src->session->nr_bulk;
	src->senders = sys_zalloc(src->nr_senders * sizeof(*src->senders));
	src->urgent_sender = sys_zalloc(sizeof(*src->urgent_sender));
	src->urgent_buf = sys_zalloc_aligned(4096, FERRY_WIRE_BUF_SIZE);
	src->main_buf = sys_zalloc_aligned(4096, FERRY_WIRE_BUF_SIZE);
	src->send_map = calloc(mem->nr_regions ? mem->nr_regions : 1,
			       sizeof(*src->send_map));
	if (!src->senders || !src->urgent_sender || !src->urgent_buf ||
	    !src->main_buf || !src->send_map)
		return ferry_fail(-ENOMEM, "out of memory");
	src->urgent_sender->src = src;
	for (unsigned int i = 0; i < mem->nr_regions; i++) {
		src->send_map[i] = bitmap_alloc(mem->regions[i].nr_pages);
		if (!src->send_map[i])
			return ferry_fail(-ENOMEM, "out of memory");
	}
	return 0;
}

static int source_create(const struct ferry_vm *vm,
			 struct ferry_session *session,
			 const struct ferry_migrate_opts *opts,
			 struct ferry_migrate_stats *stats,
			 struct source **out)
{
	struct source *src = calloc(1, sizeof(*src));
	int ret;

	if (!src)
		return ferry_fail(-ENOMEM, "out of memory");
	*src = (struct source){ .vm = vm, .session = session, .opts = opts,
				.stats = stats, .start_ns = ferry_clock_now_ns(),
				.sender_threads = { .stop_fd = -1 },
				.urgent_thread = { .stop_fd = -1 } };
	pthread_mutex_init(&src->lock, NULL);
	pthread_cond_init(&src->cond, NULL);
	err_slot_init(&src->sender_err);
	err_slot_init(&src->urgent_err);
	ferry_wire_reader_init(&src->urgent_reader, session->urgent);
	ferry_wire_writer_init(&src->urgent_writer, session->urgent);
	ret = source_alloc(src);
	if (!ret)
		ret = threads_init(&src->sender_threads);
	if (!ret)
		ret = threads_init(&src->urgent_thread);
	if (ret) {
		source_destroy(src);
		return ret;
	}
	*out = src;
	return 0;
}

static int check_args(const struct ferry_vm *vm, struct ferry_session *s)
{
	int ret = ferry_vcpu_ops_check(vm->ops);

	if (ret)
		return ret;
	if (!s || !s->nr_bulk || !s->urgent)
		return ferry_fail(-EINVAL, "the session needs a bulk and an "
				  "urgent channel");
	if (!vm->mem || !vm->mem->nr_regions)
		return ferry_fail(-EINVAL, "the VM has no memory");
	return 0;
}

int ferry_migrate_send(const struct ferry_vm *vm,
		       struct ferry_session *session,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_migrate_stats *stats)
{
	struct ferry_migrate_opts defaults;
	struct source *src = NULL;
	int ret = check_args(vm, session);

	if (ret)
		return ret;
	if (!opts) {
		ferry_migrate_opts_init(&defaults);
		opts = &defaults;
	}
	if (opts->postcopy_at_once && opts->mode != FERRY_MODE_POSTCOPY)
		return ferry_fail(-EINVAL, "postcopy_at_once needs mode "
				  "postcopy, not %s", ferry_migrate_mode_name(opts->mode));
	memset(stats, 0, sizeof(*stats));
	ret = source_create(vm, session, opts, stats, &src);
	if (ret)
		return ret;
	ret = migrate(src);
	source_destroy(src);
	return ret;
}
