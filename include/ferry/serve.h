/* SPDX-License-Identifier: MIT */
#ifndef FERRY_SERVE_H
#define FERRY_SERVE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry/hist.h"

/*
 * serve: an external userfaultfd page-fault handler for VMMs that restore
 * a snapshot lazily and hand the faults to another process, as Firecracker
 * does with a memory backend of type "Uffd" (docs/serve.md has the
 * protocol in full).
 *
 * A VMM connects to a Unix stream socket the server listens on and sends,
 * in one sendmsg(), the userfaultfd it created and registered (MISSING, on
 * anonymous private memory or anonymous hugetlb memory) as SCM_RIGHTS and
 * a JSON array of its guest memory regions: where each lies in the VMM's
 * address space, how big it is, where its bytes start in the memory file
 * (guest memory as one flat file) and its page size.  The server checks
 * every field, then installs pages into the VMM's address space with
 * UFFDIO_COPY from one read-only mapping of the memory file (so every VM
 * served shares its page cache) and UFFDIO_ZEROPAGE for the file's holes,
 * honours UFFD_EVENT_REMOVE (a discarded page reads zero afterwards, never
 * the file's data), installs a recorded working set first and the rest in
 * the background, and, once every page is in place, unregisters the
 * regions: from then on the VM runs on plain memory and needs the server
 * no more.
 *
 * A page that cannot be served (the file shrank or cannot be read) is
 * poisoned (UFFDIO_POISON, Linux 6.6): the access that wanted it takes
 * SIGBUS, so the VMM fails loudly instead of waiting forever or running on
 * a page of zeroes; where poisoning is refused, the VMM is killed.  A VMM
 * whose region list is refused gets the same: each fault it takes is
 * poisoned.
 */

/* One guest memory region, as the VMM describes it. */
struct ferry_serve_region {
	uint64_t base_host_virt_addr;	/* in the VMM's address space */
	uint64_t size;			/* bytes, a multiple of page_size */
	uint64_t offset;		/* where its bytes start in the file */
	uint64_t page_size;		/* 4096, or 2097152 (hugetlb) */
};

/* The most regions one VMM may describe. */
#define FERRY_SERVE_MAX_REGIONS	64

/* The longest region list accepted, in bytes of JSON. */
#define FERRY_SERVE_MAX_JSON	(64 * 1024)

enum ferry_serve_vm_state {
	FERRY_SERVE_VM_SERVING,		/* faults are served */
	FERRY_SERVE_VM_HANDED_OFF,	/* every page in place, regions
					 * unregistered: the VM runs alone */
	FERRY_SERVE_VM_REFUSED,		/* its list was refused: its faults
					 * are poisoned */
	FERRY_SERVE_VM_ENDED,		/* the VMM exited, or was let go */
};

/* One VM's figures. */
struct ferry_serve_vm_stats {
	uint64_t id;			/* 1, 2, ... in order of connection */
	int pid;			/* the VMM's (SO_PEERCRED) */
	enum ferry_serve_vm_state state;
	unsigned int nr_regions;
	uint64_t page_size;
	uint64_t guest_bytes;
	uint64_t faults;		/* page-fault messages read */
	uint64_t copies;		/* pages installed from the file */
	uint64_t zero_pages;		/* installed as zeroes: holes of the
					 * file, removed pages */
	uint64_t bytes_copied;
	uint64_t prefetched;		/* working-set pages installed */
	uint64_t filled;		/* pages the background fill put in */
	uint64_t races;			/* already in place (EEXIST) */
	uint64_t deferred;		/* retried after EAGAIN (a REMOVE) */
	uint64_t removes;		/* REMOVE (and UNMAP) events */
	uint64_t removed_pages;		/* pages they discarded */
	uint64_t poisoned;		/* pages that could not be served */
	uint64_t ws_recorded;		/* first touches recorded */
	uint64_t serving_ns;		/* from the list accepted until the
					 * hand-off or the end */
	uint64_t fault_latency_p50_ns;	/* fault read to page in place */
	uint64_t fault_latency_p99_ns;
	uint64_t fault_latency_max_ns;
	struct ferry_hist fault_latency;
	char reason[256];		/* refused, failed or ended: why */
};

