/* What the host kernel actually mapped: for kernel-differential tests, a
 * workload run natively reports the folio order behind each page of its
 * region (/proc/self/pagemap + /proc/kpageflags, root only) and the VMA's
 * AnonHugePages (/proc/self/smaps, PMD-mapped THP only).
 *
 * Meaningless under QEMU user-mode (those files describe the QEMU process),
 * so workloads only call this when asked to (-R).  Reads happen through the
 * kernel's files, never through the region, so no guest access is added.
 */
#ifndef EMU_PAGEMAP_H
#define EMU_PAGEMAP_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "truth.h"

/* Per-page codes besides a folio order >= 0. */
#define PM_NONE (-1)    /* not present */
#define PM_ZERO (-2)    /* mapped to the shared zero page (or huge zero page) */
#define PM_UNKNOWN (-3) /* present, but no PFN visible (not root) */
#define PM_SWAP (-4)    /* swapped out */

/* Bits of /proc/kpageflags (Documentation/admin-guide/mm/pagemap.rst). */
#define KPF_COMPOUND_HEAD 15
#define KPF_COMPOUND_TAIL 16
#define KPF_ZERO_PAGE 24

/* Bits of a /proc/<pid>/pagemap entry. */
#define PM_PFN_MASK ((1ULL << 55) - 1)
#define PM_SWAP_BIT 62
#define PM_PRESENT_BIT 63

static __attribute__((unused)) int pm_read_u64(int fd, uint64_t index, uint64_t *out)
{
	return pread(fd, out, 8, (off_t)(index * 8)) == 8 ? 0 : -1;
}

/* AnonHugePages (kB) of the VMA containing addr, or -1 if smaps is unreadable. */
static __attribute__((unused)) long pm_anon_huge_kb(uintptr_t addr)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int inside = 0;
	long kb = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			inside = addr >= lo && addr < hi;
			continue;
		}
		if (inside && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return inside ? kb : -1;
}

/* Folio order (or a PM_* code) of each of the npages pages from start. */
static __attribute__((unused)) void pm_folio_orders(uintptr_t start, size_t npages, int *order)
{
	int pm = open("/proc/self/pagemap", O_RDONLY);
	int kf = open("/proc/kpageflags", O_RDONLY);
	uint64_t head = 0, size = 0; /* the last folio found, in PFNs */
	int head_order = 0;

	for (size_t i = 0; i < npages; i++) {
		uint64_t e, flags, pfn;
		order[i] = PM_UNKNOWN;
		if (pm < 0 || pm_read_u64(pm, start / PAGE_SIZE + i, &e))
			continue;
		if (e >> PM_SWAP_BIT & 1) {
			order[i] = PM_SWAP;
			continue;
		}
		if (!(e >> PM_PRESENT_BIT & 1)) {
			order[i] = PM_NONE;
			continue;
		}
		pfn = e & PM_PFN_MASK;
		if (pfn == 0 || kf < 0 || pm_read_u64(kf, pfn, &flags))
			continue;
		if (flags >> KPF_ZERO_PAGE & 1) {
			order[i] = PM_ZERO;
			continue;
		}
		if (size && pfn >= head && pfn < head + size) {
			order[i] = head_order;
			continue;
		}
		if (!(flags >> (KPF_COMPOUND_HEAD) & 1) && !(flags >> KPF_COMPOUND_TAIL & 1)) {
			order[i] = 0;
			continue;
		}
		/* Find the head, then count the tails behind it: the folio size. */
		head = pfn;
		while (!(flags >> KPF_COMPOUND_HEAD & 1) && head > 0 &&
		       !pm_read_u64(kf, head - 1, &flags))
			head--;
		size = 1;
		while (!pm_read_u64(kf, head + size, &flags) && (flags >> KPF_COMPOUND_TAIL & 1) &&
		       !(flags >> KPF_COMPOUND_HEAD & 1))
			size++;
		head_order = 0;
		while ((1ULL << (head_order + 1)) <= size)
			head_order++;
		order[i] = head_order;
	}
	if (pm >= 0)
		close(pm);
	if (kf >= 0)
		close(kf);
}

struct pm_snapshot {
	long anon_huge_kb;
	size_t npages;
	int *order;
};

/* Read what the kernel maps at the region now; print it later. */
static __attribute__((unused)) struct pm_snapshot pm_snapshot(uintptr_t start, size_t npages)
{
	struct pm_snapshot s = {pm_anon_huge_kb(start), npages,
				xcalloc(npages ? npages : 1, sizeof(int))};
	pm_folio_orders(start, npages, s.order);
	return s;
}

/* ,"KEY":{"anon_huge_kb":N,"orders":[[first,end,order],...]}: runs of equal
 * order (or PM_* code) merged. */
static __attribute__((unused)) void truth_snapshot(const char *key, const struct pm_snapshot *s)
{
	printf(",\"%s\":{\"anon_huge_kb\":%ld,\"orders\":[", key, s->anon_huge_kb);
	for (size_t i = 0; i < s->npages;) {
		size_t j = i;
		while (j < s->npages && s->order[j] == s->order[i])
			j++;
		printf("%s[%zu,%zu,%d]", i ? "," : "", i, j, s->order[i]);
		i = j;
	}
	printf("]}");
}

static __attribute__((unused)) void truth_kernel(const char *key, uintptr_t start, size_t npages)
{
	struct pm_snapshot s = pm_snapshot(start, npages);
	truth_snapshot(key, &s);
	free(s.order);
}

#endif
