/* SPDX-License-Identifier: MIT */
#ifndef MINIVMM_H
#define MINIVMM_H

/*
 * minivmm: what its two files share.  minivmm.c is the machine (RAM,
 * vCPUs, a disk, the vCPU operations ferry calls, the memory check) and
 * main(); flows.c is what it does with ferry, each flow through a handle
 * that a thread of the VMM's own watches.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <ferry/ferry.h>

#define PAGE		4096UL
#define RAM_LOW		(4UL << 20)		/* at gpa 0 */
#define RAM_GAP		(4UL << 20)
#define RAM_HIGH	(4UL << 20)		/* at gpa RAM_LOW + RAM_GAP */
#define RAM_SIZE	(RAM_LOW + RAM_HIGH)
#define NR_PAGES	(RAM_SIZE / PAGE)
#define NR_VCPUS	2

struct vm;

struct vcpu {
	struct vm *vm;
	unsigned int index;
	pthread_t thread;
	_Atomic uint64_t steps;		/* written by the vCPU thread */
	_Atomic int mp_state;		/* enum ferry_mp_state */
};

struct vm {
	const char *name;
	int memfd;
	uint8_t *ram;			/* the VMM's own mapping */
	struct ferry_mem *mem;		/* ferry's view of it */
	struct vcpu vcpu[NR_VCPUS];
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned int pauses;		/* under lock: pause nesting */
	unsigned int parked;		/* under lock: vCPUs stopped */
	bool quit;			/* under lock */
	bool created, started;
	int disk_fd;			/* the disk image */
	bool disk_pending;		/* under lock: an I/O to make on resume */
	bool disk_ran;			/* the I/O was started */
	bool disk_joined;
	pthread_t disk;
	int disk_err;			/* the device's result: 0 or errno */
};

/* minivmm.c */
int fail(const char *what, int err);
int vm_create(struct vm *vm, const char *name);
void vm_destroy(struct vm *vm);
struct ferry_vm vm_handle(struct vm *vm);
int vm_pause(struct vm *vm);
int vm_resume(struct vm *vm);
uint64_t vm_steps(struct vm *vm);
int vm_check(struct vm *vm, const char *flow);
int disk_check(struct vm *vm, const char *flow);
extern const struct ferry_dest_ops dest_ops;

/* flows.c */
int snapshot(struct vm *src, int fd);
int lazy_restore(struct vm *dst, int fd);
int migrate_cancelled(struct vm *src, struct vm *dst);
int migrate(struct vm *src, struct vm *dst);

#endif
