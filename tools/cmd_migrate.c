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
 *
 * Both sides drive a migration handle: a session lost after the commit
 * pauses the migration, and they make a new one (send dials again, recv
 * accepts again) until it resumes, the operator stops them (SIGINT,
 * SIGTERM) or --give-up runs out.  The exit status and the last line say
 * where the VM is: EXIT_MIGRATED (there, or here for recv), EXIT_FAILED
 * (send: still here, running; recv: nothing kept, the source has it),
 * EXIT_PAUSED (it was split between the two hosts when this one gave
 * up), and 1 when the verifier failed.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "ferry/ferry.h"
#include "ferry-vm/guest_vm.h"
#include "ferry/migrate.h"

enum {
	EXIT_MIGRATED = 0,
	EXIT_VERIFY_FAILED = 1,
	EXIT_FAILED = 2,
	EXIT_PAUSED = 3,
};

struct mig_opts {
	/* source */
	const char *to, *recover_to;
	unsigned long channels, max_downtime_ms;
	double warmup_s;
	enum ferry_mode mode;
	bool at_once;
	bool retry;		/* a failed migration is tried again */
	uint64_t bandwidth;
	/* destination */
	const char *listen;
	double run_s, wait_s;
	bool verify;
	/* both */
	double timeout_s, give_up_s;
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
	enum ferry_vm_location location;
	bool ran_here;			/* the source committed */
	bool verified;
	struct ferry_verify_report report;
	char vm_name[320];		/* which VM ran here */
};

static void defaults(struct mig_opts *o)
{
	*o = (struct mig_opts){ .channels = 2, .max_downtime_ms = 50,
		.warmup_s = 1, .mode = FERRY_MODE_HYBRID, .run_s = 1,
		.wait_s = 60, .timeout_s = 10,
		.guest = { .mem_size = 1ULL << 30, .vcpus = 2, .seed = 1,
			   .workload = "random,read=20",
			   .backing = FERRY_BACKING_SHMEM } };
}

/* ---- printing ----------------------------------------------------------- */

/* SIGINT, SIGTERM: the operator ends it (a cancel, then the last line). */
static atomic_int stop_signal;

static void on_stop_signal(int sig)
{
	atomic_store(&stop_signal, sig);
}

/* A signal came: cancel, once. */
static void cancel_on_signal(struct ferry_migration *m, bool *cancelled)
{
	if (atomic_load(&stop_signal) && !*cancelled) {
		ferry_migrate_cancel(m);
		*cancelled = true;
	}
}

