// SPDX-License-Identifier: MIT
/*
 * ferry serve-faults: Firecracker's external page-fault handler (a memory
 * backend of type "Uffd"), serving every VMM that connects from one memory
 * file.  The library does the work (ferry/serve.h); this prints what it
 * says, one line an event, and writes the figures as JSON.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "ferry/ferry.h"

struct serve_cli {
	const char *socket, *memory, *json;
	unsigned long vms;		/* exit once this many ended; 0 never */
	unsigned long max_vms;
	double record_for, handshake;
	struct ferry_serve_opts opts;
	/* The run's: set by the event callback, on the server's thread. */
	struct ferry_serve *srv;
	unsigned long ended;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ferry serve-faults --socket PATH --memory FILE\n"
		"                          [--record-ws F [--record-for S]] "
		"[--prefetch-ws F]\n"
		"                          [--no-fill] [--populate] "
		"[--max-vms N] [--vms N]\n"
		"                          [--handshake-timeout S] "
		"[--json FILE]\n\n"
		"An external userfaultfd page-fault handler, as Firecracker "
		"asks for on a\nsnapshot load with \"mem_backend\": "
		"{\"backend_type\": \"Uffd\", \"backend_path\":\nPATH}.  "
		"Listens on PATH; each VMM that connects sends its "
		"userfaultfd and\nits guest memory regions; each region is "
		"checked against FILE (the memory\nsnapshot: guest memory as "
		"one flat file), then its pages are installed\nfrom FILE as "
		"the guest touches them and, in the background, ahead of "
		"it.\nOnce every page is in place the regions are handed "
		"back to the kernel and\nthe VM needs this process no more.  "
		"Many VMs are served at once, from one\nmapping of FILE.  A "
		"list that does not check out is refused, with the\nreason "
		"on stderr, and that VMM dies at its first fault (SIGBUS) "
		"instead\nof waiting forever.  SIGINT or SIGTERM: install "
		"every VM's remaining pages,\nhand them off, exit; a second "
		"one: exit at once.\n\n"
		"  --socket PATH         the Unix socket to listen on "
		"(created mode 0600;\n"
		"                        a dead server's socket there is "
		"replaced)\n"
		"  --memory FILE         the memory file to serve from (must "
		"not change)\n"
		"  --record-ws F         write the order in which the first "
		"VM touches\n"
		"                        pages to F (its background fill "
		"waits meanwhile)\n"
		"  --record-for S        ... for S seconds (default: until "
		"it exits)\n"
		"  --prefetch-ws F       install the pages F lists first, in "
		"bulk, into\n"
		"                        every VM\n"
		"  --no-fill             no background fill: serve faults "
		"only\n"
		"  --populate            read FILE into the page cache "
		"first\n"
		"  --max-vms N           VMs served at once (default 256)\n"
		"  --vms N               exit once N VMs have ended\n"
		"  --handshake-timeout S how long a VMM has to send its list "
		"(default 5)\n"
		"  --json FILE           every VM's figures as JSON ('-': "
		"stdout), written\n"
		"                        as each VM ends and at exit\n"
		"Exit status: 0 stopped, 2 error.\n");
}

static int parse_one(const char *cmd, int opt, const char *arg, void *opts)
{
	struct serve_cli *o = opts;

	switch (opt) {
	case 's': o->socket = arg; return 0;
	case 'M': o->memory = arg; return 0;
	case 'j': o->json = arg; return 0;
	case 'R': o->opts.record_ws = arg; return 0;
	case 'P': o->opts.prefetch_ws = arg; return 0;
	case 'F': o->opts.no_fill = true; return 0;
	case 'p': o->opts.populate = true; return 0;
	case 'f': return cli_parse_secs(cmd, "--record-for", arg,
					&o->record_for);
	case 't': return cli_parse_secs(cmd, "--handshake-timeout", arg,
					&o->handshake);
	case 'x': return cli_parse_num(cmd, "--max-vms", arg, 1, 100000,
				       &o->max_vms);
	case 'v': return cli_parse_num(cmd, "--vms", arg, 1, 1000000000,
				       &o->vms);
	default: return 2;
	}
}

static const struct option longopts[] = {
	{ "socket", required_argument, NULL, 's' },
	{ "memory", required_argument, NULL, 'M' },
	{ "record-ws", required_argument, NULL, 'R' },
	{ "record-for", required_argument, NULL, 'f' },
	{ "prefetch-ws", required_argument, NULL, 'P' },
	{ "no-fill", no_argument, NULL, 'F' },
	{ "populate", no_argument, NULL, 'p' },
	{ "max-vms", required_argument, NULL, 'x' },
	{ "vms", required_argument, NULL, 'v' },
	{ "handshake-timeout", required_argument, NULL, 't' },
	{ "json", required_argument, NULL, 'j' },
	CLI_LONGOPTS_END,
};

