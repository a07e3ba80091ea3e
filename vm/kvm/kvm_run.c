// SPDX-License-Identifier: MIT
/*
 * kvm_run: one thread per vCPU in KVM_RUN, pausing them, and the guest's
 * calls (power, settling, naps, errors).
 *
 * A vCPU thread loops, under k->lock but for KVM_RUN itself:
 *
 *   sync     make KVM's state what the vCPU should be (entry registers
 *            after a CPU_ON or a reset, the MP state after a power call)
 *   run      if it may (on, not paused, not settled, not napping):
 *            KVM_RUN; a call is answered, then completed at once with
 *            immediate_exit (KVM finishes an MMIO only on the next
 *            KVM_RUN, and no state may be read before it has)
 *   park     otherwise: quiescent, on its condition variable
 *
 * Pause kicks every vCPU in KVM_RUN (immediate_exit, then the kick
 * signal, under k->lock: a thread clears immediate_exit under the lock
 * before it enters, so a kick is never lost) and waits until all park.
 * A vCPU stopped in the middle of a step stays there: its registers say
 * where.  What must happen at step boundaries (ferry_kvm_stop, the
 * guest's SYSTEM_RESET and SYSTEM_OFF) sets the control page's park
 * word: each vCPU makes a PARK call at its next boundary, and the
 * machine-wide action is applied once every vCPU is at one.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ferry/clock.h"
#include "ferry/error.h"
#include "kvm_int.h"

#define PSCI_SUCCESS		0
#define PSCI_INVALID		(-2)
#define PSCI_DENIED		(-3)
#define PSCI_ALREADY_ON		(-4)
#define NAP_MAX_NS		1000000000ULL

/* ---- kicks -------------------------------------------------------------- */

static void on_kick(int sig)
{
	(void)sig;	/* the signal's only job is to end KVM_RUN */
}

static void install_kick(void)
{
	struct sigaction sa = { .sa_handler = on_kick };

	sigemptyset(&sa.sa_mask);
	sigaction(FERRY_KVM_KICK_SIGNAL, &sa, NULL);
}

void kvm_run_init_signal(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, install_kick);
}

void kvm_kick_locked(struct kvcpu *v)
{
	if (v->in_run) {
		v->run->immediate_exit = 1;
		pthread_kill(v->thread, FERRY_KVM_KICK_SIGNAL);
	}
	pthread_cond_signal(&v->wake);
}

void kvm_wake_all_locked(struct ferry_kvm *k)
{
	for (unsigned int i = 0; i < k->nr_vcpus; i++)
		kvm_kick_locked(&k->vcpus[i]);
}

void kvm_fail_locked(struct kvcpu *v, const char *fmt, ...)
{
	struct ferry_kvm *k = v->k;
	va_list ap;

	v->failed = true;
	if (!k->error[0]) {
		va_start(ap, fmt);
		vsnprintf(k->error, sizeof(k->error), fmt, ap);
		va_end(ap);
	}
	pthread_cond_broadcast(&k->quiesce);
}

bool kvm_parked_locked(const struct ferry_kvm *k)
{
	return !k->started ||
	       (k->pause_depth && k->nr_quiescent == k->nr_vcpus);
}

/* ---- power -------------------------------------------------------------- */

static uint32_t kvm_mp_of(enum ferry_mp_state state)
{
	switch (state) {
	case FERRY_MP_RUNNABLE:
		return KVM_MP_STATE_RUNNABLE;
	case FERRY_MP_SUSPENDED:
		return KVM_MP_STATE_HALTED;
	default:
		return KVM_MP_STATE_INIT_RECEIVED;	/* off: awaits SIPI */
	}
}

int kvm_vcpu_sync_locked(struct kvcpu *v)
{
	int ret = 0;

	if (v->entry != KVM_ENTRY_NONE) {
		ret = kvm_vcpu_set_entry(v, v->entry);
		v->entry = KVM_ENTRY_NONE;
	}
	if (!ret && kvm_mp_to_ferry(v->kvm_mp) != v->power)
		ret = kvm_vcpu_set_mp(v, kvm_mp_of(v->power));
	return ret;
}

static void power_changed_locked(struct ferry_kvm *k)
{
	k->ctl->power_gen++;
	kvm_wake_all_locked(k);
}

