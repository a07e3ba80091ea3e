// SPDX-License-Identifier: MIT
/*
 * ferry send / recv / demo: live migration of the built-in workload VM.
 *
 *   ferry recv --listen ADDR:PORT ...   the destination: builds the VM the
 *                                       stream describes, runs it on,
 *                                       verifies
 *   ferry send --to ADDR:PORT ...       the source: runs a VM, migrates it
 *   ferry demo                          both, as two processes over
 *                                       loopback, with one summary
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "ferry/ferry.h"
#include "ferry-vm/guest_vm.h"
#include "ferry/migrate.h"

struct mig_opts {
	/* source */
	const char *to;
	unsigned long channels, max_downtime_ms;
	double warmup_s;
	enum ferry_mode mode;
	bool at_once;
	/* destination */
	const char *listen;
	double run_s, timeout_s;
	bool verify;
	/* both: the VM (the destination takes only its backing) */
	struct cli_guest guest;
	struct ferry_net_opts net;	/* TLS, insecure, limits */
	const char *json;
	bool quiet;
};

/* What the destination found, as the demo's child hands it to its parent. */
struct dest_result {
	int ret;
	char reason[400];
	struct ferry_migrate_stats stats;
	bool verified;
	struct ferry_verify_report report;
};

static void defaults(struct mig_opts *o)
{
	*o = (struct mig_opts){ .channels = 2, .max_downtime_ms = 50,
		.warmup_s = 1, .mode = FERRY_MODE_HYBRID, .run_s = 1,
		.timeout_s = 60,
		.guest = { .mem_size = 1ULL << 30, .vcpus = 2, .seed = 1,
			   .workload = "random,read=20",
			   .backing = FERRY_BACKING_SHMEM } };
}

/* ---- printing ----------------------------------------------------------- */

static void progress_line(const struct ferry_progress *p, void *arg)
{
	char sent[32];

	(void)arg;
	fprintf(stderr, "\r\033[K%-10s round %-3u sent %-10s %6.2f GB/s  "
		"remaining %llu pages", ferry_migrate_phase_name(p->phase), p->round,
		cli_bytes(p->bytes_sent, sent, sizeof(sent)),
		p->rate_bps / 1e9, (unsigned long long)p->remaining);
	if (p->eta_s >= 0 && p->phase == FERRY_PHASE_PRECOPY)
		fprintf(stderr, "  eta %.1fs", p->eta_s);
	if (p->phase == FERRY_PHASE_DONE)
		fputc('\n', stderr);
	fflush(stderr);
}

static void print_source(const struct ferry_migrate_stats *s, FILE *out)
{
	char sent[32];
	double secs = (double)s->total_ns / 1e9;

	fprintf(out, "migration   %s in %.3f s, downtime %.3f ms, %u "
		"round%s\n", ferry_migrate_mode_name(s->mode), secs,
		cli_ms(s->downtime_ns), s->rounds, s->rounds == 1 ? "" : "s");
	fprintf(out, "sent        %s: %llu pages, %llu zero pages "
		"(indices only), %.2f GB/s\n",
		cli_bytes(s->bytes_sent, sent, sizeof(sent)),
		(unsigned long long)s->pages_sent,
		(unsigned long long)s->zero_pages,
		secs > 0 ? (double)s->bytes_sent / secs / 1e9 : 0);
	if (s->mode == FERRY_MODE_POSTCOPY)
		fprintf(out, "post-copy   %llu pages pushed, %llu requested\n",
			(unsigned long long)s->pages_pushed,
			(unsigned long long)s->pages_requested);
}

static void print_dest(const struct ferry_migrate_stats *d, FILE *out)
{
	fprintf(out, "received    %llu pages installed, %.4f page faults "
		"per installed 4 KiB\n",
		(unsigned long long)d->pages_installed,
		d->faults_per_installed_page);
	if (d->mode == FERRY_MODE_POSTCOPY)
		fprintf(out, "faults      %llu minor, %llu missing; latency p50 "
			"%.0f us, p99 %.0f us, max %.0f us\n",
			(unsigned long long)d->minor_faults,
			(unsigned long long)d->missing_faults,
			cli_us(d->fault_latency_p50_ns),
			cli_us(d->fault_latency_p99_ns),
			cli_us(d->fault_latency_max_ns));
	if (d->pmd_mapped_bytes)
		fprintf(out, "huge pages  %.1f%% of guest memory PMD-mapped\n",
			100.0 * (double)d->pmd_mapped_bytes /
			(double)d->guest_bytes);
}

