/* SPDX-License-Identifier: MIT */
#ifndef FERRY_TEST_NETNS_H
#define FERRY_TEST_NETNS_H

/*
 * Two hosts on one machine: network namespaces "<name>-a" and "<name>-b"
 * joined by a veth pair, 169.254.77.1 and 169.254.77.2, each end shaped
 * by tc (tbf for a rate; netem for a rate and a delay when the kernel has
 * it).  Link-local addresses: traffic never leaves this machine.
 */
#include <stdbool.h>

#define NETNS_ADDR_A	"169.254.77.1"
#define NETNS_ADDR_B	"169.254.77.2"

struct netns_pair {
	char name[32];
	bool up;
};

/* true when this kernel's tc has netem (CONFIG_NET_SCH_NETEM). */
bool netns_have_netem(void);

/*
 * Make the pair.  `shape` is a tc qdisc spec for both ends, such as
 * "tbf rate 1gbit burst 256kb latency 100ms" or
 * "netem rate 1gbit delay 1ms".  0, or -1 with why filled in.
 */
int netns_setup(struct netns_pair *p, const char *shape, char *why,
		size_t len);

/* Move the calling thread (and the threads it starts) into side a or b. */
int netns_enter(const struct netns_pair *p, char side);

/* Take the link between the two down or bring it up: 0, or -1. */
int netns_link(const struct netns_pair *p, bool up);

/* Delete both namespaces (and with them the veth pair).  Idempotent. */
void netns_teardown(struct netns_pair *p);

#endif
