// SPDX-License-Identifier: MIT
/*
 * bench/kvm: the KVM VM (vm/kvm, docs/kvm.md).  Where KVM cannot run, one
 * line says why and nothing else is measured:
 *
 *   kvm=absent reason=<what ferry_kvm_usable() said>
 *   kvm_skip=<the same reason>
 *
 * Where it runs (a small guest: exits cost tens of microseconds on a PVM
 * host, far more under nested emulation, where these figures are only a
 * functional check; <backing> is shmem and thp for the migrations, shmem
 * for the restore):
 *
 *   kvm=present
 *   kvm_backend=<VMX, SVM or PVM, and what said so>
 *   kvm_dirty_log_ms_per_gib_{min,median,max}
 *                       KVM's own floor: one collect of the dirty log
 *                       (KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG of what
 *                       it returned) per GiB of guest RAM scanned, while
 *                       the guest writes; through ferry's dirty tracker,
 *                       the VMM's writes included
 *   kvm_dirty_log_pages_median   pages reported per collect
 *   kvm_precopy_<backing>_gbps   ferry's pre-copy stream rate (bytes
 *                       sent / total time) for the KVM guest, loopback
 *   kvm_precopy_<backing>_downtime_ms
 *   kvm_postcopy_<backing>_fault_us_{p50,p99,max}
 *                       post-copy with no live pass, pushed at 8 MB/s:
 *                       demand faults from guest mode, request to page
 *                       in place, as the destination measured them
 *   kvm_postcopy_<backing>_faults     MINOR + MISSING faults served
 *   kvm_postcopy_<backing>_view_pmd_mib
 *                       of the destination's memory, what ferry's view
 *                       maps with PMDs at the end (THP: collapsed again)
 *   kvm_postcopy_<backing>_kvm_pages_{4k,2m}
 *                       how KVM's MMU maps the guest once it has run on
 *                       (binary stats; with shadow paging 4 KiB, the
 *                       guest's own page size)
 *   kvm_lazy_restore_<backing>_resume_ms
 *                       restore start to vCPUs running, lazily, from a
 *                       snapshot of the same guest in a file
 *   kvm_lazy_restore_<backing>_fault_us_{p50,p99,max}
 *
 * Not measured here (left): the bare exit round trip and the bare
 * guest-mode userfaultfd fault round trip, which need a guest of their
 * own; the same run's built-in figures are in bench/migrate and
 * bench/snapshot.
 */
#include "bench.h"
#include "ferry-vm/kvm.h"

#define MEM_SIZE	(64 * BENCH_MIB)
#define NR_VCPUS	2
#define SPEC		"random,read=20"
#define WARMUP_NS	(300 * 1000000ULL)
#define DIRTY_ROUNDS	15
#define ROUND_NS	(50 * 1000000ULL)

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / BENCH_NSEC),
			       (long)(ns % BENCH_NSEC) };

	nanosleep(&ts, NULL);
}

static struct ferry_kvm_vm *make_vm(enum ferry_backing b)
{
	struct ferry_guest_config cfg;
	struct ferry_kvm_vm *kv;

	ferry_guest_config_init(&cfg);
	cfg.nr_vcpus = NR_VCPUS;
	bench_check(ferry_guest_config_set_workload(&cfg, SPEC), "workload");
	bench_check(ferry_kvm_vm_create(&cfg, b, MEM_SIZE, &kv),
		    "ferry_kvm_vm_create");
	bench_check(ferry_kvm_start(kv->kvm), "ferry_kvm_start");
	sleep_ns(WARMUP_NS);
	return kv;
}

/* ---- KVM's dirty log ---------------------------------------------------- */