static void print_verdict(const struct ferry_verify_report *r, FILE *out)
{
	fprintf(out, "vCPUs      ");
	for (unsigned int i = 0; i < r->nr_vcpus; i++)
		fprintf(out, " %u:%s", i, ferry_vcpu_mp_state_name(r->vcpu[i].mp_state));
	fprintf(out, "\nverify      %s: %llu cells written, %llu lost, %llu "
		"torn, %llu duplicated, %llu read errors\n",
		r->ok ? "PASS" : "FAIL", (unsigned long long)r->cells_written,
		(unsigned long long)r->lost, (unsigned long long)r->torn,
		(unsigned long long)r->duplicated,
		(unsigned long long)r->read_errors);
	for (unsigned int i = 0; i < r->nr_bad; i++)
		fprintf(out, "            cell %llu: %s (version %llu, want "
			"%llu)\n", (unsigned long long)r->bad[i].cell,
			ferry_verify_kind_name(r->bad[i].kind),
			(unsigned long long)r->bad[i].found,
			(unsigned long long)r->bad[i].expected);
}

/* What one side saw: the source's stats, the destination's, or both. */
struct migration {
	const struct ferry_migrate_stats *src;
	const struct dest_result *dst;
};

static void json_source(FILE *f, const struct ferry_migrate_stats *s)
{
	fprintf(f, "  \"rounds\": %u,\n  \"bytes_sent\": %llu,\n"
		"  \"pages_sent\": %llu,\n  \"zero_pages\": %llu,\n"
		"  \"pages_pushed\": %llu,\n",
		s->rounds, (unsigned long long)s->bytes_sent,
		(unsigned long long)s->pages_sent,
		(unsigned long long)s->zero_pages,
		(unsigned long long)s->pages_pushed);
}

static void json_dest(FILE *f, const struct ferry_migrate_stats *t)
{
	fprintf(f, "  \"dest_downtime_ms\": %.3f,\n"
		"  \"postcopy_faults\": %llu,\n"
		"  \"minor_faults\": %llu,\n"
		"  \"missing_faults\": %llu,\n"
		"  \"fault_latency_us\": {\"p50\": %.1f, \"p99\": %.1f, "
		"\"max\": %.1f},\n"
		"  \"pages_installed\": %llu,\n"
		"  \"faults_per_installed_page\": %.6f,\n"
		"  \"pmd_mapped_pct\": %.1f,\n",
		cli_ms(t->downtime_ns),
		(unsigned long long)(t->minor_faults + t->missing_faults),
		(unsigned long long)t->minor_faults,
		(unsigned long long)t->missing_faults,
		cli_us(t->fault_latency_p50_ns),
		cli_us(t->fault_latency_p99_ns),
		cli_us(t->fault_latency_max_ns),
		(unsigned long long)t->pages_installed,
		t->faults_per_installed_page,
		t->guest_bytes ? 100.0 * (double)t->pmd_mapped_bytes /
				 (double)t->guest_bytes : 0.0);
}

static void json_verdict(FILE *f, const struct ferry_verify_report *r)
{
	fprintf(f, "  \"lost\": %llu, \"torn\": %llu, \"duplicated\": "
		"%llu,\n  \"vcpu_states\": [", (unsigned long long)r->lost,
		(unsigned long long)r->torn,
		(unsigned long long)r->duplicated);
	for (unsigned int i = 0; i < r->nr_vcpus; i++)
		fprintf(f, "%s\"%s\"", i ? ", " : "",
			ferry_vcpu_mp_state_name(r->vcpu[i].mp_state));
	fprintf(f, "],\n");
}

