/* random: uniformly random 8-byte reads and writes over a region.
 *
 *   random [-m MiB] [-i ITERATIONS] [-S SEED] [-W WRITE_PER_256] [-o OFFSET_PAGES] [-P] [-q]
 *
 * Defaults: 16 MiB, 1M iterations, half writes.  The generator (xorshift64)
 * and the counters live in registers, so the only memory accesses of the
 * loop are the one load or one store per iteration into the region.  -P
 * writes one word per page first (counted), -q skips the per-page truth
 * (which replays the generator after the timed phase; benchmarks use -q).
 * Marks: 1 before the random phase, 2 after it.
 */
#include <getopt.h>

#include "emu_mark.h"
#include "truth.h"

int main(int argc, char **argv)
{
	unsigned long mib = 16, iters = 1000000, seed = 1, wthresh = 128, offset = 0;
	int populate = 0, quick = 0, c;

	truth_prog = "random";
	opterr = 0;
	while ((c = getopt(argc, argv, "m:i:S:W:o:Pq")) != -1) {
		switch (c) {
		case 'm': mib = parse_ulong(optarg, "size (MiB)"); break;
		case 'i': iters = parse_ulong(optarg, "iterations"); break;
		case 'S': seed = parse_ulong(optarg, "seed"); break;
		case 'W': wthresh = parse_ulong(optarg, "writes per 256"); break;
		case 'o': offset = parse_ulong(optarg, "offset"); break;
		case 'P': populate = 1; break;
		case 'q': quick = 1; break;
		default: die_usage("bad option -%c; usage: random [-m MiB] [-i ITERATIONS] [-S SEED] "
				   "[-W WRITE_PER_256] [-o OFFSET_PAGES] [-P] [-q]", optopt);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (mib == 0 || mib > 16384)
		die_usage("size must be 1..16384 MiB");
	if (wthresh > 256)
		die_usage("writes per 256 must be 0..256");
	if (seed == 0)
		seed = 1; /* xorshift's one fixed point */

	size_t npages = mib * MIB / PAGE_SIZE;
	const uint64_t nwords = mib * MIB / sizeof(uint64_t);
	struct region r = region_map(npages * PAGE_SIZE, offset * PAGE_SIZE);
	volatile uint64_t *p = (volatile uint64_t *)r.start;

	if (populate)
		for (size_t i = 0; i < npages; i++)
			p[i * WORDS_PER_PAGE] = i;

	uint64_t x = seed, writes = 0, sink = 0;
	emu_mark(1);
	for (uint64_t i = 0; i < iters; i++) {
		x = xorshift64(x);
		uint64_t w = (x >> 32) * nwords >> 32;
		if ((x & 255) < wthresh) {
			p[w] = i;
			writes++;
		} else {
			sink += p[w];
		}
	}
	long mark_ret = emu_mark(2);
	uint64_t reads = iters - writes;

	truth_begin("random");
	truth_region("region", &r);
	truth_i64("mark_ret", mark_ret);
	truth_u64("seed", seed);
	truth_u64("iterations", iters);
	truth_u64("populate", populate);
	truth_u64("reads", reads);
	truth_u64("writes", writes + (populate ? npages : 0));
	truth_u64("sink", sink);
	if (!quick) {
		uint64_t *pr = xcalloc(npages, sizeof *pr), *pw = xcalloc(npages, sizeof *pw);
		uint8_t *touched = xcalloc(npages, 1);
		if (populate)
			for (size_t i = 0; i < npages; i++)
				pw[i]++;
		x = seed;
		for (uint64_t i = 0; i < iters; i++) {
			x = xorshift64(x);
			uint64_t w = (x >> 32) * nwords >> 32;
			if ((x & 255) < wthresh)
				pw[w / WORDS_PER_PAGE]++;
			else
				pr[w / WORDS_PER_PAGE]++;
		}
		size_t nranges = 0;
		for (size_t i = 0; i < npages; i++) {
			touched[i] = pr[i] || pw[i];
			nranges += touched[i] && (i == 0 || !touched[i - 1]);
		}
		truth_u64("pages_touched", count_marked(touched, npages));
		truth_u64("checksum", page_checksum(pr, pw, npages));
		if (nranges <= 4096)
			truth_ranges("touched", touched, npages);
	}
	truth_end();
	return 0;
}
