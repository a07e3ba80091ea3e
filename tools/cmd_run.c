// SPDX-License-Identifier: MIT
/*
 * ferry run: run the built-in workload VM for a while, say how fast it
 * went and, with --verify, whether its memory holds every write.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "ferry/ferry.h"

struct run_opts {
	struct cli_guest guest;
	double seconds;
	unsigned long boot_off;
	bool boot_off_set;
	bool verify;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ferry run [--mem SIZE] [--vcpus N] [--workload SPEC]\n"
		"                 [--backing shmem|thp|hugetlb] [--seconds S]\n"
		"                 [--seed N] [--boot-off MASK] [--verify]\n"
		"                 [--vm kvm|builtin]\n\n"
		"Runs ferry's workload VM: a KVM guest, or ferry's built-in VM "
		"(a thread per\nvCPU), writing self-verifying 4 KiB cells of "
		"guest memory.  Prints steps/s,\nwrites/s and dirty MB/s; "
		"with --verify, checks every cell against the\nvCPUs' "
		"registers and exits 1 if any write was lost, torn or "
		"duplicated.\n\n"
		"  --mem SIZE       guest memory (default 256M)\n"
		"  --vcpus N        vCPUs, 1 to %d (default 2)\n"
		"  --workload SPEC  NAME[,option=value...] (default random)\n"
		"  --backing B      shmem, thp or hugetlb (default shmem); "
		"hugetlb grows\n"
		"                   vm.nr_hugepages as needed, and puts it\n"
		"                   back\n"
		"  --seconds S      how long to run (default 5; Ctrl-C ends "
		"early)\n"
		"  --seed N         seed of every PRNG (default 1)\n"
		"  --boot-off MASK  vCPUs powered off at boot, a bit mask "
		"(default: all\n"
		"                   but vCPU 0, which powers the others on)\n"
		"  --verify         check memory at the end\n"
		CLI_VM_HELP(" ") "\n%s",
		FERRY_GUEST_MAX_VCPUS, ferry_guest_workload_help());
}

/* --mem and --seed say what they want in words of their own here. */
static int parse_one(const char *cmd, int opt, const char *arg, void *opts)
{
	struct run_opts *o = opts;

	switch (opt) {
	case 'm':
		if (cli_parse_size(arg, &o->guest.mem_size) ||
		    !o->guest.mem_size)
			return cli_bad(cmd, "--mem", arg,
				       "want a size such as 256M");
		return 0;
	case 'S':
		return cli_parse_uint(arg, &o->guest.seed) ?
		       cli_bad(cmd, "--seed", arg, "want a number") : 0;
	case 's':
		if (cli_parse_seconds(arg, &o->seconds) || o->seconds <= 0)
			return cli_bad(cmd, "--seconds", arg,
				       "want seconds > 0");
		return 0;
	case 'o':
		o->boot_off_set = true;
		return cli_parse_uint(arg, &o->boot_off) ?
		       cli_bad(cmd, "--boot-off", arg, "want a bit mask") : 0;
	case 'v':
		o->verify = true;
		return 0;
	case 'n': case 'w': case 'b': case 'X':
		return cli_guest_opt(cmd, opt, arg, &o->guest);
	default:
		return 2;
	}
}

static const struct option longopts[] = {
	CLI_GUEST_LONGOPTS,
	{ "seconds", required_argument, NULL, 's' },
	CLI_SEED_LONGOPT,
	{ "boot-off", required_argument, NULL, 'o' },
	{ "verify", no_argument, NULL, 'v' },
	CLI_LONGOPTS_END,
};

static const struct cli_cmd run_cmd = {
	.name = "run", .allowed = "mnwbsSovX", .longopts = longopts,
	.usage = usage, .one = parse_one,
};

/* 0 to run, 1 when --help was asked (and answered), 2 for a usage error. */
static int parse_args(int argc, char **argv, struct run_opts *o)
{
	int ret;

	*o = (struct run_opts){ .guest = { .mem_size = 256ULL << 20,
		.vcpus = 2, .workload = "random", .seed = 1 },
		.seconds = 5 };
	ret = cli_getopt(&run_cmd, argc, argv, o);
	if (!ret)
		ret = cli_no_args("run", argc, argv);
	if (!ret && cli_guest_check("run", &o->guest))
		ret = 2;
	return ret;
}

static int make_config(const struct run_opts *o,
		       struct ferry_guest_config *cfg)
{
	ferry_guest_config_init(cfg);
	cfg->nr_vcpus = (unsigned int)o->guest.vcpus;
	cfg->seed = o->guest.seed;
	if (o->boot_off_set)
		cfg->boot_off_mask = o->boot_off;
	if (ferry_guest_config_set_workload(cfg, o->guest.workload)) {
		cli_error("--workload", -ENAMETOOLONG);
		return 2;
	}
	return 0;
}

/* ---- the run ------------------------------------------------------------ */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Sleep for the run, or until SIGINT / SIGTERM (blocked in every thread,
 * so they arrive here).  True if interrupted.
 */
