// SPDX-License-Identifier: MIT
/*
 * ferry snapshot / restore: the built-in workload VM into a file and back.
 *
 *   ferry snapshot --out FILE ...   runs a VM, then saves it (paused, or
 *                                   --live while it runs on)
 *   ferry restore FILE ...          builds the VM the file describes and
 *                                   runs it (eagerly or lazily, with a
 *                                   working set), or N clones of it
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "ferry/ferry.h"
#include "ferry-vm/guest_vm.h"
#include "ferry/snapshot.h"
#include "ferry/hist.h"

#define MAX_CLONES	64

struct snap_opts {
	/* snapshot */
	const char *out;
	double seconds;
	bool live, sync;
	/* restore */
	const char *file;
	enum ferry_restore_mode mode;
	const char *record_ws, *prefetch_ws;
	bool prefetch_async;
	unsigned long clones;
	double run_s;
	bool verify, quiet;
	bool eager_set, lazy_set;	/* to refuse both */
	/* both: the VM (restore takes only its backing) */
	struct cli_guest guest;
	const char *json;
};

static void defaults(struct snap_opts *o)
{
	*o = (struct snap_opts){ .seconds = 1, .mode = FERRY_RESTORE_LAZY,
		.run_s = 1,
		.guest = { .mem_size = 256ULL << 20, .vcpus = 2, .seed = 1,
			   .workload = "random,read=20",
			   .backing = FERRY_BACKING_SHMEM } };
}

/* ---- options ------------------------------------------------------------ */

static void usage_snapshot(FILE *out)
{
	fprintf(out,
		"usage: ferry snapshot --out FILE [--mem SIZE] [--vcpus N]\n"
		"                      [--workload SPEC] [--backing B] "
		"[--seconds S]\n"
		"                      [--seed N] [--live] [--sync] "
		"[--json FILE]\n"
		"                      [--vm kvm|builtin]\n\n"
		"Runs the workload VM for a while, then saves it to "
		"FILE: vCPU\nstates, then every page the guest holds, at fixed "
		"offsets of a sparse file\n(zero and never-touched pages are "
		"holes).  The VM is paused while it is\nsaved; with --live it "
		"runs on, and the file is still the VM of one\ninstant: pages "
		"are write-protected, and a guest write to one not yet\nsaved "
		"waits until it is.  Prints how long the vCPUs paused and, "
		"live, how\nmany writes waited and for how long.\n\n"
		"  --out FILE       the snapshot to write (replaced)\n"
		"  --mem SIZE       guest memory (default 256M)\n"
		"  --vcpus N        vCPUs (default 2)\n"
		"  --workload SPEC  what the vCPUs run (default random,read=20;"
		" see\n"
		"                   'ferry run --help')\n"
		"  --backing B      shmem, thp or hugetlb (default shmem)\n"
		"  --seconds S      how long the VM runs before the snapshot "
		"(default 1)\n"
		"  --seed N         workload seed (default 1)\n"
		"  --live           save while the VM runs (userfaultfd "
		"write-protect)\n"
		"  --sync           fdatasync the file before exiting\n"
		"  --json FILE      the figures as JSON ('-': stdout, the "
		"other lines then\n"
		"                   on stderr)\n"
		CLI_VM_HELP(" ")
		"Exit status: 0 saved, 2 error.\n");
}

