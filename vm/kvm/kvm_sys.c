// SPDX-License-Identifier: MIT
/*
 * kvm_sys: /dev/kvm, its ioctls, and what this machine's KVM offers:
 * the probe behind `ferry doctor` and the choice of VM (--vm).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <unistd.h>

#include "ferry/error.h"
#include "kvm_int.h"

int kvm_ioctl(int fd, unsigned long req, void *arg)
{
	int ret;

	do
		ret = ioctl(fd, req, arg);
	while (ret < 0 && errno == EINTR);
	return ret < 0 ? -errno : ret;
}

int kvm_ioctl_intr(int fd, unsigned long req, void *arg)
{
	int ret = ioctl(fd, req, arg);

	return ret < 0 ? -errno : ret;
}

long kvm_check_cap(int fd, long cap)
{
	int ret = ioctl(fd, KVM_CHECK_EXTENSION, cap);

	return ret < 0 ? 0 : ret;
}

int kvm_open_dev(int *fd)
{
	int api;

	*fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (*fd < 0)
		return ferry_error_set(-errno, "/dev/kvm: %s",
				       strerror(errno));
	api = ioctl(*fd, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		close(*fd);
		*fd = -1;
		return ferry_error_set(-EOPNOTSUPP, "KVM API version %d, ferry "
				       "speaks %d", api, KVM_API_VERSION);
	}
	return 0;
}

/* ---- the probe ---------------------------------------------------------- */

struct cap_use {
	long cap;
	const char *name, *use;
	bool required;
};

