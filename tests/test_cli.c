// SPDX-License-Identifier: MIT
/*
 * The ferry command as a user meets it: every error exits 2 with one line
 * on standard error that starts "ferry COMMAND:" and nothing on standard
 * output; `--json -` leaves standard output to the JSON alone.  The tool is build/ferry, beside the test runner.
 */
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

#define OUT_MAX	(64 * 1024)

struct ran {
	int status;		/* exit status, or 128 + signal */
	char out[OUT_MAX];	/* standard output */
	char err[OUT_MAX];	/* standard error */
};

/* Read a whole file into buf (NUL-terminated, cut at len - 1). */
static void slurp(int fd, char *buf, size_t len)
{
	size_t n = 0;
	ssize_t r;

	lseek(fd, 0, SEEK_SET);
	while (n < len - 1 && (r = read(fd, buf + n, len - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
	close(fd);
}

/* Run build/ferry with argv (NULL-terminated) and collect what it says. */
static int run_ferry(const char *const argv[], struct ran *r)
{
	char bin[PATH_MAX], out_path[] = "/tmp/ferry-cli-out.XXXXXX",
			    err_path[] = "/tmp/ferry-cli-err.XXXXXX";
	int out, err, status;
	pid_t pid;

	if (test_ferry_binary(bin, sizeof(bin)))
		return -ENOENT;
	out = mkstemp(out_path);
	err = mkstemp(err_path);
	if (out < 0 || err < 0)
		return -errno;
	unlink(out_path);
	unlink(err_path);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (!pid) {
		int null = open("/dev/null", O_RDONLY);

		dup2(null, 0);
		dup2(out, 1);
		dup2(err, 2);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid)
		return -errno;
	r->status = WIFEXITED(status) ? WEXITSTATUS(status) :
		    128 + WTERMSIG(status);
	slurp(out, r->out, sizeof(r->out));
	slurp(err, r->err, sizeof(r->err));
	return 0;
}

static unsigned int count_lines(const char *s)
{
	unsigned int n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/*
 * Each a mistake a user makes: exit 2, one line on stderr with the
 * command's prefix and the words that name the problem, nothing on
 * stdout (a VM built first would have printed its summary there; send
 * says so in words).
 */
static enum test_result errors_exit_2_one_line(struct test_ctx *ctx)
{
	static const struct {
		const char *argv[12];
		const char *says;
	} cases[] = {
		{ { "ferry", "run", "--mem", "100T", NULL },
		  "more than this machine's memory" },
		{ { "ferry", "send", "--bogus", NULL }, "not an option" },
		{ { "ferry", "send", "--to", "127.0.0.1:1", "--mem", "16M",
		    NULL }, "no VM was built" },
		{ { "ferry", "send", "--to", "127.0.0.1:1", "--mode",
		    "hybrid", "--at-once", NULL }, "needs --mode postcopy" },
		{ { "ferry", "demo", "--mode", "sideways", NULL },
		  "want precopy, postcopy or hybrid" },
		{ { "ferry", "recv", NULL }, "--listen: is required" },
		{ { "ferry", "snapshot", "--out", "/nonexistent-dir/x.snap",
		    "--mem", "16M", NULL }, "cannot write beside it" },
		{ { "ferry", "restore", "--eager", "--lazy", "x.snap", NULL },
		  "one or the other" },
		{ { "ferry", "restore", "--clone", "2", "--eager", "x.snap",
		    NULL }, "clones are lazy" },
		{ { "ferry", "restore", "/nonexistent.snap", NULL },
		  "No such file" },
		{ { "ferry", "nosuchcommand", NULL }, "unknown command" },
	};
	static struct ran r;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *cmd = cases[i].argv[1];
		char prefix[64];
		int ret = run_ferry(cases[i].argv, &r);

		if (ret == -ENOENT)
			SKIP(ctx, "no ferry binary beside the test runner");
		CHECK_OK(ctx, ret);
		CHECK(ctx, r.status == 2, "ferry %s ...: exit %d, want 2 (%s)",
		      cmd, r.status, r.err);
		CHECK(ctx, !r.out[0], "ferry %s ...: wrote to stdout: %s", cmd,
		      r.out);
		CHECK(ctx, count_lines(r.err) == 1,
		      "ferry %s ...: %u lines on stderr, want 1: %s", cmd,
		      count_lines(r.err), r.err);
		/* A command ferry does not know is the tool's own error. */
		snprintf(prefix, sizeof(prefix), "ferry%s%s:",
			 strcmp(cmd, "nosuchcommand") ? " " : "",
			 strcmp(cmd, "nosuchcommand") ? cmd : "");
		CHECK(ctx, !strncmp(r.err, prefix, strlen(prefix)),
		      "ferry %s ...: stderr does not start '%s': %s", cmd,
		      prefix, r.err);
		CHECK(ctx, strstr(r.err, cases[i].says),
		      "ferry %s ...: stderr does not say '%s': %s", cmd,
		      cases[i].says, r.err);
	}
	return TEST_PASS;
}

/* --help is no error: exit 0, the usage on stdout. */
static enum test_result help_exits_0(struct test_ctx *ctx)
{
	static const char *const cmds[] = { "doctor", "run", "send", "recv",
					    "demo", "snapshot", "restore",
					    "serve-faults" };
	static struct ran r;

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		const char *argv[] = { "ferry", cmds[i], "--help", NULL };
		int ret = run_ferry(argv, &r);

		if (ret == -ENOENT)
			SKIP(ctx, "no ferry binary beside the test runner");
		CHECK_OK(ctx, ret);
		CHECK(ctx, r.status == 0, "ferry %s --help: exit %d", cmds[i],
		      r.status);
		CHECK(ctx, !strncmp(r.out, "usage: ferry ", 13),
		      "ferry %s --help: %s", cmds[i], r.out);
	}
	return TEST_PASS;
}

/*
 * `ferry demo --json -`: a migration verified, standard output the JSON
 * document alone (the summary on standard error), its verdict pass.
 */
static enum test_result demo_json_stdout(struct test_ctx *ctx)
{
	const char *argv[] = { "ferry", "demo", "--vm", "builtin", "--mem",
			       "32M", "--warmup", "0.3", "--run", "0.3",
			       "--json", "-", NULL };
	static struct ran r;
	size_t len;
	int ret = run_ferry(argv, &r);

	if (ret == -ENOENT)
		SKIP(ctx, "no ferry binary beside the test runner");
	CHECK_OK(ctx, ret);
	CHECK(ctx, r.status == 0, "exit %d: %s", r.status, r.err);
	len = strlen(r.out);
	CHECK(ctx, len > 2 && r.out[0] == '{' && r.out[len - 2] == '}' &&
	      r.out[len - 1] == '\n', "stdout is not one JSON object: %s",
	      r.out);
	CHECK(ctx, strstr(r.out, "\"verdict\": \"pass\""),
	      "no pass verdict in the JSON: %s", r.out);
	CHECK(ctx, !strstr(r.out, "ferry demo:"),
	      "the summary went to stdout: %s", r.out);
	CHECK(ctx, strstr(r.err, "verify      PASS"),
	      "the summary's verdict is not on stderr: %s", r.err);
	return TEST_PASS;
}

static const struct test_case cases[] = {
	{ "cli_errors_exit_2_one_line", errors_exit_2_one_line, 0, 0, 0, 0,
	  60 },
	{ "cli_help_exits_0", help_exits_0, 0, 0, 0, 0, 30 },
	{ "cli_demo_json_stdout", demo_json_stdout, 0, 0,
	  NEED_UFFD_WP | NEED_PAGEMAP_SCAN, 0, 120 },
};

TEST_SUITE(cli, cases)