static void usage_restore(FILE *out)
{
	fprintf(out,
		"usage: ferry restore FILE [--eager | --lazy] [--backing B]\n"
		"                     [--record-ws F] [--prefetch-ws F "
		"[--prefetch-async]]\n"
		"                     [--clone N] [--run S] [--verify] "
		"[--json FILE]\n"
		"                     [--quiet] [--vm kvm|builtin]\n\n"
		"Builds the VM a snapshot describes (a KVM guest or the "
		"built-in VM, as\nsaved), puts its vCPU states back (each "
		"powered on or off as it was) and\nruns it.  Every record and "
		"page is checked against its checksum; a\ndamaged file is "
		"refused.\n\n"
		"  --eager           read every page, then resume\n"
		"  --lazy            resume at once and read pages as the "
		"guest touches\n"
		"                    them, the rest in the background, near "
		"recent faults\n"
		"                    first (default)\n"
		"  --record-ws F     lazy: write the pages the guest touched "
		"during --run,\n"
		"                    in order, to F (the background reader "
		"waits until\n"
		"                    the run ends, so every first touch is "
		"seen)\n"
		"  --prefetch-ws F   lazy: load the pages F lists first, in "
		"bulk, before\n"
		"                    the vCPUs resume\n"
		"  --prefetch-async  ... or while they run, ahead of the rest\n"
		"  --clone N         load the snapshot once into shared memory "
		"and start N\n"
		"                    clones of it, each writing into pages of "
		"its own;\n"
		"                    reports the memory they share and their "
		"own\n"
		"  --backing B       guest memory here: shmem, thp or hugetlb "
		"(default:\n"
		"                    the snapshot's; shmem and thp trade "
		"places)\n"
		"  --run S           seconds the VM runs (default 1)\n"
		"  --verify          verify memory and vCPU states after the "
		"run\n"
		"  --json FILE       the figures as JSON ('-': stdout, the "
		"other lines then\n"
		"                    on stderr)\n"
		"  --quiet           no progress line (shown on a terminal "
		"while pages\n"
		"                    are owed)\n"
		"  --vm kvm|builtin  refuse a snapshot of the other kind "
		"(default: either)\n"
		"Exit status: 0 done (and verified), 1 verification failed, "
		"2 error.\n");
}

static int parse_flag(int opt, struct snap_opts *o)
{
	switch (opt) {
	case 'L': o->live = true; return 0;
	case 'Y': o->sync = true; return 0;
	case 'E': o->mode = FERRY_RESTORE_EAGER; o->eager_set = true; return 0;
	case 'Z': o->mode = FERRY_RESTORE_LAZY; o->lazy_set = true; return 0;
	case 'A': o->prefetch_async = true; return 0;
	case 'V': o->verify = true; return 0;
	case 'q': o->quiet = true; return 0;
	default: return 2;
	}
}

static int parse_one(const char *cmd, int opt, const char *arg, void *opts)
{
	struct snap_opts *o = opts;

	switch (opt) {
	case 'o': o->out = arg; return 0;
	case 'j': o->json = arg; return 0;
	case 'R': o->record_ws = arg; return 0;
	case 'P': o->prefetch_ws = arg; return 0;
	case 'C': return cli_parse_num(cmd, "--clone", arg, 1, MAX_CLONES,
				   &o->clones);
	case 's': return cli_parse_secs(cmd, "--seconds", arg, &o->seconds);
	case 'r': return cli_parse_secs(cmd, "--run", arg, &o->run_s);
	case 'm': case 'n': case 'w': case 'b': case 'S': case 'X':
		return cli_guest_opt(cmd, opt, arg, &o->guest);
	default:
		return parse_flag(opt, o);
	}
}

static const struct option longopts[] = {
	{ "out", required_argument, NULL, 'o' },
	CLI_GUEST_LONGOPTS,
	{ "seconds", required_argument, NULL, 's' },
	CLI_SEED_LONGOPT,
	{ "live", no_argument, NULL, 'L' },
	{ "sync", no_argument, NULL, 'Y' },
	{ "eager", no_argument, NULL, 'E' },
	{ "lazy", no_argument, NULL, 'Z' },
	{ "record-ws", required_argument, NULL, 'R' },
	{ "prefetch-ws", required_argument, NULL, 'P' },
	{ "prefetch-async", no_argument, NULL, 'A' },
	{ "clone", required_argument, NULL, 'C' },
	{ "run", required_argument, NULL, 'r' },
	{ "verify", no_argument, NULL, 'V' },
	{ "json", required_argument, NULL, 'j' },
	{ "quiet", no_argument, NULL, 'q' },
	CLI_LONGOPTS_END,
};