static bool wait_run(const sigset_t *sigs, double seconds)
{
	struct timespec ts = {
		.tv_sec = (time_t)seconds,
		.tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9),
	};

	return sigtimedwait(sigs, NULL, &ts) > 0;
}

static void print_vcpus(const struct ferry_guest_stats *st)
{
	for (unsigned int i = 0; i < st->nr_vcpus; i++) {
		const struct ferry_guest_vcpu_stats *v = &st->vcpu[i];

		printf("  vcpu %-2u %-9s %12llu steps %12llu writes %12llu "
		       "reads\n", i, ferry_vcpu_mp_state_name(v->mp_state),
		       (unsigned long long)v->steps,
		       (unsigned long long)v->writes,
		       (unsigned long long)v->reads);
	}
}

static void print_stats(struct cli_vm *vm, double secs, bool stopped)
{
	struct ferry_guest_stats st;
	char bytes[32];

	cli_vm_stats(vm, &st);
	printf("ran %.2f s%s: %llu steps (%.0f steps/s), %llu writes "
	       "(%.0f writes/s), %llu reads\n", secs,
	       stopped ? " (interrupted)" : "",
	       (unsigned long long)st.steps, (double)st.steps / secs,
	       (unsigned long long)st.writes, (double)st.writes / secs,
	       (unsigned long long)st.reads);
	printf("dirtied %s: %.1f MB/s\n",
	       cli_bytes(st.bytes_dirtied, bytes, sizeof(bytes)),
	       (double)st.bytes_dirtied / 1e6 / secs);
	print_vcpus(&st);
}

static void print_bad(const struct ferry_verify_report *rep)
{
	for (unsigned int i = 0; i < rep->nr_bad; i++) {
		const struct ferry_verify_bad *b = &rep->bad[i];

		printf("  %-10s cell %llu (gpa %#llx) vcpu %d: expected "
		       "version %llu, found %llu\n",
		       ferry_verify_kind_name(b->kind),
		       (unsigned long long)b->cell,
		       (unsigned long long)b->cell * FERRY_CELL_SIZE, b->vcpu,
		       (unsigned long long)b->expected,
		       (unsigned long long)b->found);
	}
}

/* 0 when memory holds every write, 1 when not, -errno if it cannot say. */
static int verify(struct cli_vm *vm)
{
	struct ferry_verify_report rep;
	int ret = cli_vm_verify(vm, &rep);

	if (ret) {
		cli_error("verify", ret);
		return ret;
	}
	printf("verify: %s: %llu cells, %llu written; %llu lost, %llu torn, "
	       "%llu duplicated writes, %llu read errors (scan %.0f ms, "
	       "replay %.0f ms)\n", rep.ok ? "OK" : "FAILED",
	       (unsigned long long)rep.cells,
	       (unsigned long long)rep.cells_written,
	       (unsigned long long)rep.lost, (unsigned long long)rep.torn,
	       (unsigned long long)rep.duplicated,
	       (unsigned long long)rep.read_errors, rep.scan_ns / 1e6,
	       rep.replay_ns / 1e6);
	print_bad(&rep);
	return rep.ok ? 0 : 1;
}

/*
 * The vCPUs stop at the end of their step (a KVM guest's may be anywhere
 * in one when time is up), then the figures and the verifier.
 */
static int run_vm(struct cli_vm *vm, const struct run_opts *o)
{
	double start = now_s(), secs;
	bool stopped;
	sigset_t sigs;
	int ret;

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	stopped = wait_run(&sigs, o->seconds);
	secs = now_s() - start;
	ret = cli_vm_stop(vm);
	if (ret) {
		cli_error("stopping the vCPUs", ret);
		return 2;
	}
	print_stats(vm, secs, stopped);
	ret = o->verify ? verify(vm) : 0;
	return ret < 0 ? 2 : ret;	/* 1: the verifier found a fault */
}

int cmd_run(int argc, char **argv)
{
	struct ferry_hugetlb_resv resv = CLI_RESV_INIT;
	struct ferry_guest_config cfg;
	struct cli_vm vm = { 0 };
	struct run_opts o;
	sigset_t sigs;
	char size[32];
	int ret = parse_args(argc, argv, &o);

	if (ret)
		return ret == 1 ? 0 : ret;
	ret = make_config(&o, &cfg);
	if (ret)
		return ret;
	/* Blocked before any vCPU thread exists: they arrive in wait_run. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	ret = cli_start_vm("run", &o.guest, &cfg, &vm, &resv);
	if (ret)
		return ret;
	printf("ferry run: %s %s, %u vCPUs, workload %s, seed %llu, VM %s\n",
	       cli_bytes(o.guest.mem_size, size, sizeof(size)),
	       ferry_mem_backing_name(o.guest.backing), cfg.nr_vcpus,
	       o.guest.workload, (unsigned long long)cfg.seed, vm.name);
	fflush(stdout);
	ret = run_vm(&vm, &o);
	cli_free_vm(&vm, &resv);
	return ret;
}
