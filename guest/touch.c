/* touch: first-touch a region in a pattern, once per chosen page.
 *
 *   touch [-m MiB] [-p full|strided|64k|random] [-s STRIDE] [-n PAGES]
 *         [-S SEED] [-o OFFSET_PAGES] [-k w|r|rw] [-H] [-R]
 *
 * -p full     every page              -p strided  every STRIDE-th page (-s, default 2)
 * -p 64k      one page per 64 KiB     -p random   -n distinct pages (default 1/8), seeded
 * -o puts the region OFFSET_PAGES past a 2 MiB boundary, -k chooses a read,
 * a write or a read then a write of one word per page, -H applies
 * MADV_HUGEPAGE first, -R adds the host kernel's folio orders (native runs).
 * Marks: 1 before the first touch, 2 after the last.
 */
#include <getopt.h>

#include "emu_mark.h"
#include "pagemap.h"
#include "truth.h"

int main(int argc, char **argv)
{
	unsigned long mib = 8, stride = 2, nrand = 0, seed = 1, offset = 0;
	const char *pattern = "full", *kind = "w";
	int hugepage = 0, report = 0, c;

	truth_prog = "touch";
	opterr = 0;
	while ((c = getopt(argc, argv, "m:p:s:n:S:o:k:HR")) != -1) {
		switch (c) {
		case 'm': mib = parse_ulong(optarg, "size (MiB)"); break;
		case 'p': pattern = optarg; break;
		case 's': stride = parse_ulong(optarg, "stride"); break;
		case 'n': nrand = parse_ulong(optarg, "page count"); break;
		case 'S': seed = parse_ulong(optarg, "seed"); break;
		case 'o': offset = parse_ulong(optarg, "offset"); break;
		case 'k': kind = optarg; break;
		case 'H': hugepage = 1; break;
		case 'R': report = 1; break;
		default: die_usage("bad option -%c; usage: touch [-m MiB] [-p full|strided|64k|random] [-s STRIDE] "
				   "[-n PAGES] [-S SEED] [-o OFFSET_PAGES] [-k w|r|rw] [-H] [-R]", optopt);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (mib == 0 || mib > (1UL << 20))
		die_usage("size must be 1..1048576 MiB");
	if (stride == 0)
		die_usage("stride must be at least 1");
	int do_read = !strcmp(kind, "r") || !strcmp(kind, "rw");
	int do_write = !strcmp(kind, "w") || !strcmp(kind, "rw");
	if (!do_read && !do_write)
		die_usage("bad kind '%s' (w, r or rw)", kind);

	size_t npages = mib * MIB / PAGE_SIZE;
	size_t *idx = xcalloc(npages, sizeof *idx);
	uint8_t *touched = xcalloc(npages, 1);
	size_t n = 0;

	if (!strcmp(pattern, "full") || !strcmp(pattern, "strided") || !strcmp(pattern, "64k")) {
		size_t step = !strcmp(pattern, "full") ? 1 : !strcmp(pattern, "64k") ? 16 : stride;
		for (size_t i = 0; i < npages; i += step)
			idx[n++] = i;
	} else if (!strcmp(pattern, "random")) {
		if (nrand == 0)
			nrand = npages / 8 ? npages / 8 : 1;
		if (nrand > npages)
			die_usage("-n %lu exceeds the region's %zu pages", nrand, npages);
		uint64_t x = seed ? seed : 1;
		while (n < nrand) {
			x = xorshift64(x);
			size_t i = (size_t)((x >> 32) * npages >> 32);
			if (!touched[i]) {
				touched[i] = 1;
				idx[n++] = i;
			}
		}
	} else {
		die_usage("bad pattern '%s' (full, strided, 64k or random)", pattern);
	}

	struct region r = region_map(npages * PAGE_SIZE, offset * PAGE_SIZE);
	if (hugepage && madvise((void *)r.map_start, r.map_end - r.map_start, MADV_HUGEPAGE))
		die_errno("madvise(MADV_HUGEPAGE)");

	volatile uint64_t *p = (volatile uint64_t *)r.start;
	uint64_t sink = 0;
	emu_mark(1);
	if (do_read && do_write) {
		for (size_t k = 0; k < n; k++) {
			sink += p[idx[k] * WORDS_PER_PAGE];
			p[idx[k] * WORDS_PER_PAGE] = k + 1;
		}
	} else if (do_read) {
		for (size_t k = 0; k < n; k++)
			sink += p[idx[k] * WORDS_PER_PAGE];
	} else {
		for (size_t k = 0; k < n; k++)
			p[idx[k] * WORDS_PER_PAGE] = k + 1;
	}
	long mark_ret = emu_mark(2);

	for (size_t k = 0; k < n; k++)
		touched[idx[k]] = 1;
	truth_begin("touch");
	truth_str("pattern", pattern);
	truth_str("kind", kind);
	truth_u64("hugepage", hugepage);
	truth_u64("offset_pages", offset);
	truth_region("region", &r);
	truth_i64("mark_ret", mark_ret);
	truth_u64("pages_touched", count_marked(touched, npages));
	truth_ranges("touched", touched, npages);
	truth_u64("reads", do_read ? n : 0);
	truth_u64("writes", do_write ? n : 0);
	truth_u64("sink", sink);
	if (report)
		truth_kernel("kernel", r.start, npages);
	truth_end();
	return 0;
}
