// SPDX-License-Identifier: MIT
/* caps: what this machine can run, probed for real, with what to change. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "base/error.h"
#include "ferry/caps.h"
#include "ferry/hugetlb.h"
#include "ferry/mem.h"
#include "base/sys.h"

static const char *const cap_names[FERRY_CAP_COUNT] = {
	[FERRY_CAP_MEM_SHMEM] = "guest memory: shmem",
	[FERRY_CAP_MEM_THP] = "guest memory: THP shmem",
	[FERRY_CAP_MEM_HUGETLB] = "guest memory: hugetlbfs 2 MiB",
	[FERRY_CAP_POSTCOPY_SHMEM] = "post-copy / lazy restore on shmem",
	[FERRY_CAP_POSTCOPY_HUGETLB] = "post-copy / lazy restore on hugetlbfs",
	[FERRY_CAP_DIRTY_TRACKING] = "pre-copy dirty tracking",
	[FERRY_CAP_LIVE_SNAPSHOT] = "live snapshot (write-protect)",
	[FERRY_CAP_KERNEL_FAULTS] = "kernel-mode faults on guest memory",
};

const char *ferry_caps_name(enum ferry_cap cap)
{
	return (unsigned int)cap < FERRY_CAP_COUNT ? cap_names[cap] : "?";
}

static void set_cap(struct ferry_cap_status *c, bool ok, const char *fix,
		    const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void set_cap(struct ferry_cap_status *c, bool ok, const char *fix,
		    const char *fmt, ...)
{
	va_list ap;

	c->ok = ok;
	va_start(ap, fmt);
	vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
	va_end(ap);
	snprintf(c->fix, sizeof(c->fix), "%s", ok ? "" : fix);
}

/* "always within_size advise [never] deny force" -> "never" */
static void read_bracketed(const char *path, char *out, size_t len)
{
	char buf[256], *open_b, *close_b;

	snprintf(out, len, "unavailable");
	if (sys_read_file(path, buf, sizeof(buf)) < 0)
		return;
	open_b = strchr(buf, '[');
	close_b = open_b ? strchr(open_b, ']') : NULL;
	if (open_b && close_b)
		snprintf(out, len, "%.*s", (int)(close_b - open_b - 1),
			 open_b + 1);
}

static void probe_shmem(struct ferry_caps *caps)
{
	struct ferry_mem *mem = NULL;
	int ret = ferry_mem_create(&mem);

	if (!ret)
		ret = ferry_mem_add_region(mem, FERRY_BACKING_SHMEM, 1 << 20,
					   NULL);
	set_cap(&caps->cap[FERRY_CAP_MEM_SHMEM], ret == 0,
		"memfd_create must work (Linux 3.17, CONFIG_MEMFD_CREATE)",
		"%s", ret ? ferry_error_msg() : "memfd mapped twice");
	ferry_mem_destroy(mem);
}

/* Fill a 2 MiB THP region, collapse it, and look at smaps. */
static void probe_thp(struct ferry_caps *caps)
{
	struct ferry_cap_status *c = &caps->cap[FERRY_CAP_MEM_THP];
	struct ferry_region *r = NULL;
	struct ferry_mem *mem = NULL;
	uint64_t pmd = 0;
	int ret = ferry_mem_create(&mem);

	if (!ret)
		ret = ferry_mem_add_region(mem, FERRY_BACKING_THP,
					   FERRY_HUGE_PAGE_SIZE, &r);
	if (!ret) {
		memset(r->guest, 1, r->size);
		ret = ferry_mem_region_collapse(r);
	}
	if (!ret)
		ret = ferry_mem_region_pmd_mapped(r, &pmd);
	if (ret)
		set_cap(c, false, "MADV_COLLAPSE needs Linux 6.1 with "
			"CONFIG_TRANSPARENT_HUGEPAGE", "%s", ferry_error_msg());
	else
		set_cap(c, pmd == r->size, "MADV_COLLAPSE did not give a PMD "
			"mapping: check /sys/kernel/mm/transparent_hugepage",
			"MADV_COLLAPSE gave %llu KiB PMD-mapped of 2048; "
			"shmem_enabled=%s (faults map 4 KiB until collapsed%s)",
			(unsigned long long)pmd >> 10, caps->thp_shmem_enabled,
			strcmp(caps->thp_shmem_enabled, "never") ? ", or huge "
			"where the setting allows" : "");
	ferry_mem_destroy(mem);
}

static void probe_hugetlb(struct ferry_caps *caps)
{
	struct ferry_cap_status *c = &caps->cap[FERRY_CAP_MEM_HUGETLB];
	int ret = ferry_hugetlb_pool(&caps->hugetlb_total,
				     &caps->hugetlb_free);

	if (ret) {
		set_cap(c, false, "the kernel needs CONFIG_HUGETLBFS with 2 MiB "
			"pages", "%s", ferry_error_msg());
		return;
	}
	set_cap(c, caps->hugetlb_free > 0 || caps->root,
		"reserve pages: sysctl vm.nr_hugepages=N (N x 2 MiB), or run "
		"ferry as root to let it grow and restore the pool",
		"pool %ld pages, %ld free%s", caps->hugetlb_total,
		caps->hugetlb_free, caps->root ? "; as root ferry grows it "
		"on demand and puts it back" : "");
}

/* Names of the bits of `want` the kernel lacks, "" when none. */
static bool lacks(const struct ferry_caps *caps, uint64_t want, char *out,
		  size_t len)
{
	uint64_t missing = want & ~caps->uffd->features;
	size_t off = 0;

	out[0] = '\0';
	if (caps->uffd->open_err) {
		snprintf(out, len, "%.240s", caps->uffd->open_reason);
		return true;
	}
	for (int i = 0; i < 64 && off < len; i++)
		if (missing & (1ULL << i))
			off += snprintf(out + off, len - off, "%s%s (Linux %s)",
					off ? ", " : "",
					ferry_uffd_feature_name(1ULL << i),
					ferry_uffd_feature_since(1ULL << i));
	return missing != 0;
}

