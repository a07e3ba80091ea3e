// SPDX-License-Identifier: MIT
/*
 * serve server: the public calls, and the loop of the thread that runs
 * ferry_serve_run().  It polls, in one set:
 *
 *   stop_fd        ferry_serve_stop(): the first finishes every VM (its
 *                  pages all installed, its regions handed back), the
 *                  second lets run return at once
 *   wake_fd        a VM's thread has news: a page that could not be
 *                  served, a remark, the hand-off done, the VMM gone
 *   listen_fd      a VMM connects (until stopping)
 *   connections    a list coming in, with its deadline
 *   each VM        its VMM's pidfd (readable when it exits); for a VM
 *                  handed off or refused, its userfaultfd too
 *
 * Every change of the VM lists happens here, under `lock`, so that
 * ferry_serve_vms() may read them from any thread.
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

#define DEFAULT_HANDSHAKE_MS	5000
#define DEFAULT_MAX_VMS		256

enum watch_kind { W_STOP, W_WAKE, W_LISTEN, W_CONN, W_PIDFD, W_UFFD };

struct serve_watch {
	enum watch_kind kind;
	struct serve_conn *conn;
	struct serve_vm *vm;
};

/* ---- events -------------------------------------------------------------- */

static void tell(struct ferry_serve *srv, enum ferry_serve_event_kind kind,
		 const struct ferry_serve_vm_stats *st, const char *reason)
{
	struct ferry_serve_event ev = { kind, st, reason ? reason : "" };

	if (srv->opts.on_event)
		srv->opts.on_event(srv->opts.event_arg, &ev);
}

static void tell_vm(struct ferry_serve *srv, enum ferry_serve_event_kind kind,
		    struct serve_vm *vm, const char *reason)
{
	struct ferry_serve_vm_stats *st = malloc(sizeof(*st));

	if (!st)
		return;
	serve_vm_stats(vm, st);
	tell(srv, kind, st, reason);
	free(st);
}

/* ---- the VM lists -------------------------------------------------------- */

static int add_vm(struct ferry_serve *srv, struct serve_vm *vm)
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

/* Out of the live list, its figures into the ended one. */
static void retire(struct ferry_serve *srv, struct serve_vm *vm,
		   const struct ferry_serve_vm_stats *st)
{
	pthread_mutex_lock(&srv->lock);
	for (size_t i = 0; i < srv->nr_vms; i++)
		if (srv->vms[i] == vm)
			srv->vms[i] = srv->vms[--srv->nr_vms];
	if (srv->nr_ended == srv->ended_cap) {
		size_t cap = srv->ended_cap ? srv->ended_cap * 2 : 16;
		struct ferry_serve_vm_stats *e = realloc(srv->ended,
							 cap * sizeof(*e));

		if (e) {
			srv->ended = e;
			srv->ended_cap = cap;
		}
	}
	if (srv->nr_ended < srv->ended_cap)
		srv->ended[srv->nr_ended++] = *st;
	pthread_mutex_unlock(&srv->lock);
}

static void set_state(struct serve_vm *vm, enum ferry_serve_vm_state state)
{
	__atomic_store_n(&vm->state, state, __ATOMIC_RELAXED);
}

/* The VM is over: its threads joined, its figures kept, the rest freed. */
static void end_vm(struct ferry_serve *srv, struct serve_vm *vm,
		   const char *why)
{
	struct ferry_serve_vm_stats *st = malloc(sizeof(*st));

	serve_vm_stop_threads(vm);
	if (__atomic_load_n(&vm->recording, __ATOMIC_RELAXED) &&
	    serve_ws_save(vm, srv->opts.record_ws))
		tell_vm(srv, FERRY_SERVE_EV_NOTE, vm, ferry_error_msg());
	set_state(vm, FERRY_SERVE_VM_ENDED);
	if (st) {
		serve_vm_stats(vm, st);
		if (!st->reason[0])
			snprintf(st->reason, sizeof(st->reason), "%s", why);
		retire(srv, vm, st);
		tell(srv, FERRY_SERVE_EV_ENDED, st, why);
		free(st);
	} else {
		retire(srv, vm, &vm->stats);
	}
	serve_vm_destroy(vm);
}