static const struct cli_cmd snapshot_cmd = {
	.name = "snapshot", .allowed = "omnwbsSLYjX", .longopts = longopts,
	.usage = usage_snapshot, .one = parse_one,
};

static const struct cli_cmd restore_cmd = {
	.name = "restore", .allowed = "bEZRPACrVjqX", .longopts = longopts,
	.usage = usage_restore, .one = parse_one,
};

/* 0 to go on, 1 after --help, 2 for a usage error.  restore: FILE. */
static int parse_args(const struct cli_cmd *cmd, int argc, char **argv,
		      struct snap_opts *o)
{
	int ret;

	defaults(o);
	ret = cli_getopt(cmd, argc, argv, o);
	if (ret)
		return ret;
	if (optind < argc && cmd == &restore_cmd)
		o->file = argv[optind++];
	ret = cli_no_args(cmd->name, argc, argv);
	if (!ret)
		cli_json_claim_stdout(o->json);
	return ret;
}

static void print_vcpus(const struct ferry_verify_report *r, FILE *out)
{
	fprintf(out, "vCPUs      ");
	for (unsigned int i = 0; i < r->nr_vcpus; i++)
		fprintf(out, " %u:%s", i,
			ferry_vcpu_mp_state_name(r->vcpu[i].mp_state));
	fputc('\n', out);
}

/* Verify a paused guest and print the verdict; 1 if it failed. */
static int verify(struct cli_vm *vm, const char *who)
{
	struct ferry_verify_report r;
	int ret = cli_vm_verify(vm, &r);

	if (ret) {
		cli_error("verifying", ret);
		return 2;
	}
	print_vcpus(&r, stdout);
	printf("verify%s%-5s %s: %llu cells written, %llu lost, %llu torn, "
	       "%llu duplicated, %llu read errors\n", who[0] ? " " : "", who,
	       r.ok ? "PASS" : "FAIL", (unsigned long long)r.cells_written,
	       (unsigned long long)r.lost, (unsigned long long)r.torn,
	       (unsigned long long)r.duplicated,
	       (unsigned long long)r.read_errors);
	return r.ok ? 0 : 1;
}

/* ---- ferry snapshot ----------------------------------------------------- */

static void print_save(const struct snap_opts *o,
		       const struct ferry_snapshot_stats *s)
{
	char data[32], size[32], disk[32];
	double secs = (double)s->total_ns / 1e9;

	printf("snapshot    %s: %llu pages (%s), %llu zero pages left as "
	       "holes; %.3f s, %.2f GB/s\n", o->out,
	       (unsigned long long)s->pages,
	       cli_bytes(s->bytes, data, sizeof(data)),
	       (unsigned long long)s->zero_pages, secs,
	       secs > 0 ? (double)s->bytes / secs / 1e9 : 0);
	printf("file        %s long, %s on disk (sparse)\n",
	       cli_bytes(s->file_size, size, sizeof(size)),
	       cli_bytes(s->file_blocks, disk, sizeof(disk)));
	printf("pause       %.3f ms (vCPU state%s)\n", cli_ms(s->pause_ns),
	       o->live ? ", write protection armed" : ", every page");
	if (o->live)
		printf("held writes %llu, %.3f ms in all, max %.0f us, p99 "
		       "%.0f us; %llu pages saved ahead of the sweep\n",
		       (unsigned long long)s->held_writes,
		       cli_ms(s->held_total_ns), cli_us(s->held_max_ns),
		       cli_us(s->held_p99_ns),
		       (unsigned long long)s->saved_on_fault);
}

/* What a save did, and how it was asked. */
struct save_report {
	const struct snap_opts *o;
	const struct ferry_snapshot_stats *st;
};

