/* SPDX-License-Identifier: MIT */
#ifndef FERRY_TEST_MIGPAIR_H
#define FERRY_TEST_MIGPAIR_H

/*
 * One live migration of the workload VM inside this process, for tests
 * about how it travels (TLS, descriptors, hostile neighbours): the
 * destination receives on a thread, the source sends on the caller's,
 * and the destination's VM is run on, stopped and verified (no write
 * lost, torn or duplicated; every vCPU's power state as it was).
 */
#include "ferry/migrate.h"
#include "ferry/net.h"
#include "test.h"

struct migpair {
	enum ferry_mode mode;		/* default pre-copy (0) */
	size_t mem;			/* 0: 16 MiB */
	unsigned int channels;		/* 0: 2 */
	/*
	 * Where the sessions come from: both given (a pair, descriptors);
	 * else a listener (given, or opened on listen_addr, default
	 * 127.0.0.1:0, with listen_opts) that the destination accepts on,
	 * and a connect with connect_opts.
	 */
	struct ferry_session *src_session, *dst_session;
	struct ferry_listener *listener;
	const char *listen_addr;
	const struct ferry_net_opts *listen_opts, *connect_opts;
	/* out: how the destination's session was authenticated */
	char dst_auth[FERRY_NET_AUTH_MAX];
};

/* Migrate, verify at the destination; the sessions given are closed. */
enum test_result migpair_run(struct test_ctx *ctx, struct migpair *m);

#endif
