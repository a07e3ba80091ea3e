/* SPDX-License-Identifier: MIT */
#ifndef FERRY_ERROR_H
#define FERRY_ERROR_H

/*
 * Every ferry function returns 0 (or a count) on success and -errno on
 * failure.  The library never prints; when it fails it also records a short
 * human-readable reason in a thread-local buffer, which the caller fetches
 * with ferry_errmsg() right after the failing call.
 */

/*
 * The reason recorded by the last failing ferry call on this thread, or ""
 * if none.  Valid until the next ferry call on this thread.
 */
const char *ferry_errmsg(void);

/* Forget the recorded reason. */
void ferry_errmsg_clear(void);

#endif