static void json_save(FILE *f, const void *arg)
{
	const struct save_report *rep = arg;
	const struct snap_opts *o = rep->o;
	const struct ferry_snapshot_stats *s = rep->st;

	fprintf(f, "{\n  \"live\": %s,\n  \"total_ms\": %.3f,\n"
		"  \"pause_ms\": %.3f,\n  \"pages\": %llu,\n"
		"  \"zero_pages\": %llu,\n  \"bytes\": %llu,\n"
		"  \"file_size\": %llu,\n  \"file_blocks_bytes\": %llu,\n"
		"  \"held_writes\": %llu,\n  \"held_total_ms\": %.3f,\n"
		"  \"held_max_us\": %.1f,\n  \"held_p99_us\": %.1f,\n"
		"  \"saved_on_fault\": %llu\n}\n", o->live ? "true" : "false",
		cli_ms(s->total_ns), cli_ms(s->pause_ns),
		(unsigned long long)s->pages,
		(unsigned long long)s->zero_pages,
		(unsigned long long)s->bytes,
		(unsigned long long)s->file_size,
		(unsigned long long)s->file_blocks,
		(unsigned long long)s->held_writes, cli_ms(s->held_total_ns),
		cli_us(s->held_max_ns), cli_us(s->held_p99_ns),
		(unsigned long long)s->saved_on_fault);
}

/*
 * The output, checked before any VM is built: the save writes a new file
 * beside it and renames it over the target only once it is whole, so
 * the target's folder must take a new file (tried for real: a read-only
 * or full file system, or a folder that is not there, fails at once),
 * and an existing target must be a file it may replace.
 */
static int check_out(const char *path)
{
	char tmp[PATH_MAX];
	const char *slash = strrchr(path, '/');
	struct stat st;
	int fd, len = slash ? (int)(slash - path) : 1;

	if (!stat(path, &st) && !S_ISREG(st.st_mode)) {
		fprintf(stderr, "ferry snapshot: --out %s: not a regular "
			"file\n", path);
		return -1;
	}
	snprintf(tmp, sizeof(tmp), "%.*s/.ferry-check-XXXXXX",
		 slash ? len : 1, slash ? path : ".");
	fd = mkstemp(tmp);
	if (fd < 0) {
		fprintf(stderr, "ferry snapshot: --out %s: cannot write "
			"beside it: %s\n", path, strerror(errno));
		return -1;
	}
	close(fd);
	unlink(tmp);
	return 0;
}

static int save_vm(const struct snap_opts *o, struct cli_vm *vm,
		   struct ferry_snapshot_stats *st)
{
	struct ferry_snapshot_opts so = { .live = o->live, .sync = o->sync };
	/* Beside the target, then renamed: a failed save leaves nothing. */
	int ret = ferry_snapshot_save_path(vm->vm, o->out, &so, st);

	if (ret) {
		cli_error("saving the snapshot", ret);
		return 2;
	}
	return 0;
}

int cmd_snapshot(int argc, char **argv)
{
	struct ferry_hugetlb_resv resv = CLI_RESV_INIT;
	struct ferry_snapshot_stats st;
	struct save_report rep = { .st = &st };
	struct cli_vm vm = { 0 };
	struct snap_opts o;
	char size[32];
	int ret = parse_args(&snapshot_cmd, argc, argv, &o);

	if (ret)
		return ret == 1 ? 0 : ret;
	if (!o.out)
		return cli_bad("snapshot", "--out", "", "is required");
	if (cli_guest_check("snapshot", &o.guest))
		return 2;
	if (check_out(o.out))
		return 2;
	ret = cli_start_vm("snapshot", &o.guest, NULL, &vm, &resv);
	if (!ret) {
		printf("ferry snapshot: %s %s, %lu vCPUs, workload %s, ran "
		       "%.2f s, VM %s\n",
		       cli_bytes(o.guest.mem_size, size, sizeof(size)),
		       ferry_mem_backing_name(o.guest.backing), o.guest.vcpus,
		       o.guest.workload, o.seconds, vm.name);
		fflush(stdout);
		cli_sleep(o.seconds);
		ret = save_vm(&o, &vm, &st);
	}
	cli_free_vm(&vm, &resv);
	if (ret)
		return ret;
	print_save(&o, &st);
	rep.o = &o;
	return o.json ? cli_json(o.json, json_save, &rep) : 0;
}

