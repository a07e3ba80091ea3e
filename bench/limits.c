// SPDX-License-Identifier: MIT
/*
 * limits: the best this machine can do at the things ferry does, measured
 * with the same library calls ferry uses, so that ferry's own figures can
 * be given as ratios to them.
 *
 *   memcpy         bandwidth between large private buffers
 *   install        filling empty shared memory: first touch, pwrite into
 *                  the memfd, MADV_POPULATE_WRITE then memcpy; with the page
 *                  faults each costs (seed 000)
 *   continue_bulk  UFFDIO_CONTINUE over large ranges already in the memfd
 *   thp_advise     install and continue_bulk again on THP shmem with
 *                  shmem_enabled=advise for the time of the measurement
 *   uffd_rtt       one userfaultfd fault, as the faulting thread sees it
 */
#include "bench.h"

#define MEMCPY_BUF	(256 * BENCH_MIB)
#define MEMCPY_TOTAL	BENCH_GIB
#define MEMCPY_REPS	7

#define INSTALL_SIZE	(512 * BENCH_MIB)
/* The source, cycled: larger than the caches, like real page data. */
#define INSTALL_SRC	(64 * BENCH_MIB)
#define INSTALL_REPS	3
#define PWRITE_CHUNK	(2 * BENCH_MIB)

#define CONTINUE_SIZE	BENCH_GIB
#define CONTINUE_CHUNK	(2 * BENCH_MIB)
#define CONTINUE_REPS	3

#define RTT_BUDGET_NS	(4 * BENCH_NSEC)	/* per case */

#define PAGE_4K		4096UL

/* A backing under a name: THP is measured as set up, and with "advise". */
struct variant {
	const char *label;
	enum ferry_backing backing;
};

static const struct variant shmem = { "shmem", FERRY_BACKING_SHMEM };
static const struct variant thp = { "thp", FERRY_BACKING_THP };
static const struct variant hugetlb = { "hugetlb", FERRY_BACKING_HUGETLB };
static const struct variant thp_advise = { "thp_advise", FERRY_BACKING_THP };

/* ---- memcpy ----------------------------------------------------------- */

static void run_memcpy(void)
{
	uint8_t *src = bench_alloc(MEMCPY_BUF, 1);
	uint8_t *dst = bench_alloc(MEMCPY_BUF, 2);
	double gbps[MEMCPY_REPS];

	for (int rep = 0; rep < MEMCPY_REPS; rep++) {
		uint64_t t0 = bench_now_ns();

		for (size_t done = 0; done < MEMCPY_TOTAL; done += MEMCPY_BUF)
			memcpy(dst, src, MEMCPY_BUF);
		/* The copies are the point: keep the compiler from eliding. */
		__asm__ volatile("" : : "r"(dst) : "memory");
		gbps[rep] = bench_gbps(MEMCPY_TOTAL, bench_now_ns() - t0);
	}
	bench_put_spread("memcpy", "gbps", gbps, MEMCPY_REPS);
	bench_free(src, MEMCPY_BUF);
	bench_free(dst, MEMCPY_BUF);
}

/* ---- shared helpers --------------------------------------------------- */

static struct ferry_mem *region_create(enum ferry_backing backing,
				       size_t size, struct ferry_region **r)
{
	struct ferry_mem *mem;

	bench_check(ferry_mem_create(&mem), "creating guest memory");
	bench_check(ferry_mem_add_region(mem, backing, size, r),
		    "adding a region");
	return mem;
}

static int populate(uint8_t *addr, size_t len)
{
	return madvise(addr, len, MADV_POPULATE_WRITE) ? -errno : 0;
}

/* Pool pages the backing needs for `size` bytes; none but for hugetlb. */
static size_t pool_pages(enum ferry_backing backing, size_t size)
{
	return backing == FERRY_BACKING_HUGETLB ? size / FERRY_HUGE_PAGE_SIZE
						: 0;
}

/*
 * Reserve the pool a variant needs; on failure print why the figures
 * under `prefix` are missing and return false.
 */
static bool pool_get(const struct variant *v, size_t size, const char *prefix,
		     struct ferry_hugetlb_resv *resv)
{
	size_t pages = pool_pages(v->backing, size);

