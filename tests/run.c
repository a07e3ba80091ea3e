// SPDX-License-Identifier: MIT
/*
 * tests/run: the one test runner.
 *
 *   run [-l] [-v] [-f FILTER]...
 *     -l          list the cases (with their backings) and exit
 *     -f FILTER   run only cases whose "name [backing]" contains FILTER;
 *                 may be given several times
 *     -v          let cases print diagnostics (FERRY_TEST_VERBOSE=1)
 *
 * Each (case, backing) runs in a forked child, in its own process group,
 * with a time limit; a hang, a crash or a SIGBUS fails that case only.  The
 * last line is exactly "N passed, N failed, N skipped"; the exit status is 1
 * when anything failed.
 */
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ferry/hugetlb.h"
#include "test.h"

#define MAX_SUITES 64

struct suite {
	const char *name;
	const struct test_case *cases;
	unsigned int nr;
};

static struct suite suites[MAX_SUITES];
static unsigned int nr_suites;

struct outcome {		/* shared with the child */
	enum test_result result;
	char reason[512];
};

static struct outcome *shared_outcome;

void test_register_suite(const char *suite, const struct test_case *cases,
			 unsigned int nr)
{
	if (nr_suites == MAX_SUITES) {
		fprintf(stderr, "too many test suites\n");
		exit(2);
	}
	suites[nr_suites++] = (struct suite){ suite, cases, nr };
}

enum test_result test_fail_at(struct test_ctx *ctx, const char *file,
			      int line, const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(ctx->reason, sizeof(ctx->reason), "%s (%s:%d)", msg, file,
		 line);
	return TEST_FAIL;
}

enum test_result test_skip(struct test_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ctx->reason, sizeof(ctx->reason), fmt, ap);
	va_end(ap);
	return TEST_SKIP;
}

size_t test_region_size(enum ferry_backing backing, size_t pages_4k,
			size_t pages_2m)
{
	if (backing == FERRY_BACKING_SHMEM)
		return pages_4k * 4096;
	return pages_2m * FERRY_HUGE_PAGE_SIZE;
}

int test_ferry_binary(char *path, size_t len)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n <= 0)
		return -1;
	self[n] = '\0';
	snprintf(path, len, "%s/../ferry", dirname(self));
	return access(path, X_OK);
}

static bool netns_available(char *why, size_t len)
{
	if (geteuid() != 0) {
		snprintf(why, len, "network namespaces need root");
		return false;
	}
	if (system("command -v ip >/dev/null 2>&1 && "
		   "command -v tc >/dev/null 2>&1") != 0) {
		snprintf(why, len, "ip/tc not installed (apt-get install "
			 "iproute2)");
		return false;
	}
	return true;
}

/* Features implied by NEED_UFFD_* on this backing, plus the explicit ones. */
static uint64_t case_features(const struct test_case *tc, int backing)
{
	uint64_t modes = 0;

	if (tc->needs & NEED_UFFD_MISSING)
		modes |= FERRY_UFFD_MISSING;
	if (tc->needs & NEED_UFFD_MINOR)
		modes |= FERRY_UFFD_MINOR;
	if (tc->needs & NEED_UFFD_WP)
		modes |= FERRY_UFFD_WP;
	return tc->uffd_features |
	       ferry_uffd_features_for(backing == FERRY_BACKING_HUGETLB, modes);
}

