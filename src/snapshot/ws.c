// SPDX-License-Identifier: MIT
/*
 * snap_ws: working-set files, the order in which a restored guest first
 * touched pages, for the next restore of the same snapshot to load first.
 *
 *   offset  size       field
 *        0     8       magic "FERRYWS1"
 *        8     8       snapshot id (hash of the snapshot's record headers,
 *                      or of a served memory file's layout: serve/)
 *       16     4       version, 1
 *       20     4       count
 *       24     8 x n   entries: region (u32), page (u32), in touch order
 *   24+8n      8       XXH3-64 of every byte before it
 *
 * Little-endian.  A file for another snapshot, or one whose bytes do not
 * add up, is refused; an entry outside guest memory is refused too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "base/error.h"
#include "base/io.h"
#include "le.h"
#include "snapshot/snapshot.h"
#include "base/sys.h"

#define WS_MAGIC	"FERRYWS1"
#define WS_VERSION	1
#define WS_HEAD		24

static uint64_t max_entries(const struct snap_ws_layout *l)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < l->nr_regions; i++)
		n += l->nr_pages[i];
	return n;
}

static int read_all(const char *path, uint8_t **buf, size_t *len,
		    uint64_t limit)
{
	struct stat st;
	int fd = sys_open(path, O_RDONLY), ret = 0;

	if (fd < 0)
		return ferry_fail(fd, "working set %s: %s", path,
				  strerror(-fd));
	if (fstat(fd, &st))
		ret = ferry_fail(-errno, "working set %s: %s", path,
				 strerror(errno));
	else if ((uint64_t)st.st_size < WS_HEAD + 8 ||
		 (uint64_t)st.st_size > limit)
		ret = ferry_fail(-EBADMSG, "working set %s: %lld bytes is not "
				 "a working set of this snapshot", path,
				 (long long)st.st_size);
	if (!ret) {
		*len = (size_t)st.st_size;
		*buf = malloc(*len);
		ret = *buf ? 0 : ferry_fail(-ENOMEM, "out of memory");
	}
	if (!ret && io_pread_full(fd, *buf, *len, 0) != (ssize_t)*len)
		ret = ferry_fail(-EIO, "working set %s: short read", path);
	close(fd);
	return ret;
}

static int check_head(const struct snap_ws_layout *l, const char *path,
		      const uint8_t *buf, size_t len)
{
	uint32_t count = le32_load(buf + 20);

	if (memcmp(buf, WS_MAGIC, 8))
		return ferry_fail(-EBADMSG, "%s is not a ferry working set",
				  path);
	if (le32_load(buf + 16) != WS_VERSION)
		return ferry_fail(-EBADMSG, "working set %s is version %u; "
				  "this ferry reads %u", path,
				  le32_load(buf + 16), WS_VERSION);
	if (len != WS_HEAD + 8ULL * count + 8)
		return ferry_fail(-EBADMSG, "working set %s: %zu bytes for %u "
				  "entries", path, len, count);
	if (XXH3_64bits(buf, len - 8) != le64_load(buf + len - 8))
		return ferry_fail(-EBADMSG, "working set %s: checksum "
				  "mismatch", path);
	if (le64_load(buf + 8) != l->id)
		return ferry_fail(-EINVAL, "working set %s was recorded for "
				  "another snapshot", path);
	return 0;
}

static int take_entries(const struct snap_ws_layout *l, const char *path,
			const uint8_t *buf, struct snap_page *pages,
			uint32_t count)
{
	for (uint32_t i = 0; i < count; i++) {
		const uint8_t *e = buf + WS_HEAD + 8ULL * i;
		uint32_t region = le32_load(e), page = le32_load(e + 4);

		if (region >= l->nr_regions || page >= l->nr_pages[region])
			return ferry_fail(-EBADMSG, "working set %s: entry %u "
					  "(region %u page %u) is outside "
					  "guest memory", path, i, region,
					  page);
		pages[i] = (struct snap_page){ .region = region,
					       .page = page };
	}
	return 0;
}

ssize_t snap_ws_load_layout(const struct snap_ws_layout *l, const char *path,
			    struct snap_page **pages)
{
	uint64_t limit = WS_HEAD + 8 * max_entries(l) + 8;
	uint8_t *buf = NULL;
	size_t len = 0;
	uint32_t count = 0;
	int ret = read_all(path, &buf, &len, limit);

	if (!ret)
		ret = check_head(l, path, buf, len);
	if (!ret) {
		count = le32_load(buf + 20);
		*pages = malloc(count ? count * sizeof(**pages) : 1);
		ret = *pages ? take_entries(l, path, buf, *pages, count) :
			       ferry_fail(-ENOMEM, "out of memory");
		if (ret) {
			free(*pages);
			*pages = NULL;
		}
	}
	free(buf);
	return ret ? ret : (ssize_t)count;
}

static void encode(uint64_t id, const struct snap_page *pages, uint32_t nr,
		   uint8_t *buf, size_t len)
{
	memcpy(buf, WS_MAGIC, 8);
	le64_store(buf + 8, id);
	le32_store(buf + 16, WS_VERSION);
	le32_store(buf + 20, nr);
	for (uint32_t i = 0; i < nr; i++) {
		le32_store(buf + WS_HEAD + 8ULL * i, pages[i].region);
		le32_store(buf + WS_HEAD + 8ULL * i + 4, pages[i].page);
	}
	le64_store(buf + len - 8, XXH3_64bits(buf, len - 8));
}

/* Written beside the target, then renamed over it: never half a file. */
static int write_file(const char *path, const uint8_t *buf, size_t len)
{
	char tmp[4096];
	int fd, ret;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return ferry_fail(-ENAMETOOLONG, "working set path too long");
	fd = sys_ret(open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
			  0644));
	if (fd < 0)
		return ferry_fail(fd, "%s: %s", tmp, strerror(-fd));
	ret = snap_write(fd, buf, len, 0);
	close(fd);
	if (!ret && rename(tmp, path))
		ret = ferry_fail(-errno, "rename to %s: %s", path,
				 strerror(errno));
	if (ret)
		unlink(tmp);
	return ret;
}

