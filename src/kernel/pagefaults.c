// SPDX-License-Identifier: MIT
/* faults: how many page faults a piece of work cost (seed 000). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/error.h"
#include "ferry/pagefaults.h"
#include "base/sys.h"

int ferry_pagefaults_vmstat(const char *key, uint64_t *value)
{
	char buf[16384], *line;
	size_t klen = strlen(key);
	ssize_t n = sys_read_file("/proc/vmstat", buf, sizeof(buf));

	if (n < 0)
		return ferry_fail((int)n, "reading /proc/vmstat: %s",
				  strerror((int)-n));
	for (line = buf; line && *line; line = strchr(line, '\n')) {
		if (*line == '\n')
			line++;
		if (strncmp(line, key, klen) == 0 && line[klen] == ' ') {
			*value = strtoull(line + klen + 1, NULL, 10);
			return 0;
		}
	}
	return ferry_fail(-ENOENT, "/proc/vmstat has no '%s'", key);
}

static int usage(enum ferry_pagefaults_scope scope, uint64_t *minor,
		 uint64_t *major)
{
	struct rusage ru;
	int who = scope == FERRY_PAGEFAULTS_THREAD ? RUSAGE_THREAD : RUSAGE_SELF;

	if (getrusage(who, &ru))
		return ferry_fail(-errno, "getrusage: %s", strerror(errno));
	*minor = (uint64_t)ru.ru_minflt;
	*major = (uint64_t)ru.ru_majflt;
	return 0;
}

int ferry_pagefaults_start(struct ferry_pagefaults *f, enum ferry_pagefaults_scope scope)
{
	int ret;

	f->scope = scope;
	ret = ferry_pagefaults_vmstat("pgfault", &f->vmstat_pgfault);
	if (ret)
		return ret;
	return usage(scope, &f->minor, &f->major);
}

int ferry_pagefaults_stop(struct ferry_pagefaults *f)
{
	uint64_t minor = 0, major = 0, pgfault = 0;
	int ret = usage(f->scope, &minor, &major);

	if (!ret)
		ret = ferry_pagefaults_vmstat("pgfault", &pgfault);
	if (ret)
		return ret;
	f->minor = minor - f->minor;
	f->major = major - f->major;
	f->vmstat_pgfault = pgfault - f->vmstat_pgfault;
	return 0;
}

double ferry_pagefaults_per_page(const struct ferry_pagefaults *f, uint64_t pages)
{
	if (!pages)
		return 0.0;
	return (double)(f->minor + f->major) / (double)pages;
}