/* Why this case cannot run here, or false if it can. */
static bool needs_missing(const struct test_case *tc, int backing, char *why,
			  size_t len)
{
	const struct ferry_uffd_caps *caps = ferry_uffd_probe();
	uint64_t missing, wanted = case_features(tc, backing);
	size_t off = 0;

	if ((tc->needs & NEED_ROOT) && geteuid() != 0) {
		snprintf(why, len, "needs root");
		return true;
	}
	if ((tc->needs & NEED_NETNS) && !netns_available(why, len))
		return true;
	if (wanted && caps->open_err) {
		snprintf(why, len, "userfaultfd unavailable: %s",
			 caps->open_reason);
		return true;
	}
	if ((tc->needs & NEED_PAGEMAP_SCAN) && !caps->pagemap_scan) {
		snprintf(why, len, "kernel lacks PAGEMAP_SCAN (Linux 6.7)");
		return true;
	}
	missing = wanted & ~caps->features;
	if (!missing)
		return false;
	off += snprintf(why + off, len - off, "kernel lacks userfaultfd");
	for (unsigned int bit = 0; bit < 64 && off < len; bit++) {
		uint64_t f = 1ULL << bit;

		if (missing & f)
			off += snprintf(why + off, len - off, " %s (Linux %s)",
					ferry_uffd_feature_name(f) ?: "?",
					ferry_uffd_feature_since(f) ?: "?");
	}
	return true;
}

static int wait_child(pid_t pid, unsigned int timeout_s, int *status)
{
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
	int ready;

	if (pidfd < 0)
		return waitpid(pid, status, 0) < 0 ? -errno : 0;
	ready = poll(&pfd, 1, (int)timeout_s * 1000);
	close(pidfd);
	if (ready == 0) {
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL);
		waitpid(pid, status, 0);
		return -ETIMEDOUT;
	}
	return waitpid(pid, status, 0) < 0 ? -errno : 0;
}

static enum test_result run_child(const struct test_case *tc,
				  struct test_ctx *ctx)
{
	unsigned int timeout_s = tc->timeout_s ? tc->timeout_s : 60;
	int status = 0, ret;
	pid_t pid;

	memset(shared_outcome, 0, sizeof(*shared_outcome));
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		snprintf(ctx->reason, sizeof(ctx->reason), "fork: %s",
			 strerror(errno));
		return TEST_FAIL;
	}
	if (pid == 0) {
		setpgid(0, 0);
		shared_outcome->result = tc->fn(ctx);
		memcpy(shared_outcome->reason, ctx->reason,
		       sizeof(ctx->reason));
		fflush(NULL);
		_exit(0);
	}
	setpgid(pid, pid);
	ret = wait_child(pid, timeout_s, &status);
	if (ret == -ETIMEDOUT) {
		snprintf(ctx->reason, sizeof(ctx->reason),
			 "timed out after %u s", timeout_s);
		return TEST_FAIL;
	}
	kill(-pid, SIGKILL);	/* helpers the case left behind */
	if (WIFSIGNALED(status)) {
		snprintf(ctx->reason, sizeof(ctx->reason),
			 "killed by signal %s", strsignal(WTERMSIG(status)));
		return TEST_FAIL;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		snprintf(ctx->reason, sizeof(ctx->reason),
			 "child exited with status %d", WEXITSTATUS(status));
		return TEST_FAIL;
	}
	memcpy(ctx->reason, shared_outcome->reason, sizeof(ctx->reason));
	return shared_outcome->result;
}

static enum test_result run_hugetlb(const struct test_case *tc,
				    struct test_ctx *ctx)
{
	unsigned int pages = tc->hugetlb_pages ? tc->hugetlb_pages : 64;
	struct ferry_hugetlb_resv resv;
	enum test_result result;
	int ret;

	ret = ferry_hugetlb_reserve(pages, &resv);
	if (ret) {
		snprintf(ctx->reason, sizeof(ctx->reason),
			 "cannot reserve %u huge pages: %s", pages,
			 ferry_error_msg());
		return TEST_SKIP;
	}
	result = run_child(tc, ctx);
	ret = ferry_hugetlb_restore(&resv);
	if (ret && result == TEST_PASS) {
		snprintf(ctx->reason, sizeof(ctx->reason),
			 "restoring the hugetlb pool: %s", ferry_error_msg());
		result = TEST_FAIL;
	}
	return result;
}

struct tally {
	unsigned int passed, failed, skipped;
};

