// SPDX-License-Identifier: MIT
/*
 * serve handover: the two ends of the protocol's socket.  The server's
 * listening socket, and the VMM's side for a VMM written against libferry:
 * connect, then the list (as Firecracker writes it today: page_size and
 * its older name page_size_kib, both in bytes) and the userfaultfd in one
 * sendmsg().
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "base/error.h"
#include "base/io.h"
#include "base/sys.h"
#include "serve/serve.h"

static int unix_addr(const char *path, struct sockaddr_un *un)
{
	memset(un, 0, sizeof(*un));
	un->sun_family = AF_UNIX;
	if (!path[0] || strlen(path) >= sizeof(un->sun_path))
		return ferry_fail(-ENAMETOOLONG, "socket path '%s': empty or "
				  "longer than %zu bytes", path,
				  sizeof(un->sun_path) - 1);
	memcpy(un->sun_path, path, strlen(path));
	return 0;
}

/* Connected to path: the socket, or -errno (no reason recorded). */
static int connect_to(const struct sockaddr_un *un)
{
	int fd = sys_ret(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));

	if (fd < 0)
		return fd;
	if (connect(fd, (const struct sockaddr *)un, sizeof(*un))) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

/* A socket file nobody listens on any more is a dead server's. */
static int remove_stale(const struct sockaddr_un *un)
{
	struct stat st;
	int fd;

	if (stat(un->sun_path, &st) || !S_ISSOCK(st.st_mode))
		return -EADDRINUSE;
	fd = connect_to(un);
	if (fd >= 0) {
		close(fd);
		return -EADDRINUSE;
	}
	return fd == -ECONNREFUSED ? sys_ret(unlink(un->sun_path)) :
				     -EADDRINUSE;
}

int ferry_serve_listen(const char *path)
{
	struct sockaddr_un un;
	int fd, ret = unix_addr(path, &un);

	if (ret)
		return ret;
	fd = sys_ret(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC |
			    SOCK_NONBLOCK, 0));
	if (fd < 0)
		return ferry_fail(fd, "socket: %s", strerror(-fd));
	ret = sys_ret(bind(fd, (struct sockaddr *)&un, sizeof(un)));
	if (ret == -EADDRINUSE && !remove_stale(&un))
		ret = sys_ret(bind(fd, (struct sockaddr *)&un, sizeof(un)));
	/* Whoever connects is served the memory file: its owner only. */
	if (!ret)
		ret = sys_ret(chmod(path, 0600));
	if (!ret)
		ret = sys_ret(listen(fd, 128));
	if (ret) {
		close(fd);
		return ferry_fail(ret, "listen on %s: %s", path,
				  strerror(-ret));
	}
	return fd;
}

/* The list as JSON: bytes written, or -E2BIG. */
static int write_list(char *buf, size_t len,
		      const struct ferry_serve_region *r, unsigned int nr)
{
	size_t off = 0;

	for (unsigned int i = 0; i < nr && off < len; i++)
		off += (size_t)snprintf(buf + off, len - off,
			"%s{\"base_host_virt_addr\":%" PRIu64 ",\"size\":%"
			PRIu64 ",\"offset\":%" PRIu64 ",\"page_size\":%"
			PRIu64 ",\"page_size_kib\":%" PRIu64 "}",
			i ? "," : "[", r[i].base_host_virt_addr, r[i].size,
			r[i].offset, r[i].page_size, r[i].page_size);
	if (off < len)
		off += (size_t)snprintf(buf + off, len - off, "]");
	return off < len ? (int)off : -E2BIG;
}

static int send_list(int fd, int uffd, const char *json, size_t len)
{
	char control[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { (void *)json, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = control,
			     .msg_controllen = sizeof(control) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	ssize_t n;

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &uffd, sizeof(uffd));
	do {
		n = sendmsg(fd, &mh, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	/* The descriptor went with the first bytes; the rest, plainly. */
	return (size_t)n == len ? 0 : io_write_full(fd, json + n,
						    len - (size_t)n);
}

int ferry_serve_handover(const char *path, int uffd,
			 const struct ferry_serve_region *regions,
			 unsigned int nr)
{
	char json[FERRY_SERVE_MAX_JSON];
	struct sockaddr_un un;
	int len, fd, ret = unix_addr(path, &un);

	if (ret)
		return ret;
	if (!nr || nr > FERRY_SERVE_MAX_REGIONS)
		return ferry_fail(-EINVAL, "%u regions (1 to %d)", nr,
				  FERRY_SERVE_MAX_REGIONS);
	len = write_list(json, sizeof(json), regions, nr);
	if (len < 0)
		return ferry_fail(len, "the region list is too long");
	fd = connect_to(&un);
	if (fd < 0)
		return ferry_fail(fd, "connect to %s: %s", path, strerror(-fd));
	ret = send_list(fd, uffd, json, (size_t)len);
	if (ret) {
		close(fd);
		return ferry_fail(ret, "sending the list to %s: %s", path,
				  strerror(-ret));
	}
	return fd;
}
