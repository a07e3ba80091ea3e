// SPDX-License-Identifier: MIT
/*
 * kvm_dirty: KVM's dirty log as ferry's second dirty tracker
 * (ferry_dirty_set_log).
 *
 * Chosen over the dirty ring and over write-protect + PAGEMAP_SCAN by
 * what was measured on the hosts ferry runs on (docs/kvm.md): the log is
 * exact at 4 KiB when the guest maps its RAM at 4 KiB (this guest does),
 * a scan costs a few tenths of a millisecond per 256 MiB, and it does not
 * drop KVM's mappings of the pages the guest only reads, which each
 * PAGEMAP_SCAN does; the ring's reset cost more than the scan.  With
 * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 a collect is KVM_GET_DIRTY_LOG, then
 * KVM_CLEAR_DIRTY_LOG of exactly what it returned, before ferry reads the
 * pages (a write between the two is in the page ferry then reads);
 * without it, KVM_GET_DIRTY_LOG gets and clears at once.  A peek
 * (ferry_dirty_peek) only reads; a collect of a range re-protects that
 * range only: what KVM returned outside it stays pending here.
 *
 * What KVM's log cannot see: the VMM writing guest memory through its
 * own mapping.  This VM's VMM writes it only through ferry_kvm_vm_write,
 * which marks the pages here; a collect reports both.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/error.h"
#include "kvm_int.h"

#define BITS_WORDS(n)	(((n) + 63) / 64)

static uint64_t pages_4k(const struct kvm_slot *s)
{
	return s->size / KG_PAGE;
}

static int log_start(void *arg, struct ferry_mem *mem)
{
	struct ferry_kvm *k = arg;
	unsigned int i;
	int ret = 0;

	(void)mem;
	pthread_mutex_lock(&k->dirty_lock);
	for (i = 0; !ret && i < k->nr_slots; i++) {
		memset(k->vmm_dirty[i], 0,
		       BITS_WORDS(pages_4k(&k->slots[i])) * 8);
		memset(k->pending[i], 0,
		       BITS_WORDS(pages_4k(&k->slots[i])) * 8);
		ret = kvm_slot_set_flags(k, i, KVM_MEM_LOG_DIRTY_PAGES);
	}
	if (ret)
		while (i-- > 0)
			kvm_slot_set_flags(k, i, 0);
	k->logging = !ret;
	pthread_mutex_unlock(&k->dirty_lock);
	return ret;
}

/*
 * KVM's bits for the slot, added to what is pending.  With manual
 * protect, KVM_GET_DIRTY_LOG only reads (the bits stay set until
 * KVM_CLEAR_DIRTY_LOG); without it, it reads and re-protects the whole
 * slot, so what it returned stays pending here until collected.
 */
static int get_log(struct ferry_kvm *k, unsigned int idx)
{
	struct kvm_dirty_log log = { .slot = idx, .dirty_bitmap = k->log_buf };
	uint64_t n = pages_4k(&k->slots[idx]);
	int ret;

	memset(k->log_buf, 0, BITS_WORDS(n) * 8);
	ret = kvm_ioctl(k->vm_fd, KVM_GET_DIRTY_LOG, &log);
	if (ret)
		return ferry_error_set(ret, "KVM_GET_DIRTY_LOG slot %u: %s",
				       idx, strerror(-ret));
	for (uint64_t w = 0; w < BITS_WORDS(n); w++)
		k->pending[idx][w] |= k->log_buf[w];
	return 0;
}

/* Of 4 KiB bits, those of pages [from, to) only. */
static uint64_t word_in(uint64_t w, uint64_t bits, uint64_t from, uint64_t to)
{
	uint64_t lo = w * 64, mask = ~0ULL;

	if (from > lo)
		mask &= from - lo >= 64 ? 0 : ~0ULL << (from - lo);
	if (to < lo + 64)
		mask &= to <= lo ? 0 : ~0ULL >> (64 - (to - lo));
	return bits & mask;
}

/*
 * Re-protect the pages of [from, to) that KVM reported: KVM_CLEAR_DIRTY_LOG
 * on a window aligned to 64 pages (as it wants), with only those bits set.
 */
static int clear_log(struct ferry_kvm *k, unsigned int idx, uint64_t from,
		     uint64_t to)
{
	uint64_t n = pages_4k(&k->slots[idx]), first = from / 64 * 64;
	uint64_t end = (to + 63) / 64 * 64 < n ? (to + 63) / 64 * 64 : n;
	struct kvm_clear_dirty_log clear = { .slot = idx,
		.first_page = first, .num_pages = (uint32_t)(end - first),
		.dirty_bitmap = k->log_buf };
	int ret;

	for (uint64_t w = first / 64; w < BITS_WORDS(end); w++)
		k->log_buf[w - first / 64] = word_in(w, k->pending[idx][w],
						     from, to);
	ret = kvm_ioctl(k->vm_fd, KVM_CLEAR_DIRTY_LOG, &clear);
	if (ret)
		return ferry_error_set(ret, "KVM_CLEAR_DIRTY_LOG slot %u: %s",
				       idx, strerror(-ret));
	return 0;
}

