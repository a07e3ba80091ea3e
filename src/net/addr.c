// SPDX-License-Identifier: MIT
/*
 * net addresses: parse "HOST:PORT", "[IPv6]:PORT" and "unix:PATH", resolve
 * host names (getaddrinfo), and format socket addresses for reasons.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "base/error.h"
#include "net/addr.h"

static int addr_unix(const char *path, struct net_addr *a)
{
	struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
	size_t len = strlen(path);

	if (!len || len >= sizeof(un->sun_path))
		return ferry_fail(-EINVAL, "unix socket path '%s': 1 to %zu "
				  "bytes", path, sizeof(un->sun_path) - 1);
	memset(a, 0, sizeof(*a));
	un->sun_family = AF_UNIX;
	memcpy(un->sun_path, path, len);
	if (path[0] == '@')
		un->sun_path[0] = '\0';	/* the abstract namespace */
	a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
			     (path[0] != '@'));
	snprintf(a->text, sizeof(a->text), "unix:%s", path);
	return 0;
}

static int split_port(const char *spec, const char *colon, bool passive)
{
	char *end;
	long port;

	if (!colon || !colon[1])
		return ferry_fail(-EINVAL, "address '%s': want HOST:PORT, "
				  "[IPv6]:PORT or unix:PATH", spec);
	port = strtol(colon + 1, &end, 10);
	if (*end || port < 0 || port > 65535 || (!port && !passive))
		return ferry_fail(-EINVAL, "address '%s': bad port '%s'", spec,
				  colon + 1);
	return 0;
}

/* Where the host ends and its colon is, in "host:port" or "[v6]:port". */
static int find_colon(const char *spec, const char **start,
		      const char **end, const char **colon)
{
	*start = spec;
	if (spec[0] == '[') {
		*start = spec + 1;
		*end = strchr(*start, ']');
		*colon = *end && (*end)[1] == ':' ? *end + 1 : NULL;
		return 0;
	}
	*end = *colon = strrchr(spec, ':');
	if (*colon && memchr(spec, ':', (size_t)(*colon - spec)))
		return ferry_fail(-EINVAL, "address '%s': an IPv6 address goes "
				  "in brackets, [::1]:4000", spec);
	return 0;
}

/* "host:port" or "[v6]:port" into host and the text after the colon. */
static int split_host(const char *spec, char *host, size_t len,
		      const char **port, bool passive)
{
	const char *start, *end, *colon;

	if (find_colon(spec, &start, &end, &colon) ||
	    split_port(spec, colon, passive))
		return -EINVAL;
	if ((size_t)(end - start) >= len || (end == start && !passive))
		return ferry_fail(-EINVAL, "address '%s': bad host", spec);
	memcpy(host, start, (size_t)(end - start));
	host[end - start] = '\0';
	*port = colon + 1;
	return 0;
}

void net_addr_format(struct net_addr *a)
{
	char host[INET6_ADDRSTRLEN] = "?";
	const struct sockaddr_in6 *in6 = (const void *)&a->ss;
	const struct sockaddr_in *in4 = (const void *)&a->ss;

	if (a->ss.ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(a->text, sizeof(a->text), "[%s]:%u", host,
			 ntohs(in6->sin6_port));
	} else if (a->ss.ss_family == AF_INET) {
		inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
		snprintf(a->text, sizeof(a->text), "%s:%u", host,
			 ntohs(in4->sin_port));
	}
}

static int gai_fail(const char *spec, int err)
{
	return ferry_fail(err == EAI_NONAME ? -ENOENT : -EINVAL,
			  "address '%s': %s", spec, gai_strerror(err));
}

/* The IPv6 wildcard before the IPv4 one: it is made dual-stack. */
static void v6_first(struct net_addr *a, int n)
{
	for (int i = 1; i < n; i++) {
		if (a[i].ss.ss_family == AF_INET6 &&
		    a[0].ss.ss_family != AF_INET6) {
			struct net_addr t = a[0];

			a[0] = a[i];
			a[i] = t;
		}
	}
}

/*
 * Up to NET_MAX_CANDIDATES addresses for spec.  Listening on an empty host
 * takes the IPv6 wildcard first: it is made dual-stack.
 */
static int addr_lookup(const char *spec, const char *host, const char *port,
		       bool passive, struct net_addr *out)
{
	struct addrinfo hints = {
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0),
	}, *res, *ai;
	int n = 0, err = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);

	if (err)
		return gai_fail(spec, err);
	for (ai = res; ai && n < NET_MAX_CANDIDATES; ai = ai->ai_next) {
		memcpy(&out[n].ss, ai->ai_addr, ai->ai_addrlen);
		out[n].len = ai->ai_addrlen;
		net_addr_format(&out[n++]);
	}
	freeaddrinfo(res);
	return n ? n : ferry_fail(-ENOENT, "address '%s': nothing", spec);
}

int net_addr_resolve(const char *spec, bool passive, struct net_addr *out)
{
	const char *port = NULL;
	char host[256];
	int n;

	if (!strncmp(spec, "unix:", 5)) {
		n = addr_unix(spec + 5, out);
		return n ? n : 1;
	}
	if (split_host(spec, host, sizeof(host), &port, passive))
		return -EINVAL;
	n = addr_lookup(spec, host, port, passive, out);
	if (n > 0 && !host[0])
		v6_first(out, n);
	return n;
}

int net_addr_port(const struct net_addr *a)
{
	const struct sockaddr_in *in4 = (const void *)&a->ss;
	const struct sockaddr_in6 *in6 = (const void *)&a->ss;

	if (a->ss.ss_family == AF_INET)
		return ntohs(in4->sin_port);
	if (a->ss.ss_family == AF_INET6)
		return ntohs(in6->sin6_port);
	return 0;
}

bool net_addr_is_local(const struct net_addr *a)
{
	const struct sockaddr_in *in4 = (const void *)&a->ss;
	const struct sockaddr_in6 *in6 = (const void *)&a->ss;
	const uint8_t *b = in6->sin6_addr.s6_addr;

	if (a->ss.ss_family == AF_UNIX)
		return true;
	if (a->ss.ss_family == AF_INET)
		return (ntohl(in4->sin_addr.s_addr) >> 24) == 127;
	if (a->ss.ss_family != AF_INET6)
		return false;
	if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
		return true;
	return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && b[12] == 127;
}
