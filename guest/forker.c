/* forker: the parent populates M pages and forks; the child writes C of
 * them (copy-on-write) and exits; the parent waits, then reads all M pages
 * back and checks it still sees its own values.
 *
 *   forker [-m PAGES] [-c CHILD_PAGES] [-s CHILD_STRIDE]
 *
 * The child writes pages 0, S, 2S, ... (C of them), one word each, and
 * prints nothing: the parent's single truth line holds both sides.
 * Marks (parent): 1 before populating, 2 just before fork, 3 after the
 * read-back.  The child makes no marks.
 */
#include <getopt.h>
#include <sys/wait.h>

#include "emu_mark.h"
#include "truth.h"

int main(int argc, char **argv)
{
	unsigned long m = 64, cpages = 16, stride = 1;
	int c, cset = 0;

	truth_prog = "forker";
	opterr = 0;
	while ((c = getopt(argc, argv, "m:c:s:")) != -1) {
		switch (c) {
		case 'm': m = parse_ulong(optarg, "page count"); break;
		case 'c': cpages = parse_ulong(optarg, "child pages"); cset = 1; break;
		case 's': stride = parse_ulong(optarg, "child stride"); break;
		default: die_usage("bad option -%c; usage: forker [-m PAGES] [-c CHILD_PAGES] [-s CHILD_STRIDE]", optopt);
		}
	}
	if (optind != argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (m < 1 || m > (1UL << 22))
		die_usage("page count must be 1..4194304");
	if (!cset)
		cpages = m / 4;
	if (stride < 1 || (cpages && (cpages - 1) * stride >= m))
		die_usage("child writes %lu pages with stride %lu: beyond %lu pages", cpages, stride, m);

	struct region r = region_map(m * PAGE_SIZE, 0);
	volatile uint64_t *p = (volatile uint64_t *)r.start;

	emu_mark(1);
	for (unsigned long i = 0; i < m; i++)
		p[i * WORDS_PER_PAGE] = i + 1;
	emu_mark(2);
	fflush(stdout);
	pid_t child = fork();
	if (child < 0)
		die_errno("fork");
	if (child == 0) {
		for (unsigned long k = 0; k < cpages; k++)
			p[k * stride * WORDS_PER_PAGE] = ~(uint64_t)k;
		_exit(0);
	}
	int status = 0;
	if (waitpid(child, &status, 0) < 0)
		die_errno("waitpid");
	uint64_t bad = 0;
	for (unsigned long i = 0; i < m; i++)
		bad += p[i * WORDS_PER_PAGE] != i + 1;
	emu_mark(3);

	uint8_t *written = xcalloc(m, 1);
	for (unsigned long k = 0; k < cpages; k++)
		written[k * stride] = 1;
	truth_begin("forker");
	truth_region("region", &r);
	truth_u64("pages", m);
	truth_u64("pages_touched", m);
	truth_u64("reads", m);
	truth_u64("writes", m + cpages);
	truth_u64("ok", bad == 0);
	printf(",\"parent\":{\"pid\":%ld,\"reads\":%lu,\"writes\":%lu,\"written\":[[0,%lu]]}",
	       (long)getpid(), m, m, m);
	printf(",\"child\":{\"pid\":%ld,\"status\":%d,\"reads\":0,\"writes\":%lu,\"written\":",
	       (long)child, WIFEXITED(status) ? WEXITSTATUS(status) : -1, cpages);
	print_ranges(written, m);
	printf("}");
	truth_end();
	return bad != 0;
}