static const struct cap_use caps_used[] = {
	{ KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY",
	  "guest RAM as memory slots on ferry's guest views", true },
	{ KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP",
	  "in-kernel irqchip: real MP states", true },
	{ KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE",
	  "vCPU power states (seed 001)", true },
	{ KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT",
	  "pause: kick vCPUs out of KVM_RUN", true },
	{ KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "guest CPUID", true },
	{ KVM_CAP_XSAVE, "KVM_CAP_XSAVE", "FPU/SSE state", true },
	{ KVM_CAP_PIT2, "KVM_CAP_PIT2", "PIT state", false },
	{ KVM_CAP_SREGS2, "KVM_CAP_SREGS2",
	  "segments with PDPTRs (else SREGS)", false },
	{ KVM_CAP_XSAVE2, "KVM_CAP_XSAVE2",
	  "XSAVE areas past 4 KiB (else XSAVE)", false },
	{ KVM_CAP_XCRS, "KVM_CAP_XCRS", "XCR0", false },
	{ KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS",
	  "pending exceptions and interrupts", false },
	{ KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS", "debug registers", false },
	{ KVM_CAP_ADJUST_CLOCK, "KVM_CAP_ADJUST_CLOCK", "the VM's clock",
	  false },
	{ KVM_CAP_GET_TSC_KHZ, "KVM_CAP_GET_TSC_KHZ", "TSC frequency", false },
	{ KVM_CAP_TSC_CONTROL, "KVM_CAP_TSC_CONTROL",
	  "keep the source's TSC frequency", false },
	{ KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
	  "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
	  "dirty log: collect, then re-protect (else get-and-clear)", false },
	{ KVM_CAP_DIRTY_LOG_RING, "KVM_CAP_DIRTY_LOG_RING",
	  "dirty ring (not used: its resets cost more than "
	  "the log's scans)", false },
	{ KVM_CAP_X86_USER_SPACE_MSR, "KVM_CAP_X86_USER_SPACE_MSR",
	  "not needed", false },
	{ KVM_CAP_NR_VCPUS, "KVM_CAP_NR_VCPUS",
	  "vCPUs KVM recommends", false },
	{ KVM_CAP_MAX_VCPUS, "KVM_CAP_MAX_VCPUS", "most vCPUs", false },
};

#define NR_CAPS_USED	(sizeof(caps_used) / sizeof(caps_used[0]))
_Static_assert(NR_CAPS_USED <= FERRY_KVM_MAX_CAPS, "caps table");

const char *ferry_kvm_backend_name(enum ferry_kvm_backend backend)
{
	switch (backend) {
	case FERRY_KVM_BACKEND_VMX:
		return "VMX (hardware, kvm_intel)";
	case FERRY_KVM_BACKEND_SVM:
		return "SVM (hardware, kvm_amd)";
	case FERRY_KVM_BACKEND_PVM:
		return "PVM (kvm_pvm: no VMX/SVM, shadow paging)";
	default:
		return "unknown";
	}
}

static bool path_exists(const char *path)
{
	return access(path, F_OK) == 0;
}

static bool cpu_flag(const char *flag)
{
	char line[4096], word[32];
	bool found = false;
	FILE *f = fopen("/proc/cpuinfo", "re");

	if (!f)
		return false;
	snprintf(word, sizeof(word), " %s", flag);
	while (!found && fgets(line, sizeof(line), f))
		if (!strncmp(line, "flags", 5)) {
			char *p = strstr(line, word);

			found = p && (p[strlen(word)] == ' ' ||
				      p[strlen(word)] == '\n');
			break;
		}
	fclose(f);
	return found;
}

static void find_backend(struct ferry_kvm_info *info)
{
	static const struct {
		const char *module;
		enum ferry_kvm_backend backend;
	} mods[] = {
		{ "/sys/module/kvm_pvm", FERRY_KVM_BACKEND_PVM },
		{ "/sys/module/kvm_intel", FERRY_KVM_BACKEND_VMX },
		{ "/sys/module/kvm_amd", FERRY_KVM_BACKEND_SVM },
	};
	bool vmx = cpu_flag("vmx"), svm = cpu_flag("svm");

	for (size_t i = 0; i < sizeof(mods) / sizeof(mods[0]); i++)
		if (path_exists(mods[i].module)) {
			info->backend = mods[i].backend;
			snprintf(info->backend_why, sizeof(info->backend_why),
				 "%s; CPU flags: %s", mods[i].module + 12,
				 vmx ? "vmx" : svm ? "svm" : "no vmx, no svm");
			return;
		}
	info->backend = vmx ? FERRY_KVM_BACKEND_VMX :
			svm ? FERRY_KVM_BACKEND_SVM : FERRY_KVM_BACKEND_UNKNOWN;
	snprintf(info->backend_why, sizeof(info->backend_why),
		 "no KVM module loaded; CPU flags: %s",
		 vmx ? "vmx" : svm ? "svm" : "no vmx, no svm");
}

/* A kernel log line without its "<6>[    0.277579] " prefix. */
static const char *log_text(const char *line)
{
	const char *p = line;

	if (*p == '<' && (p = strchr(p, '>')))
		p++;
	else
		p = line;
	if (*p == '[' && strchr(p, ']')) {
		p = strchr(p, ']') + 1;
		while (*p == ' ')
			p++;
	}
	return p;
}

/* The kernel log's last word on KVM, if it said why it is not there. */
static void kernel_log_reason(char *out, size_t len)
{
	int size = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	char *buf, *line, *save = NULL, *last = NULL;
	int n;

	if (size <= 0 || !(buf = malloc((size_t)size + 1)))
		return;
	n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, size);
	if (n > 0) {
		buf[n] = '\0';
		for (line = strtok_r(buf, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save))
			if (strstr(line, "kvm") &&
			    (strstr(line, "not binding") ||
			     strstr(line, "disabled") ||
			     strstr(line, "not supported") ||
			     strstr(line, "no hardware support")))
				last = line;
	}
	if (last)
		snprintf(out, len, "; the kernel said: \"%s\"",
			 log_text(last));
	free(buf);
}

static void probe_caps(struct ferry_kvm_info *info, int fd)
{
	info->nr_caps = NR_CAPS_USED;
	for (size_t i = 0; i < NR_CAPS_USED; i++)
		info->caps[i] = (struct ferry_kvm_cap){
			.name = caps_used[i].name, .use = caps_used[i].use,
			.required = caps_used[i].required,
			.value = kvm_check_cap(fd, caps_used[i].cap) };
}