/* The lowest vCPU on at boot runs the boot program; the others run. */
void kvm_reset_locked(struct ferry_kvm *k)
{
	bool boot_seen = false;

	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		struct kvcpu *v = &k->vcpus[i];
		bool off = k->boot_off_mask >> i & 1;

		v->power = off ? FERRY_MP_STOPPED : FERRY_MP_RUNNABLE;
		v->entry = off ? KVM_ENTRY_NONE :
			   boot_seen ? KVM_ENTRY_AP : KVM_ENTRY_BOOT;
		boot_seen |= !off;
		v->wake_pending = false;
		v->at_limit = v->parked = false;
		v->nap_until = 0;
		v->boundary = true;
		v->resets++;
	}
	k->ctl->boot_off_mask = k->boot_off_mask;
	power_changed_locked(k);
}

static unsigned int nr_powered(const struct ferry_kvm *k)
{
	unsigned int n = 0;

	for (unsigned int i = 0; i < k->nr_vcpus; i++)
		n += k->vcpus[i].power != FERRY_MP_STOPPED;
	return n;
}

static struct kvcpu *target_of(struct ferry_kvm *k, uint64_t target)
{
	return target < k->nr_vcpus ? &k->vcpus[target] : NULL;
}

static int64_t cpu_on(struct ferry_kvm *k, uint64_t target)
{
	struct kvcpu *t = target_of(k, target);

	if (!t)
		return PSCI_INVALID;
	if (t->power != FERRY_MP_STOPPED)
		return PSCI_ALREADY_ON;
	t->power = FERRY_MP_RUNNABLE;
	t->entry = KVM_ENTRY_AP;
	t->wake_pending = false;
	t->boundary = true;
	power_changed_locked(k);
	return PSCI_SUCCESS;
}

static int64_t cpu_off(struct kvcpu *v)
{
	if (nr_powered(v->k) <= 1)
		return PSCI_DENIED;
	v->power = FERRY_MP_STOPPED;
	v->wake_pending = false;
	power_changed_locked(v->k);
	return PSCI_SUCCESS;
}

static int64_t cpu_suspend(struct kvcpu *v)
{
	if (v->wake_pending)
		v->wake_pending = false;
	else
		v->power = FERRY_MP_SUSPENDED;
	return PSCI_SUCCESS;
}

static int64_t wake(struct ferry_kvm *k, uint64_t target)
{
	struct kvcpu *t = target_of(k, target);

	if (!t)
		return PSCI_INVALID;
	if (t->power == FERRY_MP_STOPPED)
		return PSCI_DENIED;
	if (t->power == FERRY_MP_SUSPENDED) {
		t->power = FERRY_MP_RUNNABLE;
		power_changed_locked(k);
	} else {
		t->wake_pending = true;
	}
	return PSCI_SUCCESS;
}

/* SYSTEM_RESET and SYSTEM_OFF wait for every vCPU's step boundary. */
static void machine_action_locked(struct ferry_kvm *k, enum kvm_action a)
{
	k->action = a;
	k->ctl->park = 1;
	kvm_wake_all_locked(k);
}

static bool all_at_boundary(const struct ferry_kvm *k,
			    const struct kvcpu *self)
{
	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		const struct kvcpu *v = &k->vcpus[i];

		if (!v->boundary || (v->in_run && v != self))
			return false;
	}
	return true;
}

void kvm_action_apply_locked(struct ferry_kvm *k, const struct kvcpu *self)
{
	if (k->action == KVM_ACTION_NONE || !all_at_boundary(k, self))
		return;
	if (k->action == KVM_ACTION_RESET) {
		kvm_reset_locked(k);
	} else {
		for (unsigned int i = 0; i < k->nr_vcpus; i++) {
			k->vcpus[i].power = FERRY_MP_STOPPED;
			k->vcpus[i].wake_pending = false;
		}
		power_changed_locked(k);
	}
	k->action = KVM_ACTION_NONE;
	k->ctl->park = k->stopping;
	for (unsigned int i = 0; i < k->nr_vcpus; i++)
		k->vcpus[i].parked = false;
	kvm_wake_all_locked(k);
}

/* ---- the guest's calls -------------------------------------------------- */

static int64_t call_load_locked(struct kvcpu *v, unsigned int fn,
				uint64_t arg)
{
	struct ferry_kvm *k = v->k;

	switch (fn) {
	case KG_CALL_CPU_ON:
		return cpu_on(k, arg);
	case KG_CALL_CPU_OFF:
		return cpu_off(v);
	case KG_CALL_CPU_SUSPEND:
		return cpu_suspend(v);
	case KG_CALL_WAKE:
		return wake(k, arg);
	case KG_CALL_SYSTEM_RESET:
		machine_action_locked(k, KVM_ACTION_RESET);
		return PSCI_SUCCESS;
	case KG_CALL_SYSTEM_OFF:
		machine_action_locked(k, KVM_ACTION_OFF);
		return PSCI_SUCCESS;
	case KG_CALL_SETTLE:
		v->at_limit = true;
		pthread_cond_broadcast(&k->quiesce);
		return 0;
	case KG_CALL_PARK:
		v->parked = true;
		return 0;
	default:
		kvm_fail_locked(v, "vCPU %u: unknown call %u", v->index, fn);
		return -1;
	}
}

