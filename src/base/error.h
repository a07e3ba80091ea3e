/* SPDX-License-Identifier: MIT */
#ifndef FERRY_ERROR_INTERNAL_H
#define FERRY_ERROR_INTERNAL_H

#include <errno.h>

#include "ferry/error.h"

/*
 * The engine's names for the public calls in ferry/error.h: record a
 * reason and return err (a negative errno), so a failure reads
 *
 *	return ferry_fail(-EINVAL, "region size %zu ...", size);
 *
 * and ferry_fail_ctx(err, "open uffd") prefixes the recorded reason with
 * some context and passes err through.  One implementation serves both
 * the engine and the callbacks and VMs outside it.
 */
#define ferry_fail	ferry_error_set
#define ferry_fail_ctx	ferry_error_prefix

#endif