/* ---- ferry restore ------------------------------------------------------ */

static void print_info(const struct snap_opts *o,
		       const struct ferry_snapshot_info *in)
{
	char size[32], data[32];
	const struct ferry_wire_stream *s = &in->stream;

	printf("ferry restore: %s: %s %s, %u vCPUs; %llu pages (%s), %llu "
	       "zero pages, %llu extents\n", o->file,
	       cli_bytes(cli_stream_bytes(s), size, sizeof(size)),
	       ferry_mem_backing_name(s->regions[0].backing), s->nr_vcpus,
	       (unsigned long long)in->pages,
	       cli_bytes(in->file_size > in->file_blocks ? in->file_blocks :
			 in->file_size, data, sizeof(data)),
	       (unsigned long long)in->zero_pages,
	       (unsigned long long)in->extents);
	fflush(stdout);
}

static void print_restore(const struct ferry_restore_stats *s)
{
	char read[32];

	printf("running     %.3f ms after the start (records %.3f ms%s",
	       cli_ms(s->resume_ns), cli_ms(s->open_ns),
	       s->prefetched ? "" : ")\n");
	if (s->prefetched)
		printf(", working set %.3f ms)\n", cli_ms(s->prefetch_ns));
	printf("pages       %llu from the file (%s read), %llu zero pages "
	       "left as holes\n", (unsigned long long)s->pages,
	       cli_bytes(s->bytes_read, read, sizeof(read)),
	       (unsigned long long)s->zero_pages);
	if (s->mode == FERRY_RESTORE_EAGER) {
		printf("complete    before resuming\n");
		return;
	}
	printf("lazy        %llu read on demand, %llu filled in the "
	       "background, %llu prefetched; complete after %.3f s\n",
	       (unsigned long long)s->demand_reads,
	       (unsigned long long)s->filled,
	       (unsigned long long)s->prefetched, (double)s->total_ns / 1e9);
	printf("faults      %llu missing, %llu minor; page in after p50 %.0f "
	       "us, p99 %.0f us, max %.0f us\n",
	       (unsigned long long)s->missing_faults,
	       (unsigned long long)s->minor_faults,
	       cli_us(s->fault_latency_p50_ns), cli_us(s->fault_latency_p99_ns),
	       cli_us(s->fault_latency_max_ns));
}

static void json_restore(FILE *f, const void *arg)
{
	const struct ferry_restore_stats *s = arg;

	fprintf(f, "{\n  \"mode\": \"%s\",\n  \"resume_ms\": %.3f,\n"
		"  \"open_ms\": %.3f,\n  \"prefetch_ms\": %.3f,\n"
		"  \"total_ms\": %.3f,\n  \"pages\": %llu,\n"
		"  \"zero_pages\": %llu,\n  \"bytes_read\": %llu,\n"
		"  \"prefetched\": %llu,\n  \"demand_reads\": %llu,\n"
		"  \"filled\": %llu,\n  \"minor_faults\": %llu,\n"
		"  \"missing_faults\": %llu,\n"
		"  \"fault_latency_us\": {\"p50\": %.1f, \"p99\": %.1f, "
		"\"max\": %.1f},\n  \"ws_recorded\": %llu,\n"
		"  \"guest_bytes\": %llu\n}\n",
		s->mode == FERRY_RESTORE_EAGER ? "eager" : "lazy",
		cli_ms(s->resume_ns), cli_ms(s->open_ns),
		cli_ms(s->prefetch_ns),
		cli_ms(s->total_ns), (unsigned long long)s->pages,
		(unsigned long long)s->zero_pages,
		(unsigned long long)s->bytes_read,
		(unsigned long long)s->prefetched,
		(unsigned long long)s->demand_reads,
		(unsigned long long)s->filled,
		(unsigned long long)s->minor_faults,
		(unsigned long long)s->missing_faults,
		cli_us(s->fault_latency_p50_ns),
		cli_us(s->fault_latency_p99_ns),
		cli_us(s->fault_latency_max_ns),
		(unsigned long long)s->ws_recorded,
		(unsigned long long)s->guest_bytes);
}