	if (!pages)
		return true;
	if (!bench_hugetlb_reserve(pages, resv))
		return true;
	bench_put_text(prefix, "skip", ferry_error_msg());
	return false;
}

static void pool_put(const struct variant *v, struct ferry_hugetlb_resv *resv)
{
	if (v->backing == FERRY_BACKING_HUGETLB)
		bench_hugetlb_restore(resv);
}

/* KiB of ShmemPmdMapped in the mapping that starts at addr, or -1. */
static long long pmd_mapped_kib(const void *addr)
{
	unsigned long start, end;
	long long kib = -1;
	bool inside = false;
	char line[256];
	FILE *f = fopen("/proc/self/smaps", "re");

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2) {
			if (inside)
				break;
			inside = start == (uintptr_t)addr;
		} else if (inside && !strncmp(line, "ShmemPmdMapped:", 15)) {
			kib = strtoll(line + 15, NULL, 10);
		}
	}
	if (f)
		fclose(f);
	return kib;
}

static long long shmem_huge_kib(void)
{
	return bench_proc_field("/proc/meminfo", "ShmemHugePages");
}

static double pct_of(long long kib, size_t size)
{
	return kib < 0 ? -1.0 : 100.0 * (double)kib * BENCH_KIB / (double)size;
}

/* ---- install ---------------------------------------------------------- */

enum install_method {
	INSTALL_TOUCH,		/* memcpy into the fresh guest view */
	INSTALL_PWRITE,		/* pwrite() into the memfd, 2 MiB each */
	INSTALL_POPULATE,	/* MADV_POPULATE_WRITE, then memcpy */
	NR_INSTALL,
};

static const char *const install_names[NR_INSTALL] = {
	[INSTALL_TOUCH] = "touch",
	[INSTALL_PWRITE] = "pwrite",
	[INSTALL_POPULATE] = "populate",
};

/* What the repetitions of one (method, variant) add up to. */
struct install_result {
	double gbps[INSTALL_REPS];
	struct ferry_pagefaults faults;	/* summed deltas */
	long long huge_kib;	/* file pages that are huge, last rep */
	long long pmd_kib;	/* ...mapped by PMD in the guest view */
};

static void copy_cycled(uint8_t *dst, const uint8_t *src, size_t len)
{
	for (size_t off = 0; off < len; off += INSTALL_SRC)
		memcpy(dst + off, src, len - off < INSTALL_SRC ? len - off
							       : INSTALL_SRC);
}

static int pwrite_cycled(int fd, const uint8_t *src, size_t len)
{
	for (size_t off = 0; off < len; off += PWRITE_CHUNK) {
		ssize_t n = pwrite(fd, src + off % INSTALL_SRC, PWRITE_CHUNK,
				   (off_t)off);

		if (n < 0)
			return -errno;
		if ((size_t)n != PWRITE_CHUNK)
			return -EIO;
	}
	return 0;
}

static int install(enum install_method m, struct ferry_region *r,
		   const uint8_t *src)
{
	int ret;

	if (m == INSTALL_PWRITE)
		return pwrite_cycled(r->memfd, src, r->size);
	if (m == INSTALL_POPULATE) {
		ret = populate(r->guest, r->size);
		if (ret)
			return ret;
	}
	copy_cycled(r->guest, src, r->size);
	return 0;
}

static void faults_add(struct ferry_pagefaults *sum, const struct ferry_pagefaults *f)
{
	sum->minor += f->minor;
	sum->major += f->major;
	sum->vmstat_pgfault += f->vmstat_pgfault;
}

/* One repetition into a freshly created, empty region.  0 or -errno. */
static int install_once(enum install_method m, const struct variant *v,
			const uint8_t *src, struct install_result *res, int rep)
{
	struct ferry_region *r;
	struct ferry_mem *mem = region_create(v->backing, INSTALL_SIZE, &r);
	long long huge_before = shmem_huge_kib();
	struct ferry_pagefaults f;
	uint64_t t0;
	int ret;

	bench_check(ferry_pagefaults_start(&f, FERRY_PAGEFAULTS_THREAD),
		    "counting faults");
	t0 = bench_now_ns();
	ret = install(m, r, src);
	res->gbps[rep] = bench_gbps(r->size, bench_now_ns() - t0);
	bench_check(ferry_pagefaults_stop(&f), "counting faults");
	faults_add(&res->faults, &f);
	res->huge_kib = shmem_huge_kib() - huge_before;
	res->pmd_kib = pmd_mapped_kib(r->guest);
	ferry_mem_destroy(mem);
	return ret;
}

