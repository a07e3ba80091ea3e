// SPDX-License-Identifier: MIT
/*
 * bench/pause: how long pausing every vCPU of the built-in VM takes while
 * they are all busy writing guest memory (the target: under 1 ms for 8
 * vCPUs).  Pause is what a switchover starts with, so it is downtime.
 *
 * Figures:
 *   vcpus=8
 *   pause_us_p50 / _p99 / _max / _samples        8 vCPUs, workload random
 *   pause_kv_us_p50 / ...                        8 vCPUs, workload kv (puts
 *                                                of up to 16 cells a step)
 *   pause_2vcpu_us_p50 / ...                     2 vCPUs, random: one per
 *                                                CPU on a 2-CPU machine
 *   pause_steps_per_s, ...                       how busy the vCPUs were
 *   resume_us_p50 / ...                          until ferry_guest_resume
 *                                                returns (8 vCPUs): the
 *                                                vCPUs it woke may take
 *                                                its CPU first, so the
 *                                                tail is the scheduler's
 *
 * With more busy vCPUs than CPUs, a vCPU that has lost its CPU must get
 * it back before it can stop: pause gives the vCPUs still running after
 * 200 us, and itself, real-time priority until they have parked (when the
 * process may: root, or RLIMIT_RTPRIO), so the tail no longer waits for
 * the time slices of the threads ahead of them; what the kernel runs
 * without preemption (this kernel is PREEMPT_NONE) it still waits for.
 * The 2-vCPU figure shows pause with a CPU per vCPU.
 */
#include "bench.h"

#define NR_VCPUS	8
#define MEM_SIZE	(256 * BENCH_MIB)
#define SAMPLES		300
#define WARMUP_NS	(300 * 1000000ULL)
#define BUDGET_NS	(15 * BENCH_NSEC)	/* per workload */

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / BENCH_NSEC),
			       (long)(ns % BENCH_NSEC) };

	nanosleep(&ts, NULL);
}

static uint64_t total_steps(struct ferry_guest *g)
{
	struct ferry_guest_stats st;

	ferry_guest_stats(g, &st);
	return st.steps;
}

/* Pause / resume `SAMPLES` times, a few ms of running apart. */
static size_t sample(struct ferry_guest *g, uint64_t *pause_ns,
		     uint64_t *resume_ns)
{
	uint64_t deadline = bench_now_ns() + BUDGET_NS;
	size_t n;

	for (n = 0; n < SAMPLES && bench_now_ns() < deadline; n++) {
		uint64_t t0, t1, t2;

		/* 2-5 ms apart, so pauses land anywhere in a step. */
		sleep_ns(2000000 + (uint64_t)(n * 7919 % 3000) * 1000);
		t0 = bench_now_ns();
		bench_check(ferry_guest_pause(g), "pause");
		t1 = bench_now_ns();
		bench_check(ferry_guest_resume(g), "resume");
		t2 = bench_now_ns();
		pause_ns[n] = t1 - t0;
		resume_ns[n] = t2 - t1;
	}
	return n;
}

static void measure(const char *prefix, unsigned int nr_vcpus,
		    const char *spec, bool resume)
{
	static uint64_t pause_ns[SAMPLES], resume_ns[SAMPLES];
	struct ferry_guest_config cfg;
	struct ferry_guest *g;
	struct ferry_mem *mem;
	uint64_t t0, steps0;
	size_t n;

	bench_check(ferry_mem_create(&mem), "ferry_mem_create");
	bench_check(ferry_mem_add_region(mem, FERRY_BACKING_SHMEM, MEM_SIZE,
					 NULL), "guest memory");
	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = nr_vcpus;
	bench_check(ferry_guest_config_set_workload(&cfg, spec), "workload");
	bench_check(ferry_guest_create(mem, &cfg, &g), "ferry_guest_create");
	bench_check(ferry_guest_start(g), "ferry_guest_start");
	sleep_ns(WARMUP_NS);
	steps0 = total_steps(g);
	t0 = bench_now_ns();
	n = sample(g, pause_ns, resume_ns);
	bench_put(prefix, "steps_per_s", (double)(total_steps(g) - steps0) *
		  1e9 / (double)(bench_now_ns() - t0), 0);
	bench_put_latency(prefix, pause_ns, n);
	if (resume)
		bench_put_latency("resume", resume_ns, n);
	ferry_guest_destroy(g);
	ferry_mem_destroy(mem);
}

int main(int argc, char **argv)
{
	uint64_t start = bench_now_ns();

	bench_start(argc, argv, "pause", 90);
	printf("vcpus=%d\n", NR_VCPUS);
	measure("pause", NR_VCPUS, "random", true);
	measure("pause_kv", NR_VCPUS, "kv", false);
	measure("pause_2vcpu", 2, "random", false);
	bench_finish(start);
	return 0;
}
