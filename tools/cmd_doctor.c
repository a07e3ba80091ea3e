// SPDX-License-Identifier: MIT
/* ferry doctor: what this machine offers ferry, and what to change. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "ferry/caps.h"
#include "ferry/ferry.h"

static void print_uffd(const struct ferry_caps *caps)
{
	const struct ferry_uffd_caps *u = caps->uffd;

	printf("userfaultfd\n");
	if (u->open_err) {
		printf("  unavailable: %s\n", u->open_reason);
		return;
	}
	if (u->kernel_err)
		printf("  opened via       %s: USER-MODE FAULTS ONLY\n"
		       "                   %s\n", ferry_uffd_via_name(u->via),
		       u->kernel_reason);
	else
		printf("  opened via       %s (kernel-mode faults reported)\n",
		       ferry_uffd_via_name(u->kernel_via));
	printf("  unprivileged     vm.unprivileged_userfaultfd=%ld, "
	       "/dev/userfaultfd %s\n", caps->unprivileged_userfaultfd,
	       caps->dev_userfaultfd ? "present" : "absent");
	printf("  features\n");
	for (int i = 0; i < FERRY_UFFD_F_COUNT; i++) {
		uint64_t bit = 1ULL << i;

		printf("    %-20s %-3s (Linux %s)\n",
		       ferry_uffd_feature_name(bit),
		       u->features & bit ? "yes" : "no",
		       ferry_uffd_feature_since(bit));
	}
	printf("  PAGEMAP_SCAN     %s (Linux 6.7)\n",
	       u->pagemap_scan ? "yes" : "no");
}

static void print_memory(const struct ferry_caps *caps)
{
	printf("memory\n");
	printf("  hugetlb pool     %ld x 2 MiB, %ld free "
	       "(/proc/sys/vm/nr_hugepages)\n", caps->hugetlb_total,
	       caps->hugetlb_free);
	printf("  THP shmem        shmem_enabled=%s, hugepages-2048kB=%s\n",
	       caps->thp_shmem_enabled, caps->thp_shmem_2m);
}

/*
 * KVM: there or not and why, the backend, the capabilities the KVM VM
 * uses.  Without it ferry runs its built-in VM, so KVM's absence is
 * reported, not counted as missing.
 */
static void print_kvm(void)
{
	struct ferry_kvm_info k;

	ferry_kvm_probe(&k);
	printf("kvm\n");
	printf("  /dev/kvm         %s\n", k.present ? "present" : "absent");
	printf("  backend          %s (%s)\n",
	       ferry_kvm_backend_name(k.backend), k.backend_why);
	if (k.present)
		printf("  API version      %d\n", k.api_version);
	printf("  KVM VM           %s%s\n", k.usable ? "usable: the default "
	       "VM (--vm kvm)" : "NOT usable: ", k.usable ? "" : k.reason);
	if (!k.usable)
		printf("                   the built-in VM runs instead "
		       "(--vm builtin)\n");
	for (unsigned int i = 0; k.present && i < k.nr_caps; i++) {
		const struct ferry_kvm_cap *c = &k.caps[i];
		char value[24];

		if (c->value > 1)
			snprintf(value, sizeof(value), "%ld", c->value);
		else
			snprintf(value, sizeof(value), "%s", c->value ? "yes" :
				 c->required ? "MISSING" : "no");
		printf("    %-34s %-8s %s\n", c->name, value, c->use);
	}
}

static int print_caps(const struct ferry_caps *caps)
{
	int missing = 0;

	printf("capabilities\n");
	for (int i = 0; i < FERRY_CAP_COUNT; i++) {
		const struct ferry_cap_status *c = &caps->cap[i];

		printf("  %-4s %-38s %s\n", c->ok ? "ok" : "NO",
		       ferry_caps_name((enum ferry_cap)i), c->detail);
		if (!c->ok) {
			printf("       to enable: %s\n", c->fix);
			missing++;
		}
	}
	return missing;
}

int cmd_doctor(int argc, char **argv)
{
	struct ferry_caps caps;
	int ret, missing;

	if (argc > 1) {
		bool help = !strcmp(argv[1], "--help") ||
			    !strcmp(argv[1], "-h");

		if (!help) {
			fprintf(stderr, "ferry doctor: %s is not an option "
				"(ferry doctor --help)\n", argv[1]);
			return 2;
		}
		printf("usage: ferry doctor\n\n"
			"Probes this machine (userfaultfd features, how "
			"userfaultfd opens, hugetlb pool,\nTHP shmem), tries a "
			"kernel-mode fault on a registered page, and says, for\n"
			"each ferry capability, whether it can run here and, if "
			"not, what to change.\nIts KVM section says whether "
			"/dev/kvm is there (and if not, why: the kernel\nlog's "
			"word when it has one), the backend (VMX, SVM or PVM), "
			"the API\nversion and each capability the KVM VM uses; "
			"without KVM the built-in VM\nruns, so KVM's absence does "
			"not change the exit status.\n"
			"Exit status: 0 when everything is available, 1 when "
			"something is missing\n(the machine failed the check), "
			"2 when the probe itself failed.\n");
		return 0;
	}
	ret = ferry_caps_probe(&caps);
	if (ret) {
		cli_error("probing the machine", ret);
		return 2;
	}
	printf("ferry %s on Linux %s%s\n\n", FERRY_VERSION, caps.kernel,
	       caps.root ? " (root)" : "");
	print_uffd(&caps);
	print_memory(&caps);
	print_kvm();
	missing = print_caps(&caps);
	printf("\n%s\n", missing ? "some capabilities are missing (see "
	       "'to enable')" : "everything ferry uses is available");
	return missing ? 1 : 0;
}
