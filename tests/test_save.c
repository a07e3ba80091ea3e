// SPDX-License-Identifier: MIT
/*
 * Atomic snapshot saves: a save to a full filesystem (a small tmpfs this
 * test mounts, and unmounts after) fails and leaves nothing behind, and
 * the snapshot already at the path is untouched; a save that succeeds
 * replaces it whole.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include "ferry-vm/guest_vm.h"
#include "ferry/snapshot.h"
#include "test.h"

/* A VM whose every cell was written: as large a snapshot as its memory. */
static int full_vm(enum ferry_backing backing, uint64_t mem,
		   struct ferry_guest_vm **out)
{
	struct ferry_guest_config cfg;
	struct ferry_guest_stats st;
	int ret;

	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = 1;
	ferry_guest_config_set_workload(&cfg, "seqdirty");
	ret = ferry_guest_vm_create(&cfg, backing, mem, out);
	if (!ret)
		ret = ferry_guest_start((*out)->guest);
	for (int i = 0; !ret && i < 1000; i++) {
		ferry_guest_stats((*out)->guest, &st);
		if (st.writes * 4096 >= 2 * mem)
			break;
		usleep(5000);
	}
	return ret;
}

/* The file's bytes, hashed; its size in *size; 0 if it cannot be read. */
static uint64_t file_hash(const char *path, off_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	uint64_t h = 0;
	void *p;

	if (fd < 0 || fstat(fd, &sb) || !sb.st_size)
		goto out;
	p = malloc((size_t)sb.st_size);
	if (p && pread(fd, p, (size_t)sb.st_size, 0) == sb.st_size)
		h = XXH3_64bits(p, (size_t)sb.st_size);
	free(p);
	*size = sb.st_size;
out:
	if (fd >= 0)
		close(fd);
	return h;
}

/* Entries in dir but . and .. */
static int entries(const char *dir, char *first, size_t len)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (!n++)
			snprintf(first, len, "%s", e->d_name);
	}
	if (d)
		closedir(d);
	return n;
}

static uint64_t free_bytes(const char *dir)
{
	struct statvfs v;

	return statvfs(dir, &v) ? 0 : (uint64_t)v.f_bavail * v.f_frsize;
}

static enum test_result full_disk_checks(struct test_ctx *ctx,
					 const char *dir, const char *path)
{
	struct ferry_snapshot_opts o = { 0 };
	struct ferry_snapshot_stats st;
	struct ferry_snapshot_info info;
	struct ferry_guest_vm *small, *big;
	uint64_t h0, h1, free0;
	off_t size0 = 0, size1 = 0;
	char name[256];
	int fd, ret;

	CHECK_OK(ctx, full_vm(ctx->backing, 2 << 20, &small));
	CHECK_OK(ctx, full_vm(ctx->backing, 16 << 20, &big));
	CHECK_OK(ctx, ferry_snapshot_save_path(&small->vm, path, &o, &st));
	h0 = file_hash(path, &size0);
	free0 = free_bytes(dir);
	CHECK(ctx, h0 && entries(dir, name, sizeof(name)) == 1,
	      "the first save left %d entries", entries(dir, name,
						       sizeof(name)));
	/* 16 MiB of pages into what is left of 6 MiB. */
	ret = ferry_snapshot_save_path(&big->vm, path, &o, &st);
	CHECK(ctx, ret == -ENOSPC, "the save to a full disk returned %d (%s)",
	      ret, ferry_error_msg());
	CHECK_EQ(ctx, entries(dir, name, sizeof(name)), 1);
	CHECK(ctx, !strcmp(name, strrchr(path, '/') + 1), "left: %s", name);
	h1 = file_hash(path, &size1);
	CHECK(ctx, h1 == h0 && size1 == size0, "the previous snapshot "
	      "changed (%lld bytes, was %lld)", (long long)size1,
	      (long long)size0);
	CHECK_EQ(ctx, free_bytes(dir), free0);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(ctx, fd >= 0, "open %s", path);
	CHECK_OK(ctx, ferry_snapshot_info(fd, &info));
	close(fd);
	/* One that fits replaces it whole. */
	CHECK_OK(ctx, ferry_snapshot_save_path(&small->vm, path, &o, &st));
	CHECK(ctx, file_hash(path, &size1) && entries(dir, name,
						       sizeof(name)) == 1,
	      "the second save left %d entries", entries(dir, name,
							 sizeof(name)));
	ferry_guest_vm_destroy(small);
	ferry_guest_vm_destroy(big);
	return TEST_PASS;
}

static enum test_result full_disk(struct test_ctx *ctx)
{
	char dir[] = "/tmp/ferry-full-XXXXXX", path[64];
	enum test_result res;

	CHECK(ctx, mkdtemp(dir), "mkdtemp");
	if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=6m")) {
		rmdir(dir);
		SKIP(ctx, "cannot mount a tmpfs: %s", strerror(errno));
	}
	snprintf(path, sizeof(path), "%s/vm.snap", dir);
	res = full_disk_checks(ctx, dir, path);
	umount2(dir, MNT_DETACH);
	rmdir(dir);
	return res;
}

static const struct test_case cases[] = {
	{ "save_full_disk_leaves_nothing", full_disk, B_SHMEM, 0, NEED_ROOT,
	  0, 60 },
};

TEST_SUITE(save, cases)
