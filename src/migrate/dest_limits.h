/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_DEST_LIMITS_H
#define FERRY_MIGRATE_DEST_LIMITS_H

/*
 * dest_limits: what a stream's HEADER may make this side set up.  A
 * header is 144 bytes a peer (or a file) can fill with any sizes; the
 * guest memory it claims, and every table sized from it, is checked here
 * before anything is allocated, by the receiver and by the restorer.
 */
#include <stdint.h>

#include "ferry/wire.h"

/*
 * 0 when the guest `s` describes fits: at most max_guest_bytes in all
 * (0: MemTotal), and its hugetlb regions within what the pool can give
 * (ferry_hugetlb_room).  Else -E2BIG or -ENOMEM with the figures; `who`
 * names the stream's origin in the reason ("the source", "the
 * snapshot").
 */
int dest_limits_check(const struct ferry_wire_stream *s,
		      uint64_t max_guest_bytes, const char *who);

#endif
