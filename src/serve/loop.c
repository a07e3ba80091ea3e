// SPDX-License-Identifier: MIT
/*
 * serve loop: the thread that runs ferry_serve_run().  It polls, in one
 * set:
 *
 *   stop_fd        ferry_serve_stop(): the first finishes every VM (its
 *                  pages all installed, its regions handed back), the
 *                  second lets run return at once
 *   wake_fd        a VM's thread has news: a page that could not be
 *                  served, a remark, the hand-off done, the VMM gone
 *   listen_fd      a VMM connects (until stopping)
 *   connections    a list coming in, with its deadline (accept.c)
 *   each VM        its VMM's pidfd (readable when it exits); for a VM
 *                  handed off or refused, its userfaultfd too
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/sys.h"
#include "serve/serve.h"

enum watch_kind { W_STOP, W_WAKE, W_LISTEN, W_CONN, W_PIDFD, W_UFFD };

struct serve_watch {
	enum watch_kind kind;
	struct serve_conn *conn;
	struct serve_vm *vm;
};

/* 1 when the VM ended. */
static int vm_news(struct ferry_serve *srv, struct serve_vm *vm)
{
	struct serve_news n;

	serve_take_news(vm, &n);
	serve_tell_news(srv, vm, &n);
	if (n.service_ended) {
		serve_end_vm(srv, vm, "the VMM is gone");
		return 1;
	}
	if (n.handed_off && vm->state == FERRY_SERVE_VM_SERVING) {
		serve_vm_stop_threads(vm);
		serve_vm_wake_pending(vm);
		serve_set_state(vm, FERRY_SERVE_VM_HANDED_OFF);
		serve_tell_vm(srv, FERRY_SERVE_EV_HANDED_OFF, vm, "every page "
			      "in place; its regions are the kernel's again");
	} else if (n.fill_over && srv->stops &&
		   vm->state == FERRY_SERVE_VM_SERVING) {
		serve_end_vm(srv, vm, "the server stopped and the VM could "
			     "not be handed off: the VMM's faults will wait");
		return 1;
	}
	return 0;
}

static void all_news(struct ferry_serve *srv)
{
	for (size_t i = 0; i < srv->nr_vms;)
		if (!vm_news(srv, srv->vms[i]))
			i++;
}

/* ---- the poll set -------------------------------------------------------- */

static int watch_room(struct ferry_serve *srv, size_t need)
{
	struct pollfd *pfd;
	struct serve_watch *w;
	size_t cap = srv->watch_cap ? srv->watch_cap : 64;

	if (need <= srv->watch_cap)
		return 0;
	while (cap < need)
		cap *= 2;
	pfd = realloc(srv->pfd, cap * sizeof(*pfd));
	if (pfd)
		srv->pfd = pfd;
	w = pfd ? realloc(srv->watch, cap * sizeof(*w)) : NULL;
	if (!w)
		return ferry_fail(-ENOMEM, "out of memory");
	srv->watch = w;
	srv->watch_cap = cap;
	return 0;
}

static void watch(struct ferry_serve *srv, size_t *n, int fd,
		  enum watch_kind kind, struct serve_conn *c,
		  struct serve_vm *vm)
{
	srv->pfd[*n] = (struct pollfd){ .fd = fd, .events = POLLIN };
	srv->watch[*n] = (struct serve_watch){ kind, c, vm };
	(*n)++;
}

static int build(struct ferry_serve *srv, size_t *n)
{
	int ret = watch_room(srv, 3 + SERVE_MAX_PENDING + 2 * srv->nr_vms);

	*n = 0;
	if (ret)
		return ret;
	watch(srv, n, srv->stop_fd, W_STOP, NULL, NULL);
	watch(srv, n, srv->wake_fd, W_WAKE, NULL, NULL);
	if (!srv->stops && serve_free_conn(srv))
		watch(srv, n, srv->listen_fd, W_LISTEN, NULL, NULL);
	for (size_t i = 0; i < SERVE_MAX_PENDING; i++)
		if (srv->conns[i].fd >= 0)
			watch(srv, n, srv->conns[i].fd, W_CONN,
			      &srv->conns[i], NULL);
	for (size_t i = 0; i < srv->nr_vms; i++) {
		struct serve_vm *vm = srv->vms[i];

		if (vm->pidfd >= 0)
			watch(srv, n, vm->pidfd, W_PIDFD, NULL, vm);
		if (vm->state != FERRY_SERVE_VM_SERVING)
			watch(srv, n, vm->uffd.fd, W_UFFD, NULL, vm);
	}
	return 0;
}