static void install_print(enum install_method m, const struct variant *v,
			  struct install_result *res)
{
	uint64_t bytes = (uint64_t)INSTALL_SIZE * INSTALL_REPS;
	size_t page = ferry_mem_backing_page_size(v->backing);
	char prefix[64];

	snprintf(prefix, sizeof(prefix), "install_%s_%s", install_names[m],
		 v->label);
	bench_put_spread(prefix, "gbps", res->gbps, INSTALL_REPS);
	bench_put(prefix, "faults_per_4k",
		  ferry_pagefaults_per_page(&res->faults, bytes / PAGE_4K), 4);
	bench_put(prefix, "faults_per_page",
		  ferry_pagefaults_per_page(&res->faults, bytes / page), 4);
	bench_put(prefix, "pgfault_per_4k",
		  (double)res->faults.vmstat_pgfault /
		  (double)(bytes / PAGE_4K), 4);
	if (v->backing != FERRY_BACKING_THP)
		return;
	bench_put(prefix, "huge_pct", pct_of(res->huge_kib, INSTALL_SIZE), 1);
	if (m != INSTALL_PWRITE)
		bench_put(prefix, "pmd_mapped_pct",
			  pct_of(res->pmd_kib, INSTALL_SIZE), 1);
}

static void install_method(enum install_method m, const struct variant *v,
			   const uint8_t *src)
{
	struct install_result res = { 0 };
	char prefix[64];
	int ret = 0;

	for (int rep = 0; rep < INSTALL_REPS && !ret; rep++)
		ret = install_once(m, v, src, &res, rep);
	if (!ret) {
		install_print(m, v, &res);
		return;
	}
	/* hugetlbfs has no write(): pwrite fails with EINVAL there. */
	snprintf(prefix, sizeof(prefix), "install_%s_%s", install_names[m],
		 v->label);
	printf("%s_skip=%s into a %s memfd fails: %s\n", prefix,
	       install_names[m], v->label, strerror(-ret));
}

static void install_variant(const struct variant *v, const uint8_t *src)
{
	struct ferry_hugetlb_resv resv;
	char prefix[64];

	snprintf(prefix, sizeof(prefix), "install_%s", v->label);
	if (!pool_get(v, INSTALL_SIZE, prefix, &resv))
		return;
	for (int m = 0; m < NR_INSTALL; m++)
		install_method((enum install_method)m, v, src);
	pool_put(v, &resv);
}

/* ---- bulk CONTINUE ---------------------------------------------------- */

static uint64_t minor_feature(enum ferry_backing backing)
{
	return backing == FERRY_BACKING_HUGETLB ? FERRY_UFFD_F_MINOR_HUGETLBFS
						: FERRY_UFFD_F_MINOR_SHMEM;
}

static uint64_t missing_feature(enum ferry_backing backing)
{
	return backing == FERRY_BACKING_HUGETLB ?
	       FERRY_UFFD_F_MISSING_HUGETLBFS : FERRY_UFFD_F_MISSING_SHMEM;
}

/* Open a userfaultfd with `feature`, or print why `prefix` is skipped. */
static bool uffd_get(struct ferry_uffd *uffd, uint64_t feature,
		     const char *prefix)
{
	int ret = ferry_uffd_open(uffd, feature, 0, false);

	if (ret == -EOPNOTSUPP || ret == -EPERM) {
		bench_put_text(prefix, "skip", ferry_error_msg());
		return false;
	}
	bench_check(ret, "opening a userfaultfd");
	return true;
}

/* CONTINUE the whole range, `chunk` bytes a call; GB/s. */
static double continue_range(struct ferry_uffd *uffd, struct ferry_region *r,
			     size_t chunk)
{
	uint64_t t0 = bench_now_ns();
	size_t off = 0;

	while (off < r->size) {
		size_t len = r->size - off < chunk ? r->size - off : chunk;
		ssize_t n = ferry_uffd_continue(uffd, r->guest + off, len, 0);

		bench_check(n, "UFFDIO_CONTINUE");
		off += (size_t)n;
	}
	return bench_gbps(r->size, bench_now_ns() - t0);
}