static const struct cli_cmd serve_cmd = {
	.name = "serve-faults", .allowed = "sMRPFpftxvj", .longopts = longopts,
	.usage = usage, .one = parse_one,
};

/* ---- JSON ---------------------------------------------------------------- */

static const char *state_name(enum ferry_serve_vm_state s)
{
	switch (s) {
	case FERRY_SERVE_VM_SERVING: return "serving";
	case FERRY_SERVE_VM_HANDED_OFF: return "handed-off";
	case FERRY_SERVE_VM_REFUSED: return "refused";
	default: return "ended";
	}
}

/* A string as JSON: quotes and control characters escaped. */
static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void json_hist(FILE *f, const struct ferry_hist *h)
{
	bool first = true;

	fprintf(f, "\"fault_latency_hist_ns\": [");
	for (unsigned int b = 0; b < FERRY_HIST_BUCKETS; b++) {
		uint64_t lo, hi, n = ferry_hist_bucket(h, b, &lo, &hi);

		if (!n)
			continue;
		fprintf(f, "%s[%llu, %llu, %llu]", first ? "" : ", ",
			(unsigned long long)lo, (unsigned long long)hi,
			(unsigned long long)n);
		first = false;
	}
	fprintf(f, "]");
}

#define U(x) ((unsigned long long)(x))

static void json_vm(FILE *f, const struct ferry_serve_vm_stats *s)
{
	fprintf(f, "    {\"id\": %llu, \"pid\": %d, \"state\": \"%s\", "
		"\"reason\": ", U(s->id), s->pid, state_name(s->state));
	json_string(f, s->reason);
	fprintf(f, ",\n     \"regions\": %u, \"page_size\": %llu, "
		"\"guest_bytes\": %llu, \"serving_ms\": %.3f,\n"
		"     \"faults\": %llu, \"copies\": %llu, "
		"\"zero_pages\": %llu, "
		"\"bytes_copied\": %llu,\n     \"prefetched\": %llu, "
		"\"filled\": %llu, \"races\": %llu, \"deferred\": %llu,\n"
		"     \"removes\": %llu, \"removed_pages\": %llu, "
		"\"poisoned\": %llu, \"ws_recorded\": %llu,\n"
		"     \"fault_latency_us\": {\"p50\": %.1f, \"p99\": %.1f, "
		"\"max\": %.1f},\n     ", s->nr_regions, U(s->page_size),
		U(s->guest_bytes), cli_ms(s->serving_ns), U(s->faults),
		U(s->copies), U(s->zero_pages), U(s->bytes_copied),
		U(s->prefetched), U(s->filled), U(s->races), U(s->deferred),
		U(s->removes), U(s->removed_pages), U(s->poisoned),
		U(s->ws_recorded), cli_us(s->fault_latency_p50_ns),
		cli_us(s->fault_latency_p99_ns),
		cli_us(s->fault_latency_max_ns));
	json_hist(f, &s->fault_latency);
	fprintf(f, "}");
}

struct vms {
	struct ferry_serve_vm_stats *s;
	size_t nr;
};

static void json_vms(FILE *f, const void *arg)
{
	const struct vms *v = arg;

	fprintf(f, "{\n  \"vms\": [\n");
	for (size_t i = 0; i < v->nr; i++) {
		json_vm(f, &v->s[i]);
		fprintf(f, "%s\n", i + 1 < v->nr ? "," : "");
	}
	fprintf(f, "  ]\n}\n");
}

/* Every VM's figures into --json, replacing what was there. */
static int write_json(struct serve_cli *o)
{
	size_t cap = ferry_serve_vms(o->srv, NULL, 0), n;
	struct vms v;
	int ret;

	if (!o->json)
		return 0;
	v.s = calloc(cap ? cap : 1, sizeof(*v.s));
	if (!v.s)
		return 2;
	n = ferry_serve_vms(o->srv, v.s, cap);
	v.nr = n < cap ? n : cap;
	ret = cli_json(o->json, json_vms, &v);
	free(v.s);
	return ret;
}

/* ---- events -------------------------------------------------------------- */

static const char *const what[] = {
	[FERRY_SERVE_EV_STARTED] = "serving",
	[FERRY_SERVE_EV_REFUSED] = "refused",
	[FERRY_SERVE_EV_FAILED] = "failed",
	[FERRY_SERVE_EV_NOTE] = "note",
	[FERRY_SERVE_EV_HANDED_OFF] = "handed off",
	[FERRY_SERVE_EV_ENDED] = "ended",
};