/* The restore's line on a terminal: pages in place, read, the rate. */
static void restore_line(struct ferry_restore *rs)
{
	struct ferry_restore_progress p;
	char read[32];

	ferry_restore_progress(rs, &p);
	fprintf(stderr, "\r\033[K%-15s %llu of %llu pages in place, %s read, "
		"%6.2f GB/s", ferry_restore_phase_name(p.phase),
		(unsigned long long)p.in_place, (unsigned long long)p.pages,
		cli_bytes(p.bytes_read, read, sizeof(read)), p.rate_bps / 1e9);
	if (p.eta_s >= 0 && p.owed)
		fprintf(stderr, "  eta %.1fs", p.eta_s);
	fflush(stderr);
}

/*
 * The --run seconds, then until every page is in place (the background
 * reader starts then: recording the working set waits for the run's end),
 * with the progress line on a terminal.
 */
static void restore_watch(const struct snap_opts *o, struct ferry_restore *rs)
{
	uint64_t end = ferry_clock_now_ns() + (uint64_t)(o->run_s * 1e9);

	if (o->quiet || !isatty(STDERR_FILENO)) {
		cli_sleep(o->run_s);
		return;
	}
	for (uint64_t now = ferry_clock_now_ns(); now < end; now = ferry_clock_now_ns()) {
		restore_line(rs);
		cli_sleep(end - now < 100000000ULL ? (double)(end - now) / 1e9 :
						    0.1);
	}
	while (ferry_restore_wait(rs, 100) == -ETIMEDOUT)
		restore_line(rs);
	restore_line(rs);
	fputc('\n', stderr);
}

/*
 * Run, then every page in place; the vCPUs stop at the end of their step
 * and are verified if asked.
 */
static int run_restored(const struct snap_opts *o, struct ferry_restore *rs,
			struct cli_vm *vm, struct ferry_restore_stats *st)
{
	int ret;

	restore_watch(o, rs);
	ret = ferry_restore_finish(rs, st);
	if (ret) {
		cli_error("restoring", ret);
		return 2;
	}
	if (o->record_ws && (ret = ferry_restore_save_ws(rs, o->record_ws))) {
		cli_error("saving the working set", ret);
		return 2;
	}
	cli_vm_stop(vm);
	printf("vm          %s\n", vm->name);
	print_restore(st);
	if (o->record_ws)
		printf("working set %llu first touches written to %s\n",
		       (unsigned long long)st->ws_recorded, o->record_ws);
	return o->verify ? verify(vm, "") : 0;
}

static int restore_one(const struct snap_opts *o, int fd)
{
	struct ferry_restore_opts ro = { .mode = o->mode,
		.prefetch_ws = o->prefetch_ws,
		.prefetch_async = o->prefetch_async,
		.record_ws = o->record_ws != NULL };
	struct ferry_restore_stats st;
	struct ferry_restore *rs;
	struct cli_dest rc;
	int ret;

	cli_dest_init(&rc, &o->guest);
	ret = ferry_restore_start(fd, cli_dest_ops(), &rc, &ro, &rs);
	if (ret) {
		cli_error("restoring", ret);
		cli_free_vm(&rc.vm, &rc.resv);	/* none was left */
		return 2;
	}
	ret = run_restored(o, rs, &rc.vm, &st);
	ferry_restore_destroy(rs);
	cli_free_vm(&rc.vm, &rc.resv);
	if (!ret && o->json)
		ret = cli_json(o->json, json_restore, &st);
	return ret;
}

