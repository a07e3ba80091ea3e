/* SPDX-License-Identifier: MIT */
#ifndef FERRY_SERVE_SERVE_H
#define FERRY_SERVE_SERVE_H

/*
 * serve: Firecracker's external page-fault handler protocol (the public
 * side is ferry/serve.h, the protocol docs/serve.md).  One file a job:
 *
 *   json.c     the region list: a strict parser for exactly its shape
 *   list.c     the list against the memory file: sizes, alignment,
 *              overlaps, offsets past the end, overflow
 *   probe.c    the list against the userfaultfd: what the VMM asked of
 *              the kernel (fdinfo), page size and registration of each
 *              region (by trying a copy that cannot succeed)
 *   file.c     the memory file: one read-only shared mapping, its holes
 *   conn.c     a connection until its list and descriptor have come
 *   install.c  COPY, ZEROPAGE, POISON into the VMM's address space
 *   fault.c    the fault service's handlers (fault thread)
 *   fill.c     working set first, then the rest, then hand-off (fill
 *              thread, below the vCPUs)
 *   vm.c       a VM's life: start, figures, hand-off, end
 *   ws.c       working sets of a memory file (snapshot/ws.c's format)
 *   server.c   the public calls; the server's VMs and its events
 *   accept.c   connections: accepted, read, checked, started or refused
 *   loop.c     the server's thread: one poll over all of it
 *   handover.c the VMM's side: listen and hand over
 *
 *  server thread               fault thread (per VM)    fill thread (per VM)
 *   accept, read the list       poll uffd + retry fd     working set first,
 *   check it, start the VM -->  faults of a batch after  then the file's
 *   poll each VMM's pidfd       its REMOVEs: COPY, ZERO  data, below vCPUs;
 *   end / hand off VMs     <--  failures (wake_fd) <---  hand-off when done
 *   poll handed-off VMs' uffd
 */
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/thread.h"
#include "ferry/serve.h"
#include "ferry/uffd.h"
#include "pages/faultsvc.h"
#include "snapshot/snapshot.h"

#define SERVE_PAGE		4096ULL
#define SERVE_MAX_PENDING	16	/* connections still handshaking */
#define SERVE_MAX_ENDED		1024	/* ended VMs whose figures are kept */
/* Refused and handed-off VMs kept (read until their VMM exits), as a
 * multiple of max_vms; a refused VMM beyond it is killed at once. */
#define SERVE_KEEP_FACTOR	4

/* ---- the memory file (file.c) -------------------------------------------- */

struct serve_file {
	int fd;				/* the caller's */
	uint64_t size;
	const uint8_t *map;		/* the whole file, PROT_READ, shared */
	uint64_t *data;			/* a bit per 4 KiB: not a hole */
	/* FERRY_HUGE_PAGE_SIZE of zeroes (a huge page's hole is copied
	 * from it: hugetlb has no UFFDIO_ZEROPAGE), and as much no copy
	 * can read (probe.c's source). */
	const uint8_t *zeroes;
	const uint8_t *unreadable;
};

int serve_file_open(struct serve_file *f, int fd, bool populate);
void serve_file_close(struct serve_file *f);

/* Does [off, off + len) of the file hold any data? */
bool serve_file_has_data(const struct serve_file *f, uint64_t off,
			 uint64_t len);

/* ---- the region list (json.c, list.c, probe.c) --------------------------- */

/* Fields a list entry gave: page_size and page_size_kib are optional. */
#define SERVE_HAS_BASE		(1U << 0)
#define SERVE_HAS_SIZE		(1U << 1)
#define SERVE_HAS_OFFSET	(1U << 2)
#define SERVE_HAS_PAGE_SIZE	(1U << 3)
#define SERVE_HAS_PAGE_KIB	(1U << 4)

struct serve_entry {
	struct ferry_serve_region r;
	uint64_t page_size_kib;		/* as sent: bytes, despite its name */
	unsigned int has;		/* SERVE_HAS_* */
};

/* Messages a VMM's userfaultfd may hold before its list is checked. */
#define SERVE_MAX_EARLY		256

struct serve_list {
	unsigned int nr;
	struct serve_entry e[FERRY_SERVE_MAX_REGIONS];
	uint64_t uffd_features;		/* what the VMM asked for (probe.c) */
	char note[160];			/* a remark for the operator, or "" */
	/*
	 * Read while probing: a REMOVE pending makes every copy fail
	 * (EAGAIN) until it is read, and the VMM may fault already.  The
	 * VM takes them over: it applies the events, serves the faults
	 * (or, refused, poisons them).
	 */
	struct uffd_msg early[SERVE_MAX_EARLY];
	size_t nr_early;
};

