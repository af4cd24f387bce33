/* Shared helpers for emu's guest workloads: the aligned region, the seeded
 * generators, and the one-line "EMU-TRUTH {json}" ground truth that tests
 * compare emu's counts against (schema: docs/guests.md).
 *
 * Nothing here touches a workload's region: the truth is kept in locals and
 * on the heap, so every access emu sees inside the region is one the workload
 * made on purpose and counted.
 */
#ifndef EMU_TRUTH_H
#define EMU_TRUTH_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE_SIZE 4096UL
#define WORDS_PER_PAGE (PAGE_SIZE / sizeof(uint64_t))
#define PMD_SIZE (2UL << 20)
#define MIB (1UL << 20)

#if defined(__x86_64__)
#define TRUTH_ARCH "x86_64"
#elif defined(__aarch64__)
#define TRUTH_ARCH "arm64"
#endif

static const char *truth_prog = "guest";

/* Bad arguments: one line and status 2, like every emu tool. */
static __attribute__((unused)) void __attribute__((noreturn, format(printf, 1, 2))) die_usage(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: ", truth_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static __attribute__((unused)) void __attribute__((noreturn)) die_errno(const char *what)
{
	fprintf(stderr, "%s: %s: %s\n", truth_prog, what, strerror(errno));
	exit(1);
}

static __attribute__((unused)) unsigned long parse_ulong(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-')
		die_usage("bad %s '%s'", what, s);
	return v;
}

/* The region: `size` bytes starting `offset` bytes past a 2 MiB boundary, in
 * a fresh anonymous private mapping that is 2 MiB larger than needed so the
 * boundary exists.  The whole mapping is one VMA; the region is part of it. */
struct region {
	uintptr_t map_start, map_end; /* the mmap() as the kernel sees it */
	uintptr_t start, end;         /* the part the workload uses */
};

static __attribute__((unused)) struct region region_map(size_t size, size_t offset)
{
	struct region r;
	size_t len = size + offset + PMD_SIZE;
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die_errno("mmap");
	r.map_start = (uintptr_t)p;
	r.map_end = r.map_start + len;
	r.start = ((r.map_start + PMD_SIZE - 1) & ~(PMD_SIZE - 1)) + offset;
	r.end = r.start + size;
	return r;
}

/* xorshift64 (Marsaglia): cheap enough to stay in registers in hot loops. */
static inline uint64_t xorshift64(uint64_t x)
{
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x;
}

static inline uint64_t splitmix64(uint64_t x)
{
	uint64_t z = x + 0x9E3779B97F4A7C15ULL;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* Order-independent digest of per-page access counts, so a test can compare
 * millions of counts exactly through one number (emu/guest/truth.py has the
 * same function).  Pages with no access contribute nothing. */
static inline uint64_t page_term(uint64_t page, uint64_t reads, uint64_t writes)
{
	return splitmix64(splitmix64(splitmix64(page) + reads) + writes);
}

static __attribute__((unused)) uint64_t page_checksum(const uint64_t *reads, const uint64_t *writes, size_t npages)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < npages; i++)
		if (reads[i] || writes[i])
			sum += page_term(i, reads[i], writes[i]);
	return sum;
}

/* --- the truth line ------------------------------------------------------ */

static __attribute__((unused)) void truth_begin(const char *workload)
{
	printf("EMU-TRUTH {\"v\":1,\"workload\":\"%s\",\"arch\":\"%s\",\"pid\":%ld",
	       workload, TRUTH_ARCH, (long)getpid());
}

static __attribute__((unused)) void truth_end(void)
{
	printf("}\n");
	fflush(stdout);
}

static __attribute__((unused)) void truth_u64(const char *key, uint64_t v)
{
	printf(",\"%s\":%llu", key, (unsigned long long)v);
}

static __attribute__((unused)) void truth_i64(const char *key, int64_t v)
{
	printf(",\"%s\":%lld", key, (long long)v);
}

static __attribute__((unused)) void truth_str(const char *key, const char *v)
{
	printf(",\"%s\":\"%s\"", key, v);
}

static __attribute__((unused)) void truth_region(const char *key, const struct region *r)
{
	printf(",\"%s\":{\"start\":%llu,\"end\":%llu,\"map_start\":%llu,\"map_end\":%llu}",
	       key, (unsigned long long)r->start, (unsigned long long)r->end,
	       (unsigned long long)r->map_start, (unsigned long long)r->map_end);
}

/* Page indices i with mark[i] != 0, as [first, last+1) ranges. */
static __attribute__((unused)) void print_ranges(const uint8_t *mark, size_t n)
{
	int first = 1;
	putchar('[');
	for (size_t i = 0; i < n;) {
		if (!mark[i]) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < n && mark[j])
			j++;
		printf("%s[%zu,%zu]", first ? "" : ",", i, j);
		first = 0;
		i = j;
	}
	putchar(']');
}

static __attribute__((unused)) void truth_ranges(const char *key, const uint8_t *mark, size_t n)
{
	printf(",\"%s\":", key);
	print_ranges(mark, n);
}

static __attribute__((unused)) size_t count_marked(const uint8_t *mark, size_t n)
{
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += mark[i] != 0;
	return c;
}

/* Page list "A,B-C,D-E:S" (inclusive ranges, optional stride S) into mark[]. */
static __attribute__((unused)) void parse_pages(const char *spec, uint8_t *mark, size_t n)
{
	char *copy = strdup(spec), *save = NULL;
	if (!copy)
		die_errno("strdup");
	for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		unsigned long a, b, s = 1;
		int used = 0;
		if (sscanf(item, "%lu-%lu:%lu%n", &a, &b, &s, &used) == 3 && !item[used]) {
		} else if (sscanf(item, "%lu-%lu%n", &a, &b, &used) == 2 && !item[used]) {
			s = 1;
		} else if (sscanf(item, "%lu%n", &a, &used) == 1 && !item[used]) {
			b = a;
		} else {
			die_usage("bad page list item '%s' (A, A-B or A-B:STRIDE)", item);
		}
		if (b < a || b >= n || s == 0)
			die_usage("page list item '%s' outside 0..%zu", item, n - 1);
		for (unsigned long i = a; i <= b; i += s)
			mark[i] = 1;
	}
	free(copy);
}

static __attribute__((unused)) void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);
	if (!p)
		die_errno("calloc");
	return p;
}

#endif