static size_t count_state(struct ferry_serve *srv,
			  enum ferry_serve_vm_state state)
{
	size_t n = 0;

	for (size_t i = 0; i < srv->nr_vms; i++)
		n += srv->vms[i]->state == state;
	return n;
}

/* ---- connections --------------------------------------------------------- */

/*
 * A refused connection.  One that brought a userfaultfd is a VMM about
 * to wait on it: it stays, and each fault it takes is poisoned.
 */
static void refuse(struct ferry_serve *srv, struct serve_conn *c,
		   const char *reason, const struct serve_list *l)
{
	struct ferry_serve_vm_stats st = { .id = c->id, .pid = c->pid,
					   .state = FERRY_SERVE_VM_REFUSED };
	struct serve_vm *vm = NULL;
	uint64_t features;

	snprintf(st.reason, sizeof(st.reason), "%s", reason);
	if (c->uffd >= 0 && !serve_uffd_features(c->uffd, &features) &&
	    fcntl(c->uffd, F_SETFL, O_NONBLOCK) == 0 &&
	    !serve_vm_create_refused(srv, c, c->id, reason, &vm) &&
	    add_vm(srv, vm)) {
		serve_vm_destroy(vm);
		vm = NULL;
	}
	if (vm && l && serve_vm_passive(vm, l->early, l->nr_early) == -ESRCH)
		vm->ending = "the VMM is gone";
	if (vm)
		tell_vm(srv, FERRY_SERVE_EV_REFUSED, vm, reason);
	else
		tell(srv, FERRY_SERVE_EV_REFUSED, &st, reason);
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
		refuse(srv, c, ferry_error_msg(), l);
		return;
	}
	serve_conn_fini(c);
	if (srv->opts.record_ws && !srv->recorder_taken) {
		vm->recording = srv->recorder_taken = true;
	}
	ret = add_vm(srv, vm);
	if (!ret)
		ret = serve_vm_start(vm);
	if (ret) {	/* it cannot be served: it fails, loudly */
		set_state(vm, FERRY_SERVE_VM_REFUSED);
		snprintf(vm->stats.reason, sizeof(vm->stats.reason),
			 "%s", ferry_error_msg());
		tell_vm(srv, FERRY_SERVE_EV_REFUSED, vm, vm->stats.reason);
		if (serve_vm_passive(vm, l->early, l->nr_early) == -ESRCH)
			vm->ending = "the VMM is gone";
		return;
	}
	tell_vm(srv, FERRY_SERVE_EV_STARTED, vm, l->note);
}

static int check_list(struct ferry_serve *srv, struct serve_conn *c,
		      struct serve_list *l)
{
	int ret = serve_list_check(l, &srv->file);

	if (!ret)
		ret = serve_probe(c->uffd, l, &srv->file);
	if (!ret && count_state(srv, FERRY_SERVE_VM_SERVING) >=
		    srv->opts.max_vms)
		ret = ferry_fail(-EBUSY, "%u VMs are served already",
				 srv->opts.max_vms);
	return ret;
}

static void conn_ready(struct ferry_serve *srv, struct serve_conn *c)
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
		refuse(srv, c, l ? c->reason : "out of memory", NULL);
	else if (check_list(srv, c, l))
		refuse(srv, c, ferry_error_msg(), l);
	else
		start_vm(srv, c, l);
out:
	free(l);
}

static void accept_all(struct ferry_serve *srv)
{
	for (;;) {
		int fd = accept4(srv->listen_fd, NULL, NULL,
				 SOCK_CLOEXEC | SOCK_NONBLOCK);
		struct serve_conn *c = NULL;

		if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
			continue;
		if (fd < 0)
			return;		/* EAGAIN; or EMFILE: later */
		for (size_t i = 0; i < SERVE_MAX_PENDING && !c; i++)
			c = srv->conns[i].fd < 0 ? &srv->conns[i] : NULL;
		if (!c || serve_conn_init(c, fd, ++srv->next_id,
					  srv->opts.handshake_timeout_ms)) {
			struct ferry_serve_vm_stats st = { .id = 0 };

			close(fd);
			tell(srv, FERRY_SERVE_EV_REFUSED, &st, c ?
			     "out of memory" : "too many connections still "
			     "sending their lists");
		}
	}
}

