// SPDX-License-Identifier: MIT
/*
 * The public headers as a C++17 program sees them: every declaration
 * with C linkage, every inline function valid C++.  Built (and run) by
 * `make check`; it links against libferry.so, so a declaration that
 * lost its extern "C" fails here as an undefined, mangled symbol.
 */
#include <ferry/ferry.h>
#include <ferry-vm/guest_vm.h>

#include <cerrno>
#include <cstdio>

int main()
{
	struct uffd_msg msg = {};
	struct ferry_uffd uffd = {};
	struct ferry_mem *mem = nullptr;
	int ret;

	msg.arg.pagefault.flags = UFFD_PAGEFAULT_FLAG_WRITE;
	uffd.features = FERRY_UFFD_F_MINOR_SHMEM;
	if (ferry_uffd_fault_kind(&msg) != FERRY_FAULT_MISSING ||
	    !ferry_uffd_fault_is_write(&msg) ||
	    !ferry_uffd_has(&uffd, FERRY_UFFD_F_MINOR_SHMEM))
		return 1;
	ret = ferry_mem_create(&mem);
	if (ret)
		return 1;
	ret = ferry_error_set(-EINVAL, "from C++ %d", 17);
	std::printf("%s %s (%d)\n", FERRY_VERSION, ferry_error_msg(), ret);
	ferry_mem_destroy(mem);
	return ret == -EINVAL ? 0 : 1;
}
