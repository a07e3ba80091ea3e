// SPDX-License-Identifier: MIT
/*
 * cli: what the subcommands do alike: options, printing, JSON, the
 * built-in VM's start and stop, the hugetlb pool.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "ferry/error.h"
#include "ferry/net.h"

static const char *command = "";

void cli_set_command(const char *name)
{
	command = name;
}

void cli_error(const char *what, int err)
{
	const char *why = ferry_error_msg();

	fprintf(stderr, "ferry %s: %s: %s\n", command, what,
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
	if (*arg)
		fprintf(stderr, "ferry %s: %s '%s': %s\n", cmd, opt, arg,
			want);
	else
		fprintf(stderr, "ferry %s: %s: %s\n", cmd, opt, want);
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

/* One line, one prefix: what is wrong and where the options are. */
static int bad_option(const struct cli_cmd *cmd, int opt, const char *arg)
{
	fprintf(stderr, "ferry %s: %s %s (ferry %s --help lists the "
		"options)\n", cmd->name, arg, opt == ':' ? "needs a value" :
		opt == '?' ? "is not an option" :
		"is not an option of this command", cmd->name);
	return 2;
}

int cli_getopt(const struct cli_cmd *cmd, int argc, char **argv, void *opts)
{
	int opt, ret;

	opterr = 0;	/* getopt's own messages would be a second line */
	while ((opt = getopt_long(argc, argv, ":", cmd->longopts, NULL)) !=
	       -1) {
		if (opt == 'h') {
			cmd->usage(stdout);
			return 1;
		}
		if (opt == '?' || opt == ':' || !strchr(cmd->allowed, opt))
			return bad_option(cmd, opt, argv[optind - 1]);
		ret = cmd->one(cmd->name, opt, optarg, opts);
		if (ret)
			return ret;
	}
	return 0;
}

int cli_no_args(const char *cmd, int argc, char **argv)
{
	if (optind < argc)
		return cli_bad(cmd, "argument", argv[optind], "unexpected");
	return 0;
}

/* Standard output as it was, once cli_json_claim_stdout() took it. */
static FILE *json_stdout;

void cli_json_claim_stdout(const char *path)
{
	int fd;

	if (!path || strcmp(path, "-") || json_stdout)
		return;
	fflush(stdout);
	fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
	if (fd < 0)
		return;
	json_stdout = fdopen(fd, "w");
	if (!json_stdout || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
		if (json_stdout)
			fclose(json_stdout);
		else
			close(fd);
		json_stdout = NULL;
	}
}

int cli_json(const char *path, void (*write)(FILE *f, const void *arg),
	     const void *arg)
{
	FILE *out = json_stdout ? json_stdout : stdout;
	FILE *f = strcmp(path, "-") ? fopen(path, "w") : out;

	if (!f) {
		fprintf(stderr, "ferry %s: --json %s: %s\n", command, path,
			strerror(errno));
		return 2;
	}
	write(f, arg);
	if (f != out)
		fclose(f);
	else
		fflush(f);
	return 0;
}

/* ---- the VM's options -------------------------------------------------- */

int cli_guest_opt(const char *cmd, int opt, const char *arg,
		  struct cli_guest *g)
{
	switch (opt) {
	case 'm':
		return cli_parse_size(arg, &g->mem_size) || !g->mem_size ?
		       cli_bad(cmd, "--mem", arg, "want a size such as 1G") : 0;
	case 'n':
		return cli_parse_num(cmd, "--vcpus", arg, 1,
				     FERRY_GUEST_MAX_VCPUS, &g->vcpus);
	case 'S':
		return cli_parse_num(cmd, "--seed", arg, 0, ~0UL, &g->seed);
	case 'w':
		g->workload = arg;
		return 0;
	case 'b':
		g->backing_set = true;
		return ferry_mem_backing_parse(arg, &g->backing) ?
		       cli_bad(cmd, "--backing", arg, "want shmem, thp or "
			       "hugetlb") : 0;
	case 'X':
		if (!strcmp(arg, "kvm"))
			g->vm = CLI_VM_KVM;
		else if (!strcmp(arg, "builtin"))
			g->vm = CLI_VM_BUILTIN;
		else
			return cli_bad(cmd, "--vm", arg, "want kvm or builtin");
		return 0;
	default:
		return 2;
	}
}

/* MemTotal, in bytes; 0 if /proc/meminfo cannot say. */
static uint64_t mem_total(void)
{
	unsigned long long kib = 0;
	char line[128];
	FILE *f = fopen("/proc/meminfo", "re");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemTotal: %llu kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return (uint64_t)kib << 10;
}

/*
 * What the machine can give: its memory; on hugetlb without root, only
 * the pool's free pages (ferry grows the pool only as root).
 */
