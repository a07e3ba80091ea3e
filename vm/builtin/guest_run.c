// SPDX-License-Identifier: MIT
/*
 * guest_run: the vCPU threads, and pausing them.
 *
 * A vCPU thread alternates between two loops:
 *
 *   fast  steps of the workload, with no lock, while its request word is
 *         clear, it is below its step limit and no scripted call is due;
 *   slow  under g->lock, at a step boundary: act on requests, run the boot
 *         program, fire due power calls, or wait on its condition
 *         variable while it may not run (paused, off, suspended, at its
 *         limit, throttled by the rate cap, an idle tick).
 *
 * A waiting vCPU is quiescent; if it waits with nothing to do until
 * someone else acts (off, suspended, at its limit) it is also settled.
 * Pause sets VCPU_REQ_PAUSE in every vCPU and waits for all of them to be
 * quiescent:
 *
 *   pauser                          vCPU i (fast loop)
 *   lock; depth++; req |= PAUSE
 *   wait(quiesce) ...               sees PAUSE after its step
 *                                   lock; quiescent; nr_quiescent++
 *                                   last one: broadcast(quiesce)
 *   wakes: nr_quiescent == n        wait(unpause) until PAUSE clears
 *
 * so pause takes one step of the slowest vCPU plus a wake-up, and a vCPU
 * stuck in a page fault simply delays it.  Nobody spins: waits are on
 * condition variables, and the only thing read on the hot path is the
 * vCPU's own request word.
 *
 * With more busy vCPUs than CPUs, a vCPU that has lost its CPU sees the
 * request only once the scheduler gives it one back, after a time slice
 * (milliseconds) of each thread ahead of it.  So if some vCPUs are still
 * running after PAUSE_GRACE_NS, the pauser raises itself and them to
 * real-time priority (guest_kick.c): they take a CPU at once and park
 * within a step, and the pauser runs as soon as the last one has.  The
 * pauser goes back to its own priority before it returns, the vCPUs
 * before they run again.
 *
 * Paused vCPUs all wait on one condition variable, so resume makes them
 * all runnable with one broadcast: on an oversubscribed host the resumer
 * may lose its CPU to the first vCPU it wakes, and must not leave the
 * others asleep meanwhile.  Any other wait is on the vCPU's own condition
 * variable, which kicks signal.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ferry/clock.h"
#include "ferry/error.h"
#include "ferry/hist.h"
#include "guest.h"
#include "psci.h"

#define IDLE_TICK_NS	1000000ULL	/* the idle workload's timer */
/* Pause: tens of us when every vCPU has a CPU; then boost the rest. */
#define PAUSE_GRACE_NS	200000ULL
#define RATE_NAP_NS	1000000ULL	/* shortest throttle sleep */

struct run_cache {		/* what the fast loop checks; thread-local */
	uint64_t limit;		/* steps; UINT64_MAX: none */
	uint64_t next_event;	/* step of the next due call; or MAX */
	uint64_t sleep_until;	/* ns: throttled or idle until; 0: not */
	double rate;		/* bytes per ns for this vCPU; 0: no cap */
};

void guest_publish(struct vcpu *v)
{
	memory_order o = memory_order_relaxed;

	atomic_store_explicit(&v->pub_steps, v->regs.steps, o);
	atomic_store_explicit(&v->pub_writes, v->regs.writes, o);
	atomic_store_explicit(&v->pub_reads, v->regs.reads, o);
	atomic_store_explicit(&v->pub_read_errors, v->regs.read_errors, o);
}

static void ns_to_timespec(uint64_t ns, struct timespec *ts)
{
	ts->tv_sec = (time_t)(ns / 1000000000ULL);
	ts->tv_nsec = (long)(ns % 1000000000ULL);
}

/*
 * Wait at a step boundary (g->lock held) on `cond` until kicked, resumed,
 * stopped or, with a deadline, until then.  The caller re-checks
 * everything.
 */
static void vcpu_wait(struct vcpu *v, pthread_cond_t *cond, bool settle,
		      uint64_t deadline_ns)
{
	struct ferry_guest *g = v->g;
	struct timespec ts;

	v->quiescent = true;
	g->nr_quiescent++;
	if (settle) {
		v->settled = true;
		g->nr_settled++;
	}
	if (g->nr_quiescent == g->nr_vcpus || g->nr_settled == g->nr_vcpus)
		pthread_cond_broadcast(&g->quiesce);
	if (deadline_ns) {
		ns_to_timespec(deadline_ns, &ts);
		pthread_cond_timedwait(cond, &g->lock, &ts);
	} else {
		pthread_cond_wait(cond, &g->lock);
	}
	if (v->settled) {
		v->settled = false;
		g->nr_settled--;
	}
	v->quiescent = false;
	g->nr_quiescent--;
}