struct continue_result {
	double chunk_gbps[CONTINUE_REPS];
	double whole_gbps[CONTINUE_REPS];
	long long pmd_kib;	/* guest view after a whole-range CONTINUE */
};

static void continue_measure(struct ferry_uffd *uffd, struct ferry_region *r,
			     struct continue_result *res)
{
	for (int rep = 0; rep < CONTINUE_REPS; rep++) {
		res->chunk_gbps[rep] = continue_range(uffd, r, CONTINUE_CHUNK);
		bench_check(ferry_mem_region_zap(r, 0, r->size), "zapping");
		res->whole_gbps[rep] = continue_range(uffd, r, r->size);
		res->pmd_kib = pmd_mapped_kib(r->guest);
		bench_check(ferry_mem_region_zap(r, 0, r->size), "zapping");
	}
}

static void continue_print(const char *prefix, const struct variant *v,
			   struct continue_result *res)
{
	char key[96];

	snprintf(key, sizeof(key), "%s_chunk2m", prefix);
	bench_put_spread(key, "gbps", res->chunk_gbps, CONTINUE_REPS);
	snprintf(key, sizeof(key), "%s_whole", prefix);
	bench_put_spread(key, "gbps", res->whole_gbps, CONTINUE_REPS);
	if (v->backing == FERRY_BACKING_THP)
		bench_put(prefix, "pmd_mapped_pct",
			  pct_of(res->pmd_kib, CONTINUE_SIZE), 1);
}

/*
 * The memfd already holds every page (populated through the alias); the
 * guest view is registered MINOR and empty, so CONTINUE only maps.
 */
static void continue_variant(const struct variant *v)
{
	struct continue_result res = { 0 };
	struct ferry_hugetlb_resv resv;
	struct ferry_region *r;
	struct ferry_mem *mem;
	struct ferry_uffd uffd;
	char prefix[64];

	snprintf(prefix, sizeof(prefix), "continue_bulk_%s", v->label);
	if (!pool_get(v, CONTINUE_SIZE, prefix, &resv))
		return;
	mem = region_create(v->backing, CONTINUE_SIZE, &r);
	bench_check(populate(r->alias, r->size), "populating the alias");
	if (uffd_get(&uffd, minor_feature(v->backing), prefix)) {
		bench_check(ferry_uffd_register(&uffd, r->guest, r->size,
						FERRY_UFFD_MINOR, NULL),
			    "registering MINOR");
		continue_measure(&uffd, r, &res);
		continue_print(prefix, v, &res);
		ferry_uffd_close(&uffd);
	}
	ferry_mem_destroy(mem);
	pool_put(v, &resv);
}

/* ---- THP with shmem_enabled=advise ------------------------------------ */

/*
 * This machine may say "never"; ferry asks for huge pages with
 * MADV_HUGEPAGE, which "advise" honours.  The setting is changed for
 * these figures only and put back on every exit path.
 */
static void run_thp_advise(const uint8_t *src)
{
	int ret = bench_setting_change(BENCH_THP_SHMEM, "advise");

	if (ret) {
		printf("thp_advise_skip=setting %s to advise: %s\n",
		       BENCH_THP_SHMEM, strerror(-ret));
		return;
	}
	install_variant(&thp_advise, src);
	continue_variant(&thp_advise);
	bench_setting_restore();
}

/* ---- userfaultfd fault round trip ------------------------------------- */

struct rtt_case {
	const char *name;
	const struct variant *variant;
	uint64_t mode;			/* FERRY_UFFD_MISSING or _MINOR */
	size_t size;
	unsigned int passes;		/* re-armed between passes */
};

static const struct rtt_case rtt_cases[] = {
	{ "missing_copy", &shmem, FERRY_UFFD_MISSING, 64 * BENCH_MIB, 2 },
	{ "minor_continue", &shmem, FERRY_UFFD_MINOR, 64 * BENCH_MIB, 2 },
	{ "missing_copy", &hugetlb, FERRY_UFFD_MISSING, 128 * BENCH_MIB, 8 },
	{ "minor_continue", &hugetlb, FERRY_UFFD_MINOR, 128 * BENCH_MIB, 8 },
};

/* Bytes installed by a single-page install call: 0, or -errno. */
static int one_page(ssize_t n, size_t page_size)
{
	if (n < 0)
		return (int)n;
	return (size_t)n == page_size ? 0 : -EIO;
}

