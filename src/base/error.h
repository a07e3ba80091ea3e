/* SPDX-License-Identifier: MIT */
#ifndef FERRY_ERROR_INTERNAL_H
#define FERRY_ERROR_INTERNAL_H

#include <errno.h>

#include "ferry/error.h"

/*
 * Record a reason for the caller and return err (a negative errno), so a
 * failure reads: return ferry_fail(-EINVAL, "region size %zu ...", size);
 */
int ferry_fail(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Prefix the recorded reason with some context ("open uffd: ...") and pass
 * err through.
 */
int ferry_fail_ctx(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
