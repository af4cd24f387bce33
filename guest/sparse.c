/* sparse: populate 2 MiB ranges sparsely, then keep running over them, so
 * khugepaged has something to find and time to find it.
 *
 *   sparse [-r PMDS] [-n FIRST_PAGES | -p PAGELIST] [-i ROUNDS] [-w MS] [-H] [-L] [-R]
 *
 * Each of PMDS ranges (default 4) gets the chosen pages (default the first
 * 64 of each 512; PAGELIST as in collapse) written once; then every
 * populated page is read once per round, ROUNDS times (default 1000).  With
 * -w the rounds continue until at least MS milliseconds of wall time have
 * passed (for native khugepaged runs); the truth counts the rounds made.
 * -H applies MADV_HUGEPAGE, -L applies it late (right after mark 2, where a THP
 * setting changed at that mark lets khugepaged_enter_vma() register the mm: the
 * region has an anon_vma by then), -R adds the host kernel's mapping at the end.
 * Marks: 1 before populating, 2 after populating, 3 after the last round.
 */
#include <getopt.h>
#include <time.h>

#include "emu_mark.h"
#include "pagemap.h"
#include "truth.h"

#define PMD_PAGES (PMD_SIZE / PAGE_SIZE)

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	unsigned long npmd = 4, first = 64, rounds = 1000, wait_ms = 0;
	const char *list = NULL;
	int hugepage = 0, late = 0, report = 0, c;

	truth_prog = "sparse";
	opterr = 0;
	while ((c = getopt(argc, argv, "r:n:p:i:w:HLR")) != -1) {
		switch (c) {
		case 'r': npmd = parse_ulong(optarg, "PMD count"); break;
		case 'n': first = parse_ulong(optarg, "page count"); break;
		case 'p': list = optarg; break;
		case 'i': rounds = parse_ulong(optarg, "rounds"); break;
		case 'w': wait_ms = parse_ulong(optarg, "milliseconds"); break;
		case 'H': hugepage = 1; break;
		case 'L': late = 1; break;
		case 'R': report = 1; break;
		default: die_usage("bad option -%c; usage: sparse [-r PMDS] [-n FIRST_PAGES | -p PAGELIST] "
				   "[-i ROUNDS] [-w MS] [-H] [-L] [-R]", optopt);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (npmd < 1 || npmd > 4096)
		die_usage("PMD count must be 1..4096");
	if (first > PMD_PAGES)
		die_usage("page count must be 0..%lu", PMD_PAGES);

	uint8_t pick[PMD_PAGES] = {0};
	if (list)
		parse_pages(list, pick, PMD_PAGES);
	else
		for (unsigned long i = 0; i < first; i++)
			pick[i] = 1;
	size_t npages = npmd * PMD_PAGES, n = 0;
	uint8_t *touched = xcalloc(npages, 1);
	size_t *idx = xcalloc(npages, sizeof *idx);
	for (size_t i = 0; i < npages; i++)
		if ((touched[i] = pick[i % PMD_PAGES]))
			idx[n++] = i;

	struct region r = region_map(npages * PAGE_SIZE, 0);
	if (hugepage && madvise((void *)r.map_start, r.map_end - r.map_start, MADV_HUGEPAGE))
		die_errno("madvise(MADV_HUGEPAGE)");
	volatile uint64_t *p = (volatile uint64_t *)r.start;
	uint64_t sink = 0, done = 0, t0 = now_ms();

	emu_mark(1);
	for (size_t k = 0; k < n; k++)
		p[idx[k] * WORDS_PER_PAGE] = k + 1;
	emu_mark(2);
	if (late && madvise((void *)r.map_start, r.map_end - r.map_start, MADV_HUGEPAGE))
		die_errno("madvise(MADV_HUGEPAGE)");
	while (done < rounds || (wait_ms && now_ms() - t0 < wait_ms)) {
		for (size_t k = 0; k < n; k++)
			sink += p[idx[k] * WORDS_PER_PAGE];
		done++;
	}
	emu_mark(3);

	truth_begin("sparse");
	truth_region("region", &r);
	truth_u64("pmds", npmd);
	truth_u64("hugepage", hugepage);
	truth_u64("rounds", done);
	truth_u64("pages_touched", n);
	truth_ranges("touched", touched, npages);
	truth_u64("reads", n * done);
	truth_u64("writes", n);
	truth_u64("ok", sink == done * (n * (n + 1) / 2));
	if (report)
		truth_kernel("kernel", r.start, npages);
	truth_end();
	return 0;
}
