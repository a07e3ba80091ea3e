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
 * Source: ferry_migrate_send() (or ferry_migrate_start(), which runs the
 * same work on ferry's threads and hands back a handle) sends the stream
 * description and waits for the destination to accept it; only then does
 * guest memory move.  It arms dirty tracking, sends every page that
 * exists (holes are never read; zero pages go as indices), then rounds of
 * the pages written meanwhile, until the rest fits the downtime budget or
 * stops shrinking.  Then it pauses the vCPUs and either sends the rest
 * (pre-copy) or only the stale bitmap (post-copy) with every vCPU's
 * registers and MP state.  The destination loads them and says it is
 * ready; the source commits (from then on the VM is the destination's to
 * run) and the destination resumes.  In post-copy the source then answers
 * page requests on the urgent channel and pushes the remaining pages on
 * the bulk channels, starting near recent faults.  The source says the VM
 * runs at the destination only once the destination has confirmed that
 * every page is in place.
 *
 * Destination: ferry_migrate_recv() (or ferry_migrate_start_dest()) reads
 * the stream description, has the caller build the VM (memory and vCPUs,
 * not yet running), accepts, receives into the memfds with pwrite, and at
 * switchover loads the vCPUs and resumes them once the source commits; in
 * post-copy it serves faults until every page is in place, then
 * unregisters and gives THP memory its huge mappings back.
 *
 * Nothing is lost:
 *
 *   - a page whose checksum fails (torn by a running vCPU, or changed in
 *     transit: the destination cannot tell which) is fetched again, never
 *     installed and never dropped; one that keeps failing ends the
 *     migration (before switchover: the source VM runs on, untouched);
 *   - before the source commits, any failure leaves the source VM
 *     running, untouched, and the destination discards what it had;
 *   - after it commits, a broken or stalled connection pauses the
 *     migration instead of ending it: the destination keeps its page
 *     states and runs on (vCPUs that touch a missing page wait in the
 *     kernel), the source keeps the VM's state and every page.  A new
 *     session (ferry_migrate_reconnect()) resumes it, or, if the
 *     destination was lost, hands the paused VM to a new one.  Only a
 *     cancel or the pause deadline ends a paused migration;
 *   - every wait on the peer is bounded: heartbeats on the urgent channel
 *     tell a stalled peer from a slow one, and one that shows no progress
 *     for timeout_ms ends the session (and so fails or pauses).
 *
 * The protocol, per channel (docs/migration.md has the details):
 *
 *   bulk 0      HEADER, pages..., ROUND_END, pages..., [BITMAP stale],
 *               VCPU x n, SWITCHOVER, [pushed pages...], COMPLETE
 *   bulk i>0    pages..., ROUND_END, ..., SWITCHOVER, [pushed...], COMPLETE
 *   urgent      source <- ACCEPT (or ERROR: why not), HEARTBEAT both ways,
 *               source <- REFETCH (pre-copy pages to send again)
 *               source <- SWITCHOVER (the destination is ready)
 *               source -> COMMIT (the VM is the destination's)
 *               source <- PAGE_REQUEST ... -> PAGES (replies)
 *               source <- COMPLETE (every page is in place)
 *   recovery    a new session: HEADER of the same migration id on bulk 0;
 *               source <- RESUME + BITMAP(OWED)... (resume), or ACCEPT (a
 *               new destination: the paused VM is handed to it)
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
	FERRY_PHASE_FAILED,
};

const char *ferry_migrate_phase_name(enum ferry_phase phase);

/*
 * Where the VM is, as the side that asks sees it.  The destination's VM
 * is THERE (at the source) until it is complete here.
 */
enum ferry_vm_location {
	FERRY_VM_HERE,		/* whole here: runs here, or (source) was
				 * never given away */
	FERRY_VM_SPLIT,		/* after the source committed, before every
				 * page is in place: the vCPUs are the
				 * destination's, the source holds the VM's
				 * state at switchover and the pages owed */
	FERRY_VM_THERE,		/* whole on the other side */
};

const char *ferry_migrate_location_name(enum ferry_vm_location location);

/* What a progress callback and ferry_migrate_progress() see. */
struct ferry_progress {
	enum ferry_phase phase;
	unsigned int round;
	uint64_t bytes_sent;	/* so far, all channels */
	uint64_t bytes_received;	/* so far, all channels */
	double rate_bps;	/* bytes per second over the last interval */
	uint64_t remaining;	/* pages still to send: dirty at the start of
				 * the round (pre-copy), owed now (post-copy) */
	uint64_t dirty;		/* source, pre-copy: dirty at the round's
				 * start */
	uint64_t owed;		/* after switchover: pages not yet in place
				 * at the destination (as this side knows) */
	uint64_t pages_requested;	/* post-copy demand requests so far */
	double eta_s;		/* remaining at rate_bps; < 0 when unknown */
	uint64_t elapsed_ns;
	uint64_t stalled_ns;	/* how long the peer has shown no progress
				 * (0: it shows some) */
	bool paused;		/* after switchover, awaiting a reconnect */
	unsigned int sessions;	/* sessions used so far (1 + reconnects) */
	uint64_t bandwidth_bps;	/* the limit now, 0: none */
	enum ferry_vm_location location;
};

typedef void (*ferry_progress_fn)(const struct ferry_progress *progress,
				  void *arg);

enum ferry_migrate_event_kind {
	FERRY_EVENT_SWITCHOVER,		/* source: vCPUs paused; destination:
					 * every channel at SWITCHOVER */
	FERRY_EVENT_DEST_RUNNING,	/* the source committed: the VM runs at
					 * the destination */
	FERRY_EVENT_PAUSED,		/* the session ended after the commit:
					 * awaiting ferry_migrate_reconnect() */
	FERRY_EVENT_RESUMED,		/* a new session took over */
	FERRY_EVENT_DONE,		/* every page in place, confirmed */
	FERRY_EVENT_FAILED,		/* ended without completing */
};

const char *ferry_migrate_event_name(enum ferry_migrate_event_kind kind);

struct ferry_migrate_event {
	enum ferry_migrate_event_kind kind;
	int err;			/* PAUSED, FAILED: why (-errno) */
	const char *reason;		/* and in words; valid for the call */
	uint64_t owed;			/* pages not yet in place */
	enum ferry_vm_location location;
};

/* Called on a ferry thread; must not call back into the handle but for
 * ferry_migrate_progress() and ferry_migrate_vm_location(). */
typedef void (*ferry_migrate_event_fn)(const struct ferry_migrate_event *ev,
				       void *arg);

struct ferry_migrate_opts {
	enum ferry_mode mode;		/* default HYBRID */
	unsigned int max_downtime_ms;	/* pre-copy switchover budget: 50 */
	unsigned int max_rounds;	/* pre-copy rounds at most: 30 */
	/*
	 * POSTCOPY only: no live pass.  The vCPUs pause at once and every
	 * page that exists comes after they resume at the destination:
	 * the least data on the wire and the shortest time to resume, with
	 * the most demand faults.  Off by default.
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
	/*
	 * A peer that shows no progress for this long is stalled: the
	 * session ends (before the commit: the migration fails; after it:
	 * it pauses).  Every wait on the peer is bounded by it.  10000.
	 */
	unsigned int timeout_ms;
	unsigned int heartbeat_ms;	/* between HEARTBEATs: 250 */
	/*
	 * How long a paused migration waits for a reconnect before it
	 * fails; 0 (the default): until cancelled.
	 */
	unsigned int pause_timeout_ms;
	uint64_t bandwidth_bps;		/* source: bytes/s on the bulk
					 * channels, 0: no limit */
	ferry_migrate_event_fn event;	/* optional */
	void *event_arg;
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
	uint64_t torn_pages;		/* destination: failed their check
					 * (torn or corrupted), fetched again */
	uint64_t pages_refetched;	/* source: sent again on REFETCH */
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
	unsigned int sessions;		/* 1 + the reconnects that took */
	unsigned int pauses;		/* sessions lost after the commit */
	uint64_t paused_ns;		/* time spent paused */
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
 * Migrate a running VM over a connected session (the caller's: close it
 * after the call).  0 once the destination has confirmed every page: the
 * VM runs there, and the source VM stays paused for good.  On an error
 * before the commit the VM keeps running here, untouched.  A session
 * lost after the commit pauses the migration, which this call cannot
 * resume (it has no other session): it returns -ENOTCONN with the VM
 * paused here, whole, as it was at switchover; ferry_migrate_send() it
 * again (a new destination takes it) or use ferry_migrate_start(), which
 * can reconnect.
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
 * Receive a VM over the caller's session.  Returns once it runs here and
 * every page is in place; *vm is the running VM, the caller's from then
 * on.  On failure what was received is discarded (ops->discard), after
 * the vCPUs stopped if they ever ran: the VM is still whole at the
 * source.  A session lost after the commit ends this call (it cannot
 * reconnect) with -ENOTCONN; ferry_migrate_start_dest() can.
 */
int ferry_migrate_recv(struct ferry_session *session,
		       const struct ferry_dest_ops *ops, void *arg,
		       const struct ferry_migrate_opts *opts,
		       struct ferry_vm *vm, struct ferry_migrate_stats *stats);

/* ---- a migration in flight ---------------------------------------------- */

/*
 * A handle on a migration while it runs on ferry's threads.  Every call
 * below may be made from any thread, concurrently.  The handle takes the
 * sessions it is given (start, reconnect) and closes them when it is done
 * with them.
 */
struct ferry_migration;

/* Source: start migrating vm (the caller's; it must outlive the handle). */
int ferry_migrate_start(const struct ferry_vm *vm,
			struct ferry_session *session,
			const struct ferry_migrate_opts *opts,
			struct ferry_migration **out);

/* Destination: start receiving on session; ops build the VM. */
int ferry_migrate_start_dest(struct ferry_session *session,
			     const struct ferry_dest_ops *ops, void *arg,
			     const struct ferry_migrate_opts *opts,
			     struct ferry_migration **out);

/*
 * Wait up to timeout_ms (< 0: no limit) for the migration to end: 0 when
 * it completed, its error when it failed (-ECANCELED when cancelled), or
 * -EINPROGRESS when it is still running (or paused): a migration that
 * ended on a stalled peer ended with -ETIMEDOUT.
 */
int ferry_migrate_wait(struct ferry_migration *m, int timeout_ms);

/*
 * End it.  Before the commit: the source VM runs on untouched, the
 * destination discards.  After it: the migration ends paused where it
 * is; the source keeps its VM paused (whole, as at switchover), the
 * destination stops its vCPUs and discards.  The error is -ECANCELED.
 */
int ferry_migrate_cancel(struct ferry_migration *m);

/* Source, pre-copy or hybrid: switch over in post-copy after this round. */
int ferry_migrate_postcopy_now(struct ferry_migration *m);

/* Where it is now.  Either side. */
int ferry_migrate_progress(struct ferry_migration *m,
			   struct ferry_progress *progress);

/* Source: bytes per second on the bulk channels from now (0: no limit). */
int ferry_migrate_set_bandwidth(struct ferry_migration *m,
				uint64_t bytes_per_s);

/*
 * A new session for a paused migration (the source dialled again, maybe
 * elsewhere; the destination accepted again).  The source sends the
 * HEADER again: a destination that holds this migration resumes it, a
 * fresh one receives the paused VM whole (a handover, in pre-copy).  A
 * destination refuses a session of another migration with a reason on
 * both sides and stays paused, as after any failure on the new session.
 * -EINVAL unless paused (or the migration ended: then -EALREADY); the
 * handle takes the session either way.
 */
int ferry_migrate_reconnect(struct ferry_migration *m,
			    struct ferry_session *session);

/* Where the VM is now, as this side sees it. */
enum ferry_vm_location ferry_migrate_vm_location(struct ferry_migration *m);

/* The figures so far (all of them once it ended). */
int ferry_migrate_get_stats(struct ferry_migration *m,
			    struct ferry_migrate_stats *stats);

/*
 * Destination, once it completed: the VM, the caller's from then on.
 * -EAGAIN before.
 */
int ferry_migrate_dest_vm(struct ferry_migration *m, struct ferry_vm *vm);

/*
 * Cancel if still running, wait for ferry's threads, free.  A completed
 * destination's VM stays the caller's; any other is discarded.  NULL is
 * fine.
 */
void ferry_migrate_destroy(struct ferry_migration *m);

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
