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

int cli_bad(const char *cmd, const char *opt, const char *arg,
	    const char *want)
{
	fprintf(stderr, "ferry %s: %s '%s': %s\n", cmd, opt, arg, want);
	return 2;
}

int cli_parse_num(const char *cmd, const char *opt, const char *arg,
		  unsigned long lo, unsigned long hi, unsigned long *v)
{
	char want[64];

	if (!cli_parse_uint(arg, v) && *v >= lo && *v <= hi)
		return 0;
	snprintf(want, sizeof(want), "want %lu to %lu", lo, hi);
	return cli_bad(cmd, opt, arg, want);
}

int cli_parse_secs(const char *cmd, const char *opt, const char *arg,
		   double *v)
{
	return cli_parse_seconds(arg, v) ? cli_bad(cmd, opt, arg,
						   "want seconds") : 0;
}

int cli_getopt(const char *cmd, const char *allowed, int argc, char **argv,
	       const struct option *longopts, void (*usage)(FILE *out),
	       int (*one)(void *ctx, int opt, const char *arg), void *ctx)
{
	int opt, ret;

	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (opt == 'h') {
			usage(stdout);
			return 1;
		}
		if (opt == '?' || !strchr(allowed, opt)) {
			if (opt != '?')
				fprintf(stderr, "ferry %s: %s is not an "
					"option of this command\n", cmd,
					argv[optind - 1]);
			usage(stderr);
			return 2;
		}
		ret = one(ctx, opt, optarg);
		if (ret)
			return ret;
	}
	return 0;
}

FILE *cli_json_open(const char *path)
{
	FILE *f = strcmp(path, "-") ? fopen(path, "w") : stdout;

	if (!f)
		fprintf(stderr, "ferry: --json %s: %s\n", path,
			strerror(errno));
	return f;
}

void cli_json_close(FILE *f)
{
	if (f && f != stdout)
		fclose(f);
}

int cli_start_guest(const struct ferry_guest_config *cfg,
		    enum ferry_backing backing, uint64_t mem_size,
		    struct ferry_guest_vm **gv, struct ferry_hugetlb_resv *resv)
{
	int ret = 0;

	if (backing == FERRY_BACKING_HUGETLB)
		ret = ferry_hugetlb_reserve((mem_size + FERRY_HUGE_PAGE_SIZE -
					     1) / FERRY_HUGE_PAGE_SIZE, resv);
	if (!ret)
		ret = ferry_guest_vm_create(cfg, backing, mem_size, gv);
	if (!ret)
		ret = ferry_guest_start((*gv)->guest);
	if (ret) {
		cli_error("building the VM (ferry run --help lists the "
			  "workloads)", ret);
		return 2;
	}
	return 0;
}

static int dest_create(void *arg, const struct ferry_wire_stream *s,
		       struct ferry_vm *vm)
{
	struct cli_dest *cd = arg;
	enum ferry_backing b = cd->dd.keep_backing ? s->regions[0].backing :
						     cd->dd.backing;
	uint64_t bytes = 0;
	int ret = 0;

	for (unsigned int i = 0; i < s->nr_regions; i++)
		bytes += s->regions[i].size;
	if (b == FERRY_BACKING_HUGETLB)
		ret = ferry_hugetlb_reserve(bytes / FERRY_HUGE_PAGE_SIZE,
					    &cd->resv);
	return ret ? ret : ferry_guest_dest_ops()->create(&cd->dd, s, vm);
}

static void dest_discard(void *arg, struct ferry_vm *vm)
{
	struct cli_dest *cd = arg;

	ferry_guest_dest_ops()->discard(&cd->dd, vm);
}

static const struct ferry_dest_ops dest_ops = {
	.create = dest_create,
	.discard = dest_discard,
};

const struct ferry_dest_ops *cli_dest_ops(void)
{
	return &dest_ops;
}
