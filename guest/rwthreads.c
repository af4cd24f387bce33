/* rwthreads: threads that keep reading and writing one shared region, for
 * watching a collapse under running CPUs.
 *
 *   rwthreads [-t THREADS] [-m MiB] [-i ITERATIONS] [-S SEED] [-W WRITE_PER_256]
 *
 * Defaults: 4 threads, 8 MiB, 1M iterations per thread, half writes.  The main
 * thread writes one word per page first, marks 1, madvise(MADV_HUGEPAGE)s the
 * region (which registers it with khugepaged once a THP size is on: emu's
 * --at-mark 1:... turns one on), starts the threads and marks 2 when they are
 * done.  Each thread draws random words over the whole
 * region (xorshift64, its own seed) and reads any of them but writes only
 * words of the pages it owns (page % THREADS == thread), so every page has one
 * writer and the counts below are exact whatever the interleaving.
 */
#include <getopt.h>
#include <pthread.h>
#include <sys/mman.h>

#include "emu_mark.h"
#include "truth.h"

struct worker {
	pthread_t tid;
	unsigned long id, nthreads, iters, wthresh, seed;
	volatile uint64_t *p;
	uint64_t nwords, reads, writes, sink;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	uint64_t x = w->seed, reads = 0, writes = 0, sink = 0;
	for (unsigned long i = 0; i < w->iters; i++) {
		x = xorshift64(x);
		uint64_t word = (x >> 32) * w->nwords >> 32;
		if ((x & 255) < w->wthresh) {
			uint64_t page = word / WORDS_PER_PAGE;
			page += (w->id + w->nthreads - page % w->nthreads) % w->nthreads;
			if (page * WORDS_PER_PAGE >= w->nwords)
				continue;  /* no page of this thread past the end: skip it */
			w->p[page * WORDS_PER_PAGE + word % WORDS_PER_PAGE] = i;
			writes++;
		} else {
			sink += w->p[word];
			reads++;
		}
	}
	w->reads = reads;
	w->writes = writes;
	w->sink = sink;
	return NULL;
}

int main(int argc, char **argv)
{
	unsigned long nthreads = 4, mib = 8, iters = 1000000, seed = 1, wthresh = 128;
	int c;

	truth_prog = "rwthreads";
	opterr = 0;
	while ((c = getopt(argc, argv, "t:m:i:S:W:")) != -1) {
		switch (c) {
		case 't': nthreads = parse_ulong(optarg, "threads"); break;
		case 'm': mib = parse_ulong(optarg, "size (MiB)"); break;
		case 'i': iters = parse_ulong(optarg, "iterations"); break;
		case 'S': seed = parse_ulong(optarg, "seed"); break;
		case 'W': wthresh = parse_ulong(optarg, "writes per 256"); break;
		default: die_usage("bad option -%c; usage: rwthreads [-t THREADS] [-m MiB] "
				   "[-i ITERATIONS] [-S SEED] [-W WRITE_PER_256]", optopt);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (nthreads == 0 || nthreads > 64)
		die_usage("threads must be 1..64");
	if (mib == 0 || mib > 4096)
		die_usage("size must be 1..4096 MiB");
	if (wthresh > 256)
		die_usage("writes per 256 must be 0..256");

	size_t npages = mib * MIB / PAGE_SIZE;
	struct region r = region_map(npages * PAGE_SIZE, 0);
	volatile uint64_t *p = (volatile uint64_t *)r.start;
	for (size_t i = 0; i < npages; i++)
		p[i * WORDS_PER_PAGE] = i;

	struct worker *ws = xcalloc(nthreads, sizeof *ws);
	emu_mark(1);
	if (madvise((void *)r.start, npages * PAGE_SIZE, MADV_HUGEPAGE))
		die_errno("madvise");
	for (unsigned long t = 0; t < nthreads; t++) {
		ws[t] = (struct worker){.id = t, .nthreads = nthreads, .iters = iters,
					.wthresh = wthresh, .seed = splitmix64(seed + t) | 1, .p = p,
					.nwords = npages * WORDS_PER_PAGE};
		if (pthread_create(&ws[t].tid, NULL, work, &ws[t]))
			die_errno("pthread_create");
	}
	uint64_t reads = 0, writes = npages, sink = 0;
	for (unsigned long t = 0; t < nthreads; t++) {
		pthread_join(ws[t].tid, NULL);
		reads += ws[t].reads;
		writes += ws[t].writes;
		sink += ws[t].sink;
	}
	long mark_ret = emu_mark(2);

	truth_begin("rwthreads");
	truth_region("region", &r);
	truth_i64("mark_ret", mark_ret);
	truth_u64("threads", nthreads);
	truth_u64("iterations", iters);
	truth_u64("reads", reads);
	truth_u64("writes", writes);
	truth_u64("sink_nonzero", sink != 0);
	truth_end();
	return 0;
}