enum ferry_serve_event_kind {
	FERRY_SERVE_EV_STARTED,		/* a list accepted: the VM is served */
	FERRY_SERVE_EV_REFUSED,		/* a connection or list refused */
	FERRY_SERVE_EV_FAILED,		/* a page could not be served */
	FERRY_SERVE_EV_NOTE,		/* worth saying, not a failure */
	FERRY_SERVE_EV_HANDED_OFF,	/* every page in place */
	FERRY_SERVE_EV_ENDED,		/* the VMM exited or was let go */
};

struct ferry_serve_event {
	enum ferry_serve_event_kind kind;
	const struct ferry_serve_vm_stats *vm;	/* figures at that moment */
	const char *reason;			/* what happened, in a line */
};

struct ferry_serve_opts {
	/*
	 * Record the order in which the first VM served touches pages, and
	 * write it to this file (a working set, docs/snapshot.md) when
	 * recording ends: after record_ms (0: when the VM ends or is let
	 * go).  That VM's background fill waits until then, so every first
	 * touch is the guest's.
	 */
	const char *record_ws;
	unsigned int record_ms;
	/* A working set to install first into every VM, or NULL. */
	const char *prefetch_ws;
	/* No background fill: serve on demand only (and at stop). */
	bool no_fill;
	/* Read the whole memory file into the page cache and map it at
	 * create, so that no fault waits for the disk. */
	bool populate;
	/* How long a connection has to send its list; 0: 5000 ms. */
	int handshake_timeout_ms;
	/* VMs served at once; 0: 256.  Beyond it, a VMM is refused. */
	unsigned int max_vms;
	/*
	 * Told what happens, on the thread that runs ferry_serve_run();
	 * the library never prints.  NULL: nobody is told.
	 */
	void (*on_event)(void *arg, const struct ferry_serve_event *ev);
	void *event_arg;
};

struct ferry_serve;

/*
 * A server on listen_fd (a listening Unix stream socket, see
 * ferry_serve_listen) serving memory from mem_fd (a regular file opened
 * for reading: guest memory as one flat file; it must not change while it
 * is served).  Both stay the caller's.  0, or -errno with a reason.
 */
int ferry_serve_create(int listen_fd, int mem_fd,
		       const struct ferry_serve_opts *opts,
		       struct ferry_serve **out);

/*
 * Accept VMMs and serve them until ferry_serve_stop(); then every VM
 * still served is handed off (its remaining pages installed, its regions
 * unregistered) or, if refused, killed, and run returns 0 (or -errno
 * when the server itself failed).
 */
int ferry_serve_run(struct ferry_serve *srv);

/* Ask run to return.  Any thread; async-signal-safe. */
void ferry_serve_stop(struct ferry_serve *srv);

/*
 * The figures of the last 1024 VMs that ended, oldest first, then of
 * every VM still kept (served, handed off, refused), in order of
 * connection; at most `max`.  Returns how many there are in all (more
 * than max when some did not fit).  Any thread.
 */
size_t ferry_serve_vms(struct ferry_serve *srv,
		       struct ferry_serve_vm_stats *out, size_t max);

/* Free a server not running.  NULL is fine. */
void ferry_serve_destroy(struct ferry_serve *srv);

/*
 * A listening Unix stream socket at path (a socket left there by a dead
 * server is replaced; a live one is -EADDRINUSE), mode 0600: whoever can
 * connect is served the memory file, so only its owner may (chown or
 * chmod it for a VMM that runs as another user).  Returns the fd, or
 * -errno with a reason.
 */
int ferry_serve_listen(const char *path);

/*
 * The VMM's side, as Firecracker does it: connect to path and send uffd
 * (registered MISSING over every region) with the region list, in one
 * sendmsg().  Returns the connected socket, or -errno with a reason.
 * Keep it open while the VM runs, as Firecracker does since 1.12: some
 * handlers take its end for the VMM's.
 */
int ferry_serve_handover(const char *path, int uffd,
			 const struct ferry_serve_region *regions,
			 unsigned int nr);

#endif