static void print_started(const struct ferry_serve_vm_stats *s,
			  const char *note)
{
	char b[32];

	fprintf(stderr, "ferry serve-faults: vm %llu (pid %d): serving %u "
		"region%s, %s of %s pages%s%s\n", U(s->id), s->pid,
		s->nr_regions, s->nr_regions == 1 ? "" : "s",
		cli_bytes(s->guest_bytes, b, sizeof(b)),
		s->page_size == 4096 ? "4 KiB" : "2 MiB",
		note[0] ? "; " : "", note);
}

static void print_figures(const struct ferry_serve_vm_stats *s)
{
	fprintf(stderr, "  %llu faults (latency p50 %.1f us, p99 %.1f us, "
		"max %.1f us), %llu copies, %llu zero pages, %llu "
		"prefetched, %llu filled, %llu removed, %llu poisoned\n",
		U(s->faults), cli_us(s->fault_latency_p50_ns),
		cli_us(s->fault_latency_p99_ns),
		cli_us(s->fault_latency_max_ns), U(s->copies),
		U(s->zero_pages), U(s->prefetched), U(s->filled),
		U(s->removed_pages), U(s->poisoned));
}

static void on_event(void *arg, const struct ferry_serve_event *ev)
{
	struct serve_cli *o = arg;
	const struct ferry_serve_vm_stats *s = ev->vm;

	if (ev->kind == FERRY_SERVE_EV_STARTED) {
		print_started(s, ev->reason);
		return;
	}
	if (!s->id) {	/* a connection turned away before it was one */
		fprintf(stderr, "ferry serve-faults: a connection %s: %s\n",
			what[ev->kind], ev->reason);
		return;
	}
	fprintf(stderr, "ferry serve-faults: vm %llu (pid %d): %s: %s\n",
		U(s->id), s->pid, what[ev->kind], ev->reason);
	if (ev->kind == FERRY_SERVE_EV_HANDED_OFF ||
	    ev->kind == FERRY_SERVE_EV_ENDED)
		print_figures(s);
	if (ev->kind != FERRY_SERVE_EV_ENDED)
		return;
	write_json(o);
	if (o->vms && ++o->ended == o->vms)
		ferry_serve_stop(o->srv);
}

/* ---- the run ------------------------------------------------------------- */

static struct ferry_serve *signalled_srv;

static void on_signal(int sig)
{
	(void)sig;
	if (signalled_srv)
		ferry_serve_stop(signalled_srv);	/* async-signal-safe */
}

static void catch_signals(struct ferry_serve *srv)
{
	struct sigaction sa = { .sa_handler = on_signal };

	signalled_srv = srv;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static int serve(struct serve_cli *o, int listen_fd, int mem_fd)
{
	int ret = ferry_serve_create(listen_fd, mem_fd, &o->opts, &o->srv);

	if (ret) {
		cli_error("serve-faults", ret);
		return 2;
	}
	catch_signals(o->srv);
	fprintf(stderr, "ferry serve-faults: listening on %s, serving %s\n",
		o->socket, o->memory);
	ret = ferry_serve_run(o->srv);
	signalled_srv = NULL;
	if (ret)
		cli_error("serve-faults", ret);
	if (write_json(o))
		ret = ret ? ret : -EIO;
	ferry_serve_destroy(o->srv);
	return ret ? 2 : 0;
}

int cmd_serve(int argc, char **argv)
{
	struct serve_cli o = { .max_vms = 256, .handshake = 5 };
	int ret = cli_getopt(&serve_cmd, argc, argv, &o), listen_fd, mem_fd;

	if (ret)
		return ret == 1 ? 0 : ret;
	if ((ret = cli_no_args(serve_cmd.name, argc, argv)))
		return ret;
	if (!o.socket || !o.memory) {
		fprintf(stderr, "ferry serve-faults: --socket and --memory "
			"are both needed\n");
		usage(stderr);
		return 2;
	}
	o.opts.record_ms = (unsigned int)(o.record_for * 1000);
	o.opts.handshake_timeout_ms = (int)(o.handshake * 1000);
	o.opts.max_vms = (unsigned int)o.max_vms;
	o.opts.on_event = on_event;
	o.opts.event_arg = &o;
	mem_fd = open(o.memory, O_RDONLY | O_CLOEXEC);
	if (mem_fd < 0) {
		fprintf(stderr, "ferry serve-faults: %s: %s\n", o.memory,
			strerror(errno));
		return 2;
	}
	listen_fd = ferry_serve_listen(o.socket);
	if (listen_fd < 0) {
		cli_error("serve-faults", listen_fd);
		close(mem_fd);
		return 2;
	}
	ret = serve(&o, listen_fd, mem_fd);
	close(listen_fd);
	unlink(o.socket);
	close(mem_fd);
	return ret;
}