static void dirty_log(void)
{
	struct ferry_kvm_vm *kv = make_vm(FERRY_BACKING_SHMEM);
	double ms_per_gib[DIRTY_ROUNDS];
	uint64_t pages[DIRTY_ROUNDS], total = kv->mem->total_size;
	uint64_t *map;
	struct ferry_dirty *d;
	size_t words = 0;

	for (unsigned int i = 0; i < kv->mem->nr_regions; i++) {
		size_t w = kv->mem->regions[i].nr_pages / 64 + 1;

		words = w > words ? w : words;
	}
	map = calloc(words, 8);
	if (!map)
		bench_die("out of memory");
	bench_check(ferry_dirty_start(kv->mem, &d), "ferry_dirty_start");
	for (int r = 0; r < DIRTY_ROUNDS; r++) {
		uint64_t t0, n = 0;

		sleep_ns(ROUND_NS);
		t0 = bench_now_ns();
		for (unsigned int i = 0; i < kv->mem->nr_regions; i++) {
			ssize_t got = ferry_dirty_collect(d, i, map);

			bench_check(got < 0 ? got : 0, "ferry_dirty_collect");
			n += (uint64_t)got;
			memset(map, 0, words * 8);
		}
		ms_per_gib[r] = (double)(bench_now_ns() - t0) / 1e6 *
				(double)BENCH_GIB / (double)total;
		pages[r] = n;
	}
	ferry_dirty_stop(d);
	bench_put_spread("kvm_dirty_log", "ms_per_gib", ms_per_gib,
			 DIRTY_ROUNDS);
	qsort(pages, DIRTY_ROUNDS, sizeof(pages[0]), bench_cmp_u64);
	bench_put("kvm_dirty_log", "pages_median",
		  (double)pages[DIRTY_ROUNDS / 2], 0);
	free(map);
	ferry_kvm_vm_destroy(kv);
}

/* ---- a migration over loopback ------------------------------------------ */

struct mig {
	struct ferry_listener *listener;
	struct ferry_kvm_dest dd;
	struct ferry_migrate_stats src, dst;
	int dst_ret;
	struct ferry_kvm_pages pages;	/* KVM's, after running on */
	int pages_ret;
};

static void *dest_main(void *arg)
{
	struct mig *m = arg;
	struct ferry_session *s = NULL;
	struct ferry_migrate_opts o;
	struct ferry_vm vm;
	int ret = ferry_net_accept(m->listener, 60000, &s);

	ferry_migrate_opts_init(&o);
	o.timeout_ms = 60000;
	if (!ret)
		ret = ferry_migrate_recv(s, ferry_kvm_vm_dest_ops(), &m->dd, &o,
					 &vm, &m->dst);
	if (ret)
		fprintf(stderr, "bench kvm: destination: %s\n",
			ferry_error_msg());
	m->dst_ret = ret;
	ferry_net_session_close(s);
	return NULL;
}

static void migrate(enum ferry_backing b, enum ferry_mode mode,
		    bool at_once, struct mig *m)
{
	struct ferry_kvm_vm *kv = make_vm(b);
	struct ferry_migrate_opts o;
	struct ferry_session *s;
	pthread_t dest;

	*m = (struct mig){ .dd = { .keep_backing = true } };
	bench_check(ferry_net_listener_open("127.0.0.1:0", NULL,
					    &m->listener), "listen");
	if (pthread_create(&dest, NULL, dest_main, m))
		bench_die("pthread_create");
	bench_check(ferry_net_connect(ferry_net_listener_addr(m->listener),
				      2, NULL, &s), "connect");
	ferry_migrate_opts_init(&o);
	o.mode = mode;
	o.postcopy_at_once = at_once;
	o.bandwidth_bps = at_once ? 8000000 : 0;
	o.timeout_ms = 60000;
	bench_check(ferry_migrate_send(&kv->vm, s, &o, &m->src),
		    "ferry_migrate_send");
	ferry_net_session_close(s);
	pthread_join(dest, NULL);
	ferry_net_listener_close(m->listener);
	bench_check(m->dst_ret, "ferry_migrate_recv");
	sleep_ns(WARMUP_NS);	/* the guest runs on, faulting pages in */
	m->pages_ret = ferry_kvm_page_sizes(m->dd.kv->kvm, &m->pages);
	ferry_kvm_vm_destroy(m->dd.kv);
	ferry_kvm_vm_destroy(kv);
}

static void put_us(const char *prefix, const char *what, uint64_t ns)
{
	bench_put(prefix, what, (double)ns / 1e3, 2);
}