/* The lowest vCPU that is on at boot powers the others on. */
static void boot_program(struct vcpu *v)
{
	struct ferry_guest *g = v->g;
	uint64_t on_at_boot = ~g->boot_off_mask;

	v->power.pc = VCPU_PC_RUN;
	if (!on_at_boot ||
	    (unsigned int)__builtin_ctzll(on_at_boot) != v->index)
		return;
	for (unsigned int i = 0; i < g->nr_vcpus; i++)
		if (g->boot_off_mask >> i & 1)
			psci_call_locked(g, v, FERRY_PSCI_CPU_ON, i);
}

static void came_up(struct vcpu *v)
{
	if (v->power.pc == VCPU_PC_BOOT)
		boot_program(v);
	v->power.on_pending = false;
}

static enum ferry_psci_fn event_fn(enum wl_event_kind kind)
{
	static const enum ferry_psci_fn fns[WL_EV_KIND_COUNT] = {
		[WL_EV_OFF] = FERRY_PSCI_CPU_OFF,
		[WL_EV_SUSPEND] = FERRY_PSCI_CPU_SUSPEND,
		[WL_EV_ON] = FERRY_PSCI_CPU_ON,
		[WL_EV_WAKE] = FERRY_PSCI_WAKE,
		[WL_EV_RESET] = FERRY_PSCI_SYSTEM_RESET,
		[WL_EV_SYSOFF] = FERRY_PSCI_SYSTEM_OFF,
	};

	return fns[kind];
}

/*
 * Fire the scripted call at the cursor if it is due; true if it fired.
 * A CPU_ON whose target is still on stays at the cursor: every power
 * change kicks all vCPUs, and the caller tries again then, so "bring it
 * back later" happens once the target is really off, whatever the timing.
 */
static bool fire_due_event(struct vcpu *v)
{
	const struct wl_event *ev;
	int ret;

	if (v->power.script_cursor >= v->part.nr_events)
		return false;
	ev = &v->part.events[v->power.script_cursor];
	if (ev->step > v->regs.steps)
		return false;
	v->power.script_cursor++;
	ret = psci_call_locked(v->g, v, event_fn(ev->kind), ev->target);
	if (ev->kind == WL_EV_ON && (ret == FERRY_PSCI_ALREADY_ON ||
				     ret == FERRY_PSCI_ON_PENDING)) {
		v->power.script_cursor--;
		return false;
	}
	return true;
}

static void refresh_cache(struct vcpu *v, struct run_cache *rc)
{
	uint32_t cursor = v->power.script_cursor;
	uint64_t next = UINT64_MAX;

	rc->limit = v->g->step_limit ? v->g->step_limit : UINT64_MAX;
	/* A due call still here is a CPU_ON waiting for a power change. */
	if (cursor < v->part.nr_events &&
	    v->part.events[cursor].step > v->regs.steps)
		next = v->part.events[cursor].step;
	rc->next_event = next;
}

/*
 * The slow loop, g->lock held: returns true when the vCPU may run steps,
 * false when its thread must exit.
 */
static bool vcpu_may_run(struct vcpu *v, struct run_cache *rc)
{
	struct ferry_guest *g = v->g;

	for (;;) {
		unsigned int req = atomic_fetch_and_explicit(&v->req,
				~VCPU_REQ_KICK, memory_order_relaxed);
		bool on = v->power.mp == FERRY_MP_RUNNABLE;
		bool at_limit;

		if (req & VCPU_REQ_STOP)
			return false;
		if (on && !(req & VCPU_REQ_PAUSE)) {
			came_up(v);
			if (fire_due_event(v))
				continue;
		}
		at_limit = g->step_limit && v->regs.steps >= g->step_limit;
		if (req & VCPU_REQ_PAUSE) {
			vcpu_wait(v, &g->unpause, !on || at_limit, 0);
			continue;
		}
		if (!on || at_limit) {
			vcpu_wait(v, &v->wake, true, 0);
			continue;
		}
		if (rc->sleep_until && ferry_clock_now_ns() < rc->sleep_until) {
			vcpu_wait(v, &v->wake, false, rc->sleep_until);
			continue;
		}
		rc->sleep_until = 0;
		refresh_cache(v, rc);
		return true;
	}
}

/*
 * Token bucket for the rate cap: true when the vCPU must sleep before its
 * next step (rc->sleep_until set).  The bucket holds at most 10 ms of
 * writes, so a pause does not turn into a burst afterwards.
 */
static bool rate_throttle(struct vcpu *v, struct run_cache *rc,
			  unsigned int cells)
{
	double burst = rc->rate * 1e7, deficit;
	uint64_t now;

	v->tokens -= (double)cells * CELL_SIZE;
	if (v->tokens >= 0)
		return false;
	now = ferry_clock_now_ns();
	v->tokens += (double)(now - v->tokens_ns) * rc->rate;
	v->tokens_ns = now;
	if (v->tokens > burst)
		v->tokens = burst;
	if (v->tokens >= 0)
		return false;
	deficit = -v->tokens / rc->rate;
	rc->sleep_until = now + (deficit > RATE_NAP_NS ? (uint64_t)deficit :
							 RATE_NAP_NS);
	return true;
}

