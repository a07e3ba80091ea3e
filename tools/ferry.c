// SPDX-License-Identifier: MIT
/* ferry: the command-line tool.  One subcommand per cmd_<name>(). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "ferry/ferry.h"

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
};

static const struct command commands[] = {
	{ "doctor", cmd_doctor,
	  "what this machine's kernel offers ferry, and what to change" },
	{ "run", cmd_run, "run the built-in workload VM and verify its memory" },
	{ "send", cmd_send, "run a VM and live-migrate it to a 'ferry recv'" },
	{ "recv", cmd_recv, "receive a live migration, run the VM on, verify" },
	{ "demo", cmd_demo,
	  "live-migrate a VM between two processes here, and verify it" },
	{ "snapshot", cmd_snapshot, "run a VM and save it to a file" },
	{ "restore", cmd_restore,
	  "run a VM from a snapshot: eagerly, lazily, or as N clones" },
	{ "serve-faults", cmd_serve,
	  "serve Firecracker's page faults from a memory file" },
};

static void usage(FILE *out)
{
	fprintf(out, "usage: ferry COMMAND [OPTIONS]\n\n"
		"Moves a running VM's memory and vCPU state between hosts or "
		"to and from\na file, and lets the guest run before its "
		"memory has arrived.\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(out, "  %-12s %s\n", commands[i].name,
			commands[i].summary);
	fprintf(out, "\n'ferry COMMAND --help' describes a command's options."
		"  ferry %s\n", FERRY_VERSION);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("ferry %s\n", FERRY_VERSION);
		return 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[1], commands[i].name)) {
			cli_set_command(commands[i].name);
			return commands[i].fn(argc - 1, argv + 1);
		}
	fprintf(stderr, "ferry: unknown command '%s' (ferry --help lists "
		"them)\n", argv[1]);
	return 2;
}
