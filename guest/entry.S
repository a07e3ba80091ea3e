/* SPDX-License-Identifier: MIT */
/*
 * The guest's exception stubs, at CPL0 (the VMM's IDT points here; the
 * TSS gives them a stack).  The workload never takes an exception: one
 * that happens is a bug, reported to the VMM as a FAULT call (error code,
 * rip and cr2 first, the vector last), after which the VMM stops the vCPU.
 */
#define KG_FAULT_ADDR	(0x3ff00000 + 11 * 0x1000)

	.text
	.globl	kg_stubs
	.balign	16
kg_stubs:
	.set	vec, 0
	.rept	32
	.balign	16
	/* Vectors 8, 10-14, 17, 21, 29 and 30 push an error code. */
	.if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || \
	    (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq	$0
	.endif
	pushq	$vec
	jmp	kg_fault
	.set	vec, vec + 1
	.endr

kg_fault:
	movq	8(%rsp), %rax
	movq	%rax, KG_FAULT_ADDR + 8
	movq	16(%rsp), %rax
	movq	%rax, KG_FAULT_ADDR + 16
	movq	%cr2, %rax
	movq	%rax, KG_FAULT_ADDR + 24
	movq	(%rsp), %rax
	movq	%rax, KG_FAULT_ADDR
1:	hlt
	jmp	1b

	.section .note.GNU-stack, "", @progbits
