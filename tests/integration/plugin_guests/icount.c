/* icount: a loop whose instruction and access counts are known exactly.
 *
 *   icount [N]
 *
 * Between emu_mark(1) and emu_mark(2) one asm block runs N iterations of
 * {load page 0, store page 1, decrement, branch}: 4 instructions, 1 read of
 * page 0 and 1 write of page 1 each.  From after the first mark's syscall
 * to the second mark's syscall inclusive it retires 4N + 4 instructions on
 * x86-64 (mov; loop; mov, mov, syscall) and 4N + 5 on arm64 (mov; loop;
 * mov, movk, mov, svc). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000;
	char *buf = mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED || n < 1)
		return 2;
	printf("buf=%lu n=%ld\n", (unsigned long)buf, n);
	fflush(stdout);
#if defined(__x86_64__)
	__asm__ volatile(
		"mov $0x656d75, %%eax\n\t"
		"mov $1, %%edi\n\t"
		"syscall\n\t"
		"mov %[n], %%rcx\n\t"
		"1: mov (%[b]), %%rax\n\t"
		"mov %%rax, 4096(%[b])\n\t"
		"dec %%rcx\n\t"
		"jnz 1b\n\t"
		"mov $0x656d75, %%eax\n\t"
		"mov $2, %%edi\n\t"
		"syscall\n\t"
		: : [n] "r"(n), [b] "r"(buf) : "rax", "rcx", "rdi", "r11", "memory", "cc");
#elif defined(__aarch64__)
	__asm__ volatile(
		"mov x8, #0x6d75\n\t"
		"movk x8, #0x65, lsl #16\n\t"
		"mov x0, #1\n\t"
		"svc #0\n\t"
		"mov x9, %[n]\n\t"
		"1: ldr x10, [%[b]]\n\t"
		"str x10, [%[b], #4096]\n\t"
		"subs x9, x9, #1\n\t"
		"b.ne 1b\n\t"
		"mov x8, #0x6d75\n\t"
		"movk x8, #0x65, lsl #16\n\t"
		"mov x0, #2\n\t"
		"svc #0\n\t"
		: : [n] "r"(n), [b] "r"(buf) : "x0", "x8", "x9", "x10", "memory", "cc");
#else
#error "x86-64 or arm64 only"
#endif
	return 0;
}