static void migrations(enum ferry_backing b)
{
	const char *name = ferry_mem_backing_name(b);
	char prefix[64];
	struct mig m;

	migrate(b, FERRY_MODE_PRECOPY, false, &m);
	snprintf(prefix, sizeof(prefix), "kvm_precopy_%s", name);
	bench_put(prefix, "gbps", bench_gbps(m.src.bytes_sent,
					      m.src.total_ns), 3);
	bench_put(prefix, "downtime_ms", (double)m.src.downtime_ns / 1e6, 3);
	migrate(b, FERRY_MODE_POSTCOPY, true, &m);
	snprintf(prefix, sizeof(prefix), "kvm_postcopy_%s", name);
	put_us(prefix, "fault_us_p50", m.dst.fault_latency_p50_ns);
	put_us(prefix, "fault_us_p99", m.dst.fault_latency_p99_ns);
	put_us(prefix, "fault_us_max", m.dst.fault_latency_max_ns);
	bench_put(prefix, "faults", (double)(m.dst.minor_faults +
					     m.dst.missing_faults), 0);
	bench_put(prefix, "view_pmd_mib", (double)m.dst.pmd_mapped_bytes /
		  BENCH_MIB, 1);
	if (m.pages_ret) {
		printf("%s_kvm_pages_skip=%s\n", prefix, ferry_error_msg());
		return;
	}
	bench_put(prefix, "kvm_pages_4k", (double)m.pages.pages_4k, 0);
	bench_put(prefix, "kvm_pages_2m", (double)m.pages.pages_2m, 0);
}

/* ---- a lazy restore ----------------------------------------------------- */

static void lazy_restore(enum ferry_backing b)
{
	struct ferry_restore_opts o = { .mode = FERRY_RESTORE_LAZY };
	struct ferry_kvm_dest dd = { .keep_backing = true };
	struct ferry_snapshot_opts so = { .live = false };
	struct ferry_snapshot_stats sst;
	struct ferry_restore_stats st;
	struct ferry_kvm_vm *kv = make_vm(b);
	struct ferry_restore *rs;
	char prefix[64];
	int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd < 0)
		bench_die("O_TMPFILE in /tmp: %s", strerror(errno));
	bench_check(ferry_snapshot_save(&kv->vm, fd, &so, &sst),
		    "ferry_snapshot_save");
	ferry_kvm_vm_destroy(kv);
	bench_check(ferry_restore_start(fd, ferry_kvm_vm_dest_ops(), &dd, &o,
					&rs), "ferry_restore_start");
	bench_check(ferry_restore_finish(rs, &st), "ferry_restore_finish");
	ferry_restore_destroy(rs);
	ferry_kvm_vm_destroy(dd.kv);
	close(fd);
	snprintf(prefix, sizeof(prefix), "kvm_lazy_restore_%s",
		 ferry_mem_backing_name(b));
	bench_put(prefix, "resume_ms", (double)st.resume_ns / 1e6, 3);
	put_us(prefix, "fault_us_p50", st.fault_latency_p50_ns);
	put_us(prefix, "fault_us_p99", st.fault_latency_p99_ns);
	put_us(prefix, "fault_us_max", st.fault_latency_max_ns);
}

int main(int argc, char **argv)
{
	uint64_t start = bench_now_ns();
	struct ferry_kvm_info info;

	bench_start(argc, argv, "kvm", 240);
	if (!ferry_kvm_usable()) {
		char why[512];

		snprintf(why, sizeof(why), "%s", ferry_error_msg());
		printf("kvm=absent reason=%s\n", why);
		printf("kvm_skip=%s\n", why);
		bench_finish(start);
		return 0;
	}
	ferry_kvm_probe(&info);
	printf("kvm=present\n");
	printf("kvm_backend=%s (%s)\n", ferry_kvm_backend_name(info.backend),
	       info.backend_why);
	fflush(stdout);
	dirty_log();
	fflush(stdout);
	migrations(FERRY_BACKING_SHMEM);
	fflush(stdout);
	migrations(FERRY_BACKING_THP);
	fflush(stdout);
	lazy_restore(FERRY_BACKING_SHMEM);
	bench_finish(start);
	return 0;
}
