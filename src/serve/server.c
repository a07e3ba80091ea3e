// SPDX-License-Identifier: MIT
/*
 * serve server: the server's public calls, its VMs and what is told of
 * them.  The VM lists change only on the thread that runs
 * ferry_serve_run() (loop.c), under `lock`, so that ferry_serve_vms() may
 * read them from any thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "base/error.h"
#include "base/sys.h"
#include "serve/serve.h"

#define DEFAULT_HANDSHAKE_MS	5000
#define DEFAULT_MAX_VMS		256

/* ---- events -------------------------------------------------------------- */

void serve_tell(struct ferry_serve *srv, enum ferry_serve_event_kind kind,
		const struct ferry_serve_vm_stats *st, const char *reason)
{
	struct ferry_serve_event ev = { kind, st, reason ? reason : "" };

	if (srv->opts.on_event)
		srv->opts.on_event(srv->opts.event_arg, &ev);
}

void serve_tell_vm(struct ferry_serve *srv, enum ferry_serve_event_kind kind,
		   struct serve_vm *vm, const char *reason)
{
	struct ferry_serve_vm_stats *st = malloc(sizeof(*st));

	if (!st)
		return;
	serve_vm_stats(vm, st);
	serve_tell(srv, kind, st, reason);
	free(st);
}

/* ---- news from the VMs' threads ------------------------------------------ */

void serve_take_news(struct serve_vm *vm, struct serve_news *n)
{
	pthread_mutex_lock(&vm->news_lock);
	n->failure_new = vm->failure_new;
	n->note_new = vm->note_new;
	memcpy(n->failure, vm->failure, sizeof(n->failure));
	memcpy(n->note, vm->note, sizeof(n->note));
	n->handed_off = vm->handed_off;
	n->fill_over = vm->fill_over;
	n->service_ended = vm->service_ended;
	vm->failure_new = vm->note_new = vm->handed_off = false;
	pthread_mutex_unlock(&vm->news_lock);
}

void serve_tell_news(struct ferry_serve *srv, struct serve_vm *vm,
		     const struct serve_news *n)
{
	if (n->failure_new) {
		serve_set_reason(srv, vm, n->failure);
		serve_tell_vm(srv, FERRY_SERVE_EV_FAILED, vm, n->failure);
	}
	if (n->note_new)
		serve_tell_vm(srv, FERRY_SERVE_EV_NOTE, vm, n->note);
}

/* What the VM's threads (or its end) said and nobody told yet. */
static void last_news(struct ferry_serve *srv, struct serve_vm *vm)
{
	struct serve_news n;

	serve_take_news(vm, &n);
	serve_tell_news(srv, vm, &n);
}

/* ---- the VM lists -------------------------------------------------------- */

int serve_add_vm(struct ferry_serve *srv, struct serve_vm *vm)
{
	int ret = 0;

	pthread_mutex_lock(&srv->lock);
	if (srv->nr_vms == srv->vms_cap) {
		size_t cap = srv->vms_cap ? srv->vms_cap * 2 : 16;
		struct serve_vm **v = realloc(srv->vms, cap * sizeof(*v));

		if (v) {
			srv->vms = v;
			srv->vms_cap = cap;
		}
	}
	if (srv->nr_vms < srv->vms_cap)
		srv->vms[srv->nr_vms++] = vm;
	else
		ret = ferry_fail(-ENOMEM, "out of memory");
	pthread_mutex_unlock(&srv->lock);
	return ret;
}

/* The ended figures kept: the last SERVE_MAX_ENDED, oldest dropped. */
static void keep_ended(struct ferry_serve *srv,
		       const struct ferry_serve_vm_stats *st)
{
	if (srv->nr_ended == SERVE_MAX_ENDED) {
		srv->ended[srv->ended_head] = *st;
		srv->ended_head = (srv->ended_head + 1) % SERVE_MAX_ENDED;
		return;
	}
	if (srv->nr_ended == srv->ended_cap) {
		size_t cap = srv->ended_cap ? srv->ended_cap * 2 : 16;
		struct ferry_serve_vm_stats *e = realloc(srv->ended,
							 cap * sizeof(*e));

		if (!e)
			return;		/* its figures are lost, not the VM */
		srv->ended = e;
		srv->ended_cap = cap;
	}
	srv->ended[srv->nr_ended++] = *st;
}

/* Out of the live list (which stays in order), its figures kept. */
static void retire(struct ferry_serve *srv, struct serve_vm *vm,
		   const struct ferry_serve_vm_stats *st)
{
	pthread_mutex_lock(&srv->lock);
	for (size_t i = 0; i < srv->nr_vms; i++)
		if (srv->vms[i] == vm) {
			memmove(&srv->vms[i], &srv->vms[i + 1],
				(srv->nr_vms - i - 1) * sizeof(*srv->vms));
			srv->nr_vms--;
			break;
		}
	keep_ended(srv, st);
	pthread_mutex_unlock(&srv->lock);
}

void serve_set_state(struct serve_vm *vm, enum ferry_serve_vm_state state)
{
	__atomic_store_n(&vm->state, state, __ATOMIC_RELAXED);
}