/* Stable keys; a side that cannot see a figure leaves it out. */
static void json_migration(FILE *f, const void *arg)
{
	const struct migration *mig = arg;
	const struct dest_result *d = mig->dst;
	const struct ferry_migrate_stats *m = mig->src ? mig->src : &d->stats;

	fprintf(f, "{\n  \"mode\": \"%s\",\n", ferry_migrate_mode_name(m->mode));
	if (d && d->verified)
		fprintf(f, "  \"verdict\": \"%s\",\n",
			d->report.ok ? "pass" : "fail");
	fprintf(f, "  \"total_ms\": %.3f,\n  \"downtime_ms\": %.3f,\n",
		cli_ms(m->total_ns), cli_ms(m->downtime_ns));
	if (mig->src)
		json_source(f, mig->src);
	if (d)
		json_dest(f, &d->stats);
	if (d && d->verified)
		json_verdict(f, &d->report);
	fprintf(f, "  \"guest_bytes\": %llu\n}\n",
		(unsigned long long)m->guest_bytes);
}

static int write_json(const char *path, const struct ferry_migrate_stats *s,
		      const struct dest_result *d)
{
	struct migration mig = { .src = s, .dst = d };

	return cli_json(path, json_migration, &mig);
}

/* ---- options ------------------------------------------------------------ */

static void usage_send(FILE *out)
{
	fprintf(out,
		"usage: ferry send --to ADDR:PORT [--mem SIZE] [--vcpus N]\n"
		"                  [--workload SPEC] [--backing B] [--warmup S]\n"
		"                  [--mode precopy|postcopy|hybrid] [--at-once]\n"
		"                  [--max-downtime MS] [--channels N] [--seed N]\n"
		"                  [--json FILE] [--quiet] [--tls-psk FILE |\n"
		"                  --tls-cert FILE --tls-key FILE --tls-ca FILE]"
		"\n                  [--insecure] [--hugetlb-max PAGES]\n\n"
		"Runs the built-in workload VM, then live-migrates it to a "
		"'ferry recv'.\n\n"
		"  --to ADDR:PORT     the destination (HOST:PORT or "
		"unix:/path)\n"
		"  --mem SIZE         guest memory (default 1G)\n"
		"  --vcpus N          vCPUs (default 2)\n"
		"  --workload SPEC    what the vCPUs run (default "
		"random,read=20; see\n"
		"                     'ferry run --help')\n"
		"  --backing B        shmem, thp or hugetlb (default shmem)\n"
		"  --warmup S         seconds the VM runs before migrating "
		"(default 1)\n"
		"  --mode M           precopy, postcopy or hybrid (default "
		"hybrid: pre-copy,\n"
		"                     then post-copy if it stops converging)\n"
		"  --at-once          with --mode postcopy: no live pass; "
		"pause at once, every\n"
		"                     page comes after the resume (least "
		"data, most faults)\n"
		"  --max-downtime MS  pre-copy switches over when the rest "
		"fits (default 50)\n"
		"  --channels N       bulk channels, besides the urgent one "
		"(default 2)\n"
		"  --seed N           workload seed (default 1)\n"
		"  --json FILE        the source's figures as JSON ('-': "
		"stdout)\n"
		"  --quiet            no progress line\n"
		"%s", CLI_NET_HELP_SEND);
}

static void usage_recv(FILE *out)
{
	fprintf(out,
		"usage: ferry recv --listen ADDR:PORT [--backing B] [--run S]\n"
		"                  [--verify] [--timeout S] [--json FILE]\n"
		"                  [--tls-psk FILE | --tls-cert FILE --tls-key "
		"FILE\n                  --tls-ca FILE] [--insecure] "
		"[--max-guest SIZE]\n                  [--hello-timeout S] "
		"[--hugetlb-max PAGES]\n\n"
		"Waits for one migration, builds the VM its stream describes, "
		"runs it on,\nand (--verify) checks that no write was lost, "
		"torn or duplicated.\n\n"
		"  --listen ADDR:PORT  where to listen (port 0: any; the "
		"address is printed)\n"
		"  --backing B         guest memory here: shmem, thp or "
		"hugetlb (default:\n"
		"                      the source's; shmem and thp trade "
		"places)\n"
		"  --run S             seconds the VM runs after migrating "
		"(default 1)\n"
		"  --verify            verify memory and vCPU states after "
		"the run\n"
		"  --timeout S         give up waiting for a source after S "
		"(default 60)\n"
		"  --json FILE         the destination's figures as JSON\n"
		"%s"
		"Exit status: 0 done (and verified), 1 verification failed, "
		"2 error.\n", CLI_NET_HELP_RECV);
}

