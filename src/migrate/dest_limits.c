// SPDX-License-Identifier: MIT
/*
 * dest_limits: the bound on what a HEADER may make the receiver (and the
 * restorer) allocate.  Without it, 144 bytes claiming 1 TiB cost a
 * receiver 1.4 GB of page tables and bitmaps, and a hugetlb claim grew
 * the host's huge page pool, for as long as the peer held on.
 */
#include <stdio.h>

#include "base/error.h"
#include "base/sys.h"
#include "ferry/hugetlb.h"
#include "migrate/dest_limits.h"

/* A line of /proc/meminfo, in bytes; 0 when it cannot be read. */
static uint64_t meminfo_bytes(const char *key)
{
	char line[128];
	unsigned long long kb = 0;
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, key, &kb) == 1)
			break;
	fclose(f);
	return (uint64_t)kb << 10;
}

static double gib(uint64_t bytes)
{
	return (double)bytes / (double)(1ULL << 30);
}

static int check_total(uint64_t total, uint64_t max, const char *who)
{
	uint64_t limit = max ? max : meminfo_bytes("MemTotal: %llu kB");

	if (!limit || total <= limit)
		return 0;
	return ferry_fail(-E2BIG, "%s claims %.2f GiB of guest memory; this "
			  "side takes at most %.2f GiB (%s): refused before "
			  "anything was allocated", who, gib(total),
			  gib(limit), max ? "its max_guest_bytes" :
			  "MemTotal");
}

static int check_hugetlb(uint64_t bytes, const char *who)
{
	uint64_t pages = (bytes + FERRY_HUGE_PAGE_SIZE - 1) /
			 FERRY_HUGE_PAGE_SIZE;
	long room = 0;
	int ret = ferry_hugetlb_room(-1, &room);

	if (ret)
		return ret;
	if (pages <= (uint64_t)room)
		return 0;
	return ferry_fail(-ENOMEM, "%s claims %llu huge pages (%.2f GiB); "
			  "the hugetlb pool here can give %ld: refused "
			  "before anything was allocated or grown", who,
			  (unsigned long long)pages, gib(bytes), room);
}

int dest_limits_check(const struct ferry_wire_stream *s,
		      uint64_t max_guest_bytes, const char *who)
{
	uint64_t total = 0, huge = 0;
	int ret;

	for (unsigned int i = 0; i < s->nr_regions; i++) {
		total += s->regions[i].size;
		if (s->regions[i].backing == FERRY_BACKING_HUGETLB)
			huge += s->regions[i].size;
	}
	ret = check_total(total, max_guest_bytes, who);
	if (!ret && huge)
		ret = check_hugetlb(huge, who);
	return ret;
}
