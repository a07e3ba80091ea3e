// SPDX-License-Identifier: MIT
/* mapper: guest memory mapped in bulk, run by run, as a flow's policy says. */
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "base/sys.h"
#include "base/thread.h"
#include "pages/mapper.h"

void mapper_init(struct mapper *m, struct uffdmem *um,
		 const struct mapper_policy *policy, void *arg)
{
	m->um = um;
	m->policy = policy;
	m->arg = arg;
	m->svc = NULL;
	m->go_fd = -1;
	atomic_init(&m->mapped, 0);
}

void mapper_fini(struct mapper *m)
{
	if (m->go_fd >= 0)
		close(m->go_fd);
	m->go_fd = -1;
}

static void run_done(struct mapper *m, unsigned int region, uint64_t page,
		     uint64_t count)
{
	if (m->policy->done)
		m->policy->done(m->arg, region, page, count);
}

static bool tolerated(enum mapper_how how, ssize_t n)
{
	return n == -EEXIST || (how == MAPPER_CONTINUE && n == -EFAULT);
}

/*
 * CONTINUE (or zero-map) a run in as few calls as the kernel allows.  A
 * page mapped already (a fault got there first) stops the kernel with
 * -EEXIST.  A page the memfd does not hold (post-copy: a zero page, kept
 * a hole) stops CONTINUE with -EFAULT: it is final as it is, so it is
 * done unmapped (post-copy: MAPPED), and a later touch gets a zero page.
 * Either way the run goes on after that page.
 */
static int map_run(struct mapper *m, enum mapper_how how, unsigned int idx,
		   uint64_t page, uint64_t count)
{
	size_t ps = m->um->mem->regions[idx].page_size;
	struct ferry_uffd *uffd = &m->um->uffd;
	uint64_t done = 0;

	while (done < count) {
		uint8_t *addr = uffdmem_addr(m->um, idx, page + done);
		size_t len = (size_t)(count - done) * ps;
		ssize_t n = how == MAPPER_ZERO ?
			    ferry_uffd_zeropage(uffd, addr, len, 0) :
			    ferry_uffd_continue(uffd, addr, len, 0);
		uint64_t pages = n > 0 ? (uint64_t)n / ps : 1;

		if (n < 0 && !tolerated(how, n))
			return ferry_fail((int)n, "mapping in bulk: %s",
					  strerror((int)-n));
		if (how == MAPPER_CONTINUE)
			run_done(m, idx, page + done, pages);
		/*
		 * A vCPU that faulted on the hole while we held it claimed
		 * (post-copy: BUSY) was left asleep for us to wake (the fault
		 * thread saw BUSY and did nothing); the call failed there, so
		 * it woke no one.  Woken, it faults again and gets a zero
		 * page.
		 */
		if (n < 0)
			ferry_uffd_wake(uffd, addr, ps);
		atomic_fetch_add_explicit(&m->mapped, pages,
					  memory_order_relaxed);
		done += pages;
	}
	return 0;
}

/*
 * Holes left as they are: the flow marks them final (done), then anyone
 * who faulted on one meanwhile and waits is woken; it retries, and its
 * fault is served as one on a final hole.
 */
static void final_run(struct mapper *m, unsigned int idx, uint64_t page,
		      uint64_t count)
{
	size_t ps = m->um->mem->regions[idx].page_size;

	run_done(m, idx, page, count);
	ferry_uffd_wake(&m->um->uffd, uffdmem_addr(m->um, idx, page),
			(size_t)count * ps);
}

static int map_region(struct mapper *m, unsigned int idx)
{
	uint64_t nr_pages = m->um->mem->regions[idx].nr_pages;

	for (uint64_t page = 0; page < nr_pages;) {
		enum mapper_how how = MAPPER_SKIP;
		uint64_t n = m->policy->next_run(m->arg, idx, page, &how);
		int ret = 0;

		if (n > nr_pages - page)
			n = nr_pages - page;
		if (how == MAPPER_CONTINUE || how == MAPPER_ZERO)
			ret = map_run(m, how, idx, page, n);
		else if (how == MAPPER_FINAL)
			final_run(m, idx, page, n);
		if (ret)
			return ret;
		page += n;
		if (how != MAPPER_SKIP && faultsvc_stopping(m->svc))
			return -ECANCELED;
	}
	return 0;
}

static void *mapper_main(void *arg)
{
	struct mapper *m = arg;
	int ret = 0;

	sys_thread_boost(SYS_BOOST_BULK);
	if (m->go_fd >= 0 &&
	    evfd_wait(m->go_fd, faultsvc_stop_fd(m->svc), -1) != 1)
		return NULL;	/* stopped before it was let go */
	for (unsigned int i = 0; i < m->um->mem->nr_regions && !ret; i++)
		ret = map_region(m, i);
	if (ret && ret != -ECANCELED)
		faultsvc_fail(m->svc, ret);
	return NULL;
}

int mapper_start(struct mapper *m, struct faultsvc *svc)
{
	mapper_fini(m);
	m->svc = svc;
	return faultsvc_spawn(svc, mapper_main, m, "mapper");
}

int mapper_start_held(struct mapper *m, struct faultsvc *svc)
{
	mapper_fini(m);
	m->go_fd = evfd_open();
	if (m->go_fd < 0)
		return ferry_fail(m->go_fd, "eventfd: %s", strerror(-m->go_fd));
	m->svc = svc;
	return faultsvc_spawn(svc, mapper_main, m, "mapper");
}

void mapper_go(struct mapper *m)
{
	if (m->go_fd >= 0)
		evfd_signal(m->go_fd);
}