static void usage_demo(FILE *out)
{
	fprintf(out,
		"usage: ferry demo [--mem SIZE] [--vcpus N] [--workload SPEC]\n"
		"                  [--backing B] [--mode M] [--channels N]\n"
		"                  [--warmup S] [--run S] [--json FILE]\n\n"
		"Live-migrates the built-in workload VM between two processes "
		"on this\nmachine over loopback TCP: the source runs it "
		"(--warmup), migrates it\n(--mode, default hybrid), the "
		"destination runs it on (--run) and verifies\nthat no write "
		"was lost, torn or duplicated and every vCPU kept its power\n"
		"state.  Defaults: 1 GiB, 2 vCPUs, random,read=20, shmem, "
		"hybrid.\nExit status: 0 verified, 1 verification failed, "
		"2 error.\n");
}

static int parse_one(const char *cmd, int opt, const char *arg, void *opts)
{
	struct mig_opts *o = opts;

	switch (opt) {
	case 't': o->to = arg; return 0;
	case 'l': o->listen = arg; return 0;
	case 'j': o->json = arg; return 0;
	case 'q': o->quiet = true; return 0;
	case 'V': o->verify = true; return 0;
	case 'A': o->at_once = true; return 0;
	case 'c': return cli_parse_num(cmd, "--channels", arg, 1,
				   FERRY_NET_MAX_BULK, &o->channels);
	case 'D': return cli_parse_num(cmd, "--max-downtime", arg, 1, 600000,
				   &o->max_downtime_ms);
	case 'W': return cli_parse_secs(cmd, "--warmup", arg, &o->warmup_s);
	case 'r': return cli_parse_secs(cmd, "--run", arg, &o->run_s);
	case 'T': return cli_parse_secs(cmd, "--timeout", arg, &o->timeout_s);
	case 'M':
		return ferry_migrate_mode_parse(arg, &o->mode) ?
		       cli_bad(cmd, "--mode", arg, "want precopy, postcopy or "
			   "hybrid") : 0;
	case 'm': case 'n': case 'w': case 'b': case 'S':
		return cli_guest_opt(cmd, opt, arg, &o->guest);
	case 'K': case 'C': case 'Y': case 'Z': case 'I': case 'G': case 'H':
	case 'P':
		return cli_net_opt(cmd, opt, arg, &o->net);
	default:
		return 2;
	}
}

static const struct option longopts[] = {
	{ "to", required_argument, NULL, 't' },
	{ "listen", required_argument, NULL, 'l' },
	CLI_GUEST_LONGOPTS,
	{ "warmup", required_argument, NULL, 'W' },
	{ "mode", required_argument, NULL, 'M' },
	{ "max-downtime", required_argument, NULL, 'D' },
	{ "at-once", no_argument, NULL, 'A' },
	{ "channels", required_argument, NULL, 'c' },
	CLI_SEED_LONGOPT,
	{ "run", required_argument, NULL, 'r' },
	{ "timeout", required_argument, NULL, 'T' },
	{ "verify", no_argument, NULL, 'V' },
	{ "json", required_argument, NULL, 'j' },
	{ "quiet", no_argument, NULL, 'q' },
	CLI_NET_LONGOPTS,
	CLI_LONGOPTS_END,
};

static int parse_args(const struct cli_cmd *cmd, int argc, char **argv,
		      struct mig_opts *o)
{
	int ret;

	defaults(o);
	ret = cli_getopt(cmd, argc, argv, o);
	if (!ret)
		ret = cli_no_args(cmd->name, argc, argv);
	if (!ret && o->at_once && o->mode != FERRY_MODE_POSTCOPY)
		return cli_bad(cmd->name, "--at-once",
			       ferry_migrate_mode_name(o->mode),
			       "needs --mode postcopy");
	/* recv builds what the stream says; the others build --mem here. */
	if (!ret && strcmp(cmd->name, "recv") &&
	    cli_guest_check(cmd->name, &o->guest))
		return 2;
	return ret;
}

static const struct cli_cmd send_cmd = {
	.name = "send", .allowed = "tmnwbWMADcSjqKCYZIP", .longopts = longopts,
	.usage = usage_send, .one = parse_one,
};

