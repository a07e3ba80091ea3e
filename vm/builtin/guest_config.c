// SPDX-License-Identifier: MIT
/*
 * guest_config: the machine description, and its bytes for the wire.
 *
 *   offset size field (little-endian)
 *        0    4 magic "FGCF"
 *        4    2 version (1)
 *        6    2 workload spec length L (at most FERRY_GUEST_SPEC_MAX)
 *        8    4 vCPUs
 *       12    4 zero
 *       16    8 seed
 *       24    8 boot-off mask
 *       32    8 step limit
 *       40    8 memory size in bytes
 *       48    L workload spec, printable ASCII, no NUL
 *     48+L    8 XXH3-64 of bytes 0 .. 48+L-1
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "ferry/error.h"
#include "guest.h"
#include "le.h"

#define CONFIG_MAGIC	0x46434746u	/* "FGCF" little-endian */
#define CONFIG_VERSION	1
#define CONFIG_HEAD	48
#define CONFIG_TAIL	8

/* Every spec a config can carry, the workload can parse. */
_Static_assert(FERRY_GUEST_SPEC_MAX <= WL_SPEC_MAX, "workload spec length");

void ferry_guest_config_init(struct ferry_guest_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->nr_vcpus = 1;
	cfg->seed = 1;
	cfg->boot_off_mask = ~1ULL;
	strcpy(cfg->workload, "random");
}

int ferry_guest_config_set_workload(struct ferry_guest_config *cfg,
				    const char *spec)
{
	if (strlen(spec) > FERRY_GUEST_SPEC_MAX)
		return ferry_error_set(-ENAMETOOLONG,
				       "workload spec longer than %d bytes",
				       FERRY_GUEST_SPEC_MAX);
	strcpy(cfg->workload, spec);
	return 0;
}

static uint64_t vcpu_mask(unsigned int nr_vcpus)
{
	return nr_vcpus >= 64 ? ~0ULL : (1ULL << nr_vcpus) - 1;
}

static bool spec_printable(const char *spec, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (spec[i] < 0x21 || spec[i] > 0x7e)
			return false;
	return true;
}

/*
 * What can be said of a config without memory.  Mask bits past the last
 * vCPU are ignored, so the default mask fits any vCPU count.
 */
int guest_config_check(const struct ferry_guest_config *cfg)
{
	size_t len = strnlen(cfg->workload, sizeof(cfg->workload));
	struct workload wl;
	int ret;

	if (cfg->nr_vcpus < 1 || cfg->nr_vcpus > FERRY_GUEST_MAX_VCPUS)
		return ferry_error_set(-EINVAL,
				       "%u vCPUs: ferry's VM has 1 to %d",
				       cfg->nr_vcpus, FERRY_GUEST_MAX_VCPUS);
	if ((cfg->boot_off_mask & vcpu_mask(cfg->nr_vcpus)) ==
	    vcpu_mask(cfg->nr_vcpus))
		return ferry_error_set(-EINVAL, "boot-off mask %#llx leaves no "
				       "vCPU to boot",
				       (unsigned long long)cfg->boot_off_mask);
	if (len == sizeof(cfg->workload) || !spec_printable(cfg->workload, len))
		return ferry_error_set(-EINVAL, "workload spec is not a "
				       "printable string of at most %d bytes",
				       FERRY_GUEST_SPEC_MAX);
	if (cfg->mem_size % CELL_SIZE)
		return ferry_error_set(-EINVAL, "memory size %llu is not a "
				       "multiple of 4 KiB",
				       (unsigned long long)cfg->mem_size);
	ret = workload_parse(cfg->workload, &wl);
	if (!ret)
		ret = workload_check_vcpus(&wl, cfg->nr_vcpus);
	return ret;
}

ssize_t ferry_guest_config_encode(const struct ferry_guest_config *cfg,
				  void *buf, size_t len)
{
	size_t spec_len = strnlen(cfg->workload, sizeof(cfg->workload));
	size_t need = CONFIG_HEAD + spec_len + CONFIG_TAIL;
	uint8_t *b = buf;
	int ret = guest_config_check(cfg);

	if (ret)
		return ret;
	if (!buf)
		return (ssize_t)need;
	if (len < need)
		return ferry_error_set(-ENOSPC, "a guest config needs %zu "
				       "bytes, not %zu", need, len);
	memset(b, 0, CONFIG_HEAD);
	le32_store(b, CONFIG_MAGIC);
	le16_store(b + 4, CONFIG_VERSION);
	le16_store(b + 6, (uint16_t)spec_len);
	le32_store(b + 8, cfg->nr_vcpus);
	le64_store(b + 16, cfg->seed);
	le64_store(b + 24, cfg->boot_off_mask & vcpu_mask(cfg->nr_vcpus));
	le64_store(b + 32, cfg->step_limit);
	le64_store(b + 40, cfg->mem_size);
	memcpy(b + CONFIG_HEAD, cfg->workload, spec_len);
	le64_store(b + CONFIG_HEAD + spec_len,
		   XXH3_64bits(b, CONFIG_HEAD + spec_len));
	return (ssize_t)need;
}

static int check_config_frame(const uint8_t *b, size_t len)
{
	size_t spec_len;

	if (len < CONFIG_HEAD + CONFIG_TAIL || le32_load(b) != CONFIG_MAGIC)
		return ferry_error_set(-EBADMSG, "not a ferry guest config "
				       "(%zu bytes, bad magic)", len);
	if (le16_load(b + 4) != CONFIG_VERSION)
		return ferry_error_set(-EBADMSG, "guest config version %u; "
				       "this ferry reads version %u",
				       le16_load(b + 4), CONFIG_VERSION);
	spec_len = le16_load(b + 6);
	if (spec_len > FERRY_GUEST_SPEC_MAX ||
	    len != CONFIG_HEAD + spec_len + CONFIG_TAIL)
		return ferry_error_set(-EBADMSG, "guest config of %zu bytes "
				       "with a %zu-byte spec", len, spec_len);
	if (le64_load(b + CONFIG_HEAD + spec_len) !=
	    XXH3_64bits(b, CONFIG_HEAD + spec_len))
		return ferry_error_set(-EBADMSG,
				       "guest config checksum mismatch");
	if (le32_load(b + 12))
		return ferry_error_set(-EBADMSG,
				       "guest config: reserved bytes set");
	return 0;
}

int ferry_guest_config_decode(const void *buf, size_t len,
			      struct ferry_guest_config *cfg)
{
	struct ferry_guest_config c = { 0 };
	const uint8_t *b = buf;
	int ret = check_config_frame(b, len);

	if (ret)
		return ret;
	c.nr_vcpus = le32_load(b + 8);
	c.seed = le64_load(b + 16);
	c.boot_off_mask = le64_load(b + 24);
	c.step_limit = le64_load(b + 32);
	c.mem_size = le64_load(b + 40);
	memcpy(c.workload, b + CONFIG_HEAD, le16_load(b + 6));
	if (strlen(c.workload) != le16_load(b + 6))
		return ferry_error_set(-EINVAL,
				       "guest config: NUL in the spec");
	if (c.nr_vcpus >= 1 && c.nr_vcpus <= FERRY_GUEST_MAX_VCPUS &&
	    (c.boot_off_mask & ~vcpu_mask(c.nr_vcpus)))
		return ferry_error_set(-EINVAL, "guest config: boot-off mask "
				       "%#llx names vCPUs past %u",
				       (unsigned long long)c.boot_off_mask,
				       c.nr_vcpus);
	ret = guest_config_check(&c);
	if (ret)
		return ferry_error_prefix(ret, "guest config");
	*cfg = c;
	return 0;
}
