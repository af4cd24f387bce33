/* threads: N pthreads share one region; each writes its own slice, then
 * (after a barrier) reads every other thread's slice.
 *
 *   threads [-t THREADS] [-p PAGES_PER_THREAD] [-r ROUNDS]
 *
 * Thread k owns pages [k*P, (k+1)*P) of the region.  It writes one word per
 * owned page ROUNDS times, waits for all, then reads one word per page of
 * every other slice.  The main thread never touches the region.
 * Marks: 1 before the threads start, 2 after they are joined.
 */
#include <getopt.h>
#include <pthread.h>
#include <sys/syscall.h>

#include "emu_mark.h"
#include "truth.h"

struct worker {
	pthread_t thread;
	unsigned long index;
	long tid;
	uint64_t reads, writes;
};

static unsigned long nthreads = 4, slice = 16, rounds = 4;
static volatile uint64_t *region;
static pthread_barrier_t barrier;

static void *work(void *arg)
{
	struct worker *w = arg;
	volatile uint64_t *mine = region + w->index * slice * WORDS_PER_PAGE;
	uint64_t reads = 0, writes = 0, sink = 0;

	w->tid = syscall(SYS_gettid);
	for (unsigned long r = 0; r < rounds; r++)
		for (unsigned long i = 0; i < slice; i++) {
			mine[i * WORDS_PER_PAGE + r % WORDS_PER_PAGE] = r;
			writes++;
		}
	pthread_barrier_wait(&barrier);
	for (unsigned long k = 0; k < nthreads; k++) {
		if (k == w->index)
			continue;
		volatile uint64_t *theirs = region + k * slice * WORDS_PER_PAGE;
		for (unsigned long i = 0; i < slice; i++) {
			sink += theirs[i * WORDS_PER_PAGE];
			reads++;
		}
	}
	w->reads = reads;
	w->writes = writes;
	return (void *)(uintptr_t)sink;
}

int main(int argc, char **argv)
{
	int c;

	truth_prog = "threads";
	opterr = 0;
	while ((c = getopt(argc, argv, "t:p:r:")) != -1) {
		switch (c) {
		case 't': nthreads = parse_ulong(optarg, "thread count"); break;
		case 'p': slice = parse_ulong(optarg, "pages per thread"); break;
		case 'r': rounds = parse_ulong(optarg, "rounds"); break;
		default: die_usage("bad option -%c; usage: threads [-t THREADS] [-p PAGES_PER_THREAD] [-r ROUNDS]", optopt);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (nthreads < 1 || nthreads > 64)
		die_usage("thread count must be 1..64");
	if (slice < 1 || slice > 65536)
		die_usage("pages per thread must be 1..65536");

	struct region r = region_map(nthreads * slice * PAGE_SIZE, 0);
	struct worker *w = xcalloc(nthreads, sizeof *w);
	region = (volatile uint64_t *)r.start;
	pthread_barrier_init(&barrier, NULL, nthreads);

	emu_mark(1);
	for (unsigned long k = 0; k < nthreads; k++) {
		w[k].index = k;
		if (pthread_create(&w[k].thread, NULL, work, &w[k]))
			die_errno("pthread_create");
	}
	for (unsigned long k = 0; k < nthreads; k++)
		pthread_join(w[k].thread, NULL);
	emu_mark(2);

	uint64_t reads = 0, writes = 0;
	truth_begin("threads");
	truth_region("region", &r);
	truth_u64("nthreads", nthreads);
	truth_u64("pages_per_thread", slice);
	truth_u64("rounds", rounds);
	truth_u64("pages_touched", nthreads > 1 || rounds ? nthreads * slice : 0);
	printf(",\"threads\":[");
	for (unsigned long k = 0; k < nthreads; k++) {
		printf("%s{\"index\":%lu,\"tid\":%ld,\"reads\":%llu,\"writes\":%llu,"
		       "\"written\":[[%lu,%lu]],\"read\":[",
		       k ? "," : "", k, w[k].tid, (unsigned long long)w[k].reads,
		       (unsigned long long)w[k].writes, k * slice, (k + 1) * slice);
		int first = 1;
		for (unsigned long j = 0; j < nthreads; j++) {
			if (j == k)
				continue;
			printf("%s[%lu,%lu]", first ? "" : ",", j * slice, (j + 1) * slice);
			first = 0;
		}
		printf("]}");
		reads += w[k].reads;
		writes += w[k].writes;
	}
	printf("]");
	truth_u64("reads", reads);
	truth_u64("writes", writes);
	truth_end();
	return 0;
}