static const struct cli_cmd recv_cmd = {
	.name = "recv", .allowed = "lbrVTj" CLI_NET_LETTERS,
	.longopts = longopts,
	.usage = usage_recv, .one = parse_one,
};

static const struct cli_cmd demo_cmd = {
	.name = "demo", .allowed = "mnwbMcWrjS", .longopts = longopts,
	.usage = usage_demo, .one = parse_one,
};

/* ---- the destination ---------------------------------------------------- */

static int run_on_and_verify(const struct mig_opts *o, struct cli_dest *rc,
			     struct dest_result *res)
{
	struct ferry_guest *g = rc->dd.gv->guest;
	int ret;

	cli_sleep(o->run_s);
	ret = ferry_guest_stop(g);
	if (!ret && o->verify) {
		ret = ferry_guest_verify(g, &res->report);
		res->verified = !ret;
	}
	if (ret)
		snprintf(res->reason, sizeof(res->reason), "verifying: %s",
			 ferry_error_msg());
	return ret;
}

/* Accept one migration, run the VM on, verify.  Fills *res. */
static void receive_one(const struct mig_opts *o, struct ferry_listener *l,
			struct dest_result *res)
{
	struct ferry_migrate_opts mo;
	struct ferry_session *s = NULL;
	struct cli_dest rc;
	struct ferry_vm vm;

	cli_dest_init(&rc, &o->guest);
	ferry_migrate_opts_init(&mo);
	res->ret = ferry_net_accept(l, (int)(o->timeout_s * 1000), &s);
	/* Other senders now hear "busy", promptly, and change nothing. */
	if (!res->ret)
		res->ret = ferry_net_listener_busy(l);
	if (!res->ret)
		res->ret = ferry_migrate_recv(s, cli_dest_ops(), &rc, &mo, &vm,
					      &res->stats);
	if (res->ret)
		snprintf(res->reason, sizeof(res->reason), "%s",
			 ferry_error_msg());
	ferry_net_session_close(s);
	if (!res->ret)
		res->ret = run_on_and_verify(o, &rc, res);
	cli_stop_guest(rc.dd.gv, &rc.resv);
}

static int dest_exit(const struct dest_result *res)
{
	if (res->ret)
		return 2;
	return res->verified && !res->report.ok ? 1 : 0;
}

int cmd_recv(int argc, char **argv)
{
	struct dest_result res = { 0 };
	struct ferry_listener *l;
	struct mig_opts o;
	int ret = parse_args(&recv_cmd, argc, argv, &o);

	if (ret)
		return ret == 1 ? 0 : ret;
	if (!o.listen)
		return cli_bad("recv", "--listen", "", "is required");
	cli_cleanup_signals();
	if (!strncmp(o.listen, "unix:/", 6))
		cli_cleanup_path(o.listen + 5);
	ret = ferry_net_listener_open(o.listen, &o.net, &l);
	if (ret) {
		cli_error("listening", ret);
		return 2;
	}
	printf("listening on %s\n", ferry_net_listener_addr(l));
	fflush(stdout);
	receive_one(&o, l, &res);
	ferry_net_listener_close(l);
	if (res.ret && !res.verified) {
		fprintf(stderr, "ferry recv: %s\n", res.reason);
		return 2;
	}
	print_dest(&res.stats, stdout);
	if (res.verified)
		print_verdict(&res.report, stdout);
	if (o.json && write_json(o.json, NULL, &res))
		return 2;
	return dest_exit(&res);
}

/* ---- the source --------------------------------------------------------- */

static int send_one(const struct mig_opts *o, const char *to,
		    struct ferry_migrate_stats *stats)
{
	struct ferry_hugetlb_resv resv = CLI_RESV_INIT;
	struct ferry_guest_vm *gv = NULL;
	struct ferry_migrate_opts mo;
	struct ferry_session *s = NULL;
	int ret;