static void call_store_locked(struct kvcpu *v, unsigned int fn,
			      uint64_t off, uint64_t value)
{
	switch (fn * 4 + (unsigned int)(off / 8)) {
	case KG_CALL_NAP * 4:
		v->nap_until = ferry_clock_now_ns() +
			       (value < NAP_MAX_NS ? value : NAP_MAX_NS);
		return;
	case KG_CALL_BAD_CELL * 4:
		kvm_fail_locked(v, "vCPU %u: cell %llu failed its check",
				v->index, (unsigned long long)value);
		return;
	case KG_CALL_FAULT * 4 + 1:
		v->fault_err = value;
		return;
	case KG_CALL_FAULT * 4 + 2:
		v->fault_rip = value;
		return;
	case KG_CALL_FAULT * 4 + 3:
		v->fault_cr2 = value;
		return;
	case KG_CALL_FAULT * 4:
		kvm_fail_locked(v, "vCPU %u: exception %llu at rip %#llx "
				"(error code %#llx, cr2 %#llx)", v->index,
				(unsigned long long)value,
				(unsigned long long)v->fault_rip,
				(unsigned long long)v->fault_err,
				(unsigned long long)v->fault_cr2);
		return;
	default:
		kvm_fail_locked(v, "vCPU %u: a store to call %u + %llu",
				v->index, fn, (unsigned long long)off);
	}
}

static void handle_mmio(struct kvcpu *v)
{
	struct ferry_kvm *k = v->k;
	uint64_t addr = v->run->mmio.phys_addr, off = addr - KG_MMIO_GPA;
	unsigned int fn = (unsigned int)(off / KG_CALL_STRIDE);
	uint64_t in = off % KG_CALL_STRIDE, value;

	pthread_mutex_lock(&k->lock);
	if (addr < KG_MMIO_GPA || off >= KG_MMIO_SIZE ||
	    v->run->mmio.len != 8) {
		kvm_fail_locked(v, "vCPU %u: %u-byte MMIO at %#llx", v->index,
				v->run->mmio.len, (unsigned long long)addr);
	} else if (v->run->mmio.is_write) {
		memcpy(&value, v->run->mmio.data, 8);
		call_store_locked(v, fn, in, value);
	} else {
		value = (uint64_t)call_load_locked(v, fn, in / 8);
		memcpy(v->run->mmio.data, &value, 8);
	}
	/* Every call is made between two steps, but an exception's. */
	v->boundary = fn != KG_CALL_FAULT;
	pthread_mutex_unlock(&k->lock);
}

static const char *exit_name(uint32_t reason)
{
	switch (reason) {
	case KVM_EXIT_SHUTDOWN:
		return "shutdown (a triple fault)";
	case KVM_EXIT_INTERNAL_ERROR:
		return "an internal error";
	case KVM_EXIT_FAIL_ENTRY:
		return "a failed entry";
	case KVM_EXIT_IO:
		return "port I/O";
	case KVM_EXIT_HLT:
		return "HLT";
	default:
		return "an exit ferry does not handle";
	}
}

static void fail_exit(struct kvcpu *v)
{
	struct kvm_run *run = v->run;
	struct kvm_regs r = { 0 };
	uint64_t detail = 0;

	kvm_ioctl(v->fd, KVM_GET_REGS, &r);
	if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
		detail = run->internal.suberror;
	else if (run->exit_reason == KVM_EXIT_FAIL_ENTRY)
		detail = run->fail_entry.hardware_entry_failure_reason;
	pthread_mutex_lock(&v->k->lock);
	kvm_fail_locked(v, "vCPU %u: %s (exit %u, %#llx) at rip %#llx",
			v->index, exit_name(run->exit_reason),
			run->exit_reason, (unsigned long long)detail,
			(unsigned long long)r.rip);
	pthread_mutex_unlock(&v->k->lock);
}

/* KVM_RUN once; returns whether an MMIO needs completing. */
static bool run_once(struct kvcpu *v)
{
	int ret = kvm_ioctl_intr(v->fd, KVM_RUN, NULL);

	if (ret == -EINTR || ret == -EAGAIN)
		return false;
	if (ret < 0) {
		pthread_mutex_lock(&v->k->lock);
		kvm_fail_locked(v, "vCPU %u: KVM_RUN: %s", v->index,
				strerror(-ret));
		pthread_mutex_unlock(&v->k->lock);
		return false;
	}
	switch (v->run->exit_reason) {
	case KVM_EXIT_MMIO:
		handle_mmio(v);
		return true;
	case KVM_EXIT_INTR:
		return false;
	default:
		fail_exit(v);
		return v->run->exit_reason == KVM_EXIT_IO;
	}
}