/*
 * Parse len bytes: 0 when they hold one whole list (whitespace after it
 * is fine), -EAGAIN when they are a list's beginning (more may come),
 * -EBADMSG with a reason naming the byte otherwise.
 */
int serve_json_parse(const char *buf, size_t len, struct serve_list *l);

/* Each entry against the file and the others: 0 or -EINVAL, a reason. */
int serve_list_check(struct serve_list *l, const struct serve_file *f);

/* Region i's size and address against its page size (list.c). */
int serve_region_check_aligned(const struct ferry_serve_region *r,
			       unsigned int i);

/*
 * The descriptor against the list: a userfaultfd, initialised, asking
 * for no event this handler does not serve, every region registered at
 * the page size it claims (a region that claimed none gets the one found).
 * 0, or -errno with a reason; l->note may get a remark.
 */
int serve_probe(int uffd, struct serve_list *l, const struct serve_file *f);

/* The features a userfaultfd's context has (its fdinfo), or -errno
 * (-ENOENT, no reason: no /proc to read them in). */
int serve_uffd_features(int uffd, uint64_t *features);

/* Is fd a userfaultfd?  0, or -EBADF with a reason. */
int serve_uffd_check(int fd);

/* ---- a connection until its list has come (conn.c) ----------------------- */

struct serve_conn {
	uint64_t id;			/* the VM's, if it becomes one */
	int fd;				/* -1: slot free */
	int uffd;			/* -1 until it comes */
	int pidfd;			/* the peer's, or -1 */
	int pid, uid;
	uint64_t deadline_ns;
	size_t len;
	char *buf;			/* FERRY_SERVE_MAX_JSON */
	char reason[200];		/* why refused */
};

/* An accepted connection: its peer, a buffer.  0 or -errno. */
int serve_conn_init(struct serve_conn *c, int fd, uint64_t id,
		    int timeout_ms);
void serve_conn_fini(struct serve_conn *c);

/*
 * Read what has come: 1 when the list is whole (and parsed into l), 0
 * when more is to come, -errno when the connection is refused (reason in
 * c->reason).
 */
int serve_conn_read(struct serve_conn *c, struct serve_list *l);

/* ---- a VM (vm.c, fault.c, fill.c, install.c) ----------------------------- */

struct serve_region {
	struct ferry_serve_region r;
	uint64_t nr_pages;
	unsigned int shift;		/* log2 of r.page_size */
	/* Bits a page, atomic (relaxed): served, set by whoever installs
	 * it and cleared by a REMOVE; removed, set by the fault thread's
	 * REMOVE (under install_lock when the fill runs), never cleared. */
	uint64_t *served;
	uint64_t *removed;
};

/* A fault read, not served yet (the fault thread's own). */
struct serve_pending {
	uint64_t addr;
	uint64_t flags;
	uint64_t read_ns;
};

struct ferry_serve;

struct serve_vm {
	/* Set by the main thread before the VM's threads start; read-only
	 * from then on (the regions' bitmaps excepted, see above). */
	struct ferry_serve *srv;
	const struct serve_file *file;
	uint64_t id;
	int pid, pidfd;
	struct ferry_uffd uffd;		/* the VMM's userfaultfd, ours now */
	unsigned int nr_regions;
	struct serve_region regions[FERRY_SERVE_MAX_REGIONS];
	uint64_t layout_id;		/* of its working sets (ws.c) */

	/* Written by the main thread; state and end_ns read by any
	 * (ferry_serve_vms), relaxed. */
	enum ferry_serve_vm_state state;
	bool threads_running;
	uint64_t start_ns, end_ns;	/* end: threads stopped, 0 before */

	struct faultsvc *svc;		/* fault and fill threads */
	int retry_fd;			/* eventfd: deferred faults */
	/*
	 * With REMOVE events: the fill thread installs under it, the
	 * fault thread holds it from reading a batch until its events
	 * are applied (faultsvc_ops.batch_begin/end), so no page goes in
	 * after the kernel has discarded it and before the discard is
	 * known.
	 */
	pthread_mutex_t install_lock;
	bool remove_events;		/* set at start, read-only */

	/* The fault thread's: the faults of the batch, and deferred. */
	struct serve_pending *pending;
	size_t nr_pending, pending_cap;
	uint64_t batch_ns;
	/* The last page a fault asked for, (region + 1) << 32 | page;
	 * fault thread stores, fill thread exchanges, relaxed. */
	uint64_t hint;

	/* Recording first touches: the fault thread appends, under
	 * rec_lock; whoever ends the recording (fill or main thread)
	 * clears `recording` under it and takes them.  The fault thread
	 * reads `recording` without the lock (relaxed) first. */
	pthread_mutex_t rec_lock;
	bool recording;
	struct snap_page *recorded;
	size_t nr_recorded, recorded_cap;