/* Steps until something needs the slow loop. */
static void vcpu_run_steps(struct vcpu *v, struct run_cache *rc)
{
	struct ferry_guest *g = v->g;
	bool idle = g->wl.kind == WL_IDLE;

	while (!atomic_load_explicit(&v->req, memory_order_relaxed) &&
	       v->regs.steps < rc->limit && v->regs.steps < rc->next_event) {
		unsigned int cells = workload_step(&g->wl, &v->part,
						   &g->cells, &v->regs, v->buf);

		guest_publish(v);
		if (idle) {
			rc->sleep_until = ferry_clock_now_ns() + IDLE_TICK_NS;
			return;
		}
		if (rc->rate > 0 && cells && rate_throttle(v, rc, cells))
			return;
	}
}

static void *vcpu_main(void *arg)
{
	struct vcpu *v = arg;
	struct ferry_guest *g = v->g;
	struct run_cache rc = { 0 };
	bool run;

	pthread_mutex_lock(&g->lock);
	v->tid = gettid();
	v->policy = sched_getscheduler(0);
	sched_getparam(0, &v->param);
	pthread_mutex_unlock(&g->lock);
	if (g->wl.rate)
		rc.rate = (double)g->wl.rate / g->nr_vcpus / 1e9;
	v->tokens = 0;
	v->tokens_ns = ferry_clock_now_ns();
	for (;;) {
		pthread_mutex_lock(&g->lock);
		run = vcpu_may_run(v, &rc);
		pthread_mutex_unlock(&g->lock);
		if (!run)
			return NULL;
		vcpu_run_steps(v, &rc);
	}
}

/* ---- lifecycle -------------------------------------------------------- */

/*
 * Set or clear a request bit in every vCPU (g->lock held).  Waiting vCPUs
 * are not woken here: a pause leaves them waiting, and the callers that
 * must wake them (resume, stop) do so after dropping the lock, so a woken
 * vCPU does not run straight into the lock still held.
 */
static void request_all(struct ferry_guest *g, unsigned int bits, bool set)
{
	for (unsigned int i = 0; i < g->nr_vcpus; i++) {
		struct vcpu *v = &g->vcpus[i];

		if (set)
			atomic_fetch_or_explicit(&v->req, bits,
						 memory_order_relaxed);
		else
			atomic_fetch_and_explicit(&v->req, ~bits,
						  memory_order_relaxed);
	}
}

/*
 * Safe without the lock: a vCPU checks its requests and starts waiting
 * under the lock, so it either saw the change or is waiting for this.
 */
static void wake_all(struct ferry_guest *g)
{
	pthread_cond_broadcast(&g->unpause);
	for (unsigned int i = 0; i < g->nr_vcpus; i++)
		pthread_cond_signal(&g->vcpus[i].wake);
}

/* Ask the first `nr` threads to exit and join them. */
static void stop_threads(struct ferry_guest *g, unsigned int nr)
{
	pthread_mutex_lock(&g->lock);
	request_all(g, VCPU_REQ_STOP, true);
	pthread_mutex_unlock(&g->lock);
	wake_all(g);
	for (unsigned int i = 0; i < nr; i++)
		pthread_join(g->vcpus[i].thread, NULL);
	pthread_mutex_lock(&g->lock);
	request_all(g, VCPU_REQ_STOP, false);
	for (unsigned int i = 0; i < nr; i++) {
		g->vcpus[i].tid = 0;
		g->vcpus[i].boosted = false;
	}
	g->started = false;
	g->nr_quiescent = 0;
	g->nr_settled = 0;
	pthread_cond_broadcast(&g->quiesce);
	pthread_mutex_unlock(&g->lock);
}

/* vCPU threads take no signals: the caller's threads handle them. */
static int spawn(struct vcpu *v)
{
	sigset_t all, old;
	int ret;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = pthread_create(&v->thread, NULL, vcpu_main, v);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -ret;
}

/* A VM started while paused is paused once every thread has parked. */
static void wait_if_paused(struct ferry_guest *g)
{
	pthread_mutex_lock(&g->lock);
	while (g->pause_depth && g->started &&
	       g->nr_quiescent < g->nr_vcpus)
		pthread_cond_wait(&g->quiesce, &g->lock);
	pthread_mutex_unlock(&g->lock);
}

