/* SPDX-License-Identifier: MIT */
#ifndef FERRY_CLI_H
#define FERRY_CLI_H

/*
 * The ferry command: one cmd_<name>() per subcommand, each in
 * tools/cmd_<name>.c.  They parse options, call the library and print;
 * no logic lives here that the tests cannot reach through the library.
 * What several subcommands do alike is done once, here: parsing options,
 * the built-in VM's options and its start and stop, the hugetlb pool,
 * JSON output.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ferry-vm/guest_vm.h"
#include "ferry-vm/kvm.h"
#include "ferry/hugetlb.h"

int cmd_doctor(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_send(int argc, char **argv);
int cmd_recv(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_serve(int argc, char **argv);

/* ---- printing ----------------------------------------------------------- */

/*
 * The command being run, for the one prefix every message carries:
 * "ferry CMD: ...".  Set once, by main, before the command runs.
 */
void cli_set_command(const char *name);

/* Print "ferry CMD: <what>: <errmsg or strerror>" on stderr, one line. */
void cli_error(const char *what, int err);

/* Human-readable bytes: "1.5 GiB". */
const char *cli_bytes(uint64_t bytes, char *buf, size_t len);

static inline double cli_ms(uint64_t ns)
{
	return (double)ns / 1e6;
}

static inline double cli_us(uint64_t ns)
{
	return (double)ns / 1e3;
}

/*
 * --json FILE ("-": stdout): write(f, arg) into it.  0, or 2 when it
 * cannot be opened (and a message says so).
 */
int cli_json(const char *path, void (*write)(FILE *f, const void *arg),
	     const void *arg);

/*
 * With --json - , standard output is the JSON's alone: the command's
 * other lines go to standard error from here on.  Nothing for any other
 * path (or NULL).
 */
void cli_json_claim_stdout(const char *path);

/* ---- options ------------------------------------------------------------ */

/* "512M", "4G", "1048576", "64K" -> bytes; 0 or -EINVAL. */
int cli_parse_size(const char *text, uint64_t *bytes);

/* "1.5" seconds -> double; 0 or -EINVAL. */
int cli_parse_seconds(const char *text, double *secs);

/* Non-negative integer; 0 or -EINVAL. */
int cli_parse_uint(const char *text, unsigned long *value);

/*
 * "ferry CMD: OPT 'ARG': WANT" on stderr ("ferry CMD: OPT: WANT" when ARG
 * is empty); returns 2 (a usage error).
 */
int cli_bad(const char *cmd, const char *opt, const char *arg,
	    const char *want);

/* A number in [lo, hi], or cli_bad() saying so. */
int cli_parse_num(const char *cmd, const char *opt, const char *arg,
		  unsigned long lo, unsigned long hi, unsigned long *v);

/* Seconds ("1.5", "200ms"), or cli_bad() saying so. */
int cli_parse_secs(const char *cmd, const char *opt, const char *arg,
		   double *v);

/* A subcommand's options. */
struct cli_cmd {
	const char *name;		/* "ferry NAME" */
	const char *allowed;		/* the letters of its options */
	const struct option *longopts;	/* may hold other commands' too;
					 * 'h' is --help */
	void (*usage)(FILE *out);
	/* One option into opts: 0, or 2 after saying what is wrong. */
	int (*one)(const char *cmd, int opt, const char *arg, void *opts);
};

/*
 * getopt_long over argv with cmd's options, each handed to cmd->one.
 * --help prints usage to stdout and returns 1; an option not allowed (or
 * missing its value) is one line on stderr and returns 2.  Arguments left
 * start at argv[optind].
 */
int cli_getopt(const struct cli_cmd *cmd, int argc, char **argv, void *opts);

/* No argument left after the options, or cli_bad() saying so. */
int cli_no_args(const char *cmd, int argc, char **argv);

/* ---- the VM: built-in or KVM -------------------------------------------- */

/* --vm: which VM runs the workload. */
enum cli_vm_kind {
	CLI_VM_DEFAULT,		/* kvm where KVM works, builtin otherwise */
	CLI_VM_BUILTIN,
	CLI_VM_KVM,
};

/* What the commands that run a VM take, by the same letters. */
struct cli_guest {
	uint64_t mem_size;		/* -m --mem */
	unsigned long vcpus, seed;	/* -n --vcpus, -S --seed */
	const char *workload;		/* -w --workload */
	enum ferry_backing backing;	/* -b --backing */
	bool backing_set;
	enum cli_vm_kind vm;		/* --vm */
};