/* ferry_serve_vms() copies it under the lock: write it under the lock. */
void serve_set_reason(struct ferry_serve *srv, struct serve_vm *vm,
		      const char *reason)
{
	pthread_mutex_lock(&srv->lock);
	snprintf(vm->stats.reason, sizeof(vm->stats.reason), "%s", reason);
	pthread_mutex_unlock(&srv->lock);
}

/* The VM is over: its threads joined, its figures kept, the rest freed. */
void serve_end_vm(struct ferry_serve *srv, struct serve_vm *vm,
		  const char *why)
{
	struct ferry_serve_vm_stats *st = malloc(sizeof(*st));

	serve_vm_stop_threads(vm);
	if (__atomic_load_n(&vm->recording, __ATOMIC_RELAXED) &&
	    serve_ws_save(vm, srv->opts.record_ws))
		serve_vm_note(vm, "%s", ferry_error_msg());
	last_news(srv, vm);
	serve_set_state(vm, FERRY_SERVE_VM_ENDED);
	if (st) {
		serve_vm_stats(vm, st);
		if (!st->reason[0])
			snprintf(st->reason, sizeof(st->reason), "%s", why);
		retire(srv, vm, st);
		serve_tell(srv, FERRY_SERVE_EV_ENDED, st, why);
		free(st);
	} else {
		retire(srv, vm, &vm->stats);
	}
	serve_vm_destroy(vm);
}

size_t serve_count_state(struct ferry_serve *srv,
			 enum ferry_serve_vm_state state)
{
	size_t n = 0;

	for (size_t i = 0; i < srv->nr_vms; i++)
		n += srv->vms[i]->state == state;
	return n;
}

void ferry_serve_stop(struct ferry_serve *srv)
{
	uint64_t one = 1;

	/* A write(): async-signal-safe. */
	if (write(srv->stop_fd, &one, sizeof(one)) < 0)
		errno = 0;
}

/* ---- create, figures, destroy -------------------------------------------- */

static int listening(int fd)
{
	int on = 0;
	socklen_t len = sizeof(on);

	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) || !on)
		return ferry_fail(-EINVAL, "the server's socket is not "
				  "listening");
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK))
		return ferry_fail(-errno, "fcntl: %s", strerror(errno));
	return 0;
}

static void set_defaults(struct ferry_serve *srv,
			 const struct ferry_serve_opts *opts)
{
	if (opts)
		srv->opts = *opts;
	if (srv->opts.handshake_timeout_ms <= 0)
		srv->opts.handshake_timeout_ms = DEFAULT_HANDSHAKE_MS;
	if (!srv->opts.max_vms)
		srv->opts.max_vms = DEFAULT_MAX_VMS;
}

int ferry_serve_create(int listen_fd, int mem_fd,
		       const struct ferry_serve_opts *opts,
		       struct ferry_serve **out)
{
	struct ferry_serve *srv = calloc(1, sizeof(*srv));
	int ret;

	if (!srv)
		return ferry_fail(-ENOMEM, "out of memory");
	set_defaults(srv, opts);
	srv->listen_fd = listen_fd;
	srv->stop_fd = evfd_open();
	srv->wake_fd = evfd_open();
	pthread_mutex_init(&srv->lock, NULL);
	for (size_t i = 0; i < SERVE_MAX_PENDING; i++)
		srv->conns[i].fd = -1;
	ret = srv->stop_fd < 0 || srv->wake_fd < 0 ?
	      ferry_fail(-EMFILE, "eventfd: %s", strerror(EMFILE)) :
	      listening(listen_fd);
	if (!ret)
		ret = serve_file_open(&srv->file, mem_fd, srv->opts.populate);
	if (ret) {
		ferry_serve_destroy(srv);
		return ret;
	}
	*out = srv;
	return 0;
}

size_t ferry_serve_vms(struct ferry_serve *srv,
		       struct ferry_serve_vm_stats *out, size_t max)
{
	size_t n = 0;

	pthread_mutex_lock(&srv->lock);
	for (size_t i = 0; i < srv->nr_ended; i++, n++)
		if (n < max)
			out[n] = srv->ended[(srv->ended_head + i) %
					    srv->ended_cap];
	for (size_t i = 0; i < srv->nr_vms; i++, n++)
		if (n < max)
			serve_vm_stats(srv->vms[i], &out[n]);
	pthread_mutex_unlock(&srv->lock);
	return n;
}

void ferry_serve_destroy(struct ferry_serve *srv)
{
	if (!srv)
		return;
	for (size_t i = 0; i < SERVE_MAX_PENDING; i++)
		if (srv->conns[i].fd >= 0)
			serve_conn_fini(&srv->conns[i]);
	for (size_t i = 0; i < srv->nr_vms; i++)
		serve_vm_destroy(srv->vms[i]);
	serve_file_close(&srv->file);
	if (srv->stop_fd >= 0)
		close(srv->stop_fd);
	if (srv->wake_fd >= 0)
		close(srv->wake_fd);
	pthread_mutex_destroy(&srv->lock);
	free(srv->vms);
	free(srv->ended);
	free(srv->pfd);
	free(srv->watch);
	free(srv);
}