static void catch_stop_signals(void)
{
	struct sigaction sa = { .sa_handler = on_stop_signal };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

static void progress_line(const struct ferry_progress *p, bool tty)
{
	char sent[32];

	if (!tty)
		return;
	fprintf(stderr, "\r\033[K%-10s round %-3u sent %-10s %6.2f GB/s  ",
		ferry_migrate_phase_name(p->phase), p->round,
		cli_bytes(p->bytes_sent, sent, sizeof(sent)),
		p->rate_bps / 1e9);
	if (p->paused)
		fprintf(stderr, "PAUSED %.0f s, %llu pages owed: reconnecting",
			(double)p->stalled_ns / 1e9,
			(unsigned long long)p->owed);
	else if (p->location == FERRY_VM_SPLIT)
		fprintf(stderr, "owed %llu pages", (unsigned long long)p->owed);
	else
		fprintf(stderr, "remaining %llu pages",
			(unsigned long long)p->remaining);
	if (!p->paused && p->stalled_ns >= 1000000000ULL)
		fprintf(stderr, "  stalled %.0f s",
			(double)p->stalled_ns / 1e9);
	else if (p->eta_s >= 0 && p->phase == FERRY_PHASE_PRECOPY)
		fprintf(stderr, "  eta %.1fs", p->eta_s);
	fflush(stderr);
}

/* Pauses and resumptions as lines, whatever stderr is. */
static void event_line(const struct ferry_migrate_event *ev, void *arg)
{
	const char *who = arg;

	if (ev->kind == FERRY_EVENT_PAUSED)
		fprintf(stderr, "\nferry %s: paused after the commit, %llu "
			"pages owed: %s\n", who, (unsigned long long)ev->owed,
			ev->reason);
	else if (ev->kind == FERRY_EVENT_RESUMED)
		fprintf(stderr, "ferry %s: resumed on a new session\n", who);
}

static void migrate_opts(const struct mig_opts *o, const char *who,
			 struct ferry_migrate_opts *mo)
{
	ferry_migrate_opts_init(mo);
	mo->mode = o->mode;
	mo->max_downtime_ms = (unsigned int)o->max_downtime_ms;
	mo->postcopy_at_once = o->at_once;
	mo->bandwidth_bps = o->bandwidth;
	mo->timeout_ms = (unsigned int)(o->timeout_s * 1000);
	mo->pause_timeout_ms = (unsigned int)(o->give_up_s * 1000);
	mo->event = event_line;
	mo->event_arg = (void *)who;
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
	fprintf(f, "  \"sessions\": %u,\n  \"pauses\": %u,\n"
		"  \"paused_ms\": %.3f,\n", m->sessions, m->pauses,
		cli_ms(m->paused_ns));
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

static void usage_exit(FILE *out, const char *here, const char *failed)
{
	fprintf(out,
		"Exit status (the last line says it in words):\n"
		"  0  migrated: the VM runs %s\n"
		"  1  migrated, but the verifier found a write lost, torn or "
		"duplicated\n"
		"  2  failed before the commit: %s\n"
		"  3  paused after the commit and given up (--give-up, or a "
		"signal): the\n"
		"     VM was split between the two hosts; the source held it "
		"as at switchover\n", here, failed);
}

/*
 * --timeout and --give-up, at the column of the command's other options
 * (send's descriptions start one column left of recv's).
 */
static void usage_recovery(FILE *out, bool send)
{
	const char *pad = send ? "" : " ";

	fprintf(out,
		"  --timeout S        %sa peer that shows no progress for S "
		"seconds is stalled:\n"
		"                     %sbefore the commit the migration fails, "
		"after it it pauses\n"
		"                     %s(default 10)\n"
		"  --give-up S        %send a paused migration after S "
		"seconds%s\n"
		"                     %s(default: until SIGINT or SIGTERM)\n",
		pad, pad, pad, pad,
		send ? "; send also stops\n"
		       "                     trying again after S" : "",
		pad);
}

/* The VM's and the mode's lines of send's and demo's --help. */
#define MIG_GUEST_HELP \
	"  --mem SIZE         guest memory (default 1G)\n" \
	"  --vcpus N          vCPUs (default 2)\n" \
	"  --workload SPEC    what the vCPUs run (default random,read=20; " \
	"see\n" \
	"                     'ferry run --help')\n" \
	"  --backing B        shmem, thp or hugetlb (default shmem)\n"
#define MIG_MODE_HELP \
	"  --mode M           precopy, postcopy or hybrid (default hybrid: " \
	"pre-copy,\n" \
	"                     then post-copy as soon as another round " \
	"cannot converge)\n"

static void usage_send(FILE *out)
{
	fprintf(out,
		"usage: ferry send --to ADDR:PORT [--mem SIZE] [--vcpus N]\n"
		"                  [--workload SPEC] [--backing B] [--warmup S]\n"
		"                  [--mode precopy|postcopy|hybrid] [--at-once]\n"
		"                  [--max-downtime MS] [--channels N] [--seed N]\n"
		"                  [--bandwidth RATE] [--timeout S]\n"
		"                  [--give-up S] [--recover-to ADDR:PORT]\n"
		"                  [--json FILE] [--quiet] [--tls-psk FILE |\n"
		"                  --tls-cert FILE --tls-key FILE --tls-ca FILE]"
		"\n                  [--insecure] [--hugetlb-max PAGES]\n"
		"                  [--vm kvm|builtin]\n\n"
		"Runs the workload VM, then live-migrates it to a "
		"'ferry recv'.\nNo page goes before the destination accepts "
		"the stream; a session lost\nafter the commit pauses the "
		"migration and send dials again until it\nresumes.  A "
		"migration that fails before the commit leaves the VM\n"
		"running here: send tries again every 2 s (unless the "
		"destination refused\nthe stream for good: another format "
		"version, a machine it cannot hold).\nOnly SIGINT, SIGTERM "
		"or --give-up end the VM.\n\n"
		"  --to ADDR:PORT     the destination (HOST:PORT or "
		"unix:/path)\n"
		MIG_GUEST_HELP
		"  --warmup S         seconds the VM runs before migrating "
		"(default 1)\n"
		MIG_MODE_HELP
		"  --at-once          with --mode postcopy: no live pass; "
		"pause at once, every\n"
		"                     page comes after the resume (least "
		"data, most faults)\n"
		"  --max-downtime MS  pre-copy switches over when the rest "
		"fits (default 50)\n"
		"  --channels N       bulk channels, besides the urgent one "
		"(default 2)\n"
		"  --seed N           workload seed (default 1)\n"
		"  --bandwidth RATE   bytes per second on the bulk channels "
		"(100M, 1G; default:\n"
		"                     no limit)\n"
		CLI_VM_HELP("   "));
	usage_recovery(out, true);
	fprintf(out,
		"  --recover-to ADDR  dial this address after a break "
		"instead of --to: the\n"
		"                     destination elsewhere, or a new one, "
		"which then receives\n"
		"                     the paused VM whole\n"
		"  --json FILE        the source's figures as JSON ('-': "
		"stdout, the other\n"
		"                     lines then on stderr)\n"
		"  --quiet            no progress line\n"
		"%s", CLI_NET_HELP_SEND);
	usage_exit(out, "at the destination", "the VM runs here, whole, "
		   "and stops with this command");
}

static void usage_recv(FILE *out)
{
	fprintf(out,
		"usage: ferry recv --listen ADDR:PORT [--backing B] [--run S]\n"
		"                  [--verify] [--wait S] [--timeout S]\n"
		"                  [--give-up S] [--json FILE]\n"
		"                  [--tls-psk FILE | --tls-cert FILE --tls-key "
		"FILE\n                  --tls-ca FILE] [--insecure] "
		"[--max-guest SIZE]\n                  [--hello-timeout S] "
		"[--hugetlb-max PAGES]\n                  [--vm kvm|builtin]\n\n"
		"Waits for one migration, builds the VM its stream describes "
		"(a KVM guest\nor the built-in VM, as the source's), "
		"runs it on,\nand (--verify) checks that no write was lost, "
		"torn or duplicated.  A\nsession lost after the commit pauses "
		"the migration (vCPUs that need a\nmissing page wait) and "
		"recv accepts a new one on the same address.\n\n"
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
		"  --wait S            give up waiting for a source after S "
		"(default 60)\n"
		"  --vm kvm|builtin    refuse a stream of the other kind "
		"(default: either)\n");
	usage_recovery(out, false);
	fprintf(out,
		"  --json FILE         the destination's figures as JSON "
		"('-': stdout, the\n"
		"                      other lines then on stderr)\n"
		"%s", CLI_NET_HELP_RECV);
	usage_exit(out, "here", "nothing was kept here; the source runs "
		   "the VM");
}

static void usage_demo(FILE *out)
{
	fprintf(out,
		"usage: ferry demo [--mem SIZE] [--vcpus N] [--workload SPEC]\n"
		"                  [--backing B] [--mode M] [--channels N]\n"
		"                  [--warmup S] [--run S] [--seed N] "
		"[--json FILE]\n"
		"                  [--vm kvm|builtin]\n\n"
		"Live-migrates the workload VM between two processes on this "
		"machine over\nloopback TCP: the source runs it (--warmup), "
		"migrates it (--mode), the\ndestination runs it on (--run) "
		"and verifies that no write was lost, torn\nor duplicated "
		"and that every vCPU kept its power state.  The summary says\n"
		"which VM ran, the mode, total time, downtime, rounds, bytes, "
		"post-copy\nfaults and their latency, and the verdict.\n\n"
		MIG_GUEST_HELP
		MIG_MODE_HELP
		"  --channels N       bulk channels, besides the urgent one "
		"(default 2)\n"
		"  --warmup S         seconds the VM runs before migrating "
		"(default 1)\n"
		"  --run S            seconds the VM runs after migrating "
		"(default 1)\n"
		"  --seed N           workload seed (default 1)\n"
		"  --json FILE        both sides' figures as JSON ('-': "
		"stdout, the other\n"
		"                     lines then on stderr)\n"
		CLI_VM_HELP("   ")
		"Exit status: 0 verified, 1 verification failed, 2 error, "
		"3 paused and\ngiven up.\n");
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
	case 'g': return cli_parse_secs(cmd, "--give-up", arg, &o->give_up_s);
	case 'U': return cli_parse_secs(cmd, "--wait", arg, &o->wait_s);
	case 'R': o->recover_to = arg; return 0;
	case 'B':
		return cli_parse_size(arg, &o->bandwidth) ?
		       cli_bad(cmd, "--bandwidth", arg, "want bytes per "
			       "second, such as 100M") : 0;
	case 'M':
		return ferry_migrate_mode_parse(arg, &o->mode) ?
		       cli_bad(cmd, "--mode", arg, "want precopy, postcopy or "
			   "hybrid") : 0;
	case 'm': case 'n': case 'w': case 'b': case 'S': case 'X':
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
	{ "give-up", required_argument, NULL, 'g' },
	{ "wait", required_argument, NULL, 'U' },
	{ "recover-to", required_argument, NULL, 'R' },
	{ "bandwidth", required_argument, NULL, 'B' },
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
	if (!ret)
		cli_json_claim_stdout(o->json);
	return ret;
}

static const struct cli_cmd send_cmd = {
	.name = "send", .allowed = "tmnwbWMADcSjqTgRBKCYZIPX",
	.longopts = longopts,
	.usage = usage_send, .one = parse_one,
};

static const struct cli_cmd recv_cmd = {
	.name = "recv", .allowed = "lbrVTjgUX" CLI_NET_LETTERS,
	.longopts = longopts,
	.usage = usage_recv, .one = parse_one,
};

static const struct cli_cmd demo_cmd = {
	.name = "demo", .allowed = "mnwbMcWrjSX", .longopts = longopts,
	.usage = usage_demo, .one = parse_one,
};

/* ---- the destination ---------------------------------------------------- */

static int run_on_and_verify(const struct mig_opts *o, struct cli_dest *rc,
			     struct dest_result *res)
{
	int ret;

	snprintf(res->vm_name, sizeof(res->vm_name), "%s", rc->vm.name);
	cli_sleep(o->run_s);
	ret = cli_vm_stop(&rc->vm);
	if (!ret && o->verify) {
		ret = cli_vm_verify(&rc->vm, &res->report);
		res->verified = !ret;
	}
	if (ret)
		snprintf(res->reason, sizeof(res->reason), "verifying: %s",
			 ferry_error_msg());
	return ret;
}

/* The first session: up to --wait, a signal ending the wait early. */
static int accept_first(const struct mig_opts *o, struct ferry_listener *l,
			struct ferry_session **s)
{
	double left = o->wait_s;
	int ret = -ETIMEDOUT;

	while (left > 0 && !atomic_load(&stop_signal) && ret == -ETIMEDOUT) {
		int ms = left > 0.2 ? 200 : (int)(left * 1000) + 1;

		ret = ferry_net_accept(l, ms, s);
		left -= 0.2;
	}
	if (ret == -ETIMEDOUT)
		ret = ferry_error_set(-ETIMEDOUT, "no source within %.0f s",
				      o->wait_s);
	return ret;
}

/* Until it ends: a paused migration gets the next session accepted. */
static int recv_loop(struct ferry_listener *l, struct ferry_migration *m)
{
	bool cancelled = false;
	int ret;

	while ((ret = ferry_migrate_wait(m, 100)) == -EINPROGRESS) {
		struct ferry_progress p;
		struct ferry_session *s;

		cancel_on_signal(m, &cancelled);
		ferry_migrate_progress(m, &p);
		if (p.paused && !ferry_net_accept(l, 200, &s))
			ferry_migrate_reconnect(m, s);
	}
	return ret;
}

static void dest_event(const struct ferry_migrate_event *ev, void *arg)
{
	bool *ran = arg;

	if (ev->kind == FERRY_EVENT_DEST_RUNNING)
		*ran = true;
	event_line(ev, "recv");
}

/* Accept one migration, run the VM on, verify.  Fills *res. */
static void receive_one(const struct mig_opts *o, struct ferry_listener *l,
			struct dest_result *res)
{
	struct ferry_migration *m = NULL;
	struct ferry_migrate_opts mo;
	struct ferry_session *s;
	struct cli_dest rc;

	cli_dest_init(&rc, &o->guest);
	migrate_opts(o, "recv", &mo);
	mo.event = dest_event;
	mo.event_arg = &res->ran_here;
	res->ret = accept_first(o, l, &s);
	/* Other senders now hear "busy", promptly, and change nothing. */
	if (!res->ret)
		res->ret = ferry_net_listener_busy(l);
	if (!res->ret)
		res->ret = ferry_migrate_start_dest(s, cli_dest_ops(), &rc,
						    &mo, &m);
	if (!res->ret)
		res->ret = recv_loop(l, m);
	if (res->ret)
		snprintf(res->reason, sizeof(res->reason), "%s",
			 ferry_error_msg());
	res->location = m ? ferry_migrate_vm_location(m) : FERRY_VM_THERE;
	if (m)
		ferry_migrate_get_stats(m, &res->stats);
	ferry_migrate_destroy(m);	/* a VM that came whole stays */
	if (!res->ret)
		res->ret = run_on_and_verify(o, &rc, res);
	cli_free_vm(&rc.vm, &rc.resv);
}

/* The last line: where the VM is, and the exit status that says so. */
static int dest_exit(const struct dest_result *res)
{
	if (!res->ret && res->verified && !res->report.ok) {
		printf("ferry recv: migrated; the VM ran here and FAILED "
		       "verification\n");
		return EXIT_VERIFY_FAILED;
	}
	if (!res->ret) {
		printf("ferry recv: migrated: the VM ran here%s\n",
		       res->verified ? " and verified" : "");
		return EXIT_MIGRATED;
	}
	if (res->ran_here) {
		fprintf(stderr, "ferry recv: given up after the commit: %s; "
			"the source holds the VM as at switchover\n",
			res->reason);
		return EXIT_PAUSED;
	}
	fprintf(stderr, "ferry recv: failed: %s; nothing was kept here, the "
		"source runs the VM\n", res->reason);
	return EXIT_FAILED;
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
		return EXIT_FAILED;
	}
	printf("listening on %s\n", ferry_net_listener_addr(l));
	fflush(stdout);
	catch_stop_signals();
	receive_one(&o, l, &res);
	ferry_net_listener_close(l);
	if (!res.ret) {
		printf("vm          %s\n", res.vm_name);
		print_dest(&res.stats, stdout);
		if (res.verified)
			print_verdict(&res.report, stdout);
		if (o.json && write_json(o.json, NULL, &res))
			return EXIT_FAILED;
	}
	return dest_exit(&res);
}

/* ---- the source --------------------------------------------------------- */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * Until it ends, with the progress line on a terminal: a paused migration
 * gets a new session, dialled once a second (--recover-to, else --to).
 */
static int send_loop(const struct mig_opts *o, const char *to,
		     struct ferry_migration *m)
{
	bool tty = !o->quiet && isatty(STDERR_FILENO), cancelled = false;
	uint64_t next_try = 0;
	int ret;

	while ((ret = ferry_migrate_wait(m, 100)) == -EINPROGRESS) {
		struct ferry_progress p;
		struct ferry_session *s;

		cancel_on_signal(m, &cancelled);
		ferry_migrate_progress(m, &p);
		progress_line(&p, tty);
		if (!p.paused || cancelled || now_ms() < next_try)
			continue;
		next_try = now_ms() + 1000;
		if (!ferry_net_connect(o->recover_to ? o->recover_to : to,
				       (unsigned int)o->channels, &o->net, &s))
			ferry_migrate_reconnect(m, s);
	}
	if (tty)
		fputc('\n', stderr);
	return ret;
}

/* What the source's side came to: the status, and the last line's words. */
struct send_result {
	int ret;
	char reason[400];
	enum ferry_vm_location location;
	bool started;		/* a VM was built here */
	uint64_t owed;
	struct ferry_migrate_stats stats;
	char vm_name[320];	/* which VM ran here */
};

/* One migration of the running VM: res says how it ended. */
static void migrate_once(const struct mig_opts *o, const char *to,
			 struct cli_vm *vm, struct send_result *res)
{
	struct ferry_migration *m = NULL;
	struct ferry_migrate_opts mo;
	struct ferry_session *s = NULL;
	struct ferry_progress p;

	migrate_opts(o, "send", &mo);
	res->ret = ferry_net_connect(to, (unsigned int)o->channels, &o->net,
				     &s);
	if (!res->ret)
		res->ret = ferry_migrate_start(vm->vm, s, &mo, &m);
	if (!res->ret)
		res->ret = send_loop(o, to, m);
	if (res->ret)
		snprintf(res->reason, sizeof(res->reason), "%s",
			 ferry_error_msg());
	res->location = FERRY_VM_HERE;
	if (m) {
		res->location = ferry_migrate_vm_location(m);
		ferry_migrate_progress(m, &p);
		res->owed = p.owed;
		ferry_migrate_get_stats(m, &res->stats);
	}
	ferry_migrate_destroy(m);
}

/*
 * A destination that refused the stream for good (another format version,
 * a machine it cannot hold): trying again changes nothing.
 */
static bool refused_for_good(int err)
{
	return err == -EPROTO || err == -EINVAL || err == -E2BIG ||
	       err == -EOPNOTSUPP;
}

/*
 * Failed before the commit: the VM runs here, whole.  Try again (every
 * RETRY_S, a new session and a new migration) rather than end it, until
 * the operator stops (a signal) or --give-up runs out.
 */
#define RETRY_S	2

static bool try_again(const struct mig_opts *o, const struct send_result *res,
		      uint64_t started_ms)
{
	if (!res->ret || res->location != FERRY_VM_HERE || !o->retry ||
	    refused_for_good(res->ret) || atomic_load(&stop_signal))
		return false;
	if (o->give_up_s > 0 &&
	    now_ms() - started_ms + RETRY_S * 1000 > o->give_up_s * 1000)
		return false;
	fprintf(stderr, "ferry send: failed: %s; the VM runs here, whole: "
		"trying again in %d s (SIGINT or SIGTERM to stop)\n",
		res->reason, RETRY_S);
	for (int i = 0; i < RETRY_S * 10 && !atomic_load(&stop_signal); i++)
		usleep(100000);
	return !atomic_load(&stop_signal);
}

static void send_one(const struct mig_opts *o, const char *to,
		     struct send_result *res)
{
	struct ferry_hugetlb_resv resv = CLI_RESV_INIT;
	struct cli_vm vm = { 0 };
	uint64_t started_ms;

	/*
	 * The destination first: an address nobody answers at, or keys
	 * that cannot be read, fail here in a moment, before a VM of --mem
	 * is built and warmed up.
	 */
	res->location = FERRY_VM_HERE;
	res->ret = ferry_net_probe(to, &o->net);
	if (res->ret) {
		snprintf(res->reason, sizeof(res->reason), "%s",
			 ferry_error_msg());
		return;
	}
	/* The demo's source too speaks as "send". */
	res->ret = cli_start_vm("send", &o->guest, NULL, &vm, &resv);
	if (res->ret) {
		snprintf(res->reason, sizeof(res->reason), "starting the VM");
		return;
	}
	res->started = true;
	snprintf(res->vm_name, sizeof(res->vm_name), "%s", vm.name);
	cli_sleep(o->warmup_s);
	started_ms = now_ms();
	do
		migrate_once(o, to, &vm, res);
	while (try_again(o, res, started_ms));
	cli_free_vm(&vm, &resv);
}

/* The last line: where the VM is, and the exit status that says so. */
static int send_exit(const struct send_result *res)
{
	if (!res->ret) {
		printf("ferry send: migrated: the VM runs at the "
		       "destination\n");
		return EXIT_MIGRATED;
	}
	if (res->location == FERRY_VM_SPLIT) {
		fprintf(stderr, "ferry send: paused here, awaiting recovery, "
			"given up: %s; its vCPUs were the destination's, its "
			"state at switchover and %llu pages owed were held "
			"here until this command ended\n", res->reason,
			(unsigned long long)res->owed);
		return EXIT_PAUSED;
	}
	if (!res->started) {
		fprintf(stderr, "ferry send: %s; no VM was built\n",
			res->reason);
		return EXIT_FAILED;
	}
	fprintf(stderr, "ferry send: failed: %s; the VM was running here, "
		"whole, and stops with this command\n", res->reason);
	return EXIT_FAILED;
}

int cmd_send(int argc, char **argv)
{
	struct send_result res = { 0 };
	struct mig_opts o;
	int ret = parse_args(&send_cmd, argc, argv, &o);

	if (ret)
		return ret == 1 ? 0 : ret;
	if (!o.to)
		return cli_bad("send", "--to", "", "is required");
	o.retry = true;		/* the VM is never ended over a failure */
	catch_stop_signals();
	send_one(&o, o.to, &res);
	if (!res.ret) {
		printf("vm          %s\n", res.vm_name);
		print_source(&res.stats, stdout);
		if (o.json && write_json(o.json, &res.stats, NULL))
			return EXIT_FAILED;
	}
	return send_exit(&res);
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
	_exit(n == sizeof(res) ? 0 : EXIT_FAILED);
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
		return EXIT_FAILED;
	}
	if (res->ret && !res->verified) {
		fprintf(stderr, "ferry demo: destination: %s\n", res->reason);
		return EXIT_FAILED;
	}
	return 0;
}

int cmd_demo(int argc, char **argv)
{
	struct send_result sent = { 0 };
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
		return EXIT_FAILED;
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
	catch_stop_signals();
	if (child < 0) {
		sent.ret = -errno;
		snprintf(sent.reason, sizeof(sent.reason), "fork: %s",
			 strerror(errno));
	} else {
		send_one(&o, ferry_net_listener_addr(l), &sent);
	}
	ferry_net_listener_close(l);
	if (sent.ret) {
		if (child > 0)
			kill(child, SIGTERM);
		return send_exit(&sent);
	}
	ret = demo_result(fds[0], child, &res);
	if (ret)
		return ret;
	printf("vm          source: %s\n            destination: %s\n",
	       sent.vm_name, res.vm_name);
	print_source(&sent.stats, stdout);
	print_dest(&res.stats, stdout);
	print_verdict(&res.report, stdout);
	if (o.json && write_json(o.json, &sent.stats, &res))
		return EXIT_FAILED;
	return res.report.ok ? EXIT_MIGRATED : EXIT_VERIFY_FAILED;
}