int ferry_guest_start(struct ferry_guest *g)
{
	int ret = 0;

	pthread_mutex_lock(&g->lock);
	if (g->started)
		ret = ferry_error_set(-EBUSY, "the VM is already running");
	g->started = true;
	pthread_mutex_unlock(&g->lock);
	if (ret)
		return ret;
	for (unsigned int i = 0; i < g->nr_vcpus; i++) {
		ret = spawn(&g->vcpus[i]);
		if (ret) {
			stop_threads(g, i);
			return ferry_error_set(ret,
					       "starting vCPU thread %u: %s", i,
					       strerror(-ret));
		}
	}
	wait_if_paused(g);
	return 0;
}

int ferry_guest_stop(struct ferry_guest *g)
{
	bool started;

	pthread_mutex_lock(&g->lock);
	started = g->started;
	pthread_mutex_unlock(&g->lock);
	if (started)
		stop_threads(g, g->nr_vcpus);
	return 0;
}

static bool all_quiescent(const struct ferry_guest *g)
{
	return !g->started || g->nr_quiescent == g->nr_vcpus;
}

/* Until every vCPU is quiescent, or deadline_ns (0: none); g->lock held. */
static void wait_quiescent(struct ferry_guest *g, uint64_t deadline_ns)
{
	struct timespec ts;

	ns_to_timespec(deadline_ns, &ts);
	while (!all_quiescent(g)) {
		if (!deadline_ns)
			pthread_cond_wait(&g->quiesce, &g->lock);
		else if (pthread_cond_timedwait(&g->quiesce, &g->lock, &ts) ==
			 ETIMEDOUT)
			return;
	}
}

/* The pauser's own scheduling, while it waits for stragglers. */
struct pauser_sched {
	int policy;
	struct sched_param param;
	bool boosted;
};

/* First the pauser, so that the vCPUs boosted next do not preempt it. */
static void boost_stragglers(struct ferry_guest *g, struct pauser_sched *ps)
{
	struct sched_param rt = { .sched_priority = 1 };
	int saved = errno;

	ps->policy = sched_getscheduler(0);
	ps->boosted = ps->policy == SCHED_OTHER &&
		      !sched_getparam(0, &ps->param) &&
		      !sched_setscheduler(0, SCHED_FIFO, &rt);
	errno = saved;
	for (unsigned int i = 0; i < g->nr_vcpus; i++)
		if (!g->vcpus[i].quiescent)
			guest_boost_locked(&g->vcpus[i]);
}

static void pauser_unboost(struct pauser_sched *ps)
{
	int saved = errno;

	if (ps->boosted)
		sched_setscheduler(0, ps->policy, &ps->param);
	errno = saved;
}

int ferry_guest_pause(struct ferry_guest *g)
{
	struct pauser_sched ps = { .boosted = false };

	pthread_mutex_lock(&g->lock);
	if (g->pause_depth++ == 0)
		request_all(g, VCPU_REQ_PAUSE, true);
	wait_quiescent(g, ferry_clock_now_ns() + PAUSE_GRACE_NS);
	if (!all_quiescent(g)) {
		boost_stragglers(g, &ps);
		wait_quiescent(g, 0);
	}
	pthread_mutex_unlock(&g->lock);
	pauser_unboost(&ps);
	return 0;
}

int ferry_guest_resume(struct ferry_guest *g)
{
	bool last = false;
	int ret = 0;

	pthread_mutex_lock(&g->lock);
	if (g->pause_depth == 0)
		ret = ferry_error_set(-EINVAL, "resume without a pause");
	else
		last = --g->pause_depth == 0;
	if (last) {
		guest_unboost_all_locked(g);
		request_all(g, VCPU_REQ_PAUSE, false);
	}
	pthread_mutex_unlock(&g->lock);
	if (last)
		pthread_cond_broadcast(&g->unpause);
	return ret;
}

int ferry_guest_set_step_limit(struct ferry_guest *g, uint64_t limit)
{
	pthread_mutex_lock(&g->lock);
	g->step_limit = limit;
	guest_kick_all_locked(g);
	pthread_mutex_unlock(&g->lock);
	return 0;
}

int ferry_guest_wait_settled(struct ferry_guest *g, int timeout_ms)
{
	uint64_t deadline = ferry_clock_now_ns() + (uint64_t)timeout_ms * 1000000;
	struct timespec ts;
	int ret = 0;

	ns_to_timespec(deadline, &ts);
	pthread_mutex_lock(&g->lock);
	while (g->started && g->nr_settled < g->nr_vcpus && !ret) {
		if (timeout_ms < 0)
			pthread_cond_wait(&g->quiesce, &g->lock);
		else
			ret = -pthread_cond_timedwait(&g->quiesce, &g->lock,
						      &ts);
	}
	pthread_mutex_unlock(&g->lock);
	if (ret == -ETIMEDOUT)
		return ferry_error_set(ret, "vCPUs still busy after %d ms",
				       timeout_ms);
	return ret;
}
