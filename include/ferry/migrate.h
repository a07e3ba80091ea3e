/* SPDX-License-Identifier: MIT */
#ifndef FERRY_MIGRATE_H
#define FERRY_MIGRATE_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/mem.h"
#include "ferry/net.h"
#include "ferry/hist.h"
#include "ferry/vcpu.h"
#include "ferry/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Live migration of a VM over a session of channels (ferry/net.h).
 *
 * Source: ferry_migrate_send() arms dirty tracking, sends every page that
 * exists (holes are never read; zero pages go as indices), then rounds of
 * the pages written meanwhile, until the rest fits the downtime budget or
 * stops shrinking.  Then it pauses the vCPUs and either sends the rest
 * (pre-copy) or only the stale bitmap (post-copy) with every vCPU's
 * registers and MP state, and the destination resumes.  In post-copy the
 * source then answers page requests on the urgent channel and pushes the
 * remaining pages on the bulk channels, starting near recent faults.
 *
 * Destination: ferry_migrate_recv() reads the stream description, has the
 * caller build the VM (memory and vCPUs, not yet running), receives into
 * the memfds with pwrite, and at switchover loads the vCPUs and resumes
 * them; in post-copy it serves faults until every page is in place, then
 * unregisters and gives THP memory its huge mappings back.
 *
 * The protocol, per channel (docs/migration.md has the details):
 *
 *   bulk 0      HEADER, pages..., ROUND_END, pages..., [BITMAP stale],
 *               VCPU x n, SWITCHOVER, [pushed pages...], COMPLETE
 *   bulk i>0    pages..., ROUND_END, ..., SWITCHOVER, [pushed...], COMPLETE
 *   urgent      source <- SWITCHOVER (the destination has resumed)
 *               source <- PAGE_REQUEST ... -> PAGES (replies)
 *               source <- COMPLETE (every page is in place)
 *
 * A page always travels on the same bulk channel (chunks of 2 MiB spread
 * round-robin), so the channels' order keeps each page's versions in
 * order; SWITCHOVER on every bulk channel is the barrier between pre-copy
 * data and what follows.
 */

enum ferry_mode {
	FERRY_MODE_PRECOPY,	/* everything before resume */
	FERRY_MODE_POSTCOPY,	/* one pass, then resume and fetch the rest */
	FERRY_MODE_HYBRID,	/* pre-copy; post-copy if it stops converging */
};

const char *ferry_migrate_mode_name(enum ferry_mode mode);
int ferry_migrate_mode_parse(const char *name, enum ferry_mode *mode);

enum ferry_phase {
	FERRY_PHASE_SETUP,
	FERRY_PHASE_PRECOPY,
	FERRY_PHASE_SWITCHOVER,
	FERRY_PHASE_POSTCOPY,
	FERRY_PHASE_DONE,
};

const char *ferry_migrate_phase_name(enum ferry_phase phase);

/* What a progress callback sees. */
struct ferry_progress {
	enum ferry_phase phase;
	unsigned int round;
	uint64_t bytes_sent;	/* so far, all channels */
	double rate_bps;	/* bytes per second over the last interval */
	uint64_t remaining;	/* pages still to send: dirty at the start of
				 * the round (pre-copy), owed now (post-copy) */
	uint64_t pages_requested;	/* post-copy demand requests so far */
	double eta_s;		/* remaining at rate_bps; < 0 when unknown */
	uint64_t elapsed_ns;
};

typedef void (*ferry_progress_fn)(const struct ferry_progress *progress,
				  void *arg);

