/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CLI_H
#define FERRY_CLI_H

/*
 * The ferry command: one cmd_<name>() per subcommand, each in
 * tools/cmd_<name>.c.  They parse options, call the library and print;
 * no logic lives here that the tests cannot reach through the library.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ferry-vm/guest_vm.h"

int cmd_doctor(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_send(int argc, char **argv);
int cmd_recv(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_restore(int argc, char **argv);

/* Print "ferry: <what>: <errmsg or strerror>" on stderr. */
void cli_error(const char *what, int err);

/* "512M", "4G", "1048576", "64K" -> bytes; 0 or -EINVAL. */
int cli_parse_size(const char *text, uint64_t *bytes);

/* "1.5" seconds -> double; 0 or -EINVAL. */
int cli_parse_seconds(const char *text, double *secs);

/* Non-negative integer; 0 or -EINVAL. */
int cli_parse_uint(const char *text, unsigned long *value);

/* Human-readable bytes: "1.5 GiB". */
const char *cli_bytes(uint64_t bytes, char *buf, size_t len);

/* "ferry CMD: OPT 'ARG': WANT" on stderr; returns 2 (a usage error). */
int cli_bad(const char *cmd, const char *opt, const char *arg,
	    const char *want);

/* A number in [lo, hi], or cli_bad() saying so. */
int cli_parse_num(const char *cmd, const char *opt, const char *arg,
		  unsigned long lo, unsigned long hi, unsigned long *v);

/* Seconds ("1.5", "200ms"), or cli_bad() saying so. */
int cli_parse_secs(const char *cmd, const char *opt, const char *arg,
		   double *v);

/*
 * getopt_long over argv with the options in `allowed` (their letters),
 * each handed to one(ctx, letter, optarg), which returns 0 or 2.  --help
 * prints usage to stdout and returns 1; an option not allowed prints it
 * to stderr and returns 2.  Arguments left start at argv[optind].
 */
int cli_getopt(const char *cmd, const char *allowed, int argc, char **argv,
	       const struct option *longopts, void (*usage)(FILE *out),
	       int (*one)(void *ctx, int opt, const char *arg), void *ctx);

/* --json FILE: "-" is stdout; NULL (and a message) when it cannot open. */
FILE *cli_json_open(const char *path);
void cli_json_close(FILE *f);

/*
 * The built-in VM, on `backing`, started: the hugetlb pool grown first
 * when the memory is hugetlb (cli_hugetlb_restore puts it back).  Prints
 * what failed and returns 2, or 0.
 */
int cli_start_guest(const struct ferry_guest_config *cfg,
		    enum ferry_backing backing, uint64_t mem_size,
		    struct ferry_guest_vm **gv, struct ferry_hugetlb_resv *resv);

/*
 * ferry_guest_dest_ops() that first make room in the hugetlb pool when
 * the VM's memory is hugetlb; the argument is a struct cli_dest.
 */
struct cli_dest {
	struct ferry_guest_dest dd;
	struct ferry_hugetlb_resv resv;	/* put back by the caller */
};

const struct ferry_dest_ops *cli_dest_ops(void);

#endif