/*
 * Finish the exit inside KVM before anything reads or changes the
 * vCPU: KVM_RUN with immediate_exit completes the MMIO and returns.
 */
static void complete_exit(struct kvcpu *v)
{
	v->run->immediate_exit = 1;
	kvm_ioctl_intr(v->fd, KVM_RUN, NULL);
}

/* ---- the thread --------------------------------------------------------- */

static bool may_run_locked(const struct kvcpu *v)
{
	return !v->k->pause_depth && v->power == FERRY_MP_RUNNABLE &&
	       !v->failed && !v->at_limit && !v->parked && !v->stop &&
	       (!v->nap_until || ferry_clock_now_ns() >= v->nap_until);
}

static void park_locked(struct kvcpu *v)
{
	struct ferry_kvm *k = v->k;
	struct timespec ts;

	v->quiescent = true;
	k->nr_quiescent++;
	pthread_cond_broadcast(&k->quiesce);
	if (v->nap_until && !k->pause_depth && !v->stop) {
		ts.tv_sec = (time_t)(v->nap_until / 1000000000ULL);
		ts.tv_nsec = (long)(v->nap_until % 1000000000ULL);
		pthread_cond_timedwait(&v->wake, &k->lock, &ts);
	} else {
		pthread_cond_wait(&v->wake, &k->lock);
	}
	v->quiescent = false;
	k->nr_quiescent--;
}

static void run_unlocked(struct kvcpu *v)
{
	struct ferry_kvm *k = v->k;

	v->in_run = true;
	v->boundary = false;
	v->nap_until = 0;
	v->run->immediate_exit = 0;
	pthread_mutex_unlock(&k->lock);
	if (run_once(v))
		complete_exit(v);
	pthread_mutex_lock(&k->lock);
	v->in_run = false;
	kvm_action_apply_locked(k, v);
}

static void *vcpu_main(void *arg)
{
	struct kvcpu *v = arg;
	struct ferry_kvm *k = v->k;
	sigset_t kick;

	sigemptyset(&kick);
	sigaddset(&kick, FERRY_KVM_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &kick, NULL);
	pthread_mutex_lock(&k->lock);
	while (!v->stop) {
		int ret = kvm_vcpu_sync_locked(v);

		if (ret)
			kvm_fail_locked(v, "vCPU %u: %s", v->index,
					ferry_error_msg());
		kvm_action_apply_locked(k, v);
		if (may_run_locked(v))
			run_unlocked(v);
		else if (!v->stop)
			park_locked(v);
	}
	pthread_mutex_unlock(&k->lock);
	return NULL;
}

/* ---- lifecycle ---------------------------------------------------------- */

/* vCPU threads take no signal but the kick: the caller's handle them. */
static int spawn(struct kvcpu *v)
{
	sigset_t all, old;
	int ret;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = pthread_create(&v->thread, NULL, vcpu_main, v);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -ret;
}

static void join_threads(struct ferry_kvm *k, unsigned int nr);

void kvm_threads_stop(struct ferry_kvm *k)
{
	bool started;

	pthread_mutex_lock(&k->lock);
	started = k->started;
	pthread_mutex_unlock(&k->lock);
	if (started)
		join_threads(k, k->nr_vcpus);
}

static void join_threads(struct ferry_kvm *k, unsigned int nr)
{
	pthread_mutex_lock(&k->lock);
	for (unsigned int i = 0; i < nr; i++) {
		k->vcpus[i].stop = true;
		kvm_kick_locked(&k->vcpus[i]);
	}
	pthread_mutex_unlock(&k->lock);
	for (unsigned int i = 0; i < nr; i++)
		pthread_join(k->vcpus[i].thread, NULL);
	pthread_mutex_lock(&k->lock);
	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		k->vcpus[i].stop = false;
		k->vcpus[i].parked = false;
	}
	k->started = false;
	k->stopping = false;
	k->nr_quiescent = 0;
	k->ctl->park = k->action != KVM_ACTION_NONE;
	pthread_cond_broadcast(&k->quiesce);
	pthread_mutex_unlock(&k->lock);
}

static void wait_quiescent_locked(struct ferry_kvm *k)
{
	while (k->started && k->nr_quiescent < k->nr_vcpus)
		pthread_cond_wait(&k->quiesce, &k->lock);
}

