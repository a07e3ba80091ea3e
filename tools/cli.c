// SPDX-License-Identifier: MIT
/* cli: parsing and printing shared by the subcommands. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "ferry/error.h"

void cli_error(const char *what, int err)
{
	const char *why = ferry_errmsg();

	fprintf(stderr, "ferry: %s: %s\n", what,
		why[0] ? why : strerror(err < 0 ? -err : err));
}

int cli_parse_size(const char *text, uint64_t *bytes)
{
	char *end;
	double v;
	uint64_t mult = 1;

	errno = 0;
	v = strtod(text, &end);
	if (end == text || errno || v < 0)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': mult = 1ULL << 10; end++; break;
	case 'm': case 'M': mult = 1ULL << 20; end++; break;
	case 'g': case 'G': mult = 1ULL << 30; end++; break;
	case 't': case 'T': mult = 1ULL << 40; end++; break;
	default: break;
	}
	if (*end == 'i' && mult > 1)
		end++;
	if ((*end == 'B' || *end == 'b') && end[1] == '\0')
		end++;
	if (*end != '\0' || v * (double)mult > 1e18)
		return -EINVAL;
	*bytes = (uint64_t)(v * (double)mult);
	return 0;
}

int cli_parse_seconds(const char *text, double *secs)
{
	char *end;

	errno = 0;
	*secs = strtod(text, &end);
	if (end == text || errno || *secs < 0)
		return -EINVAL;
	if (*end == 's' && end[1] == '\0')
		return 0;
	if (strcmp(end, "ms") == 0) {
		*secs /= 1000.0;
		return 0;
	}
	return *end == '\0' ? 0 : -EINVAL;
}

int cli_parse_uint(const char *text, unsigned long *value)
{
	char *end;

	if (text[0] == '-')
		return -EINVAL;
	errno = 0;
	*value = strtoul(text, &end, 0);
	return (end == text || *end || errno) ? -EINVAL : 0;
}

const char *cli_bytes(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned int u = 0;

	while (v >= 1024.0 && u < 4) {
		v /= 1024.0;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
	return buf;
}