	struct snap_page *prefetch;	/* the working set: read-only */
	size_t nr_prefetch;
	int fill_fd;			/* eventfd: finish now (stop) */
	bool finish;			/* main thread sets (release) before
					 * fill_fd; the fill reads (acquire) */

	/* News for the main thread: the VM's threads write under
	 * news_lock, then signal wake_fd; the main thread takes them. */
	pthread_mutex_t news_lock;
	char failure[256];		/* first page that cannot be served */
	bool failure_new;
	char note[256];
	bool note_new;
	bool handed_off;		/* regions unregistered by the fill */
	bool fill_over;			/* the fill thread returned */
	bool service_ended;		/* the fault service stopped itself */
	const char *ending;		/* main thread: why it ends, or NULL */

	/* Figures: counters atomic (relaxed), written by any of its
	 * threads; the first fields (to `faults`) are set before start;
	 * `reason` by the main thread under srv->lock. */
	struct ferry_serve_vm_stats stats;
};

/* A VM for a checked list: its bitmaps, its working set.  0 or -errno. */
int serve_vm_create(struct ferry_serve *srv, const struct serve_list *l,
		    struct serve_conn *c, uint64_t id, struct serve_vm **out);

/* Fault and fill threads.  0 or -errno with a reason. */
int serve_vm_start(struct serve_vm *vm);

/* Let the fill install everything and hand off (the server stops). */
void serve_vm_finish(struct serve_vm *vm);

/* Stop and join its threads (idempotent). */
void serve_vm_stop_threads(struct serve_vm *vm);

/* Its figures now, percentiles filled in.  Any thread. */
void serve_vm_stats(struct serve_vm *vm, struct ferry_serve_vm_stats *out);
uint64_t serve_vm_serving_ns(const struct serve_vm *vm);

/* A VM whose list was refused: serves its faults with poison. */
int serve_vm_create_refused(struct ferry_serve *srv, struct serve_conn *c,
			    uint64_t id, const char *reason,
			    struct serve_vm **out);

/* Free (threads stopped).  NULL is fine. */
void serve_vm_destroy(struct serve_vm *vm);

