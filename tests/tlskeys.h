/* SPDX-License-Identifier: MIT */
#ifndef FERRY_TEST_TLSKEYS_H
#define FERRY_TEST_TLSKEYS_H

/*
 * Keys and certificates for the TLS tests, made at run time in a fresh
 * directory (removed by tlskeys_remove): two pre-shared keys of the same
 * identity, a CA and a certificate it signed for each side, one it signed
 * that has expired, and one from a CA nobody trusts.
 */
#include <stddef.h>

#include "ferry/net.h"

struct tlskeys {
	char dir[64];
	char psk[96], psk_other[96];	/* same identity, other key */
	char ca[96];
	char a_cert[96], a_key[96];	/* signed by ca */
	char b_cert[96], b_key[96];	/* signed by ca */
	char old_cert[96], old_key[96];	/* signed by ca, expired */
	char rogue_cert[96], rogue_key[96];	/* signed by another CA */
};

/* 0, or -1 with why filled in. */
int tlskeys_make(struct tlskeys *k, char *why, size_t len);

/* In a test case: make them, or fail the case saying why. */
#define KEYS(ctx, k)							\
	do {								\
		char _why[200];						\
		if (tlskeys_make(k, _why, sizeof(_why)))		\
			FAIL(ctx, "%s", _why);				\
	} while (0)
void tlskeys_remove(struct tlskeys *k);

/* Options using the key file psk (NULL: plain). */
struct ferry_net_opts tlskeys_psk(const char *psk);

/* Options using certificate cert with key, trusting k's CA. */
struct ferry_net_opts tlskeys_cert(const struct tlskeys *k,
				   const char *cert, const char *key);

#endif