static void missing_reason(struct ferry_kvm_info *info)
{
	char why[160] = "";

	kernel_log_reason(why, sizeof(why));
	snprintf(info->reason, sizeof(info->reason), "no /dev/kvm (%s)%s",
		 info->backend == FERRY_KVM_BACKEND_UNKNOWN ?
		 "no VMX or SVM in cpuinfo, no kvm_pvm module" :
		 info->backend_why, why);
}

static void probe_vm(struct ferry_kvm_info *info, int dev)
{
	int vm = ioctl(dev, KVM_CREATE_VM, 0);

	if (vm < 0) {
		snprintf(info->reason, sizeof(info->reason),
			 "KVM_CREATE_VM: %s", strerror(errno));
		probe_caps(info, dev);
		return;
	}
	probe_caps(info, vm);
	close(vm);
	info->usable = true;
	for (unsigned int i = 0; i < info->nr_caps; i++)
		if (info->caps[i].required && !info->caps[i].value) {
			snprintf(info->reason, sizeof(info->reason),
				 "KVM lacks %s (%s)", info->caps[i].name,
				 info->caps[i].use);
			info->usable = false;
		}
}

int ferry_kvm_probe(struct ferry_kvm_info *info)
{
	int dev;

	memset(info, 0, sizeof(*info));
	find_backend(info);
	dev = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (dev < 0) {
		if (errno == ENOENT)
			missing_reason(info);
		else
			snprintf(info->reason, sizeof(info->reason),
				 "/dev/kvm: %s", strerror(errno));
		return 0;
	}
	info->present = true;
	info->api_version = ioctl(dev, KVM_GET_API_VERSION, 0);
	if (info->api_version != KVM_API_VERSION)
		snprintf(info->reason, sizeof(info->reason), "KVM API version "
			 "%d, ferry speaks %d", info->api_version,
			 KVM_API_VERSION);
	else
		probe_vm(info, dev);
	close(dev);
	return 0;
}

bool ferry_kvm_usable(void)
{
	struct ferry_kvm_info info;

	ferry_kvm_probe(&info);
	if (!info.usable)
		ferry_error_set(-EOPNOTSUPP, "KVM: %s", info.reason);
	return info.usable;
}

/* ---- how KVM maps guest memory ----------------------------------------- */

/* Stat `name`'s first value, from a binary stats fd's header and data. */
static int stat_value(int fd, const struct kvm_stats_header *h,
		      const char *name, uint64_t *value)
{
	size_t stride = sizeof(struct kvm_stats_desc) + h->name_size;
	struct kvm_stats_desc *d = malloc(stride);
	int ret = -ENOENT;

	if (!d)
		return -ENOMEM;
	for (uint32_t i = 0; i < h->num_desc && ret == -ENOENT; i++) {
		if (pread(fd, d, stride, h->desc_offset + i * stride) !=
		    (ssize_t)stride)
			break;
		d->name[h->name_size - 1] = '\0';
		if (strcmp(d->name, name) || !d->size)
			continue;
		ret = pread(fd, value, 8, h->data_offset + d->offset) == 8 ?
		      0 : -EIO;
	}
	free(d);
	return ret;
}

int ferry_kvm_page_sizes(struct ferry_kvm *k, struct ferry_kvm_pages *out)
{
	struct kvm_stats_header h;
	int fd = kvm_ioctl(k->vm_fd, KVM_GET_STATS_FD, NULL);
	int ret;

	if (fd < 0)
		return ferry_error_set(fd, "KVM_GET_STATS_FD: %s (Linux 5.14)",
				       strerror(-fd));
	ret = pread(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h) ? 0 : -EIO;
	if (!ret && (h.name_size < 2 || h.name_size > 4096))
		ret = -EIO;
	if (!ret)
		ret = stat_value(fd, &h, "pages_4k", &out->pages_4k);
	if (!ret)
		ret = stat_value(fd, &h, "pages_2m", &out->pages_2m);
	if (!ret && stat_value(fd, &h, "pages_1g", &out->pages_1g))
		out->pages_1g = 0;
	close(fd);
	if (ret)
		return ferry_error_set(ret, "KVM's stats have no pages_4k and "
				       "pages_2m");
	return 0;
}
