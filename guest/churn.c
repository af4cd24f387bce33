/* churn: the memory-management system calls, in a loop, with every call's
 * arguments and result in the truth, so a test can find each one in emu's
 * decoded stream.  Also a leak check for the kernel model: the same address
 * space is mapped, touched and unmapped again and again.
 *
 *   churn [-i ITERATIONS] [-p PAGES]
 *
 * Each iteration: mmap PAGES anonymous pages, write one word per page,
 * madvise all of it (the advice cycles through DONTNEED, FREE,
 * HUGEPAGE, NOHUGEPAGE, COLD, PAGEOUT, COLLAPSE), mprotect the first page
 * read-only and back, mremap to twice the size (may move), write one word
 * per new page, munmap it all.  One deliberately bad munmap at the end
 * (unaligned: -EINVAL).  Marks: 1 before the loop, 2 after.
 *
 * The truth's arguments are the C values the program passed (fd -1 is -1);
 * registers may differ in bits the kernel ignores (x86-64 passes an int fd
 * zero-extended), so compare decoded forms (emu.arch.syscalls.decode).
 */
#define _GNU_SOURCE /* mremap */
#include <getopt.h>

#include "emu_mark.h"
#include "truth.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define MAX_CALLS 4096

struct call {
	const char *name;
	int nargs;
	int64_t args[6];
	long ret;
};

static struct call calls[MAX_CALLS];
static int ncalls;

/* Record a call as the kernel returned it: the value, or -errno. */
static long record(const char *name, long ret, int nargs, int64_t a0, int64_t a1, int64_t a2,
		   int64_t a3, int64_t a4, int64_t a5)
{
	if (ret == -1 || (void *)ret == MAP_FAILED)
		ret = -errno;
	if (ncalls < MAX_CALLS)
		calls[ncalls++] = (struct call){name, nargs, {a0, a1, a2, a3, a4, a5}, ret};
	return ret;
}

int main(int argc, char **argv)
{
	static const int advice[] = {MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
				     MADV_COLD, MADV_PAGEOUT, MADV_COLLAPSE};
	unsigned long iters = 7, pages = 64;
	uint64_t writes = 0;
	int c;

	truth_prog = "churn";
	opterr = 0;
	while ((c = getopt(argc, argv, "i:p:")) != -1) {
		switch (c) {
		case 'i': iters = parse_ulong(optarg, "iterations"); break;
		case 'p': pages = parse_ulong(optarg, "pages"); break;
		default: die_usage("bad option -%c; usage: churn [-i ITERATIONS] [-p PAGES]", optopt);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (iters > (MAX_CALLS - 1) / 7)
		die_usage("iterations must be 0..%d", (MAX_CALLS - 1) / 7);
	if (pages < 2 || pages > 65536)
		die_usage("pages must be 2..65536");

	size_t len = pages * PAGE_SIZE;
	const uint64_t rw = PROT_READ | PROT_WRITE, anon = MAP_PRIVATE | MAP_ANONYMOUS;
	emu_mark(1);
	for (unsigned long it = 0; it < iters; it++) {
		long a = record("mmap", (long)mmap(NULL, len, rw, anon, -1, 0), 6, 0, len, rw, anon,
				-1, 0);
		if (a < 0)
			die_errno("mmap");
		volatile uint64_t *p = (volatile uint64_t *)a;
		for (size_t i = 0; i < pages; i++)
			p[i * WORDS_PER_PAGE] = i;
		writes += pages;
		int adv = advice[it % (sizeof advice / sizeof advice[0])];
		record("madvise", madvise((void *)a, len, adv), 3, a, len, adv, 0, 0, 0);
		record("mprotect", mprotect((void *)a, PAGE_SIZE, PROT_READ), 3, a, PAGE_SIZE,
		       PROT_READ, 0, 0, 0);
		record("mprotect", mprotect((void *)a, PAGE_SIZE, rw), 3, a, PAGE_SIZE, rw, 0, 0, 0);
		long b = record("mremap", (long)mremap((void *)a, len, 2 * len, MREMAP_MAYMOVE), 4,
				a, len, 2 * len, MREMAP_MAYMOVE, 0, 0);
		if (b < 0)
			die_errno("mremap");
		p = (volatile uint64_t *)b;
		for (size_t i = pages; i < 2 * pages; i++)
			p[i * WORDS_PER_PAGE] = i;
		writes += pages;
		record("munmap", munmap((void *)b, 2 * len), 2, b, 2 * len, 0, 0, 0, 0);
	}
	record("munmap", munmap((void *)1, PAGE_SIZE), 2, 1, PAGE_SIZE, 0, 0, 0, 0);
	emu_mark(2);

	truth_begin("churn");
	truth_u64("iterations", iters);
	truth_u64("pages", pages);
	truth_u64("reads", 0);
	truth_u64("writes", writes);
	printf(",\"calls\":[");
	for (int i = 0; i < ncalls; i++) {
		printf("%s[\"%s\",[", i ? "," : "", calls[i].name);
		for (int k = 0; k < calls[i].nargs; k++)
			printf("%s%lld", k ? "," : "", (long long)calls[i].args[k]);
		printf("],%ld]", calls[i].ret);
	}
	printf("]");
	truth_end();
	return 0;
}
