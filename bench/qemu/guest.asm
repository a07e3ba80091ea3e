; SPDX-License-Identifier: MIT
;
; bench/qemu/guest.asm: the guest that QEMU migrates in bench/qemu_migrate.
; A boot sector: the BIOS loads it at 0x7c00 and jumps to it in real mode.
; It switches to 32-bit protected mode with flat 4 GiB segments, so it can
; reach all its RAM below 4 GiB, and dirties a working set of 4 KiB pages
; the way ferry's seqdirty workload does: every page in order, round and
; round, each page rewritten whole.
;
; What it does is set by a parameter block at offset 0x1f0 of the sector,
; which bench/qemu_migrate patches into a copy of the image:
;
;   0x1f0  4  first byte of the working set (page aligned, >= 1 MiB)
;   0x1f4  4  working set size in 4 KiB pages (> 0)
;   0x1f8  4  flags: GUEST_ONCE  write every page once, then halt
;                    GUEST_SPARSE one dword per page instead of the page
;                                 whole (dirties pages, not bytes, fast)
;   0x1fc  2  reserved
;   0x1fe  2  boot signature 0x55 0xaa
;
; A page written in pass N holds N in every dword (or in its first dword,
; GUEST_SPARSE): never zero, so QEMU sends it as a full page, not as a
; zero-page marker, and a page differs from what it held a pass before.
;
; After each pass it writes one byte to COM1: '.' per pass, 'D' once the
; GUEST_ONCE pass is done, so the host can count passes over time and
; know the dirty rate (working set bytes * passes / second) and when the
; memory has been written.  The UART's transmit register needs no set-up
; in QEMU.  With GUEST_ONCE it then halts with interrupts off: the vCPU
; sleeps and the memory stays as it was.
;
; Build: nasm -f bin -o guest.img guest.asm (exactly 512 bytes).

bits 16
org 0x7c00

GUEST_ONCE	equ 1
GUEST_SPARSE	equ 2
COM1		equ 0x3f8

start:
	cli
	xor ax, ax
	mov ds, ax
	mov ss, ax
	mov sp, 0x7c00

	; A20 on through the "fast A20" port, or every odd MiB aliases the
	; even one below it.
	in al, 0x92
	or al, 2
	and al, 0xfe		; bit 0 would reset the machine
	out 0x92, al

	lgdt [gdt_desc]
	mov eax, cr0
	or eax, 1		; PE
	mov cr0, eax
	jmp CODE_SEL:pmode

bits 32
pmode:
	mov ax, DATA_SEL
	mov ds, ax
	mov es, ax
	mov ss, ax
	mov esp, 0x7c00
	cld
	mov ebx, 1		; ebx: the pass, the value this pass writes

pass:
	mov edi, [ws_base]
	mov edx, [ws_pages]
	test byte [flags], GUEST_SPARSE
	jnz sparse

	; Whole pages: 1024 dwords of the pass number each.
	mov eax, ebx
.page:
	mov ecx, 1024
	rep stosd
	dec edx
	jnz .page
	jmp pass_done

	; One dword per page: the page is dirty all the same, at a fraction
	; of the stores.
sparse:
	mov [edi], ebx
	add edi, 4096
	dec edx
	jnz sparse

pass_done:
	mov al, '.'
	call putc
	inc ebx
	jnz .nonzero
	inc ebx			; wrapped: skip 0, pages stay non-zero
.nonzero:
	test byte [flags], GUEST_ONCE
	jz pass

	mov al, 'D'
	call putc
.halt:
	hlt			; interrupts are off: sleep for good
	jmp .halt

; One byte to COM1.
putc:
	mov dx, COM1
	out dx, al
	ret

; Flat segments: base 0, limit 4 GiB, 4 KiB granularity.
align 8
gdt:
	dq 0				; the null descriptor
	dq 0x00cf9a000000ffff		; 0x08 code: 32-bit, ring 0
	dq 0x00cf92000000ffff		; 0x10 data: writable
gdt_end:
CODE_SEL	equ 0x08
DATA_SEL	equ 0x10

gdt_desc:
	dw gdt_end - gdt - 1
	dd gdt

	times 0x1f0 - ($ - $$) db 0

; The parameter block (defaults: 1 MiB to 64 MiB, dirtied round and round).
ws_base:	dd 0x100000
ws_pages:	dd (63 << 20) >> 12
flags:		dd 0
		dw 0
		dw 0xaa55
