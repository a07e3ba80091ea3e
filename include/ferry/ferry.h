/* SPDX-License-Identifier: MIT */
#ifndef FERRY_H
#define FERRY_H

/*
 * libferry: live migration, snapshot and lazy restore of a virtual
 * machine's memory and vCPU state, on shared memory, with userfaultfd.
 * Include this one header, link with -lferry (pkg-config ferry).
 */
#include "ferry/caps.h"
#include "ferry/chan.h"
#include "ferry/clock.h"
#include "ferry/clone.h"
#include "ferry/dirty.h"
#include "ferry/error.h"
#include "ferry/hist.h"
#include "ferry/hugetlb.h"
#include "ferry/mem.h"
#include "ferry/migrate.h"
#include "ferry/net.h"
#include "ferry/pagefaults.h"
#include "ferry/restore.h"
#include "ferry/serve.h"
#include "ferry/snapshot.h"
#include "ferry/uffd.h"
#include "ferry/vcpu.h"
#include "ferry/wire.h"

#define FERRY_VERSION "0.1.0"

#endif