/* Tell the main thread (under news_lock, then wake_fd). */
void serve_vm_fail(struct serve_vm *vm, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void serve_vm_note(struct serve_vm *vm, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The fault service's handlers (fault.c). */
extern const struct faultsvc_ops serve_fault_ops;

/*
 * Messages read by the main thread from a handed-off or refused VM's
 * userfaultfd (and msgs, read before), handled as the fault thread
 * would.  0, or -ESRCH when the VMM is gone.
 */
int serve_vm_passive(struct serve_vm *vm, const struct uffd_msg *msgs,
		     size_t nr);

/* After its threads stop (handed off): wake what they read, unserved. */
void serve_vm_wake_pending(struct serve_vm *vm);

/* Before its threads start: messages read while probing (fault.c). */
int serve_vm_take_early(struct serve_vm *vm, const struct serve_list *l);

/* The fill thread (fill.c). */
void *serve_fill_main(void *arg);

/* ---- installing (install.c) ---------------------------------------------- */

/* The region holding addr, or NULL. */
struct serve_region *serve_region_of(struct serve_vm *vm, uint64_t addr);

/* Is the page's data in the file (else it is a hole: zeroes)? */
bool serve_page_has_data(const struct serve_vm *vm,
			 const struct serve_region *r, uint64_t page);

/*
 * Install count pages from `page` (count 1 when r's pages are huge):
 * zeroes when `zero`, else the file's bytes.  Returns pages installed
 * (0 < n <= count), -EEXIST when the first is already there, -EAGAIN
 * when the VMM's memory is changing (a REMOVE waits to be read), -ESRCH
 * when the VMM is gone, -ENOENT when the range is no longer registered,
 * or another -errno: the page cannot be served.
 */
ssize_t serve_install(struct serve_vm *vm, struct serve_region *r,
		      uint64_t page, uint64_t count, bool zero);

/* Wake whoever waits on a page. */
void serve_wake(struct serve_vm *vm, struct serve_region *r, uint64_t page);

/*
 * A page that cannot be served: poison it (the access takes SIGBUS), or
 * if the kernel refuses, kill the VMM.  0, -EAGAIN (a REMOVE is to be
 * read first: try again then), or -ESRCH (the VMM is gone).
 */
int serve_poison(struct serve_vm *vm, uint64_t addr, uint64_t page_size);

/* Atomic page bits. */
static inline bool serve_bit_test(const uint64_t *map, uint64_t bit)
{
	return __atomic_load_n(&map[bit / 64], __ATOMIC_RELAXED) >>
	       (bit % 64) & 1;
}

/* Set; true if it was clear. */
static inline bool serve_bit_set(uint64_t *map, uint64_t bit)
{
	uint64_t mask = 1ULL << (bit % 64);

	return !(__atomic_fetch_or(&map[bit / 64], mask, __ATOMIC_RELAXED) &
		 mask);
}

static inline void serve_bit_clear(uint64_t *map, uint64_t bit)
{
	__atomic_fetch_and(&map[bit / 64], ~(1ULL << (bit % 64)),
			   __ATOMIC_RELAXED);
}

static inline void serve_count(uint64_t *counter, uint64_t n)
{
	__atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

/* ---- working sets of a memory file (ws.c) -------------------------------- */

/* What a working set of this VM's memory is recorded against. */
uint64_t serve_ws_layout_id(const struct serve_vm *vm);

/* Load the server's prefetch set for vm: 0 (vm->prefetch), or -errno. */
int serve_ws_load(struct serve_vm *vm, const char *path);

/* End the recording, write what it holds.  0, or -errno with a reason. */
int serve_ws_save(struct serve_vm *vm, const char *path);

/* Note a first touch (fault thread). */
void serve_ws_record(struct serve_vm *vm, unsigned int region,
		     uint64_t page);

/* ---- the server (server.c) ----------------------------------------------- */

struct serve_watch;

struct ferry_serve {
	int listen_fd;
	struct serve_file file;
	struct ferry_serve_opts opts;
	int stop_fd;			/* eventfd: ferry_serve_stop */
	int wake_fd;			/* eventfd: a VM has news */
	unsigned int stops;		/* main thread: stops seen */

	/* The main thread changes the lists under lock; readers
	 * (ferry_serve_vms) take it. */
	pthread_mutex_t lock;
	struct serve_vm **vms;		/* served, handed off, refused */
	size_t nr_vms, vms_cap;
	struct ferry_serve_vm_stats *ended;	/* a ring once full */
	size_t nr_ended, ended_cap, ended_head;

	struct serve_conn conns[SERVE_MAX_PENDING];	/* main thread */
	uint64_t next_id;
	bool recorder_taken;		/* a VM records (main thread) */
	/* The loop's poll set, grown as VMs come (main thread). */
	struct pollfd *pfd;
	struct serve_watch *watch;
	size_t watch_cap;
};

/* Tell the server's thread: a VM has news. */
static inline void serve_wake_server(struct ferry_serve *srv)
{
	evfd_signal(srv->wake_fd);
}

/* ---- on the server's thread (server.c, accept.c; loop.c runs them) ------ */

/* Tell the caller (opts.on_event), with the VM's figures now. */
void serve_tell(struct ferry_serve *srv, enum ferry_serve_event_kind kind,
		const struct ferry_serve_vm_stats *st, const char *reason);
void serve_tell_vm(struct ferry_serve *srv, enum ferry_serve_event_kind kind,
		   struct serve_vm *vm, const char *reason);

/* What a VM's threads left for the server's thread, taken at once. */
struct serve_news {
	char failure[256], note[256];
	bool failure_new, note_new, handed_off, fill_over, service_ended;
};

void serve_take_news(struct serve_vm *vm, struct serve_news *n);

/* The failure and the note in n, told (the failure is the VM's reason). */
void serve_tell_news(struct ferry_serve *srv, struct serve_vm *vm,
		     const struct serve_news *n);

/* Into the live list: 0 or -ENOMEM. */
int serve_add_vm(struct ferry_serve *srv, struct serve_vm *vm);

void serve_set_state(struct serve_vm *vm, enum ferry_serve_vm_state state);
void serve_set_reason(struct ferry_serve *srv, struct serve_vm *vm,
		      const char *reason);

/* Over: threads joined, told, its figures kept, the rest freed. */
void serve_end_vm(struct ferry_serve *srv, struct serve_vm *vm,
		  const char *why);

/* Live VMs in that state. */
size_t serve_count_state(struct ferry_serve *srv,
			 enum ferry_serve_vm_state state);

/* accept.c: new connections, lists read, deadlines. */
struct serve_conn *serve_free_conn(struct ferry_serve *srv);
void serve_accept_all(struct ferry_serve *srv);
void serve_conn_ready(struct ferry_serve *srv, struct serve_conn *c);
void serve_conn_timeouts(struct ferry_serve *srv);
int serve_next_deadline_ms(const struct ferry_serve *srv);

/* A connection turned away (l: messages read while probing, or NULL). */
void serve_refuse(struct ferry_serve *srv, struct serve_conn *c,
		  const char *reason, const struct serve_list *l);

#endif