/* ---- clones ------------------------------------------------------------- */

struct clone_run {
	struct ferry_clone_source *src;
	struct ferry_clone *clone[MAX_CLONES];
	struct ferry_clone_mem mem[MAX_CLONES];
	unsigned int nr;
	uint64_t load_ns, first_ns, max_ns, shared, private_total;
};

static int start_clones(const struct snap_opts *o, int fd,
			struct clone_run *cr)
{
	uint64_t t0 = ferry_clock_now_ns();
	int ret = ferry_clone_source_create(fd, &cr->src);

	cr->load_ns = ferry_clock_now_ns() - t0;
	for (unsigned int i = 0; !ret && i < o->clones; i++) {
		uint64_t t = ferry_clock_now_ns(), took;

		ret = ferry_clone_create(cr->src, cli_clone_ops(
					 ferry_clone_source_stream(cr->src)),
					 NULL, &cr->clone[i]);
		took = ferry_clock_now_ns() - t;
		cr->nr += !ret;
		cr->first_ns = i ? cr->first_ns : took;
		cr->max_ns = took > cr->max_ns ? took : cr->max_ns;
	}
	if (ret)
		cli_error("starting clones", ret);
	return ret ? 2 : 0;
}

static int measure_clones(struct clone_run *cr)
{
	cr->shared = ferry_clone_source_bytes(cr->src);
	for (unsigned int i = 0; i < cr->nr; i++) {
		struct cli_vm vm;
		int ret;

		cli_vm_of(&vm, ferry_clone_vm(cr->clone[i]));
		ret = ferry_clone_error(cr->clone[i]);
		if (!ret)
			ret = cli_vm_stop(&vm);
		if (!ret)
			ret = ferry_clone_memory(cr->clone[i], &cr->mem[i]);
		if (ret) {
			cli_error("measuring a clone's memory", ret);
			return 2;
		}
		cr->private_total += cr->mem[i].private_bytes;
	}
	return 0;
}

static void print_clones(const struct clone_run *cr)
{
	char b[3][32];

	printf("source      loaded into shared memory in %.3f ms: %s\n",
	       cli_ms(cr->load_ns), cli_bytes(cr->shared, b[0], 32));
	printf("clones      %u, each running within %.3f ms (the first in "
	       "%.3f ms)\n", cr->nr, cli_ms(cr->max_ns), cli_ms(cr->first_ns));
	for (unsigned int i = 0; i < cr->nr; i++)
		printf("clone %-5u %s of its own, %s of the snapshot mapped\n",
		       i, cli_bytes(cr->mem[i].private_bytes, b[0], 32),
		       cli_bytes(cr->mem[i].shared_mapped_bytes, b[1], 32));
	printf("memory      %s in all: the snapshot once (%s) and what the "
	       "clones wrote (%s); %u separate restores: %s\n",
	       cli_bytes(cr->shared + cr->private_total, b[0], 32),
	       cli_bytes(cr->shared, b[1], 32),
	       cli_bytes(cr->private_total, b[2], 32), cr->nr,
	       cli_bytes(cr->shared * cr->nr, (char[32]){ 0 }, 32));
}

static void json_clones(FILE *f, const void *arg)
{
	const struct clone_run *cr = arg;

	fprintf(f, "{\n  \"clones\": %u,\n  \"load_ms\": %.3f,\n"
		"  \"clone_start_max_ms\": %.3f,\n  \"shared_bytes\": %llu,\n"
		"  \"private_bytes\": [", cr->nr, cli_ms(cr->load_ns),
		cli_ms(cr->max_ns), (unsigned long long)cr->shared);
	for (unsigned int i = 0; i < cr->nr; i++)
		fprintf(f, "%s%llu", i ? ", " : "",
			(unsigned long long)cr->mem[i].private_bytes);
	fprintf(f, "],\n  \"total_bytes\": %llu,\n"
		"  \"separate_restores_bytes\": %llu\n}\n",
		(unsigned long long)(cr->shared + cr->private_total),
		(unsigned long long)(cr->shared * cr->nr));
}

