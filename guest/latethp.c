/* latethp: threads populate a region at 4 KiB, then THP is turned on late
 * (MADV_HUGEPAGE from the main thread) while the threads keep writing.
 *
 *   latethp [-t THREADS] [-m MIB] [-r ROUNDS]
 *
 * The region is MIB MiB, 2 MiB aligned, split into THREADS equal slices.
 * Phase 1: thread k writes one word per page of its slice (first touch).
 * Then all threads and the main thread meet at a barrier; the main thread
 * calls emu_mark(2) (where `emu run --at-mark 2:...` changes THP settings, as
 * an admin writing sysfs would) and madvise(MADV_HUGEPAGE) on the region, and
 * meets the threads at a second barrier.  Phase 2: each thread writes one word
 * per page of its slice ROUNDS more times, so khugepaged has a live,
 * referenced, multi-threaded mm to collapse.
 * Marks: 1 before the threads start, 2 after the population, 3 after the join.
 * The truth adds `madvise_ret` (0 natively, and under QEMU which accepts it).
 */
#include <getopt.h>
#include <pthread.h>
#include <sys/mman.h>

#include "emu_mark.h"
#include "truth.h"

struct worker {
	pthread_t thread;
	unsigned long index;
	uint64_t writes;
};

static unsigned long nthreads = 4, mib = 8, rounds = 200;
static unsigned long slice;             /* pages per thread */
static volatile uint64_t *region;
static pthread_barrier_t populated, resumed;

static void *work(void *arg)
{
	struct worker *w = arg;
	volatile uint64_t *mine = region + w->index * slice * WORDS_PER_PAGE;
	uint64_t writes = 0;

	for (unsigned long i = 0; i < slice; i++) {
		mine[i * WORDS_PER_PAGE] = 1;
		writes++;
	}
	pthread_barrier_wait(&populated);
	pthread_barrier_wait(&resumed);
	for (unsigned long r = 0; r < rounds; r++)
		for (unsigned long i = 0; i < slice; i++) {
			mine[i * WORDS_PER_PAGE + (r + 1) % WORDS_PER_PAGE] = r;
			writes++;
		}
	w->writes = writes;
	return NULL;
}

int main(int argc, char **argv)
{
	int c;

	truth_prog = "latethp";
	opterr = 0;
	while ((c = getopt(argc, argv, "t:m:r:")) != -1) {
		switch (c) {
		case 't': nthreads = parse_ulong(optarg, "thread count"); break;
		case 'm': mib = parse_ulong(optarg, "MiB"); break;
		case 'r': rounds = parse_ulong(optarg, "rounds"); break;
		default: die_usage("bad option -%c; usage: latethp [-t THREADS] [-m MIB] [-r ROUNDS]", optopt);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (nthreads < 1 || nthreads > 64)
		die_usage("thread count must be 1..64");
	if (mib < 2 || mib > 1024 || mib % 2)
		die_usage("MiB must be an even number 2..1024");
	slice = (mib * MIB / PAGE_SIZE) / nthreads;
	if (slice < 1 || slice * nthreads * PAGE_SIZE != mib * MIB)
		die_usage("the region must split into equal whole-page slices");

	struct region r = region_map(mib * MIB, 0);
	struct worker *w = xcalloc(nthreads, sizeof *w);
	region = (volatile uint64_t *)r.start;
	pthread_barrier_init(&populated, NULL, nthreads + 1);
	pthread_barrier_init(&resumed, NULL, nthreads + 1);

	emu_mark(1);
	for (unsigned long k = 0; k < nthreads; k++) {
		w[k].index = k;
		if (pthread_create(&w[k].thread, NULL, work, &w[k]))
			die_errno("pthread_create");
	}
	pthread_barrier_wait(&populated);
	emu_mark(2);
	long madvise_ret = madvise((void *)r.start, r.end - r.start, MADV_HUGEPAGE);
	pthread_barrier_wait(&resumed);
	for (unsigned long k = 0; k < nthreads; k++)
		pthread_join(w[k].thread, NULL);
	emu_mark(3);

	uint64_t writes = 0;
	for (unsigned long k = 0; k < nthreads; k++)
		writes += w[k].writes;
	truth_begin("latethp");
	truth_region("region", &r);
	truth_u64("nthreads", nthreads);
	truth_u64("pages_per_thread", slice);
	truth_u64("rounds", rounds);
	truth_i64("madvise_ret", madvise_ret);
	truth_u64("pages_touched", nthreads * slice);
	printf(",\"touched\":[[0,%lu]]", nthreads * slice);
	truth_u64("reads", 0);
	truth_u64("writes", writes);
	truth_end();
	return 0;
}