int ferry_kvm_start(struct ferry_kvm *k)
{
	int ret = 0;

	kvm_run_init_signal();
	pthread_mutex_lock(&k->lock);
	if (k->started)
		ret = ferry_error_set(-EBUSY, "the VM is already running");
	k->started = true;
	pthread_mutex_unlock(&k->lock);
	if (ret)
		return ret;
	for (unsigned int i = 0; i < k->nr_vcpus; i++) {
		ret = spawn(&k->vcpus[i]);
		if (ret) {
			join_threads(k, i);
			return ferry_error_set(ret, "starting vCPU thread %u: "
					       "%s", i, strerror(-ret));
		}
	}
	pthread_mutex_lock(&k->lock);
	if (k->pause_depth)
		wait_quiescent_locked(k);
	pthread_mutex_unlock(&k->lock);
	return 0;
}

static bool all_parked_at_boundary(const struct ferry_kvm *k)
{
	for (unsigned int i = 0; i < k->nr_vcpus; i++)
		if (!k->vcpus[i].quiescent || !k->vcpus[i].boundary)
			return false;
	return true;
}

int ferry_kvm_stop(struct ferry_kvm *k)
{
	pthread_mutex_lock(&k->lock);
	if (!k->started) {
		pthread_mutex_unlock(&k->lock);
		return 0;
	}
	if (!k->pause_depth) {
		k->stopping = true;
		k->ctl->park = 1;
		kvm_wake_all_locked(k);
		while (!all_parked_at_boundary(k))
			pthread_cond_wait(&k->quiesce, &k->lock);
	}
	pthread_mutex_unlock(&k->lock);
	join_threads(k, k->nr_vcpus);
	return 0;
}

int ferry_kvm_pause(struct ferry_kvm *k)
{
	int ret = 0;

	pthread_mutex_lock(&k->lock);
	if (k->pause_depth++ == 0)
		for (unsigned int i = 0; i < k->nr_vcpus; i++)
			kvm_kick_locked(&k->vcpus[i]);
	wait_quiescent_locked(k);
	/* Another thread's power call may have left a parked vCPU behind. */
	for (unsigned int i = 0; !ret && k->started && i < k->nr_vcpus; i++)
		ret = kvm_vcpu_sync_locked(&k->vcpus[i]);
	pthread_mutex_unlock(&k->lock);
	return ret;
}

int ferry_kvm_resume(struct ferry_kvm *k)
{
	int ret = 0;

	pthread_mutex_lock(&k->lock);
	if (!k->pause_depth)
		ret = ferry_error_set(-EINVAL, "resume without a pause");
	else if (--k->pause_depth == 0)
		kvm_wake_all_locked(k);
	pthread_mutex_unlock(&k->lock);
	return ret;
}

int ferry_kvm_set_step_limit(struct ferry_kvm *k, uint64_t limit)
{
	pthread_mutex_lock(&k->lock);
	k->ctl->step_limit = limit;
	for (unsigned int i = 0; i < k->nr_vcpus; i++)
		k->vcpus[i].at_limit = false;
	kvm_wake_all_locked(k);
	pthread_mutex_unlock(&k->lock);
	return 0;
}

static bool settled(const struct kvcpu *v)
{
	return v->quiescent && (v->power != FERRY_MP_RUNNABLE || v->failed ||
				v->at_limit || v->parked);
}

static bool all_settled(const struct ferry_kvm *k)
{
	for (unsigned int i = 0; i < k->nr_vcpus; i++)
		if (!settled(&k->vcpus[i]))
			return false;
	return true;
}

int ferry_kvm_wait_settled(struct ferry_kvm *k, int timeout_ms)
{
	uint64_t deadline = ferry_clock_now_ns() +
			    (uint64_t)timeout_ms * 1000000ULL;
	struct timespec ts;
	int ret = 0;

	pthread_mutex_lock(&k->lock);
	while (k->started && !all_settled(k) && !ret) {
		if (timeout_ms < 0) {
			pthread_cond_wait(&k->quiesce, &k->lock);
			continue;
		}
		/* The quiesce condition variable waits on CLOCK_MONOTONIC. */
		ts.tv_sec = (time_t)(deadline / 1000000000ULL);
		ts.tv_nsec = (long)(deadline % 1000000000ULL);
		ret = -pthread_cond_timedwait(&k->quiesce, &k->lock, &ts);
	}
	pthread_mutex_unlock(&k->lock);
	if (ret == -ETIMEDOUT)
		return ferry_error_set(ret, "vCPUs still busy after %d ms",
				       timeout_ms);
	return ret;
}
