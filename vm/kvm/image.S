/* SPDX-License-Identifier: MIT */
/* The guest image (guest/, built by the Makefile), carried as data. */
	.section .rodata
	.balign	4096
	.globl	kvm_guest_image
kvm_guest_image:
	.incbin	GUEST_BIN
	.globl	kvm_guest_image_end
kvm_guest_image_end:

	.section .note.GNU-stack, "", @progbits