static uint64_t mem_limit(enum ferry_backing backing, const char **what)
{
	long total, free_pages;

	*what = "this machine's memory (MemTotal)";
	if (backing != FERRY_BACKING_HUGETLB || geteuid() == 0 ||
	    ferry_hugetlb_pool(&total, &free_pages))
		return mem_total();
	*what = "the free hugetlb pool (vm.nr_hugepages; as root ferry "
		"grows it)";
	return (uint64_t)free_pages * FERRY_HUGE_PAGE_SIZE;
}

int cli_guest_check(const char *cmd, const struct cli_guest *g)
{
	char size[32], limit_s[32], want[200];
	const char *what;
	uint64_t limit = mem_limit(g->backing, &what);

	if (!limit || g->mem_size <= limit)
		return 0;
	snprintf(want, sizeof(want), "more than %s: %s", what,
		 cli_bytes(limit, limit_s, sizeof(limit_s)));
	return cli_bad(cmd, "--mem", cli_bytes(g->mem_size, size,
					       sizeof(size)), want);
}

/* ---- what a signal must put back --------------------------------------- */

/* Written by the main thread before the handler may need them. */
static long hugetlb_max_grow = -1;
static struct ferry_hugetlb_resv *volatile active_resv;
static const char *volatile cleanup_path;

void cli_hugetlb_limit(long max_grow)
{
	hugetlb_max_grow = max_grow;
}

void cli_cleanup_path(const char *path)
{
	cleanup_path = path;
}

/* Async-signal-safe: a number into a sysctl file. */
static void put_sysctl(const char *path, long value)
{
	char text[24];
	int i = sizeof(text), fd;

	text[--i] = '\n';
	do {
		text[--i] = (char)('0' + value % 10);
		value /= 10;
	} while (value && i > 0);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, text + i, sizeof(text) - (size_t)i) < 0)
			i = 0;	/* nothing more to do in a handler */
		close(fd);
	}
}

#define POOL "/sys/kernel/mm/hugepages/hugepages-2048kB/"

static void on_signal(int sig)
{
	struct ferry_hugetlb_resv *r = active_resv;
	const char *path = cleanup_path;

	if (r && r->overcommit_raised)
		put_sysctl(POOL "nr_overcommit_hugepages",
			   r->saved_overcommit);
	if (r && r->saved_nr_hugepages >= 0)
		put_sysctl(POOL "nr_hugepages", r->saved_nr_hugepages);
	if (path)
		unlink(path);
	signal(sig, SIG_DFL);
	raise(sig);
}

void cli_cleanup_signals(void)
{
	struct sigaction sa = { .sa_handler = on_signal };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
}

int cli_hugetlb_reserve(enum ferry_backing backing, uint64_t bytes,
			struct ferry_hugetlb_resv *resv)
{
	if (backing != FERRY_BACKING_HUGETLB)
		return 0;
	cli_cleanup_signals();
	active_resv = resv;
	return ferry_hugetlb_surplus((bytes + FERRY_HUGE_PAGE_SIZE - 1) /
				     FERRY_HUGE_PAGE_SIZE, hugetlb_max_grow,
				     resv);
}

/* ---- security options --------------------------------------------------- */

int cli_net_opt(const char *cmd, int opt, const char *arg,
		struct ferry_net_opts *o)
{
	unsigned long v;
	uint64_t bytes;
	double secs;

	switch (opt) {
	case 'K': o->tls_psk_file = arg; return 0;
	case 'C': o->tls_cert_file = arg; return 0;
	case 'Y': o->tls_key_file = arg; return 0;
	case 'Z': o->tls_ca_file = arg; return 0;
	case 'I': o->insecure = true; return 0;
	case 'G':
		if (cli_parse_size(arg, &bytes) || !bytes)
			return cli_bad(cmd, "--max-guest", arg, "want a size "
				       "such as 64G");
		o->max_guest_bytes = bytes;
		return 0;
	case 'H':
		if (cli_parse_secs(cmd, "--hello-timeout", arg, &secs))
			return 2;
		o->hello_timeout_ms = secs * 1000 < 1 ? 1 : (int)(secs * 1000);
		return 0;
	case 'P':
		if (cli_parse_num(cmd, "--hugetlb-max", arg, 0, 1UL << 30, &v))
			return 2;
		cli_hugetlb_limit((long)v);
		return 0;
	default:
		return 2;
	}
}

void cli_hugetlb_release(struct ferry_hugetlb_resv *resv)
{
	ferry_hugetlb_restore(resv);
	if (active_resv == resv)
		active_resv = NULL;
}

void cli_sleep(double secs)
{
	usleep((useconds_t)(secs * 1e6));
}

/* ---- the destination's VM ----------------------------------------------- */

uint64_t cli_stream_bytes(const struct ferry_wire_stream *s)
{
	uint64_t bytes = 0;

	for (unsigned int i = 0; i < s->nr_regions; i++)
		bytes += s->regions[i].size;
	return bytes;
}
