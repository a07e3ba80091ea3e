// SPDX-License-Identifier: MIT
/*
 * serve accept: connections, from accept() to a VM served or refused.
 * Each has until its deadline to send its whole list; a list that checks
 * out starts a VM; any other is refused with its reason, and a VMM that
 * sent a userfaultfd with it stays as a refused VM, its faults poisoned.
 * On the server's thread.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/clock.h"
#include "serve/serve.h"

/* ---- connections --------------------------------------------------------- */

/*
 * Is fd a userfaultfd a VMM may wait on (one that reads, initialised:
 * an uninitialised one polls as an error)?  Made non-blocking if so.
 */
static bool waits_on(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return fd >= 0 && !serve_uffd_check(fd) &&
	       !fcntl(fd, F_SETFL, O_NONBLOCK) && poll(&p, 1, 0) >= 0 &&
	       !(p.revents & (POLLERR | POLLNVAL));
}

/*
 * Room to keep one more refused VM: 0, or -ENOSPC after killing its VMM
 * (it would wait forever on a descriptor nobody reads).
 */
static int room_to_keep(struct ferry_serve *srv, struct serve_conn *c,
			struct ferry_serve_vm_stats *st)
{
	size_t len = strlen(st->reason);

	if (srv->nr_vms < SERVE_KEEP_FACTOR * (size_t)srv->opts.max_vms)
		return 0;
	if (c->pidfd >= 0)
		syscall(SYS_pidfd_send_signal, c->pidfd, SIGKILL, NULL, 0);
	snprintf(st->reason + len, sizeof(st->reason) - len, "; too many "
		 "VMs kept: the VMM was killed");
	return -ENOSPC;
}

/*
 * A refused connection.  One that brought a userfaultfd is a VMM about
 * to wait on it: it stays, and each fault it takes is poisoned.
 */
void serve_refuse(struct ferry_serve *srv, struct serve_conn *c,
		  const char *reason, const struct serve_list *l)
{
	struct ferry_serve_vm_stats st = { .id = c->id, .pid = c->pid,
					   .state = FERRY_SERVE_VM_REFUSED };
	struct serve_vm *vm = NULL;

	snprintf(st.reason, sizeof(st.reason), "%s", reason);
	if (waits_on(c->uffd) && !room_to_keep(srv, c, &st) &&
	    !serve_vm_create_refused(srv, c, c->id, reason, &vm) &&
	    serve_add_vm(srv, vm)) {
		serve_vm_destroy(vm);
		vm = NULL;
	}
	if (vm && l && serve_vm_passive(vm, l->early, l->nr_early) == -ESRCH)
		vm->ending = "the VMM is gone";
	if (vm)
		serve_tell_vm(srv, FERRY_SERVE_EV_REFUSED, vm, reason);
	else
		serve_tell(srv, FERRY_SERVE_EV_REFUSED, &st, st.reason);
	serve_conn_fini(c);
}

static void start_vm(struct ferry_serve *srv, struct serve_conn *c,
		     const struct serve_list *l)
{
	struct serve_vm *vm;
	int ret = serve_vm_create(srv, l, c, c->id, &vm);

	if (!ret)
		ret = serve_vm_take_early(vm, l);
	if (ret) {
		serve_refuse(srv, c, ferry_error_msg(), l);
		return;
	}
	serve_conn_fini(c);
	if (srv->opts.record_ws && !srv->recorder_taken) {
		vm->recording = srv->recorder_taken = true;
	}
	ret = serve_add_vm(srv, vm);
	if (!ret)
		ret = serve_vm_start(vm);
	if (ret) {	/* it cannot be served: it fails, loudly */
		serve_set_state(vm, FERRY_SERVE_VM_REFUSED);
		serve_set_reason(srv, vm, ferry_error_msg());
		serve_tell_vm(srv, FERRY_SERVE_EV_REFUSED, vm,
			      vm->stats.reason);
		if (serve_vm_passive(vm, l->early, l->nr_early) == -ESRCH)
			vm->ending = "the VMM is gone";
		return;
	}
	serve_tell_vm(srv, FERRY_SERVE_EV_STARTED, vm, l->note);
}

static int check_list(struct ferry_serve *srv, struct serve_conn *c,
		      struct serve_list *l)
{
	int ret = serve_list_check(l, &srv->file);

	if (!ret)
		ret = serve_probe(c->uffd, l, &srv->file);
	if (!ret && serve_count_state(srv, FERRY_SERVE_VM_SERVING) >=
		    srv->opts.max_vms)
		ret = ferry_fail(-EBUSY, "%u VMs are served already",
				 srv->opts.max_vms);
	return ret;
}

void serve_conn_ready(struct ferry_serve *srv, struct serve_conn *c)
{
	struct serve_list *l = malloc(sizeof(*l));
	int ret = l ? serve_conn_read(c, l) : -ENOMEM;

	if (ret == 0)
		goto out;
	if (ret > 0) {
		l->nr_early = 0;
		l->uffd_features = 0;
		l->note[0] = '\0';
	}
	if (ret < 0)
		serve_refuse(srv, c, l ? c->reason : "out of memory", NULL);
	else if (check_list(srv, c, l))
		serve_refuse(srv, c, ferry_error_msg(), l);
	else
		start_vm(srv, c, l);
out:
	free(l);
}

/* A slot for one more connection, or NULL while SERVE_MAX_PENDING wait. */
struct serve_conn *serve_free_conn(struct ferry_serve *srv)
{
	for (size_t i = 0; i < SERVE_MAX_PENDING; i++)
		if (srv->conns[i].fd < 0)
			return &srv->conns[i];
	return NULL;
}

/*
 * As many as there are free slots; the rest wait in the listen backlog
 * (their deadline starts when they are accepted), so a burst of VMMs is
 * taken in turn, not turned away.
 */
void serve_accept_all(struct ferry_serve *srv)
{
	struct serve_conn *c;

	while ((c = serve_free_conn(srv))) {
		int fd = accept4(srv->listen_fd, NULL, NULL,
				 SOCK_CLOEXEC | SOCK_NONBLOCK);
		struct ferry_serve_vm_stats st = { .id = 0 };

		if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
			continue;
		if (fd < 0)
			return;		/* EAGAIN; or EMFILE: later */
		if (serve_conn_init(c, fd, ++srv->next_id,
				    srv->opts.handshake_timeout_ms)) {
			close(fd);
			serve_tell(srv, FERRY_SERVE_EV_REFUSED, &st,
				   "out of memory");
		}
	}
}

void serve_conn_timeouts(struct ferry_serve *srv)
{
	uint64_t now = ferry_clock_now_ns();

	for (size_t i = 0; i < SERVE_MAX_PENDING; i++) {
		struct serve_conn *c = &srv->conns[i];
		char why[80];

		if (c->fd < 0 || now < c->deadline_ns)
			continue;
		snprintf(why, sizeof(why), "no whole list within %d ms",
			 srv->opts.handshake_timeout_ms);
		serve_refuse(srv, c, why, NULL);
	}
}

int serve_next_deadline_ms(const struct ferry_serve *srv)
{
	uint64_t now = ferry_clock_now_ns(), first = UINT64_MAX;

	for (size_t i = 0; i < SERVE_MAX_PENDING; i++)
		if (srv->conns[i].fd >= 0 && srv->conns[i].deadline_ns < first)
			first = srv->conns[i].deadline_ns;
	if (first == UINT64_MAX)
		return -1;
	return first <= now ? 0 : (int)((first - now) / 1000000ULL + 1);
}
