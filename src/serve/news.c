// SPDX-License-Identifier: MIT
/*
 * serve news: what a VM's threads tell the main thread (a failure, which
 * ends that VM; a note, logged), under news_lock, then a wake of the
 * server's poll.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#include "serve/serve.h"

static void news(struct serve_vm *vm, char *slot, bool *flag, bool keep_first,
		 const char *fmt, va_list ap)
{
	pthread_mutex_lock(&vm->news_lock);
	if (!keep_first || !slot[0]) {
		vsnprintf(slot, 256, fmt, ap);
		*flag = true;
	}
	pthread_mutex_unlock(&vm->news_lock);
	serve_wake_server(vm->srv);
}

void serve_vm_fail(struct serve_vm *vm, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	news(vm, vm->failure, &vm->failure_new, true, fmt, ap);
	va_end(ap);
}

void serve_vm_note(struct serve_vm *vm, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	news(vm, vm->note, &vm->note_new, false, fmt, ap);
	va_end(ap);
}