/* ---- stopping ------------------------------------------------------------ */

static void begin_stop(struct ferry_serve *srv)
{
	evfd_drain(srv->stop_fd);
	if (srv->stops++)
		return;
	for (size_t i = 0; i < SERVE_MAX_PENDING; i++)
		if (srv->conns[i].fd >= 0)
			serve_refuse(srv, &srv->conns[i],
				     "the server stopped", NULL);
	for (size_t i = 0; i < srv->nr_vms; i++)
		if (srv->vms[i]->state == FERRY_SERVE_VM_SERVING)
			serve_vm_finish(srv->vms[i]);
}

/* Every VM let go: the state it is in says how. */
static void end_all(struct ferry_serve *srv)
{
	while (srv->nr_vms) {
		struct serve_vm *vm = srv->vms[srv->nr_vms - 1];

		if (vm->state == FERRY_SERVE_VM_SERVING) {
			serve_end_vm(srv, vm, "the server stopped before "
				     "every page was in place: the VMM's "
				     "faults will wait");
		} else if (vm->state == FERRY_SERVE_VM_HANDED_OFF) {
			serve_vm_passive(vm, NULL, 0);
			serve_end_vm(srv, vm, "the server stopped; the VM "
				     "runs on without it");
		} else {
			if (vm->pidfd >= 0)
				syscall(SYS_pidfd_send_signal, vm->pidfd,
					SIGKILL, NULL, 0);
			serve_end_vm(srv, vm, "the server stopped; its list "
				     "was refused, the VMM was killed");
		}
	}
}

/* ---- the loop ------------------------------------------------------------ */

static void vm_ready(const struct serve_watch *w, short revents)
{
	if (!revents)
		return;
	if (w->kind == W_PIDFD)
		w->vm->ending = "the VMM exited";
	else if (revents & (POLLERR | POLLNVAL))
		w->vm->ending = "its userfaultfd cannot be read";
	else if (serve_vm_passive(w->vm, NULL, 0) == -ESRCH)
		w->vm->ending = "the VMM is gone";
}

static void dispatch(struct ferry_serve *srv, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct serve_watch *w = &srv->watch[i];
		short rev = srv->pfd[i].revents;

		if (w->kind == W_STOP && rev)
			begin_stop(srv);
		else if (w->kind == W_WAKE && rev)
			evfd_drain(srv->wake_fd);
		else if (w->kind == W_LISTEN && rev)
			serve_accept_all(srv);
		else if (w->kind == W_CONN && rev && w->conn->fd >= 0)
			serve_conn_ready(srv, w->conn);
		else if (w->kind == W_PIDFD || w->kind == W_UFFD)
			vm_ready(w, rev);
	}
}

/* VMs whose end was seen this round. */
static void reap(struct ferry_serve *srv)
{
	for (size_t i = 0; i < srv->nr_vms;) {
		struct serve_vm *vm = srv->vms[i];

		if (vm->ending)
			serve_end_vm(srv, vm, vm->ending);
		else
			i++;
	}
}

int ferry_serve_run(struct ferry_serve *srv)
{
	size_t n;
	int ret;

	while (srv->stops < 2) {
		if ((ret = build(srv, &n)))
			return ret;
		if (poll(srv->pfd, n, serve_next_deadline_ms(srv)) < 0) {
			if (errno == EINTR)
				continue;
			return ferry_fail(-errno, "poll: %s", strerror(errno));
		}
		dispatch(srv, n);
		serve_conn_timeouts(srv);
		all_news(srv);
		reap(srv);
		if (srv->stops &&
		    !serve_count_state(srv, FERRY_SERVE_VM_SERVING))
			break;
	}
	end_all(srv);
	return 0;
}