/*
 * KVM's 4 KiB bits and the VMM's for pages [from, to), into ferry's bits
 * at the page size; with protect, they are no longer pending.
 */
static ssize_t merge(struct ferry_kvm *k, unsigned int idx, uint64_t from,
		     uint64_t to, bool protect, uint64_t *bitmap)
{
	const struct ferry_region *r = &k->mem->regions[idx];
	uint64_t per = r->page_size / KG_PAGE;
	uint64_t *vmm = k->vmm_dirty[idx], *pend = k->pending[idx];
	ssize_t newly = 0;

	for (uint64_t w = from / 64; w < BITS_WORDS(to); w++) {
		uint64_t bits = word_in(w, pend[w] | vmm[w], from, to);

		if (protect) {
			pend[w] &= ~bits;
			vmm[w] &= ~bits;
		}
		while (bits) {
			uint64_t bit = (uint64_t)__builtin_ctzll(bits);
			uint64_t page = (w * 64 + bit) / per;
			uint64_t mask = 1ULL << (page % 64);

			bits &= bits - 1;
			if (!(bitmap[page / 64] & mask)) {
				bitmap[page / 64] |= mask;
				newly++;
			}
		}
	}
	return newly;
}

static ssize_t log_collect(void *arg, unsigned int idx, uint64_t first,
			   uint64_t count, bool protect, uint64_t *bitmap)
{
	struct ferry_kvm *k = arg;
	uint64_t per, from, to;
	ssize_t ret;

	if (idx >= k->nr_slots)
		return ferry_error_set(-EINVAL, "no region %u", idx);
	per = k->mem->regions[idx].page_size / KG_PAGE;
	from = first * per;
	to = (first + count) * per;
	if (to > pages_4k(&k->slots[idx]) || from > to)
		return ferry_error_set(-EINVAL, "pages %llu+%llu are outside "
				       "region %u", (unsigned long long)first,
				       (unsigned long long)count, idx);
	pthread_mutex_lock(&k->dirty_lock);
	ret = get_log(k, idx);
	if (!ret && protect && k->has_manual_protect && to > from)
		ret = clear_log(k, idx, from, to);
	if (!ret)
		ret = merge(k, idx, from, to, protect, bitmap);
	pthread_mutex_unlock(&k->dirty_lock);
	return ret;
}

static void log_stop(void *arg)
{
	struct ferry_kvm *k = arg;

	pthread_mutex_lock(&k->dirty_lock);
	for (unsigned int i = 0; i < k->nr_slots; i++)
		kvm_slot_set_flags(k, i, 0);
	k->logging = false;
	pthread_mutex_unlock(&k->dirty_lock);
}

void kvm_dirty_note(struct ferry_kvm *k, unsigned int region, uint64_t off,
		    uint64_t len)
{
	pthread_mutex_lock(&k->dirty_lock);
	if (k->logging && region < k->nr_slots)
		for (uint64_t p = off / KG_PAGE; p <= (off + len - 1) / KG_PAGE;
		     p++)
			k->vmm_dirty[region][p / 64] |= 1ULL << (p % 64);
	pthread_mutex_unlock(&k->dirty_lock);
}

int kvm_dirty_init(struct ferry_kvm *k)
{
	uint64_t most = 0;

	for (unsigned int i = 0; i < k->nr_slots; i++) {
		uint64_t words = BITS_WORDS(pages_4k(&k->slots[i]));

		k->vmm_dirty[i] = calloc(words, 8);
		k->pending[i] = calloc(words, 8);
		if (!k->vmm_dirty[i] || !k->pending[i])
			return ferry_error_set(-ENOMEM, "out of memory");
		if (words > most)
			most = words;
	}
	k->log_buf = calloc(most ? most : 1, 8);
	if (!k->log_buf)
		return ferry_error_set(-ENOMEM, "out of memory");
	k->dirty_log = (struct ferry_dirty_log){ .start = log_start,
		.collect = log_collect, .stop = log_stop, .arg = k };
	ferry_dirty_set_log(k->mem, &k->dirty_log);
	return 0;
}

void kvm_dirty_fini(struct ferry_kvm *k)
{
	if (k->mem && k->mem->dirty_log == &k->dirty_log)
		ferry_dirty_set_log(k->mem, NULL);
	for (unsigned int i = 0; i < FERRY_WIRE_MAX_REGIONS; i++) {
		free(k->vmm_dirty[i]);
		free(k->pending[i]);
	}
	free(k->log_buf);
	pthread_mutex_destroy(&k->dirty_lock);
}

int ferry_kvm_vm_write(struct ferry_kvm *k, uint64_t gpa, const void *buf,
		       size_t len)
{
	const struct ferry_region *r = ferry_mem_find_gpa(k->mem, gpa);
	uint64_t off;

	if (!r || !len || gpa + len < gpa ||
	    gpa + len > r->guest_base + r->size)
		return ferry_error_set(-EINVAL, "%zu bytes at %#llx are not in "
				       "one region of guest memory", len,
				       (unsigned long long)gpa);
	off = gpa - r->guest_base;
	memcpy(r->guest + off, buf, len);
	kvm_dirty_note(k, (unsigned int)(r - k->mem->regions), off, len);
	return 0;
}
