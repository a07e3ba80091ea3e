/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CLI_H
#define FERRY_CLI_H

/*
 * The ferry command: one cmd_<name>() per subcommand, each in
 * tools/cmd_<name>.c.  They parse options, call the library and print;
 * no logic lives here that the tests cannot reach through the library.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int cmd_doctor(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_send(int argc, char **argv);
int cmd_recv(int argc, char **argv);

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

#endif
