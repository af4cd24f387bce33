/* emu_mark(id): tell emu that the guest reached phase `id`.
 *
 * A raw system call with a number no kernel uses (EMU_MARK_NR, the same on
 * every architecture; see emu/trace/events.py).  The emu plugin sees it as a
 * MARK event; a native kernel returns -ENOSYS and nothing else happens, so a
 * marked program runs unchanged outside emu.  Inline asm rather than
 * syscall(2) so that the marker makes no memory access of its own.
 */
#ifndef EMU_MARK_H
#define EMU_MARK_H

#define EMU_MARK_NR 0x656D75L

static inline long emu_mark(long id)
{
#if defined(__x86_64__)
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(EMU_MARK_NR), "D"(id)
			 : "rcx", "r11", "memory");
	return ret;
#elif defined(__aarch64__)
	register long x8 __asm__("x8") = EMU_MARK_NR;
	register long x0 __asm__("x0") = id;
	__asm__ volatile("svc 0" : "+r"(x0) : "r"(x8) : "memory");
	return x0;
#else
#error "emu_mark: only x86-64 and arm64 guests"
#endif
}

#endif
