// SPDX-License-Identifier: MIT
/*
 * source_session: one connection of a migration, from the source.  Open:
 * the link (heartbeats, the watchdog), a sender per bulk channel, the
 * urgent thread; then the HEADER and the destination's answer.  Close:
 * shut it down, join them all.  A migration that pauses opens another.
 */
#include <stdlib.h>

#include "base/error.h"
#include "base/sys.h"
#include "migrate/source_int.h"

static void forget_replies(struct source *src)
{
	pthread_mutex_lock(&src->m->lock);
	src->reply = REPLY_NONE;
	src->ready = false;
	src->dest_complete = false;
	pthread_mutex_unlock(&src->m->lock);
}

static int start_threads(struct source *src)
{
	const struct ferry_migrate_opts *o = src->opts;
	int ret = link_start(&src->link, src->session, "the destination",
			     o->heartbeat_ms, o->timeout_ms, &src->m->lock,
			     &src->m->cond);

	if (ret)
		return ret;
	ret = threads_init(&src->sender_threads);
	if (!ret)
		ret = threads_init(&src->urgent_thread);
	if (!ret)
		ret = source_start_senders(src);
	if (!ret)
		ret = source_start_urgent(src);
	return ret;
}

int source_session_open(struct source *src, struct ferry_session *session)
{
	int ret;

	src->session = session;
	src->nr_senders = session->nr_bulk;
	src->senders = sys_zalloc(src->nr_senders * sizeof(*src->senders));
	if (!src->senders)
		return ferry_fail(-ENOMEM, "out of memory");
	forget_replies(src);
	src->sender_threads = (struct threads){ .stop_fd = -1 };
	src->urgent_thread = (struct threads){ .stop_fd = -1 };
	src->session_open = true;
	ret = start_threads(src);
	if (!ret)
		mig_session_use(src->m, session, &src->link);
	/* nothing of this session is left running */
	return ret ? source_session_close(src, ret) : 0;
}

int source_session_close(struct source *src, int ret)
{
	if (!src->session_open)
		return ret;
	mig_session_use(src->m, NULL, NULL);
	/* Everything of it may sit in I/O: wake it all, then join. */
	if (ret)
		link_fail(&src->link, ret);
	ferry_net_session_shutdown(src->session);
	source_stop_senders(src);
	source_stop_urgent(src);
	/* Every thread of it has said what it met: the telling reason. */
	if (ret)
		ret = link_error(&src->link);
	link_fini(&src->link);
	threads_fini(&src->sender_threads);
	threads_fini(&src->urgent_thread);
	free(src->senders);
	src->senders = NULL;
	src->nr_senders = 0;
	mig_session_close(src->m, src->session);
	src->session = NULL;
	src->session_open = false;
	return ret;
}

static bool flag_set(const void *flag)
{
	return *(const bool *)flag;
}

int source_wait_flag(struct source *src, const bool *flag)
{
	return mig_wait_until(src->m, &src->link, flag_set, flag);
}

static bool replied(const void *arg)
{
	const struct source *src = arg;

	return src->reply != REPLY_NONE;
}

/*
 * HEADER on bulk 0, then nothing more until the destination answers it:
 * ACCEPT (it has built the VM: guest memory may go), RESUME (it holds this
 * migration), or ERROR (why not: another format version, too large, the
 * wrong VM).  The wait is the link's: a destination that heartbeats is
 * still building the VM.
 */
int source_handshake(struct source *src)
{
	struct sender *s0 = &src->senders[0];
	int ret = ferry_wire_enc_header(&s0->frame, &src->stream);

	if (!ret)
		ret = source_send_frame(src, &s0->writer, &s0->frame);
	if (ret)
		return link_fail(&src->link, ret);
	return mig_wait_until(src->m, &src->link, replied, src);
}
