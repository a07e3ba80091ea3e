// SPDX-License-Identifier: MIT
/*
 * net listen: the listening socket of ferry_net_accept() (accept.c): bind
 * to the first address that takes it, name it for peers, close it.
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "base/error.h"
#include "base/sys.h"
#include "net/listener.h"

/*
 * A unix socket path in use: if nothing answers there, it is a socket a
 * dead listener left behind; remove it and bind again.
 */
static int unix_stale(const struct net_addr *a)
{
	const struct sockaddr_un *un = (const void *)&a->ss;
	struct stat st;
	int fd, ret;

	if (!un->sun_path[0] || stat(un->sun_path, &st) ||
	    !S_ISSOCK(st.st_mode))
		return -EADDRINUSE;
	fd = sys_ret(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
	if (fd < 0)
		return fd;
	ret = connect(fd, (const struct sockaddr *)&a->ss, a->len) ?
	      -errno : 0;
	close(fd);
	if (ret != -ECONNREFUSED)
		return -EADDRINUSE;
	return sys_ret(unlink(un->sun_path));
}

static int bind_addr(int fd, const struct net_addr *a)
{
	int ret = sys_ret(bind(fd, (const struct sockaddr *)&a->ss, a->len));

	if (ret == -EADDRINUSE && a->ss.ss_family == AF_UNIX &&
	    !unix_stale(a))
		ret = sys_ret(bind(fd, (const struct sockaddr *)&a->ss,
				   a->len));
	return ret;
}

static int listen_socket(const struct net_addr *a)
{
	int fd = sys_ret(socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
				SOCK_CLOEXEC, 0));
	int ret = 0;

	if (fd < 0)
		return fd;
	if (a->ss.ss_family != AF_UNIX)
		ret = net_set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
	if (!ret && a->ss.ss_family == AF_INET6)
		ret = net_set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0);
	if (!ret)
		ret = bind_addr(fd, a);
	if (!ret)
		ret = sys_ret(listen(fd, 64));
	if (!ret)
		return fd;
	close(fd);
	return ret;
}

/* The bound address, for port 0. */
static void listener_name(struct ferry_listener *l)
{
	socklen_t len = sizeof(l->addr.ss);
	const struct sockaddr_un *un = (const void *)&l->addr.ss;

	if (l->addr.ss.ss_family == AF_UNIX) {
		if (un->sun_path[0])
			snprintf(l->unix_path, sizeof(l->unix_path), "%s",
				 un->sun_path);
		return;
	}
	if (!getsockname(l->fd, (struct sockaddr *)&l->addr.ss, &len))
		net_addr_format(&l->addr);
}

/* The first candidate address that can be listened on. */
static int listen_first(struct ferry_listener *l, struct net_addr *cand,
			int nr)
{
	l->fd = -ENOENT;
	for (int i = 0; i < nr && l->fd < 0; i++) {
		l->addr = cand[i];
		l->fd = listen_socket(&l->addr);
	}
	if (l->fd >= 0)
		return 0;
	return ferry_fail(l->fd, "listen on %s: %s", l->addr.text,
			  strerror(-l->fd));
}

/* Plain TCP only on loopback, unless the operator said otherwise. */
static int listener_setup(struct ferry_listener *l,
			  const struct ferry_net_opts *opts,
			  const struct net_addr *cand, int nr)
{
	bool local = true;
	int ret;

	l->fd = -1;
	l->stop_fd = -1;
	l->opts = net_opts_or_default(opts);
	if (l->opts.hello_timeout_ms <= 0)
		l->opts.hello_timeout_ms = NET_HELLO_TIMEOUT_MS;
	for (int i = 0; i < nr; i++)
		local = local && net_addr_is_local(&cand[i]);
	ret = net_tls_load(&l->opts, &l->tls);
	if (!ret)
		ret = net_tls_policy(l->tls, &l->opts, "listening on",
				     cand[0].text, local);
	return ret;
}

int ferry_net_listener_open(const char *addr,
			    const struct ferry_net_opts *opts,
			    struct ferry_listener **out)
{
	struct net_addr cand[NET_MAX_CANDIDATES];
	struct ferry_listener *l;
	int nr = net_addr_resolve(addr, true, cand), ret;

	if (nr < 0)
		return nr;
	l = calloc(1, sizeof(*l));
	if (!l)
		return ferry_fail(-ENOMEM, "listener: out of memory");
	ret = listener_setup(l, opts, cand, nr);
	if (!ret)
		ret = listen_first(l, cand, nr);
	if (ret) {
		net_tls_put(l->tls);
		free(l);
		return ret;
	}
	listener_name(l);
	*out = l;
	return 0;
}

const char *ferry_net_listener_addr(const struct ferry_listener *l)
{
	return l->addr.text;
}

int ferry_net_listener_port(const struct ferry_listener *l)
{
	return net_addr_port(&l->addr);
}

void ferry_net_listener_close(struct ferry_listener *l)
{
	if (!l)
		return;
	net_listener_busy_stop(l);
	for (unsigned int i = 0; i < l->nr_pending; i++)
		net_conn_close(&l->pending[i].conn);
	for (unsigned int i = 0; i < l->nr_groups; i++)
		net_group_close(&l->groups[i]);
	close(l->fd);
	if (l->unix_path[0])
		unlink(l->unix_path);
	net_tls_put(l->tls);
	free(l);
}