int snap_ws_save_layout(const struct snap_ws_layout *l, const char *path,
			const struct snap_page *pages, size_t nr)
{
	size_t len = WS_HEAD + 8 * nr + 8;
	uint8_t *buf;
	int ret;

	if (nr > UINT32_MAX)
		return ferry_fail(-E2BIG, "a working set of %zu pages", nr);
	buf = malloc(len);
	if (!buf)
		return ferry_fail(-ENOMEM, "out of memory");
	encode(l->id, pages, (uint32_t)nr, buf, len);
	ret = write_file(path, buf, len);
	free(buf);
	return ret;
}

/* A ferry snapshot's layout: its id and its regions' page counts. */
static struct snap_ws_layout file_layout(const struct snap_file *f,
					 uint64_t *nr_pages)
{
	for (unsigned int i = 0; i < f->stream.nr_regions; i++)
		nr_pages[i] = f->stream.regions[i].nr_pages;
	return (struct snap_ws_layout){ .id = f->id,
		.nr_regions = f->stream.nr_regions, .nr_pages = nr_pages };
}

ssize_t snap_ws_load(const struct snap_file *f, const char *path,
		     struct snap_page **pages)
{
	uint64_t nr_pages[FERRY_WIRE_MAX_REGIONS];
	struct snap_ws_layout l = file_layout(f, nr_pages);

	return snap_ws_load_layout(&l, path, pages);
}

int snap_ws_save(const struct snap_file *f, const char *path,
		 const struct snap_page *pages, size_t nr)
{
	uint64_t nr_pages[FERRY_WIRE_MAX_REGIONS];
	struct snap_ws_layout l = file_layout(f, nr_pages);

	return snap_ws_save_layout(&l, path, pages, nr);
}