static int verify_clones(const struct clone_run *cr)
{
	int worst = 0;

	for (unsigned int i = 0; i < cr->nr; i++) {
		struct cli_vm vm;
		char who[16];
		int ret;

		cli_vm_of(&vm, ferry_clone_vm(cr->clone[i]));
		snprintf(who, sizeof(who), "%u", i);
		ret = verify(&vm, who);
		worst = ret > worst ? ret : worst;
	}
	return worst;
}

/* Room for the snapshot once and, at worst, every clone copying all. */
static int reserve_clones(const struct snap_opts *o,
			  const struct ferry_snapshot_info *in,
			  struct ferry_hugetlb_resv *resv)
{
	return cli_hugetlb_reserve(in->stream.regions[0].backing,
				   cli_stream_bytes(&in->stream) *
				   (1 + o->clones), resv);
}

static int restore_clones(const struct snap_opts *o, int fd,
			  const struct ferry_snapshot_info *in)
{
	struct ferry_hugetlb_resv resv = CLI_RESV_INIT;
	struct clone_run *cr = calloc(1, sizeof(*cr));
	int ret = cr ? reserve_clones(o, in, &resv) : -ENOMEM;

	if (ret)
		cli_error("reserving huge pages", ret);
	ret = ret ? 2 : start_clones(o, fd, cr);
	if (!ret) {
		cli_sleep(o->run_s);
		ret = measure_clones(cr);
	}
	if (!ret) {
		print_clones(cr);
		ret = o->verify ? verify_clones(cr) : 0;
	}
	if (!ret && o->json)
		ret = cli_json(o->json, json_clones, cr);
	for (unsigned int i = 0; cr && i < cr->nr; i++)
		ferry_clone_destroy(cr->clone[i]);
	if (cr)
		ferry_clone_source_destroy(cr->src);
	free(cr);
	ferry_hugetlb_restore(&resv);
	return ret;
}

static int check_restore_opts(const struct snap_opts *o)
{
	if (!o->file)
		return cli_bad("restore", "FILE", "", "is required");
	if (o->eager_set && o->lazy_set)
		return cli_bad("restore", "--eager with --lazy", "",
			       "one or the other");
	if (o->clones && o->eager_set)
		return cli_bad("restore", "--clone with --eager", "",
			       "clones are lazy: each maps the shared "
			       "snapshot and faults pages in");
	if (o->mode == FERRY_RESTORE_EAGER &&
	    (o->record_ws || o->prefetch_ws))
		return cli_bad("restore", "--eager", "", "working sets are for "
			   "--lazy");
	if (o->clones &&
	    (o->record_ws || o->prefetch_ws || o->guest.backing_set))
		return cli_bad("restore", "--clone", "", "clones share the "
			   "snapshot as it is: no working set, no --backing");
	if (o->prefetch_async && !o->prefetch_ws)
		return cli_bad("restore", "--prefetch-async", "", "needs "
			   "--prefetch-ws");
	return 0;
}

int cmd_restore(int argc, char **argv)
{
	struct ferry_snapshot_info info;
	struct snap_opts o;
	int fd, ret = parse_args(&restore_cmd, argc, argv, &o);

	if (!ret)
		ret = check_restore_opts(&o);
	if (ret)
		return ret == 1 ? 0 : ret;
	fd = open(o.file, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "ferry restore: %s: %s\n", o.file,
			strerror(errno));
		return 2;
	}
	ret = ferry_snapshot_info(fd, &info);
	if (ret) {
		cli_error(o.file, ret);
		close(fd);
		return 2;
	}
	print_info(&o, &info);
	ret = o.clones ? restore_clones(&o, fd, &info) : restore_one(&o, fd);
	close(fd);
	return ret;
}
