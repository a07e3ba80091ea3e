/* SPDX-License-Identifier: MIT */
#ifndef FERRY_TEST_FAULTPROXY_H
#define FERRY_TEST_FAULTPROXY_H

/*
 * A fault-injecting TCP proxy for migration tests: the source connects to
 * the proxy, which connects each channel on to the destination's
 * listener and forwards both directions, a thread per direction.  It
 * reads what it forwards as ferry speaks it (the 32-byte hello and its
 * answer, then records: docs/wire.md), so a fault can be aimed at a point
 * of the protocol: the nth record of a type on a channel, in a direction,
 * in a session:
 *
 *   CUT    every connection of the session closes, both ways
 *   STALL  the session forwards nothing for `ms` (0: until released),
 *          while the proxy's kernel still takes what the peers send
 *          (a stopped process, a dead link that TCP has not noticed)
 *   DELAY  each record from the trigger on waits `ms` first
 *   FLIP   one byte of the record is changed (xor `mask`) at `offset` of
 *          its header, meta or data
 *
 * Rules fire once each.  Sessions are counted as they open (a hello with
 * a new session id), from 1.
 */
#include <stdbool.h>
#include <stdint.h>

#define FP_MAX_RULES	8

enum fp_action { FP_CUT = 1, FP_STALL, FP_DELAY, FP_FLIP };
enum fp_part { FP_HDR, FP_META, FP_DATA };

struct fp_rule {
	unsigned int session;	/* 1: the first session; 0: any */
	int role;		/* 1 bulk, 2 urgent, 0 any */
	int index;		/* bulk channel, -1 any */
	bool to_dest;		/* the direction: source -> destination */
	unsigned int type;	/* record type (ferry_wire_type), 0: any */
	unsigned int nth;	/* 0: the first such record */
	unsigned int after;	/* only once a record of this type passed
				 * this way on this connection; 0: always */
	enum fp_action action;
	enum fp_part part;	/* FLIP */
	unsigned int offset;	/* FLIP: in the part (wrapped to its size) */
	uint8_t mask;		/* FLIP */
	unsigned int ms;	/* STALL, DELAY */
};

struct faultproxy;

/*
 * Listen on listen_addr ("127.0.0.1:0") and forward to target ("HOST:PORT"
 * of a ferry listener).  0 or -errno.
 */
int faultproxy_start(const char *listen_addr, const char *target,
		     struct faultproxy **out);

/* The address sources dial ("127.0.0.1:PORT"). */
const char *faultproxy_addr(const struct faultproxy *fp);

/* Add a rule (before or while traffic flows): 0, or -ENOSPC. */
int faultproxy_add(struct faultproxy *fp, const struct fp_rule *rule);

/* How many rules have fired. */
unsigned int faultproxy_fired(struct faultproxy *fp);

/* End a STALL that waits to be released. */
void faultproxy_release(struct faultproxy *fp);

/* Cut every connection now, whatever the rules. */
void faultproxy_cut_all(struct faultproxy *fp);

/* Stop, close everything, join every thread.  NULL is fine. */
void faultproxy_stop(struct faultproxy *fp);

#endif