	/*
	 * The destination first: an address nobody answers at fails here,
	 * in a moment, before a VM of --mem is built and warmed up.
	 */
	ret = ferry_net_connect(to, (unsigned int)o->channels, &o->net, &s);
	if (ret) {
		cli_error(to, ret);
		return 2;
	}
	/* The demo's source too speaks as "send". */
	ret = cli_start_guest("send", &o->guest, &gv, &resv);
	if (ret)
		goto out;
	cli_sleep(o->warmup_s);
	ferry_migrate_opts_init(&mo);
	mo.mode = o->mode;
	mo.max_downtime_ms = (unsigned int)o->max_downtime_ms;
	mo.postcopy_at_once = o->at_once;
	if (!o->quiet && isatty(STDERR_FILENO))
		mo.progress = progress_line;
	ret = ferry_migrate_send(&gv->vm, s, &mo, stats);
	if (ret) {
		cli_error("migrating", ret);
		ret = 2;
	}
out:
	ferry_net_session_close(s);
	cli_stop_guest(gv, &resv);
	return ret;
}

int cmd_send(int argc, char **argv)
{
	struct ferry_migrate_stats stats;
	struct mig_opts o;
	int ret = parse_args(&send_cmd, argc, argv, &o);

	if (ret)
		return ret == 1 ? 0 : ret;
	if (!o.to)
		return cli_bad("send", "--to", "", "is required");
	cli_cleanup_signals();
	ret = send_one(&o, o.to, &stats);
	if (ret)
		return ret;
	print_source(&stats, stdout);
	if (o.json && write_json(o.json, &stats, NULL))
		return 2;
	return 0;
}

/* ---- the demo ----------------------------------------------------------- */

/* The child: receive, run on, verify, hand the result up the pipe. */
static void demo_child(const struct mig_opts *o, struct ferry_listener *l,
		       int fd)
{
	struct dest_result res = { 0 };
	ssize_t n;

	receive_one(o, l, &res);
	n = write(fd, &res, sizeof(res));
	_exit(n == sizeof(res) ? 0 : 2);
}

/*
 * The whole result, however the pipe cuts it: a short read is more to
 * come, only end of file before the end (or an error) is a dead child.
 */
static ssize_t read_whole(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : (ssize_t)got;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

static int demo_result(int fd, pid_t child, struct dest_result *res)
{
	ssize_t n = read_whole(fd, res, sizeof(*res));
	int status;

	waitpid(child, &status, 0);
	if (n != sizeof(*res)) {
		fprintf(stderr, "ferry demo: the destination process died "
			"(status %d)\n", status);
		return 2;
	}
	if (res->ret && !res->verified) {
		fprintf(stderr, "ferry demo: destination: %s\n", res->reason);
		return 2;
	}
	return 0;
}

int cmd_demo(int argc, char **argv)
{
	struct ferry_migrate_stats stats;
	struct dest_result res;
	struct ferry_listener *l;
	struct mig_opts o;
	int fds[2], ret;
	pid_t child;

	ret = parse_args(&demo_cmd, argc, argv, &o);
	if (ret)
		return ret == 1 ? 0 : ret;
	o.verify = true;
	o.guest.backing_set = false;
	ret = ferry_net_listener_open("127.0.0.1:0", NULL, &l);
	if (ret || pipe(fds)) {
		cli_error("listening on loopback", ret ? ret : -errno);
		return 2;
	}
	printf("ferry demo: %s guest, %lu vCPUs, workload %s, %s memory, "
	       "%s migration over %s\n",
	       cli_bytes(o.guest.mem_size, (char[32]){ 0 }, 32), o.guest.vcpus,
	       o.guest.workload, ferry_mem_backing_name(o.guest.backing),
	       ferry_migrate_mode_name(o.mode), ferry_net_listener_addr(l));
	fflush(stdout);
	child = fork();
	if (child == 0)
		demo_child(&o, l, fds[1]);
	close(fds[1]);
	ret = child < 0 ? -errno : send_one(&o, ferry_net_listener_addr(l),
					    &stats);
	ferry_net_listener_close(l);
	if (ret) {
		if (child > 0)
			kill(child, SIGTERM);
		return 2;
	}
	ret = demo_result(fds[0], child, &res);
	if (ret)
		return ret;
	print_source(&stats, stdout);
	print_dest(&res.stats, stdout);
	print_verdict(&res.report, stdout);
	if (o.json && write_json(o.json, &stats, &res))
		return 2;
	return res.report.ok ? 0 : 1;
}
