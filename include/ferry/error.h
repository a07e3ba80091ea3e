/* SPDX-License-Identifier: MIT */
#ifndef FERRY_ERROR_H
#define FERRY_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Every ferry function returns 0 (or a count) on success and -errno on
 * failure.  The library never prints; when it fails it also records a short
 * human-readable reason in a thread-local buffer, which the caller fetches
 * with ferry_error_msg() right after the failing call.
 */

/*
 * The reason recorded by the last failing ferry call on this thread, or ""
 * if none.  Valid until the next ferry call on this thread.
 */
const char *ferry_error_msg(void);

/* Forget the recorded reason. */
void ferry_error_clear(void);

/*
 * Leave a reason for ferry_error_msg() from code ferry calls back or that
 * builds on ferry: a vCPU operation (struct ferry_vcpu_ops), a
 * destination or clone operation (struct ferry_dest_ops, ferry_clone_ops),
 * a VM implementation.  ferry passes the -errno such a callback returns up
 * to its own caller with the reason still in place (or prefixed with
 * ferry's context), so the one line the user sees says what really failed.
 *
 * Like ferry's own reasons, it is thread-local: recorded on the thread
 * that calls ferry_error_set(), which is the thread ferry runs the
 * callback on; ferry takes it from there when the callback returns its
 * error (and carries it to the thread that reports the failure when that
 * is another).  It stays valid until the next ferry call on that thread.
 */

/*
 * Record a printf-style reason and return err (a negative errno), so a
 * failure reads: return ferry_error_set(-EINVAL, "no vCPU %u", index);
 */
int ferry_error_set(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Prefix the reason recorded on this thread with some context, "what was
 * being done: reason", and return err.  With no reason recorded, err's
 * strerror() stands in for it.  For passing up a failure with context:
 * return ferry_error_prefix(ret, "vCPU %u state", index);
 */
int ferry_error_prefix(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif

#endif