static void label(char *buf, size_t len, const struct test_case *tc,
		  int backing)
{
	if (backing < 0)
		snprintf(buf, len, "%s", tc->name);
	else
		snprintf(buf, len, "%s [%s]", tc->name,
			 ferry_mem_backing_name((enum ferry_backing)backing));
}

static void report(const char *name, enum test_result result,
		   const char *reason, double secs, struct tally *t)
{
	switch (result) {
	case TEST_PASS:
		t->passed++;
		if (getenv("FERRY_TEST_VERBOSE"))
			printf("PASS %s (%.2fs)\n", name, secs);
		else
			printf("PASS %s\n", name);
		break;
	case TEST_FAIL:
		t->failed++;
		printf("FAIL %s: %s\n", name, reason);
		break;
	case TEST_SKIP:
		t->skipped++;
		printf("SKIP %s: %s\n", name, reason);
		break;
	}
	fflush(stdout);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void run_one(const struct test_case *tc, int backing,
		    struct tally *t)
{
	struct test_ctx ctx = { .name = tc->name };
	enum test_result result;
	char name[256];
	double start = now_s();

	label(name, sizeof(name), tc, backing);
	ctx.backing = backing < 0 ? FERRY_BACKING_SHMEM : backing;
	if (needs_missing(tc, backing, ctx.reason, sizeof(ctx.reason)))
		result = TEST_SKIP;
	else if (backing == FERRY_BACKING_HUGETLB)
		result = run_hugetlb(tc, &ctx);
	else
		result = run_child(tc, &ctx);
	report(name, result, ctx.reason, now_s() - start, t);
}

static bool selected(const char *name, char **filters, int nr_filters)
{
	if (!nr_filters)
		return true;
	for (int i = 0; i < nr_filters; i++)
		if (strstr(name, filters[i]))
			return true;
	return false;
}

static void for_each_case(char **filters, int nr_filters, bool list,
			  struct tally *t)
{
	for (unsigned int s = 0; s < nr_suites; s++) {
		for (unsigned int c = 0; c < suites[s].nr; c++) {
			const struct test_case *tc = &suites[s].cases[c];
			int first = tc->backings ? 0 : -1;
			int last = tc->backings ? FERRY_BACKING_COUNT - 1 : -1;

			for (int b = first; b <= last; b++) {
				char name[256];

				if (b >= 0 && !(tc->backings & (1U << b)))
					continue;
				label(name, sizeof(name), tc, b);
				if (!selected(name, filters, nr_filters))
					continue;
				if (list)
					printf("%s/%s\n", suites[s].name, name);
				else
					run_one(tc, b, t);
			}
		}
	}
}

static int compare_suites(const void *a, const void *b)
{
	return strcmp(((const struct suite *)a)->name,
		      ((const struct suite *)b)->name);
}

int main(int argc, char **argv)
{
	char *filters[64];
	int nr_filters = 0, opt;
	struct tally t = { 0 };
	bool list = false;

	while ((opt = getopt(argc, argv, "lvf:")) != -1) {
		switch (opt) {
		case 'l':
			list = true;
			break;
		case 'v':
			setenv("FERRY_TEST_VERBOSE", "1", 1);
			break;
		case 'f':
			if (nr_filters < 64)
				filters[nr_filters++] = optarg;
			break;
		default:
			fprintf(stderr, "usage: %s [-l] [-v] [-f FILTER]...\n",
				argv[0]);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	qsort(suites, nr_suites, sizeof(suites[0]), compare_suites);
	shared_outcome = mmap(NULL, sizeof(*shared_outcome),
			      PROT_READ | PROT_WRITE,
			      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared_outcome == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for_each_case(filters, nr_filters, list, &t);
	if (list)
		return 0;
	printf("%u passed, %u failed, %u skipped\n", t.passed, t.failed,
	       t.skipped);
	return t.failed ? 1 : 0;
}
