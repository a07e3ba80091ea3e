// SPDX-License-Identifier: MIT
/*
 * save_path: a snapshot saved to a path atomically.  The file is written
 * beside its target, unnamed (O_TMPFILE) where the filesystem allows, so
 * that a process killed halfway leaves nothing; it is made durable
 * (fsync), given a temporary name only to be renamed over the target,
 * and the directory is made durable too.  A save that fails leaves the
 * directory as it was: no partial file filling the disk, and a snapshot
 * already at the path untouched.
 */
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "snapshot/save_int.h"

static int split_path(const char *path, struct save_target *t)
{
	char a[PATH_MAX], b[PATH_MAX];

	if (strlen(path) >= PATH_MAX)
		return ferry_fail(-ENAMETOOLONG, "%s: path too long", path);
	strcpy(a, path);
	strcpy(b, path);
	snprintf(t->dir, sizeof(t->dir), "%s", dirname(a));
	if (snprintf(t->base, sizeof(t->base), "%s", basename(b)) >=
	    (int)sizeof(t->base) || !strcmp(t->base, "/") ||
	    !strcmp(t->base, ".") || !strcmp(t->base, ".."))
		return ferry_fail(-EINVAL, "%s: not a file name", path);
	snprintf(t->tmp, sizeof(t->tmp), ".%.*s.%d.tmp", NAME_MAX - 24,
		 t->base, (int)getpid());
	return 0;
}

/*
 * Unnamed if the filesystem has O_TMPFILE (Linux 3.11; not every
 * filesystem), else under the temporary name, created afresh.
 */
static int open_beside(struct save_target *t)
{
	t->dir_fd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (t->dir_fd < 0)
		return ferry_fail(-errno, "%s: %s", t->dir, strerror(errno));
	t->fd = openat(t->dir_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
	if (t->fd >= 0)
		return 0;
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
		return ferry_fail(-errno, "%s: %s", t->dir, strerror(errno));
	unlinkat(t->dir_fd, t->tmp, 0);	/* a leftover of a killed save */
	t->fd = openat(t->dir_fd, t->tmp, O_RDWR | O_CREAT | O_EXCL |
		       O_CLOEXEC, 0644);
	if (t->fd < 0)
		return ferry_fail(-errno, "%s/%s: %s", t->dir, t->tmp,
				  strerror(errno));
	t->named = true;
	return 0;
}

/* A name for the unnamed file: needed to rename it over the target. */
static int name_it(struct save_target *t)
{
	char proc[64];

	if (t->named)
		return 0;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", t->fd);
	unlinkat(t->dir_fd, t->tmp, 0);
	if (linkat(AT_FDCWD, proc, t->dir_fd, t->tmp, AT_SYMLINK_FOLLOW))
		return ferry_fail(-errno, "naming the snapshot in %s: %s",
				  t->dir, strerror(errno));
	t->named = true;
	return 0;
}

int save_target_publish(struct save_target *t)
{
	int ret = 0;

	if (fsync(t->fd))
		ret = ferry_fail(-errno, "fsync of the snapshot: %s",
				 strerror(errno));
	if (!ret)
		ret = name_it(t);
	if (!ret && renameat(t->dir_fd, t->tmp, t->dir_fd, t->base))
		ret = ferry_fail(-errno, "renaming the snapshot to %s/%s: %s",
				 t->dir, t->base, strerror(errno));
	if (!ret) {
		t->named = false;	/* it is the target now */
		if (fsync(t->dir_fd))
			ret = ferry_fail(-errno, "fsync of %s: %s", t->dir,
					 strerror(errno));
	}
	return ret;
}

int save_target_open(struct save_target *t, const char *path)
{
	int ret;

	*t = (struct save_target){ .dir_fd = -1, .fd = -1 };
	ret = split_path(path, t);
	return ret ? ret : open_beside(t);
}

void save_target_close(struct save_target *t)
{
	if (t->named)		/* not published: nothing of it stays */
		unlinkat(t->dir_fd, t->tmp, 0);
	if (t->fd >= 0)
		close(t->fd);
	if (t->dir_fd >= 0)
		close(t->dir_fd);
	t->fd = t->dir_fd = -1;
	t->named = false;
}
