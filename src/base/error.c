// SPDX-License-Identifier: MIT
/* error: the thread-local "why" behind a -errno return. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/error.h"

static _Thread_local char errmsg[512];

const char *ferry_error_msg(void)
{
	return errmsg;
}

void ferry_error_clear(void)
{
	errmsg[0] = '\0';
}

int ferry_error_set(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
	return err;
}

int ferry_error_prefix(int err, const char *fmt, ...)
{
	char prefix[256], old[sizeof(errmsg)];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, errmsg, sizeof(old));
	/* A reason longer than the buffer is cut short; that is fine. */
	if (snprintf(errmsg, sizeof(errmsg), "%s: %s", prefix,
		     old[0] ? old : strerror(-err)) < 0)
		errmsg[0] = '\0';
	return err;
}