/*
 * Their entries in a longopts table (--seed stands apart: commands list it
 * in other places); then --help and the table's end.  An entry's place
 * shows in getopt's message about an ambiguous abbreviation.
 */
#define CLI_GUEST_LONGOPTS \
	{ "mem", required_argument, NULL, 'm' }, \
	{ "vcpus", required_argument, NULL, 'n' }, \
	{ "workload", required_argument, NULL, 'w' }, \
	{ "backing", required_argument, NULL, 'b' }, \
	{ "vm", required_argument, NULL, 'X' }
#define CLI_SEED_LONGOPT	{ "seed", required_argument, NULL, 'S' }
#define CLI_LONGOPTS_END \
	{ "help", no_argument, NULL, 'h' }, \
	{ NULL, 0, NULL, 0 }

/* One of the options above (opt: its letter), or cli_bad() saying so. */
int cli_guest_opt(const char *cmd, int opt, const char *arg,
		  struct cli_guest *g);

/*
 * --mem within what the machine can give (its MemTotal; on hugetlb
 * without root, the free pool), or cli_bad() naming the figure.  Checked
 * before any VM is built.
 */
int cli_guest_check(const char *cmd, const struct cli_guest *g);

/* A reservation that changed nothing: ferry_hugetlb_restore() is a no-op. */
#define CLI_RESV_INIT	{ .saved_nr_hugepages = -1 }

/*
 * Room in the hugetlb pool for `bytes` of guest memory when `backing` is
 * hugetlb: surplus pages the kernel lends and takes back with the memory
 * (ferry_hugetlb_surplus), within --hugetlb-max; call
 * ferry_hugetlb_settle() once the memory is mapped, and
 * ferry_hugetlb_restore() at the end.  Until then SIGTERM and SIGINT put
 * the sysctl back before the command dies.  0 or -errno.
 */
int cli_hugetlb_reserve(enum ferry_backing backing, uint64_t bytes,
			struct ferry_hugetlb_resv *resv);

/* --hugetlb-max PAGES: how far the pool may grow (default: no limit). */
void cli_hugetlb_limit(long max_grow);

/*
 * SIGTERM and SIGINT: put back what the command changed (the hugetlb
 * sysctls of the reservation being made, a unix socket path, a file
 * half-written: cli_cleanup_path), then die of the signal.
 */
void cli_cleanup_signals(void);

/* A path to remove if a signal ends the command (NULL: none). */
void cli_cleanup_path(const char *path);

/* The security options (--tls-psk, --tls-cert, --tls-key, --tls-ca,
 * --insecure, --max-guest, --hello-timeout) into net options. */
struct ferry_net_opts;
int cli_net_opt(const char *cmd, int opt, const char *arg,
		struct ferry_net_opts *o);

#define CLI_NET_LONGOPTS \
	{ "tls-psk", required_argument, NULL, 'K' }, \
	{ "tls-cert", required_argument, NULL, 'C' }, \
	{ "tls-key", required_argument, NULL, 'Y' }, \
	{ "tls-ca", required_argument, NULL, 'Z' }, \
	{ "insecure", no_argument, NULL, 'I' }, \
	{ "max-guest", required_argument, NULL, 'G' }, \
	{ "hello-timeout", required_argument, NULL, 'H' }, \
	{ "hugetlb-max", required_argument, NULL, 'P' }
#define CLI_NET_LETTERS	"KCYZIGHP"

/* Their lines in --help, for the connecting and the listening side. */
#define CLI_NET_TLS_HELP \
	"  --tls-psk FILE      TLS 1.3 with the pre-shared key in FILE (one line\n" \
	"                      IDENTITY:HEXKEY, mode 600; the peer holds the same)\n" \
	"  --tls-cert FILE     TLS 1.3 with this side's certificate (PEM), its\n" \
	"  --tls-key FILE      key, and the CA that must have signed the peer's\n" \
	"  --tls-ca FILE       (expired or untrusted certificates are refused)\n"
#define CLI_NET_HELP_SEND CLI_NET_TLS_HELP \
	"  --insecure         plain TCP to an address that is not loopback\n" \
	"  --hugetlb-max N    grow the hugetlb pool by N pages at most (lent\n" \
	"                     as surplus pages; default: as far as it goes)\n"
