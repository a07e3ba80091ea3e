/* SPDX-License-Identifier: MIT */
#ifndef FERRY_TEST_RIGTEST_H
#define FERRY_TEST_RIGTEST_H

/* What the tests built on the migration rig (migrig.h) check alike. */
#include "migrig.h"
#include "test.h"

/* The rig ran, and the verifier passed where the VM ended up. */
static inline enum test_result rig_verified(struct test_ctx *ctx,
					    const struct rig_result *r,
					    int ret)
{
	CHECK(ctx, ret == 0 && r->verified, "rig: %d: %s (source %d: %s; "
	      "destination %d: %s)", ret, r->why, r->src.ret, r->src.reason,
	      r->dst.ret, r->dst.reason);
	CHECK(ctx, r->rep.ok, "verifier at the %s: %llu lost, %llu torn, "
	      "%llu duplicated", r->at_dest ? "destination" : "source",
	      (unsigned long long)r->rep.lost, (unsigned long long)r->rep.torn,
	      (unsigned long long)r->rep.duplicated);
	return TEST_PASS;
}

#endif