static void conn_timeouts(struct ferry_serve *srv)
{
	uint64_t now = ferry_clock_now_ns();

	for (size_t i = 0; i < SERVE_MAX_PENDING; i++) {
		struct serve_conn *c = &srv->conns[i];
		char why[80];

		if (c->fd < 0 || now < c->deadline_ns)
			continue;
		snprintf(why, sizeof(why), "no whole list within %d ms",
			 srv->opts.handshake_timeout_ms);
		refuse(srv, c, why, NULL);
	}
}

static int next_deadline_ms(const struct ferry_serve *srv)
{
	uint64_t now = ferry_clock_now_ns(), first = UINT64_MAX;

	for (size_t i = 0; i < SERVE_MAX_PENDING; i++)
		if (srv->conns[i].fd >= 0 && srv->conns[i].deadline_ns < first)
			first = srv->conns[i].deadline_ns;
	if (first == UINT64_MAX)
		return -1;
	return first <= now ? 0 : (int)((first - now) / 1000000ULL + 1);
}

/* ---- news from the VMs' threads ------------------------------------------ */

struct news {
	char failure[256], note[256];
	bool failure_new, note_new, handed_off, fill_over, service_ended;
};

static void take_news(struct serve_vm *vm, struct news *n)
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

/* 1 when the VM ended. */
static int vm_news(struct ferry_serve *srv, struct serve_vm *vm)
{
	struct news n;

	take_news(vm, &n);
	if (n.failure_new) {
		snprintf(vm->stats.reason, sizeof(vm->stats.reason), "%s",
			 n.failure);
		tell_vm(srv, FERRY_SERVE_EV_FAILED, vm, n.failure);
	}
	if (n.note_new)
		tell_vm(srv, FERRY_SERVE_EV_NOTE, vm, n.note);
	if (n.service_ended) {
		end_vm(srv, vm, "the VMM is gone");
		return 1;
	}
	if (n.handed_off && vm->state == FERRY_SERVE_VM_SERVING) {
		serve_vm_stop_threads(vm);
		set_state(vm, FERRY_SERVE_VM_HANDED_OFF);
		tell_vm(srv, FERRY_SERVE_EV_HANDED_OFF, vm, "every page in "
			"place; its regions are the kernel's again");
	} else if (n.fill_over && srv->stops &&
		   vm->state == FERRY_SERVE_VM_SERVING) {
		end_vm(srv, vm, "the server stopped and the VM could not be "
		       "handed off: the VMM's faults will wait");
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
	if (!srv->stops)
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
			refuse(srv, &srv->conns[i], "the server stopped",
			       NULL);
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
			end_vm(srv, vm, "the server stopped before every page "
			       "was in place: the VMM's faults will wait");
		} else if (vm->state == FERRY_SERVE_VM_HANDED_OFF) {
			serve_vm_passive(vm, NULL, 0);
			end_vm(srv, vm, "the server stopped; the VM runs on "
			       "without it");
		} else {
			if (vm->pidfd >= 0)
				syscall(SYS_pidfd_send_signal, vm->pidfd,
					SIGKILL, NULL, 0);
			end_vm(srv, vm, "the server stopped; its list was "
			       "refused, the VMM was killed");
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
			accept_all(srv);
		else if (w->kind == W_CONN && rev && w->conn->fd >= 0)
			conn_ready(srv, w->conn);
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
			end_vm(srv, vm, vm->ending);
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
		if (poll(srv->pfd, n, next_deadline_ms(srv)) < 0) {
			if (errno == EINTR)
				continue;
			return ferry_fail(-errno, "poll: %s", strerror(errno));
		}
		dispatch(srv, n);
		conn_timeouts(srv);
		all_news(srv);
		reap(srv);
		if (srv->stops && !count_state(srv, FERRY_SERVE_VM_SERVING))
			break;
	}
	end_all(srv);
	return 0;
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
			out[n] = srv->ended[i];
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