#define CLI_NET_HELP_RECV CLI_NET_TLS_HELP \
	"  --insecure          plain TCP on an address that is not loopback\n" \
	"                      (without it, refused: anyone could push a VM)\n" \
	"  --max-guest SIZE    refuse a stream claiming more guest memory\n" \
	"                      (default: MemTotal; hugetlb: what the pool can give)\n" \
	"  --hello-timeout S   a connection's time for TLS and hello (default 2)\n" \
	"  --hugetlb-max N     grow the hugetlb pool by N pages at most (lent\n" \
	"                      as surplus pages; default: as far as it goes)\n"

/* --vm's lines in --help; PAD (spaces) reaches the command's column. */
#define CLI_VM_HELP(PAD) \
	"  --vm kvm|builtin" PAD "the VM: a KVM guest, or ferry's built-in " \
	"VM (default:\n" \
	"                  " PAD "kvm where KVM works, builtin otherwise)\n"

/*
 * A VM the commands run: ferry's built-in VM or a KVM guest, both running
 * the same workload and verified the same way.
 */
struct cli_vm {
	enum cli_vm_kind kind;		/* BUILTIN or KVM */
	struct ferry_guest_vm *gv;	/* the built-in VM it owns, or NULL */
	struct ferry_kvm_vm *kv;	/* the KVM VM it owns, or NULL */
	struct ferry_guest *guest;	/* the built-in VM's vCPUs, or NULL */
	struct ferry_kvm *kvm;		/* the KVM VM's vCPUs, or NULL */
	const struct ferry_vm *vm;	/* what ferry's flows take */
	char name[320];			/* "kvm (SVM ...)", "builtin (...)" */
};

/*
 * The kind to run: what --vm asked, or the default (kvm where a real
 * KVM_CREATE_VM works, builtin otherwise); *why says why, for the
 * summary.  --vm kvm where KVM cannot run is an error (2, said).
 */
int cli_vm_choose(const char *cmd, enum cli_vm_kind asked,
		  enum cli_vm_kind *kind, char *why, size_t len);

/*
 * The VM `g` describes (with cfg's boot mask and step limit when cfg is
 * given), started, the hugetlb pool grown first when its memory is
 * hugetlb.  Prints what failed and returns 2, or 0.
 */
int cli_start_vm(const char *cmd, const struct cli_guest *g,
		 const struct ferry_guest_config *cfg, struct cli_vm *vm,
		 struct ferry_hugetlb_resv *resv);

/* Stop and free a VM (an empty one is fine), put the hugetlb pool back. */
void cli_free_vm(struct cli_vm *vm, struct ferry_hugetlb_resv *resv);

/* The pool grown for a VM goes back (cli_free_vm does it). */
void cli_hugetlb_release(struct ferry_hugetlb_resv *resv);

/* A VM ferry built (a clone's): the calls below, nothing to free. */
void cli_vm_of(struct cli_vm *vm, const struct ferry_vm *fv);

/* Each VM's own: stop its vCPUs at step boundaries, pause, verify... */
int cli_vm_stop(struct cli_vm *vm);
int cli_vm_pause(struct cli_vm *vm);
int cli_vm_verify(struct cli_vm *vm, struct ferry_verify_report *rep);
void cli_vm_stats(struct cli_vm *vm, struct ferry_guest_stats *st);
int cli_vm_wait_settled(struct cli_vm *vm, int timeout_ms);
int cli_vm_set_step_limit(struct cli_vm *vm, uint64_t limit);

/* Let the VM run for a while. */
void cli_sleep(double secs);

/* Guest memory a stream (or snapshot) describes, in bytes. */
uint64_t cli_stream_bytes(const struct ferry_wire_stream *s);

/*
 * The destination's (and a restore's) VM: the kind the stream describes
 * (a KVM guest's or the built-in VM's), built after making room in the
 * hugetlb pool when its memory is hugetlb; the argument is a struct
 * cli_dest.  --vm, if given, must name the stream's kind.
 */
struct cli_dest {
	struct ferry_guest_dest dd;
	struct ferry_kvm_dest kd;
	enum cli_vm_kind asked;		/* --vm */
	struct cli_vm vm;		/* out: the VM built */
	struct ferry_hugetlb_resv resv;	/* cli_free_vm() puts it back */
};

/* On g's backing if --backing was given, else on the stream's. */
void cli_dest_init(struct cli_dest *cd, const struct cli_guest *g);

const struct ferry_dest_ops *cli_dest_ops(void);

/* Clones of a snapshot, by the kind its description says. */
const struct ferry_clone_ops *cli_clone_ops(const struct ferry_wire_stream *s);

#endif
