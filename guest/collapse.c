/* collapse: populate part of 2 MiB-aligned PMD ranges, then MADV_COLLAPSE.
 *
 *   collapse [-r PMDS] [-n FIRST_PAGES | -p PAGELIST] [-k w|r] [-H] [-a] [-R]
 *
 * Each of the PMDS 2 MiB ranges (default 1) gets the same pages populated:
 * the first FIRST_PAGES (default 256) or PAGELIST ("0-255,300,400-511:2",
 * inclusive, page indices within one PMD), one word written (-k w) or read
 * (-k r, maps the zero page) per page.  -H applies MADV_HUGEPAGE first.
 * Then one madvise(MADV_COLLAPSE) over all the ranges; its return value and
 * errno go in the truth.  -a reads every populated page once more after the
 * collapse (counted).  -R adds the host kernel's mapping before and after
 * (native runs, root for folio orders).
 * Under QEMU 7.2 madvise(MADV_COLLAPSE) returns 0 without effect: emu reports
 * its model's own result.  Marks: 1 before populating, 2 before madvise,
 * 3 after it.
 */
#define _GNU_SOURCE /* strerrorname_np */
#include <getopt.h>

#include "emu_mark.h"
#include "pagemap.h"
#include "truth.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define PMD_PAGES (PMD_SIZE / PAGE_SIZE)

int main(int argc, char **argv)
{
	unsigned long npmd = 1, first = 256;
	const char *list = NULL, *kind = "w";
	int hugepage = 0, again = 0, report = 0, c;

	truth_prog = "collapse";
	opterr = 0;
	while ((c = getopt(argc, argv, "r:n:p:k:HaR")) != -1) {
		switch (c) {
		case 'r': npmd = parse_ulong(optarg, "PMD count"); break;
		case 'n': first = parse_ulong(optarg, "page count"); break;
		case 'p': list = optarg; break;
		case 'k': kind = optarg; break;
		case 'H': hugepage = 1; break;
		case 'a': again = 1; break;
		case 'R': report = 1; break;
		default: die_usage("bad option -%c; usage: collapse [-r PMDS] [-n FIRST_PAGES | -p PAGELIST] "
				   "[-k w|r] [-H] [-a] [-R]", optopt);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (npmd < 1 || npmd > 4096)
		die_usage("PMD count must be 1..4096");
	if (first > PMD_PAGES)
		die_usage("page count must be 0..%lu", PMD_PAGES);
	int do_write = !strcmp(kind, "w");
	if (!do_write && strcmp(kind, "r"))
		die_usage("bad kind '%s' (w or r)", kind);

	uint8_t pick[PMD_PAGES] = {0};
	if (list)
		parse_pages(list, pick, PMD_PAGES);
	else
		for (unsigned long i = 0; i < first; i++)
			pick[i] = 1;
	size_t per = count_marked(pick, PMD_PAGES), npages = npmd * PMD_PAGES;
	uint8_t *touched = xcalloc(npages, 1);
	for (size_t i = 0; i < npages; i++)
		touched[i] = pick[i % PMD_PAGES];

	struct region r = region_map(npages * PAGE_SIZE, 0);
	if (hugepage && madvise((void *)r.map_start, r.map_end - r.map_start, MADV_HUGEPAGE))
		die_errno("madvise(MADV_HUGEPAGE)");
	volatile uint64_t *p = (volatile uint64_t *)r.start;
	uint64_t sink = 0;

	emu_mark(1);
	for (size_t i = 0; i < npages; i++) {
		if (!touched[i])
			continue;
		if (do_write)
			p[i * WORDS_PER_PAGE] = i + 1;
		else
			sink += p[i * WORDS_PER_PAGE];
	}
	struct pm_snapshot before = {0};
	if (report)
		before = pm_snapshot(r.start, npages);
	emu_mark(2);
	long ret = madvise((void *)r.start, npages * PAGE_SIZE, MADV_COLLAPSE);
	int err = ret ? errno : 0;
	emu_mark(3);
	uint64_t bad = 0;
	if (again)
		for (size_t i = 0; i < npages; i++)
			if (touched[i])
				bad += p[i * WORDS_PER_PAGE] != (do_write ? i + 1 : 0);

	truth_begin("collapse");
	truth_region("region", &r);
	truth_u64("pmds", npmd);
	truth_str("kind", kind);
	truth_u64("hugepage", hugepage);
	truth_u64("pages_touched", per * npmd);
	truth_ranges("touched", touched, npages);
	truth_u64("reads", (do_write ? 0 : per * npmd) + (again ? per * npmd : 0));
	truth_u64("writes", do_write ? per * npmd : 0);
	truth_i64("ret", ret);
	truth_i64("errno", err);
	truth_str("errno_name", err ? strerrorname_np(err) : "");
	truth_u64("ok", bad == 0);
	if (report) {
		truth_snapshot("kernel_before", &before);
		truth_kernel("kernel", r.start, npages);
	}
	truth_end();
	return 0;
}