struct ferry_migrate_opts {
	enum ferry_mode mode;		/* default HYBRID */
	unsigned int max_downtime_ms;	/* pre-copy switchover budget: 50 */
	unsigned int max_rounds;	/* pre-copy rounds at most: 30 */
	/*
	 * POSTCOPY only: no live pass.  The vCPUs pause at once and every
	 * page that exists comes after they resume at the destination: the
	 * least data on the wire and the shortest time to resume, with the
	 * most demand faults.  Off by default.
	 */
	bool postcopy_at_once;
	ferry_progress_fn progress;	/* optional, called on the sending
					 * thread: at each phase's and each
					 * pre-copy round's start, and every
					 * progress_ms meanwhile */
	void *progress_arg;
	unsigned int progress_ms;	/* between calls: 100 */
	/*
	 * Optional, destination: each post-copy demand fault's latency
	 * (request to page in place, ns) is added here when the migration
	 * ends, for a caller who wants the whole distribution rather than
	 * the stats' percentiles.
	 */
	struct ferry_hist *fault_latency;
};

void ferry_migrate_opts_init(struct ferry_migrate_opts *opts);

/*
 * What happened.  Each side fills in what it can see; the rest stays 0.
 * Times in nanoseconds.
 */
struct ferry_migrate_stats {
	enum ferry_mode mode;		/* how it switched over */
	uint64_t total_ns;		/* start to complete */
	uint64_t downtime_ns;		/* source: pause to resume confirmed;
					 * destination: switchover to resume */
	unsigned int rounds;		/* pre-copy rounds, the first pass
					 * included */
	uint64_t bytes_sent;		/* source: all channels */
	uint64_t bytes_received;	/* destination: all channels */
	uint64_t pages_sent;		/* pages with data */
	uint64_t zero_pages;		/* pages sent as an index only */
	uint64_t pages_pushed;		/* post-copy background push */
	uint64_t pages_requested;	/* post-copy demand requests */
	uint64_t torn_pages;		/* destination: changed while sent */
	uint64_t pages_installed;	/* destination: pages written */
	uint64_t minor_faults;		/* destination: post-copy faults */
	uint64_t missing_faults;
	uint64_t fault_latency_p50_ns;	/* request to page in place */
	uint64_t fault_latency_p99_ns;
	uint64_t fault_latency_max_ns;
	uint64_t install_page_faults;	/* destination receive threads */
	double faults_per_installed_page;	/* per 4 KiB installed, so
						 * backings compare */
	uint64_t pmd_mapped_bytes;	/* THP: after collapse */
	uint64_t guest_bytes;
};

/* A VM as the migration sees it. */
struct ferry_vm {
	struct ferry_mem *mem;
	const struct ferry_vcpu_ops *ops;
	void *handle;			/* the ops' vm argument */
	const void *desc;		/* machine description for the other
					 * side (opaque), may be NULL */
	uint32_t desc_len;
};

/*
 * Migrate a running VM over a connected session.  On success the source
 * VM is paused for good (its state lives on at the destination).  On an
 * error before switchover the VM keeps running, untouched; the error says
 * what failed.
 */
int ferry_migrate_send(const struct ferry_vm *vm,
		       struct ferry_session *session,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_migrate_stats *stats);

struct ferry_dest_ops {
	/*
	 * Build the VM the stream describes: memory with the stream's
	 * regions (ferry_migrate_mem_create helps) and vCPUs, started but
	 * paused.  Fill in *vm.  0 or -errno with a reason.
	 */
	int (*create)(void *arg, const struct ferry_wire_stream *stream,
		      struct ferry_vm *vm);
	/* Undo create after a failed migration (the VM is discarded). */
	void (*discard)(void *arg, struct ferry_vm *vm);
};

/*
 * Receive a VM.  Returns once it runs here and every page is in place;
 * *vm is the running VM, the caller's from then on.  On failure before
 * switchover, what was received is discarded (ops->discard).
 */
int ferry_migrate_recv(struct ferry_session *session,
		       const struct ferry_dest_ops *ops, void *arg,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_vm *vm, struct ferry_migrate_stats *stats);

/*
 * Guest memory laid out as a stream describes it.  `backing` overrides
 * the source's when the page size stays the same (shmem and thp trade
 * places; hugetlb only for hugetlb); pass the stream's own to keep it.
 */
int ferry_migrate_mem_create(const struct ferry_wire_stream *stream,
			     enum ferry_backing backing,
			     struct ferry_mem **out);

#ifdef __cplusplus
}
#endif

#endif