static int resolve_copy(struct bench_fault_server *srv, uint8_t *page)
{
	return one_page(ferry_uffd_copy(srv->uffd, page, srv->ctx,
					srv->page_size, 0), srv->page_size);
}

static int resolve_continue(struct bench_fault_server *srv, uint8_t *page)
{
	return one_page(ferry_uffd_continue(srv->uffd, page, srv->page_size,
					    0), srv->page_size);
}

/* Make every page fault again: drop the file's pages, or only the PTEs. */
static void rtt_rearm(const struct rtt_case *c, struct ferry_region *r)
{
	if (c->mode == FERRY_UFFD_MISSING)
		bench_check(ferry_mem_region_punch(r, 0, r->size), "punching");
	else
		bench_check(ferry_mem_region_zap(r, 0, r->size), "zapping");
}

static size_t rtt_sample(const struct rtt_case *c, struct ferry_region *r,
			 uint64_t *ns)
{
	uint64_t deadline = bench_now_ns() + RTT_BUDGET_NS;
	size_t n = 0;

	for (unsigned int pass = 0; pass < c->passes; pass++) {
		if (pass)
			rtt_rearm(c, r);
		n += bench_touch_timed(r->guest, r->page_size, r->nr_pages,
				       ns + n, deadline);
		if (bench_now_ns() > deadline)
			break;
	}
	return n;
}

static void rtt_serve(const struct rtt_case *c, struct ferry_uffd *uffd,
		      struct ferry_region *r, const char *prefix)
{
	bool minor = c->mode == FERRY_UFFD_MINOR;
	uint8_t *src = bench_alloc(r->page_size, 4);
	uint64_t *ns = calloc(r->nr_pages * c->passes, sizeof(*ns));
	struct bench_fault_server srv = {
		.uffd = uffd,
		.page_size = r->page_size,
		.expect = minor ? FERRY_FAULT_MINOR : FERRY_FAULT_MISSING,
		.resolve = minor ? resolve_continue : resolve_copy,
		.ctx = src,
	};
	size_t n;

	if (!ns)
		bench_die("out of memory");
	bench_check(ferry_uffd_register(uffd, r->guest, r->size, c->mode,
					NULL), "registering");
	bench_fault_server_start(&srv);
	n = rtt_sample(c, r, ns);
	bench_fault_server_stop(&srv);
	bench_put_latency(prefix, ns, n);
	free(ns);
	bench_free(src, r->page_size);
}

static void rtt_case_run(const struct rtt_case *c)
{
	const struct variant *v = c->variant;
	bool minor = c->mode == FERRY_UFFD_MINOR;
	struct ferry_hugetlb_resv resv;
	struct ferry_region *r;
	struct ferry_mem *mem;
	struct ferry_uffd uffd;
	char prefix[64];

	snprintf(prefix, sizeof(prefix), "uffd_rtt_%s_%s", c->name, v->label);
	if (!pool_get(v, c->size, prefix, &resv))
		return;
	mem = region_create(v->backing, c->size, &r);
	/* MINOR faults need the pages in the file already. */
	if (minor)
		bench_check(populate(r->alias, r->size), "populating");
	if (uffd_get(&uffd, minor ? minor_feature(v->backing)
				  : missing_feature(v->backing), prefix)) {
		rtt_serve(c, &uffd, r, prefix);
		ferry_uffd_close(&uffd);
	}
	ferry_mem_destroy(mem);
	pool_put(v, &resv);
}

int main(int argc, char **argv)
{
	uint64_t start = bench_now_ns();
	uint8_t *src;

	bench_start(argc, argv, "limits", 150);
	run_memcpy();
	src = bench_alloc(INSTALL_SRC, 3);
	install_variant(&shmem, src);
	install_variant(&thp, src);
	install_variant(&hugetlb, src);
	continue_variant(&shmem);
	continue_variant(&thp);
	continue_variant(&hugetlb);
	run_thp_advise(src);
	bench_free(src, INSTALL_SRC);
	for (size_t i = 0; i < sizeof(rtt_cases) / sizeof(rtt_cases[0]); i++)
		rtt_case_run(&rtt_cases[i]);
	bench_finish(start);
	return 0;
}