static void feature_cap(struct ferry_caps *caps, enum ferry_cap cap,
			uint64_t want, const char *found)
{
	char why[sizeof(caps->cap[cap].detail) - 8];

	if (lacks(caps, want, why, sizeof(why)))
		set_cap(&caps->cap[cap], false, "a newer kernel, or "
			"vm.unprivileged_userfaultfd=1 / root",
			"lacks %s", why);
	else
		set_cap(&caps->cap[cap], true, "", "%s", found);
}

/*
 * Open a descriptor as guest memory gets one and have the kernel fault on
 * a page registered with it: it either waits (served) or fails.  What
 * post-copy, lazy restore, clones and live save need, so their rows say
 * so too when it cannot be had.
 */
static void probe_kernel_faults(struct ferry_caps *caps)
{
	struct ferry_cap_status *c = &caps->cap[FERRY_CAP_KERNEL_FAULTS];
	struct ferry_uffd u;
	int ret = ferry_uffd_open(&u, 0, 0, true);

	if (ret) {
		set_cap(c, false, caps->uffd->kernel_reason, "user-mode faults "
			"only: a kernel access (KVM, read() into guest memory) "
			"to a page not yet there fails with EFAULT");
	} else {
		ret = ferry_uffd_reports_kernel_faults(&u);
		if (ret == 1)
			set_cap(c, true, "", "served: userfaultfd opened "
				"through %s, a kernel access waits for its "
				"page", ferry_uffd_via_name(u.via));
		else
			set_cap(c, false, "a kernel that reports kernel-mode "
				"faults to userfaultfd", "user-mode faults "
				"only: a kernel access failed instead of "
				"waiting (%s)", ret < 0 ? ferry_error_msg() :
				"EFAULT");
		ferry_uffd_close(&u);
	}
	for (int i = FERRY_CAP_POSTCOPY_SHMEM;
	     !c->ok && i <= FERRY_CAP_LIVE_SNAPSHOT; i++) {
		if (i == FERRY_CAP_DIRTY_TRACKING || !caps->cap[i].ok)
			continue;
		set_cap(&caps->cap[i], false, c->fix, "needs kernel-mode "
			"faults served (see below)");
	}
}

static void probe_uffd(struct ferry_caps *caps)
{
	struct ferry_cap_status *dirty;

	feature_cap(caps, FERRY_CAP_POSTCOPY_SHMEM,
		    ferry_uffd_features_for(false, FERRY_UFFD_MISSING |
						   FERRY_UFFD_MINOR),
		    "MISSING_SHMEM, MINOR_SHMEM, UFFDIO_CONTINUE");
	feature_cap(caps, FERRY_CAP_POSTCOPY_HUGETLB,
		    ferry_uffd_features_for(true, FERRY_UFFD_MISSING |
						  FERRY_UFFD_MINOR),
		    "MISSING_HUGETLBFS, MINOR_HUGETLBFS, UFFDIO_CONTINUE");
	feature_cap(caps, FERRY_CAP_DIRTY_TRACKING,
		    FERRY_UFFD_F_WP_ASYNC | FERRY_UFFD_F_WP_UNPOPULATED |
		    FERRY_UFFD_F_WP_HUGETLBFS_SHMEM,
		    "WP_ASYNC, WP_UNPOPULATED, WP_HUGETLBFS_SHMEM, PAGEMAP_SCAN");
	dirty = &caps->cap[FERRY_CAP_DIRTY_TRACKING];
	if (dirty->ok && !caps->uffd->pagemap_scan)
		set_cap(dirty, false, "Linux 6.7 or newer",
			"the PAGEMAP_SCAN ioctl is missing (Linux 6.7)");
	if (!dirty->ok)
		strncat(dirty->fix, "; until then ferry migrates post-copy "
			"only", sizeof(dirty->fix) - strlen(dirty->fix) - 1);
	feature_cap(caps, FERRY_CAP_LIVE_SNAPSHOT,
		    FERRY_UFFD_F_PAGEFAULT_FLAG_WP |
		    FERRY_UFFD_F_WP_HUGETLBFS_SHMEM,
		    "synchronous write-protect faults on shmem and hugetlbfs");
}

int ferry_caps_probe(struct ferry_caps *caps)
{
	struct utsname u;

	memset(caps, 0, sizeof(*caps));
	if (uname(&u))
		return ferry_fail(-errno, "uname: %s", strerror(errno));
	snprintf(caps->kernel, sizeof(caps->kernel), "%s", u.release);
	caps->root = geteuid() == 0;
	caps->uffd = ferry_uffd_probe();
	if (sys_read_long("/proc/sys/vm/unprivileged_userfaultfd",
			  &caps->unprivileged_userfaultfd))
		caps->unprivileged_userfaultfd = -1;
	caps->dev_userfaultfd = access("/dev/userfaultfd", F_OK) == 0;
	read_bracketed("/sys/kernel/mm/transparent_hugepage/shmem_enabled",
		       caps->thp_shmem_enabled, sizeof(caps->thp_shmem_enabled));
	read_bracketed("/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/"
		       "shmem_enabled", caps->thp_shmem_2m,
		       sizeof(caps->thp_shmem_2m));
	probe_shmem(caps);
	probe_thp(caps);
	probe_hugetlb(caps);
	probe_uffd(caps);
	probe_kernel_faults(caps);
	return 0;
}
